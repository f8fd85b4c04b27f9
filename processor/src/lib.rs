//! funnel-processor: consumes chat messages, classifies them with versioned keyword rules,
//! folds them per contact (state in RocksDB) and upserts one row per contact into PostgreSQL
//! exactly once, with the consumer offsets in the same transaction.

pub mod dlq;
pub mod fold;
pub mod generation;
pub mod metrics;
pub mod pipeline;
pub mod registry;
pub mod replay;
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

/// Runs the processor until `shutdown` is cancelled: one pipeline per generation that is live
/// or being built (docs/replay.md), started and stopped as generations come and go.
pub async fn run(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let pool = connect(&settings.database_url).await?;
    MIGRATOR.run(&pool).await?;
    let metrics = std::sync::Arc::new(metrics::Metrics::new());
    // Ready once the live generation's pipeline has started (topics, registry and offsets
    // checked), not merely once the endpoint answers.
    let started = Started::default();
    let http = if settings.http_addr.is_empty() {
        None
    } else {
        Some(
            serve_http(
                &settings.http_addr,
                pool.clone(),
                metrics.clone(),
                started.clone(),
                shutdown.clone(),
            )
            .await?,
        )
    };
    let result = supervise(&settings, &pool, &metrics, &started, &shutdown).await;
    // The HTTP endpoint stops with the pipelines, whether they ended by request or by error.
    shutdown.cancel();
    if let Some(h) = http {
        let _ = h.await;
    }
    result
}

/// Whether the live generation's pipeline has started.
#[derive(Clone, Default)]
struct Started(std::sync::Arc<std::sync::atomic::AtomicBool>);

/// Keeps one pipeline running per active generation; the first pipeline that fails stops all.
async fn supervise(
    settings: &Settings,
    pool: &PgPool,
    metrics: &std::sync::Arc<metrics::Metrics>,
    started: &Started,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    use std::collections::HashMap;

    std::fs::create_dir_all(&settings.state_dir).map_err(|e| {
        anyhow::anyhow!(
            "cannot create the state folder {} (FUNNEL_STATE_DIR): {e}",
            settings.state_dir.display()
        )
    })?;
    generation::adopt_legacy_state(&settings.state_dir)?;
    type Live = std::sync::Arc<std::sync::atomic::AtomicBool>;
    let mut running: HashMap<i32, (generation::Generation, CancellationToken, Live)> =
        HashMap::new();
    let mut tasks: tokio::task::JoinSet<(i32, anyhow::Result<()>)> = tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_millis(settings.rules_poll_ms));
    let mut first = true;
    let mut retry_after: HashMap<i32, tokio::time::Instant> = HashMap::new();
    let result = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            Some(done) = tasks.join_next() => {
                let (number, outcome) = match done {
                    Ok(r) => r,
                    Err(e) => break Err(anyhow::anyhow!("a pipeline task failed: {e}")),
                };
                let Some((g, token, _)) = running.remove(&number) else { continue };
                if token.is_cancelled() {
                    continue;
                }
                let error = outcome.err().unwrap_or_else(|| {
                    anyhow::anyhow!("the pipeline of generation {} stopped", g.number)
                });
                if g.state == generation::GenState::Live {
                    break Err(error);
                }
                // A replay's failure must not stop the live sink: it is retried a little later,
                // and `replay status` shows no progress meanwhile.
                tracing::error!(
                    generation = g.number,
                    error = %format!("{error:#}"),
                    "the pipeline of the generation being built failed; retrying in 30 s"
                );
                retry_after.insert(g.number, tokio::time::Instant::now() + Duration::from_secs(30));
                continue;
            }
            _ = tick.tick() => {}
        }
        let active = match generation::active(pool).await {
            Ok(a) => a,
            Err(e) if !first => {
                tracing::warn!(error = %e, "could not look up the generations");
                continue;
            }
            Err(e) => break Err(e.into()),
        };
        if first {
            let keep: Vec<i32> = active.iter().map(|g| g.number).collect();
            generation::remove_stale_state(&settings.state_dir, &keep)?;
            first = false;
        }
        // Generations no longer active (switched away from, or abandoned): stop and forget.
        let gone: Vec<i32> = running
            .keys()
            .copied()
            .filter(|n| !active.iter().any(|g| g.number == *n))
            .collect();
        for n in gone {
            if let Some((g, token, _)) = running.get(&n) {
                tracing::info!(
                    generation = g.number,
                    "generation no longer active; stopping its pipeline"
                );
                token.cancel();
            }
        }
        for g in active {
            let is_live = g.state == generation::GenState::Live;
            if let Some((known, _, live)) = running.get_mut(&g.number) {
                if known.state != g.state {
                    tracing::info!(generation = g.number, state = ?g.state, "generation changed state");
                    live.store(is_live, std::sync::atomic::Ordering::Relaxed);
                    *known = g.clone();
                }
                continue;
            }
            if retry_after
                .get(&g.number)
                .is_some_and(|t| tokio::time::Instant::now() < *t)
            {
                continue;
            }
            let token = shutdown.child_token();
            let live: Live = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(is_live));
            running.insert(g.number, (g.clone(), token.clone(), live.clone()));
            let (settings, metrics, g2, started) = (
                settings.clone(),
                metrics.clone(),
                g.clone(),
                started.clone(),
            );
            tasks.spawn(async move {
                let n = g2.number;
                (
                    n,
                    run_generation(settings, g2, live, metrics, started, token).await,
                )
            });
        }
        // Folders of stopped generations go once their pipelines have ended.
        if running.is_empty() || tasks.len() == running.len() {
            // (A failed replay pipeline waiting for its retry keeps its state.)
            let keep: Vec<i32> = running.keys().chain(retry_after.keys()).copied().collect();
            if let Err(e) = generation::remove_stale_state(&settings.state_dir, &keep) {
                tracing::warn!(error = %e, "could not delete the state of a stopped generation");
            }
        }
    };
    for (_, (_, token, _)) in running.iter() {
        token.cancel();
    }
    while let Some(done) = tasks.join_next().await {
        if let Ok((n, Err(e))) = done {
            tracing::warn!(generation = n, error = %format!("{e:#}"), "pipeline ended with an error");
        }
    }
    result
}

