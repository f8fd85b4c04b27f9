//! The HTTP API's settings: defaults, then `FUNNEL_*` environment variables, then flags. Every
//! flag is global: it may come before or after a subcommand.

use std::num::NonZeroU32;

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
    /// Largest WhatsApp webhook payload, in bytes (Meta sends at most 3 MB; 413 past it)
    #[arg(
        long,
        env = "FUNNEL_WHATSAPP_MAX_BODY_BYTES",
        default_value_t = 4 * 1024 * 1024,
        global = true
    )]
    pub whatsapp_max_body_bytes: usize,
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
    /// Messages per second a tenant may send, unless `tenant limits` stored its own
    #[arg(
        long,
        env = "FUNNEL_LIMIT_MESSAGES_PER_SECOND",
        default_value_t = NonZeroU32::new(10_000).expect("positive"),
        global = true
    )]
    pub limit_messages_per_second: NonZeroU32,
    /// Messages a tenant may send at once over its rate, unless `tenant limits` stored its own
    #[arg(
        long,
        env = "FUNNEL_LIMIT_BURST",
        default_value_t = NonZeroU32::new(20_000).expect("positive"),
        global = true
    )]
    pub limit_burst: NonZeroU32,
    /// Requests per second a tenant may make to the read and admin endpoints, unless
    /// `tenant limits` stored its own
    #[arg(
        long,
        env = "FUNNEL_LIMIT_READS_PER_SECOND",
        default_value_t = NonZeroU32::new(100).expect("positive"),
        global = true
    )]
    pub limit_reads_per_second: NonZeroU32,
    /// Longest a query of a read endpoint may run, in ms (PostgreSQL statement_timeout; 503
    /// past it)
    #[arg(
        long,
        env = "FUNNEL_READ_TIMEOUT_MS",
        default_value_t = 15_000,
        global = true
    )]
    pub read_timeout_ms: u64,
    /// Addresses of the reverse proxies whose `X-Forwarded-For` is believed (comma-separated
    /// IPs); from anyone else the header is ignored and the socket's peer is the client
    #[arg(
        long,
        env = "FUNNEL_TRUSTED_PROXIES",
        value_delimiter = ',',
        global = true
    )]
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// Most connections served at once; past it new ones wait in the accept queue
    #[arg(
        long,
        env = "FUNNEL_HTTP_MAX_CONNECTIONS",
        default_value_t = 1024,
        global = true
    )]
    pub http_max_connections: usize,
    /// A connection that sends and receives nothing for this long is closed, in ms
    #[arg(
        long,
        env = "FUNNEL_HTTP_IDLE_TIMEOUT_MS",
        default_value_t = 60_000,
        global = true
    )]
    pub http_idle_timeout_ms: u64,
    /// Longest a request's head (request line and headers) may take to arrive, in ms, from its
    /// first byte (from the connection's opening, for the first request); past it the
    /// connection is closed
    #[arg(
        long,
        env = "FUNNEL_HTTP_HEADER_TIMEOUT_MS",
        default_value_t = 10_000,
        global = true
    )]
    pub http_header_timeout_ms: u64,
    /// Longest a client may take to send a request body, in ms (408 past it)
    #[arg(
        long,
        env = "FUNNEL_HTTP_BODY_TIMEOUT_MS",
        default_value_t = 30_000,
        global = true
    )]
    pub http_body_timeout_ms: u64,
}

impl Settings {
    /// The rate limits of a tenant that stored none.
    pub fn default_limits(&self) -> crate::limits::Effective {
        crate::limits::Effective {
            messages_per_second: self.limit_messages_per_second,
            burst: self.limit_burst,
            reads_per_second: self.limit_reads_per_second,
        }
    }

    pub fn limits(&self) -> funnel_schemas::validate::Limits {
        funnel_schemas::validate::Limits {
            max_text_bytes: self.max_text_bytes,
            max_metadata_entries: self.max_metadata_entries,
        }
    }
}
