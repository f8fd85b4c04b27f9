-- Tenants are isolated from each other (issue 27).

-- Funnel's built-in starter rule set: what a tenant that never stored rules of its own is
-- classified with (before, such a tenant got the `default` tenant's active set, so whoever
-- held a `default` admin token rewrote other tenants' funnels). It is versioned like any set,
-- belongs to no tenant (`_builtin` is not a name a token can carry: tenant names start with a
-- letter or digit) and only migrations write it. Its rules are those of the first set
-- (20261123000001_funnel_tables.sql); without it the processor refuses to start.
INSERT INTO funnel_rule_sets (tenant, created_by, rules)
SELECT '_builtin', 'migration', rules
  FROM funnel_rule_sets
 WHERE tenant = 'default' AND version = 1 AND created_by = 'migration';
ALTER TABLE funnel_rule_sets ADD CONSTRAINT funnel_rule_sets_builtin_by_migrations
    CHECK (tenant <> '_builtin' OR created_by = 'migration');

-- Per-tenant limits (`funnel-ingest tenant limits`); NULL is the service's default
-- (FUNNEL_LIMIT_MESSAGES_PER_SECOND, FUNNEL_LIMIT_BURST, FUNNEL_LIMIT_READS_PER_SECOND).
-- Running services read this table every few seconds.
CREATE TABLE funnel_tenant_limits (
    tenant              text        PRIMARY KEY,
    messages_per_second integer     CHECK (messages_per_second > 0),
    burst               integer     CHECK (burst > 0),
    reads_per_second    integer     CHECK (reads_per_second > 0),
    updated_at          timestamptz NOT NULL DEFAULT now()
);

-- Tokens may expire; the API records (coarsely, every few seconds) when each was last used.
ALTER TABLE funnel_api_tokens
    ADD COLUMN expires_at   timestamptz,
    ADD COLUMN last_used_at timestamptz;

-- Tenant names: 1..64 of a-z, 0-9, _ and -, starting with a letter or digit (so no token can
-- act for `_builtin`). NOT VALID: rows written before are left as they are.
ALTER TABLE funnel_api_tokens ADD CONSTRAINT funnel_api_tokens_tenant_name
    CHECK (tenant ~ '^[a-z0-9][a-z0-9_-]{0,63}$') NOT VALID;
ALTER TABLE funnel_tenant_limits ADD CONSTRAINT funnel_tenant_limits_tenant_name
    CHECK (tenant ~ '^[a-z0-9][a-z0-9_-]{0,63}$');

-- Secrets the services share, made here so every instance uses the same: `cursor_key` seals
-- the API's paging cursors (32 random bytes from two version-4 UUIDs, 244 random bits).
CREATE TABLE funnel_secrets (
    name       text        PRIMARY KEY,
    value      bytea       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO funnel_secrets (name, value)
VALUES ('cursor_key', decode(replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''), 'hex'));
