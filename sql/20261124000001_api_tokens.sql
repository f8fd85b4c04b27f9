-- Bearer tokens of the HTTP API. A token belongs to one tenant and has scopes; only its
-- SHA-256 is stored (tokens are 256 random bits, so a fast hash is enough).
CREATE TABLE funnel_api_tokens (
    id           text        PRIMARY KEY,           -- public handle: list and revoke use it
    tenant       text        NOT NULL,
    scopes       text[]      NOT NULL CHECK (scopes <@ ARRAY['ingest', 'read', 'admin']::text[] AND cardinality(scopes) > 0),
    token_sha256 bytea       NOT NULL UNIQUE,
    description  text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz
);
