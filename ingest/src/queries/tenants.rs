//! Tenants: which names a token may carry, and the per-tenant limits of
//! `funnel_tenant_limits` (`funnel-ingest tenant limits`).

use std::collections::HashMap;

use sqlx::PgPool;

/// A tenant name: 1..64 of `[a-z0-9_-]`, starting with a letter or digit (so `_builtin`, the
/// owner of the built-in rule set, is none).
pub fn check_name(tenant: &str) -> Result<(), String> {
    let first_ok = tenant
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let rest_ok = tenant
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if first_ok && rest_ok && tenant.len() <= 64 {
        Ok(())
    } else {
        Err(format!(
            "tenant {tenant:?}: expected 1..64 of a-z, 0-9, _ and -, starting with a letter or digit"
        ))
    }
}

/// A tenant's stored limits; `None` is the service's default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, sqlx::FromRow)]
pub struct StoredLimits {
    pub messages_per_second: Option<i32>,
    pub burst: Option<i32>,
    pub reads_per_second: Option<i32>,
}

#[derive(sqlx::FromRow)]
struct LimitsRow {
    tenant: String,
    #[sqlx(flatten)]
    limits: StoredLimits,
}

/// Every tenant's stored limits.
pub async fn all_limits(pool: &PgPool) -> Result<HashMap<String, StoredLimits>, sqlx::Error> {
    let rows: Vec<LimitsRow> = sqlx::query_as(
        "SELECT tenant, messages_per_second, burst, reads_per_second FROM funnel_tenant_limits",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|r| (r.tenant, r.limits)).collect())
}

/// Stores the given limits of `tenant` (the others keep their stored value) and returns what
/// is stored now.
pub async fn set_limits(
    pool: &PgPool,
    tenant: &str,
    given: StoredLimits,
) -> Result<StoredLimits, sqlx::Error> {
    sqlx::query_as(
        "INSERT INTO funnel_tenant_limits AS t (tenant, messages_per_second, burst, reads_per_second)
         VALUES ($1, $2, $3, $4)
         ON CONFLICT (tenant) DO UPDATE SET
             messages_per_second = coalesce(EXCLUDED.messages_per_second, t.messages_per_second),
             burst = coalesce(EXCLUDED.burst, t.burst),
             reads_per_second = coalesce(EXCLUDED.reads_per_second, t.reads_per_second),
             updated_at = now()
         RETURNING messages_per_second, burst, reads_per_second",
    )
    .bind(tenant)
    .bind(given.messages_per_second)
    .bind(given.burst)
    .bind(given.reads_per_second)
    .fetch_one(pool)
    .await
}

/// Forgets the tenant's stored limits (back to the defaults); false when none were stored.
pub async fn clear_limits(pool: &PgPool, tenant: &str) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("DELETE FROM funnel_tenant_limits WHERE tenant = $1")
        .bind(tenant)
        .execute(pool)
        .await?;
    Ok(done.rows_affected() == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_names_are_slugs_that_start_with_a_letter_or_digit() {
        for ok in ["default", "acme", "tenant-2", "py_0a1b", "9"] {
            assert_eq!(check_name(ok), Ok(()), "{ok}");
        }
        let long = "a".repeat(65);
        for bad in ["", "_builtin", "-x", "Acme", "a b", "a:b", long.as_str()] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
