//! `GET /v1/reports/funnel` and its CSV form (docs/reports.md).

use std::sync::Arc;

use chrono::{Duration, NaiveDate};
use chrono_tz::Tz;
use poem_openapi::param::Query;
use poem_openapi::payload::{Binary, Json};
use poem_openapi::{ApiResponse, Enum, Object, OpenApi};

use super::{bad_request, ApiError, AppState, BearerAuth, Nullable, Problem};
use crate::auth::Scope;
use crate::report::{self, GroupBy, ReportQuery, ReportRow};
use crate::validate::FieldError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "lowercase")]
pub enum GroupByDoc {
    Hour,
    Day,
    Week,
    Month,
    Channel,
    Campaign,
}

impl From<GroupByDoc> for GroupBy {
    fn from(g: GroupByDoc) -> Self {
        match g {
            GroupByDoc::Hour => GroupBy::Hour,
            GroupByDoc::Day => GroupBy::Day,
            GroupByDoc::Week => GroupBy::Week,
            GroupByDoc::Month => GroupBy::Month,
            GroupByDoc::Channel => GroupBy::Channel,
            GroupByDoc::Campaign => GroupBy::Campaign,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "snake_case")]
pub enum RowKindDoc {
    /// A time bucket, channel or campaign
    Group,
    /// Contacts with a booking or transaction but no lead
    NoLead,
    /// The whole lead cohort of the range
    Total,
}

/// One row: a lead cohort, its conversions, revenue and time to convert.
#[derive(Debug, Object)]
pub struct ReportRowDoc {
    pub kind: RowKindDoc,
    /// The bucket start (`2026-11-23`, hours `2026-11-23T14:00:00+07:00`), channel or
    /// campaign; null for the `no_lead` and `total` rows and for leads without a campaign
    pub group: Nullable<String>,
    /// Contacts whose lead falls in the group
    pub leads: i64,
    /// Of those, how many booked (within `window_days` of the lead when given)
    pub bookings: i64,
    /// Of those, how many paid (within `window_days` of the lead when given)
    pub transactions: i64,
    /// Their transaction value, two decimals
    pub revenue: String,
    /// Their transaction events
    pub orders: i64,
    /// revenue / orders, two decimals; null without orders
    pub average_order_value: Nullable<String>,
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

impl From<&ReportRow> for ReportRowDoc {
    fn from(r: &ReportRow) -> Self {
        ReportRowDoc {
            kind: match r.kind {
                report::RowKind::Group => RowKindDoc::Group,
                report::RowKind::NoLead => RowKindDoc::NoLead,
                report::RowKind::Total => RowKindDoc::Total,
            },
            group: r.group.clone().into(),
            leads: r.leads,
            bookings: r.bookings,
            transactions: r.transactions,
            revenue: report::cents(r.revenue).to_string(),
            orders: r.orders,
            average_order_value: r.average_order_value().map(|v| v.to_string()).into(),
            lead_to_booking_rate: r.lead_to_booking_rate().into(),
            booking_to_transaction_rate: r.booking_to_transaction_rate().into(),
            lead_to_transaction_rate: r.lead_to_transaction_rate().into(),
            median_hours_lead_to_booking: r.median_hours_lead_to_booking.into(),
            p90_hours_lead_to_booking: r.p90_hours_lead_to_booking.into(),
            median_hours_lead_to_transaction: r.median_hours_lead_to_transaction.into(),
            p90_hours_lead_to_transaction: r.p90_hours_lead_to_transaction.into(),
        }
    }
}

#[derive(Debug, Object)]
pub struct FunnelReport {
    pub group_by: GroupByDoc,
    pub tz: String,
    pub from: String,
    pub to: String,
    pub window_days: Nullable<u32>,
    /// The groups (every bucket of a time grouping, empty ones included), then the `no_lead`
    /// row, then the `total` row
    pub rows: Vec<ReportRowDoc>,
}

common_errors!(ReportResponse {
    /// The report
    #[oai(status = 200)]
    Ok(Json<FunnelReport>),
});

common_errors!(ReportCsvResponse {
    /// The report's rows as CSV (null: an empty field), streamed
    #[oai(status = 200, content_type = "text/csv; charset=utf-8")]
    Ok(
        Binary<poem::Body>,
        #[oai(header = "Content-Disposition")] String,
    ),
});

pub struct ReportsApi {
    pub state: Arc<AppState>,
}

pub(crate) fn query_error(param: &str, detail: impl Into<String>, expected: &str) -> FieldError {
    FieldError {
        pointer: format!("/query/{param}"),
        detail: detail.into(),
        expected: expected.into(),
    }
}

pub(crate) fn invalid_query(errors: Vec<FieldError>) -> ApiError {
    ApiError::Invalid(Problem::invalid_params(errors))
}

pub(crate) fn store_unavailable(e: sqlx::Error) -> ApiError {
    tracing::warn!(error = %e, "funnel tables unavailable");
    ApiError::Unavailable(Problem::new(
        503,
        "unavailable",
        "funnel tables unavailable",
        "PostgreSQL did not answer",
    ))
}

/// `tz`, or the tenant's time zone; an unknown zone is added to `errors` (Ok(None)).
pub(crate) async fn time_zone(
    state: &AppState,
    tenant: &str,
    tz: Option<&str>,
    errors: &mut Vec<FieldError>,
) -> Result<Option<Tz>, ApiError> {
    let name = match tz {
        Some(tz) => tz.to_string(),
        None => report::tenant_time_zone(&state.db, tenant)
            .await
            .map_err(store_unavailable)?,
    };
    match name.parse::<Tz>() {
        Ok(tz) => Ok(Some(tz)),
        Err(_) => {
            errors.push(query_error(
                "tz",
                format!("unknown time zone {name:?}"),
                "an IANA time zone such as Asia/Jakarta or UTC",
            ));
            Ok(None)
        }
    }
}

fn parse_date(param: &str, raw: &str, errors: &mut Vec<FieldError>) -> Option<NaiveDate> {
    match NaiveDate::parse_from_str(raw, "%Y-%m-%d") {
        Ok(d) => Some(d),
        Err(e) => {
            errors.push(query_error(
                param,
                format!("{raw:?} is not a date: {e}"),
                "a date YYYY-MM-DD",
            ));
            None
        }
    }
}

pub struct ReportParams {
    pub group_by: Option<GroupByDoc>,
    pub tz: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub window_days: Option<u32>,
}

/// Validates the parameters; every invalid one is named at once.
async fn report_query(
    state: &AppState,
    tenant: &str,
    p: ReportParams,
) -> Result<ReportQuery, ApiError> {
    let mut errors = Vec::new();
    let tz = time_zone(state, tenant, p.tz.as_deref(), &mut errors).await?;
    let from = p
        .from
        .as_deref()
        .map(|s| parse_date("from", s, &mut errors));
    let to = p.to.as_deref().map(|s| parse_date("to", s, &mut errors));
    let Some(tz) = tz.filter(|_| errors.is_empty()) else {
        return Err(invalid_query(errors));
    };
    let today = chrono::Utc::now().with_timezone(&tz).date_naive();
    let to = to.flatten().unwrap_or(today);
    let from = from.flatten().unwrap_or(to - Duration::days(29));
    let group_by: GroupBy = p.group_by.unwrap_or(GroupByDoc::Day).into();
    if from > to {
        errors.push(query_error(
            "from",
            format!("from {from} is after to {to}"),
            "a date on or before `to`",
        ));
    } else if report::bucket_count(group_by, from, to) > report::MAX_BUCKETS {
        errors.push(query_error(
            "from",
            format!(
                "{} buckets from {from} to {to}",
                report::bucket_count(group_by, from, to)
            ),
            &format!(
                "a range of at most {} buckets; use a coarser group_by",
                report::MAX_BUCKETS
            ),
        ));
    }
    if !errors.is_empty() {
        return Err(invalid_query(errors));
    }
    Ok(ReportQuery {
        tenant: tenant.to_string(),
        group_by,
        tz,
        from,
        to,
        window_days: p.window_days,
    })
}

async fn run_report(
    state: &AppState,
    auth: &BearerAuth,
    p: ReportParams,
) -> Result<(ReportQuery, Vec<ReportRow>), ApiError> {
    let principal = super::authorize(state, auth, Scope::Read).await?;
    let q = report_query(state, &principal.tenant, p).await?;
    let rows = report::funnel_report(&state.db, &q)
        .await
        .map_err(store_unavailable)?;
    Ok((q, rows))
}

fn group_by_doc(g: GroupBy) -> GroupByDoc {
    match g {
        GroupBy::Hour => GroupByDoc::Hour,
        GroupBy::Day => GroupByDoc::Day,
        GroupBy::Week => GroupByDoc::Week,
        GroupBy::Month => GroupByDoc::Month,
        GroupBy::Channel => GroupByDoc::Channel,
        GroupBy::Campaign => GroupByDoc::Campaign,
    }
}

#[OpenApi]
impl ReportsApi {
    /// The funnel report (scope `read`)
    ///
    /// Lead cohorts: the contacts whose lead falls in each group and in `from`..`to` (dates in
    /// `tz`, both included), how many of them booked and paid, their revenue, and the time they
    /// took. Conversions count whenever they happened, unless `window_days` limits them to
    /// that many days after the lead. Contacts with a booking or transaction but no lead are
    /// the `no_lead` row; the `total` row is the whole cohort.
    #[oai(path = "/v1/reports/funnel", method = "get")]
    #[allow(clippy::too_many_arguments)]
    async fn funnel(
        &self,
        auth: BearerAuth,
        /// hour, day (default), week (ISO, from Monday), month, channel or campaign
        group_by: Query<Option<GroupByDoc>>,
        /// IANA time zone of the dates and buckets; default the tenant's (Asia/Jakarta)
        tz: Query<Option<String>>,
        /// First day, YYYY-MM-DD; default `to` minus 29 days
        from: Query<Option<String>>,
        /// Last day, YYYY-MM-DD, included; default today in `tz`
        to: Query<Option<String>>,
        /// Count a booking or transaction only within this many days of the lead
        #[oai(validator(minimum(value = "1"), maximum(value = "3650")))]
        window_days: Query<Option<u32>>,
    ) -> ReportResponse {
        let params = ReportParams {
            group_by: group_by.0,
            tz: tz.0,
            from: from.0,
            to: to.0,
            window_days: window_days.0,
        };
        match run_report(&self.state, &auth, params).await {
            Ok((q, rows)) => ReportResponse::Ok(Json(FunnelReport {
                group_by: group_by_doc(q.group_by),
                tz: q.tz.name().to_string(),
                from: q.from.to_string(),
                to: q.to.to_string(),
                window_days: q.window_days.into(),
                rows: rows.iter().map(ReportRowDoc::from).collect(),
            })),
            Err(e) => e.into(),
        }
    }

