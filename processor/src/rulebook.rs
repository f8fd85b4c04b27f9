//! The active rule set of every tenant, compiled, and how a new version reaches a running
//! processor: a cheap poll of the versions' fingerprint, and a reload only when it changed.

use std::collections::HashMap;
use std::sync::Arc;

use sqlx::PgPool;
use tracing::{info, warn};

use funnel_schemas::rules::{Classifier, Rule, RuleError};

/// The tenant whose rule set classifies tenants that have none of their own.
pub const DEFAULT_TENANT: &str = "default";

#[derive(Debug, thiserror::Error)]
pub enum RulebookError {
    #[error(
        "no usable rule set for tenant `{DEFAULT_TENANT}` in funnel_rule_sets; \
         run the migrations or PUT /v1/rules with an admin token of that tenant"
    )]
    NoDefault,
    #[error("postgres: {0}")]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Rule(#[from] RuleError),
}

pub struct Rulebook {
    default: Arc<Classifier>,
    tenants: HashMap<String, Arc<Classifier>>,
    /// (number of rule sets, highest version): changes with every stored set.
    fingerprint: (i64, i64),
}

async fn fingerprint(pool: &PgPool) -> Result<(i64, i64), sqlx::Error> {
    sqlx::query_as("SELECT count(*), COALESCE(max(version), 0) FROM funnel_rule_sets")
        .fetch_one(pool)
        .await
}

impl Rulebook {
    /// Loads every tenant's active set. Fails when the default tenant has no usable set.
    pub async fn load(pool: &PgPool) -> Result<Self, RulebookError> {
        let mut book = Self {
            default: Arc::new(Classifier::new(0, vec![])?),
            tenants: HashMap::new(),
            fingerprint: (-1, -1),
        };
        book.refresh(pool).await?;
        if book.default.version() == 0 {
            return Err(RulebookError::NoDefault);
        }
        Ok(book)
    }

    /// The classifier of a tenant: its own active set, else the default tenant's.
    pub fn for_tenant(&self, tenant: &str) -> &Arc<Classifier> {
        self.tenants.get(tenant).unwrap_or(&self.default)
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
            let current = if tenant == DEFAULT_TENANT {
                Some(&self.default)
            } else {
                self.tenants.get(&tenant)
            };
            if current.is_some_and(|c| c.version() == version) {
                continue;
            }
            let compiled = serde_json::from_value::<Vec<Rule>>(rules.0)
                .map_err(anyhow::Error::from)
                .and_then(|r| Classifier::new(version, r).map_err(anyhow::Error::from));
            match compiled {
                Ok(c) => {
                    info!(tenant = %tenant, version, "rule set loaded");
                    let c = Arc::new(c);
                    if tenant == DEFAULT_TENANT {
                        self.default = c;
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
