//! funnel-processor: consumes chat messages, classifies them with versioned keyword rules,
//! folds them per contact (state in RocksDB) and upserts one row per contact into PostgreSQL
//! exactly once, with the consumer offsets in the same transaction.

pub mod dlq;
pub mod fold;
pub mod pipeline;
pub mod registry;
pub mod rulebook;
pub mod settings;
pub mod sink;
pub mod state;
/// Logging and tracing set-up, the same source as funnel-ingest's: the repository layout is
/// fixed to one crate per deployable plus `schemas/` (which does no I/O), so the one file is
/// compiled into both binaries instead of being copied.
#[path = "../../ingest/src/telemetry.rs"]
pub mod telemetry;

use std::time::Duration;

use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

pub use funnel_schemas::rules;
pub use settings::Settings;

/// The migrations of `sql/`, shared by every binary that applies them.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../sql");

pub async fn connect(database_url: &str) -> anyhow::Result<PgPool> {
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(Duration::from_secs(10))
        .connect(database_url)
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to PostgreSQL (DATABASE_URL): {e}"))?;
    Ok(pool)
}

/// Runs the processor until `shutdown` is cancelled.
pub async fn run(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let pool = connect(&settings.database_url).await?;
    MIGRATOR.run(&pool).await?;
    let rules = rulebook::Rulebook::load(&pool).await?;
    tracing::info!(
        topic = %settings.topic_messages,
        group = %settings.consumer_group,
        rule_set_version = rules.for_tenant(rulebook::DEFAULT_TENANT).version(),
        "processor starting"
    );
    pipeline::Pipeline::new(settings, pool, rules)
        .await?
        .run(shutdown)
        .await
}
