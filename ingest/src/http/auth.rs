//! Bearer tokens at the door of every resource: the token resolves to its tenant and scopes
//! (`crate::queries::tokens`), and the endpoint's scope is checked. The tenant always comes
//! from the token, never from a request.

use poem_openapi::auth::Bearer;
use poem_openapi::SecurityScheme;

use super::problem::{ApiError, Problem};
use crate::queries::tokens::{Principal, Scope};
use crate::state::AppState;

/// Bearer token of one tenant with scopes `ingest`, `read` and/or `admin`.
#[derive(SecurityScheme)]
#[oai(ty = "bearer")]
pub struct BearerAuth(Bearer);

/// The principal of a bearer token that has `scope`.
pub async fn authorize(
    state: &AppState,
    auth: &BearerAuth,
    scope: Scope,
) -> Result<Principal, ApiError> {
    let found = state
        .auth
        .authenticate(&auth.0.token)
        .await
        .map_err(|e| ApiError::store("token store", e))?;
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
