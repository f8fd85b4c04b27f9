//! The HTTP API's settings: defaults, then `FUNNEL_*` environment variables, then flags. Every
//! flag is global: it may come before or after a subcommand.

use funnel_runtime::settings::{DatabaseSettings, KafkaSettings};

#[derive(Debug, Clone, clap::Args)]
pub struct Settings {
    /// Address the HTTP API listens on
    #[arg(
        long,
        env = "FUNNEL_HTTP_ADDR",
        default_value = "127.0.0.1:8080",
        global = true
    )]
    pub http_addr: String,
    // Tokens, rules and the funnel tables; readiness needs PostgreSQL to answer.
    #[command(flatten)]
    pub database: DatabaseSettings,
    #[command(flatten)]
    pub kafka: KafkaSettings,
    /// Region for phone numbers written in national form (ISO 3166-1 alpha-2)
    #[arg(
        long,
        env = "FUNNEL_DEFAULT_REGION",
        default_value = "ID",
        global = true
    )]
    pub default_region: String,
    /// How long a request waits for the broker's acknowledgement before answering 503, in ms
    #[arg(
        long,
        env = "FUNNEL_PRODUCE_TIMEOUT_MS",
        default_value_t = 10_000,
        global = true
    )]
    pub produce_timeout_ms: u64,
    /// How long the producer waits to fill a batch, in ms (latency against broker load)
    #[arg(
        long,
        env = "FUNNEL_PRODUCER_LINGER_MS",
        default_value_t = 5,
        global = true
    )]
    pub producer_linger_ms: u32,
    /// Most messages waiting in the producer queue; past it requests get 503
    #[arg(
        long,
        env = "FUNNEL_PRODUCER_QUEUE_MAX",
        default_value_t = 100_000,
        global = true
    )]
    pub producer_queue_max: u32,
    /// Largest request body, in bytes (413 past it)
    #[arg(long, env = "FUNNEL_MAX_BODY_BYTES", default_value_t = 16 * 1024 * 1024, global = true)]
    pub max_body_bytes: usize,
    /// Largest message text, in bytes
    #[arg(long, env = "FUNNEL_MAX_TEXT_BYTES", default_value_t = 64 * 1024, global = true)]
    pub max_text_bytes: usize,
    /// Most metadata entries of a message
    #[arg(
        long,
        env = "FUNNEL_MAX_METADATA_ENTRIES",
        default_value_t = 32,
        global = true
    )]
    pub max_metadata_entries: usize,
    /// Most messages in one batch request (413 past it)
    #[arg(long, env = "FUNNEL_MAX_BATCH", default_value_t = 1000, global = true)]
    pub max_batch: usize,
}

impl Settings {
    pub fn limits(&self) -> funnel_schemas::validate::Limits {
        funnel_schemas::validate::Limits {
            max_text_bytes: self.max_text_bytes,
            max_metadata_entries: self.max_metadata_entries,
        }
    }
}
