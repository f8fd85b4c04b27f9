-- Least privilege (issue 27, docs/security.md "PostgreSQL roles"). Four kinds of user:
--   the owner    runs these migrations (`funnel-processor migrate`) and owns every object;
--   funnel_api       funnel-ingest: reads the funnel, writes tokens, rule sets and limits;
--   funnel_processor funnel-processor: writes the generations' tables and runs replays;
--   funnel_analyst   read-only on the funnel tables, row-level security per tenant.
-- The three are NOLOGIN group roles: give each service or person a LOGIN role of their own
-- and GRANT the group to it. No service owns anything or may create anything, so no service
-- runs DDL; what replay must create and drop (a generation's schema and tables) is done by
-- the SECURITY DEFINER functions below, which check their arguments, and only
-- funnel_processor may call them.
--
-- For later migrations: a new table or view needs its grants here (and, for a generation
-- table, in funnel_secure_generation); tests run the services as these roles, so a missing
-- grant fails them.

-- The group roles, unless an administrator made them already (roles belong to the cluster,
-- not the database). Creating them needs CREATEROLE; without it, say what to run.
DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['funnel_api', 'funnel_processor', 'funnel_analyst'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN', r);
            EXCEPTION WHEN insufficient_privilege THEN
                RAISE EXCEPTION 'role % does not exist and the migrating role may not create it', r
                    USING HINT = format('as a superuser or a role with CREATEROLE: CREATE ROLE %I NOLOGIN; then migrate again (docs/security.md)', r);
            END;
        END IF;
    END LOOP;
END
$$;

-- Nobody but the owner creates objects in public (PostgreSQL 15 already revokes it; older
-- servers granted CREATE to everyone).
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO funnel_api, funnel_processor, funnel_analyst;

-- Which tenants an analyst's LOGIN role may read: one row per (role, tenant); tenant '*' is
-- every tenant. A role without rows reads nothing. Written by the owner only.
CREATE TABLE funnel_analyst_tenants (
    role_name text NOT NULL,
    tenant    text NOT NULL CHECK (tenant = '*' OR tenant ~ '^[a-z0-9][a-z0-9_-]{0,63}$'),
    PRIMARY KEY (role_name, tenant)
);
ALTER TABLE funnel_analyst_tenants ENABLE ROW LEVEL SECURITY;
-- An analyst sees its own bindings (the funnel tables' policies read them as the analyst).
CREATE POLICY funnel_analyst_own ON funnel_analyst_tenants FOR SELECT TO funnel_analyst
    USING (role_name = current_user);
GRANT SELECT ON funnel_analyst_tenants TO funnel_analyst;

-- Shared tables in public.
GRANT SELECT ON _sqlx_migrations TO funnel_api, funnel_processor;
GRANT SELECT ON funnel_tenants TO funnel_api, funnel_processor, funnel_analyst;
GRANT SELECT ON funnel_rule_sets, funnel_active_rule_sets TO funnel_api, funnel_processor;
GRANT INSERT ON funnel_rule_sets TO funnel_api;
GRANT USAGE ON SEQUENCE funnel_rule_set_versions TO funnel_api;
GRANT SELECT, INSERT ON funnel_api_tokens TO funnel_api;
GRANT UPDATE (revoked_at, last_used_at) ON funnel_api_tokens TO funnel_api;
GRANT SELECT, INSERT, UPDATE, DELETE ON funnel_tenant_limits TO funnel_api;
GRANT SELECT ON funnel_secrets TO funnel_api;
GRANT SELECT, INSERT, UPDATE ON funnel_generations TO funnel_processor;

-- A generation's tables: the processor writes them, the API reads the funnel tables, analysts
-- read the funnel tables' rows of the tenants bound to them. Row-level security applies to everyone but the
-- owner: the services get a policy that passes every row.
CREATE FUNCTION funnel_secure_generation(gen_schema text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    t text;
BEGIN
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO funnel_api, funnel_processor, funnel_analyst', gen_schema);
    FOREACH t IN ARRAY ARRAY['funnel_contacts', 'funnel_stage_events', 'funnel_daily',
                             'funnel_sink_offsets', 'funnel_sink_topics'] LOOP
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %I.%I TO funnel_processor', gen_schema, t);
    END LOOP;
    FOREACH t IN ARRAY ARRAY['funnel_contacts', 'funnel_stage_events', 'funnel_daily'] LOOP
        EXECUTE format('GRANT SELECT ON %I.%I TO funnel_api, funnel_analyst', gen_schema, t);
        EXECUTE format('ALTER TABLE %I.%I ENABLE ROW LEVEL SECURITY', gen_schema, t);
        EXECUTE format('CREATE POLICY funnel_services ON %I.%I TO funnel_api, funnel_processor '
                       'USING (true) WITH CHECK (true)', gen_schema, t);
        -- The bindings are read once per query (an InitPlan and a hashed subplan), not per row.
        EXECUTE format('CREATE POLICY funnel_analyst_tenant ON %I.%I FOR SELECT TO funnel_analyst USING ('
                       'tenant IN (SELECT b.tenant FROM public.funnel_analyst_tenants b WHERE b.role_name = current_user) '
                       'OR EXISTS (SELECT 1 FROM public.funnel_analyst_tenants b WHERE b.role_name = current_user AND b.tenant = ''*''))',
                       gen_schema, t);
    END LOOP;
END
$$;
REVOKE EXECUTE ON FUNCTION funnel_secure_generation(text) FROM PUBLIC;

-- Schema-qualified, so the SECURITY DEFINER functions (search_path pg_catalog) can call them.
CREATE OR REPLACE FUNCTION funnel_live_schema() RETURNS text LANGUAGE sql STABLE AS $$
    SELECT schema_name FROM public.funnel_generations WHERE state = 'live'
$$;
CREATE OR REPLACE FUNCTION funnel_generation_schemas() RETURNS SETOF text LANGUAGE sql STABLE AS $$
    SELECT schema_name FROM public.funnel_generations WHERE state IN ('live', 'building') ORDER BY generation
$$;

-- The public views run with the privileges (and row-level security) of whoever queries them,
-- not their owner's. Only generation schemas can be pointed at.
CREATE OR REPLACE FUNCTION funnel_point_views(gen_schema text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
DECLARE
    t text;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM public.funnel_generations
                    WHERE schema_name = gen_schema AND state IN ('live', 'building')) THEN
        RAISE EXCEPTION 'schema % is not a live or building generation', gen_schema;
    END IF;
    FOREACH t IN ARRAY ARRAY['funnel_contacts', 'funnel_stage_events', 'funnel_daily',
                             'funnel_sink_offsets', 'funnel_sink_topics'] LOOP
        EXECUTE format('CREATE OR REPLACE VIEW public.%I WITH (security_invoker = true) AS SELECT * FROM %I.%I',
                       t, gen_schema, t);
    END LOOP;
END
$$;

-- As before (20261128000001_generations.sql), run as the owner: the new schema must be the
-- next generation's name and the template the live generation; the tables get their grants
-- and policies.
ALTER FUNCTION funnel_create_generation_tables(text, text) RENAME TO funnel_create_generation_tables_unchecked;
REVOKE EXECUTE ON FUNCTION funnel_create_generation_tables_unchecked(text, text) FROM PUBLIC;
CREATE FUNCTION funnel_create_generation_tables(new_schema text, template_schema text)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
BEGIN
    IF new_schema !~ '^funnel_gen_[0-9]+$' OR to_regnamespace(quote_ident(new_schema)) IS NOT NULL THEN
        RAISE EXCEPTION 'schema % is not the name of a new generation', new_schema;
    END IF;
    IF template_schema IS DISTINCT FROM public.funnel_live_schema() THEN
        RAISE EXCEPTION 'template % is not the live generation', template_schema;
    END IF;
    PERFORM public.funnel_create_generation_tables_unchecked(new_schema, template_schema);
    PERFORM public.funnel_secure_generation(new_schema);
END
$$;

-- Completing the tables (indexes, funnel_daily, triggers, SET LOGGED) needs the owner too;
-- only the generation being built, from the live one.
ALTER FUNCTION funnel_complete_generation_tables(text, text) RENAME TO funnel_complete_generation_tables_unchecked;
REVOKE EXECUTE ON FUNCTION funnel_complete_generation_tables_unchecked(text, text) FROM PUBLIC;
CREATE FUNCTION funnel_complete_generation_tables(new_schema text, template_schema text)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM public.funnel_generations
                    WHERE schema_name = new_schema AND state = 'building') THEN
        RAISE EXCEPTION 'schema % is not the generation being built', new_schema;
    END IF;
    IF template_schema IS DISTINCT FROM public.funnel_live_schema() THEN
        RAISE EXCEPTION 'template % is not the live generation', template_schema;
    END IF;
    PERFORM public.funnel_complete_generation_tables_unchecked(new_schema, template_schema);
END
$$;

-- Drops the schema of a generation that is over (retired or abandoned): what `replay` did
-- with DROP SCHEMA itself.
CREATE FUNCTION funnel_drop_generation_schema(gen_schema text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM public.funnel_generations
                    WHERE schema_name = gen_schema AND state IN ('retired', 'abandoned', 'dropped')) THEN
        RAISE EXCEPTION 'schema % is not a retired or abandoned generation', gen_schema;
    END IF;
    EXECUTE format('DROP SCHEMA IF EXISTS %I CASCADE', gen_schema);
END
$$;

REVOKE EXECUTE ON FUNCTION funnel_point_views(text), funnel_create_generation_tables(text, text),
    funnel_complete_generation_tables(text, text), funnel_drop_generation_schema(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION funnel_point_views(text), funnel_create_generation_tables(text, text),
    funnel_complete_generation_tables(text, text), funnel_drop_generation_schema(text) TO funnel_processor;

-- The generations that exist now, and the views on the live one.
SELECT funnel_secure_generation(schema_name)
  FROM funnel_generations
 WHERE state IN ('live', 'building', 'retired')
   AND to_regnamespace(quote_ident(schema_name)) IS NOT NULL;
SELECT funnel_point_views(funnel_live_schema());
ALTER VIEW funnel_contact_progress SET (security_invoker = true);
ALTER VIEW funnel_active_rule_sets SET (security_invoker = true);
GRANT SELECT ON funnel_contacts, funnel_stage_events, funnel_daily, funnel_contact_progress
    TO funnel_api, funnel_processor, funnel_analyst;
GRANT SELECT ON funnel_sink_offsets, funnel_sink_topics TO funnel_processor;
