//! Signed webhooks on the ingest endpoints (Standard Webhooks): `POST /v1/messages` and
//! `/v1/messages/batch` take `webhook-id`, `webhook-timestamp` and `webhook-signature` instead
//! of a bearer token. The middleware reads the body (bounded, like every body), finds the
//! tenant whose active secret signed `id.timestamp.body` (the `standardwebhooks` crate checks
//! the signature and the 5-minute tolerance), claims the `webhook-id` and hands the handler a
//! [`Verified`] principal with the `ingest` scope. A `webhook-id` answered within the
//! tolerance is answered again, the same way, without reaching the handler; an answer of 5xx
//! gives the id back, so the sender's retry is processed.

use std::sync::{Arc, RwLock};

use poem::{Endpoint, IntoResponse, Request, Response};
use poem_openapi::auth::ApiKey;
use poem_openapi::SecurityScheme;

use super::auth::{authorize, BearerAuth};
use super::problem::{ApiError, Problem};
use crate::queries::tokens::{Principal, Scope};
use crate::queries::webhooks::{self, ActiveSecret, Claim};
use crate::state::AppState;

/// The active webhook secrets, as last loaded.
#[derive(Default)]
pub struct WebhookSecrets(RwLock<Arc<Vec<ActiveSecret>>>);

impl WebhookSecrets {
    pub fn set(&self, secrets: Vec<ActiveSecret>) {
        if let Ok(mut s) = self.0.write() {
            *s = Arc::new(secrets);
        }
    }

    fn all(&self) -> Arc<Vec<ActiveSecret>> {
        self.0.read().map(|s| s.clone()).unwrap_or_default()
    }
}

/// The principal of a verified signature, put on the request by the middleware.
#[derive(Clone)]
pub struct Verified(pub Principal);

/// A signed webhook: the middleware checked the signature; the scheme only documents it and
/// picks up the principal.
#[derive(SecurityScheme)]
#[oai(
    ty = "api_key",
    key_name = "webhook-signature",
    key_in = "header",
    checker = "verified"
)]
pub struct SignedWebhook(Principal);

async fn verified(req: &Request, _signature: ApiKey) -> Option<Principal> {
    req.extensions().get::<Verified>().map(|v| v.0.clone())
}

/// How an ingest endpoint may be called: a bearer token with the `ingest` scope, or a
/// Standard Webhooks signature by one of the tenant's secrets
/// (`funnel-ingest webhook-secret create`).
#[derive(SecurityScheme)]
pub enum IngestAuth {
    Bearer(BearerAuth),
    Signed(SignedWebhook),
}

/// The principal of an ingest request.
pub async fn authorize_ingest(state: &AppState, auth: &IngestAuth) -> Result<Principal, ApiError> {
    match auth {
        IngestAuth::Bearer(b) => authorize(state, b, Scope::Ingest).await,
        IngestAuth::Signed(SignedWebhook(p)) => Ok(p.clone()),
    }
}

/// Whether the request is a signed webhook for an ingest endpoint (no bearer token, a
/// `webhook-signature`).
pub fn is_signed(req: &Request) -> bool {
    req.method() == poem::http::Method::POST
        && matches!(req.uri().path(), "/v1/messages" | "/v1/messages/batch")
        && req.header("authorization").is_none()
        && req.header("webhook-signature").is_some()
}

fn unauthorized(detail: &str) -> Response {
    problem(
        401,
        Problem::new(
            401,
            "unauthorized",
            "invalid webhook signature",
            detail.to_string(),
        ),
    )
}

fn problem(status: u16, p: Problem) -> Response {
    use poem_openapi::types::ToJSON;
    Response::builder()
        .status(poem::http::StatusCode::from_u16(status).unwrap_or_default())
        .content_type("application/problem+json")
        .body(p.to_json().unwrap_or_default().to_string())
}

/// Checks a signed request and answers it (see the module's description).
pub async fn handle<E: Endpoint>(
    ep: &E,
    mut req: Request,
    state: &AppState,
    limit: usize,
    deadline: std::time::Duration,
) -> poem::Result<Response> {
    let id = req.header("webhook-id").unwrap_or_default().to_string();
    if id.is_empty() || id.len() > 256 {
        return Ok(unauthorized("webhook-id must be 1..256 characters"));
    }
    let read = req.take_body().into_bytes_limit(limit);
    let body = match tokio::time::timeout(deadline, read).await {
        Err(_) => {
            return Err(poem::Error::from_status(
                poem::http::StatusCode::REQUEST_TIMEOUT,
            ))
        }
        Ok(body) => body?,
    };
    let secrets = state.webhook_secrets.all();
    let mut tenant = None;
    let mut last = standardwebhooks::WebhookError::InvalidSignature;
    for s in secrets.iter() {
        match standardwebhooks::Webhook::from_bytes(s.key.clone())
            .and_then(|w| w.verify(&body, req.headers()))
        {
            Ok(()) => {
                tenant = Some(s);
                break;
            }
            Err(e) => last = e,
        }
    }
    let Some(secret) = tenant else {
        state.metrics.signed.with_label_values(&["refused"]).inc();
        return Ok(unauthorized(&format!(
            "{last} (HMAC-SHA256 of webhook-id.webhook-timestamp.body under an active secret, \
             timestamp within {} s)",
            webhooks::TOLERANCE_SECONDS
        )));
    };
    let tenant_name = secret.tenant.clone();
    match webhooks::claim(&state.db, &tenant_name, &id).await {
        Err(e) => {
            tracing::warn!(error = %e, "webhook deliveries unavailable");
            let mut res = problem(
                503,
                Problem::unavailable(
                    "webhook deliveries unavailable",
                    "PostgreSQL did not answer",
                ),
            );
            res.headers_mut()
                .insert("retry-after", poem::http::HeaderValue::from_static("5"));
            return Ok(res);
        }
        Ok(Claim::Answered { status, body }) => {
            state.metrics.signed.with_label_values(&["replayed"]).inc();
            return Ok(Response::builder()
                .status(poem::http::StatusCode::from_u16(status).unwrap_or_default())
                .content_type(if status < 300 {
                    "application/json"
                } else {
                    "application/problem+json"
                })
                .header("webhook-replayed", "true")
                .body(body));
        }
        Ok(Claim::InProgress) => {
            return Ok(problem(
                409,
                Problem::new(
                    409,
                    "in-progress",
                    "delivery in progress",
                    format!("a delivery with webhook-id {id} is being answered; retry it"),
                ),
            ));
        }
        Ok(Claim::New) => {}
    }
    state.metrics.signed.with_label_values(&["accepted"]).inc();
    req.extensions_mut().insert(Verified(Principal {
        token_id: secret.secret_id.clone(),
        tenant: tenant_name.clone(),
        scopes: vec![Scope::Ingest],
        expires_at: None,
    }));
    req.set_body(body);
    let res = ep.call(req).await.map(IntoResponse::into_response);
    let status = match &res {
        Ok(r) => r.status().as_u16(),
        Err(e) => e.status().as_u16(),
    };
    if status >= 500 || res.is_err() {
        if let Err(e) = webhooks::release(&state.db, &tenant_name, &id).await {
            tracing::warn!(error = %e, "webhook-id not given back");
        }
        return res;
    }
    let res = res?;
    let (parts, body) = res.into_parts();
    let bytes = body.into_bytes().await?;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    if let Err(e) = webhooks::answered(&state.db, &tenant_name, &id, status, &text).await {
        tracing::warn!(error = %e, "webhook answer not kept; a redelivery would be produced again (the event ids keep it one event)");
    }
    Ok(Response::from_parts(parts, bytes.into()))
}
