//! Test harness: a test's share of the stack (`funnel_http::testing::Stack`: topics, database,
//! consumer group, state folder, a token) with the processor's settings on it, and both
//! services run in-process.

use std::ops::Deref;

pub use funnel_http::testing::{call, start_ingest};
pub use funnel_runtime::testing::{eventually, Running};

/// The HTTP crate's test stack, with the processor's settings.
pub struct Stack(funnel_http::testing::Stack);

impl Deref for Stack {
    type Target = funnel_http::testing::Stack;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl Stack {
    pub async fn new(partitions: i32) -> Stack {
        Stack(funnel_http::testing::Stack::new(partitions).await)
    }

    /// The processor's settings on the stack: small batches, a fast rules poll, no HTTP
    /// endpoint.
    pub fn processor_settings(&self) -> funnel_processor::Settings {
        funnel_processor::Settings {
            kafka: self.kafka(),
            database: self.database(),
            topic_dlq: self.dlq.clone(),
            consumer_group: self.group.clone(),
            state_dir: self.state_dir.clone(),
            batch_max: 500,
            replay_batch_max: 500,
            batch_linger_ms: 20,
            rules_poll_ms: 500,
            http_addr: String::new(),
            instance_id: String::new(),
            co_partitioned_topics: vec![],
            // No channel has a dataset here: nothing is ever posted.
            meta_graph_url: "http://127.0.0.1:9/graph".into(),
            conversions_retry_base_ms: 100,
            conversions_max_attempts: 3,
            conversions_poll_ms: 200,
            conversions_lease_ms: 5000,
        }
    }
}

pub fn start_processor(settings: funnel_processor::Settings) -> Running {
    Running::start(|token| funnel_processor::run(settings, token))
}
