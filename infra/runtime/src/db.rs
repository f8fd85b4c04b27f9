//! PostgreSQL: the migrations of `sql/` (applied on start by the services and by `migrate`),
//! pools with errors that name the setting, and pools whose sessions resolve the sink's table
//! names to one generation's schema (docs/replay.md).

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
    #[error("cannot apply the migrations of sql/: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
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
