//! The funnel report: lead cohorts grouped by time bucket, channel, campaign or first-touch ad
//! (click-to-WhatsApp), with conversion
//! rates, time to convert and revenue (docs/reports.md). The figures come from one SQL query
//! over `funnel_contacts` (and `funnel_stage_events` when a conversion window applies); time
//! buckets are enumerated here so that empty ones are listed too. [`ReportRow`] is the one
//! type of a row: the query builds it, the JSON answer and the CSV export write it.

use funnel_schemas::rules::safe_cell;
use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;
use poem_openapi::{Enum, Object};
use rust_decimal::Decimal;
use sqlx::PgPool;

use crate::http::types::{Money, Nullable};

/// Time zone of a tenant without a `funnel_tenants` row.
pub const DEFAULT_TIME_ZONE: &str = "Asia/Jakarta";

/// At most this many time buckets in one report (an hourly report over about 416 days).
pub const MAX_BUCKETS: i64 = 10_000;
/// Most days a report covers, whatever its grouping (a channel or campaign report over all
/// time would scan every contact of the tenant).
pub const MAX_RANGE_DAYS: i64 = 731;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename = "GroupByDoc", rename_all = "lowercase")]
pub enum GroupBy {
    Hour,
    Day,
    Week,
    Month,
    Channel,
    Campaign,
    /// The contact's first-touch click-to-WhatsApp ad (`ad_source_id`), with its headline
    Ad,
}

impl GroupBy {
    pub fn as_str(self) -> &'static str {
        match self {
            GroupBy::Hour => "hour",
            GroupBy::Day => "day",
            GroupBy::Week => "week",
            GroupBy::Month => "month",
            GroupBy::Channel => "channel",
            GroupBy::Campaign => "campaign",
            GroupBy::Ad => "ad",
        }
    }

    /// The `date_trunc` unit of a time grouping.
    fn unit(self) -> Option<&'static str> {
        match self {
            GroupBy::Hour => Some("hour"),
            GroupBy::Day => Some("day"),
            GroupBy::Week => Some("week"),
            GroupBy::Month => Some("month"),
            GroupBy::Channel | GroupBy::Campaign | GroupBy::Ad => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename = "RowKindDoc", rename_all = "snake_case")]
pub enum RowKind {
    /// A time bucket, channel or campaign
    Group,
    /// Contacts with a booking or transaction but no lead
    NoLead,
    /// The whole lead cohort of the range
    Total,
}

impl RowKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RowKind::Group => "group",
            RowKind::NoLead => "no_lead",
            RowKind::Total => "total",
        }
    }
}

/// What to report: the cohort of leads from `from` to `to` (dates in `tz`, inclusive).
#[derive(Debug, Clone)]
pub struct ReportQuery {
    pub tenant: String,
    pub group_by: GroupBy,
    pub tz: Tz,
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub window_days: Option<u32>,
}

/// The figures of a cohort as counted: what a row is built from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counts {
    pub leads: i64,
    pub bookings: i64,
    pub transactions: i64,
    pub revenue: Decimal,
    pub orders: i64,
    pub median_b: Option<f64>,
    pub p90_b: Option<f64>,
    pub median_t: Option<f64>,
    pub p90_t: Option<f64>,
}

/// One row: a lead cohort, its conversions, revenue and time to convert.
#[derive(Debug, Clone, PartialEq, Object)]
#[oai(rename = "ReportRowDoc")]
pub struct ReportRow {
    pub kind: RowKind,
    /// The bucket start (`2026-11-23`, hours `2026-11-23T14:00:00+07:00`), channel, campaign
    /// or ad id; null for the `no_lead` and `total` rows and for leads without a campaign (or
    /// an ad)
    pub group: Nullable<String>,
    /// With `group_by=ad`: the ad's headline (as its referral carried it); null otherwise
    pub headline: Nullable<String>,
    /// Contacts whose lead falls in the group
    pub leads: i64,
    /// Of those, how many booked (within `window_days` of the lead when given)
    pub bookings: i64,
    /// Of those, how many paid (within `window_days` of the lead when given)
    pub transactions: i64,
    /// Their transaction value, two decimals
    pub revenue: Money,
    /// Their transaction events
    pub orders: i64,
    /// revenue / orders, two decimals; null without orders
    pub average_order_value: Nullable<Money>,
    /// bookings / leads
    pub lead_to_booking_rate: Nullable<f64>,
    /// transactions / bookings (above 1 when contacts pay without booking)
    pub booking_to_transaction_rate: Nullable<f64>,
    /// transactions / leads
    pub lead_to_transaction_rate: Nullable<f64>,
    /// Median of booking_at - lead_at in hours over the contacts that booked (negative when the
    /// booking came first)
    pub median_hours_lead_to_booking: Nullable<f64>,
    pub p90_hours_lead_to_booking: Nullable<f64>,
    pub median_hours_lead_to_transaction: Nullable<f64>,
    pub p90_hours_lead_to_transaction: Nullable<f64>,
}

