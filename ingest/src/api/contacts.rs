//! Contacts: one funnel row by phone, filtered lists with keyset pagination, and the same lists
//! (including the "stuck at a stage" exports) as streamed CSV (docs/reports.md).

use std::sync::Arc;

use chrono::{DateTime, Duration, NaiveDate, Utc};
use chrono_tz::Tz;
use futures::TryStreamExt;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::{Binary, Json};
use poem_openapi::{ApiResponse, Enum, Object, OpenApi};
use rust_decimal::Decimal;
use sqlx::{Postgres, QueryBuilder};

use super::reports::{invalid_query, query_error, store_unavailable, time_zone};
use super::rules::StageDoc;
use super::{bad_request, ApiError, AppState, BearerAuth, Nullable, Problem};
use crate::auth::Scope;
use crate::report::day_start;
use crate::validate::FieldError;

const DEFAULT_LIMIT: u32 = 100;

/// A contact's funnel row.
#[derive(Debug, Object)]
pub struct ContactDoc {
    /// The contact key: the E.164 phone
    pub phone: String,
    /// The furthest stage reached: transaction, booking or lead; null when none
    pub stage: Nullable<StageDoc>,
    pub lead_at: Nullable<DateTime<Utc>>,
    /// Channel of the earliest lead
    pub channel: Nullable<String>,
    /// Campaign of the earliest lead
    pub campaign: Nullable<String>,
    pub booking_at: Nullable<DateTime<Utc>>,
    pub transaction_at: Nullable<DateTime<Utc>>,
    /// Sum of the values of distinct transaction events, two decimals
    pub transaction_value: String,
    pub transaction_count: i32,
    pub first_message_at: Nullable<DateTime<Utc>>,
    pub last_message_at: Nullable<DateTime<Utc>>,
    pub message_count: i64,
    /// The highest rule set version among the events that reached a stage
    pub rule_set_version: Nullable<i64>,
    pub updated_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct ContactRow {
    phone: String,
    lead_at: Option<DateTime<Utc>>,
    channel: Option<String>,
    campaign: Option<String>,
    booking_at: Option<DateTime<Utc>>,
    transaction_at: Option<DateTime<Utc>>,
    transaction_value: Decimal,
    transaction_count: i32,
    first_message_at: Option<DateTime<Utc>>,
    last_message_at: Option<DateTime<Utc>>,
    message_count: i64,
    rule_set_version: Option<i64>,
    updated_at: DateTime<Utc>,
}

const COLUMNS: &str = "phone, lead_at, channel, campaign, booking_at, transaction_at, \
     transaction_value, transaction_count, first_message_at, last_message_at, message_count, \
     rule_set_version, updated_at";

const CSV_HEADER: [&str; 14] = [
    "phone",
    "stage",
    "lead_at",
    "channel",
    "campaign",
    "booking_at",
    "transaction_at",
    "transaction_value",
    "transaction_count",
    "first_message_at",
    "last_message_at",
    "message_count",
    "rule_set_version",
    "updated_at",
];

impl ContactRow {
    fn stage(&self) -> Option<StageDoc> {
        if self.transaction_at.is_some() {
            Some(StageDoc::Transaction)
        } else if self.booking_at.is_some() {
            Some(StageDoc::Booking)
        } else if self.lead_at.is_some() {
            Some(StageDoc::Lead)
        } else {
            None
        }
    }

    fn doc(self) -> ContactDoc {
        ContactDoc {
            stage: self.stage().into(),
            transaction_value: crate::report::cents(self.transaction_value).to_string(),
            phone: self.phone,
            lead_at: self.lead_at.into(),
            channel: self.channel.into(),
            campaign: self.campaign.into(),
            booking_at: self.booking_at.into(),
            transaction_at: self.transaction_at.into(),
            transaction_count: self.transaction_count,
            first_message_at: self.first_message_at.into(),
            last_message_at: self.last_message_at.into(),
            message_count: self.message_count,
            rule_set_version: self.rule_set_version.into(),
            updated_at: self.updated_at,
        }
    }

