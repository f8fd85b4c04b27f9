//! funnel-processor: consumes chat messages, classifies them with versioned keyword rules,
//! folds them per contact (state in RocksDB) and upserts one row per contact into PostgreSQL
//! exactly once, with the consumer offsets in the same transaction.
//!
//! - [`supervisor`] runs one [`pipeline`] per generation that is live or being built;
//! - a pipeline reads with the shared [`decode`]r, folds with the rules of the [`rulebook`]
//!   and the per-contact [`state`], and writes through `funnel_runtime::sink`;
//! - [`replay`] and [`dlq`] are the operators' commands; [`generation`] names what a
//!   generation owns; [`http`] serves metrics and health;
//! - [`conversions`]: the live generation's batches enqueue conversions for Meta with their
//!   stage events; one sender per process posts them.

pub mod conversions;
pub mod decode;
pub mod dlq;
pub mod generation;
pub mod http;
pub mod metrics;
pub mod pipeline;
pub mod replay;
pub mod rulebook;
pub mod settings;
pub mod state;
pub mod supervisor;

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

pub use settings::Settings;

/// A pool on the public schema of a database with every migration of `sql/`.
pub async fn connect(settings: &Settings) -> anyhow::Result<PgPool> {
    let pool = settings
        .database
        .connect_checked(8, Duration::from_secs(10));
    Ok(pool.await?)
}

/// Runs the processor until `shutdown` is cancelled: one pipeline per generation that is live
/// or being built (docs/replay.md), started and stopped as generations come and go.
pub async fn run(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let pool = connect(&settings).await?;
    let metrics = Arc::new(metrics::Metrics::default());
    // Ready once the live generation's pipeline has started (topics, registry and offsets
    // checked), not merely once the endpoint answers.
    let started = http::Started::default();
    let endpoint = if settings.http_addr.is_empty() {
        None
    } else {
        Some(
            http::serve(
                &settings.http_addr,
                pool.clone(),
                metrics.clone(),
                started.clone(),
                shutdown.clone(),
            )
            .await?,
        )
    };
    let sealer = funnel_runtime::seal::Sealer::load(&pool, "channel_key").await?;
    let sender =
        conversions::sender::Sender::new(pool.clone(), sealer, settings.sender(), metrics.clone())?;
    let sending = tokio::spawn(sender.run(shutdown.clone()));
    let result = supervisor::supervise(&settings, &pool, &metrics, &started, &shutdown).await;
    // The HTTP endpoint stops with the pipelines, whether they ended by request or by error.
    shutdown.cancel();
    if let Some(h) = endpoint {
        let _ = h.await;
    }
    let _ = sending.await;
    result
}
