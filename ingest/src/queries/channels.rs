//! Registered intake channels (`funnel_channels`): today WhatsApp Cloud API numbers, added with
//! `funnel-ingest channel add whatsapp` or `POST /v1/channels`. The app secret and the access
//! token are sealed under `channel_key` (the service must use them, so they cannot be hashed);
//! the verify token is stored as its SHA-256. [`Channels`] is what the webhook reads: every
//! active channel with its opened app secret, reloaded every few seconds.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use chrono::{DateTime, Utc};
use funnel_runtime::seal::Sealer;
use rand::RngCore;
use sha2::{Digest, Sha256};
use sqlx::PgPool;

/// What `channel add` stores.
#[derive(Debug, Clone)]
pub struct NewChannel {
    pub tenant: String,
    pub phone_number_id: String,
    pub waba_id: Option<String>,
    pub app_secret: String,
    pub verify_token: String,
    pub dataset_id: Option<String>,
    pub access_token: Option<String>,
}

/// A channel as listed: never its secrets.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct Channel {
    pub channel_id: String,
    pub tenant: String,
    pub kind: String,
    pub phone_number_id: String,
    pub waba_id: Option<String>,
    pub dataset_id: Option<String>,
    /// Whether conversions are sent to Meta (a dataset id and an access token are stored).
    pub conversions: bool,
    pub created_at: DateTime<Utc>,
}

impl Channel {
    /// Where Meta's webhook for this channel points.
    pub fn webhook_path(&self) -> String {
        webhook_path(&self.channel_id)
    }
}

pub fn webhook_path(channel_id: &str) -> String {
    format!("/v1/channels/whatsapp/{channel_id}/webhook")
}

#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("phone number id {0} already has an active channel (channel remove it first)")]
    Duplicate(String),
    #[error("{0}")]
    Invalid(String),
    #[error("postgres: {0}")]
    Db(#[from] sqlx::Error),
}

const COLUMNS: &str = "channel_id, tenant, kind, phone_number_id, waba_id, dataset_id, \
                       access_token_sealed IS NOT NULL AS conversions, created_at";

/// Meta's ids are numbers written as strings; a secret has printable characters.
fn check(c: &NewChannel) -> Result<(), ChannelError> {
    let id = |name: &str, v: &str| {
        if (1..=64).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_digit()) {
            Ok(())
        } else {
            Err(ChannelError::Invalid(format!(
                "{name} {v:?}: expected Meta's numeric id (1..64 digits)"
            )))
        }
    };
    id("phone_number_id", &c.phone_number_id)?;
    if let Some(w) = &c.waba_id {
        id("waba_id", w)?;
    }
    if let Some(d) = &c.dataset_id {
        id("dataset_id", d)?;
    }
    for (name, v, min) in [
        ("app_secret", &c.app_secret, 8),
        ("verify_token", &c.verify_token, 8),
    ] {
        if v.len() < min || v.len() > 1024 || v.chars().any(char::is_control) {
            return Err(ChannelError::Invalid(format!(
                "{name}: expected {min}..1024 printable characters"
            )));
        }
    }
    match (&c.dataset_id, &c.access_token) {
        (Some(_), None) | (None, Some(_)) => Err(ChannelError::Invalid(
            "conversions need both a dataset id and an access token".into(),
        )),
        (Some(_), Some(_)) if c.waba_id.is_none() => Err(ChannelError::Invalid(
            "conversions need the WhatsApp Business Account id (waba_id) too".into(),
        )),
        _ => Ok(()),
    }
}

/// Stores a channel; its id is new and random.
pub async fn add(pool: &PgPool, sealer: &Sealer, c: &NewChannel) -> Result<Channel, ChannelError> {
    check(c)?;
    let mut raw = [0u8; 16];
    rand::rng().fill_bytes(&mut raw);
    let channel_id = format!("ch_{}", hex::encode(raw));
    let res = sqlx::query_as(&format!(
        "INSERT INTO funnel_channels (channel_id, tenant, kind, phone_number_id, waba_id,
             app_secret_sealed, verify_token_sha256, dataset_id, access_token_sealed)
         VALUES ($1, $2, 'whatsapp', $3, $4, $5, $6, $7, $8) RETURNING {COLUMNS}"
    ))
    .bind(&channel_id)
    .bind(&c.tenant)
    .bind(&c.phone_number_id)
    .bind(&c.waba_id)
    .bind(sealer.seal(c.app_secret.as_bytes()))
    .bind(Sha256::digest(c.verify_token.as_bytes()).to_vec())
    .bind(&c.dataset_id)
    .bind(c.access_token.as_ref().map(|t| sealer.seal(t.as_bytes())))
    .fetch_one(pool)
    .await;
    match res {
        Err(sqlx::Error::Database(d)) if d.code().as_deref() == Some("23505") => {
            Err(ChannelError::Duplicate(c.phone_number_id.clone()))
        }
        other => Ok(other?),
    }
}

