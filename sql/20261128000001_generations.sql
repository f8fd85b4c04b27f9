-- Generations (docs/replay.md): the sink's tables live in one schema per generation. The
-- names analysts and funnel-ingest query (public.funnel_contacts, funnel_stage_events,
-- funnel_daily, funnel_sink_offsets, funnel_sink_topics) are views on the live generation. A
-- replay builds a new generation beside the live one, and a switch repoints the views in one
-- transaction: a reader sees the old tables or the new ones, never a half-built mix.
--
-- Shared by all generations, in public: funnel_tenants, funnel_rule_sets, funnel_api_tokens.
--
-- For later migrations: a change to a generation table must be made in every schema of
-- funnel_generation_schemas() (and the views recreated with funnel_point_views() when columns
-- change), e.g.
--   DO $$ DECLARE s text; BEGIN
--     FOR s IN SELECT * FROM funnel_generation_schemas() LOOP
--       EXECUTE format('ALTER TABLE %I.funnel_contacts ADD COLUMN ...', s);
--     END LOOP;
--     PERFORM funnel_point_views(funnel_live_schema());
--   END $$;

CREATE TABLE funnel_generations (
    generation        integer     PRIMARY KEY CHECK (generation > 0),
    schema_name       text        NOT NULL UNIQUE,
    -- building: a replay writes it while the live one goes on; live: the views point at it;
    -- retired: replaced by a newer generation (its schema is kept for comparison until the
    -- next replay); dropped: retired and its schema dropped; abandoned: a replay given up (its
    -- schema is dropped).
    state             text        NOT NULL CHECK (state IN ('building', 'live', 'retired', 'abandoned', 'dropped')),
    -- The Kafka consumer group of the generation is FUNNEL_CONSUMER_GROUP followed by this.
    group_suffix      text        NOT NULL,
    source_generation integer     REFERENCES funnel_generations (generation),
    -- What the replay was asked: 'earliest' or an RFC 3339 time.
    replay_from       text,
    -- Per partition of the input topic, the offset from which records are classified under the
    -- current rules; records before it keep the classification of source_generation.
    -- {"topic": "...", "partitions": {"0": 1234, ...}}
    boundaries        jsonb,
    -- A generation being built is written without its secondary indexes, funnel_daily and the
    -- triggers that keep it (faster writes); funnel_complete_generation_tables adds them once
    -- it has caught up, before it can become live.
    tables_complete   boolean     NOT NULL DEFAULT true,
    created_at        timestamptz NOT NULL DEFAULT now(),
    created_by        text,
    switched_at       timestamptz,
    ended_at          timestamptz
);
-- One live generation, and at most one being built.
CREATE UNIQUE INDEX funnel_generations_live ON funnel_generations ((true)) WHERE state = 'live';
CREATE UNIQUE INDEX funnel_generations_building ON funnel_generations ((true)) WHERE state = 'building';

CREATE SCHEMA funnel_gen_1;
INSERT INTO funnel_generations (generation, schema_name, state, group_suffix, created_by)
VALUES (1, 'funnel_gen_1', 'live', '', 'migration');

DROP VIEW funnel_contact_progress;
ALTER TABLE funnel_contacts SET SCHEMA funnel_gen_1;
ALTER TABLE funnel_stage_events SET SCHEMA funnel_gen_1;
ALTER TABLE funnel_daily SET SCHEMA funnel_gen_1;
ALTER TABLE funnel_sink_offsets SET SCHEMA funnel_gen_1;
ALTER TABLE funnel_sink_topics SET SCHEMA funnel_gen_1;

-- The first offset a generation applied in each partition: a replay must be able to re-read
-- from there, so a log that starts later (retention) is refused. NULL on rows written before
-- it was recorded, read as 0.
ALTER TABLE funnel_gen_1.funnel_sink_offsets ADD COLUMN first_offset bigint CHECK (first_offset >= 0);

-- The schema of the live generation.
CREATE FUNCTION funnel_live_schema() RETURNS text LANGUAGE sql STABLE AS $$
    SELECT schema_name FROM funnel_generations WHERE state = 'live'
$$;

