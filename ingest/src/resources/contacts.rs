//! Contacts: one funnel row by phone, filtered lists with keyset pagination, and the same lists
//! (including the "stuck at a stage" exports) as streamed CSV (docs/reports.md): one list of
//! query parameters for both list operations ([`list_operations!`]), one parser
//! ([`ListParams::parse`]), one row type (`queries::contacts::Contact`).

use std::sync::Arc;

use chrono::{DateTime, Duration, NaiveDate, Utc};
use chrono_tz::Tz;
use funnel_schemas::validate::FieldError;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::{Binary, Json};
use poem_openapi::{Enum, Object, OpenApi};

use super::params::time_zone;
use crate::http::auth::{authorize, BearerAuth};
use crate::http::problem::{common_errors, query_error, ApiError, Problem};
use crate::http::types::{Nullable, StageDoc};
use crate::queries::contacts::{self, stage_column, Contact, ContactFilter, Cursor, CSV_HEADER};
use crate::queries::report::day_start;
use crate::queries::tokens::Scope;
use crate::state::AppState;

const DEFAULT_LIMIT: u32 = 100;
/// Rows per query of a CSV export (about 2 MB held at once).
const EXPORT_PAGE: i64 = 5_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "lowercase")]
pub enum OrderDoc {
    Asc,
    Desc,
}

#[derive(Debug, Object)]
pub struct ContactPage {
    pub contacts: Vec<Contact>,
    /// Pass as `cursor`, with the same other parameters, for the next page; null on the last
    pub next_cursor: Nullable<String>,
}

common_errors!(ContactResponse {
    /// The contact's funnel row
    #[oai(status = 200)]
    Ok(Json<Box<Contact>>),
    /// No contact with this key
    #[oai(status = 404, content_type = "application/problem+json")]
    NotFound(Json<Problem>),
});

common_errors!(ContactListResponse {
    /// One page of contacts
    #[oai(status = 200)]
    Ok(Json<ContactPage>),
});

common_errors!(ContactCsvResponse {
    /// Every matching contact as CSV, streamed
    #[oai(status = 200, content_type = "text/csv; charset=utf-8")]
    Ok(
        Binary<poem::Body>,
        #[oai(header = "Content-Disposition")] String,
    ),
});

/// A bound of a time range: a date (the start of that day in `tz`; for `to`, of the next day)
/// or an RFC 3339 instant.
fn parse_bound(
    param: &str,
    raw: &str,
    tz: Tz,
    end: bool,
    errors: &mut Vec<FieldError>,
) -> Option<DateTime<Utc>> {
    if let Ok(d) = NaiveDate::parse_from_str(raw, "%Y-%m-%d") {
        return Some(day_start(tz, if end { d + Duration::days(1) } else { d }));
    }
    match DateTime::parse_from_rfc3339(raw) {
        Ok(t) => Some(t.with_timezone(&Utc)),
        Err(e) => {
            errors.push(query_error(
                param,
                format!("{raw:?} is neither a date nor an RFC 3339 time: {e}"),
                "a date YYYY-MM-DD (whole days in tz) or an RFC 3339 time",
            ));
            None
        }
    }
}

/// The query parameters of a contact list, as given.
pub struct ListParams {
    pub stage: Option<StageDoc>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub tz: Option<String>,
    pub channel: Option<String>,
    pub stuck_days: Option<u32>,
    pub order: Option<OrderDoc>,
}

impl ListParams {
    /// Validates the parameters for `tenant`; every invalid one is named at once.
    async fn parse(self, state: &AppState, tenant: &str) -> Result<ContactFilter, ApiError> {
        let mut errors = Vec::new();
        // Without a valid zone, dates are checked for their form against UTC.
        let tz = time_zone(state, tenant, self.tz.as_deref(), &mut errors)
            .await?
            .unwrap_or(Tz::UTC);
        let mut bound = |param, raw: &Option<String>, end| {
            raw.as_deref()
                .and_then(|s| parse_bound(param, s, tz, end, &mut errors))
        };
        let (from, to) = (
            bound("from", &self.from, false),
            bound("to", &self.to, true),
        );
        if let (Some(f), Some(t)) = (from, to) {
            if f >= t {
                errors.push(query_error(
                    "from",
                    format!("the range from {f} to {t} is empty"),
                    "a time before `to`",
                ));
            }
        }
        let stuck_at = matches!(self.stage, Some(StageDoc::Lead | StageDoc::Booking));
        if self.stuck_days.is_some() && !stuck_at {
            errors.push(query_error(
                "stuck_days",
                "stuck_days needs stage=lead (no booking yet) or stage=booking (no transaction yet)",
                "stage=lead or stage=booking alongside stuck_days",
            ));
        }
        if !errors.is_empty() {
            return Err(ApiError::invalid_query(errors));
        }
        let stage = self
            .stage
            .or((from.is_some() || to.is_some()).then_some(StageDoc::Lead));
        Ok(ContactFilter {
            tenant: tenant.to_string(),
            column: stage.map(stage_column),
            stage,
            from,
            to,
            channel: self.channel,
            stuck_days: self.stuck_days,
            desc: self.order == Some(OrderDoc::Desc),
        })
    }
}

