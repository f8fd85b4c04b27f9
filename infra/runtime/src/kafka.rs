//! Kafka client configurations. Every client of Funnel starts from [`client_config`]: the
//! brokers and the TLS and SASL settings (docs/security.md). Every producer (the HTTP API, dead
//! letters, redrive, the load tool) then takes [`producer_config`], the producer contract:
//! idempotent, acks=all, and the Java client's `murmur2_random` partitioner, so any client
//! producing the same key (the contact's phone) reaches the same partition. Consumers take
//! [`consumer_config`]: Funnel's offsets live in PostgreSQL with the rows, so nothing commits
//! on its own.

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, ConsumerContext};
use rdkafka::error::KafkaError;

use crate::settings::{KafkaSecurity, KafkaSettings};

/// How long a metadata, watermark or offsets request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Kafka settings that cannot work together, found before any client is made.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    #[error("FUNNEL_KAFKA_SECURITY_PROTOCOL={0} needs FUNNEL_KAFKA_SASL_USERNAME and FUNNEL_KAFKA_SASL_PASSWORD (or _FILE)")]
    SaslWithoutCredentials(&'static str),
    #[error("FUNNEL_KAFKA_SASL_USERNAME is set but FUNNEL_KAFKA_SECURITY_PROTOCOL={0} does not use SASL: set it to sasl_ssl (or sasl_plaintext)")]
    CredentialsWithoutSasl(&'static str),
    #[error("FUNNEL_KAFKA_SSL_* is set but FUNNEL_KAFKA_SECURITY_PROTOCOL={0} does not use TLS: set it to ssl or sasl_ssl")]
    TlsFilesWithoutTls(&'static str),
}

impl KafkaSecurity {
    /// Refuses settings that would fail only at the first connection, or silently not apply.
    pub fn check(&self) -> Result<(), SecurityError> {
        let p = self.protocol;
        if p.sasl() && (self.sasl_username.is_none() || self.sasl_password().is_none()) {
            return Err(SecurityError::SaslWithoutCredentials(p.as_str()));
        }
        if !p.sasl() && self.sasl_username.is_some() {
            return Err(SecurityError::CredentialsWithoutSasl(p.as_str()));
        }
        if !p.tls() && (self.ssl_ca_location.is_some() || self.ssl_certificate_location.is_some()) {
            return Err(SecurityError::TlsFilesWithoutTls(p.as_str()));
        }
        Ok(())
    }

    fn apply(&self, c: &mut ClientConfig) {
        c.set("security.protocol", self.protocol.as_str());
        if self.protocol.sasl() {
            c.set("sasl.mechanism", self.sasl_mechanism.as_str());
            if let Some(u) = &self.sasl_username {
                c.set("sasl.username", u);
            }
            if let Some(p) = self.sasl_password() {
                c.set("sasl.password", p);
            }
        }
        if self.protocol.tls() {
            for (key, value) in [
                ("ssl.ca.location", &self.ssl_ca_location),
                ("ssl.certificate.location", &self.ssl_certificate_location),
                ("ssl.key.location", &self.ssl_key_location),
            ] {
                if let Some(v) = value {
                    c.set(key, v);
                }
            }
            if let Some(p) = &self.ssl_key_password_file {
                c.set("ssl.key.password", p.expose());
            }
        }
    }
}

/// The brokers and the TLS and SASL settings: what every client of Funnel starts from.
pub fn client_config(kafka: &KafkaSettings) -> Result<ClientConfig, SecurityError> {
    kafka.security.check()?;
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &kafka.brokers);
    kafka.security.apply(&mut c);
    Ok(c)
}

/// The producer contract; callers add their own tuning (linger, queue size, timeouts).
pub fn producer_config(kafka: &KafkaSettings) -> Result<ClientConfig, SecurityError> {
    let mut c = client_config(kafka)?;
    c.set("acks", "all")
        .set("enable.idempotence", "true")
        // The Java client's default: any client producing with the same key lands on the same
        // partition.
        .set("partitioner", "murmur2_random")
        .set("compression.type", "lz4");
    Ok(c)
}

/// A consumer of `group` that reads committed records only and commits nothing by itself:
/// offsets are stored explicitly, after what they cover is durable.
pub fn consumer_config(kafka: &KafkaSettings, group: &str) -> Result<ClientConfig, SecurityError> {
    let mut c = client_config(kafka)?;
    c.set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed");
    Ok(c)
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
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::settings::{SaslMechanism, Secret, SecurityProtocol};

    fn settings(security: KafkaSecurity) -> KafkaSettings {
        KafkaSettings {
            brokers: "b:1".into(),
            registry_url: String::new(),
            topic_messages: String::new(),
            security,
            registry_auth: Default::default(),
        }
    }

    #[test]
    fn every_producer_gets_the_contract() {
        let k = settings(KafkaSecurity::default());
        let c = producer_config(&k).unwrap();
        for (k, v) in [
            ("bootstrap.servers", "b:1"),
            ("acks", "all"),
            ("enable.idempotence", "true"),
            ("partitioner", "murmur2_random"),
            ("security.protocol", "plaintext"),
        ] {
            assert_eq!(c.get(k), Some(v), "{k}");
        }
        let c = consumer_config(&k, "g").unwrap();
        assert_eq!(c.get("enable.auto.commit"), Some("false"));
        assert_eq!(c.get("isolation.level"), Some("read_committed"));
        assert_eq!(c.get("group.id"), Some("g"));
    }

    #[test]
    fn every_client_gets_the_security_settings() {
        let k = settings(KafkaSecurity {
            protocol: SecurityProtocol::SaslSsl,
            sasl_mechanism: SaslMechanism::ScramSha256,
            sasl_username: Some("funnel-ingest".into()),
            sasl_password_file: Some(Secret::new("s3cret")),
            ssl_ca_location: Some("/ca.pem".into()),
            ..Default::default()
        });
        for c in [
            client_config(&k).unwrap(),
            producer_config(&k).unwrap(),
            consumer_config(&k, "g").unwrap(),
        ] {
            assert_eq!(c.get("security.protocol"), Some("sasl_ssl"));
            assert_eq!(c.get("sasl.mechanism"), Some("SCRAM-SHA-256"));
            assert_eq!(c.get("sasl.username"), Some("funnel-ingest"));
            assert_eq!(c.get("sasl.password"), Some("s3cret"));
            assert_eq!(c.get("ssl.ca.location"), Some("/ca.pem"));
        }
        // The password never reaches a log line through Debug.
        assert!(!format!("{k:?}").contains("s3cret"));
    }

    #[test]
    fn settings_that_cannot_work_are_refused_before_a_client_is_made() {
        let sasl_alone = settings(KafkaSecurity {
            protocol: SecurityProtocol::SaslSsl,
            sasl_username: Some("u".into()),
            ..Default::default()
        });
        assert!(matches!(
            client_config(&sasl_alone),
            Err(SecurityError::SaslWithoutCredentials("sasl_ssl"))
        ));
        let user_without_sasl = settings(KafkaSecurity {
            protocol: SecurityProtocol::Ssl,
            sasl_username: Some("u".into()),
            sasl_password: Some(Secret::new("p")),
            ..Default::default()
        });
        assert!(matches!(
            client_config(&user_without_sasl),
            Err(SecurityError::CredentialsWithoutSasl("ssl"))
        ));
        let ca_without_tls = settings(KafkaSecurity {
            ssl_ca_location: Some("/ca.pem".into()),
            ..Default::default()
        });
        assert!(matches!(
            client_config(&ca_without_tls),
            Err(SecurityError::TlsFilesWithoutTls("plaintext"))
        ));
    }
}