    fn csv(&self) -> [String; 14] {
        fn t(v: Option<DateTime<Utc>>) -> String {
            v.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
                .unwrap_or_default()
        }
        [
            self.phone.clone(),
            self.stage()
                .map(|s| match s {
                    StageDoc::Lead => "lead",
                    StageDoc::Booking => "booking",
                    StageDoc::Transaction => "transaction",
                })
                .unwrap_or_default()
                .to_string(),
            t(self.lead_at),
            self.channel.clone().unwrap_or_default(),
            self.campaign.clone().unwrap_or_default(),
            t(self.booking_at),
            t(self.transaction_at),
            crate::report::cents(self.transaction_value).to_string(),
            self.transaction_count.to_string(),
            t(self.first_message_at),
            t(self.last_message_at),
            self.message_count.to_string(),
            self.rule_set_version
                .map(|v| v.to_string())
                .unwrap_or_default(),
            t(Some(self.updated_at)),
        ]
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "lowercase")]
pub enum OrderDoc {
    Asc,
    Desc,
}

#[derive(Debug, Object)]
pub struct ContactPage {
    pub contacts: Vec<ContactDoc>,
    /// Pass as `cursor`, with the same other parameters, for the next page; null on the last
    pub next_cursor: Nullable<String>,
}

common_errors!(ContactResponse {
    /// The contact's funnel row
    #[oai(status = 200)]
    Ok(Json<ContactDoc>),
    /// No contact with this phone
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

/// Which contacts, in which order. The sort column is the time of `stage` (`lead_at` when only
/// a time range is given); without either, contacts are listed by phone.
#[derive(Debug, Clone)]
struct ContactFilter {
    tenant: String,
    column: Option<&'static str>,
    stage: Option<StageDoc>,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    channel: Option<String>,
    stuck_days: Option<u32>,
    desc: bool,
}

/// Where the previous page ended: the sort value and the phone of its last row.
#[derive(Debug, Clone, PartialEq)]
struct Cursor {
    column: Option<&'static str>,
    at: Option<DateTime<Utc>>,
    phone: String,
}

impl Cursor {
    fn encode(&self) -> String {
        let at = self
            .at
            .map(|t| t.timestamp_micros().to_string())
            .unwrap_or_default();
        hex::encode(format!(
            "{}|{at}|{}",
            self.column.unwrap_or("phone"),
            self.phone
        ))
    }

    fn decode(raw: &str, column: Option<&'static str>) -> Result<Cursor, FieldError> {
        let bad = |why: &str| {
            query_error(
                "cursor",
                why,
                "the next_cursor of a previous page, with the same other parameters",
            )
        };
        let text = hex::decode(raw)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| bad("not a cursor this API issued"))?;
        let mut parts = text.splitn(3, '|');
        let (col, at, phone) = match (parts.next(), parts.next(), parts.next()) {
            (Some(c), Some(a), Some(p)) => (c, a, p),
            _ => return Err(bad("not a cursor this API issued")),
        };
        if col != column.unwrap_or("phone") {
            return Err(bad("the cursor belongs to a list with other parameters"));
        }
        let at = match (column, at) {
            (None, "") => None,
            (Some(_), micros) => Some(
                micros
                    .parse::<i64>()
                    .ok()
                    .and_then(DateTime::from_timestamp_micros)
                    .ok_or_else(|| bad("not a cursor this API issued"))?,
            ),
            (None, _) => return Err(bad("not a cursor this API issued")),
        };
        Ok(Cursor {
            column,
            at,
            phone: phone.to_string(),
        })
    }
}

fn stage_column(stage: StageDoc) -> &'static str {
    match stage {
        StageDoc::Lead => "lead_at",
        StageDoc::Booking => "booking_at",
        StageDoc::Transaction => "transaction_at",
    }
}

impl ContactFilter {
    fn sql(&self, after: Option<&Cursor>, limit: Option<i64>) -> QueryBuilder<'static, Postgres> {
        let mut qb = QueryBuilder::new(format!(
            "SELECT {COLUMNS} FROM funnel_contacts WHERE tenant = "
        ));
        qb.push_bind(self.tenant.clone());
        if let Some(col) = self.column {
            qb.push(format!(" AND {col} IS NOT NULL"));
            if let Some(from) = self.from {
                qb.push(format!(" AND {col} >= ")).push_bind(from);
            }
            if let Some(to) = self.to {
                qb.push(format!(" AND {col} < ")).push_bind(to);
            }
        }
        if let Some(channel) = &self.channel {
            qb.push(" AND channel = ").push_bind(channel.clone());
        }
        if let (Some(days), Some(stage)) = (self.stuck_days, self.stage) {
            let cutoff = Utc::now() - Duration::days(i64::from(days));
            match stage {
                StageDoc::Lead => {
                    qb.push(" AND booking_at IS NULL AND transaction_at IS NULL AND lead_at < ")
                        .push_bind(cutoff);
                }
                StageDoc::Booking => {
                    qb.push(" AND transaction_at IS NULL AND booking_at < ")
                        .push_bind(cutoff);
                }
                StageDoc::Transaction => {}
            }
        }
        let (cmp, dir) = if self.desc {
            ("<", "DESC")
        } else {
            (">", "ASC")
        };
        match (self.column, after) {
            (Some(col), Some(c)) => {
                qb.push(format!(" AND ({col}, phone) {cmp} ("))
                    .push_bind(c.at)
                    .push(", ")
                    .push_bind(c.phone.clone())
                    .push(")");
            }
            (None, Some(c)) => {
                qb.push(format!(" AND phone {cmp} "))
                    .push_bind(c.phone.clone());
            }
            _ => {}
        }
        match self.column {
            Some(col) => qb.push(format!(" ORDER BY {col} {dir}, phone {dir}")),
            None => qb.push(format!(" ORDER BY phone {dir}")),
        };
        if let Some(limit) = limit {
            qb.push(" LIMIT ").push_bind(limit);
        }
        qb
    }
}

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

