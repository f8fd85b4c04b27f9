//! The HTTP API (poem-openapi): the OpenAPI document is generated from these types.

use std::collections::BTreeMap;
use std::sync::Arc;

use poem::Request;
use poem_openapi::payload::{Json, PlainText};
use poem_openapi::{ApiResponse, Object, OpenApi};

use crate::producer::{MessageProducer, ProduceError};
use crate::validate::{validate, FieldError, RawMessage};

pub struct AppState {
    pub producer: MessageProducer,
    pub region: phonenumber::country::Id,
    pub db: Option<sqlx::PgPool>,
}

/// A chat message as a client sends it.
#[derive(Debug, Object)]
pub struct MessageIn {
    /// 1..128 chars; when absent the server derives a deterministic id
    pub event_id: Option<String>,
    /// Phone number, normalized to E.164
    pub phone: String,
    /// Slug `[a-z0-9_-]{1,64}` after lower-casing
    pub channel: String,
    /// `inbound` (default) or `outbound`
    pub direction: Option<String>,
    /// At most 64 KiB
    pub text: String,
    /// RFC 3339 event time, not more than 24 h in the future
    pub sent_at: String,
    pub conversation_id: Option<String>,
    pub campaign: Option<String>,
    pub source: Option<String>,
    /// At most 32 entries
    pub metadata: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Object)]
pub struct Accepted {
    pub event_id: String,
    pub partition: i32,
    pub offset: i64,
}

/// RFC 9457 problem details with one entry per invalid field.
#[derive(Debug, Object)]
pub struct Problem {
    #[oai(rename = "type")]
    pub type_: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    #[oai(skip_serializing_if_is_empty)]
    pub errors: Vec<FieldError>,
}

impl Problem {
    fn invalid(errors: Vec<FieldError>) -> Self {
        Problem {
            type_: "https://funnel.dev/problems/validation".into(),
            title: "invalid chat message".into(),
            status: 422,
            detail: format!("{} invalid field(s)", errors.len()),
            errors,
        }
    }
}

#[derive(ApiResponse)]
#[oai(bad_request_handler = "bad_request")]
pub enum PostMessageResponse {
    /// Acknowledged by the broker (acks=all)
    #[oai(status = 202)]
    Accepted(Json<Accepted>),
    /// A field is invalid; every invalid field is listed
    #[oai(status = 422, content_type = "application/problem+json")]
    Invalid(Json<Problem>),
    /// The broker cannot take the message now; retry after the given seconds
    #[oai(status = 503, content_type = "application/problem+json")]
    Unavailable(Json<Problem>, #[oai(header = "Retry-After")] u32),
}

fn bad_request(err: poem::Error) -> PostMessageResponse {
    PostMessageResponse::Invalid(Json(Problem::invalid(vec![FieldError {
        pointer: String::new(),
        detail: err.to_string(),
        expected: "a JSON chat message object (see /openapi.json)".into(),
    }])))
}

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

pub struct Api {
    pub state: Arc<AppState>,
}

#[OpenApi]
impl Api {
    /// Accept one chat message
    #[oai(path = "/v1/messages", method = "post")]
    async fn post_message(&self, req: &Request, body: Json<MessageIn>) -> PostMessageResponse {
        let b = body.0;
        let raw = RawMessage {
            event_id: b.event_id,
            phone: b.phone,
            channel: b.channel,
            direction: b.direction,
            text: b.text,
            sent_at: b.sent_at,
            conversation_id: b.conversation_id,
            campaign: b.campaign,
            source: b.source,
            metadata: b.metadata,
        };
        // Tokens and tenants arrive with the auth work; until then everything is `default`.
        let msg = match validate(raw, "default", self.state.region, chrono::Utc::now()) {
            Ok(m) => m,
            Err(errors) => return PostMessageResponse::Invalid(Json(Problem::invalid(errors))),
        };
        let request_id = req
            .header("x-request-id")
            .map(str::to_string)
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        match self
            .state
            .producer
            .send(&msg, &request_id, req.header("traceparent"))
            .await
        {
            Ok(d) => PostMessageResponse::Accepted(Json(Accepted {
                event_id: msg.event_id,
                partition: d.partition,
                offset: d.offset,
            })),
            Err(e @ ProduceError::Unavailable(_)) => {
                tracing::warn!(error = %e, "produce failed");
                PostMessageResponse::Unavailable(
                    Json(Problem {
                        type_: "https://funnel.dev/problems/unavailable".into(),
                        title: "broker unavailable".into(),
                        status: 503,
                        detail: e.to_string(),
                        errors: vec![],
                    }),
                    5,
                )
            }
            Err(e @ ProduceError::Encode(_)) => {
                tracing::error!(error = %e, "could not encode a validated message");
                PostMessageResponse::Invalid(Json(Problem::invalid(vec![FieldError {
                    pointer: String::new(),
                    detail: e.to_string(),
                    expected: "a message the chat message schema can carry".into(),
                }])))
            }
        }
    }

    /// Readiness: Kafka (and PostgreSQL, when configured) answer
    #[oai(path = "/health/ready", method = "get")]
    async fn ready(&self) -> ReadyResponse {
        let kafka = self.state.producer.broker_ready().await;
        let postgres = match &self.state.db {
            None => true,
            Some(pool) => sqlx::query("SELECT 1").execute(pool).await.is_ok(),
        };
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
}
