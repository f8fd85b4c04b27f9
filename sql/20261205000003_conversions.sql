-- Conversions back to Meta (issue 28, docs/channels.md): the outbox of the Conversions API for
-- Business Messaging. The live generation's batch writes a row in the same transaction as the
-- stage events it follows from (a LeadSubmitted once per contact, a Purchase per transaction
-- event, only for contacts a click-to-WhatsApp ad brought, within 7 days of the click); the
-- processor's sender posts them and records the outcome. The id is stable (a hash of what the
-- conversion is of), so a rebuild or a second writer cannot enqueue one twice, and a replay's
-- generation enqueues nothing.
CREATE TABLE funnel_conversions (
    conversion_id   text          PRIMARY KEY,      -- also the event_id sent to Meta
    tenant          text          NOT NULL,
    contact         text          NOT NULL,         -- the contact key
    channel_id      text          NOT NULL REFERENCES funnel_channels (channel_id),
    event_name      text          NOT NULL CHECK (event_name IN ('LeadSubmitted', 'Purchase')),
    event_time      timestamptz   NOT NULL,
    value           numeric(20,2),
    currency        text,
    ctwa_clid       text          NOT NULL,
    source_event_id text          NOT NULL,         -- the message the conversion follows from
    state           text          NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'sent', 'parked')),
    attempts        integer       NOT NULL DEFAULT 0,
    next_attempt_at timestamptz   NOT NULL DEFAULT now(),
    last_error      text,
    created_at      timestamptz   NOT NULL DEFAULT now(),
    sent_at         timestamptz
);
CREATE INDEX funnel_conversions_due ON funnel_conversions (next_attempt_at) WHERE state = 'pending';
CREATE INDEX funnel_conversions_contact ON funnel_conversions (tenant, contact);

GRANT SELECT, INSERT, UPDATE ON funnel_conversions TO funnel_processor;
GRANT SELECT ON funnel_conversions TO funnel_api;
