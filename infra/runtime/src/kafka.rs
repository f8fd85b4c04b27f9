//! Kafka client configurations. Every producer of Funnel (the HTTP API, dead letters, redrive,
//! the load tool) starts from [`producer_config`], the producer contract: idempotent, acks=all,
//! and the Java client's `murmur2_random` partitioner, so any client producing the same key
//! (the contact's phone) reaches the same partition. Consumers start from [`consumer_config`]:
//! Funnel's offsets live in PostgreSQL with the rows, so nothing commits on its own.

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, ConsumerContext};
use rdkafka::error::KafkaError;

/// How long a metadata, watermark or offsets request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The producer contract; callers add their own tuning (linger, queue size, timeouts).
pub fn producer_config(brokers: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        // The Java client's default: any client producing with the same key lands on the same
        // partition.
        .set("partitioner", "murmur2_random")
        .set("compression.type", "lz4");
    c
}

/// A consumer of `group` that reads committed records only and commits nothing by itself:
/// offsets are stored explicitly, after what they cover is durable.
pub fn consumer_config(brokers: &str, group: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed");
    c
}

#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    #[error("cannot read the metadata of topic {topic}: {source}")]
    Metadata { topic: String, source: KafkaError },
    #[error("topic {0} does not exist")]
    Missing(String),
}

/// The partitions of `topic`, in order (blocking: call it off the async runtime's threads).
pub fn partitions_of<C: ConsumerContext + 'static>(
    c: &impl Consumer<C>,
    topic: &str,
) -> Result<Vec<i32>, TopicError> {
    let md = c
        .fetch_metadata(Some(topic), REQUEST_TIMEOUT)
        .map_err(|source| TopicError::Metadata {
            topic: topic.to_string(),
            source,
        })?;
    let t = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .filter(|t| t.error().is_none() && !t.partitions().is_empty())
        .ok_or_else(|| TopicError::Missing(topic.to_string()))?;
    let mut ps: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
    ps.sort_unstable();
    Ok(ps)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_producer_gets_the_contract() {
        let c = producer_config("b:1");
        for (k, v) in [
            ("bootstrap.servers", "b:1"),
            ("acks", "all"),
            ("enable.idempotence", "true"),
            ("partitioner", "murmur2_random"),
        ] {
            assert_eq!(c.get(k), Some(v), "{k}");
        }
        let c = consumer_config("b:1", "g");
        assert_eq!(c.get("enable.auto.commit"), Some("false"));
        assert_eq!(c.get("isolation.level"), Some("read_committed"));
        assert_eq!(c.get("group.id"), Some("g"));
    }
}
