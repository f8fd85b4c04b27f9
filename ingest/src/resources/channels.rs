//! Intake channels: the admin API (`/v1/channels`, scope `admin`, the same as
//! `funnel-ingest channel add|list|remove`) and Meta's WhatsApp Cloud API webhook
//! (`/v1/channels/whatsapp/{channel_id}/webhook`): the verify handshake, and payloads checked by
//! their `X-Hub-Signature-256` on the raw bytes before anything is parsed or produced, mapped
//! (`funnel_schemas::whatsapp`), keyed by phone or business-scoped user id (with the alias
//! rule), and answered 200 only once Kafka acknowledged every message (docs/channels.md).

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use funnel_schemas::whatsapp::{self, WaMessage};
use funnel_schemas::ChatMessage;
use poem::Request;
use poem_openapi::param::{Header, Path, Query};
use poem_openapi::payload::{Json, PlainText};
use poem_openapi::{ApiResponse, Object, OpenApi};

use crate::http::auth::{authorize, BearerAuth};
use crate::http::problem::{common_errors, ApiError, Problem};
use crate::producer::ProduceError;
use crate::queries::channels::{self, ChannelError, NewChannel};
use crate::queries::{aliases, tokens::Scope};
use crate::resources::messages::take_messages;
use crate::state::AppState;

/// A channel to register: a WhatsApp Cloud API phone number of the token's tenant.
#[derive(Debug, Object)]
pub struct ChannelIn {
    /// `whatsapp`
    #[oai(validator(pattern = "^whatsapp$"))]
    pub kind: String,
    /// The number's id in Meta's app (`metadata.phone_number_id` of its webhooks)
    #[oai(validator(pattern = "^[0-9]{1,64}$"))]
    pub phone_number_id: String,
    /// The Meta app's secret: the key of `X-Hub-Signature-256`
    #[oai(validator(min_length = 8, max_length = 1024))]
    pub app_secret: String,
    /// The verify token entered in the app's webhook settings
    #[oai(validator(min_length = 8, max_length = 1024))]
    pub verify_token: String,
    /// The WhatsApp Business Account id (needed for conversions)
    #[oai(validator(pattern = "^[0-9]{1,64}$"))]
    pub waba_id: Option<String>,
    /// The dataset conversions are sent to (with `access_token`)
    #[oai(validator(pattern = "^[0-9]{1,64}$"))]
    pub dataset_id: Option<String>,
    /// A token that may post to the dataset (`whatsapp_business_manage_events`)
    #[oai(validator(min_length = 8, max_length = 4096))]
    pub access_token: Option<String>,
}

