//! Bearer tokens: one tenant and a set of scopes each, stored as SHA-256 in PostgreSQL.
//! `funnel-ingest token create|list|revoke` manages them; the API resolves a token to its
//! tenant (the tenant never comes from a request body) and checks scopes per endpoint.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
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
    /// When the token stops working, if it was created with an expiry.
    pub expires_at: Option<DateTime<Utc>>,
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
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    /// When the API last accepted it (recorded every few seconds, so coarse).
    pub last_used_at: Option<DateTime<Utc>>,
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The prefix of every token `create` makes.
const TOKEN_PREFIX: &str = "fnl_";

/// Whether `token` has the form `create` gives (`fnl_` and 64 hex digits): anything else is
/// refused without a lookup.
fn well_formed(token: &str) -> bool {
    token
        .strip_prefix(TOKEN_PREFIX)
        .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
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
    create_expiring(pool, tenant, scopes, description, None).await
}

/// [`create`], with a time after which the token no longer works.
pub async fn create_expiring(
    pool: &PgPool,
    tenant: &str,
    scopes: &[Scope],
    description: Option<&str>,
    expires_at: Option<DateTime<Utc>>,
) -> Result<(String, String), sqlx::Error> {
    let id = format!("tok_{}", random_hex(6));
    let token = format!("{TOKEN_PREFIX}{}", random_hex(32));
    let scopes: Vec<&str> = scopes.iter().map(|s| s.as_str()).collect();
    sqlx::query("INSERT INTO funnel_api_tokens (id, tenant, scopes, token_sha256, description, expires_at) VALUES ($1, $2, $3, $4, $5, $6)")
        .bind(&id)
        .bind(tenant)
        .bind(&scopes)
        .bind(digest(&token).as_slice())
        .bind(description)
        .bind(expires_at)
        .execute(pool)
        .await?;
    Ok((id, token))
}

pub async fn list(pool: &PgPool) -> Result<Vec<TokenInfo>, sqlx::Error> {
    sqlx::query_as("SELECT id, tenant, scopes, description, created_at, revoked_at, expires_at, last_used_at FROM funnel_api_tokens ORDER BY created_at, id")
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
    type Row = (String, String, Vec<String>, Option<DateTime<Utc>>);
    let row: Option<Row> = sqlx::query_as(
        "SELECT id, tenant, scopes, expires_at FROM funnel_api_tokens
          WHERE token_sha256 = $1 AND revoked_at IS NULL",
    )
    .bind(digest(token).as_slice())
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|(token_id, tenant, scopes, expires_at)| Principal {
        token_id,
        tenant,
        scopes: scopes.iter().filter_map(|s| s.parse().ok()).collect(),
        expires_at,
    }))
}

/// What a token digest resolved to, and when.
#[derive(Clone)]
struct Cached {
    at: Instant,
    found: Option<Principal>,
}

/// Tokens remembered (valid or not) at most; about 10 MB.
const CACHED_TOKENS: usize = 100_000;

/// Resolves tokens. A valid token is looked up again after `ttl` (so a revocation takes effect
/// within `ttl`); an unknown one is remembered as unknown, so repeating it costs no database
/// round trip (tokens are 256 random bits: an unknown one never becomes valid). Malformed
/// tokens are refused without a lookup. The pool should be the API's own small one for token
/// checks, so they never wait behind reports and exports.
pub struct Authenticator {
    pool: PgPool,
    ttl: Duration,
    cache: quick_cache::sync::Cache<[u8; 32], Cached>,
    /// Ids of tokens accepted since the last [`Authenticator::record_use`].
    used: Mutex<HashSet<String>>,
}

impl Authenticator {
    pub fn new(pool: PgPool, ttl: Duration) -> Self {
        Self {
            pool,
            ttl,
            cache: quick_cache::sync::Cache::new(CACHED_TOKENS),
            used: Mutex::new(HashSet::new()),
        }
    }

    /// The principal of a valid, unrevoked, unexpired token; `None` otherwise.
    pub async fn authenticate(&self, token: &str) -> Result<Option<Principal>, sqlx::Error> {
        if !well_formed(token) {
            return Ok(None);
        }
        let key = digest(token);
        let cached = self.cache.get(&key);
        let found = match cached {
            Some(c) if c.found.is_none() || c.at.elapsed() < self.ttl => c.found,
            _ => {
                let found = lookup(&self.pool, token).await?;
                let at = Instant::now();
                self.cache.insert(
                    key,
                    Cached {
                        at,
                        found: found.clone(),
                    },
                );
                found
            }
        };
        Ok(found.filter(|p| self.usable(p)))
    }

    /// Whether the principal's token has not expired; a usable one is noted as used.
    fn usable(&self, p: &Principal) -> bool {
        if p.expires_at.is_some_and(|at| at <= Utc::now()) {
            return false;
        }
        if let Ok(mut used) = self.used.lock() {
            if !used.contains(&p.token_id) {
                used.insert(p.token_id.clone());
            }
        }
        true
    }

    /// Writes `last_used_at` of the tokens accepted since the last call.
    pub async fn record_use(&self) -> Result<(), sqlx::Error> {
        let ids: Vec<String> = match self.used.lock() {
            Ok(mut used) => used.drain().collect(),
            Err(_) => return Ok(()),
        };
        if ids.is_empty() {
            return Ok(());
        }
        sqlx::query("UPDATE funnel_api_tokens SET last_used_at = now() WHERE id = ANY($1)")
            .bind(&ids)
            .execute(&self.pool)
            .await?;
        Ok(())
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
    fn only_well_formed_tokens_are_looked_up() {
        let good = format!("{TOKEN_PREFIX}{}", random_hex(32));
        assert!(well_formed(&good));
        assert!(!well_formed(&good[..good.len() - 1]));
        assert!(!well_formed(&format!("{good}0")));
        assert!(!well_formed(&good.replace(TOKEN_PREFIX, "xyz_")));
        assert!(!well_formed(&format!("{TOKEN_PREFIX}{}", "g".repeat(64))));
    }

    #[test]
    fn tokens_are_random_and_long() {
        let a = random_hex(32);
        assert_eq!(a.len(), 64);
        assert_ne!(a, random_hex(32));
    }
}
