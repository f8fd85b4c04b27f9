//! Funnel's HTTP API (the `funnel-ingest` service): chat messages validated and produced to
//! Kafka as Avro in the Confluent wire format, and the funnel read back: contacts, reports,
//! rules.
//!
//! - [`http`]: what every resource shares (problem details, document types, bearer-token
//!   authorization, middleware, streamed CSV);
//! - [`resources`]: messages, contacts, reports, rules, health, one module each;
//! - [`queries`]: the PostgreSQL they read and write (contacts, reports, rules, tokens);
//! - [`producer`]: the Kafka side of accepting a message.

pub mod http;
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

use poem::listener::TcpListener;
use poem::{Route, Server};
use poem_openapi::OpenApiService;
use tokio_util::sync::CancellationToken;

use crate::state::AppState;
pub use settings::Settings;

/// A pool with the migrations applied; fails with a message naming the setting.
pub async fn connect(settings: &Settings) -> anyhow::Result<sqlx::PgPool> {
    let pool = settings
        .database
        .connect_and_migrate(8, Duration::from_secs(3));
    Ok(pool.await?)
}

/// Runs the HTTP API until `shutdown` is cancelled, then drains in-flight requests.
pub async fn run(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let region = funnel_schemas::phone::parse_region(&settings.default_region).map_err(|e| {
        anyhow::anyhow!("FUNNEL_DEFAULT_REGION {e}; expected a region code like ID")
    })?;
    let schema_id = funnel_runtime::registry::register_schema(
        &settings.kafka.registry_url,
        &settings.kafka.topic_messages,
    )
    .await?;
    let producer = producer::MessageProducer::new(&settings, schema_id)?;
    let db = connect(&settings).await?;
    let state = Arc::new(AppState {
        producer,
        region,
        limits: settings.limits(),
        max_batch: settings.max_batch,
        auth: queries::tokens::Authenticator::new(db.clone(), Duration::from_secs(5)),
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
        ),
        "Funnel ingest API",
        env!("CARGO_PKG_VERSION"),
    );
    let spec = api.spec();
    let routes = Route::new()
        .at("/openapi.json", api.spec_endpoint())
        .nest("/docs", api.swagger_ui())
        .nest("/", api);
    let app = http::middleware::around(routes, &spec, settings.max_body_bytes);
    tracing::info!(addr = %settings.http_addr, schema_id, topic = %settings.kafka.topic_messages, "ingest listening");
    Server::new(TcpListener::bind(settings.http_addr.clone()))
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
