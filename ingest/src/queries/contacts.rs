//! Contacts as the API lists them: [`Contact`], the one type of a contact's row (the query
//! reads it, the JSON answer and the CSV export write it), and the filtered, keyset-paginated
//! query of `GET /v1/contacts` and its CSV form.

use chrono::{DateTime, Duration, Utc};
use funnel_schemas::rules::safe_cell;
use funnel_schemas::validate::FieldError;
use poem_openapi::Object;
use sqlx::postgres::PgRow;
use sqlx::{Postgres, QueryBuilder, Row};

use crate::http::problem::query_error;
use crate::http::types::{Money, Nullable, StageDoc};
use funnel_runtime::seal::Sealer;

/// A contact's funnel row.
#[derive(Debug, Object)]
#[oai(rename = "ContactDoc")]
pub struct Contact {
    /// The contact key: the E.164 phone, or the WhatsApp business-scoped user id of a contact
    /// whose phone is withheld (`US.13491208655302741918`)
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
    pub transaction_value: Money,
    pub transaction_count: i32,
    pub first_message_at: Nullable<DateTime<Utc>>,
    pub last_message_at: Nullable<DateTime<Utc>>,
    pub message_count: i64,
    /// The highest rule set version among the events that reached a stage
    pub rule_set_version: Nullable<i64>,
    pub updated_at: DateTime<Utc>,
    /// First touch by a click-to-WhatsApp ad: the time of the contact's earliest message that
    /// carried a referral; null when none did
    pub ad_at: Nullable<DateTime<Utc>>,
    /// That ad's (or post's) id
    pub ad_source_id: Nullable<String>,
    /// `ad` or `post`
    pub ad_source_type: Nullable<String>,
    pub ad_source_url: Nullable<String>,
    pub ad_headline: Nullable<String>,
    /// The click id the Conversions API attributes conversions to
    pub ctwa_clid: Nullable<String>,
}

pub const COLUMNS: &str = "phone, lead_at, channel, campaign, booking_at, transaction_at, \
     transaction_value, transaction_count, first_message_at, last_message_at, message_count, \
     rule_set_version, updated_at, ad_at, ad_source_id, ad_source_type, ad_source_url, \
     ad_headline, ctwa_clid";

pub const CSV_HEADER: [&str; 20] = [
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
    "ad_at",
    "ad_source_id",
    "ad_source_type",
    "ad_source_url",
    "ad_headline",
    "ctwa_clid",
];

impl<'r> sqlx::FromRow<'r, PgRow> for Contact {
    fn from_row(row: &'r PgRow) -> Result<Self, sqlx::Error> {
        let lead_at: Option<DateTime<Utc>> = row.try_get("lead_at")?;
        let booking_at: Option<DateTime<Utc>> = row.try_get("booking_at")?;
        let transaction_at: Option<DateTime<Utc>> = row.try_get("transaction_at")?;
        let stage = match (lead_at, booking_at, transaction_at) {
            (_, _, Some(_)) => Some(StageDoc::Transaction),
            (_, Some(_), None) => Some(StageDoc::Booking),
            (Some(_), None, None) => Some(StageDoc::Lead),
            (None, None, None) => None,
        };
        Ok(Contact {
            phone: row.try_get("phone")?,
            stage: stage.into(),
            lead_at: lead_at.into(),
            channel: row.try_get::<Option<String>, _>("channel")?.into(),
            campaign: row.try_get::<Option<String>, _>("campaign")?.into(),
            booking_at: booking_at.into(),
            transaction_at: transaction_at.into(),
            transaction_value: Money::new(row.try_get("transaction_value")?),
            transaction_count: row.try_get("transaction_count")?,
            first_message_at: row
                .try_get::<Option<DateTime<Utc>>, _>("first_message_at")?
                .into(),
            last_message_at: row
                .try_get::<Option<DateTime<Utc>>, _>("last_message_at")?
                .into(),
            message_count: row.try_get("message_count")?,
            rule_set_version: row.try_get::<Option<i64>, _>("rule_set_version")?.into(),
            updated_at: row.try_get("updated_at")?,
            ad_at: row.try_get::<Option<DateTime<Utc>>, _>("ad_at")?.into(),
            ad_source_id: row.try_get::<Option<String>, _>("ad_source_id")?.into(),
            ad_source_type: row.try_get::<Option<String>, _>("ad_source_type")?.into(),
            ad_source_url: row.try_get::<Option<String>, _>("ad_source_url")?.into(),
            ad_headline: row.try_get::<Option<String>, _>("ad_headline")?.into(),
            ctwa_clid: row.try_get::<Option<String>, _>("ctwa_clid")?.into(),
        })
    }
}