/// The active channels, of one tenant or of all.
pub async fn list(pool: &PgPool, tenant: Option<&str>) -> Result<Vec<Channel>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM funnel_channels
          WHERE removed_at IS NULL AND ($1::text IS NULL OR tenant = $1) ORDER BY created_at"
    ))
    .bind(tenant)
    .fetch_all(pool)
    .await
}

/// Removes a channel (of `tenant`, when given); false when there is no such active channel.
pub async fn remove(pool: &PgPool, id: &str, tenant: Option<&str>) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE funnel_channels SET removed_at = now()
          WHERE channel_id = $1 AND removed_at IS NULL AND ($2::text IS NULL OR tenant = $2)",
    )
    .bind(id)
    .bind(tenant)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// An active channel as the webhook needs it.
#[derive(Debug, Clone)]
pub struct ActiveChannel {
    pub channel_id: String,
    pub tenant: String,
    pub phone_number_id: String,
    pub app_secret: Vec<u8>,
    pub verify_token_sha256: Vec<u8>,
}

impl ActiveChannel {
    /// Whether `token` is the channel's verify token (compared as digests, in constant time).
    pub fn verify_token_is(&self, token: &str) -> bool {
        let digest = Sha256::digest(token.as_bytes());
        digest.len() == self.verify_token_sha256.len()
            && digest
                .iter()
                .zip(&self.verify_token_sha256)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

/// Every active channel with its app secret opened.
pub async fn active(pool: &PgPool, sealer: &Sealer) -> Result<Vec<ActiveChannel>, sqlx::Error> {
    let rows: Vec<(String, String, String, String, Vec<u8>)> = sqlx::query_as(
        "SELECT channel_id, tenant, phone_number_id, app_secret_sealed, verify_token_sha256
           FROM funnel_channels WHERE removed_at IS NULL",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(channel_id, tenant, phone_number_id, sealed, verify)| {
            let Some(app_secret) = sealer.open(&sealed) else {
                tracing::error!(%channel_id, "the channel's app secret does not open under channel_key");
                return None;
            };
            Some(ActiveChannel {
                channel_id,
                tenant,
                phone_number_id,
                app_secret,
                verify_token_sha256: verify,
            })
        })
        .collect())
}

/// The active channels by id, as last loaded.
#[derive(Default)]
pub struct Channels(RwLock<HashMap<String, Arc<ActiveChannel>>>);

impl Channels {
    pub fn set(&self, channels: Vec<ActiveChannel>) {
        let map = channels
            .into_iter()
            .map(|c| (c.channel_id.clone(), Arc::new(c)))
            .collect();
        if let Ok(mut m) = self.0.write() {
            *m = map;
        }
    }

    pub fn get(&self, id: &str) -> Option<Arc<ActiveChannel>> {
        self.0.read().ok()?.get(id).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new() -> NewChannel {
        NewChannel {
            tenant: "acme".into(),
            phone_number_id: "106540352242922".into(),
            waba_id: Some("102290129340398".into()),
            app_secret: "0123456789abcdef".into(),
            verify_token: "verify-me-please".into(),
            dataset_id: None,
            access_token: None,
        }
    }

    #[test]
    fn channels_are_checked_before_they_are_stored() {
        assert!(check(&new()).is_ok());
        let bad = |f: fn(&mut NewChannel)| {
            let mut c = new();
            f(&mut c);
            check(&c).unwrap_err().to_string()
        };
        assert!(bad(|c| c.phone_number_id = "+62 812".into()).contains("phone_number_id"));
        assert!(bad(|c| c.app_secret = "short".into()).contains("app_secret"));
        assert!(bad(|c| c.dataset_id = Some("123".into())).contains("both a dataset id"));
        assert!(bad(|c| {
            c.dataset_id = Some("123".into());
            c.access_token = Some("EAAB".into());
            c.waba_id = None;
        })
        .contains("waba_id"));
    }

    #[test]
    fn the_verify_token_is_compared_as_a_digest() {
        let c = ActiveChannel {
            channel_id: "ch_1".into(),
            tenant: "acme".into(),
            phone_number_id: "1".into(),
            app_secret: vec![],
            verify_token_sha256: Sha256::digest(b"verify-me-please").to_vec(),
        };
        assert!(c.verify_token_is("verify-me-please"));
        assert!(!c.verify_token_is("verify-me-pleasE"));
        assert!(!c.verify_token_is(""));
    }
}
