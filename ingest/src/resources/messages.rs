//! `POST /v1/messages` and `POST /v1/messages/batch`: a chat message validated field by field
//! (`funnel_schemas::validate`), produced to Kafka, and answered only after the broker's
//! acknowledgement (acks=all).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use funnel_schemas::validate::{check_json, FieldError};
use poem::Request;
use poem_openapi::payload::Json;
use poem_openapi::registry::{MetaSchemaRef, Registry};
use poem_openapi::types::{ParseFromJSON, ParseResult, ToJSON, Type};
use poem_openapi::{Object, OpenApi};

use crate::http::problem::{common_errors, ApiError, FieldErrorDoc, Problem};
use crate::http::signed::{authorize_ingest, IngestAuth};
use crate::http::types::DirectionIn;
use crate::producer::{Delivered, ProduceError};
use crate::state::AppState;

/// A chat message as a client sends it.
#[derive(Debug, Object)]
pub struct MessageIn {
    /// 1..128 chars; when absent the server derives a deterministic id
    #[oai(validator(min_length = 1, max_length = 128))]
    pub event_id: Option<String>,
    /// Phone number, normalized to E.164 with the default region for national forms
    /// (`0812-3456-7890`, `+62 812 3456 7890`, `6281234567890`); unparseable numbers are 422
    #[oai(validator(min_length = 1, max_length = 64))]
    pub phone: String,
    /// Slug `[a-z0-9_-]{1,64}` after lower-casing
    #[oai(validator(pattern = "^[A-Za-z0-9_-]{1,64}$"))]
    pub channel: String,
    /// `inbound` (default) or `outbound`
    pub direction: Option<DirectionIn>,
    /// At most 64 KiB of UTF-8 (configurable)
    #[oai(validator(max_length = 65536))]
    pub text: String,
    /// RFC 3339 event time, not more than 24 h in the future
    pub sent_at: chrono::DateTime<chrono::FixedOffset>,
    /// Carried through; at most 256 characters
    #[oai(validator(max_length = 256))]
    pub conversation_id: Option<String>,
    /// Carried through (the lead's campaign is on its contact row); at most 256 characters
    #[oai(validator(max_length = 256))]
    pub campaign: Option<String>,
    /// Carried through; at most 256 characters
    #[oai(validator(max_length = 256))]
    pub source: Option<String>,
    /// At most 32 entries (configurable); keys of 1..64 characters, values of at most 1024
    #[oai(validator(max_properties = 32))]
    pub metadata: Option<BTreeMap<String, String>>,
}

/// A chat message body kept as raw JSON, so validation can name every invalid field (a typed
/// parse stops at the first); documented with the schema of [`MessageIn`].
#[derive(Debug, Clone)]
pub struct MessageJson(pub serde_json::Value);

impl Type for MessageJson {
    const IS_REQUIRED: bool = true;
    type RawValueType = Self;
    type RawElementValueType = Self;

    fn name() -> Cow<'static, str> {
        MessageIn::name()
    }
    fn schema_ref() -> MetaSchemaRef {
        MessageIn::schema_ref()
    }
    fn register(registry: &mut Registry) {
        MessageIn::register(registry)
    }
    fn as_raw_value(&self) -> Option<&Self> {
        Some(self)
    }
    fn raw_element_iter<'a>(&'a self) -> Box<dyn Iterator<Item = &'a Self> + 'a> {
        Box::new(self.as_raw_value().into_iter())
    }
}

impl ParseFromJSON for MessageJson {
    fn parse_from_json(value: Option<serde_json::Value>) -> ParseResult<Self> {
        Ok(MessageJson(value.unwrap_or_default()))
    }
}

impl ToJSON for MessageJson {
    fn to_json(&self) -> Option<serde_json::Value> {
        Some(self.0.clone())
    }
}

#[derive(Debug, Object)]
pub struct BatchIn {
    /// Up to 1000 chat messages (configurable)
    pub messages: Vec<MessageJson>,
}

