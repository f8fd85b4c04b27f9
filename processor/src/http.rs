//! The processor's own HTTP endpoint: `/metrics`, `/health/live`, and `/health/ready` (the live
//! generation's pipeline has started, and PostgreSQL answers).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use poem::listener::{Acceptor, Listener, TcpListener};
use poem::{get, handler, web::Data, EndpointExt, Response, Route, Server};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// Whether the live generation's pipeline has started (topics, registry and offsets checked).
#[derive(Clone, Default)]
pub struct Started(Arc<AtomicBool>);

impl Started {
    pub fn set(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

#[handler]
fn metrics_text(Data(m): Data<&Arc<Metrics>>) -> Response {
    Response::builder()
        .content_type(funnel_runtime::metrics::CONTENT_TYPE)
        .body(m.render())
}

#[handler]
fn live() -> &'static str {
    "ok"
}

#[handler]
async fn ready(Data(pool): Data<&PgPool>, Data(started): Data<&Started>) -> Response {
    let problem = if !started.get() {
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

/// Binds the endpoint (a taken address is a start-up error) and serves it until `shutdown`.
pub async fn serve(
    addr: &str,
    pool: PgPool,
    metrics: Arc<Metrics>,
    started: Started,
    shutdown: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
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
