//! The HTTP API (poem-openapi): the OpenAPI document is generated from these types.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use poem::Request;
use poem_openapi::auth::Bearer;
use poem_openapi::payload::{Json, PlainText};
use poem_openapi::registry::{MetaSchemaRef, Registry};
use poem_openapi::types::{ParseFromJSON, ParseResult, ToJSON, Type};
use poem_openapi::{ApiResponse, Object, OpenApi, SecurityScheme};

use crate::auth::{Authenticator, Principal, Scope};
use crate::metrics::Metrics;
use crate::producer::{Delivered, MessageProducer, ProduceError};
use crate::validate::{from_json, validate, FieldError, Limits};

pub struct AppState {
    pub producer: MessageProducer,
    pub region: rlibphonenumber::Region,
    pub limits: Limits,
    pub max_batch: usize,
    pub db: sqlx::PgPool,
    pub auth: Authenticator,
    pub metrics: Metrics,
    /// Compiled rule sets by version, for `POST /v1/classify`.
    pub classifiers: quick_cache::sync::Cache<i64, Arc<funnel_schemas::rules::Classifier>>,
}

/// A chat message as a client sends it.
#[derive(Debug, Object)]
pub struct MessageIn {
    /// 1..128 chars; when absent the server derives a deterministic id
    #[oai(validator(min_length = 1, max_length = 128))]
    pub event_id: Option<String>,
    /// Phone number, normalized to E.164 with the default region for national forms
    /// (`0812-3456-7890`, `+62 812 3456 7890`, `6281234567890`); unparseable numbers are 422
    #[oai(validator(min_length = 3, max_length = 32))]
    pub phone: String,
    /// Slug `[a-z0-9_-]{1,64}` after lower-casing
    #[oai(validator(pattern = "^[A-Za-z0-9_-]{1,64}$"))]
    pub channel: String,
    /// `inbound` (default) or `outbound`
    pub direction: Option<DirectionIn>,
    /// At most 64 KiB (configurable)
    pub text: String,
    /// RFC 3339 event time, not more than 24 h in the future
    pub sent_at: chrono::DateTime<chrono::FixedOffset>,
    pub conversation_id: Option<String>,
    pub campaign: Option<String>,
    pub source: Option<String>,
    /// At most 32 entries (configurable)
    pub metadata: Option<BTreeMap<String, String>>,
}

/// Who wrote the message.
#[derive(Debug, Clone, Copy, poem_openapi::Enum)]
#[oai(rename_all = "lowercase")]
pub enum DirectionIn {
    Inbound,
    Outbound,
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

/// An optional value that is always present in responses, as `null` when absent, and is
/// documented as nullable (poem-openapi documents `Option<T>` fields as possibly missing, not as
/// null, and response validators such as schemathesis hold the API to that).
#[derive(Debug, Clone, PartialEq)]
pub struct Nullable<T>(pub Option<T>);

impl<T> From<Option<T>> for Nullable<T> {
    fn from(v: Option<T>) -> Self {
        Nullable(v)
    }
}

impl<T: Type> Type for Nullable<T> {
    const IS_REQUIRED: bool = true;
    type RawValueType = T::RawValueType;
    type RawElementValueType = T::RawElementValueType;

    fn name() -> Cow<'static, str> {
        format!("nullable_{}", T::name()).into()
    }
    fn schema_ref() -> MetaSchemaRef {
        use poem_openapi::registry::MetaSchema;
        let schema = match T::schema_ref() {
            MetaSchemaRef::Inline(inner) => MetaSchema {
                nullable: true,
                ..*inner
            },
            reference @ MetaSchemaRef::Reference(_) => MetaSchema {
                nullable: true,
                all_of: vec![reference],
                ..MetaSchema::ANY
            },
        };
        MetaSchemaRef::Inline(Box::new(schema))
    }
    fn register(registry: &mut Registry) {
        T::register(registry)
    }
    fn as_raw_value(&self) -> Option<&Self::RawValueType> {
        self.0.as_ref().and_then(|v| v.as_raw_value())
    }
    fn raw_element_iter<'a>(
        &'a self,
    ) -> Box<dyn Iterator<Item = &'a Self::RawElementValueType> + 'a> {
        match &self.0 {
            Some(v) => v.raw_element_iter(),
            None => Box::new(std::iter::empty()),
        }
    }
}

