//! `GET /v1/reports/funnel` and its CSV form (docs/reports.md): one list of query parameters
//! for both operations ([`report_operations!`]), one parser ([`ReportParams::parse`]), one row
//! type (`queries::report::ReportRow`).

use std::sync::Arc;

use chrono::Duration;
use poem_openapi::param::Query;
use poem_openapi::payload::{Binary, Json};
use poem_openapi::{Object, OpenApi};

use super::params::{date, time_zone};
use crate::http::auth::{authorize, BearerAuth};
use crate::http::problem::{common_errors, query_error, ApiError};
use crate::http::types::Nullable;
use crate::queries::report::{self, GroupBy, ReportQuery, ReportRow};
use crate::queries::tokens::Scope;
use crate::state::AppState;

#[derive(Debug, Object)]
pub struct FunnelReport {
    pub group_by: GroupBy,
    pub tz: String,
    pub from: String,
    pub to: String,
    pub window_days: Nullable<u32>,
    /// The groups (every bucket of a time grouping, empty ones included), then the `no_lead`
    /// row, then the `total` row
    pub rows: Vec<ReportRow>,
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

/// The query parameters of a report, as given.
pub struct ReportParams {
    pub group_by: Option<GroupBy>,
    pub tz: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub window_days: Option<u32>,
}

impl ReportParams {
    /// Validates the parameters for `tenant`; every invalid one is named at once.
    async fn parse(self, state: &AppState, tenant: &str) -> Result<ReportQuery, ApiError> {
        let mut errors = Vec::new();
        let tz = time_zone(state, tenant, self.tz.as_deref(), &mut errors).await?;
        let from = self.from.as_deref().map(|s| date("from", s, &mut errors));
        let to = self.to.as_deref().map(|s| date("to", s, &mut errors));
        let Some(tz) = tz.filter(|_| errors.is_empty()) else {
            return Err(ApiError::invalid_query(errors));
        };
        let today = chrono::Utc::now().with_timezone(&tz).date_naive();
        let to = to.flatten().unwrap_or(today);
        let from = from.flatten().unwrap_or(to - Duration::days(29));
        let group_by = self.group_by.unwrap_or(GroupBy::Day);
        let buckets = report::bucket_count(group_by, from, to);
        if from > to {
            errors.push(query_error(
                "from",
                format!("from {from} is after to {to}"),
                "a date on or before `to`",
            ));
        } else if (to - from).num_days() + 1 > report::MAX_RANGE_DAYS {
            errors.push(query_error(
                "from",
                format!("{} days from {from} to {to}", (to - from).num_days() + 1),
                &format!(
                    "a range of at most {} days; ask for longer periods in parts",
                    report::MAX_RANGE_DAYS
                ),
            ));
        } else if buckets > report::MAX_BUCKETS {
            errors.push(query_error(
                "from",
                format!("{buckets} buckets from {from} to {to}"),
                &format!(
                    "a range of at most {} buckets; use a coarser group_by",
                    report::MAX_BUCKETS
                ),
            ));
        }
        if !errors.is_empty() {
            return Err(ApiError::invalid_query(errors));
        }
        Ok(ReportQuery {
            tenant: tenant.to_string(),
            group_by,
            tz,
            from,
            to,
            window_days: self.window_days,
        })
    }
}

pub struct ReportsApi {
    pub state: Arc<AppState>,
}

impl ReportsApi {
    /// The caller's report: authorized, parameters parsed, rows computed.
    async fn report(
        &self,
        auth: &BearerAuth,
        params: ReportParams,
    ) -> Result<(ReportQuery, Vec<ReportRow>), ApiError> {
        let principal = authorize(&self.state, auth, Scope::Read).await?;
        let q = params.parse(&self.state, &principal.tenant).await?;
        let rows = report::funnel_report(&self.state.db, &q)
            .await
            .map_err(|e| ApiError::store("funnel tables", e))?;
        Ok((q, rows))
    }
}

/// The report's operations, JSON and CSV, with their query parameters declared once:
/// poem-openapi documents parameters per operation, so each operation gets the same list, and
/// hands it to its method of [`ReportsApi`] as [`ReportParams`].
macro_rules! report_operations {
    ($($(#[$doc:meta])* $operation:ident -> $response:ty => $method:ident;)*) => {
        #[OpenApi]
        impl ReportsApi {
            $(
                $(#[$doc])*
                async fn $operation(
                    &self,
                    auth: BearerAuth,
                    /// hour, day (default), week (ISO, from Monday), month, channel or campaign
                    group_by: Query<Option<GroupBy>>,
                    /// IANA time zone of the dates and buckets; default the tenant's (Asia/Jakarta)
                    tz: Query<Option<String>>,
                    /// First day, YYYY-MM-DD; default `to` minus 29 days
                    from: Query<Option<String>>,
                    /// Last day, YYYY-MM-DD, included; default today in `tz`
                    to: Query<Option<String>>,
                    /// Count a booking or transaction only within this many days of the lead
                    #[oai(validator(minimum(value = "1"), maximum(value = "3650")))]
                    window_days: Query<Option<u32>>,
                ) -> $response {
                    let params = ReportParams {
                        group_by: group_by.0,
                        tz: tz.0,
                        from: from.0,
                        to: to.0,
                        window_days: window_days.0,
                    };
                    self.$method(&auth, params).await
                }
            )*
        }
    };
}

report_operations! {
    /// The funnel report (scope `read`)
    ///
    /// Lead cohorts: the contacts whose lead falls in each group and in `from`..`to` (dates in
    /// `tz`, both included), how many of them booked and paid, their revenue, and the time they
    /// took. Conversions count whenever they happened, unless `window_days` limits them to
    /// that many days after the lead. Contacts with a booking or transaction but no lead are
    /// the `no_lead` row; the `total` row is the whole cohort.
    #[oai(path = "/v1/reports/funnel", method = "get")]
    funnel -> ReportResponse => json;

    /// The funnel report as CSV (scope `read`)
    ///
    /// The rows of `GET /v1/reports/funnel` with the same parameters, one line each, columns
    /// named like its fields.
    #[oai(path = "/v1/reports/funnel.csv", method = "get")]
    funnel_csv -> ReportCsvResponse => csv;
}

impl ReportsApi {
    async fn json(&self, auth: &BearerAuth, params: ReportParams) -> ReportResponse {
        match self.report(auth, params).await {
            Ok((q, rows)) => ReportResponse::Ok(Json(FunnelReport {
                group_by: q.group_by,
                tz: q.tz.name().to_string(),
                from: q.from.to_string(),
                to: q.to.to_string(),
                window_days: q.window_days.into(),
                rows,
            })),
            Err(e) => e.into(),
        }
    }

    async fn csv(&self, auth: &BearerAuth, params: ReportParams) -> ReportCsvResponse {
        let (q, rows) = match self.report(auth, params).await {
            Ok(r) => r,
            Err(e) => return e.into(),
        };
        let (mut sink, body) = crate::http::csv::channel();
        tokio::spawn(async move {
            if sink.record(report::CSV_HEADER).await.is_err() {
                return;
            }
            for r in &rows {
                if sink.record(r.csv()).await.is_err() {
                    return;
                }
            }
            let _ = sink.finish().await;
        });
        ReportCsvResponse::Ok(
            Binary(body),
            format!(
                "attachment; filename=\"funnel-{}-{}-{}.csv\"",
                q.group_by.as_str(),
                q.from,
                q.to
            ),
        )
    }
}
