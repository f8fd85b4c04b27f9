-- Funnel's tables (the contract's PostgreSQL section). Applied by sqlx migrations when the
-- services start and by `make migrate`. Timestamps are timestamptz (UTC instants).

-- One row per contact, a pure function of the set of the contact's events (docs/architecture.md).
CREATE TABLE funnel_contacts (
    tenant            text        NOT NULL,
    phone             text        NOT NULL,  -- the contact key: E.164 today, opaque string
    lead_at           timestamptz,
    channel           text,                  -- of the earliest lead event
    campaign          text,                  -- of the earliest lead event
    booking_at        timestamptz,
    transaction_at    timestamptz,
    transaction_value numeric(20,2) NOT NULL DEFAULT 0,
    transaction_count integer     NOT NULL DEFAULT 0,
    first_message_at  timestamptz,
    last_message_at   timestamptz,
    message_count     bigint      NOT NULL DEFAULT 0,
    rule_set_version  bigint,
    updated_at        timestamptz NOT NULL DEFAULT now(),
    lead_event_id     text,                  -- which event made the lead (ties: smallest id)
    PRIMARY KEY (tenant, phone)
);
CREATE INDEX funnel_contacts_lead_at ON funnel_contacts (tenant, lead_at);
CREATE INDEX funnel_contacts_updated_at ON funnel_contacts (tenant, updated_at);

-- Every (event, stage) the classifier found, with where it came from.
CREATE TABLE funnel_stage_events (
    tenant           text        NOT NULL,
    event_id         text        NOT NULL,
    phone            text        NOT NULL,
    stage            text        NOT NULL CHECK (stage IN ('lead', 'booking', 'transaction')),
    occurred_at      timestamptz NOT NULL,
    channel          text        NOT NULL,
    value            numeric(20,2) NOT NULL DEFAULT 0,
    rule_id          text,
    rule_set_version bigint,
    source_topic     text        NOT NULL,
    source_partition integer     NOT NULL,
    source_offset    bigint      NOT NULL,
    PRIMARY KEY (tenant, event_id, stage)
);
CREATE INDEX funnel_stage_events_contact ON funnel_stage_events (tenant, phone);
CREATE INDEX funnel_stage_events_occurred ON funnel_stage_events (tenant, stage, occurred_at);

-- The sink's consumer offsets: the next offset to read per partition, written in the same
-- transaction as the rows it produced (docs/exactly-once.md).
CREATE TABLE funnel_sink_offsets (
    consumer_group text        NOT NULL,
    topic          text        NOT NULL,
    partition      integer     NOT NULL,
    next_offset    bigint      NOT NULL CHECK (next_offset >= 0),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, topic, partition)
);

-- Per-tenant settings; a tenant without a row uses the defaults.
CREATE TABLE funnel_tenants (
    tenant     text PRIMARY KEY,
    time_zone  text NOT NULL DEFAULT 'Asia/Jakarta',
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Versioned rule sets. The active one is the highest version of the tenant.
CREATE TABLE funnel_rule_sets (
    tenant     text        NOT NULL DEFAULT 'default',
    version    bigint      NOT NULL,
    rules      jsonb       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    created_by text,
    PRIMARY KEY (tenant, version)
);

-- The first rule set: Indonesian sales chat, good enough to see a funnel on day one.
INSERT INTO funnel_rule_sets (tenant, version, created_by, rules) VALUES ('default', 1, 'migration', '[
  {"id": "lead-info",      "stage": "lead",        "match": "word", "pattern": "info",        "direction": "inbound", "priority": 100},
  {"id": "lead-harga",     "stage": "lead",        "match": "word", "pattern": "harga",       "direction": "inbound", "priority": 100},
  {"id": "lead-promo",     "stage": "lead",        "match": "word", "pattern": "promo",       "direction": "inbound", "priority": 100},
  {"id": "lead-tertarik",  "stage": "lead",        "match": "word", "pattern": "tertarik",    "direction": "inbound", "priority": 100},
  {"id": "lead-pricelist", "stage": "lead",        "match": "word", "pattern": "pricelist",   "direction": "inbound", "priority": 100},
  {"id": "book-booking",   "stage": "booking",     "match": "word", "pattern": "booking",     "priority": 100},
  {"id": "book-reservasi", "stage": "booking",     "match": "word", "pattern": "reservasi",   "priority": 100},
  {"id": "book-jadwal",    "stage": "booking",     "match": "word", "pattern": "jadwalkan",   "priority": 100},
  {"id": "book-daftar",    "stage": "booking",     "match": "word", "pattern": "daftar",      "direction": "inbound", "priority": 100},
  {"id": "trx-transfer",   "stage": "transaction", "match": "word", "pattern": "sudah transfer", "direction": "inbound", "priority": 100},
  {"id": "trx-bayar",      "stage": "transaction", "match": "word", "pattern": "sudah bayar", "direction": "inbound", "priority": 100},
  {"id": "trx-lunas",      "stage": "transaction", "match": "word", "pattern": "lunas",       "priority": 100},
  {"id": "trx-bukti",      "stage": "transaction", "match": "word", "pattern": "bukti transfer", "direction": "inbound", "priority": 100}
]'::jsonb);

-- Daily activity per tenant, day (in the tenant's time zone) and lead channel: contacts that
-- became a lead or booked for the first time that day, transaction events of that day and
-- their revenue. Cohort figures (rates, medians) are the reports' business.
CREATE VIEW funnel_daily AS
WITH activity AS (
    SELECT c.tenant, c.channel, c.lead_at AS at, 1 AS leads, 0 AS bookings, 0 AS transactions, 0::numeric AS revenue
      FROM funnel_contacts c WHERE c.lead_at IS NOT NULL
    UNION ALL
    SELECT c.tenant, c.channel, c.booking_at, 0, 1, 0, 0
      FROM funnel_contacts c WHERE c.booking_at IS NOT NULL
    UNION ALL
    SELECT e.tenant, c.channel, e.occurred_at, 0, 0, 1, e.value
      FROM funnel_stage_events e
      JOIN funnel_contacts c ON c.tenant = e.tenant AND c.phone = e.phone
     WHERE e.stage = 'transaction'
)
SELECT a.tenant,
       (a.at AT TIME ZONE COALESCE(t.time_zone, 'Asia/Jakarta'))::date AS day,
       a.channel,
       sum(a.leads)::bigint        AS leads,
       sum(a.bookings)::bigint     AS bookings,
       sum(a.transactions)::bigint AS transactions,
       sum(a.revenue)::numeric(20,2) AS revenue
  FROM activity a
  LEFT JOIN funnel_tenants t ON t.tenant = a.tenant
 GROUP BY 1, 2, 3;
