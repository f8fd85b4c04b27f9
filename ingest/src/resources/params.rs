//! Query parameters more than one resource takes, parsed with every problem named at once.

use chrono::NaiveDate;
use chrono_tz::Tz;
use funnel_schemas::validate::FieldError;

use crate::http::problem::{query_error, ApiError};
use crate::queries::report::tenant_time_zone;
use crate::state::AppState;

/// `tz`, or the tenant's time zone; an unknown zone is added to `errors` (Ok(None)).
pub async fn time_zone(
    state: &AppState,
    tenant: &str,
    tz: Option<&str>,
    errors: &mut Vec<FieldError>,
) -> Result<Option<Tz>, ApiError> {
    let name = match tz {
        Some(tz) => tz.to_string(),
        None => tenant_time_zone(&state.db, tenant)
            .await
            .map_err(|e| ApiError::store("funnel tables", e))?,
    };
    match name.parse::<Tz>() {
        Ok(tz) => Ok(Some(tz)),
        Err(_) => {
            errors.push(query_error(
                "tz",
                format!("unknown time zone {name:?}"),
                "an IANA time zone such as Asia/Jakarta or UTC",
            ));
            Ok(None)
        }
    }
}

/// A date `YYYY-MM-DD`; a bad one is added to `errors`.
pub fn date(param: &str, raw: &str, errors: &mut Vec<FieldError>) -> Option<NaiveDate> {
    match NaiveDate::parse_from_str(raw, "%Y-%m-%d") {
        Ok(d) => Some(d),
        Err(e) => {
            errors.push(query_error(
                param,
                format!("{raw:?} is not a date: {e}"),
                "a date YYYY-MM-DD",
            ));
            None
        }
    }
}