pub struct ListParams {
    pub stage: Option<StageDoc>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub tz: Option<String>,
    pub channel: Option<String>,
    pub stuck_days: Option<u32>,
    pub order: Option<OrderDoc>,
}

async fn filter(state: &AppState, tenant: &str, p: ListParams) -> Result<ContactFilter, ApiError> {
    let mut errors = Vec::new();
    // Without a valid zone, dates are checked for their form against UTC.
    let tz = time_zone(state, tenant, p.tz.as_deref(), &mut errors)
        .await?
        .unwrap_or(Tz::UTC);
    let from = p
        .from
        .as_deref()
        .and_then(|s| parse_bound("from", s, tz, false, &mut errors));
    let to =
        p.to.as_deref()
            .and_then(|s| parse_bound("to", s, tz, true, &mut errors));
    if let (Some(f), Some(t)) = (from, to) {
        if f >= t {
            errors.push(query_error(
                "from",
                format!("the range from {f} to {t} is empty"),
                "a time before `to`",
            ));
        }
    }
    if p.stuck_days.is_some() && !matches!(p.stage, Some(StageDoc::Lead | StageDoc::Booking)) {
        errors.push(query_error(
            "stuck_days",
            "stuck_days needs stage=lead (no booking yet) or stage=booking (no transaction yet)",
            "stage=lead or stage=booking alongside stuck_days",
        ));
    }
    if !errors.is_empty() {
        return Err(invalid_query(errors));
    }
    let stage = p
        .stage
        .or((from.is_some() || to.is_some()).then_some(StageDoc::Lead));
    Ok(ContactFilter {
        tenant: tenant.to_string(),
        column: stage.map(stage_column),
        stage,
        from,
        to,
        channel: p.channel,
        stuck_days: p.stuck_days,
        desc: p.order == Some(OrderDoc::Desc),
    })
}

pub struct ContactsApi {
    pub state: Arc<AppState>,
}