fn ratio(num: i64, den: i64) -> Option<f64> {
    (den > 0).then(|| num as f64 / den as f64)
}

impl ReportRow {
    /// The row of `c`, with the rates and the average order value derived from the counts.
    /// `booking_to_transaction_rate` is null in the `no_lead` row: its contacts may pay without
    /// booking, so the quotient is not a conversion rate there.
    pub fn new(kind: RowKind, group: Option<String>, c: Counts) -> Self {
        ReportRow {
            kind,
            group: group.into(),
            headline: None.into(),
            leads: c.leads,
            bookings: c.bookings,
            transactions: c.transactions,
            revenue: Money::new(c.revenue),
            orders: c.orders,
            // Revenue per transaction event, to the cent (half away from zero).
            average_order_value: (c.orders > 0)
                .then(|| Money::new(c.revenue / Decimal::from(c.orders)))
                .into(),
            lead_to_booking_rate: ratio(c.bookings, c.leads).into(),
            booking_to_transaction_rate: (kind != RowKind::NoLead)
                .then(|| ratio(c.transactions, c.bookings))
                .flatten()
                .into(),
            lead_to_transaction_rate: ratio(c.transactions, c.leads).into(),
            median_hours_lead_to_booking: c.median_b.into(),
            p90_hours_lead_to_booking: c.p90_b.into(),
            median_hours_lead_to_transaction: c.median_t.into(),
            p90_hours_lead_to_transaction: c.p90_t.into(),
        }
    }
}

/// The instant a local date starts in `tz`: local midnight, or the first hour after it that
/// exists when a daylight-saving jump skips midnight.
pub fn day_start(tz: Tz, date: NaiveDate) -> DateTime<Utc> {
    for hour in 0..24 {
        if let Some(t) = date
            .and_hms_opt(hour, 0, 0)
            .and_then(|l| tz.from_local_datetime(&l).earliest())
        {
            return t.with_timezone(&Utc);
        }
    }
    // No zone skips a whole day's hours; fall back to UTC midnight rather than panic.
    Utc.from_utc_datetime(&date.and_time(chrono::NaiveTime::MIN))
}

fn first_of_month(d: NaiveDate) -> NaiveDate {
    d.with_day(1).unwrap_or(d)
}

fn next_month(d: NaiveDate) -> NaiveDate {
    let (y, m) = if d.month() == 12 {
        (d.year() + 1, 1)
    } else {
        (d.year(), d.month() + 1)
    };
    NaiveDate::from_ymd_opt(y, m, 1).unwrap_or(d)
}

fn monday_of(d: NaiveDate) -> NaiveDate {
    d - Duration::days(i64::from(d.weekday().num_days_from_monday()))
}

/// How many buckets a time grouping lists (0 for channel and campaign).
pub fn bucket_count(group_by: GroupBy, from: NaiveDate, to: NaiveDate) -> i64 {
    let days = (to - from).num_days() + 1;
    match group_by {
        GroupBy::Hour => days * 24,
        GroupBy::Day => days,
        GroupBy::Week => (monday_of(to) - monday_of(from)).num_days() / 7 + 1,
        GroupBy::Month => {
            i64::from(to.year() - from.year()) * 12 + i64::from(to.month())
                - i64::from(from.month())
                + 1
        }
        GroupBy::Channel | GroupBy::Campaign | GroupBy::Ad => 0,
    }
}

