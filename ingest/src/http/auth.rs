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

/// The principal of a bearer token that has `scope`; for the read and admin endpoints, one
/// request taken from the tenant's read limit.
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
    let p = found.ok_or_else(|| ApiError::Unauthorized(Problem::unauthorized()))?;
    if !p.has(scope) {
        return Err(ApiError::Forbidden(Problem::new(
            403,
            "forbidden",
            "insufficient scope",
            format!("this endpoint needs the `{}` scope", scope.as_str()),
        )));
    }
    if scope != Scope::Ingest {
        // Messages are counted by the message handlers (a batch counts its messages).
        state.limiter.read(&p.tenant).map_err(|over| {
            let limit = state.limiter.limits(&p.tenant).reads_per_second.get();
            ApiError::over_limit("requests", over, limit)
        })?;
    }
    Ok(p)
}
