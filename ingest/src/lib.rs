//! Funnel's HTTP API (the `funnel-ingest` service): chat messages validated and produced to
//! Kafka as Avro in the Confluent wire format (from clients, signed webhooks and Meta's
//! WhatsApp webhook), and the funnel read back: contacts, reports, rules.
//!
//! - [`http`]: what every resource shares (problem details, document types, bearer-token
//!   authorization, signed webhooks, middleware, streamed CSV);
//! - [`resources`]: messages, channels, contacts, reports, rules, health, one module each;
//! - [`queries`]: the PostgreSQL they read and write (contacts, reports, rules, tokens,
//!   channels, aliases, webhook secrets);
//! - [`commands`]: the `channel` and `webhook-secret` subcommands;
//! - [`producer`]: the Kafka side of accepting a message.

pub mod commands;
pub mod http;
pub mod limits;
pub mod metrics;
pub mod producer;
pub mod queries;
pub mod resources;
pub mod settings;
pub mod state;
#[cfg(feature = "testing")]
pub mod testing;

use std::sync::Arc;
use std::time::Duration;

use poem::listener::{Listener, TcpListener};
use poem::{Route, Server};
use poem_openapi::OpenApiService;
use tokio_util::sync::CancellationToken;

use crate::state::AppState;
pub use settings::Settings;

/// A pool on a database with every migration of `sql/`; fails with a message naming the
/// setting, or the migrations missing.
pub async fn connect(settings: &Settings) -> anyhow::Result<sqlx::PgPool> {
    let pool = settings.database.connect_checked(2, Duration::from_secs(3));
    Ok(pool.await?)
}

/// A pool of `max` connections whose statements give up after `statement_timeout`.
async fn pool(
    settings: &Settings,
    max: u32,
    statement_timeout: Duration,
) -> anyhow::Result<sqlx::PgPool> {
    let options = sqlx::postgres::PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(Duration::from_secs(3));
    let setup = format!("SET statement_timeout = {}", statement_timeout.as_millis());
    let pool = funnel_runtime::db::connect_with_setup(&settings.database.url, options, setup);
    Ok(pool.await?)
}

/// Every few seconds until `shutdown`: the tenants' stored limits are read again, and the
/// tokens used since the last round get their `last_used_at`.
fn maintain(state: Arc<AppState>, every: Duration, shutdown: CancellationToken) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            match queries::tenants::all_limits(&state.db).await {
                Ok(stored) => state.limiter.set_stored(stored),
                Err(e) => tracing::warn!(error = %e, "tenant limits not refreshed"),
            }
            match queries::channels::active(&state.db, &state.channel_sealer).await {
                Ok(c) => state.channels.set(c),
                Err(e) => tracing::warn!(error = %e, "channels not refreshed"),
            }
            match queries::webhooks::active(&state.db, &state.channel_sealer).await {
                Ok(s) => state.webhook_secrets.set(s),
                Err(e) => tracing::warn!(error = %e, "webhook secrets not refreshed"),
            }
            if let Err(e) = queries::webhooks::forget_old(&state.db).await {
                tracing::warn!(error = %e, "old webhook ids not forgotten");
            }
            if let Err(e) = state.auth.record_use().await {
                tracing::warn!(error = %e, "token last use not recorded");
            }
        }
        // The last round's uses.
        let _ = state.auth.record_use().await;
    });
}

/// Runs the HTTP API until `shutdown` is cancelled, then drains in-flight requests.
pub async fn run(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let region = funnel_schemas::phone::parse_region(&settings.default_region).map_err(|e| {
        anyhow::anyhow!("FUNNEL_DEFAULT_REGION {e}; expected a region code like ID")
    })?;
    let limits = settings.limits().check().map_err(|e| {
        anyhow::anyhow!("FUNNEL_MAX_TEXT_BYTES or FUNNEL_MAX_METADATA_ENTRIES: {e}")
    })?;
    let schema_id = funnel_runtime::registry::register_schema(&settings.kafka).await?;
    let producer = producer::MessageProducer::new(&settings, schema_id)?;
    connect(&settings).await?.close().await;
    // Token checks have a pool of their own, so they never wait behind reports and exports;
    // every query of the others gives up after the read timeout.
    let auth_db = pool(&settings, 2, Duration::from_secs(2)).await?;
    let db = pool(
        &settings,
        8,
        Duration::from_millis(settings.read_timeout_ms),
    )
    .await?;
    let limiter = limits::Limiter::new(settings.default_limits());
    limiter.set_stored(queries::tenants::all_limits(&db).await?);
    let channel_sealer = funnel_runtime::seal::Sealer::load(&db, "channel_key").await?;
    let channels = queries::channels::Channels::default();
    channels.set(queries::channels::active(&db, &channel_sealer).await?);
    let webhook_secrets = http::signed::WebhookSecrets::default();
    webhook_secrets.set(queries::webhooks::active(&db, &channel_sealer).await?);
    let state = Arc::new(AppState {
        producer,
        region,
        limits,
        max_batch: settings.max_batch,
        auth: queries::tokens::Authenticator::new(auth_db, Duration::from_secs(5)),
        limiter,
        sealer: funnel_runtime::seal::Sealer::load(&db, "cursor_key").await?,
        channel_sealer,
        channels,
        webhook_secrets,
        db,
        metrics: metrics::Metrics::default(),
        classifiers: quick_cache::sync::Cache::new(64),
    });
    let api = OpenApiService::new(
        (
            resources::messages::MessagesApi {
                state: state.clone(),
            },
            resources::health::HealthApi {
                state: state.clone(),
            },
            resources::rules::RulesApi {
                state: state.clone(),
            },
            resources::reports::ReportsApi {
                state: state.clone(),
            },
            resources::contacts::ContactApi {
                state: state.clone(),
            },
            resources::contacts::ContactsApi {
                state: state.clone(),
            },
            resources::channels::ChannelsApi {
                state: state.clone(),
            },
            resources::channels::WhatsAppApi {
                state: state.clone(),
            },
        ),
        "Funnel ingest API",
        env!("CARGO_PKG_VERSION"),
    );
    let spec = api.spec();
    let routes = Route::new()
        .at("/openapi.json", api.spec_endpoint())
        .nest("/docs", api.swagger_ui())
        .nest("/", api);
    maintain(state.clone(), Duration::from_secs(2), shutdown.clone());
    let app = http::middleware::around(routes, &spec, &settings, state.clone());
    tracing::info!(addr = %settings.http_addr, schema_id, topic = %settings.kafka.topic_messages, "ingest listening");
    let acceptor = TcpListener::bind(settings.http_addr.clone())
        .into_acceptor()
        .await?;
    Server::new_with_acceptor(http::listener::Capped::new(
        acceptor,
        settings.http_max_connections,
        Duration::from_millis(settings.http_header_timeout_ms),
    ))
    // A connection with no bytes either way for this long is closed: idle keep-alives, and
    // clients that stall while sending headers or a body.
    .idle_timeout(Duration::from_millis(settings.http_idle_timeout_ms))
    .run_with_graceful_shutdown(
        app,
        shutdown.cancelled_owned(),
        Some(Duration::from_secs(30)),
    )
    .await?;
    state.producer.flush(Duration::from_secs(10));
    tracing::info!("ingest stopped");
    Ok(())
}