/// The start instants of every bucket of a time grouping that overlaps `from..=to`.
pub fn buckets(group_by: GroupBy, tz: Tz, from: NaiveDate, to: NaiveDate) -> Vec<DateTime<Utc>> {
    let mut out = Vec::new();
    match group_by {
        GroupBy::Hour => {
            let end = day_start(tz, to + Duration::days(1));
            let mut t = day_start(tz, from);
            while t < end {
                out.push(t);
                t += Duration::hours(1);
            }
        }
        GroupBy::Day => {
            let mut d = from;
            while d <= to {
                out.push(day_start(tz, d));
                d += Duration::days(1);
            }
        }
        GroupBy::Week => {
            let mut d = monday_of(from);
            while d <= to {
                out.push(day_start(tz, d));
                d += Duration::days(7);
            }
        }
        GroupBy::Month => {
            let mut d = first_of_month(from);
            while d <= to {
                out.push(day_start(tz, d));
                d = next_month(d);
            }
        }
        GroupBy::Channel | GroupBy::Campaign | GroupBy::Ad => {}
    }
    out
}

/// The label of a time bucket: its local start date, or for hours the local start time with
/// its offset (`2026-11-23T14:00:00+07:00`).
pub fn bucket_label(group_by: GroupBy, tz: Tz, start: DateTime<Utc>) -> String {
    let local = start.with_timezone(&tz);
    match group_by {
        GroupBy::Hour => local.to_rfc3339(),
        _ => local.date_naive().to_string(),
    }
}

/// The tenant's time zone (`funnel_tenants.time_zone`), or the default.
pub async fn tenant_time_zone(db: &PgPool, tenant: &str) -> Result<String, sqlx::Error> {
    let tz: Option<String> =
        sqlx::query_scalar("SELECT time_zone FROM funnel_tenants WHERE tenant = $1")
            .bind(tenant)
            .fetch_optional(db)
            .await?;
    Ok(tz.unwrap_or_else(|| DEFAULT_TIME_ZONE.to_string()))
}

/// A row of the cohort query: a group's counts, or the total's.
#[derive(sqlx::FromRow)]
struct CohortRow {
    total: bool,
    bucket: Option<DateTime<Utc>>,
    label: Option<String>,
    headline: Option<String>,
    leads: i64,
    bookings: i64,
    transactions: i64,
    revenue: Decimal,
    orders: i64,
    median_b: Option<f64>,
    p90_b: Option<f64>,
    median_t: Option<f64>,
    p90_t: Option<f64>,
}

impl CohortRow {
    fn counts(&self) -> Counts {
        Counts {
            leads: self.leads,
            bookings: self.bookings,
            transactions: self.transactions,
            revenue: self.revenue,
            orders: self.orders,
            median_b: self.median_b,
            p90_b: self.p90_b,
            median_t: self.median_t,
            p90_t: self.p90_t,
        }
    }
}

