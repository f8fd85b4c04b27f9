-- The analysts' dataset of docs/analysts.md: a year of funnel rows for 10 million contacts of
-- tenant `default` (time zone Asia/Jakarta, the default: no funnel_tenants row) and 200 000 of
-- tenant `acme` (time zone UTC), with their stage events. Deterministic: every random choice is
-- a hash of the contact's number, so two runs give the same rows.
--
-- Run it with psql against an empty database that has every sql/*.sql applied:
--
--   createdb analysts_10m
--   for f in sql/*.sql; do psql -v ON_ERROR_STOP=1 -d analysts_10m -f "$f"; done
--   psql -v ON_ERROR_STOP=1 -d analysts_10m -f loadtest/analysts_10m.sql
--
-- Variables (psql -v name=value): contacts (10000000), acme_contacts (200000), chunks (10),
-- event_sample (1.0: the share of contacts whose lead and booking events are written;
-- transaction events are always written in full).
--
-- The year is the 365 local days 2025-11-24 .. 2026-11-23; "now" is 2026-11-24 00:00 local, so
-- conversions that would fall after it have not happened yet. Per contact:
--   80% leads: channel ads 35%, campaign_blast 20%, website 20%, direct 15%, crm 10%; campaign
--       one of 16 themes per month (about 200 names), NULL for 30% (mostly direct and website);
--       35% of leads book, 15 minutes to 10 days after the lead (3% of bookings come before
--       the lead); a third of those pay (12% of leads), 30 minutes to 7 days after the booking;
--       value 50 000 .. 5 000 000 (log-uniform, whole thousands) in 1 (72%), 2 (20%) or 3 (8%)
--       transaction events;
--   3% book or pay without a lead (channel and campaign NULL);
--   17% only chat (no stage).
-- Lead times follow a daily shape (peaks at 10-11 and 20 local), a weekly one (weekends lower),
-- a year of growth, paydays and a few sale days (12.12, 11.11) and the Lebaran holiday.
-- Contacts are inserted in lead time order, as a sink inserts them when they first write.

\set ON_ERROR_STOP 1
\timing on
\if :{?contacts}
\else
\set contacts 10000000
\endif
\if :{?acme_contacts}
\else
\set acme_contacts 200000
\endif
\if :{?chunks}
\else
\set chunks 10
\endif
\if :{?event_sample}
\else
\set event_sample 1.0
\endif

SELECT EXISTS (SELECT 1 FROM funnel_contacts) AS not_empty \gset
\if :not_empty
\echo 'funnel_contacts is not empty: run this against a fresh database with the migrations applied'
\quit
\endif

SET work_mem = '64MB';
SET jit = off;  -- compiling these big expressions takes longer than running them
SET maintenance_work_mem = '512MB';

-- A uniform number in [0, 1) from a contact's seed and a draw number.
CREATE FUNCTION pg_temp.u(s bigint, k int) RETURNS float8
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS
$$ SELECT ((hashint8extended(s, k) >> 11) & 9007199254740991)::float8 / 9007199254740992.0 $$;

-- a * (b / a) ^ u seconds: log-uniform between a and b seconds.
CREATE FUNCTION pg_temp.logu(u float8, a float8, b float8) RETURNS interval
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS
$$ SELECT make_interval(secs => a * power(b / a, u)) $$;

-- The event ids look like derived ones (`sha256-` and 40 hex digits).
CREATE FUNCTION pg_temp.event_id(tenant text, phone text, what text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS
$$ SELECT 'sha256-' || left(encode(sha256(convert_to(tenant || '/' || phone || '/' || what, 'UTF8')), 'hex'), 40) $$;

CREATE TEMP TABLE gen_tenants (tenant text, tz text, prefix text, n bigint, seed bigint);
INSERT INTO gen_tenants VALUES
    ('default', 'Asia/Jakarta', '+62812', :contacts, 0),
    ('acme', 'UTC', '+62857', :acme_contacts, 1000000000);

INSERT INTO funnel_tenants (tenant, time_zone) VALUES ('acme', 'UTC') ON CONFLICT (tenant) DO NOTHING;

-- Two later rule sets, so that events and contacts carry three versions.
UPDATE funnel_rule_sets SET created_at = '2025-11-20 09:00+07' WHERE tenant = 'default' AND version = 1;
INSERT INTO funnel_rule_sets (tenant, created_at, created_by, rules)
SELECT 'default', at, 'loadtest/analysts_10m.sql', rules || extra
  FROM funnel_rule_sets,
       (VALUES ('2026-03-02 10:00+07'::timestamptz, '[{"id": "lead-katalog", "stage": "lead", "match": "word", "pattern": "katalog", "direction": "inbound", "priority": 100}]'::jsonb),
               ('2026-08-17 09:00+07'::timestamptz, '[{"id": "lead-katalog", "stage": "lead", "match": "word", "pattern": "katalog", "direction": "inbound", "priority": 100},
                                                      {"id": "trx-dp", "stage": "transaction", "match": "word", "pattern": "dp sudah", "direction": "inbound", "priority": 100}]'::jsonb)) AS x(at, extra)
 WHERE tenant = 'default' AND version = 1
 ORDER BY at;
CREATE TEMP TABLE gen_rule_versions AS
SELECT version, created_at AS from_at,
       coalesce(lead(created_at) OVER (ORDER BY version), 'infinity') AS until
  FROM funnel_rule_sets WHERE tenant = 'default';

-- Each local hour of the year of each tenant, with the range of contact numbers whose lead
-- (or first message) falls in it. Weights: growth x weekday x hour x special days.
CREATE TEMP TABLE gen_hours AS
WITH h AS (
    SELECT g.tenant, g.tz, g.n, d, hr, ('2025-11-24'::date + d) AS day
      FROM gen_tenants g, generate_series(0, 364) d, generate_series(0, 23) hr
), w AS (
    SELECT h.*,
           (0.55 + 0.65 * d / 364.0)
         * (ARRAY[1.10, 1.12, 1.08, 1.04, 0.95, 0.78, 0.70])[extract(isodow FROM day)::int]
         * (ARRAY[0.25, 0.12, 0.07, 0.05, 0.06, 0.15, 0.35, 0.60, 0.90, 1.20, 1.40, 1.40,
                  1.10, 1.15, 1.25, 1.20, 1.15, 1.00, 0.95, 1.30, 1.50, 1.35, 0.90, 0.50])[hr + 1]
         * CASE WHEN day IN ('2025-12-12', '2026-11-11') THEN 2.2
                WHEN day IN ('2025-12-11', '2025-12-13', '2026-11-10', '2026-11-12') THEN 1.3
                WHEN day BETWEEN '2026-03-19' AND '2026-03-24' THEN 0.45   -- Lebaran
                WHEN day IN ('2025-12-25', '2026-01-01') THEN 0.6
                WHEN extract(day FROM day) >= 25 OR extract(day FROM day) = 1 THEN 1.12  -- payday
                ELSE 1 END AS weight
      FROM h
), c AS (
    SELECT w.*, sum(weight) OVER (PARTITION BY tenant ORDER BY d, hr) AS cum,
           sum(weight) OVER (PARTITION BY tenant) AS total
      FROM w
)
SELECT tenant, ((day + make_interval(hours => hr)) AT TIME ZONE tz) AS start_at,
       floor(n * (cum - weight) / total)::bigint + 1 AS i_lo,
       floor(n * cum / total)::bigint AS i_hi
  FROM c;
CREATE INDEX ON gen_hours (tenant, i_lo);
ANALYZE gen_hours;

-- Contacts number p_lo .. p_hi of one tenant, in one INSERT (one run of the funnel_daily trigger).
-- Every step ends in OFFSET 0 so that the planner does not substitute each step's expressions
-- into the next (the expression would grow exponentially).
CREATE FUNCTION pg_temp.gen_contacts(p_tenant text, p_lo bigint, p_hi bigint) RETURNS void
LANGUAGE sql AS $fn$
WITH base AS (
    SELECT g.tenant, g.tz, (('2026-11-23'::date + 1)::timestamp AT TIME ZONE g.tz) AS now_at,
           g.prefix || lpad(i::text, 8, '0') AS phone, g.seed + i AS s,
           h.start_at + make_interval(secs => 3600 * ((i - h.i_lo) + pg_temp.u(g.seed + i, 1)) / (h.i_hi - h.i_lo + 1)) AS t
      FROM gen_tenants g
      JOIN gen_hours h ON h.tenant = g.tenant AND h.i_hi >= p_lo AND h.i_lo <= p_hi AND h.i_hi >= h.i_lo
     CROSS JOIN LATERAL generate_series(greatest(h.i_lo, p_lo), least(h.i_hi, p_hi)) AS i
     WHERE g.tenant = p_tenant
    OFFSET 0
), r AS (
    SELECT b.*,
           pg_temp.u(s, 2) AS u2, pg_temp.u(s, 3) AS u3, pg_temp.u(s, 4) AS u4, pg_temp.u(s, 5) AS u5,
           pg_temp.u(s, 6) AS u6, pg_temp.u(s, 7) AS u7, pg_temp.u(s, 8) AS u8, pg_temp.u(s, 9) AS u9,
           pg_temp.u(s, 10) AS u10, pg_temp.u(s, 11) AS u11, pg_temp.u(s, 12) AS u12,
           pg_temp.u(s, 13) AS u13, pg_temp.u(s, 14) AS u14, pg_temp.u(s, 15) AS u15,
           pg_temp.u(s, 16) AS nl,   -- no_lead: < 0.60 booking only, < 0.85 booking and transaction, else transaction only
           pg_temp.u(s, 17) AS u17
      FROM base b
    OFFSET 0
), k AS (
    SELECT r.*,
           CASE WHEN u2 < 0.80 THEN 'lead' WHEN u2 < 0.83 THEN 'no_lead' ELSE 'chat' END AS kind,
           CASE WHEN u3 < 0.35 THEN 'ads' WHEN u3 < 0.55 THEN 'campaign_blast' WHEN u3 < 0.75 THEN 'website'
                WHEN u3 < 0.90 THEN 'direct' ELSE 'crm' END AS ch
      FROM r
    OFFSET 0
), l AS (
    SELECT k.*,
           CASE WHEN kind = 'lead' THEN t END AS lead_at,
           CASE WHEN kind = 'lead' THEN ch END AS channel,
           CASE WHEN kind = 'lead' AND u4 >= CASE ch WHEN 'ads' THEN 0.05 WHEN 'campaign_blast' THEN 0
                                                     WHEN 'website' THEN 0.5 WHEN 'direct' THEN 0.95 ELSE 0.4 END
                THEN to_char(t AT TIME ZONE tz, 'YYYY-MM') || '-' ||
                     (ARRAY['ig-reels', 'fb-lookalike', 'google-search', 'tiktok-spark', 'payday-blast', 'flash-sale',
                            'member-retarget', 'new-product', 'bundle-hemat', 'referral', 'webinar', 'free-consult',
                            'cashback', 'weekend-deal', 'brand-awareness', 'seasonal'])[1 + floor(16 * power(u5, 1.7))::int]
           END AS campaign,
           CASE WHEN kind = 'lead' AND u6 < 0.35 THEN
                     CASE WHEN u8 < 0.03 THEN t - pg_temp.logu(u7, 600, 172800)
                          ELSE t + pg_temp.logu(u7, 900, 864000) END
                WHEN kind = 'no_lead' AND nl < 0.85 THEN t + pg_temp.logu(u7, 300, 10800)
           END AS booking_raw
      FROM k
    OFFSET 0
), b AS (
    SELECT l.*, CASE WHEN booking_raw < now_at THEN booking_raw END AS booking_at
      FROM l
    OFFSET 0
), tr AS (
    SELECT b.*,
           CASE WHEN kind = 'lead' AND booking_at IS NOT NULL AND u9 < 0.343
                     THEN greatest(booking_at, lead_at) + pg_temp.logu(u10, 1800, 604800)
                WHEN kind = 'no_lead' AND nl >= 0.60 AND nl < 0.85 AND booking_at IS NOT NULL
                     THEN booking_at + pg_temp.logu(u10, 600, 172800)
                WHEN kind = 'no_lead' AND nl >= 0.85 THEN t + pg_temp.logu(u10, 300, 7200)
           END AS transaction_raw
      FROM b
    OFFSET 0
), p AS (
    SELECT tr.*, CASE WHEN transaction_raw < now_at THEN transaction_raw END AS transaction_at
      FROM tr
    OFFSET 0
), m AS (
    SELECT p.*,
           CASE WHEN transaction_at IS NOT NULL THEN round((50000 * power(100, u11))::numeric, -3) ELSE 0 END AS transaction_value,
           CASE WHEN transaction_at IS NULL THEN 0 WHEN u12 < 0.72 THEN 1 WHEN u12 < 0.92 THEN 2 ELSE 3 END AS transaction_count,
           least(CASE WHEN kind = 'lead' AND u13 >= 0.6 THEN t - pg_temp.logu((u13 - 0.6) / 0.4, 60, 172800) ELSE t END,
                 booking_at, transaction_at) AS first_message_at,
           greatest(lead_at, booking_at, transaction_at) AS last_stage_at
      FROM p
    OFFSET 0
), f AS (
    SELECT m.*,
           CASE WHEN kind = 'chat' AND u14 < 0.4 THEN first_message_at
                ELSE greatest(first_message_at, last_stage_at,
                              least(now_at - interval '1 second',
                                    greatest(first_message_at, last_stage_at)
                                    + CASE WHEN transaction_count > 1 THEN pg_temp.logu(u15, 86400, 2592000)
                                           ELSE pg_temp.logu(u15, 60, 259200) END))
           END AS last_message_at
      FROM m
    OFFSET 0
)
INSERT INTO funnel_contacts (tenant, phone, lead_at, channel, campaign, booking_at, transaction_at,
                             transaction_value, transaction_count, first_message_at, last_message_at,
                             message_count, rule_set_version, updated_at, lead_event_id)
SELECT tenant, phone, lead_at, channel, campaign, booking_at, transaction_at,
       transaction_value, transaction_count, first_message_at, last_message_at,
       CASE WHEN kind = 'chat' AND last_message_at = first_message_at THEN 1
            WHEN kind = 'chat' THEN 2 + floor(3 * u14)
            WHEN transaction_at IS NOT NULL THEN 4 + 2 * transaction_count + floor(30 * power(u14, 2))
            WHEN booking_at IS NOT NULL THEN 4 + floor(20 * power(u14, 2))
            ELSE 2 + floor(10 * power(u14, 2)) END,
       (SELECT v.version FROM gen_rule_versions v WHERE last_stage_at >= v.from_at AND last_stage_at < v.until),
       last_message_at + make_interval(secs => 0.2 + 3 * u17),
       CASE WHEN lead_at IS NOT NULL THEN pg_temp.event_id(tenant, phone, 'lead') END
  FROM f
 ORDER BY t;
$fn$;

-- The stage events of contacts number p_lo .. p_hi of one tenant, from their rows.
CREATE FUNCTION pg_temp.gen_events(p_tenant text, p_lo bigint, p_hi bigint, p_sample float8) RETURNS void
LANGUAGE sql AS $fn$
WITH c AS (
    SELECT c.*, g.seed + substr(c.phone, 7)::bigint AS s, abs(hashtext(c.phone)) % 12 AS part,
           coalesce(c.channel, 'direct') AS ev_channel
      FROM gen_tenants g
      JOIN funnel_contacts c ON c.tenant = g.tenant
     WHERE g.tenant = p_tenant
       AND c.phone BETWEEN g.prefix || lpad(p_lo::text, 8, '0') AND g.prefix || lpad(p_hi::text, 8, '0')
    OFFSET 0
), ev AS (
    SELECT tenant, lead_event_id AS event_id, phone, 'lead' AS stage, lead_at AS occurred_at, ev_channel,
           0::numeric AS value,
           (ARRAY['lead-info', 'lead-harga', 'lead-promo', 'lead-tertarik', 'lead-pricelist'])[1 + floor(5 * pg_temp.u(s, 30))::int] AS rule_id,
           part
      FROM c WHERE lead_at IS NOT NULL AND pg_temp.u(s, 50) < p_sample
    UNION ALL
    SELECT tenant, pg_temp.event_id(tenant, phone, 'booking'), phone, 'booking', booking_at, ev_channel, 0,
           (ARRAY['book-booking', 'book-reservasi', 'book-jadwal', 'book-daftar'])[1 + floor(4 * pg_temp.u(s, 31))::int],
           part
      FROM c WHERE booking_at IS NOT NULL AND pg_temp.u(s, 50) < p_sample
    UNION ALL
    SELECT tenant, pg_temp.event_id(tenant, phone, 'transaction/' || n), phone, 'transaction',
           CASE WHEN n = 1 THEN transaction_at
                ELSE transaction_at + pg_temp.u(s, 40 + n) * (last_message_at - transaction_at) END,
           ev_channel,
           CASE n WHEN 1 THEN a1 WHEN 2 THEN a2 ELSE transaction_value - a1 - a2 END,
           (ARRAY['trx-transfer', 'trx-bayar', 'trx-lunas', 'trx-bukti'])[1 + floor(4 * pg_temp.u(s, 32 + n))::int],
           part
      FROM c
     CROSS JOIN LATERAL (
           SELECT CASE transaction_count WHEN 1 THEN transaction_value
                       WHEN 2 THEN round(transaction_value * (0.3 + 0.4 * pg_temp.u(s, 45))::numeric, -3)
                       ELSE round(transaction_value * (0.15 + 0.25 * pg_temp.u(s, 45))::numeric, -3) END AS a1,
                  CASE transaction_count WHEN 2 THEN transaction_value - round(transaction_value * (0.3 + 0.4 * pg_temp.u(s, 45))::numeric, -3)
                       WHEN 3 THEN round(transaction_value * (0.15 + 0.25 * pg_temp.u(s, 46))::numeric, -3) ELSE 0 END AS a2) AS a
     CROSS JOIN LATERAL generate_series(1, transaction_count) AS n
     WHERE transaction_at IS NOT NULL
)
INSERT INTO funnel_stage_events (tenant, event_id, phone, stage, occurred_at, channel, value, rule_id,
                                 rule_set_version, source_topic, source_partition, source_offset)
SELECT tenant, event_id, phone, stage, occurred_at, ev_channel, value, rule_id,
       (SELECT v.version FROM gen_rule_versions v WHERE occurred_at >= v.from_at AND occurred_at < v.until),
       'funnel.chat-messages', part,
       -- Offsets grow with time, about 0.17 messages a second per partition.
       floor(extract(epoch FROM occurred_at - '2025-11-20 00:00+07') * 0.17)::bigint
  FROM ev
 ORDER BY occurred_at;
$fn$;

-- One statement per chunk: the funnel_daily trigger runs once per statement.
\echo 'contacts'
SELECT format('SELECT pg_temp.gen_contacts(%L, %s, %s)', tenant, lo, least(n, lo + per - 1))
  FROM gen_tenants, LATERAL (SELECT greatest(1, ceil(n::numeric / :chunks))::bigint AS per) x,
       LATERAL generate_series(1, n, per) AS lo
 ORDER BY tenant DESC, lo \gexec

\echo 'events'
SELECT format('SELECT pg_temp.gen_events(%L, %s, %s, %s)', tenant, lo, least(n, lo + per - 1), :event_sample)
  FROM gen_tenants, LATERAL (SELECT greatest(1, ceil(n::numeric / :chunks))::bigint AS per) x,
       LATERAL generate_series(1, n, per) AS lo
 ORDER BY tenant DESC, lo \gexec

-- The public names are views on the live generation's tables (docs/replay.md).
SELECT funnel_live_schema() AS live \gset
VACUUM (ANALYZE) :"live".funnel_contacts;
VACUUM (ANALYZE) :"live".funnel_stage_events;
VACUUM (ANALYZE) :"live".funnel_daily;
VACUUM (ANALYZE) funnel_tenants;
VACUUM (ANALYZE) funnel_rule_sets;

SELECT tenant, count(*) AS contacts, count(lead_at) AS leads, count(booking_at) AS bookings,
       count(transaction_at) AS paid, count(*) FILTER (WHERE lead_at IS NULL AND (booking_at IS NOT NULL OR transaction_at IS NOT NULL)) AS no_lead,
       sum(transaction_value) AS revenue, sum(transaction_count) AS orders
  FROM funnel_contacts GROUP BY tenant ORDER BY tenant;
SELECT tenant, stage, count(*) AS events, sum(value) AS value FROM funnel_stage_events GROUP BY 1, 2 ORDER BY 1, 2;
SELECT relname, pg_size_pretty(pg_total_relation_size(oid)) AS total, pg_size_pretty(pg_relation_size(oid)) AS heap
  FROM pg_class WHERE relname IN ('funnel_contacts', 'funnel_stage_events', 'funnel_daily') AND relkind = 'r'
 ORDER BY relname;