-- The schemas whose tables exist and are kept up to date (live and building).
CREATE FUNCTION funnel_generation_schemas() RETURNS SETOF text LANGUAGE sql STABLE AS $$
    SELECT schema_name FROM funnel_generations WHERE state IN ('live', 'building') ORDER BY generation
$$;

-- Points the public views at a generation's tables. Run in the switch's transaction.
CREATE FUNCTION funnel_point_views(gen_schema text) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['funnel_contacts', 'funnel_stage_events', 'funnel_daily',
                             'funnel_sink_offsets', 'funnel_sink_topics'] LOOP
        EXECUTE format('CREATE OR REPLACE VIEW public.%I AS SELECT * FROM %I.%I', t, gen_schema, t);
    END LOOP;
END
$$;
SELECT funnel_point_views('funnel_gen_1');

COMMENT ON VIEW funnel_contacts IS 'One row per contact: the live generation''s funnel_contacts (docs/analysts.md)';
COMMENT ON VIEW funnel_stage_events IS 'Each stage a message reached: the live generation''s funnel_stage_events';
COMMENT ON VIEW funnel_daily IS 'Lead cohorts per tenant, day and channel: the live generation''s funnel_daily';

-- Creates a generation's empty tables in new_schema as copies of template_schema's: columns,
-- defaults, checks, primary and unique keys (which the sink's upserts need) and storage
-- parameters. The other indexes, funnel_daily's rows and the triggers that keep it come with
-- funnel_complete_generation_tables: a replay writes millions of rows, and maintaining them
-- row by row would cost more than building them once. Until then the tables are UNLOGGED (no
-- WAL): a PostgreSQL crash empties all of them at once, offsets included, and the processors
-- then rebuild the generation from the log (docs/exactly-once.md, I3), so nothing is applied
-- twice or lost; the replay only takes longer.
-- With an empty search_path every name the catalog functions print is schema-qualified.
CREATE FUNCTION funnel_create_generation_tables(new_schema text, template_schema text)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    t text;
    def text;
    rel oid;
BEGIN
    EXECUTE format('CREATE SCHEMA %I', new_schema);
    FOREACH t IN ARRAY ARRAY['funnel_contacts', 'funnel_stage_events', 'funnel_daily',
                             'funnel_sink_offsets', 'funnel_sink_topics'] LOOP
        rel := format('%I.%I', template_schema, t)::regclass;
        EXECUTE format('CREATE UNLOGGED TABLE %I.%I (LIKE %I.%I INCLUDING ALL EXCLUDING INDEXES)',
                       new_schema, t, template_schema, t);
        FOR def IN SELECT format('ALTER TABLE %I.%I ADD CONSTRAINT %I %s', new_schema, t, conname,
                                 pg_get_constraintdef(oid))
                     FROM pg_constraint WHERE conrelid = rel AND contype IN ('p', 'u') LOOP
            EXECUTE def;
        END LOOP;
        FOR def IN SELECT format('ALTER TABLE %I.%I SET (%s)', new_schema, t, array_to_string(reloptions, ', '))
                     FROM pg_class WHERE oid = rel AND reloptions IS NOT NULL LOOP
            EXECUTE def;
        END LOOP;
    END LOOP;
END
$$;

-- Completes a generation's tables: logged from now on, the indexes that are not keys (same
-- names and definitions as template_schema's), funnel_daily rebuilt from funnel_contacts, and
-- the triggers. Writers
-- of new_schema wait meanwhile (CREATE INDEX and the lock), so funnel_daily and the triggers
-- start from the same rows.
CREATE FUNCTION funnel_complete_generation_tables(new_schema text, template_schema text)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    t text;
    def text;
    rel oid;
BEGIN
    EXECUTE format('LOCK TABLE %I.funnel_contacts IN SHARE ROW EXCLUSIVE MODE', new_schema);
    FOREACH t IN ARRAY ARRAY['funnel_contacts', 'funnel_stage_events', 'funnel_daily',
                             'funnel_sink_offsets', 'funnel_sink_topics'] LOOP
        IF (SELECT relpersistence FROM pg_class WHERE oid = format('%I.%I', new_schema, t)::regclass) = 'u' THEN
            EXECUTE format('ALTER TABLE %I.%I SET LOGGED', new_schema, t);
        END IF;
    END LOOP;
    FOREACH t IN ARRAY ARRAY['funnel_contacts', 'funnel_stage_events', 'funnel_daily',
                             'funnel_sink_offsets', 'funnel_sink_topics'] LOOP
        rel := format('%I.%I', template_schema, t)::regclass;
        FOR def IN SELECT replace(pg_get_indexdef(i.indexrelid),
                                  format(' ON %I.%I ', template_schema, t),
                                  format(' ON %I.%I ', new_schema, t))
                     FROM pg_index i
                    WHERE i.indrelid = rel
                      AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)
                      AND NOT EXISTS (SELECT 1 FROM pg_indexes x
                                       WHERE x.schemaname = new_schema
                                         AND x.indexname = (SELECT relname FROM pg_class WHERE oid = i.indexrelid)) LOOP
            EXECUTE def;
        END LOOP;
    END LOOP;
    PERFORM public.funnel_daily_rebuild_in(new_schema, NULL);
    FOREACH t IN ARRAY ARRAY['funnel_contacts', 'funnel_stage_events', 'funnel_daily',
                             'funnel_sink_offsets', 'funnel_sink_topics'] LOOP
        rel := format('%I.%I', template_schema, t)::regclass;
        FOR def IN SELECT replace(pg_get_triggerdef(oid),
                                  format(' ON %I.%I ', template_schema, t),
                                  format(' ON %I.%I ', new_schema, t))
                     FROM pg_trigger WHERE tgrelid = rel AND NOT tgisinternal
                      AND NOT EXISTS (SELECT 1 FROM pg_trigger n
                                       WHERE n.tgrelid = format('%I.%I', new_schema, t)::regclass
                                         AND n.tgname = pg_trigger.tgname) LOOP
            EXECUTE def;
        END LOOP;
    END LOOP;
    EXECUTE format('ANALYZE %I.funnel_contacts', new_schema);
    EXECUTE format('ANALYZE %I.funnel_stage_events', new_schema);
