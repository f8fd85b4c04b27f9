//! funnel-processor: consumes chat messages, classifies them with versioned keyword rules,
//! folds them per contact (state in RocksDB) and upserts one row per contact into PostgreSQL
//! exactly once, with the consumer offsets in the same transaction.

pub mod dlq;
pub mod fold;
pub mod metrics;
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
    anyhow::ensure!(
        !database_url.is_empty(),
        "DATABASE_URL is not set: the processor needs PostgreSQL (postgres://user:password@host:port/db)"
    );
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
    let metrics = std::sync::Arc::new(metrics::Metrics::new());
    let http = if settings.http_addr.is_empty() {
        None
    } else {
        Some(
            serve_http(
                &settings.http_addr,
                pool.clone(),
                metrics.clone(),
                shutdown.clone(),
            )
            .await?,
        )
    };
    tracing::info!(
        topic = %settings.topic_messages,
        group = %settings.consumer_group,
        http = %settings.http_addr,
        rule_set_version = rules.for_tenant(rulebook::DEFAULT_TENANT).version(),
        "processor starting"
    );
    let result = async {
        pipeline::Pipeline::new(settings, pool, rules, metrics)
            .await?
            .run(shutdown.clone())
            .await
    }
    .await;
    // The HTTP endpoint stops with the pipeline, whether it ended by request or by error.
    shutdown.cancel();
    if let Some(h) = http {
        let _ = h.await;
    }
    result
}

/// Binds the processor's HTTP endpoint (a taken address is a start-up error) and serves
/// `/metrics` and the health checks until `shutdown`.
async fn serve_http(
    addr: &str,
    pool: PgPool,
    metrics: std::sync::Arc<metrics::Metrics>,
    shutdown: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    use poem::listener::{Acceptor, Listener, TcpListener};
    use poem::{get, handler, web::Data, EndpointExt, Response, Route, Server};

    #[handler]
    fn metrics_text(Data(m): Data<&std::sync::Arc<metrics::Metrics>>) -> Response {
        Response::builder()
            .content_type("text/plain; version=0.0.4; charset=utf-8")
            .body(m.render())
    }
    #[handler]
    fn live() -> &'static str {
        "ok"
    }
    #[handler]
    async fn ready(Data(pool): Data<&PgPool>) -> Response {
        let ok = sqlx::query("SELECT 1").execute(pool).await.is_ok();
        Response::builder()
            .status(if ok {
                poem::http::StatusCode::OK
            } else {
                poem::http::StatusCode::SERVICE_UNAVAILABLE
            })
            .body(if ok {
                "ok"
            } else {
                "PostgreSQL does not answer"
            })
    }

    let acceptor = TcpListener::bind(addr.to_string())
        .into_acceptor()
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr} (FUNNEL_PROCESSOR_ADDR): {e}"))?;
    tracing::info!(addr = ?acceptor.local_addr(), "processor HTTP endpoint listening");
    let app = Route::new()
        .at("/metrics", get(metrics_text))
        .at("/health/live", get(live))
        .at("/health/ready", get(ready))
        .data(metrics)
        .data(pool);
    Ok(tokio::spawn(async move {
        if let Err(e) = Server::new_with_acceptor(acceptor)
            .run_with_graceful_shutdown(
                app,
                shutdown.cancelled_owned(),
                Some(Duration::from_secs(5)),
            )
            .await
        {
            tracing::warn!(error = %e, "processor HTTP endpoint stopped");
        }
    }))
}