/// One contact.
pub struct ContactApi {
    pub state: Arc<AppState>,
}

/// Lists of contacts, as JSON pages or as CSV.
pub struct ContactsApi {
    pub state: Arc<AppState>,
}

impl ContactsApi {
    /// The caller's filter: authorized, parameters parsed.
    async fn filter(
        &self,
        auth: &BearerAuth,
        params: ListParams,
    ) -> Result<ContactFilter, ApiError> {
        let principal = authorize(&self.state, auth, Scope::Read).await?;
        params.parse(&self.state, &principal.tenant).await
    }
}

#[OpenApi]
impl ContactApi {
    /// One contact's funnel row (scope `read`)
    ///
    /// Any form of the phone is accepted (`0812-3456-7890`, `+62 812 3456 7890`) and
    /// normalized like incoming messages.
    #[oai(path = "/v1/contacts/:phone", method = "get")]
    async fn get_contact(&self, auth: BearerAuth, phone: Path<String>) -> ContactResponse {
        let principal = match authorize(&self.state, &auth, Scope::Read).await {
            Ok(p) => p,
            Err(e) => return e.into(),
        };
        let normalized = funnel_schemas::phone::normalize_phone(&phone.0, self.state.region);
        // A key that is not a phone (a later channel may key contacts by another id) is looked
        // up as given; a phone is looked up in E.164.
        let key = normalized.as_ref().map_or(phone.0.as_str(), String::as_str);
        let row = contacts::contact(&self.state.db, &principal.tenant, key).await;
        match (row, normalized) {
            (Ok(Some(row)), _) => ContactResponse::Ok(Json(Box::new(row))),
            (Ok(None), Ok(e164)) => ContactResponse::NotFound(Json(Problem::new(
                404,
                "not-found",
                "no such contact",
                format!("tenant {} has no contact {e164}", principal.tenant),
            ))),
            (Ok(None), Err(why)) => ApiError::Invalid(Problem::invalid_params(vec![FieldError {
                pointer: "/path/phone".into(),
                detail: why,
                expected: "a phone number, E.164 or national (default region)".into(),
            }]))
            .into(),
            (Err(e), _) => ApiError::store("funnel tables", e).into(),
        }
    }
}