#[derive(Debug, Object)]
pub struct Accepted {
    pub event_id: String,
    pub partition: i32,
    pub offset: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, poem_openapi::Enum)]
#[oai(rename_all = "lowercase")]
pub enum ItemStatus {
    Accepted,
    Rejected,
}

/// The outcome of one batch item, in request order.
#[derive(Debug, Object)]
pub struct BatchItem {
    /// The (given or derived) event id; absent when the item was rejected
    #[oai(skip_serializing_if_is_none)]
    pub event_id: Option<String>,
    pub status: ItemStatus,
    #[oai(skip_serializing_if_is_none)]
    pub partition: Option<i32>,
    #[oai(skip_serializing_if_is_none)]
    pub offset: Option<i64>,
    /// Why the item was rejected (pointers are relative to the item)
    #[oai(skip_serializing_if_is_none)]
    pub errors: Option<Vec<FieldErrorDoc>>,
}

#[derive(Debug, Object)]
pub struct BatchResult {
    pub accepted: u32,
    pub rejected: u32,
    pub results: Vec<BatchItem>,
}

common_errors!(PostMessageResponse {
    /// Acknowledged by the broker (acks=all)
    #[oai(status = 202)]
    Accepted(Json<Accepted>),
});

common_errors!(PostBatchResponse {
    /// Every valid item was acknowledged by the broker; one result per item, in order
    #[oai(status = 202)]
    Accepted(Json<BatchResult>),
});

pub struct MessagesApi {
    pub state: Arc<AppState>,
}

/// Takes `n` messages from the tenant's limit (every way in: the message endpoints and the
/// channels' webhooks).
pub(crate) fn take_messages(state: &AppState, tenant: &str, n: usize) -> Result<(), ApiError> {
    let limiter = &state.limiter;
    limiter.messages(tenant, n).map_err(|over| {
        state
            .metrics
            .rejected
            .with_label_values(&["rate_limited"])
            .inc_by(n as u64);
        let limit = limiter.limits(tenant).messages_per_second.get();
        ApiError::over_limit("messages", over, limit)
    })
}

impl MessagesApi {
    fn within_limit(&self, tenant: &str, n: usize) -> Result<(), ApiError> {
        take_messages(&self.state, tenant, n)
    }

    fn reject(&self, reason: &str, n: u64) {
        self.state
            .metrics
            .rejected
            .with_label_values(&[reason])
            .inc_by(n);
    }

    /// Validates and produces one message; Err is the item's problem.
    async fn ingest_one(
        &self,
        value: serde_json::Value,
        tenant: &str,
        req: &Request,
    ) -> Result<(String, Delivered), ItemError> {
        let msg = check_json(
            value,
            tenant,
            self.state.region,
            self.state.limits,
            chrono::Utc::now(),
        )
        .map_err(ItemError::Invalid)?;
        // Set on every request by the request-id middleware (http/middleware.rs).
        let request_id = req.header("x-request-id").unwrap_or_default();
        let m = &self.state.metrics;
        m.in_flight.inc();
        let started = Instant::now();
        let sent = self
            .state
            .producer
            .send(&msg, request_id, req.header("traceparent"))
            .await;
        m.in_flight.dec();
        match sent {
            Ok(d) => {
                m.produce_seconds.observe(started.elapsed().as_secs_f64());
                m.accepted.inc();
                Ok((msg.event_id, d))
            }
            Err(e @ ProduceError::Unavailable(_)) => {
                m.broker_errors.inc();
                tracing::warn!(error = %e, "produce failed");
                Err(ItemError::Unavailable(e.to_string()))
            }
            Err(e @ (ProduceError::Encode(_) | ProduceError::TooLarge(_))) => {
                Err(ItemError::Invalid(vec![FieldError {
                    pointer: String::new(),
                    detail: e.to_string(),
                    expected: "a message the chat message schema can carry".into(),
                }]))
            }
        }
    }
}

enum ItemError {
    Invalid(Vec<FieldError>),
    /// Why the broker did not take it
    Unavailable(String),
}

