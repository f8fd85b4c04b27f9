//! The active rule set of every tenant, compiled, and how a new version reaches a running
//! processor: a cheap poll of the versions' fingerprint, and a reload only when it changed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tracing::{info, warn};

use funnel_schemas::rules::{Classifier, Rule, RuleError};

/// The owner of Funnel's built-in starter set, which classifies every tenant that never
/// stored rules of its own. No token can carry this name, and only migrations write its sets.
pub const BUILTIN: &str = "_builtin";

#[derive(Debug, thiserror::Error)]
pub enum RulebookError {
    #[error(
        "no usable built-in rule set (tenant `{BUILTIN}`) in funnel_rule_sets; run the migrations"
    )]
    NoBuiltin,
    #[error("postgres: {0}")]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Rule(#[from] RuleError),
}

pub struct Rulebook {
    builtin: Arc<Classifier>,
    tenants: HashMap<String, Arc<Classifier>>,
    /// (number of rule sets, highest version): changes with every stored set.
    fingerprint: (i64, i64),
}

/// How long compiling one stored set may take before it is refused.
const COMPILE_TIMEOUT: Duration = Duration::from_secs(10);

/// A stored set compiled on a blocking thread (CPU work the async threads must not do), given
/// at most [`COMPILE_TIMEOUT`].
async fn compile(version: i64, rules: serde_json::Value) -> anyhow::Result<Classifier> {
    let job = tokio::task::spawn_blocking(move || {
        let rules: Vec<Rule> = serde_json::from_value(rules)?;
        Ok::<_, anyhow::Error>(Classifier::new(version, rules)?)
    });
    match tokio::time::timeout(COMPILE_TIMEOUT, job).await {
        Ok(joined) => joined?,
        Err(_) => anyhow::bail!("did not compile within {} s", COMPILE_TIMEOUT.as_secs()),
    }
}

async fn fingerprint(pool: &PgPool) -> Result<(i64, i64), sqlx::Error> {
    sqlx::query_as("SELECT count(*), COALESCE(max(version), 0) FROM funnel_rule_sets")
        .fetch_one(pool)
        .await
}

impl Rulebook {
    /// Loads every tenant's active set. Fails when there is no usable built-in set.
    pub async fn load(pool: &PgPool) -> Result<Self, RulebookError> {
        let mut book = Self {
            builtin: Arc::new(Classifier::new(0, vec![])?),
            tenants: HashMap::new(),
            fingerprint: (-1, -1),
        };
        book.refresh(pool).await?;
        if book.builtin.version() == 0 {
            return Err(RulebookError::NoBuiltin);
        }
        Ok(book)
    }

    /// The classifier of a tenant: its own active set, else the built-in starter set (never
    /// another tenant's).
    pub fn for_tenant(&self, tenant: &str) -> &Arc<Classifier> {
        self.tenants.get(tenant).unwrap_or(&self.builtin)
    }

    /// The built-in starter set.
    pub fn builtin(&self) -> &Arc<Classifier> {
        &self.builtin
    }

    /// Reloads when a rule set was stored since the last look; returns whether anything
    /// changed. A stored set that does not compile (written around the API) is refused with a
    /// warning and the tenant keeps its current set.
    pub async fn refresh(&mut self, pool: &PgPool) -> Result<bool, sqlx::Error> {
        let now = fingerprint(pool).await?;
        if now == self.fingerprint {
            return Ok(false);
        }
        let sets: Vec<(String, i64, sqlx::types::Json<serde_json::Value>)> =
            sqlx::query_as("SELECT tenant, version, rules FROM funnel_active_rule_sets")
                .fetch_all(pool)
                .await?;
        let mut changed = false;
        for (tenant, version, rules) in sets {
            let current = if tenant == BUILTIN {
                Some(&self.builtin)
            } else {
                self.tenants.get(&tenant)
            };
            if current.is_some_and(|c| c.version() == version) {
                continue;
            }
            match compile(version, rules.0).await {
                Ok(c) => {
                    info!(tenant = %tenant, version, "rule set loaded");
                    let c = Arc::new(c);
                    if tenant == BUILTIN {
                        self.builtin = c;
                    } else {
                        self.tenants.insert(tenant, c);
                    }
                    changed = true;
                }
                Err(e) => warn!(
                    tenant = %tenant,
                    version,
                    error = %format!("{e:#}"),
                    "rule set refused; the tenant keeps its current one"
                ),
            }
        }
        self.fingerprint = now;
        Ok(changed)
    }
}
