-- Intake channels and signed webhooks (issue 28, docs/channels.md).

-- Registered channels: today WhatsApp Cloud API numbers (`funnel-ingest channel add whatsapp`).
-- Secrets are sealed (ChaCha20-Poly1305 under funnel_secrets 'channel_key', like the paging
-- cursors) or hashed, never stored or shown in clear.
CREATE TABLE funnel_channels (
    channel_id          text        PRIMARY KEY,                 -- ch_<32 hex>
    tenant              text        NOT NULL CHECK (tenant ~ '^[a-z0-9][a-z0-9_-]{0,63}$'),
    kind                text        NOT NULL CHECK (kind IN ('whatsapp')),
    phone_number_id     text        NOT NULL CHECK (length(phone_number_id) BETWEEN 1 AND 64),
    waba_id             text        CHECK (length(waba_id) BETWEEN 1 AND 64),
    app_secret_sealed   text        NOT NULL,                    -- HMAC key of X-Hub-Signature-256
    verify_token_sha256 bytea       NOT NULL,                    -- the hub.verify_token handshake
    dataset_id          text        CHECK (length(dataset_id) BETWEEN 1 AND 64),
    access_token_sealed text,                                    -- Conversions API
    created_at          timestamptz NOT NULL DEFAULT now(),
    removed_at          timestamptz,
    CHECK ((dataset_id IS NULL) = (access_token_sealed IS NULL))
);
-- One active channel per WhatsApp number.
CREATE UNIQUE INDEX funnel_channels_number ON funnel_channels (kind, phone_number_id) WHERE removed_at IS NULL;

-- A business-scoped user id seen together with a phone: later messages with only the user id
-- are keyed by the phone (docs/channels.md). The first pairing stays.
CREATE TABLE funnel_contact_aliases (
    tenant           text        NOT NULL,
    business_user_id text        NOT NULL,
    phone            text        NOT NULL,
    first_event_id   text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, business_user_id)
);

-- Standard Webhooks secrets per tenant (`funnel-ingest webhook-secret create`); several may
-- be active at once, for rotation.
CREATE TABLE funnel_webhook_secrets (
    secret_id     text        PRIMARY KEY,                       -- whs_<16 hex>
    tenant        text        NOT NULL CHECK (tenant ~ '^[a-z0-9][a-z0-9_-]{0,63}$'),
    secret_sealed text        NOT NULL,
    description   text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz,
    revoked_at    timestamptz
);

-- webhook-id values seen within the tolerance, with the answer given: a redelivery is
-- answered again without producing again. Rows older than the tolerance are deleted.
CREATE TABLE funnel_webhook_deliveries (
    tenant      text        NOT NULL,
    webhook_id  text        NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    status      integer,                                         -- NULL while in progress
    body        text,
    PRIMARY KEY (tenant, webhook_id)
);

INSERT INTO funnel_secrets (name, value)
VALUES ('channel_key', decode(replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''), 'hex'));

GRANT SELECT, INSERT ON funnel_channels TO funnel_api;
GRANT UPDATE (removed_at) ON funnel_channels TO funnel_api;
GRANT SELECT ON funnel_channels TO funnel_processor;
GRANT SELECT, INSERT ON funnel_contact_aliases TO funnel_api;
GRANT SELECT ON funnel_contact_aliases TO funnel_processor;
GRANT SELECT, INSERT ON funnel_webhook_secrets TO funnel_api;
GRANT UPDATE (revoked_at) ON funnel_webhook_secrets TO funnel_api;
GRANT SELECT, INSERT, UPDATE, DELETE ON funnel_webhook_deliveries TO funnel_api;
-- The processor opens the channels' access tokens (Conversions API).
GRANT SELECT ON funnel_secrets TO funnel_processor;