/// A registered channel (never its secrets).
#[derive(Debug, Object)]
pub struct ChannelDoc {
    pub channel_id: String,
    pub kind: String,
    pub phone_number_id: String,
    pub waba_id: Option<String>,
    pub dataset_id: Option<String>,
    /// Whether conversions are sent to Meta for this channel's contacts
    pub conversions: bool,
    /// Where Meta's webhook points (`https://<host><webhook_path>`)
    pub webhook_path: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

impl From<channels::Channel> for ChannelDoc {
    fn from(c: channels::Channel) -> Self {
        ChannelDoc {
            webhook_path: c.webhook_path(),
            channel_id: c.channel_id,
            kind: c.kind,
            phone_number_id: c.phone_number_id,
            waba_id: c.waba_id,
            dataset_id: c.dataset_id,
            conversions: c.conversions,
            created_at: c.created_at,
        }
    }
}

common_errors!(AddChannelResponse {
    /// Registered; active within a few seconds
    #[oai(status = 201)]
    Created(Json<ChannelDoc>),
    /// The number already has an active channel
    #[oai(status = 409, content_type = "application/problem+json")]
    Conflict(Json<Problem>),
});

common_errors!(ListChannelsResponse {
    /// The tenant's active channels
    #[oai(status = 200)]
    Ok(Json<Vec<ChannelDoc>>),
});

common_errors!(RemoveChannelResponse {
    /// Removed; its webhook answers 404 within a few seconds
    #[oai(status = 204)]
    Removed,
    /// The tenant has no such active channel
    #[oai(status = 404, content_type = "application/problem+json")]
    NotFound(Json<Problem>),
});

/// What a webhook payload held.
#[derive(Debug, Object)]
pub struct WebhookReceipt {
    /// Messages produced (acknowledged by Kafka)
    pub messages: u32,
    /// Status updates counted and dropped
    pub statuses: u32,
    /// Changes for another phone number id or of another field
    pub ignored: u32,
    /// Messages that could not become chat messages (no contact, out of bounds)
    pub unusable: u32,
}

#[derive(ApiResponse)]
pub enum VerifyResponse {
    /// The challenge, echoed
    #[oai(status = 200)]
    Ok(PlainText<String>),
    /// Not a subscribe request with the channel's verify token
    #[oai(status = 403)]
    Forbidden(PlainText<String>),
    /// No such channel
    #[oai(status = 404)]
    NotFound(PlainText<String>),
}

#[derive(ApiResponse)]
pub enum WebhookResponse {
    /// Every message of the payload is acknowledged by Kafka
    #[oai(status = 200)]
    Ok(Json<WebhookReceipt>),
    /// Missing or wrong `X-Hub-Signature-256`: nothing was produced
    #[oai(status = 401, content_type = "application/problem+json")]
    Unauthorized(Json<Problem>),
    /// No such channel
    #[oai(status = 404, content_type = "application/problem+json")]
    NotFound(Json<Problem>),
    /// Signed, but not a webhook payload Funnel can read (Meta retries it)
    #[oai(status = 422, content_type = "application/problem+json")]
    Invalid(Json<Problem>),
    /// Larger than the body limit, or more messages than the tenant's burst
    #[oai(status = 413, content_type = "application/problem+json")]
    TooLarge(Json<Problem>),
    /// Over the tenant's rate limit (Meta retries)
    #[oai(status = 429, content_type = "application/problem+json")]
    TooMany(Json<Problem>, #[oai(header = "Retry-After")] u32),
    /// Kafka or PostgreSQL cannot take the payload now (Meta retries)
    #[oai(status = 503, content_type = "application/problem+json")]
    Unavailable(Json<Problem>, #[oai(header = "Retry-After")] u32),
}

pub struct ChannelsApi {
    pub state: Arc<AppState>,
}

#[OpenApi]
impl ChannelsApi {
    /// Register a WhatsApp Cloud API number (scope `admin`)
    ///
    /// The app secret and the access token are stored sealed, the verify token hashed; none is
    /// shown again. Point the Meta app's webhook at `webhook_path` (field `messages`, and
    /// `smb_message_echoes` for the WhatsApp Business app).
    #[oai(path = "/v1/channels", method = "post")]
    async fn add(&self, auth: BearerAuth, body: Json<ChannelIn>) -> AddChannelResponse {
        let principal = match authorize(&self.state, &auth, Scope::Admin).await {
            Ok(p) => p,
            Err(e) => return e.into(),
        };
        let b = body.0;
        let new = NewChannel {
            tenant: principal.tenant,
            phone_number_id: b.phone_number_id,
            waba_id: b.waba_id,
            app_secret: b.app_secret,
            verify_token: b.verify_token,
            dataset_id: b.dataset_id,
            access_token: b.access_token,
        };
        match channels::add(&self.state.db, &self.state.channel_sealer, &new).await {
            Ok(c) => AddChannelResponse::Created(Json(c.into())),
            Err(e @ ChannelError::Duplicate(_)) => AddChannelResponse::Conflict(Json(
                Problem::new(409, "conflict", "channel exists", e.to_string()),
            )),
            Err(ChannelError::Invalid(detail)) => AddChannelResponse::Invalid(Json(Problem::new(
                422,
                "validation",
                "invalid channel",
                detail,
            ))),
            Err(ChannelError::Db(e)) => ApiError::store("channels", e).into(),
        }
    }

    /// The tenant's WhatsApp channels (scope `admin`)
    #[oai(path = "/v1/channels", method = "get")]
    async fn list(&self, auth: BearerAuth) -> ListChannelsResponse {
        let principal = match authorize(&self.state, &auth, Scope::Admin).await {
            Ok(p) => p,
            Err(e) => return e.into(),
        };
        match channels::list(&self.state.db, Some(&principal.tenant)).await {
            Ok(list) => ListChannelsResponse::Ok(Json(list.into_iter().map(Into::into).collect())),
            Err(e) => ApiError::store("channels", e).into(),
        }
    }

    /// Remove a channel (scope `admin`)
    #[oai(path = "/v1/channels/:channel_id", method = "delete")]
    async fn remove(&self, auth: BearerAuth, channel_id: Path<String>) -> RemoveChannelResponse {
        let principal = match authorize(&self.state, &auth, Scope::Admin).await {
            Ok(p) => p,
            Err(e) => return e.into(),
        };
        match channels::remove(&self.state.db, &channel_id.0, Some(&principal.tenant)).await {
            Ok(true) => RemoveChannelResponse::Removed,
            Ok(false) => RemoveChannelResponse::NotFound(Json(Problem::new(
                404,
                "not-found",
                "no such channel",
                format!(
                    "tenant {} has no active channel {}",
                    principal.tenant, channel_id.0
                ),
            ))),
            Err(e) => ApiError::store("channels", e).into(),
        }
    }
}

pub struct WhatsAppApi {
    pub state: Arc<AppState>,
}

fn problem(status: u16, kind: &str, title: &str, detail: impl Into<String>) -> Json<Problem> {
    Json(Problem::new(status, kind, title, detail))
}

impl WhatsAppApi {
    fn count(&self, outcome: &str) {
        self.state
            .metrics
            .whatsapp_webhooks
            .with_label_values(&[outcome])
            .inc();
    }

    /// The contact keys of `messages`: the phone when a message has one; else the phone a
    /// user id is an alias of (recorded here when a message carries both); else the user id.
    async fn keys(&self, tenant: &str, messages: &[WaMessage]) -> Result<Vec<String>, sqlx::Error> {
        let mut known: HashMap<String, String> = HashMap::new();
        let mut pairs = Vec::new();
        for m in messages {
            if let (Some(p), Some(u)) = (&m.phone, &m.business_user_id) {
                if known.insert(u.clone(), p.clone()).is_none() {
                    pairs.push((u.as_str(), p.as_str(), m.event_id.as_str()));
                }
            }
        }
        aliases::record(&self.state.db, tenant, &pairs).await?;
        let unknown: Vec<&str> = messages
            .iter()
            .filter(|m| m.phone.is_none())
            .filter_map(|m| m.business_user_id.as_deref())
            .filter(|u| !known.contains_key(*u))
            .collect();
        known.extend(aliases::phones_of(&self.state.db, tenant, &unknown).await?);
        Ok(messages
            .iter()
            .map(|m| match (&m.phone, &m.business_user_id) {
                (Some(p), _) => p.clone(),
                (None, Some(u)) => known.get(u).cloned().unwrap_or_else(|| u.clone()),
                // map() drops messages with neither.
                (None, None) => String::new(),
            })
            .collect())
    }
}

/// The chat message of a WhatsApp message.
fn chat_message(
    m: WaMessage,
    key: String,
    tenant: &str,
    channel: &channels::ActiveChannel,
    received_at: i64,
) -> ChatMessage {
    let channel_name = m.channel();
    let referral = m.referral.unwrap_or_default();
    ChatMessage {
        channel: channel_name.into(),
        event_id: m.event_id,
        tenant: tenant.to_string(),
        phone: key,
        direction: m.direction,
        text: m.text,
        sent_at: m.sent_at,
        received_at,
        source: Some("whatsapp_cloud_api".into()),
        metadata: [
            (
                "wa_phone_number_id".to_string(),
                channel.phone_number_id.clone(),
            ),
            ("wa_type".to_string(), m.kind),
        ]
        .into(),
        business_user_id: m.business_user_id,
        referral_source_id: referral.source_id,
        referral_source_type: referral.source_type,
        referral_source_url: referral.source_url,
        referral_headline: referral.headline,
        referral_body: referral.body,
        ctwa_clid: referral.ctwa_clid,
        intake_channel_id: Some(channel.channel_id.clone()),
        ..Default::default()
    }
}

#[OpenApi]
impl WhatsAppApi {
    /// Meta's verify handshake for the channel's webhook (no token: the verify token is the
    /// check)
    #[oai(path = "/v1/channels/whatsapp/:channel_id/webhook", method = "get")]
    async fn verify(
        &self,
        channel_id: Path<String>,
        #[oai(name = "hub.mode")] mode: Query<Option<String>>,
        #[oai(name = "hub.verify_token")] token: Query<Option<String>>,
        #[oai(name = "hub.challenge")] challenge: Query<Option<String>>,
    ) -> VerifyResponse {
        let Some(ch) = self.state.channels.get(&channel_id.0) else {
            return VerifyResponse::NotFound(PlainText("no such channel".into()));
        };
        let ok = mode.0.as_deref() == Some("subscribe")
            && token.0.as_deref().is_some_and(|t| ch.verify_token_is(t));
        match (ok, challenge.0) {
            (true, Some(c)) if c.len() <= 1024 => VerifyResponse::Ok(PlainText(c)),
            _ => VerifyResponse::Forbidden(PlainText(
                "expected hub.mode=subscribe, the channel's hub.verify_token and a hub.challenge"
                    .into(),
            )),
        }
    }

    /// Meta's webhook for the channel: WhatsApp messages in (no token: `X-Hub-Signature-256`
    /// is the check, on the raw bytes)
    ///
    /// 200 only once Kafka acknowledged every message of the payload; 503 when it did not (Meta
    /// retries for up to 7 days; the WhatsApp message id is the event id, so a redelivery is
    /// one event).
    #[oai(path = "/v1/channels/whatsapp/:channel_id/webhook", method = "post")]
    async fn receive(
        &self,
        req: &Request,
        channel_id: Path<String>,
        #[oai(name = "X-Hub-Signature-256")] signature: Header<Option<String>>,
        body: Bytes,
    ) -> WebhookResponse {
        let Some(ch) = self.state.channels.get(&channel_id.0) else {
            self.count("unknown_channel");
            return WebhookResponse::NotFound(problem(
                404,
                "not-found",
                "no such channel",
                "no active channel with this id",
            ));
        };
        if !whatsapp::signature_matches(&ch.app_secret, &body, signature.0.as_deref()) {
            self.count("unauthorized");
            return WebhookResponse::Unauthorized(problem(
                401,
                "unauthorized",
                "invalid signature",
                "X-Hub-Signature-256 must be sha256=<hex HMAC-SHA256 of the body as sent, keyed by the app secret>",
            ));
        }
        let mapped = match whatsapp::map(&body, &ch.phone_number_id, self.state.region) {
            Ok(m) => m,
            Err(e) => {
                self.count("invalid");
                tracing::error!(channel_id = %ch.channel_id, error = %e, "a signed WhatsApp payload Funnel cannot read");
                return WebhookResponse::Invalid(problem(
                    422,
                    "validation",
                    "unreadable payload",
                    e.to_string(),
                ));
            }
        };
        let items = &self.state.metrics.whatsapp_items;
        items
            .with_label_values(&["status"])
            .inc_by(mapped.statuses as u64);
        items
            .with_label_values(&["ignored"])
            .inc_by(mapped.ignored as u64);
        for reason in &mapped.unusable {
            tracing::warn!(channel_id = %ch.channel_id, %reason, "WhatsApp message dropped");
        }
        let mut unusable = mapped.unusable.len();
        let n = mapped.messages.len();
        if let Err(e) = take_messages(&self.state, &ch.tenant, n) {
            self.count("rate_limited");
            return match e {
                ApiError::TooMany(p, secs) => WebhookResponse::TooMany(Json(p), secs),
                // More messages at once than the tenant's burst: raise its burst.
                ApiError::TooLarge(p) => WebhookResponse::TooLarge(Json(p)),
                _ => WebhookResponse::Unavailable(
                    problem(503, "unavailable", "limits unavailable", ""),
                    5,
                ),
            };
        }
        let keys = match self.keys(&ch.tenant, &mapped.messages).await {
            Ok(k) => k,
            Err(e) => {
                self.count("unavailable");
                tracing::warn!(error = %e, "contact aliases unavailable");
                return WebhookResponse::Unavailable(
                    problem(
                        503,
                        "unavailable",
                        "aliases unavailable",
                        "PostgreSQL did not answer",
                    ),
                    5,
                );
            }
        };
        let now = chrono::Utc::now().timestamp_millis();
        let request_id = req.header("x-request-id").unwrap_or_default();
        let messages: Vec<ChatMessage> = mapped
            .messages
            .into_iter()
            .zip(keys)
            .map(|(m, key)| chat_message(m, key, &ch.tenant, &ch, now))
            .filter(|m| match funnel_schemas::record::check(m, Some(m.phone.as_bytes())) {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(channel_id = %ch.channel_id, event_id = %m.event_id, error = %e, "WhatsApp message dropped");
                    unusable += 1;
                    false
                }
            })
            .collect();
        let sent = futures::future::join_all(messages.iter().map(|m| {
            self.state
                .producer
                .send(m, request_id, req.header("traceparent"))
        }))
        .await;
        let mut produced = 0u32;
        for (m, outcome) in messages.iter().zip(sent) {
            match outcome {
                Ok(_) => produced += 1,
                Err(e @ ProduceError::Unavailable(_)) => {
                    self.count("unavailable");
                    self.state.metrics.broker_errors.inc();
                    tracing::warn!(error = %e, "produce failed; Meta will deliver the payload again");
                    return WebhookResponse::Unavailable(
                        problem(503, "unavailable", "broker unavailable", e.to_string()),
                        5,
                    );
                }
                Err(e) => {
                    tracing::warn!(event_id = %m.event_id, error = %e, "WhatsApp message dropped");
                    unusable += 1;
                }
            }
        }
        items
            .with_label_values(&["message"])
            .inc_by(u64::from(produced));
        items
            .with_label_values(&["unusable"])
            .inc_by(unusable as u64);
        self.state.metrics.accepted.inc_by(u64::from(produced));
        self.count("ok");
        WebhookResponse::Ok(Json(WebhookReceipt {
            messages: produced,
            statuses: mapped.statuses as u32,
            ignored: mapped.ignored as u32,
            unusable: unusable as u32,
        }))
    }
}