/// The SQL of the cohort rows and the total row. `$1` tenant, `$2`..`$3` the lead_at range,
/// `$4` window days (NULL: none), `$5` the time zone.
fn cohort_sql(group_by: GroupBy, window: bool) -> String {
    let (bucket, label) = match group_by.unit() {
        Some(unit) => (
            format!("date_trunc('{unit}', c.lead_at, $5)"),
            "NULL::text".to_string(),
        ),
        None if group_by == GroupBy::Channel => ("NULL::timestamptz".into(), "c.channel".into()),
        None if group_by == GroupBy::Ad => ("NULL::timestamptz".into(), "c.ad_source_id".into()),
        None => ("NULL::timestamptz".into(), "c.campaign".into()),
    };
    // An ad's contacts carry the headline of their own first referral; one ad has one.
    let headline = if group_by == GroupBy::Ad {
        "c.ad_headline"
    } else {
        "NULL::text"
    };
    let within = "($4::int IS NULL OR {at} <= c.lead_at + make_interval(hours => 24 * $4::int))";
    let booked = format!(
        "c.booking_at IS NOT NULL AND {}",
        within.replace("{at}", "c.booking_at")
    );
    let paid = format!(
        "c.transaction_at IS NOT NULL AND {}",
        within.replace("{at}", "c.transaction_at")
    );
    // With a window, revenue is that of the transaction events inside it; without, the
    // contact's whole transaction value (the sum of all its transaction events).
    let (revenue, orders, join) = if window {
        (
            "coalesce(w.value, 0)",
            "coalesce(w.n, 0)",
            "LEFT JOIN LATERAL (
                 SELECT sum(e.value) AS value, count(*) AS n
                   FROM funnel_stage_events e
                  WHERE c.transaction_at IS NOT NULL
                    AND e.tenant = c.tenant AND e.phone = c.phone AND e.stage = 'transaction'
                    AND e.occurred_at <= c.lead_at + make_interval(hours => 24 * $4::int)) w ON true",
        )
    } else {
        ("c.transaction_value", "c.transaction_count", "")
    };
    format!(
        "WITH cohort AS (
             SELECT {bucket} AS bucket, {label} AS label, {headline} AS headline,
                    extract(epoch FROM c.booking_at - c.lead_at)::float8 / 3600 AS hours_b,
                    extract(epoch FROM c.transaction_at - c.lead_at)::float8 / 3600 AS hours_t,
                    {booked} AS booked, {paid} AS paid,
                    {revenue} AS revenue, {orders} AS orders
               FROM funnel_contacts c {join}
              WHERE c.tenant = $1 AND c.lead_at >= $2 AND c.lead_at < $3
         )
         SELECT GROUPING(bucket, label) <> 0 AS total, bucket, label, min(headline) AS headline,
                count(*) AS leads,
                count(*) FILTER (WHERE booked) AS bookings,
                count(*) FILTER (WHERE paid) AS transactions,
                coalesce(sum(revenue), 0)::numeric(20,2) AS revenue,
                coalesce(sum(orders), 0)::bigint AS orders,
                percentile_cont(0.5) WITHIN GROUP (ORDER BY hours_b) FILTER (WHERE booked) AS median_b,
                percentile_cont(0.9) WITHIN GROUP (ORDER BY hours_b) FILTER (WHERE booked) AS p90_b,
                percentile_cont(0.5) WITHIN GROUP (ORDER BY hours_t) FILTER (WHERE paid) AS median_t,
                percentile_cont(0.9) WITHIN GROUP (ORDER BY hours_t) FILTER (WHERE paid) AS p90_t
           FROM cohort
          GROUP BY GROUPING SETS ((bucket, label), ())"
    )
}

/// Contacts without a lead whose first conversion falls in the range (the `no_lead` row); the
/// expression matches the partial index `funnel_contacts_no_lead`.
const NO_LEAD_SQL: &str = "
    SELECT count(*) FILTER (WHERE booking_at IS NOT NULL) AS bookings,
           count(*) FILTER (WHERE transaction_at IS NOT NULL) AS transactions,
           coalesce(sum(transaction_value), 0)::numeric(20,2) AS revenue,
           coalesce(sum(transaction_count), 0)::bigint AS orders
      FROM funnel_contacts
     WHERE tenant = $1 AND lead_at IS NULL
       AND least(booking_at, transaction_at) >= $2 AND least(booking_at, transaction_at) < $3";

/// The rows of a report: one per group (every bucket of a time grouping, empty ones too),
/// then the `no_lead` row, then the `total` row.
pub async fn funnel_report(db: &PgPool, q: &ReportQuery) -> Result<Vec<ReportRow>, sqlx::Error> {
    let start = day_start(q.tz, q.from);
    let end = day_start(q.tz, q.to + Duration::days(1));
    let window = q.window_days.map(|d| d as i32);
    let sql = cohort_sql(q.group_by, window.is_some());
    let mut tx = db.begin().await?;
    // One snapshot for the cohort rows and the no_lead row.
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    let rows: Vec<CohortRow> = sqlx::query_as(&sql)
        .bind(&q.tenant)
        .bind(start)
        .bind(end)
        .bind(window)
        .bind(q.tz.name())
        .fetch_all(&mut *tx)
        .await?;
    let (bookings, transactions, revenue, orders): (i64, i64, Decimal, i64) =
        sqlx::query_as(NO_LEAD_SQL)
            .bind(&q.tenant)
            .bind(start)
            .bind(end)
            .fetch_one(&mut *tx)
            .await?;
    tx.commit().await?;
    let no_lead = Counts {
        bookings,
        transactions,
        revenue,
        orders,
        ..Counts::default()
    };
    Ok(assemble(q, &rows, no_lead))
}

