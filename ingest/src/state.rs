//! What every handler shares.

use std::sync::Arc;

use funnel_schemas::phone::Region;
use funnel_schemas::rules::Classifier;
use funnel_schemas::validate::Limits;

use crate::http::signed::WebhookSecrets;
use crate::limits::Limiter;
use crate::metrics::Metrics;
use crate::producer::MessageProducer;
use crate::queries::channels::Channels;
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
    pub sealer: funnel_runtime::seal::Sealer,
    /// Seals the channels' secrets (`channel_key`).
    pub channel_sealer: funnel_runtime::seal::Sealer,
    /// The active intake channels, reloaded every few seconds.
    pub channels: Channels,
    /// The active Standard Webhooks secrets, reloaded every few seconds.
    pub webhook_secrets: WebhookSecrets,
    /// Per-tenant rate limits.
    pub limiter: Limiter,
    pub metrics: Metrics,
    /// Compiled rule sets by version, for `POST /v1/classify`.
    pub classifiers: quick_cache::sync::Cache<i64, Arc<Classifier>>,
}