impl Contact {
    /// The row as CSV fields, in the order of [`CSV_HEADER`]; null as an empty field.
    pub fn csv(&self) -> [String; 20] {
        fn t(v: &Nullable<DateTime<Utc>>) -> String {
            v.0.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
                .unwrap_or_default()
        }
        fn opt<T: ToString>(v: &Nullable<T>) -> String {
            v.0.as_ref().map(T::to_string).unwrap_or_default()
        }
        // Channels and campaigns came from clients: never a formula in a spreadsheet.
        fn safe(v: &Nullable<String>) -> String {
            v.0.as_deref()
                .map(safe_cell)
                .unwrap_or_default()
                .into_owned()
        }
        [
            self.phone.clone(),
            self.stage
                .0
                .map(|s| match s {
                    StageDoc::Lead => "lead",
                    StageDoc::Booking => "booking",
                    StageDoc::Transaction => "transaction",
                })
                .unwrap_or_default()
                .to_string(),
            t(&self.lead_at),
            safe(&self.channel),
            safe(&self.campaign),
            t(&self.booking_at),
            t(&self.transaction_at),
            self.transaction_value.to_string(),
            self.transaction_count.to_string(),
            t(&self.first_message_at),
            t(&self.last_message_at),
            self.message_count.to_string(),
            opt(&self.rule_set_version),
            t(&Nullable(Some(self.updated_at))),
            t(&self.ad_at),
            // The ad fields come from Meta's payloads, that is from whoever wrote the ad.
            safe(&self.ad_source_id),
            safe(&self.ad_source_type),
            safe(&self.ad_source_url),
            safe(&self.ad_headline),
            safe(&self.ctwa_clid),
        ]
    }

    /// Where a page that ends with this contact ends, for a list sorted by `column`.
    pub fn cursor(&self, column: Option<&'static str>) -> Cursor {
        Cursor {
            column,
            at: match column {
                Some("booking_at") => self.booking_at.0,
                Some("transaction_at") => self.transaction_at.0,
                Some(_) => self.lead_at.0,
                None => None,
            },
            phone: self.phone.clone(),
        }
    }
}

/// One contact of a tenant by its key.
pub async fn contact(
    db: &sqlx::PgPool,
    tenant: &str,
    key: &str,
) -> Result<Option<Contact>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM funnel_contacts WHERE tenant = $1 AND phone = $2"
    ))
    .bind(tenant)
    .bind(key)
    .fetch_optional(db)
    .await
}

/// Which contacts, in which order. The sort column is the time of `stage` (`lead_at` when only
/// a time range is given); without either, contacts are listed by phone.
#[derive(Debug, Clone)]
pub struct ContactFilter {
    pub tenant: String,
    pub column: Option<&'static str>,
    pub stage: Option<StageDoc>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub channel: Option<String>,
    pub stuck_days: Option<u32>,
    pub desc: bool,
}

/// Where the previous page ended: the sort value and the phone of its last row.
#[derive(Debug, Clone, PartialEq)]
pub struct Cursor {
    column: Option<&'static str>,
    at: Option<DateTime<Utc>>,
    phone: String,
}

impl Cursor {
    /// The cursor as clients see it: sealed, so it shows no contact key.
    pub fn encode(&self, sealer: &Sealer) -> String {
        let at = self
            .at
            .map(|t| t.timestamp_micros().to_string())
            .unwrap_or_default();
        let plain = format!("{}|{at}|{}", self.column.unwrap_or("phone"), self.phone);
        sealer.seal(plain.as_bytes())
    }

    pub fn decode(
        raw: &str,
        column: Option<&'static str>,
        sealer: &Sealer,
    ) -> Result<Cursor, FieldError> {
        let bad = |why: &str| {
            query_error(
                "cursor",
                why,
                "the next_cursor of a previous page, with the same other parameters",
            )
        };
        let text = sealer
            .open(raw)
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

/// The column of the time a contact reached `stage`.
pub fn stage_column(stage: StageDoc) -> &'static str {
    match stage {
        StageDoc::Lead => "lead_at",
        StageDoc::Booking => "booking_at",
        StageDoc::Transaction => "transaction_at",
    }
}

impl ContactFilter {
    /// The query of the filter's contacts, after `after`, at most `limit`.
    pub fn sql(
        &self,
        after: Option<&Cursor>,
        limit: Option<i64>,
    ) -> QueryBuilder<'static, Postgres> {
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
