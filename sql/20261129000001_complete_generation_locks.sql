-- funnel_complete_generation_tables locked funnel_contacts first and took the offsets table
-- (SET LOGGED) later, while the sink's batches lock the offsets row first and then write
-- funnel_contacts: a batch of the building generation in flight when the replay completed the
-- tables deadlocked with it (PostgreSQL aborted the completion). The completion now locks all
-- of the generation's tables up front, in the sink's order.
CREATE OR REPLACE FUNCTION funnel_complete_generation_tables(new_schema text, template_schema text)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    t text;
    def text;
    rel oid;
BEGIN
    -- Every table at once, in the order the sink's transactions take them (offsets first, then
    -- contacts and stage events): a batch still writing then finishes first. Locking contacts
    -- first and the offsets later deadlocked with such a batch.
    EXECUTE format('LOCK TABLE %1$I.funnel_sink_offsets, %1$I.funnel_contacts, %1$I.funnel_stage_events, '
                   '%1$I.funnel_daily, %1$I.funnel_sink_topics IN ACCESS EXCLUSIVE MODE', new_schema);
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
