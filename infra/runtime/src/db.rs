//! PostgreSQL: the migrations of `sql/` (applied by `funnel-processor migrate` as the database
//! owner; the services only check them, docs/security.md), pools with errors that name the
//! setting, and pools whose sessions resolve the sink's table names to one generation's schema
//! (docs/replay.md).

use sqlx::postgres::PgPoolOptions;
use sqlx::{Executor, PgPool};

/// The migrations of `sql/`, embedded at compile time.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../sql");

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error(
        "DATABASE_URL is not set: Funnel needs PostgreSQL (postgres://user:password@host:port/db)"
    )]
    NotSet,
    #[error("cannot connect to PostgreSQL (DATABASE_URL): {0}")]
    Connect(sqlx::Error),
    #[error("cannot apply the migrations of sql/: {0} (apply them as the database owner: `funnel-processor migrate`, docs/security.md)")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("cannot read which migrations the database has: {0}")]
    Check(sqlx::Error),
    #[error("the database lacks the migrations {missing} of sql/: apply them as the database owner with `funnel-processor migrate` (make migrate), or start with FUNNEL_MIGRATE_ON_START=true if this role owns the database (docs/security.md)")]
    Behind { missing: String },
    #[error("migration {0} of sql/ differs from the one applied to the database: this binary was built from other migrations than the database's")]
    Changed(i64),
}

/// A pool with `options`.
pub async fn connect(database_url: &str, options: PgPoolOptions) -> Result<PgPool, DbError> {
    if database_url.is_empty() {
        return Err(DbError::NotSet);
    }
    options
        .connect(database_url)
        .await
        .map_err(DbError::Connect)
}

/// Applies the migrations that are not applied yet.
pub async fn migrate(pool: &PgPool) -> Result<(), DbError> {
    MIGRATOR.run(pool).await?;
    Ok(())
}

/// The migrations of `sql/` the database has not applied, in order; read-only (the services'
/// roles may not create anything). An applied migration whose checksum differs is an error.
pub async fn missing_migrations(pool: &PgPool) -> Result<Vec<i64>, DbError> {
    let table: Option<String> = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations')::text")
        .fetch_one(pool)
        .await
        .map_err(DbError::Check)?;
    let applied: Vec<(i64, Vec<u8>)> = if table.is_some() {
        sqlx::query_as("SELECT version, checksum FROM _sqlx_migrations WHERE success")
            .fetch_all(pool)
            .await
            .map_err(DbError::Check)?
    } else {
        Vec::new()
    };
    let applied: std::collections::HashMap<i64, Vec<u8>> = applied.into_iter().collect();
    let mut missing = Vec::new();
    for m in MIGRATOR
        .iter()
        .filter(|m| m.migration_type.is_up_migration())
    {
        match applied.get(&m.version) {
            None => missing.push(m.version),
            Some(sum) if sum.as_slice() != &*m.checksum => return Err(DbError::Changed(m.version)),
            Some(_) => {}
        }
    }
    Ok(missing)
}

/// Checks the database has every migration of `sql/`; when some are missing, applies them if
/// `migrate` (the role must own the database) and fails naming them otherwise.
pub async fn ensure_migrated(pool: &PgPool, migrate: bool) -> Result<(), DbError> {
    let missing = missing_migrations(pool).await?;
    if missing.is_empty() {
        return Ok(());
    }
    if migrate {
        tracing::info!(
            count = missing.len(),
            "applying the migrations of sql/ (FUNNEL_MIGRATE_ON_START)"
        );
        return self::migrate(pool).await;
    }
    let missing = missing
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    Err(DbError::Behind { missing })
}

/// A pool with `options` whose connections resolve table names in `schema` first, then in
/// `public` (the shared tables and functions).
pub async fn connect_in_schema(
    database_url: &str,
    schema: &str,
    options: PgPoolOptions,
) -> Result<PgPool, DbError> {
    let set = format!("SET search_path TO {}, public", ident(schema));
    connect_with_setup(database_url, options, set).await
}

/// A pool with `options` whose every new connection first runs `setup` (a `SET ...`).
pub async fn connect_with_setup(
    database_url: &str,
    options: PgPoolOptions,
    setup: String,
) -> Result<PgPool, DbError> {
    let options = options.after_connect(move |conn, _| {
        let setup = setup.clone();
        Box::pin(async move {
            conn.execute(setup.as_str()).await?;
            Ok(())
        })
    });
    connect(database_url, options).await
}

/// A name as a quoted SQL identifier.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(super::ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(super::ident("funnel_gen_2"), "\"funnel_gen_2\"");
    }
}
