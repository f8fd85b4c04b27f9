//! Middleware around every route: a request id on every request (logged, produced with the
//! record, echoed back), the bearer token checked before any body is read (or a Standard
//! Webhooks signature, `super::signed`; Meta's webhook checks its own signature), a body limit
//! that answers 413 whether or not the length is announced, and problem details for every
//! error that escaped the typed responses (a 405 naming the allowed methods).

use std::net::IpAddr;
use std::sync::Arc;

use poem::{Endpoint, EndpointExt};

use super::problem::{problem_response, Problem};
use crate::state::AppState;

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
/// answers 411 to requests without Content-Length, which breaks chunked uploads and GETs), and
/// 408 for a body that takes longer than `deadline` to arrive. The body of a POST or PUT is
/// read here, counted as it streams (a chunked body stops at the limit, not at its end).
async fn limit_body<E: poem::Endpoint>(
    ep: Arc<E>,
    mut req: poem::Request,
    limits: BodyLimits,
) -> poem::Result<poem::Response> {
    use poem::http::{Method, StatusCode};
    use poem::IntoResponse;
    let (limit, deadline) = limits.of(&req);
    let announced = req
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok());
    if announced.is_some_and(|n| n > limit) {
        return Err(poem::Error::from_status(StatusCode::PAYLOAD_TOO_LARGE));
    }
    if matches!(*req.method(), Method::POST | Method::PUT) {
        let read = req.take_body().into_bytes_limit(limit);
        let bytes = tokio::time::timeout(deadline, read)
            .await
            .map_err(|_| poem::Error::from_status(StatusCode::REQUEST_TIMEOUT))??;
        req.set_body(bytes);
    }
    Ok(ep.call(req).await?.into_response())
}

/// The largest body a request may send, and how long it may take.
#[derive(Clone, Copy)]
struct BodyLimits {
    body: usize,
    whatsapp: usize,
    deadline: std::time::Duration,
}

impl BodyLimits {
    fn of(&self, req: &poem::Request) -> (usize, std::time::Duration) {
        if is_whatsapp_webhook(req.uri().path()) {
            (self.whatsapp, self.deadline)
        } else {
            (self.body, self.deadline)
        }
    }
}

/// Meta's webhook (`/v1/channels/whatsapp/{id}/webhook`): signed by Meta, not by a token.
fn is_whatsapp_webhook(path: &str) -> bool {
    path.strip_prefix("/v1/channels/whatsapp/")
        .and_then(|rest| rest.strip_suffix("/webhook"))
        .is_some_and(|id| !id.is_empty() && !id.contains('/'))
}

