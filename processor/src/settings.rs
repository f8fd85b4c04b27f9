//! The processor's settings: defaults, then `FUNNEL_*` environment variables, then flags. Every
//! flag is global: it may come before or after a subcommand.

use std::path::PathBuf;

use funnel_runtime::settings::{DatabaseSettings, KafkaSettings};

#[derive(Debug, Clone, clap::Args)]
pub struct Settings {
    #[command(flatten)]
    pub kafka: KafkaSettings,
    // The sink and the offsets store; `dlq` does not need it.
    #[command(flatten)]
    pub database: DatabaseSettings,
    /// Further topics keyed by contact that must be co-partitioned with the messages topic
    /// (same partition count), comma-separated; the processor refuses to start otherwise
    #[arg(
        long,
        env = "FUNNEL_CO_PARTITIONED_TOPICS",
        value_delimiter = ',',
        default_value = "",
        global = true
    )]
    pub co_partitioned_topics: Vec<String>,
    /// Dead-letter topic
    #[arg(
        long,
        env = "FUNNEL_TOPIC_DLQ",
        default_value = "funnel.dlq",
        global = true
    )]
    pub topic_dlq: String,
    /// Consumer group; also the key of the offsets stored in PostgreSQL (generation n > 1 of a
    /// replay consumes as `<group>.gen-<n>`)
    #[arg(
        long,
        env = "FUNNEL_CONSUMER_GROUP",
        default_value = "funnel-processor",
        global = true
    )]
    pub consumer_group: String,
    /// Address of the processor's own HTTP endpoint (`/metrics`, `/health/live`,
    /// `/health/ready`); empty disables it
    #[arg(
        long,
        env = "FUNNEL_PROCESSOR_ADDR",
        default_value = "127.0.0.1:8090",
        global = true
    )]
    pub http_addr: String,
    /// Static group membership (`group.instance.id`): an instance restarted under the same id
    /// within the session timeout gets its partitions back without a rebalance. Unique per
    /// instance; empty for dynamic membership
    #[arg(long, env = "FUNNEL_INSTANCE_ID", default_value = "", global = true)]
    pub instance_id: String,
    /// Folder of the RocksDB per-contact state (one sub-folder per generation)
    #[arg(
        long,
        env = "FUNNEL_STATE_DIR",
        default_value = "./funnel-state",
        global = true
    )]
    pub state_dir: PathBuf,
    /// Most messages in one batch (one PostgreSQL transaction)
    #[arg(long, env = "FUNNEL_BATCH_MAX", default_value_t = 2000, global = true)]
    pub batch_max: usize,
    /// Most messages in one batch of a generation being built by a replay: nobody reads it
    /// yet, so fewer, larger transactions (docs/replay.md)
    #[arg(
        long,
        env = "FUNNEL_REPLAY_BATCH_MAX",
        default_value_t = 8000,
        global = true
    )]
    pub replay_batch_max: usize,
    /// How long a batch waits for more messages once it has one, in milliseconds
    #[arg(
        long,
        env = "FUNNEL_BATCH_LINGER_MS",
        default_value_t = 50,
        global = true
    )]
    pub batch_linger_ms: u64,
    /// How often to look for a new rule set version, in milliseconds
    #[arg(
        long,
        env = "FUNNEL_RULES_POLL_MS",
        default_value_t = 2000,
        global = true
    )]
    pub rules_poll_ms: u64,
    /// Base URL of Meta's Graph API: conversions go to `<url>/<dataset_id>/events`
    #[arg(
        long,
        env = "FUNNEL_META_GRAPH_URL",
        default_value = "https://graph.facebook.com/v21.0",
        global = true
    )]
    pub meta_graph_url: String,
    /// First wait before a conversion is tried again, in milliseconds (doubled per attempt,
    /// at most an hour)
    #[arg(
        long,
        env = "FUNNEL_CONVERSIONS_RETRY_BASE_MS",
        default_value_t = 5000,
        global = true
    )]
    pub conversions_retry_base_ms: u64,
    /// Attempts before a conversion is parked (`funnel-processor conversions retry` sends it
    /// again)
    #[arg(
        long,
        env = "FUNNEL_CONVERSIONS_MAX_ATTEMPTS",
        default_value_t = 12,
        value_parser = clap::value_parser!(i32).range(1..),
        global = true
    )]
    pub conversions_max_attempts: i32,
    /// How often the sender looks for due conversions, in milliseconds
    #[arg(
        long,
        env = "FUNNEL_CONVERSIONS_POLL_MS",
        default_value_t = 1000,
        global = true
    )]
    pub conversions_poll_ms: u64,
    /// How long a conversion being sent is one processor's, in milliseconds: another takes it
    /// over only after this (a sender that died mid-send); a request gives up after half of it
    #[arg(
        long,
        env = "FUNNEL_CONVERSIONS_LEASE_MS",
        default_value_t = 30_000,
        value_parser = clap::value_parser!(u64).range(1000..),
        global = true
    )]
    pub conversions_lease_ms: u64,
}

impl Settings {
    pub fn sender(&self) -> crate::conversions::sender::SenderSettings {
        crate::conversions::sender::SenderSettings {
            graph_url: self.meta_graph_url.clone(),
            retry_base: std::time::Duration::from_millis(self.conversions_retry_base_ms),
            max_attempts: self.conversions_max_attempts,
            poll: std::time::Duration::from_millis(self.conversions_poll_ms.max(50)),
            lease: std::time::Duration::from_millis(self.conversions_lease_ms),
        }
    }
}
