-- The analyst surface (docs/analysts.md).
--
-- funnel_daily becomes a table kept up to date by statement triggers on funnel_contacts, so
-- that analysts' `WHERE day BETWEEN ...` stays an index range at any size (the view it replaces
-- aggregated every contact on every query). Its rows are lead cohorts, the same figures as
-- GET /v1/reports/funnel?group_by=day: one row per tenant, lead day (in the tenant's time zone)
-- and lead channel, counting the contacts whose lead fell on that day and, among them, those
-- that booked and paid (whenever they did), their revenue and their number of transaction
-- events. A contact with a booking or a transaction but no lead is counted on the day of its
-- first conversion with channel NULL and leads 0, never dropped.
--
-- Each statement that changes funnel_contacts (the sink writes one upsert per batch) adds the
-- new rows' contributions and subtracts the old ones, in one INSERT .. ON CONFLICT ordered by
-- key, so two sinks touching the same day lock its rows in the same order. Rows that fall to
-- zero are deleted. A tenant's time zone change rebuilds its rows; funnel_daily_rebuild(tenant)
-- does the same on demand.
DROP VIEW funnel_daily;

CREATE TABLE funnel_daily (
    tenant       text          NOT NULL,
    day          date          NOT NULL,
    channel      text,                          -- lead channel; NULL: contacts without a lead
    leads        bigint        NOT NULL DEFAULT 0,
    bookings     bigint        NOT NULL DEFAULT 0,
    transactions bigint        NOT NULL DEFAULT 0,  -- contacts that paid
    revenue      numeric(20,2) NOT NULL DEFAULT 0,
    orders       bigint        NOT NULL DEFAULT 0   -- their transaction events
);
CREATE UNIQUE INDEX funnel_daily_key ON funnel_daily (tenant, day, channel) NULLS NOT DISTINCT;

-- Which day and channel a contact row counts under, in its tenant's time zone.
CREATE FUNCTION funnel_daily_day(lead_at timestamptz, booking_at timestamptz,
                                 transaction_at timestamptz, time_zone text)
RETURNS date LANGUAGE sql STABLE AS $$
    SELECT (coalesce(lead_at, least(booking_at, transaction_at))
            AT TIME ZONE coalesce(time_zone, 'Asia/Jakarta'))::date
$$;

-- The statement trigger: adds the contributions of the statement's new rows and subtracts
-- those of its old rows. Transition tables exist only for the trigger's own event (no old_rows
-- on INSERT), hence the query is assembled per event.
CREATE FUNCTION funnel_daily_apply() RETURNS trigger LANGUAGE plpgsql AS $fn$
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
               funnel_daily_day(c.lead_at, c.booking_at, c.transaction_at, t.time_zone) AS day,
               CASE WHEN c.lead_at IS NOT NULL THEN c.channel END AS channel,
               sum(c.sign * (c.lead_at IS NOT NULL)::int) AS leads,
               sum(c.sign * (c.booking_at IS NOT NULL)::int) AS bookings,
               sum(c.sign * (c.transaction_at IS NOT NULL)::int) AS transactions,
               sum(c.sign * c.transaction_value) AS revenue,
               sum(c.sign * c.transaction_count) AS orders
          FROM changed c
          LEFT JOIN funnel_tenants t ON t.tenant = c.tenant
         WHERE c.lead_at IS NOT NULL OR c.booking_at IS NOT NULL OR c.transaction_at IS NOT NULL
         GROUP BY 1, 2, 3
    ), up AS (
        INSERT INTO funnel_daily AS d (tenant, day, channel, leads, bookings, transactions, revenue, orders)
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
    $q$, changed) INTO zt, zd, zc;
    IF zt IS NOT NULL THEN
        DELETE FROM funnel_daily d
         USING unnest(zt, zd, zc) AS z(tenant, day, channel)
         WHERE d.tenant = z.tenant AND d.day = z.day AND d.channel IS NOT DISTINCT FROM z.channel
           AND d.leads = 0 AND d.bookings = 0 AND d.transactions = 0 AND d.revenue = 0 AND d.orders = 0;
    END IF;
    RETURN NULL;
END
$fn$;

CREATE TRIGGER funnel_daily_insert AFTER INSERT ON funnel_contacts
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION funnel_daily_apply();
CREATE TRIGGER funnel_daily_update AFTER UPDATE ON funnel_contacts
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION funnel_daily_apply();
CREATE TRIGGER funnel_daily_delete AFTER DELETE ON funnel_contacts
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION funnel_daily_apply();

-- Recomputes one tenant's rows (NULL: every tenant) from funnel_contacts.
CREATE FUNCTION funnel_daily_rebuild(only_tenant text) RETURNS void LANGUAGE sql AS $$
    DELETE FROM funnel_daily WHERE only_tenant IS NULL OR tenant = only_tenant;
    INSERT INTO funnel_daily (tenant, day, channel, leads, bookings, transactions, revenue, orders)
    SELECT c.tenant,
           funnel_daily_day(c.lead_at, c.booking_at, c.transaction_at, t.time_zone),
           CASE WHEN c.lead_at IS NOT NULL THEN c.channel END,
           count(c.lead_at), count(c.booking_at), count(c.transaction_at),
           sum(c.transaction_value), sum(c.transaction_count)
      FROM funnel_contacts c
      LEFT JOIN funnel_tenants t ON t.tenant = c.tenant
     WHERE (only_tenant IS NULL OR c.tenant = only_tenant)
       AND (c.lead_at IS NOT NULL OR c.booking_at IS NOT NULL OR c.transaction_at IS NOT NULL)
     GROUP BY 1, 2, 3;
$$;

CREATE FUNCTION funnel_daily_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    TRUNCATE funnel_daily;
    RETURN NULL;
END
$$;
CREATE TRIGGER funnel_daily_truncate AFTER TRUNCATE ON funnel_contacts
    FOR EACH STATEMENT EXECUTE FUNCTION funnel_daily_truncate();

CREATE FUNCTION funnel_daily_time_zone() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM funnel_daily_rebuild(OLD.tenant);
    ELSIF TG_OP = 'INSERT' OR NEW.time_zone IS DISTINCT FROM OLD.time_zone THEN
        PERFORM funnel_daily_rebuild(NEW.tenant);
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER funnel_daily_time_zone AFTER INSERT OR UPDATE OR DELETE ON funnel_tenants
    FOR EACH ROW EXECUTE FUNCTION funnel_daily_time_zone();

SELECT funnel_daily_rebuild(NULL);

-- Contacts by the time they reached a stage (GET /v1/contacts?stage=..., the stuck-at-stage
-- exports), and contacts without a lead by their first conversion (the reports' no_lead row).
-- Partial: only contacts that reached the stage pay for the index on every sink insert.
CREATE INDEX funnel_contacts_booking_at ON funnel_contacts (tenant, booking_at)
    WHERE booking_at IS NOT NULL;
CREATE INDEX funnel_contacts_transaction_at ON funnel_contacts (tenant, transaction_at)
    WHERE transaction_at IS NOT NULL;
CREATE INDEX funnel_contacts_no_lead ON funnel_contacts (tenant, (least(booking_at, transaction_at)))
    WHERE lead_at IS NULL;

-- Every contact with its furthest stage, its lead day in its tenant's time zone and its times
-- to convert, for analysts. A plain projection of funnel_contacts: conditions on tenant, phone,
-- lead_at, booking_at or transaction_at reach the table's indexes through it.
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