impl<T: ParseFromJSON> ParseFromJSON for Nullable<T> {
    fn parse_from_json(value: Option<serde_json::Value>) -> ParseResult<Self> {
        match value {
            None | Some(serde_json::Value::Null) => Ok(Nullable(None)),
            v => T::parse_from_json(v)
                .map(|v| Nullable(Some(v)))
                .map_err(poem_openapi::types::ParseError::propagate),
        }
    }
}

impl<T: ToJSON> ToJSON for Nullable<T> {
    fn to_json(&self) -> Option<serde_json::Value> {
        Some(
            self.0
                .as_ref()
                .and_then(ToJSON::to_json)
                .unwrap_or(serde_json::Value::Null),
        )
    }
}

/// A JSON string, and only a string: poem-openapi's `String` also takes numbers and booleans
/// (`"channel": false` would read "false"), which the documented schema does not allow.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Text(pub String);

impl AsRef<str> for Text {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Type for Text {
    const IS_REQUIRED: bool = true;
    type RawValueType = Self;
    type RawElementValueType = Self;

    fn name() -> Cow<'static, str> {
        String::name()
    }
    fn schema_ref() -> MetaSchemaRef {
        String::schema_ref()
    }
    fn as_raw_value(&self) -> Option<&Self> {
        Some(self)
    }
    fn raw_element_iter<'a>(&'a self) -> Box<dyn Iterator<Item = &'a Self> + 'a> {
        Box::new(self.as_raw_value().into_iter())
    }
}

impl ParseFromJSON for Text {
    fn parse_from_json(value: Option<serde_json::Value>) -> ParseResult<Self> {
        match value {
            Some(serde_json::Value::String(s)) => Ok(Text(s)),
            other => Err(poem_openapi::types::ParseError::expected_type(
                other.unwrap_or_default(),
            )),
        }
    }
}

impl ToJSON for Text {
    fn to_json(&self) -> Option<serde_json::Value> {
        Some(serde_json::Value::String(self.0.clone()))
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
    pub errors: Option<Vec<FieldError>>,
}

#[derive(Debug, Object)]
pub struct BatchResult {
    pub accepted: u32,
    pub rejected: u32,
    pub results: Vec<BatchItem>,
}

/// RFC 9457 problem details, with one entry per invalid field.
#[derive(Debug, Object)]
pub struct Problem {
    #[oai(rename = "type")]
    pub type_: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// One entry per invalid field (empty when the problem is not about fields)
    pub errors: Vec<FieldError>,
}

impl Problem {
    pub(crate) fn new(status: u16, kind: &str, title: &str, detail: impl Into<String>) -> Self {
        Problem {
            type_: format!("https://funnel.dev/problems/{kind}"),
            title: title.into(),
            status,
            detail: detail.into(),
            errors: vec![],
        }
    }

    fn invalid(errors: Vec<FieldError>) -> Self {
        let mut p = Problem::new(
            422,
            "validation",
            "invalid chat message",
            format!("{} invalid field(s)", errors.len()),
        );
        p.errors = errors;
        p
    }

    pub(crate) fn invalid_params(errors: Vec<FieldError>) -> Self {
        let mut p = Problem::new(
            422,
            "validation",
            "invalid parameters",
            format!("{} invalid parameter(s)", errors.len()),
        );
        p.errors = errors;
        p
    }
}

/// The answer to any request that failed before its handler: maps poem-openapi's extractor
/// errors (auth, body) to problem details.
fn classify_error(err: &poem::Error) -> (u16, Problem) {
    if let Some(e) = err.downcast_ref::<poem_openapi::error::ParseParamError>() {
        return (
            422,
            Problem::invalid_params(vec![FieldError {
                pointer: format!("/query/{}", e.name),
                detail: e.reason.clone(),
                expected: expected_param(e.name).into(),
            }]),
        );
    }
    let status = err.status().as_u16();
    match status {
        401 => (
            401,
            Problem::new(
                401,
                "unauthorized",
                "missing or invalid bearer token",
                "send Authorization: Bearer <token>",
            ),
        ),
        413 => (
            413,
            Problem::new(413, "too-large", "request too large", err.to_string()),
        ),
        _ => (
            422,
            Problem::invalid(vec![FieldError {
                pointer: String::new(),
                detail: err.to_string(),
                expected: "a JSON body as described in /openapi.json".into(),
            }]),
        ),
    }
}

/// What a typed query parameter takes, for its parse errors.
fn expected_param(name: &str) -> &'static str {
    match name {
        "group_by" => "one of hour, day, week, month, channel, campaign",
        "stage" => "one of lead, booking, transaction",
        "order" => "asc or desc",
        "window_days" => "an integer from 1 to 3650",
        "stuck_days" => "an integer from 0 to 3650",
        "limit" => "an integer from 1 to 1000",
        _ => "a value as described in /openapi.json",
    }
}

