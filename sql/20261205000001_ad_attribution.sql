-- Click-to-WhatsApp attribution (issue 28): each contact's first touch by an ad, the earliest
-- of its messages that carried a `referral` (ties: the smallest event id), kept by the fold
-- like the lead. In every generation being kept up to date; new generations copy the live one.
DO $$
DECLARE
    s text;
BEGIN
    FOR s IN SELECT * FROM funnel_generation_schemas() LOOP
        EXECUTE format('ALTER TABLE %I.funnel_contacts
            ADD COLUMN ad_at          timestamptz,
            ADD COLUMN ad_event_id    text,
            ADD COLUMN ad_source_id   text,
            ADD COLUMN ad_source_type text,
            ADD COLUMN ad_source_url  text,
            ADD COLUMN ad_headline    text,
            ADD COLUMN ctwa_clid      text', s);
    END LOOP;
    PERFORM funnel_point_views(funnel_live_schema());
END
$$;
