//! Bearer tokens: one tenant and a set of scopes each, stored as SHA-256 in PostgreSQL.
//! `funnel-ingest token create|list|revoke` manages them; the API resolves a token to its
//! tenant (the tenant never comes from a request body) and checks scopes per endpoint.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::RngCore;
use sha2::{Digest, Sha256};
use sqlx::PgPool;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Ingest,
    Read,
    Admin,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Ingest => "ingest",
            Scope::Read => "read",
            Scope::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "ingest" => Ok(Scope::Ingest),
            "read" => Ok(Scope::Read),
            "admin" => Ok(Scope::Admin),
            other => Err(format!(
                "unknown scope {other:?}: expected ingest, read or admin"
            )),
        }
    }
}

/// Who is calling: the tenant and scopes of a valid, unrevoked token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub token_id: String,
    pub tenant: String,
    pub scopes: Vec<Scope>,
}

impl Principal {
    pub fn has(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
    }
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TokenInfo {
    pub id: String,
    pub tenant: String,
    pub scopes: Vec<String>,
    pub description: Option<String>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub revoked_at: Option<chrono::DateTime<chrono::Utc>>,
}

fn digest(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    hex::encode(buf)
}

/// Creates a token and returns (id, token). The token is shown once and never stored.
pub async fn create(
    pool: &PgPool,
    tenant: &str,
    scopes: &[Scope],
    description: Option<&str>,
) -> Result<(String, String), sqlx::Error> {
    let id = format!("tok_{}", random_hex(6));
    let token = format!("fnl_{}", random_hex(32));
    let scopes: Vec<&str> = scopes.iter().map(|s| s.as_str()).collect();
    sqlx::query("INSERT INTO funnel_api_tokens (id, tenant, scopes, token_sha256, description) VALUES ($1, $2, $3, $4, $5)")
        .bind(&id)
        .bind(tenant)
        .bind(&scopes)
        .bind(digest(&token))
        .bind(description)
        .execute(pool)
        .await?;
    Ok((id, token))
}

pub async fn list(pool: &PgPool) -> Result<Vec<TokenInfo>, sqlx::Error> {
    sqlx::query_as("SELECT id, tenant, scopes, description, created_at, revoked_at FROM funnel_api_tokens ORDER BY created_at, id")
        .fetch_all(pool)
        .await
}

/// Revokes a token; false when no such token exists.
pub async fn revoke(pool: &PgPool, id: &str) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE funnel_api_tokens SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1",
    )
    .bind(id)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

async fn lookup(pool: &PgPool, token: &str) -> Result<Option<Principal>, sqlx::Error> {
    let row: Option<(String, String, Vec<String>)> =
        sqlx::query_as("SELECT id, tenant, scopes FROM funnel_api_tokens WHERE token_sha256 = $1 AND revoked_at IS NULL")
            .bind(digest(token))
            .fetch_optional(pool)
            .await?;
    Ok(row.map(|(token_id, tenant, scopes)| Principal {
        token_id,
        tenant,
        scopes: scopes.iter().filter_map(|s| s.parse().ok()).collect(),
    }))
}

/// Token digest -> (when it was looked up, what it resolved to).
type TokenCache = HashMap<Vec<u8>, (Instant, Option<Principal>)>;

/// Resolves tokens, remembering answers (valid or not) for a short time so a busy client
/// costs one PostgreSQL query per `ttl`, and a revocation takes effect within `ttl`.
pub struct Authenticator {
    pool: PgPool,
    ttl: Duration,
    cache: Mutex<TokenCache>,
}

impl Authenticator {
    pub fn new(pool: PgPool, ttl: Duration) -> Self {
        Self {
            pool,
            ttl,
            cache: Mutex::new(HashMap::new()),
        }
    }

    pub async fn authenticate(&self, token: &str) -> Result<Option<Principal>, sqlx::Error> {
        let key = digest(token);
        if let Ok(cache) = self.cache.lock() {
            if let Some((at, p)) = cache.get(&key) {
                if at.elapsed() < self.ttl {
                    return Ok(p.clone());
                }
            }
        }
        let found = lookup(&self.pool, token).await?;
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() > 10_000 {
                cache.retain(|_, (at, _)| at.elapsed() < self.ttl);
            }
            cache.insert(key, (Instant::now(), found.clone()));
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_parse_and_reject_unknown() {
        assert_eq!("ingest".parse::<Scope>(), Ok(Scope::Ingest));
        assert_eq!(" admin ".parse::<Scope>(), Ok(Scope::Admin));
        assert!("write"
            .parse::<Scope>()
            .unwrap_err()
            .contains("expected ingest, read or admin"));
    }

    #[test]
    fn tokens_are_random_and_long() {
        let a = random_hex(32);
        assert_eq!(a.len(), 64);
        assert_ne!(a, random_hex(32));
    }
}