/// The rows of a report from the query's rows: every bucket of a time grouping (empty ones
/// too) in order, or the channels or campaigns by leads; then the `no_lead` and `total` rows.
fn assemble(q: &ReportQuery, rows: &[CohortRow], no_lead: Counts) -> Vec<ReportRow> {
    let mut total = ReportRow::new(RowKind::Total, None, Counts::default());
    let mut out = Vec::new();
    if q.group_by.unit().is_some() {
        let group = |b| {
            ReportRow::new(
                RowKind::Group,
                Some(bucket_label(q.group_by, q.tz, b)),
                Counts::default(),
            )
        };
        let mut by_bucket: BTreeMap<DateTime<Utc>, ReportRow> =
            buckets(q.group_by, q.tz, q.from, q.to)
                .into_iter()
                .map(|b| (b, group(b)))
                .collect();
        for r in rows {
            match (r.total, r.bucket) {
                (true, _) => total = ReportRow::new(RowKind::Total, None, r.counts()),
                (false, Some(b)) => {
                    let label = bucket_label(q.group_by, q.tz, b);
                    by_bucket.insert(b, ReportRow::new(RowKind::Group, Some(label), r.counts()));
                }
                (false, None) => {}
            }
        }
        out.extend(by_bucket.into_values());
    } else {
        for r in rows {
            if r.total {
                total = ReportRow::new(RowKind::Total, None, r.counts());
            } else {
                let mut row = ReportRow::new(RowKind::Group, r.label.clone(), r.counts());
                row.headline = r.headline.clone().into();
                out.push(row);
            }
        }
        // Most leads first; then by name, the group without a campaign last.
        out.sort_by(|a, b| {
            b.leads
                .cmp(&a.leads)
                .then_with(|| match (&a.group.0, &b.group.0) {
                    (Some(x), Some(y)) => x.cmp(y),
                    (Some(_), None) => std::cmp::Ordering::Less,
                    (None, Some(_)) => std::cmp::Ordering::Greater,
                    (None, None) => std::cmp::Ordering::Equal,
                })
        });
    }
    out.push(ReportRow::new(RowKind::NoLead, None, no_lead));
    out.push(total);
    out
}

/// The CSV header of a report.
pub const CSV_HEADER: [&str; 16] = [
    "kind",
    "group",
    "leads",
    "bookings",
    "transactions",
    "revenue",
    "orders",
    "average_order_value",
    "lead_to_booking_rate",
    "booking_to_transaction_rate",
    "lead_to_transaction_rate",
    "median_hours_lead_to_booking",
    "p90_hours_lead_to_booking",
    "median_hours_lead_to_transaction",
    "p90_hours_lead_to_transaction",
    "headline",
];

