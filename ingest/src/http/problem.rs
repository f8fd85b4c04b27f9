//! Errors as RFC 9457 problem details (`application/problem+json`), with one entry per invalid
//! field: the typed responses every resource shares ([`common_errors!`]), the mapping of
//! poem-openapi's extractor errors (auth, body, query parameters) onto them, and the answer to
//! any error that escaped the typed responses.

use funnel_schemas::validate::FieldError;
use poem_openapi::Object;

/// One invalid field: where (a JSON pointer), what was wrong, and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, Object)]
#[oai(rename = "FieldError")]
pub struct FieldErrorDoc {
    pub pointer: String,
    pub detail: String,
    pub expected: String,
}

impl From<FieldError> for FieldErrorDoc {
    fn from(e: FieldError) -> Self {
        FieldErrorDoc {
            pointer: e.pointer,
            detail: e.detail,
            expected: e.expected,
        }
    }
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
    pub errors: Vec<FieldErrorDoc>,
}

impl Problem {
    pub fn new(status: u16, kind: &str, title: &str, detail: impl Into<String>) -> Self {
        Problem {
            type_: format!("https://funnel.dev/problems/{kind}"),
            title: title.into(),
            status,
            detail: detail.into(),
            errors: vec![],
        }
    }

    /// A 422 about `what` (`invalid chat message`, `invalid parameters`), listing `errors`.
    pub fn invalid(what: &str, unit: &str, errors: Vec<FieldError>) -> Self {
        let mut p = Problem::new(
            422,
            "validation",
            what,
            format!("{} invalid {unit}(s)", errors.len()),
        );
        p.errors = errors.into_iter().map(FieldErrorDoc::from).collect();
        p
    }

    pub fn invalid_message(errors: Vec<FieldError>) -> Self {
        Problem::invalid("invalid chat message", "field", errors)
    }

    pub fn invalid_params(errors: Vec<FieldError>) -> Self {
        Problem::invalid("invalid parameters", "parameter", errors)
    }

    /// 401: no token, or one that is unknown, revoked or expired.
    pub fn unauthorized() -> Self {
        Problem::new(
            401,
            "unauthorized",
            "missing or invalid bearer token",
            "send Authorization: Bearer <token> with a token that is valid, unrevoked and unexpired",
        )
    }

    /// 503: `what` (a store, the broker) did not answer.
    pub fn unavailable(title: &str, detail: impl Into<String>) -> Self {
        Problem::new(503, "unavailable", title, detail)
    }
}

/// A problem with a query parameter.
pub fn query_error(param: &str, detail: impl Into<String>, expected: &str) -> FieldError {
    FieldError {
        pointer: format!("/query/{param}"),
        detail: detail.into(),
        expected: expected.into(),
    }
}

/// Errors every authenticated endpoint can answer with; [`common_errors!`] maps them onto
/// each endpoint's typed response.
pub enum ApiError {
    Unauthorized(Problem),
    Forbidden(Problem),
    TooLarge(Problem),
    Invalid(Problem),
    /// Over the tenant's rate limit: the problem and the seconds until it would pass.
    TooMany(Problem, u32),
    Unavailable(Problem),
}

impl ApiError {
    /// A refusal by the tenant's rate limits (`what`: `messages` or `requests`).
    pub fn over_limit(what: &str, over: crate::limits::Over, limit: u32) -> Self {
        match over {
            crate::limits::Over::RetryAfter(wait) => {
                let secs = crate::limits::retry_after_secs(wait);
                ApiError::TooMany(
                    Problem::new(
                        429,
                        "rate-limited",
                        "over the tenant's rate limit",
                        format!("at most {limit} {what} per second for this tenant; retry after {secs} s"),
                    ),
                    secs,
                )
            }
            crate::limits::Over::LargerThanBurst { burst } => ApiError::TooLarge(Problem::new(
                413,
                "too-large",
                "batch larger than the tenant's burst",
                format!(
                    "the tenant may send at most {burst} messages at once; send smaller batches"
                ),
            )),
        }
    }

    pub fn invalid_query(errors: Vec<FieldError>) -> Self {
        ApiError::Invalid(Problem::invalid_params(errors))
    }