#[OpenApi]
impl MessagesApi {
    /// Accept one chat message (scope `ingest`, or a Standard Webhooks signature)
    ///
    /// Answers 202 only after the Kafka broker acknowledged the message (acks=all).
    #[oai(path = "/v1/messages", method = "post")]
    async fn post_message(
        &self,
        req: &Request,
        auth: IngestAuth,
        body: Json<MessageJson>,
    ) -> PostMessageResponse {
        let principal = match authorize_ingest(&self.state, &auth).await {
            Ok(p) => p,
            Err(e) => return e.into(),
        };
        if let Err(e) = self.within_limit(&principal.tenant, 1) {
            return e.into();
        }
        match self.ingest_one(body.0 .0, &principal.tenant, req).await {
            Ok((event_id, d)) => PostMessageResponse::Accepted(Json(Accepted {
                event_id,
                partition: d.partition,
                offset: d.offset,
            })),
            Err(ItemError::Invalid(errors)) => {
                self.reject("validation", 1);
                PostMessageResponse::Invalid(Json(Problem::invalid_message(errors)))
            }
            Err(ItemError::Unavailable(detail)) => {
                self.reject("unavailable", 1);
                PostMessageResponse::Unavailable(
                    Json(Problem::unavailable("broker unavailable", detail)),
                    5,
                )
            }
        }
    }

    /// Accept up to 1000 chat messages (scope `ingest`, or a Standard Webhooks signature)
    ///
    /// Valid items are produced even when others are rejected; one result per item, in order.
    /// When the broker cannot take the accepted items, the whole request is 503: retry it (the
    /// event ids make a retry idempotent downstream).
    #[oai(path = "/v1/messages/batch", method = "post")]
    async fn post_batch(
        &self,
        req: &Request,
        auth: IngestAuth,
        body: Json<BatchIn>,
    ) -> PostBatchResponse {
        let principal = match authorize_ingest(&self.state, &auth).await {
            Ok(p) => p,
            Err(e) => return e.into(),
        };
        let items = body.0.messages;
        let n = items.len();
        if n > self.state.max_batch {
            self.reject("too_large", n as u64);
            return ApiError::TooLarge(Problem::new(
                413,
                "too-large",
                "batch too large",
                format!("{} messages; at most {} per batch", n, self.state.max_batch),
            ))
            .into();
        }
        if let Err(e) = self.within_limit(&principal.tenant, n) {
            return e.into();
        }
        // Produce concurrently: librdkafka batches the records; each waits for its own ack.
        let outcomes = futures::future::join_all(
            items
                .into_iter()
                .map(|item| self.ingest_one(item.0, &principal.tenant, req)),
        )
        .await;
        let mut results = Vec::with_capacity(outcomes.len());
        let (mut accepted, mut rejected) = (0u32, 0u32);
        for outcome in outcomes {
            match outcome {
                Ok((event_id, d)) => {
                    accepted += 1;
                    results.push(BatchItem {
                        event_id: Some(event_id),
                        status: ItemStatus::Accepted,
                        partition: Some(d.partition),
                        offset: Some(d.offset),
                        errors: None,
                    })
                }
                Err(ItemError::Invalid(errors)) => {
                    rejected += 1;
                    results.push(BatchItem {
                        event_id: None,
                        status: ItemStatus::Rejected,
                        partition: None,
                        offset: None,
                        errors: Some(errors.into_iter().map(Into::into).collect()),
                    })
                }
                Err(ItemError::Unavailable(detail)) => {
                    self.reject("unavailable", n as u64);
                    return PostBatchResponse::Unavailable(
                        Json(Problem::unavailable(
                            "broker unavailable",
                            format!("{detail}; retry the whole batch"),
                        )),
                        5,
                    );
                }
            }
        }
        self.reject("validation", u64::from(rejected));
        PostBatchResponse::Accepted(Json(BatchResult {
            accepted,
            rejected,
            results,
        }))
    }
}
