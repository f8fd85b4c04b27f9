//! Rule sets in PostgreSQL (`funnel_rule_sets`, one active set per tenant: its highest
//! version): the active set of a tenant, and storing a new version.

use funnel_schemas::rules::Rule;
use sqlx::PgPool;

/// The owner of Funnel's built-in starter set, which classifies every tenant that never stored
/// rules of its own; no token carries this name (see `crate::queries::tenants::check_name`).
pub const BUILTIN: &str = "_builtin";

/// A rule set as stored, with whose it is.
pub struct ActiveSet {
    pub tenant: String,
    pub version: i64,
    pub rules: Vec<Rule>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub created_by: Option<String>,
}

type ActiveRow = (
    String,
    i64,
    sqlx::types::Json<Vec<Rule>>,
    chrono::DateTime<chrono::Utc>,
    Option<String>,
);

/// The tenant's own active set, else the built-in starter set (never another tenant's).
pub async fn active(db: &PgPool, tenant: &str) -> Result<Option<ActiveSet>, sqlx::Error> {
    let row: Option<ActiveRow> = sqlx::query_as(
        "SELECT tenant, version, rules, created_at, created_by FROM funnel_active_rule_sets
          WHERE tenant IN ($1, $2) ORDER BY tenant = $1 DESC LIMIT 1",
    )
    .bind(tenant)
    .bind(BUILTIN)
    .fetch_optional(db)
    .await?;
    Ok(row.map(
        |(tenant, version, rules, created_at, created_by)| ActiveSet {
            tenant,
            version,
            rules: rules.0,
            created_at,
            created_by,
        },
    ))
}

/// Stores a new version of the tenant's set unless it equals the tenant's own active one.
/// Versions come from one sequence, under a transaction lock, so they commit in order and a
/// processor that saw version n has seen every version below it.
pub async fn store(
    db: &PgPool,
    tenant: &str,
    rules: &[Rule],
    created_by: &str,
) -> Result<(i64, bool), sqlx::Error> {
    let mut tx = db.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('funnel_rule_sets'))")
        .execute(&mut *tx)
        .await?;
    let current: Option<(i64, sqlx::types::Json<Vec<Rule>>)> =
        sqlx::query_as("SELECT version, rules FROM funnel_active_rule_sets WHERE tenant = $1")
            .bind(tenant)
            .fetch_optional(&mut *tx)
            .await?;
    if let Some((version, existing)) = current {
        if existing.0 == rules {
            tx.commit().await?;
            return Ok((version, false));
        }
    }
    let version: i64 = sqlx::query_scalar(
        "INSERT INTO funnel_rule_sets (tenant, rules, created_by) VALUES ($1, $2, $3) RETURNING version",
    )
    .bind(tenant)
    .bind(sqlx::types::Json(rules))
    .bind(created_by)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok((version, true))
}
