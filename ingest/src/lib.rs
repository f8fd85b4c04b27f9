//! funnel-ingest: the HTTP API that validates chat messages, normalizes phone numbers and
//! produces them to Kafka as Avro in the Confluent wire format.

pub mod api;
pub mod producer;
pub mod settings;
pub mod telemetry;
pub mod validate;

use std::sync::Arc;
use std::time::Duration;

use poem::listener::TcpListener;
use poem::{EndpointExt, Route, Server};
use poem_openapi::OpenApiService;
use tokio_util::sync::CancellationToken;

pub use settings::Settings;

/// Runs the HTTP API until `shutdown` is cancelled, then drains in-flight requests.
pub async fn run(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let region: phonenumber::country::Id = settings.default_region.parse().map_err(|_| {
        anyhow::anyhow!(
            "FUNNEL_DEFAULT_REGION {:?} is not a region code like ID",
            settings.default_region
        )
    })?;
    let schema_id =
        producer::register_schema(&settings.schema_registry_url, &settings.topic_messages).await?;
    let producer = producer::MessageProducer::new(&settings, schema_id)?;
    let db = match &settings.database_url {
        Some(url) => Some(
            sqlx::postgres::PgPoolOptions::new()
                .max_connections(4)
                .acquire_timeout(Duration::from_secs(3))
                .connect_lazy(url)
                .map_err(|e| anyhow::anyhow!("DATABASE_URL is not a PostgreSQL URL: {e}"))?,
        ),
        None => None,
    };
    let state = Arc::new(api::AppState {
        producer,
        region,
        db,
    });
    let api = OpenApiService::new(
        api::Api {
            state: state.clone(),
        },
        "Funnel ingest API",
        env!("CARGO_PKG_VERSION"),
    );
    let app = Route::new()
        .at("/openapi.json", api.spec_endpoint())
        .nest("/docs", api.swagger_ui())
        .nest("/", api)
        .with(poem::middleware::Tracing);
    tracing::info!(addr = %settings.http_addr, schema_id, topic = %settings.topic_messages, "ingest listening");
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
