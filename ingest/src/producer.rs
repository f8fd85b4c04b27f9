//! Produces chat messages to Kafka: Avro in the Confluent wire format under the id the
//! registry gave the schema, keyed by the contact's E.164 phone, murmur2-partitioned like the
//! Java client, idempotent with acks=all. A request is answered only after the broker's ack.

use std::time::Duration;

use funnel_runtime::kafka::producer_config;
use funnel_schemas::{encode, ChatMessage};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use crate::settings::Settings;

#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    /// The producer queue is full or the broker did not acknowledge in time: answer 503.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// The record is larger than the producer or the broker takes: this message never goes
    /// through, so it is the item's error (a 422), not a 503 a client would retry for ever.
    #[error("the encoded record ({0} bytes) is larger than the broker accepts")]
    TooLarge(usize),
    #[error("encoding: {0}")]
    Encode(#[from] funnel_schemas::WireError),
}

pub struct Delivered {
    pub partition: i32,
    pub offset: i64,
}

pub struct MessageProducer {
    producer: FutureProducer,
    topic: String,
    schema_id: u32,
    timeout: Duration,
}

impl MessageProducer {
    pub fn new(settings: &Settings, schema_id: u32) -> anyhow::Result<Self> {
        let producer: FutureProducer = producer_config(&settings.kafka)?
            .set("linger.ms", settings.producer_linger_ms.to_string())
            .set(
                "queue.buffering.max.messages",
                settings.producer_queue_max.to_string(),
            )
            .set(
                "message.timeout.ms",
                settings.produce_timeout_ms.to_string(),
            )
            .create()?;
        Ok(Self {
            producer,
            topic: settings.kafka.topic_messages.clone(),
            schema_id,
            timeout: Duration::from_millis(settings.produce_timeout_ms),
        })
    }

    pub async fn send(
        &self,
        msg: &ChatMessage,
        request_id: &str,
        traceparent: Option<&str>,
    ) -> Result<Delivered, ProduceError> {
        let value = encode(self.schema_id, msg)?;
        let mut headers = OwnedHeaders::new().insert(Header {
            key: "x-request-id",
            value: Some(request_id),
        });
        if let Some(tp) = traceparent {
            headers = headers.insert(Header {
                key: "traceparent",
                value: Some(tp),
            });
        }
        let record = FutureRecord::to(&self.topic)
            .key(msg.phone.as_bytes())
            .payload(&value)
            .headers(headers);
        // Enqueue without waiting for room: a full queue is answered with 503 at once.
        let delivery = self
            .producer
            .send_result(record)
            .map_err(|(e, _)| match e {
                KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull) => {
                    ProduceError::Unavailable("producer queue is full".into())
                }
                KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge) => {
                    ProduceError::TooLarge(value.len())
                }
                other => ProduceError::Unavailable(other.to_string()),
            })?;
        match tokio::time::timeout(self.timeout + Duration::from_secs(1), delivery).await {
            Ok(Ok(Ok(d))) => Ok(Delivered {
                partition: d.partition,
                offset: d.offset,
            }),
            Ok(Ok(Err((
                KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge),
                _,
            )))) => Err(ProduceError::TooLarge(value.len())),
            Ok(Ok(Err((e, _)))) => Err(ProduceError::Unavailable(e.to_string())),
            Ok(Err(_canceled)) => Err(ProduceError::Unavailable("producer closed".into())),
            Err(_) => Err(ProduceError::Unavailable(
                "no acknowledgement in time".into(),
            )),
        }
    }

    /// Whether the cluster answers a metadata request for the topic.
    pub async fn broker_ready(&self) -> bool {
        let producer = self.producer.clone();
        let topic = self.topic.clone();
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(Some(&topic), Duration::from_secs(3))
                .is_ok_and(|m| {
                    m.topics()
                        .iter()
                        .any(|t| t.error().is_none() && !t.partitions().is_empty())
                })
        })
        .await
        .unwrap_or(false)
    }

    pub fn flush(&self, timeout: Duration) {
        let _ = self.producer.flush(timeout);
    }
}
