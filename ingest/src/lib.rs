//! funnel-ingest: the HTTP API that validates chat messages, normalizes phone numbers and
//! produces them to Kafka as Avro in the Confluent wire format.

pub mod api;
pub mod auth;
pub mod csv_stream;
pub mod metrics;
pub mod producer;
pub mod report;
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

/// The migrations of `sql/`, applied by every binary on start.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../sql");

/// A pool for tokens and readiness, with the migrations applied; fails with a message naming
/// the setting.
pub async fn connect(database_url: &str) -> anyhow::Result<sqlx::PgPool> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(Duration::from_secs(3))
        .connect(database_url)
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to PostgreSQL (DATABASE_URL): {e}"))?;
    MIGRATOR.run(&pool).await?;
    Ok(pool)
}

/// Every request gets an id (the client's `x-request-id`, or a new one): it is a field of every
/// log line of the request, travels as a Kafka header with the record, and is echoed back.
async fn request_id<E: poem::Endpoint>(
    ep: Arc<E>,
    mut req: poem::Request,
) -> poem::Result<poem::Response> {
    use poem::IntoResponse;
    use tracing::Instrument;
    let id = req
        .header("x-request-id")
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let value = poem::http::HeaderValue::from_str(&id)
        .unwrap_or_else(|_| poem::http::HeaderValue::from_static("invalid"));
    req.headers_mut().insert("x-request-id", value.clone());
    let span = tracing::info_span!("request", request_id = %id);
    let mut res = ep.call(req).instrument(span).await?.into_response();
    res.headers_mut().insert("x-request-id", value);
    Ok(res)
}

/// 413 for bodies over the limit, whether or not they announce their length (poem's SizeLimit
/// answers 411 to requests without Content-Length, which breaks chunked uploads and GETs).
async fn limit_body<E: poem::Endpoint>(
    ep: Arc<E>,
    mut req: poem::Request,
    limit: usize,
) -> poem::Result<poem::Response> {
    use poem::IntoResponse;
    let announced = req
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok());
    if announced.is_some_and(|n| n > limit) {
        return Err(poem::Error::from_status(
            poem::http::StatusCode::PAYLOAD_TOO_LARGE,
        ));
    }
    if announced.is_none()
        && matches!(
            *req.method(),
            poem::http::Method::POST | poem::http::Method::PUT
        )
    {
        let bytes = req.take_body().into_bytes_limit(limit).await?;
        req.set_body(bytes);
    }
    Ok(ep.call(req).await?.into_response())
}

/// Runs the HTTP API until `shutdown` is cancelled, then drains in-flight requests.
pub async fn run(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let region = validate::parse_region(&settings.default_region).map_err(|e| {
        anyhow::anyhow!("FUNNEL_DEFAULT_REGION {e}; expected a region code like ID")
    })?;
    let schema_id =
        producer::register_schema(&settings.schema_registry_url, &settings.topic_messages).await?;
    let producer = producer::MessageProducer::new(&settings, schema_id)?;
    let db = connect(&settings.database_url).await?;
    let state = Arc::new(api::AppState {
        producer,
        region,
        limits: settings.limits(),
        max_batch: settings.max_batch,
        auth: auth::Authenticator::new(db.clone(), Duration::from_secs(5)),
        db,
        metrics: metrics::Metrics::new(),
        classifiers: quick_cache::sync::Cache::new(64),
    });
    let max_body = settings.max_body_bytes;
    let api = OpenApiService::new(
        (
            api::Api {
                state: state.clone(),
            },
            api::rules::RulesApi {
                state: state.clone(),
            },
            api::reports::ReportsApi {
                state: state.clone(),
            },
            api::contacts::ContactsApi {
                state: state.clone(),
            },
        ),
        "Funnel ingest API",
        env!("CARGO_PKG_VERSION"),
    );
    let allow = Arc::new(api::AllowedMethods::from_spec(&api.spec()));
    let app = Route::new()
        .at("/openapi.json", api.spec_endpoint())
        .nest("/docs", api.swagger_ui())
        .nest("/", api)
        .around(move |ep, req| limit_body(ep, req, max_body))
        .with(poem::middleware::Tracing)
        .around(move |ep, req| {
            let allow = allow.clone();
            async move {
                let path = req.uri().path().to_string();
                match poem::Endpoint::call(&*ep, req).await {
                    Ok(res) => Ok(res),
                    Err(err) => {
                        let methods = (err.status() == poem::http::StatusCode::METHOD_NOT_ALLOWED)
                            .then(|| allow.for_path(&path))
                            .flatten();
                        Ok(api::problem_response(err, methods))
                    }
                }
            }
        })
        .around(request_id);
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