/// The bearer token of every `/v1/` request is checked before its body is read: a missing or
/// unknown token is answered 401 without parsing (or even receiving) a body. The handlers
/// check the token's scope (a cache hit by then). A signed webhook to an ingest endpoint is
/// checked by its signature instead (`super::signed`), and Meta's webhook by Meta's.
async fn authenticate_first<E: poem::Endpoint>(
    ep: Arc<E>,
    req: poem::Request,
    state: Arc<AppState>,
    limits: BodyLimits,
) -> poem::Result<poem::Response> {
    use poem::IntoResponse;
    if super::signed::is_signed(&req) {
        let (limit, deadline) = limits.of(&req);
        return super::signed::handle(&*ep, req, &state, limit, deadline).await;
    }
    let path = req.uri().path();
    if path.starts_with("/v1/") && !is_whatsapp_webhook(path) {
        let token = req.header("authorization").and_then(|h| {
            let (scheme, token) = h.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
        let known = match token {
            None => false,
            // A store that does not answer is the handler's 503 to give.
            Some(t) => state
                .auth
                .authenticate(t)
                .await
                .map_or(true, |p| p.is_some()),
        };
        if !known {
            use poem_openapi::types::ToJSON;
            let body = Problem::unauthorized().to_json().unwrap_or_default();
            return Ok(poem::Response::builder()
                .status(poem::http::StatusCode::UNAUTHORIZED)
                .content_type("application/problem+json")
                .header("www-authenticate", "Bearer")
                .body(body.to_string()));
        }
    }
    Ok(ep.call(req).await?.into_response())
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

    /// The route template and methods of a path.
    fn find(&self, path: &str) -> Option<&(Vec<String>, String)> {
        let segs: Vec<&str> = path.split('/').collect();
        self.0.iter().find(|(tmpl, _)| {
            tmpl.len() == segs.len()
                && tmpl
                    .iter()
                    .zip(&segs)
                    .all(|(t, s)| t == s || (t.starts_with('{') && t.ends_with('}')))
        })
    }

    pub fn for_path(&self, path: &str) -> Option<String> {
        self.find(path).map(|(_, methods)| methods.clone())
    }

    /// The route template a path matches (`/v1/contacts/{phone}`): what a log may show of a
    /// path, since a path can hold a contact key.
    pub fn route(&self, path: &str) -> Option<String> {
        self.find(path).map(|(tmpl, _)| tmpl.join("/"))
    }
}

/// Who sent a request: the socket's peer, or, when that peer is one of the `trusted` proxies,
/// the last `X-Forwarded-For` address that is not a trusted proxy. A client cannot put another
/// address in the logs by sending the header itself.
pub fn client_addr(req: &poem::Request, trusted: &[IpAddr]) -> Option<IpAddr> {
    let peer = match req.remote_addr().0 {
        poem::Addr::SocketAddr(a) => a.ip(),
        _ => return None,
    };
    if !trusted.contains(&peer) {
        return Some(peer);
    }
    let forwarded = req
        .headers()
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|a| a.trim().parse::<IpAddr>().ok())
        .collect::<Vec<_>>();
    Some(
        forwarded
            .into_iter()
            .rev()
            .find(|a| !trusted.contains(a))
            .unwrap_or(peer),
    )
}

/// One log line per request, with its route template (never the path: it can hold a phone),
/// method, status, time and client address.
async fn log_request<E: poem::Endpoint>(
    ep: Arc<E>,
    req: poem::Request,
    allow: Arc<AllowedMethods>,
    trusted: Arc<Vec<IpAddr>>,
) -> poem::Result<poem::Response> {
    use poem::IntoResponse;
    use tracing::Instrument;
    let route = allow
        .route(req.uri().path())
        .unwrap_or_else(|| "(no route)".into());
    let client = client_addr(&req, &trusted).map_or("-".to_string(), |a| a.to_string());
    let method = req.method().clone();
    let started = std::time::Instant::now();
    let span = tracing::info_span!("http", %method, %route, %client);
    let result = ep
        .call(req)
        .instrument(span.clone())
        .await
        .map(IntoResponse::into_response);
    let status = match &result {
        Ok(r) => r.status().as_u16(),
        Err(e) => e.status().as_u16(),
    };
    span.in_scope(|| tracing::info!(status, ms = started.elapsed().as_millis() as u64, "request"));
    result
}

/// Wraps `app` (the OpenAPI routes, `spec`: their document) in the middleware.
pub fn around(
    app: poem::Route,
    spec: &str,
    settings: &crate::Settings,
    state: Arc<AppState>,
) -> impl Endpoint {
    let allow = Arc::new(AllowedMethods::from_spec(spec));
    let limits = BodyLimits {
        body: settings.max_body_bytes,
        whatsapp: settings.whatsapp_max_body_bytes,
        deadline: std::time::Duration::from_millis(settings.http_body_timeout_ms),
    };
    let trusted = Arc::new(settings.trusted_proxies.clone());
    let routes = allow.clone();
    app.around(move |ep, req| limit_body(ep, req, limits))
        .around(move |ep, req| authenticate_first(ep, req, state.clone(), limits))
        .around(move |ep, req| log_request(ep, req, routes.clone(), trusted.clone()))
        .around(move |ep, req| {
            let allow = allow.clone();
            async move {
                let path = req.uri().path().to_string();
                match ep.call(req).await {
                    Ok(res) => Ok(res),
                    Err(err) => {
                        let methods = (err.status() == poem::http::StatusCode::METHOD_NOT_ALLOWED)
                            .then(|| allow.for_path(&path))
                            .flatten();
                        Ok(problem_response(err, methods))
                    }
                }
            }
        })
        .around(request_id)
}
