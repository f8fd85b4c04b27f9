//! Middleware around every route: a request id on every request (logged, produced with the
//! record, echoed back), a body limit that answers 413 whether or not the length is announced,
//! and problem details for every error that escaped the typed responses (a 405 naming the
//! allowed methods).

use std::sync::Arc;

use poem::{Endpoint, EndpointExt};

use super::problem::problem_response;

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

/// Wraps `app` (the OpenAPI routes, `spec`: their document) in the middleware.
pub fn around(app: poem::Route, spec: &str, max_body: usize) -> impl Endpoint {
    let allow = Arc::new(AllowedMethods::from_spec(spec));
    app.around(move |ep, req| limit_body(ep, req, max_body))
        .with(poem::middleware::Tracing)
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