    /// 503 for a PostgreSQL error (logged; the client learns only that the store is down).
    pub fn store(what: &str, e: sqlx::Error) -> Self {
        tracing::warn!(error = %e, "{what} unavailable");
        ApiError::Unavailable(Problem::unavailable(
            &format!("{what} unavailable"),
            "PostgreSQL did not answer",
        ))
    }
}

/// The answer to a request that failed before its handler: poem-openapi's extractor errors
/// (auth, body, query parameters) as problem details.
fn classify_error(err: &poem::Error) -> (u16, Problem) {
    if let Some(e) = err.downcast_ref::<poem_openapi::error::ParseParamError>() {
        return (
            422,
            Problem::invalid_params(vec![query_error(
                e.name,
                e.reason.clone(),
                expected_param(e.name),
            )]),
        );
    }
    match err.status().as_u16() {
        401 => (401, Problem::unauthorized()),
        413 => (
            413,
            Problem::new(413, "too-large", "request too large", err.to_string()),
        ),
        _ => (
            422,
            Problem::invalid_message(vec![FieldError {
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
        "group_by" => "one of hour, day, week, month, channel, campaign, ad",
        "stage" => "one of lead, booking, transaction",
        "order" => "asc or desc",
        "window_days" => "an integer from 1 to 3650",
        "stuck_days" => "an integer from 0 to 3650",
        "limit" => "an integer from 1 to 1000",
        _ => "a value as described in /openapi.json",
    }
}

/// The `bad_request_handler` of every typed response.
pub fn bad_request<T: From<ApiError>>(err: poem::Error) -> T {
    let (status, p) = classify_error(&err);
    match status {
        401 => ApiError::Unauthorized(p),
        413 => ApiError::TooLarge(p),
        _ => ApiError::Invalid(p),
    }
    .into()
}

/// A typed response with the answers of [`ApiError`] besides the endpoint's own.
macro_rules! common_errors {
    ($name:ident { $($body:tt)* }) => {
        #[derive(poem_openapi::ApiResponse)]
        #[oai(bad_request_handler = "crate::http::problem::bad_request")]
        pub enum $name {
            $($body)*
            /// Missing or invalid bearer token
            #[oai(status = 401, content_type = "application/problem+json")]
            Unauthorized(poem_openapi::payload::Json<$crate::http::problem::Problem>),
            /// The token lacks the scope this endpoint needs
            #[oai(status = 403, content_type = "application/problem+json")]
            Forbidden(poem_openapi::payload::Json<$crate::http::problem::Problem>),
            /// The body is larger than the configured limits
            #[oai(status = 413, content_type = "application/problem+json")]
            TooLarge(poem_openapi::payload::Json<$crate::http::problem::Problem>),
            /// The body is invalid; every invalid field is listed
            #[oai(status = 422, content_type = "application/problem+json")]
            Invalid(poem_openapi::payload::Json<$crate::http::problem::Problem>),
            /// Over the tenant's rate limit; retry after the given seconds
            #[oai(status = 429, content_type = "application/problem+json")]
            TooMany(
                poem_openapi::payload::Json<$crate::http::problem::Problem>,
                #[oai(header = "Retry-After")] u32,
            ),
            /// The broker or the database cannot take the request now; retry after the given seconds
            #[oai(status = 503, content_type = "application/problem+json")]
            Unavailable(
                poem_openapi::payload::Json<$crate::http::problem::Problem>,
                #[oai(header = "Retry-After")] u32,
            ),
        }

        impl From<$crate::http::problem::ApiError> for $name {
            fn from(e: $crate::http::problem::ApiError) -> Self {
                use $crate::http::problem::ApiError;
                use poem_openapi::payload::Json;
                match e {
                    ApiError::Unauthorized(p) => $name::Unauthorized(Json(p)),
                    ApiError::Forbidden(p) => $name::Forbidden(Json(p)),
                    ApiError::TooLarge(p) => $name::TooLarge(Json(p)),
                    ApiError::Invalid(p) => $name::Invalid(Json(p)),
                    ApiError::TooMany(p, secs) => $name::TooMany(Json(p), secs),
                    ApiError::Unavailable(p) => $name::Unavailable(Json(p), 5),
                }
            }
        }
    };
}
pub(crate) use common_errors;

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