/// The list's operations, JSON pages and CSV, with their query parameters declared once
/// (poem-openapi documents parameters per operation): each hands them to its method of
/// [`ContactsApi`] as [`ListParams`], with the operation's own further parameters.
macro_rules! list_operations {
    ($(
        $(#[$doc:meta])*
        $operation:ident($($(#[$extra_doc:meta])* $extra:ident: $extra_ty:ty),*)
            -> $response:ty => $method:ident;
    )*) => {
        #[OpenApi]
        impl ContactsApi {
            $(
                $(#[$doc])*
                #[allow(clippy::too_many_arguments)]
                async fn $operation(
                    &self,
                    auth: BearerAuth,
                    /// Only contacts that reached this stage; its time is the sort and range column
                    stage: Query<Option<StageDoc>>,
                    /// Start of the range: a date (from its first instant in `tz`) or an RFC 3339 time
                    from: Query<Option<String>>,
                    /// End of the range: a date (included, whole day in `tz`) or an RFC 3339 time (excluded)
                    to: Query<Option<String>>,
                    /// IANA time zone of date bounds; default the tenant's (Asia/Jakarta)
                    tz: Query<Option<String>>,
                    /// Only contacts whose lead came through this channel
                    channel: Query<Option<String>>,
                    /// With stage=lead or stage=booking: only contacts stuck there longer than this many days
                    #[oai(validator(maximum(value = "3650")))]
                    stuck_days: Query<Option<u32>>,
                    /// asc (default) or desc
                    order: Query<Option<OrderDoc>>,
                    $($(#[$extra_doc])* $extra: $extra_ty,)*
                ) -> $response {
                    let params = ListParams {
                        stage: stage.0,
                        from: from.0,
                        to: to.0,
                        tz: tz.0,
                        channel: channel.0,
                        stuck_days: stuck_days.0,
                        order: order.0,
                    };
                    self.$method(&auth, params, $($extra),*).await
                }
            )*
        }
    };
}

list_operations! {
    /// Contacts, filtered, one page at a time (scope `read`)
    ///
    /// `stage` keeps the contacts that reached it; `from`/`to` filter the time they reached it
    /// (the lead when no stage is given); `stuck_days` keeps leads without a booking or
    /// transaction (`stage=lead`), or bookings without a transaction (`stage=booking`), older
    /// than that many days. Sorted by that time, then phone; with neither, by phone. Pages are
    /// keyset-paginated: pass `next_cursor` back as `cursor`.
    #[oai(path = "/v1/contacts", method = "get")]
    list_contacts(
        /// Page size, 1 to 1000 (default 100)
        #[oai(validator(minimum(value = "1"), maximum(value = "1000")))]
        limit: Query<Option<u32>>,
        /// `next_cursor` of the previous page
        cursor: Query<Option<String>>
    ) -> ContactListResponse => page;

    /// Contacts as CSV, every matching row, streamed (scope `read`)
    ///
    /// The filters of `GET /v1/contacts`. With `stage=lead&stuck_days=N` it is the list of
    /// leads with no booking after N days; with `stage=booking&stuck_days=N`, of bookings with
    /// no transaction after N days.
    #[oai(path = "/v1/contacts.csv", method = "get")]
    contacts_csv() -> ContactCsvResponse => csv;
}

impl ContactsApi {
    async fn page(
        &self,
        auth: &BearerAuth,
        params: ListParams,
        limit: Query<Option<u32>>,
        cursor: Query<Option<String>>,
    ) -> ContactListResponse {
        let f = match self.filter(auth, params).await {
            Ok(f) => f,
            Err(e) => return e.into(),
        };
        let after = match cursor
            .0
            .as_deref()
            .map(|c| Cursor::decode(c, f.column, &self.state.sealer))
        {
            None => None,
            Some(Ok(c)) => Some(c),
            Some(Err(e)) => return ApiError::invalid_query(vec![e]).into(),
        };
        let limit = i64::from(limit.0.unwrap_or(DEFAULT_LIMIT));
        let mut qb = f.sql(after.as_ref(), Some(limit + 1));
        let rows: Vec<Contact> = match qb.build_query_as().fetch_all(&self.state.db).await {
            Ok(r) => r,
            Err(e) => return ApiError::store("funnel tables", e).into(),
        };
        let more = rows.len() as i64 > limit;
        let mut rows = rows;
        rows.truncate(limit as usize);
        let next_cursor = more
            .then(|| rows.last())
            .flatten()
            .map(|last| last.cursor(f.column).encode(&self.state.sealer));
        ContactListResponse::Ok(Json(ContactPage {
            contacts: rows,
            next_cursor: next_cursor.into(),
        }))
    }

    async fn csv(&self, auth: &BearerAuth, params: ListParams) -> ContactCsvResponse {
        let f = match self.filter(auth, params).await {
            Ok(f) => f,
            Err(e) => return e.into(),
        };
        let name = match (f.stage, f.stuck_days) {
            (Some(StageDoc::Lead), Some(d)) => format!("contacts-stuck-at-lead-{d}d.csv"),
            (Some(StageDoc::Booking), Some(d)) => format!("contacts-stuck-at-booking-{d}d.csv"),
            _ => "contacts.csv".to_string(),
        };
        let db = self.state.db.clone();
        let (mut sink, body) = crate::http::csv::channel();
        tokio::spawn(async move {
            if sink.record(CSV_HEADER).await.is_err() {
                return;
            }
            // Page by page, each page a query of its own: a client that reads slowly holds no
            // database connection while the service waits for it to take the next chunk.
            let mut after: Option<Cursor> = None;
            loop {
                let mut qb = f.sql(after.as_ref(), Some(EXPORT_PAGE));
                let page: Vec<Contact> = match qb.build_query_as().fetch_all(&db).await {
                    Ok(page) => page,
                    Err(e) => {
                        tracing::warn!(error = %e, "contacts export failed");
                        sink.fail(format!("export failed: {e}")).await;
                        return;
                    }
                };
                for row in &page {
                    if sink.record(row.csv()).await.is_err() {
                        return;
                    }
                }
                match page.last() {
                    Some(last) if page.len() as i64 == EXPORT_PAGE => {
                        after = Some(last.cursor(f.column));
                    }
                    _ => break,
                }
            }
            let _ = sink.finish().await;
        });
        ContactCsvResponse::Ok(Binary(body), format!("attachment; filename=\"{name}\""))
    }
}