/// One generation's pipeline: its own pool (search path on its schema), consumer group and
/// RocksDB folder.
async fn run_generation(
    mut settings: Settings,
    g: generation::Generation,
    live: std::sync::Arc<std::sync::atomic::AtomicBool>,
    metrics: std::sync::Arc<metrics::Metrics>,
    started: Started,
    token: CancellationToken,
) -> anyhow::Result<()> {
    let pool = generation::connect(&settings.database_url, &g.schema).await?;
    let rules = rulebook::Rulebook::load(&pool).await?;
    let base_group = settings.consumer_group.clone();
    settings.consumer_group = g.consumer_group(&settings.consumer_group);
    // A reset of the group's offsets by another tool is refused, never silently followed or
    // ignored (docs/replay.md).
    let also = (g.state == generation::GenState::Live).then_some(base_group.as_str());
    replay::check_kafka_offsets(&settings, also, &pool).await?;
    settings.state_dir = g.state_dir(&settings.state_dir);
    tracing::info!(
        generation = g.number,
        state = ?g.state,
        schema = %g.schema,
        topic = %settings.topic_messages,
        group = %settings.consumer_group,
        http = %settings.http_addr,
        rule_set_version = rules.for_tenant(rulebook::DEFAULT_TENANT).version(),
        "processor starting"
    );
    let span = tracing::info_span!("generation", n = g.number);
    use tracing::Instrument;
    async move {
        let is_live = g.state == generation::GenState::Live;
        let pipeline = pipeline::Pipeline::new(settings, &g, live, pool, rules, metrics).await?;
        if is_live {
            started.0.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        pipeline.run(token).await
    }
    .instrument(span)
    .await
}

/// Binds the processor's HTTP endpoint (a taken address is a start-up error) and serves
/// `/metrics` and the health checks until `shutdown`.
async fn serve_http(
    addr: &str,
    pool: PgPool,
    metrics: std::sync::Arc<metrics::Metrics>,
    started: Started,
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
    async fn ready(Data(pool): Data<&PgPool>, Data(started): Data<&Started>) -> Response {
        let problem = if !started.0.load(std::sync::atomic::Ordering::Relaxed) {
            Some("the live pipeline has not started yet")
        } else if sqlx::query("SELECT 1").execute(pool).await.is_err() {
            Some("PostgreSQL does not answer")
        } else {
            None
        };
        Response::builder()
            .status(if problem.is_none() {
                poem::http::StatusCode::OK
            } else {
                poem::http::StatusCode::SERVICE_UNAVAILABLE
            })
            .body(problem.unwrap_or("ok"))
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
        .data(started)
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
