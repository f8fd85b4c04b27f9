//! The outbox `funnel_conversions`: due conversions leased to one sender at a time (so several
//! processors share the work), their outcomes, and what the operators' commands read and
//! change.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sqlx::PgPool;

/// A due conversion with what sending it needs.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Due {
    pub conversion_id: String,
    pub event_name: String,
    pub event_time: DateTime<Utc>,
    pub value: Option<Decimal>,
    pub currency: Option<String>,
    pub ctwa_clid: String,
    pub attempts: i32,
    pub dataset_id: Option<String>,
    pub waba_id: Option<String>,
    pub access_token_sealed: Option<String>,
    pub channel_removed: bool,
}

/// Leases the next due conversion (pending, its time come) to this sender for `lease_seconds`:
/// until then no other sender takes it, and past it (a sender that died mid-send) it is due
/// again.
pub async fn lease(pool: &PgPool, lease_seconds: f64) -> Result<Option<Due>, sqlx::Error> {
    sqlx::query_as(
        "WITH due AS (
             SELECT conversion_id FROM funnel_conversions
              WHERE state = 'pending' AND next_attempt_at <= now()
              ORDER BY next_attempt_at LIMIT 1 FOR UPDATE SKIP LOCKED
         ), leased AS (
             UPDATE funnel_conversions c SET next_attempt_at = now() + make_interval(secs => $1)
               FROM due WHERE c.conversion_id = due.conversion_id
             RETURNING c.*
         )
         SELECT l.conversion_id, l.event_name, l.event_time, l.value, l.currency, l.ctwa_clid,
                l.attempts, ch.dataset_id, ch.waba_id, ch.access_token_sealed,
                ch.removed_at IS NOT NULL AS channel_removed
           FROM leased l JOIN funnel_channels ch ON ch.channel_id = l.channel_id",
    )
    .bind(lease_seconds)
    .fetch_optional(pool)
    .await
}

pub async fn sent(pool: &PgPool, id: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE funnel_conversions SET state = 'sent', sent_at = now(), attempts = attempts + 1,
                last_error = NULL WHERE conversion_id = $1",
    )
    .bind(id)
    .execute(pool)
    .await?;
    Ok(())
}

/// Tries again after `after_seconds`.
pub async fn retry(
    pool: &PgPool,
    id: &str,
    after_seconds: f64,
    error: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE funnel_conversions SET attempts = attempts + 1, last_error = $3,
                next_attempt_at = now() + make_interval(secs => $2) WHERE conversion_id = $1",
    )
    .bind(id)
    .bind(after_seconds)
    .bind(error)
    .execute(pool)
    .await?;
    Ok(())
}

/// Gives up on a conversion until an operator retries it.
pub async fn park(pool: &PgPool, id: &str, reason: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE funnel_conversions SET state = 'parked', last_error = $2,
                attempts = attempts + 1 WHERE conversion_id = $1",
    )
    .bind(id)
    .bind(reason)
    .execute(pool)
    .await?;
    Ok(())
}

/// A conversion as `conversions list` shows it.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct Listed {
    pub conversion_id: String,
    pub tenant: String,
    pub contact: String,
    pub channel_id: String,
    pub event_name: String,
    pub event_time: DateTime<Utc>,
    pub value: Option<Decimal>,
    pub currency: Option<String>,
    pub state: String,
    pub attempts: i32,
    pub next_attempt_at: DateTime<Utc>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
}

pub async fn list(
    pool: &PgPool,
    state: Option<&str>,
    limit: i64,
) -> Result<Vec<Listed>, sqlx::Error> {
    sqlx::query_as(
        "SELECT conversion_id, tenant, contact, channel_id, event_name, event_time, value, currency,
                state, attempts, next_attempt_at, last_error, created_at, sent_at
           FROM funnel_conversions WHERE ($1::text IS NULL OR state = $1)
          ORDER BY created_at DESC LIMIT $2",
    )
    .bind(state)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Parked conversions (the given ones, or all) back to pending, due now, with their attempts
/// counted afresh. Returns how many.
pub async fn unpark(pool: &PgPool, ids: &[String]) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE funnel_conversions SET state = 'pending', attempts = 0, next_attempt_at = now()
          WHERE state = 'parked' AND (cardinality($1::text[]) = 0 OR conversion_id = ANY($1))",
    )
    .bind(ids)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}