#[OpenApi]
impl ContactsApi {
    /// One contact's funnel row (scope `read`)
    ///
    /// Any form of the phone is accepted (`0812-3456-7890`, `+62 812 3456 7890`) and
    /// normalized like incoming messages.
    #[oai(path = "/v1/contacts/:phone", method = "get")]
    async fn get_contact(&self, auth: BearerAuth, phone: Path<String>) -> ContactResponse {
        let principal = match super::authorize(&self.state, &auth, Scope::Read).await {
            Ok(p) => p,
            Err(e) => return e.into(),
        };
        let normalized = crate::validate::normalize_phone(&phone.0, self.state.region);
        // A key that is not a phone (a later channel may key contacts by another id) is looked
        // up as given; a phone is looked up in E.164.
        let key = normalized.as_ref().map_or(phone.0.as_str(), String::as_str);
        let row: Result<Option<ContactRow>, _> = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM funnel_contacts WHERE tenant = $1 AND phone = $2"
        ))
        .bind(&principal.tenant)
        .bind(key)
        .fetch_optional(&self.state.db)
        .await;
        match (row, normalized) {
            (Ok(Some(row)), _) => ContactResponse::Ok(Json(row.doc())),
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
            (Err(e), _) => store_unavailable(e).into(),
        }
    }

    /// Contacts, filtered, one page at a time (scope `read`)
    ///
    /// `stage` keeps the contacts that reached it; `from`/`to` filter the time they reached it
    /// (the lead when no stage is given); `stuck_days` keeps leads without a booking or
    /// transaction (`stage=lead`), or bookings without a transaction (`stage=booking`), older
    /// than that many days. Sorted by that time, then phone; with neither, by phone. Pages are
    /// keyset-paginated: pass `next_cursor` back as `cursor`.
    #[oai(path = "/v1/contacts", method = "get")]
    #[allow(clippy::too_many_arguments)]
    async fn list_contacts(
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
        /// Page size, 1 to 1000 (default 100)
        #[oai(validator(minimum(value = "1"), maximum(value = "1000")))]
        limit: Query<Option<u32>>,
        /// `next_cursor` of the previous page
        cursor: Query<Option<String>>,
    ) -> ContactListResponse {
        let principal = match super::authorize(&self.state, &auth, Scope::Read).await {
            Ok(p) => p,
            Err(e) => return e.into(),
        };
        let params = ListParams {
            stage: stage.0,
            from: from.0,
            to: to.0,
            tz: tz.0,
            channel: channel.0,
            stuck_days: stuck_days.0,
            order: order.0,
        };
        let f = match filter(&self.state, &principal.tenant, params).await {
            Ok(f) => f,
            Err(e) => return e.into(),
        };
        let after = match cursor.0.as_deref().map(|c| Cursor::decode(c, f.column)) {
            None => None,
            Some(Ok(c)) => Some(c),
            Some(Err(e)) => return invalid_query(vec![e]).into(),
        };
        let limit = i64::from(limit.0.unwrap_or(DEFAULT_LIMIT));
        let mut qb = f.sql(after.as_ref(), Some(limit + 1));
        let rows: Vec<ContactRow> = match qb.build_query_as().fetch_all(&self.state.db).await {
            Ok(r) => r,
            Err(e) => return store_unavailable(e).into(),
        };
        let more = rows.len() as i64 > limit;
        let mut rows = rows;
        rows.truncate(limit as usize);
        let next_cursor = more
            .then(|| rows.last())
            .flatten()
            .map(|last| Cursor {
                column: f.column,
                at: match f.column {
                    Some("booking_at") => last.booking_at,
                    Some("transaction_at") => last.transaction_at,
                    Some(_) => last.lead_at,
                    None => None,
                },
                phone: last.phone.clone(),
            })
            .map(|c| c.encode());
        ContactListResponse::Ok(Json(ContactPage {
            contacts: rows.into_iter().map(ContactRow::doc).collect(),
            next_cursor: next_cursor.into(),
        }))
    }

    /// Contacts as CSV, every matching row, streamed (scope `read`)
    ///
    /// The filters of `GET /v1/contacts`. With `stage=lead&stuck_days=N` it is the list of
    /// leads with no booking after N days; with `stage=booking&stuck_days=N`, of bookings with
    /// no transaction after N days.
    #[oai(path = "/v1/contacts.csv", method = "get")]
    #[allow(clippy::too_many_arguments)]
    async fn contacts_csv(
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
    ) -> ContactCsvResponse {
        let principal = match super::authorize(&self.state, &auth, Scope::Read).await {
            Ok(p) => p,
            Err(e) => return e.into(),
        };
        let params = ListParams {
            stage: stage.0,
            from: from.0,
            to: to.0,
            tz: tz.0,
            channel: channel.0,
            stuck_days: stuck_days.0,
            order: order.0,
        };
        let f = match filter(&self.state, &principal.tenant, params).await {
            Ok(f) => f,
            Err(e) => return e.into(),
        };
        let name = match (f.stage, f.stuck_days) {
            (Some(StageDoc::Lead), Some(d)) => format!("contacts-stuck-at-lead-{d}d.csv"),
            (Some(StageDoc::Booking), Some(d)) => format!("contacts-stuck-at-booking-{d}d.csv"),
            _ => "contacts.csv".to_string(),
        };
        let db = self.state.db.clone();
        let (mut sink, body) = crate::csv_stream::channel();
        tokio::spawn(async move {
            if sink.record(CSV_HEADER).await.is_err() {
                return;
            }
            let mut qb = f.sql(None, None);
            let mut rows = qb.build_query_as::<ContactRow>().fetch(&db);
            loop {
                match rows.try_next().await {
                    Ok(Some(row)) => {
                        if sink.record(row.csv()).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "contacts export failed");
                        drop(rows);
                        sink.fail(format!("export failed: {e}")).await;
                        return;
                    }
                }
            }
            drop(rows);
            let _ = sink.finish().await;
        });
        ContactCsvResponse::Ok(Binary(body), format!("attachment; filename=\"{name}\""))
    }
}