END
$$;

-- funnel_daily is kept per generation: the triggers write the funnel_daily of the schema of
-- the funnel_contacts table they fire on.
CREATE OR REPLACE FUNCTION funnel_daily_apply() RETURNS trigger LANGUAGE plpgsql AS $fn$
DECLARE
    cols CONSTANT text := 'tenant, lead_at, channel, booking_at, transaction_at, transaction_value, transaction_count';
    changed text;
    zt text[];
    zd date[];
    zc text[];
BEGIN
    changed := CASE TG_OP
        WHEN 'INSERT' THEN format('SELECT 1 AS sign, %s FROM new_rows', cols)
        WHEN 'DELETE' THEN format('SELECT -1 AS sign, %s FROM old_rows', cols)
        ELSE format('SELECT 1 AS sign, %s FROM new_rows UNION ALL SELECT -1, %s FROM old_rows', cols, cols)
    END;
    EXECUTE format($q$
    WITH changed AS (%s), delta AS (
        SELECT c.tenant,
               public.funnel_daily_day(c.lead_at, c.booking_at, c.transaction_at, t.time_zone) AS day,
               CASE WHEN c.lead_at IS NOT NULL THEN c.channel END AS channel,
               sum(c.sign * (c.lead_at IS NOT NULL)::int) AS leads,
               sum(c.sign * (c.booking_at IS NOT NULL)::int) AS bookings,
               sum(c.sign * (c.transaction_at IS NOT NULL)::int) AS transactions,
               sum(c.sign * c.transaction_value) AS revenue,
               sum(c.sign * c.transaction_count) AS orders
          FROM changed c
          LEFT JOIN public.funnel_tenants t ON t.tenant = c.tenant
         WHERE c.lead_at IS NOT NULL OR c.booking_at IS NOT NULL OR c.transaction_at IS NOT NULL
         GROUP BY 1, 2, 3
    ), up AS (
        INSERT INTO %I.funnel_daily AS d (tenant, day, channel, leads, bookings, transactions, revenue, orders)
        SELECT * FROM delta
         WHERE leads <> 0 OR bookings <> 0 OR transactions <> 0 OR revenue <> 0 OR orders <> 0
         ORDER BY tenant, day, channel
        ON CONFLICT (tenant, day, channel) DO UPDATE SET
            leads = d.leads + EXCLUDED.leads,
            bookings = d.bookings + EXCLUDED.bookings,
            transactions = d.transactions + EXCLUDED.transactions,
            revenue = d.revenue + EXCLUDED.revenue,
            orders = d.orders + EXCLUDED.orders
        RETURNING d.tenant, d.day, d.channel, d.leads, d.bookings, d.transactions, d.revenue, d.orders
    )
    SELECT array_agg(up.tenant), array_agg(up.day), array_agg(up.channel)
      FROM up
     WHERE up.leads = 0 AND up.bookings = 0 AND up.transactions = 0 AND up.revenue = 0 AND up.orders = 0
    $q$, changed, TG_TABLE_SCHEMA) INTO zt, zd, zc;
    IF zt IS NOT NULL THEN
        EXECUTE format($q$
        DELETE FROM %I.funnel_daily d
         USING unnest($1, $2, $3) AS z(tenant, day, channel)
         WHERE d.tenant = z.tenant AND d.day = z.day AND d.channel IS NOT DISTINCT FROM z.channel
           AND d.leads = 0 AND d.bookings = 0 AND d.transactions = 0 AND d.revenue = 0 AND d.orders = 0
        $q$, TG_TABLE_SCHEMA) USING zt, zd, zc;
    END IF;
    RETURN NULL;
