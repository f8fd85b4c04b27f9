//! Health and metrics: `GET /health/live`, `GET /health/ready` (Kafka and PostgreSQL
//! answer), `GET /metrics`.

use std::sync::Arc;

use poem_openapi::payload::{Json, PlainText};
use poem_openapi::{ApiResponse, Object, OpenApi};

use crate::state::AppState;

#[derive(Debug, Object)]
pub struct Readiness {
    pub kafka: bool,
    pub postgres: bool,
}

#[derive(ApiResponse)]
pub enum ReadyResponse {
    /// Every dependency answers
    #[oai(status = 200)]
    Ready(Json<Readiness>),
    /// A dependency does not answer
    #[oai(status = 503)]
    NotReady(Json<Readiness>),
}

pub struct HealthApi {
    pub state: Arc<AppState>,
}

#[OpenApi]
impl HealthApi {
    /// Readiness: Kafka and PostgreSQL answer
    #[oai(path = "/health/ready", method = "get")]
    async fn ready(&self) -> ReadyResponse {
        let kafka = self.state.producer.broker_ready().await;
        let postgres = sqlx::query("SELECT 1")
            .execute(&self.state.db)
            .await
            .is_ok();
        let body = Json(Readiness { kafka, postgres });
        if kafka && postgres {
            ReadyResponse::Ready(body)
        } else {
            ReadyResponse::NotReady(body)
        }
    }

    /// Liveness: the process answers
    #[oai(path = "/health/live", method = "get")]
    async fn live(&self) -> PlainText<&'static str> {
        PlainText("ok")
    }

    /// Prometheus metrics
    #[oai(path = "/metrics", method = "get")]
    async fn metrics(&self) -> PlainText<String> {
        PlainText(self.state.metrics.render())
    }
}
