//! Standard Webhooks (standardwebhooks.com) for senders other than Meta: per-tenant secrets
//! (`funnel_webhook_secrets`, `funnel-ingest webhook-secret create`, several active at once for
//! rotation), and the `webhook-id`s seen within the tolerance with the answer given
//! (`funnel_webhook_deliveries`), so a redelivery is answered again without producing again.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use chrono::{DateTime, Utc};
use funnel_runtime::seal::Sealer;
use rand::RngCore;
use sqlx::PgPool;

/// How far a `webhook-timestamp` may be from now, either way (the reference libraries' 5
/// minutes); also how long a `webhook-id` is remembered.
pub const TOLERANCE_SECONDS: i64 = 300;

#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct SecretInfo {
    pub secret_id: String,
    pub tenant: String,
    pub description: Option<String>,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// Makes a secret (24 random bytes) and returns (id, `whsec_<base64>`); shown once, stored
/// sealed.
pub async fn create(
    pool: &PgPool,
    sealer: &Sealer,
    tenant: &str,
    description: Option<&str>,
    expires_at: Option<DateTime<Utc>>,
) -> Result<(String, String), sqlx::Error> {
    let mut key = [0u8; 24];
    rand::rng().fill_bytes(&mut key);
    let mut id = [0u8; 8];
    rand::rng().fill_bytes(&mut id);
    let secret_id = format!("whs_{}", hex::encode(id));
    sqlx::query(
        "INSERT INTO funnel_webhook_secrets (secret_id, tenant, secret_sealed, description, expires_at)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&secret_id)
    .bind(tenant)
    .bind(sealer.seal(&key))
    .bind(description)
    .bind(expires_at)
    .execute(pool)
    .await?;
    Ok((secret_id, format!("whsec_{}", STANDARD.encode(key))))
}

pub async fn list(pool: &PgPool) -> Result<Vec<SecretInfo>, sqlx::Error> {
    sqlx::query_as(
        "SELECT secret_id, tenant, description, created_at, expires_at, revoked_at
           FROM funnel_webhook_secrets ORDER BY tenant, created_at",
    )
    .fetch_all(pool)
    .await
}

pub async fn revoke(pool: &PgPool, secret_id: &str) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE funnel_webhook_secrets SET revoked_at = coalesce(revoked_at, now()) WHERE secret_id = $1",
    )
    .bind(secret_id)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// An active secret: its id, tenant and key.
#[derive(Clone)]
pub struct ActiveSecret {
    pub secret_id: String,
    pub tenant: String,
    pub key: Vec<u8>,
}

/// Every secret that is neither revoked nor expired, opened.
pub async fn active(pool: &PgPool, sealer: &Sealer) -> Result<Vec<ActiveSecret>, sqlx::Error> {
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT secret_id, tenant, secret_sealed FROM funnel_webhook_secrets
          WHERE revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(secret_id, tenant, sealed)| {
            let key = sealer.open(&sealed)?;
            Some(ActiveSecret {
                secret_id,
                tenant,
                key,
            })
        })
        .collect())
}

/// What became of a `webhook-id` when a delivery claims it.
pub enum Claim {
    /// First seen: the delivery goes ahead.
    New,
    /// Answered before: the same answer again.
    Answered { status: u16, body: String },
    /// Another delivery with this id is being answered right now.
    InProgress,
}

pub async fn claim(pool: &PgPool, tenant: &str, webhook_id: &str) -> Result<Claim, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO funnel_webhook_deliveries (tenant, webhook_id) VALUES ($1, $2)
         ON CONFLICT (tenant, webhook_id) DO NOTHING",
    )
    .bind(tenant)
    .bind(webhook_id)
    .execute(pool)
    .await?;
    if inserted.rows_affected() == 1 {
        return Ok(Claim::New);
    }
    let row: Option<(Option<i32>, Option<String>)> = sqlx::query_as(
        "SELECT status, body FROM funnel_webhook_deliveries WHERE tenant = $1 AND webhook_id = $2",
    )
    .bind(tenant)
    .bind(webhook_id)
    .fetch_optional(pool)
    .await?;
    Ok(match row {
        Some((Some(status), body)) => Claim::Answered {
            status: u16::try_from(status).unwrap_or(500),
            body: body.unwrap_or_default(),
        },
        // Deleted meanwhile (a failed delivery gave its claim back): treat as in progress.
        _ => Claim::InProgress,
    })
}

/// Keeps the answer to a claimed `webhook-id`.
pub async fn answered(
    pool: &PgPool,
    tenant: &str,
    webhook_id: &str,
    status: u16,
    body: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE funnel_webhook_deliveries SET status = $3, body = $4 WHERE tenant = $1 AND webhook_id = $2",
    )
    .bind(tenant)
    .bind(webhook_id)
    .bind(i32::from(status))
    .bind(body)
    .execute(pool)
    .await?;
    Ok(())
}

/// Gives a claim back (the delivery failed for a reason a retry may not meet: 5xx).
pub async fn release(pool: &PgPool, tenant: &str, webhook_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM funnel_webhook_deliveries WHERE tenant = $1 AND webhook_id = $2")
        .bind(tenant)
        .bind(webhook_id)
        .execute(pool)
        .await?;
    Ok(())
}

/// Forgets the ids older than twice the tolerance (a sender cannot sign older timestamps).
pub async fn forget_old(pool: &PgPool) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "DELETE FROM funnel_webhook_deliveries WHERE received_at < now() - make_interval(secs => $1)",
    )
    .bind((2 * TOLERANCE_SECONDS) as f64)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}