macro_rules! common_errors {
    ($name:ident { $($body:tt)* }) => {
        #[derive(ApiResponse)]
        #[oai(bad_request_handler = "bad_request")]
        pub enum $name {
            $($body)*
            /// Missing or invalid bearer token
            #[oai(status = 401, content_type = "application/problem+json")]
            Unauthorized(Json<Problem>),
            /// The token lacks the scope this endpoint needs
            #[oai(status = 403, content_type = "application/problem+json")]
            Forbidden(Json<Problem>),
            /// The body is larger than the configured limits
            #[oai(status = 413, content_type = "application/problem+json")]
            TooLarge(Json<Problem>),
            /// The body is invalid; every invalid field is listed
            #[oai(status = 422, content_type = "application/problem+json")]
            Invalid(Json<Problem>),
            /// The broker or the database cannot take the request now; retry after the given seconds
            #[oai(status = 503, content_type = "application/problem+json")]
            Unavailable(Json<Problem>, #[oai(header = "Retry-After")] u32),
        }

        impl From<ApiError> for $name {
            fn from(e: ApiError) -> Self {
                match e {
                    ApiError::Unauthorized(p) => $name::Unauthorized(Json(p)),
                    ApiError::Forbidden(p) => $name::Forbidden(Json(p)),
                    ApiError::TooLarge(p) => $name::TooLarge(Json(p)),
                    ApiError::Invalid(p) => $name::Invalid(Json(p)),
                    ApiError::Unavailable(p) => $name::Unavailable(Json(p), 5),
                }
            }
        }
    };
}

/// Errors every authenticated endpoint can answer with.
pub enum ApiError {
    Unauthorized(Problem),
    Forbidden(Problem),
    TooLarge(Problem),
    Invalid(Problem),
    Unavailable(Problem),
}

fn bad_request<T: From<ApiError>>(err: poem::Error) -> T {
    let (status, p) = classify_error(&err);
    match status {
        401 => ApiError::Unauthorized(p),
        413 => ApiError::TooLarge(p),
        _ => ApiError::Invalid(p),
    }
    .into()
}

pub mod contacts;
pub mod reports;
pub mod rules;

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

/// Bearer token of one tenant with scopes `ingest`, `read` and/or `admin`.
#[derive(SecurityScheme)]
#[oai(ty = "bearer")]
pub struct BearerAuth(Bearer);

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

/// The principal of a bearer token that has `scope`.
pub(crate) async fn authorize(
    state: &AppState,
    auth: &BearerAuth,
    scope: Scope,
) -> Result<Principal, ApiError> {
    let found = state.auth.authenticate(&auth.0.token).await.map_err(|e| {
        tracing::warn!(error = %e, "token lookup failed");
        ApiError::Unavailable(Problem::new(
            503,
            "unavailable",
            "token store unavailable",
            "PostgreSQL did not answer",
        ))
    })?;
    let p = found.ok_or_else(|| {
        ApiError::Unauthorized(Problem::new(
            401,
            "unauthorized",
            "missing or invalid bearer token",
            "the token is unknown or revoked",
        ))
    })?;
    if !p.has(scope) {
        return Err(ApiError::Forbidden(Problem::new(
            403,
            "forbidden",
            "insufficient scope",
            format!("this endpoint needs the `{}` scope", scope.as_str()),
        )));
    }
    Ok(p)
}

impl Api {
    async fn principal(&self, auth: &BearerAuth, scope: Scope) -> Result<Principal, ApiError> {
        authorize(&self.state, auth, scope).await
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
        let raw = from_json(value).map_err(ItemError::Invalid)?;
        let msg = validate(
            raw,
            tenant,
            self.state.region,
            self.state.limits,
            chrono::Utc::now(),
        )
        .map_err(ItemError::Invalid)?;
        // Set on every request by the request-id middleware (lib.rs).
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
            Err(e @ ProduceError::Encode(_)) => Err(ItemError::Invalid(vec![FieldError {
                pointer: String::new(),
                detail: e.to_string(),
                expected: "a message the chat message schema can carry".into(),
            }])),
        }
    }
}