impl ReportRow {
    /// The row as CSV fields, in the order of [`CSV_HEADER`]; null as an empty field.
    pub fn csv(&self) -> [String; 16] {
        fn opt<T: ToString>(v: &Nullable<T>) -> String {
            v.0.as_ref().map(|v| v.to_string()).unwrap_or_default()
        }
        [
            self.kind.as_str().to_string(),
            // A channel or campaign came from clients: never a formula in a spreadsheet.
            self.group
                .0
                .as_deref()
                .map(safe_cell)
                .unwrap_or_default()
                .into_owned(),
            self.leads.to_string(),
            self.bookings.to_string(),
            self.transactions.to_string(),
            self.revenue.to_string(),
            self.orders.to_string(),
            opt(&self.average_order_value),
            opt(&self.lead_to_booking_rate),
            opt(&self.booking_to_transaction_rate),
            opt(&self.lead_to_transaction_rate),
            opt(&self.median_hours_lead_to_booking),
            opt(&self.p90_hours_lead_to_booking),
            opt(&self.median_hours_lead_to_transaction),
            opt(&self.p90_hours_lead_to_transaction),
            // An ad's headline was written by whoever made the ad.
            self.headline
                .0
                .as_deref()
                .map(safe_cell)
                .unwrap_or_default()
                .into_owned(),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> NaiveDate {
        s.parse().expect("date")
    }

    #[test]
    fn jakarta_days_start_at_17_utc() {
        let tz: Tz = "Asia/Jakarta".parse().expect("tz");
        assert_eq!(
            day_start(tz, d("2026-11-23")).to_rfc3339(),
            "2026-11-22T17:00:00+00:00"
        );
    }

    #[test]
    fn a_day_without_midnight_starts_at_its_first_hour() {
        // Santiago moved clocks from 00:00 to 01:00 on 2023-09-03.
        let tz: Tz = "America/Santiago".parse().expect("tz");
        let start = day_start(tz, d("2023-09-03")).with_timezone(&tz);
        assert_eq!(start.to_rfc3339(), "2023-09-03T01:00:00-03:00");
    }

    #[test]
    fn buckets_cover_the_range_and_count_matches() {
        let tz: Tz = "Asia/Jakarta".parse().expect("tz");
        for (g, from, to) in [
            (GroupBy::Day, "2026-11-01", "2026-11-30"),
            (GroupBy::Week, "2026-11-04", "2026-12-02"),
            (GroupBy::Month, "2025-11-15", "2026-02-01"),
            (GroupBy::Hour, "2026-11-01", "2026-11-02"),
        ] {
            let b = buckets(g, tz, d(from), d(to));
            assert_eq!(b.len() as i64, bucket_count(g, d(from), d(to)), "{g:?}");
            assert!(b.windows(2).all(|w| w[0] < w[1]));
        }
        let weeks = buckets(GroupBy::Week, tz, d("2026-11-04"), d("2026-12-02"));
        assert_eq!(bucket_label(GroupBy::Week, tz, weeks[0]), "2026-11-02");
        assert_eq!(weeks.len(), 5);
        let months = buckets(GroupBy::Month, tz, d("2025-11-15"), d("2026-02-01"));
        let labels: Vec<_> = months
            .iter()
            .map(|b| bucket_label(GroupBy::Month, tz, *b))
            .collect();
        assert_eq!(
            labels,
            ["2025-11-01", "2025-12-01", "2026-01-01", "2026-02-01"]
        );
        let hours = buckets(GroupBy::Hour, tz, d("2026-11-01"), d("2026-11-01"));
        assert_eq!(
            bucket_label(GroupBy::Hour, tz, hours[14]),
            "2026-11-01T14:00:00+07:00"
        );
    }

    #[test]
    fn hours_across_a_daylight_saving_change_are_23_or_25_per_day() {
        let tz: Tz = "Europe/Berlin".parse().expect("tz");
        assert_eq!(
            buckets(GroupBy::Hour, tz, d("2026-03-29"), d("2026-03-29")).len(),
            23
        );
        assert_eq!(
            buckets(GroupBy::Hour, tz, d("2026-10-25"), d("2026-10-25")).len(),
            25
        );
    }

    #[test]
    fn derived_figures() {
        let row = |kind, leads, bookings, transactions, orders, revenue| {
            ReportRow::new(
                kind,
                None,
                Counts {
                    leads,
                    bookings,
                    transactions,
                    orders,
                    revenue,
                    ..Counts::default()
                },
            )
        };
        let empty = row(RowKind::Group, 0, 0, 0, 0, Decimal::ZERO);
        assert_eq!(empty.lead_to_booking_rate, Nullable(None));
        assert_eq!(empty.average_order_value, Nullable(None));
        assert_eq!(empty.revenue.to_string(), "0.00");
        let r = row(RowKind::Group, 4, 2, 1, 3, Decimal::new(1000, 2));
        assert_eq!(r.lead_to_booking_rate, Nullable(Some(0.5)));
        assert_eq!(r.booking_to_transaction_rate, Nullable(Some(0.5)));
        assert_eq!(r.lead_to_transaction_rate, Nullable(Some(0.25)));
        let no_lead = row(RowKind::NoLead, 4, 2, 1, 3, Decimal::new(1000, 2));
        assert_eq!(no_lead.booking_to_transaction_rate, Nullable(None));
        // 10.00 / 3 = 3.333.. -> 3.33; 0.05 / 2 = 0.025 -> 0.03 (half away from zero)
        assert_eq!(
            r.average_order_value.0.map(|m| m.to_string()).as_deref(),
            Some("3.33")
        );
        let r = row(RowKind::Group, 1, 0, 1, 2, Decimal::new(5, 2));
        assert_eq!(
            r.average_order_value.0.map(|m| m.to_string()).as_deref(),
            Some("0.03")
        );
        let r = row(RowKind::Group, 1, 0, 1, 1, Decimal::new(150_000, 0));
        assert_eq!(r.csv()[7], "150000.00");
        assert_eq!(r.csv()[5], "150000.00");
        assert_eq!(r.csv()[0], "group");
        assert_eq!(r.csv()[1], "", "null as an empty field");
    }
}
