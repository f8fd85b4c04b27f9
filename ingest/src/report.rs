//! The funnel report: lead cohorts grouped by time bucket, channel or campaign, with conversion
//! rates, time to convert and revenue (docs/reports.md). The figures come from one SQL query
//! over `funnel_contacts` (and `funnel_stage_events` when a conversion window applies); time
//! buckets are enumerated here so that empty ones are listed too.

use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;
use rust_decimal::{Decimal, RoundingStrategy};
use sqlx::PgPool;

/// Time zone of a tenant without a `funnel_tenants` row.
pub const DEFAULT_TIME_ZONE: &str = "Asia/Jakarta";

/// At most this many time buckets in one report (an hourly report over about 416 days).
pub const MAX_BUCKETS: i64 = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    Hour,
    Day,
    Week,
    Month,
    Channel,
    Campaign,
}

impl GroupBy {
    /// The `date_trunc` unit of a time grouping.
    fn unit(self) -> Option<&'static str> {
        match self {
            GroupBy::Hour => Some("hour"),
            GroupBy::Day => Some("day"),
            GroupBy::Week => Some("week"),
            GroupBy::Month => Some("month"),
            GroupBy::Channel | GroupBy::Campaign => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowKind {
    Group,
    NoLead,
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

/// One row of a report. Rates and average order value are derived from the counts.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportRow {
    pub kind: RowKind,
    pub group: Option<String>,
    pub leads: i64,
    pub bookings: i64,
    pub transactions: i64,
    pub revenue: Decimal,
    pub orders: i64,
    pub median_hours_lead_to_booking: Option<f64>,
    pub p90_hours_lead_to_booking: Option<f64>,
    pub median_hours_lead_to_transaction: Option<f64>,
    pub p90_hours_lead_to_transaction: Option<f64>,
}

fn ratio(num: i64, den: i64) -> Option<f64> {
    (den > 0).then(|| num as f64 / den as f64)
}

impl ReportRow {
    fn empty(kind: RowKind, group: Option<String>) -> Self {
        ReportRow {
            kind,
            group,
            leads: 0,
            bookings: 0,
            transactions: 0,
            revenue: Decimal::new(0, 2),
            orders: 0,
            median_hours_lead_to_booking: None,
            p90_hours_lead_to_booking: None,
            median_hours_lead_to_transaction: None,
            p90_hours_lead_to_transaction: None,
        }
    }

    pub fn lead_to_booking_rate(&self) -> Option<f64> {
        ratio(self.bookings, self.leads)
    }
    /// Null in the `no_lead` row: its contacts may pay without booking, so the quotient is not
    /// a conversion rate there.
    pub fn booking_to_transaction_rate(&self) -> Option<f64> {
        if self.kind == RowKind::NoLead {
            return None;
        }
        ratio(self.transactions, self.bookings)
    }
    pub fn lead_to_transaction_rate(&self) -> Option<f64> {
        ratio(self.transactions, self.leads)
    }
    /// Revenue per transaction event, to the cent (half away from zero).
    pub fn average_order_value(&self) -> Option<Decimal> {
        (self.orders > 0).then(|| cents(self.revenue / Decimal::from(self.orders)))
    }
}

/// A money amount with exactly two decimals (half away from zero): `150000.00`.
pub fn cents(d: Decimal) -> Decimal {
    let mut d = d.round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero);
    d.rescale(2);
    d
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
        GroupBy::Channel | GroupBy::Campaign => 0,
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
        GroupBy::Channel | GroupBy::Campaign => {}
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

#[derive(sqlx::FromRow)]
struct CohortRow {
    total: bool,
    bucket: Option<DateTime<Utc>>,
    label: Option<String>,
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

/// The SQL of the cohort rows and the total row. `$1` tenant, `$2`..`$3` the lead_at range,
/// `$4` window days (NULL: none), `$5` the time zone.
fn cohort_sql(group_by: GroupBy, window: bool) -> String {
    let (bucket, label) = match group_by.unit() {
        Some(unit) => (
            format!("date_trunc('{unit}', c.lead_at, $5)"),
            "NULL::text".to_string(),
        ),
        None if group_by == GroupBy::Channel => ("NULL::timestamptz".into(), "c.channel".into()),
        None => ("NULL::timestamptz".into(), "c.campaign".into()),
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
             SELECT {bucket} AS bucket, {label} AS label,
                    extract(epoch FROM c.booking_at - c.lead_at)::float8 / 3600 AS hours_b,
                    extract(epoch FROM c.transaction_at - c.lead_at)::float8 / 3600 AS hours_t,
                    {booked} AS booked, {paid} AS paid,
                    {revenue} AS revenue, {orders} AS orders
               FROM funnel_contacts c {join}
              WHERE c.tenant = $1 AND c.lead_at >= $2 AND c.lead_at < $3
         )
         SELECT GROUPING(bucket, label) <> 0 AS total, bucket, label,
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
    let (nl_bookings, nl_transactions, nl_revenue, nl_orders): (i64, i64, Decimal, i64) =
        sqlx::query_as(NO_LEAD_SQL)
            .bind(&q.tenant)
            .bind(start)
            .bind(end)
            .fetch_one(&mut *tx)
            .await?;
    tx.commit().await?;

    let to_row = |r: &CohortRow, kind: RowKind, group: Option<String>| ReportRow {
        kind,
        group,
        leads: r.leads,
        bookings: r.bookings,
        transactions: r.transactions,
        revenue: r.revenue,
        orders: r.orders,
        median_hours_lead_to_booking: r.median_b,
        p90_hours_lead_to_booking: r.p90_b,
        median_hours_lead_to_transaction: r.median_t,
        p90_hours_lead_to_transaction: r.p90_t,
    };
    let mut total = ReportRow::empty(RowKind::Total, None);
    let mut out = Vec::new();
    if q.group_by.unit().is_some() {
        let mut by_bucket: BTreeMap<DateTime<Utc>, ReportRow> =
            buckets(q.group_by, q.tz, q.from, q.to)
                .into_iter()
                .map(|b| {
                    let label = bucket_label(q.group_by, q.tz, b);
                    (b, ReportRow::empty(RowKind::Group, Some(label)))
                })
                .collect();
        for r in &rows {
            match (r.total, r.bucket) {
                (true, _) => total = to_row(r, RowKind::Total, None),
                (false, Some(b)) => {
                    let label = bucket_label(q.group_by, q.tz, b);
                    by_bucket.insert(b, to_row(r, RowKind::Group, Some(label)));
                }
                (false, None) => {}
            }
        }
        out.extend(by_bucket.into_values());
    } else {
        for r in &rows {
            if r.total {
                total = to_row(r, RowKind::Total, None);
            } else {
                out.push(to_row(r, RowKind::Group, r.label.clone()));
            }
        }
        // Most leads first; then by name, the group without a campaign last.
        out.sort_by(|a, b| {
            b.leads
                .cmp(&a.leads)
                .then_with(|| match (&a.group, &b.group) {
                    (Some(x), Some(y)) => x.cmp(y),
                    (Some(_), None) => std::cmp::Ordering::Less,
                    (None, Some(_)) => std::cmp::Ordering::Greater,
                    (None, None) => std::cmp::Ordering::Equal,
                })
        });
    }
    let mut no_lead = ReportRow::empty(RowKind::NoLead, None);
    no_lead.bookings = nl_bookings;
    no_lead.transactions = nl_transactions;
    no_lead.revenue = nl_revenue;
    no_lead.orders = nl_orders;
    out.push(no_lead);
    out.push(total);
    Ok(out)
}

/// The CSV header of a report.
pub const CSV_HEADER: [&str; 15] = [
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
];

/// A row as CSV fields, NULL as an empty field.
pub fn csv_record(r: &ReportRow) -> [String; 15] {
    fn opt<T: ToString>(v: Option<T>) -> String {
        v.map(|v| v.to_string()).unwrap_or_default()
    }
    [
        r.kind.as_str().to_string(),
        r.group.clone().unwrap_or_default(),
        r.leads.to_string(),
        r.bookings.to_string(),
        r.transactions.to_string(),
        cents(r.revenue).to_string(),
        r.orders.to_string(),
        opt(r.average_order_value()),
        opt(r.lead_to_booking_rate()),
        opt(r.booking_to_transaction_rate()),
        opt(r.lead_to_transaction_rate()),
        opt(r.median_hours_lead_to_booking),
        opt(r.p90_hours_lead_to_booking),
        opt(r.median_hours_lead_to_transaction),
        opt(r.p90_hours_lead_to_transaction),
    ]
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
        let mut r = ReportRow::empty(RowKind::Group, None);
        assert_eq!(r.lead_to_booking_rate(), None);
        assert_eq!(r.average_order_value(), None);
        r.leads = 4;
        r.bookings = 2;
        r.transactions = 1;
        r.orders = 3;
        r.revenue = Decimal::new(1000, 2);
        assert_eq!(r.lead_to_booking_rate(), Some(0.5));
        assert_eq!(r.booking_to_transaction_rate(), Some(0.5));
        assert_eq!(r.lead_to_transaction_rate(), Some(0.25));
        let no_lead = ReportRow {
            kind: RowKind::NoLead,
            ..r.clone()
        };
        assert_eq!(no_lead.booking_to_transaction_rate(), None);
        // 10.00 / 3 = 3.333.. -> 3.33; 0.05 / 2 = 0.025 -> 0.03 (half away from zero)
        assert_eq!(r.average_order_value(), Some(Decimal::new(333, 2)));
        r.revenue = Decimal::new(5, 2);
        r.orders = 2;
        assert_eq!(r.average_order_value(), Some(Decimal::new(3, 2)));
        r.revenue = Decimal::new(150_000, 0);
        r.orders = 1;
        assert_eq!(
            r.average_order_value().map(|d| d.to_string()).as_deref(),
            Some("150000.00")
        );
        assert_eq!(cents(Decimal::new(0, 0)).to_string(), "0.00");
    }
}