enum ItemError {
    Invalid(Vec<FieldError>),
    /// Why the broker did not take it
    Unavailable(String),
}

/// Any error that escaped the typed responses (unknown route, body over the size limit, wrong
/// method) as problem details; a 405 names the allowed methods.
pub fn problem_response(err: poem::Error, allow: Option<String>) -> poem::Response {
    use poem::IntoResponse;
    let status = err.status();
    let body = serde_json::json!({
        "type": format!("https://funnel.dev/problems/http-{}", status.as_u16()),
        "title": status.canonical_reason().unwrap_or("error"),
        "status": status.as_u16(),
        "detail": err.to_string(),
    });
    let mut res = poem::Response::builder()
        .status(status)
        .content_type("application/problem+json");
    if let Some(allow) = allow {
        res = res.header("allow", allow);
    }
    res.body(body.to_string()).into_response()
}

/// The methods the OpenAPI document declares per path, for `Allow` headers.
pub struct AllowedMethods(Vec<(Vec<String>, String)>);

impl AllowedMethods {
    pub fn from_spec(spec: &str) -> Self {
        let doc: serde_json::Value = serde_json::from_str(spec).unwrap_or_default();
        let mut out = Vec::new();
        if let Some(paths) = doc["paths"].as_object() {
            for (path, ops) in paths {
                let methods: Vec<String> = ops
                    .as_object()
                    .map(|o| o.keys().map(|m| m.to_uppercase()).collect())
                    .unwrap_or_default();
                out.push((
                    path.split('/').map(str::to_string).collect(),
                    methods.join(", "),
                ));
            }
        }
        AllowedMethods(out)
    }

    pub fn for_path(&self, path: &str) -> Option<String> {
        let segs: Vec<&str> = path.split('/').collect();
        self.0.iter().find_map(|(tmpl, methods)| {
            let same = tmpl.len() == segs.len()
                && tmpl
                    .iter()
                    .zip(&segs)
                    .all(|(t, s)| t == s || (t.starts_with('{') && t.ends_with('}')));
            same.then(|| methods.clone())
        })
    }
}

#[OpenApi]
impl Api {
    /// Accept one chat message (scope `ingest`)
    ///
    /// Answers 202 only after the Kafka broker acknowledged the message (acks=all).
    #[oai(path = "/v1/messages", method = "post")]
    async fn post_message(
        &self,
        req: &Request,
        auth: BearerAuth,
        body: Json<MessageJson>,
    ) -> PostMessageResponse {
        let principal = match self.principal(&auth, Scope::Ingest).await {
            Ok(p) => p,
            Err(e) => return e.into(),
        };
        match self.ingest_one(body.0 .0, &principal.tenant, req).await {
            Ok((event_id, d)) => PostMessageResponse::Accepted(Json(Accepted {
                event_id,
                partition: d.partition,
                offset: d.offset,
            })),
            Err(ItemError::Invalid(errors)) => {
                self.reject("validation", 1);
                PostMessageResponse::Invalid(Json(Problem::invalid(errors)))
            }
            Err(ItemError::Unavailable(detail)) => {
                self.reject("unavailable", 1);
                PostMessageResponse::Unavailable(
                    Json(Problem::new(
                        503,
                        "unavailable",
                        "broker unavailable",
                        detail,
                    )),
                    5,
                )
            }
        }
    }

    /// Accept up to 1000 chat messages (scope `ingest`)
    ///
    /// Valid items are produced even when others are rejected; one result per item, in order.
    /// When the broker cannot take the accepted items, the whole request is 503: retry it (the
    /// event ids make a retry idempotent downstream).
    #[oai(path = "/v1/messages/batch", method = "post")]
    async fn post_batch(
        &self,
        req: &Request,
        auth: BearerAuth,
        body: Json<BatchIn>,
    ) -> PostBatchResponse {
        let principal = match self.principal(&auth, Scope::Ingest).await {
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
                        errors: Some(errors),
                    })
                }
                Err(ItemError::Unavailable(detail)) => {
                    self.reject("unavailable", n as u64);
                    return PostBatchResponse::Unavailable(
                        Json(Problem::new(
                            503,
                            "unavailable",
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