    /// The funnel report as CSV (scope `read`)
    ///
    /// The rows of `GET /v1/reports/funnel` with the same parameters, one line each, columns
    /// named like its fields.
    #[oai(path = "/v1/reports/funnel.csv", method = "get")]
    #[allow(clippy::too_many_arguments)]
    async fn funnel_csv(
        &self,
        auth: BearerAuth,
        /// hour, day (default), week (ISO, from Monday), month, channel or campaign
        group_by: Query<Option<GroupByDoc>>,
        /// IANA time zone of the dates and buckets; default the tenant's (Asia/Jakarta)
        tz: Query<Option<String>>,
        /// First day, YYYY-MM-DD; default `to` minus 29 days
        from: Query<Option<String>>,
        /// Last day, YYYY-MM-DD, included; default today in `tz`
        to: Query<Option<String>>,
        /// Count a booking or transaction only within this many days of the lead
        #[oai(validator(minimum(value = "1"), maximum(value = "3650")))]
        window_days: Query<Option<u32>>,
    ) -> ReportCsvResponse {
        let params = ReportParams {
            group_by: group_by.0,
            tz: tz.0,
            from: from.0,
            to: to.0,
            window_days: window_days.0,
        };
        let (q, rows) = match run_report(&self.state, &auth, params).await {
            Ok(r) => r,
            Err(e) => return e.into(),
        };
        let (mut sink, body) = crate::csv_stream::channel();
        tokio::spawn(async move {
            if sink.record(report::CSV_HEADER).await.is_err() {
                return;
            }
            for r in &rows {
                if sink.record(report::csv_record(r)).await.is_err() {
                    return;
                }
            }
            let _ = sink.finish().await;
        });
        ReportCsvResponse::Ok(
            Binary(body),
            format!(
                "attachment; filename=\"funnel-{}-{}-{}.csv\"",
                group_by_doc(q.group_by).to_str(),
                q.from,
                q.to
            ),
        )
    }
}

impl GroupByDoc {
    fn to_str(self) -> &'static str {
        match self {
            GroupByDoc::Hour => "hour",
            GroupByDoc::Day => "day",
            GroupByDoc::Week => "week",
            GroupByDoc::Month => "month",
            GroupByDoc::Channel => "channel",
            GroupByDoc::Campaign => "campaign",
        }
    }
}