END
$fn$;

CREATE OR REPLACE FUNCTION funnel_daily_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('TRUNCATE %I.funnel_daily', TG_TABLE_SCHEMA);
    RETURN NULL;
END
$$;

-- Recomputes one tenant's rows (NULL: every tenant) of one generation's funnel_daily.
CREATE FUNCTION funnel_daily_rebuild_in(gen_schema text, only_tenant text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('DELETE FROM %I.funnel_daily WHERE $1 IS NULL OR tenant = $1', gen_schema)
        USING only_tenant;
    EXECUTE format($q$
    INSERT INTO %I.funnel_daily (tenant, day, channel, leads, bookings, transactions, revenue, orders)
    SELECT c.tenant,
           public.funnel_daily_day(c.lead_at, c.booking_at, c.transaction_at, t.time_zone),
           CASE WHEN c.lead_at IS NOT NULL THEN c.channel END,
           count(c.lead_at), count(c.booking_at), count(c.transaction_at),
           sum(c.transaction_value), sum(c.transaction_count)
      FROM %I.funnel_contacts c
      LEFT JOIN public.funnel_tenants t ON t.tenant = c.tenant
     WHERE ($1 IS NULL OR c.tenant = $1)
       AND (c.lead_at IS NOT NULL OR c.booking_at IS NOT NULL OR c.transaction_at IS NOT NULL)
     GROUP BY 1, 2, 3
    $q$, gen_schema, gen_schema) USING only_tenant;
END
$$;

-- The same in every generation being kept up to date (a tenant's time zone changed).
CREATE OR REPLACE FUNCTION funnel_daily_rebuild(only_tenant text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    s text;
BEGIN
    FOR s IN SELECT * FROM funnel_generation_schemas() LOOP
        PERFORM funnel_daily_rebuild_in(s, only_tenant);
    END LOOP;
END
$$;

-- As before, on the public view of the live generation.
CREATE VIEW funnel_contact_progress AS
SELECT c.tenant,
       c.phone,
       CASE WHEN c.transaction_at IS NOT NULL THEN 'transaction'
            WHEN c.booking_at IS NOT NULL THEN 'booking'
            WHEN c.lead_at IS NOT NULL THEN 'lead' END AS stage,
       c.lead_at,
       (c.lead_at AT TIME ZONE coalesce(t.time_zone, 'Asia/Jakarta'))::date AS lead_day,
       c.channel,
       c.campaign,
       c.booking_at,
       c.transaction_at,
       c.transaction_value,
       c.transaction_count,
       extract(epoch FROM c.booking_at - c.lead_at)::float8 / 3600 AS hours_lead_to_booking,
       extract(epoch FROM c.transaction_at - c.lead_at)::float8 / 3600 AS hours_lead_to_transaction,
       c.first_message_at,
       c.last_message_at,
       c.message_count,
       c.rule_set_version
  FROM funnel_contacts c
  LEFT JOIN funnel_tenants t ON t.tenant = c.tenant;
