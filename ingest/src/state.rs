//! What every handler shares.

use std::sync::Arc;

use funnel_schemas::phone::Region;
use funnel_schemas::rules::Classifier;
use funnel_schemas::validate::Limits;

use crate::limits::Limiter;
use crate::metrics::Metrics;
use crate::producer::MessageProducer;
use crate::queries::tokens::Authenticator;

pub struct AppState {
    pub producer: MessageProducer,
    /// Region of phone numbers written in national form.
    pub region: Region,
    pub limits: Limits,
    pub max_batch: usize,
    pub db: sqlx::PgPool,
    pub auth: Authenticator,
    /// Seals paging cursors.
    pub sealer: crate::http::seal::Sealer,
    /// Per-tenant rate limits.
    pub limiter: Limiter,
    pub metrics: Metrics,
    /// Compiled rule sets by version, for `POST /v1/classify`.
    pub classifiers: quick_cache::sync::Cache<i64, Arc<Classifier>>,
}
