//! The dead-letter topic: [`DeadLetters`] produces a poison record there (original key, value
//! and headers, plus headers naming the error and where it came from); from the command line,
//! `funnel-processor dlq list` shows what is there and why, `funnel-processor dlq redrive`
//! sends it back to its source topic once the cause is fixed (a schema registered, a processor
//! upgraded).
//!
//! Redrive progress is the committed offset of the consumer group `<group>-dlq-redrive` on the
//! dead-letter topic: each redrive takes the entries after it, up to the end the topic had when
//! the command started, produces them (acks=all, idempotent) and commits only after every one
//! was acknowledged. A crash in between redrives some entries twice; the processor drops the
//! copies by event id, however late (every id of a contact is kept). A message that is still
//! poison comes back as a new dead letter.

use std::collections::BTreeMap;
use std::time::Duration;

use funnel_runtime::kafka::{consumer_config, partitions_of, producer_config, REQUEST_TIMEOUT};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

use crate::settings::Settings;

/// Header names of a dead letter.
pub const ERROR: &str = "funnel.error";
pub const SOURCE_TOPIC: &str = "funnel.source.topic";
pub const SOURCE_PARTITION: &str = "funnel.source.partition";
pub const SOURCE_OFFSET: &str = "funnel.source.offset";
/// Set on a redriven message: the dead letter it came from (`topic/partition/offset`).
pub const REDRIVEN_FROM: &str = "funnel.redriven.from";

/// How long a produce may wait for the broker's acknowledgement.
const PRODUCE_TIMEOUT: Duration = Duration::from_secs(30);

fn producer(settings: &Settings) -> anyhow::Result<FutureProducer> {
    Ok(producer_config(&settings.kafka)?
        .set(
            "message.timeout.ms",
            PRODUCE_TIMEOUT.as_millis().to_string(),
        )
        .create()?)
}

/// A copy of `m` (key, value) for `topic`, with `headers`.
fn copy_of<'a>(
    m: &'a impl Message,
    topic: &'a str,
    headers: OwnedHeaders,
) -> FutureRecord<'a, [u8], [u8]> {
    let mut record = FutureRecord::<[u8], [u8]>::to(topic).headers(headers);
    if let Some(k) = m.key() {
        record = record.key(k);
    }
    if let Some(v) = m.payload() {
        record = record.payload(v);
    }
    record
}

/// The producer of dead letters.
pub struct DeadLetters {
    producer: FutureProducer,
    topic: String,
    source_topic: String,
}

impl DeadLetters {
    pub fn new(settings: &Settings) -> anyhow::Result<Self> {
        Ok(Self {
            producer: producer(settings)?,
            topic: settings.topic_dlq.clone(),
            source_topic: settings.kafka.topic_messages.clone(),
        })
    }

    /// Produces a dead letter of `msg` and waits for the broker's acknowledgement.
    pub async fn send(&self, msg: &impl Message, reason: &str) -> Result<(), KafkaError> {
        tracing::warn!(
            partition = msg.partition(),
            offset = msg.offset(),
            error = reason,
            "dead-lettering message"
        );
        let partition = msg.partition().to_string();
        let offset = msg.offset().to_string();
        let mut headers = OwnedHeaders::new();
        for (key, value) in [
            (ERROR, reason),
            (SOURCE_TOPIC, self.source_topic.as_str()),
            (SOURCE_PARTITION, partition.as_str()),
            (SOURCE_OFFSET, offset.as_str()),
        ] {
            headers = headers.insert(Header {
                key,
                value: Some(value),
            });
        }
        for h in msg.headers().iter().flat_map(|h| h.iter()) {
            headers = headers.insert(Header {
                key: h.key,
                value: h.value,
            });
        }
        self.producer
            .send(copy_of(msg, &self.topic, headers), PRODUCE_TIMEOUT)
            .await
            .map(|_| ())
            .map_err(|(e, _)| e)
    }
}

/// One entry of the dead-letter topic.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    pub partition: i32,
    pub offset: i64,
    /// When it was dead-lettered, Unix milliseconds.
    pub timestamp_ms: Option<i64>,
    pub error: String,
    pub source_topic: String,
    pub source_partition: Option<i32>,
    pub source_offset: Option<i64>,
    /// The record key (the phone), lossily decoded as UTF-8.
    pub key: Option<String>,
    pub value_bytes: usize,
    /// Whether an earlier redrive already sent it back.
    pub redriven: bool,
}

fn redrive_group(settings: &Settings) -> String {
    format!("{}-dlq-redrive", settings.consumer_group)
}

fn consumer(settings: &Settings) -> anyhow::Result<BaseConsumer> {
    Ok(consumer_config(&settings.kafka, &redrive_group(settings))?.create()?)
}

/// Per partition of the dead-letter topic: (where redrive stands, the end now).
fn positions(c: &BaseConsumer, topic: &str) -> anyhow::Result<BTreeMap<i32, (i64, i64)>> {
    let parts = partitions_of(c, topic)
        .map_err(|e| anyhow::anyhow!("dead-letter {e} (FUNNEL_TOPIC_DLQ)"))?;
    let mut tpl = TopicPartitionList::new();
    for p in &parts {
        tpl.add_partition(topic, *p);
    }
    let committed = c.committed_offsets(tpl, REQUEST_TIMEOUT)?;
    let mut out = BTreeMap::new();
    for p in parts {
        let (low, high) = c.fetch_watermarks(topic, p, REQUEST_TIMEOUT)?;
        let done = committed
            .find_partition(topic, p)
            .and_then(|e| e.offset().to_raw())
            .filter(|o| *o >= 0)
            .unwrap_or(low)
            .max(low);
        out.insert(p, (done, high));
    }
    Ok(out)
}

/// Reads each partition from `from` (inclusive) to `to` (exclusive), calling `each`.
fn read(
    c: &BaseConsumer,
    topic: &str,
    ranges: &BTreeMap<i32, (i64, i64)>,
    mut each: impl FnMut(&rdkafka::message::BorrowedMessage<'_>) -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let mut tpl = TopicPartitionList::new();
    let mut pending: BTreeMap<i32, i64> = BTreeMap::new();
    for (p, (from, to)) in ranges {
        if from < to {
            tpl.add_partition_offset(topic, *p, Offset::Offset(*from))?;
            pending.insert(*p, *to);
        }
    }
    if pending.is_empty() {
        return Ok(());
    }
    c.assign(&tpl)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while !pending.is_empty() {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "timed out reading {topic}; partitions left: {:?}",
            pending.keys().collect::<Vec<_>>()
        );
        let Some(m) = c.poll(Duration::from_millis(500)) else {
            continue;
        };
        let m = m?;
        let Some(&end) = pending.get(&m.partition()) else {
            continue;
        };
        if m.offset() >= end {
            pending.remove(&m.partition());
            continue;
        }
        if !each(&m)? {
            return Ok(());
        }
        if m.offset() + 1 >= end {
            pending.remove(&m.partition());
        }
    }
    Ok(())
}

fn header(m: &impl Message, name: &str) -> Option<String> {
    m.headers()?
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

fn entry(m: &impl Message, redriven: bool) -> DeadLetter {
    DeadLetter {
        partition: m.partition(),
        offset: m.offset(),
        timestamp_ms: m.timestamp().to_millis(),
        error: header(m, ERROR).unwrap_or_else(|| "(no error header)".into()),
        source_topic: header(m, SOURCE_TOPIC).unwrap_or_default(),
        source_partition: header(m, SOURCE_PARTITION).and_then(|v| v.parse().ok()),
        source_offset: header(m, SOURCE_OFFSET).and_then(|v| v.parse().ok()),
        key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
        value_bytes: m.payload().map_or(0, <[u8]>::len),
        redriven,
    }
}

/// Up to `limit` dead letters, oldest first per partition.
pub async fn list(settings: &Settings, limit: usize) -> anyhow::Result<Vec<DeadLetter>> {
    let settings = settings.clone();
    tokio::task::spawn_blocking(move || {
        let c = consumer(&settings)?;
        let topic = &settings.topic_dlq;
        let pos = positions(&c, topic)?;
        let ranges: BTreeMap<i32, (i64, i64)> = pos
            .iter()
            .map(|(p, (_, high))| {
                let (low, _) = c.fetch_watermarks(topic, *p, REQUEST_TIMEOUT)?;
                Ok((*p, (low, *high)))
            })
            .collect::<anyhow::Result<_>>()?;
        let mut out = Vec::new();
        read(&c, topic, &ranges, |m| {
            let done = pos.get(&m.partition()).map_or(0, |(d, _)| *d);
            out.push(entry(m, m.offset() < done));
            Ok(out.len() < limit)
        })?;
        Ok(out)
    })
    .await?
}

/// What a redrive did.
#[derive(Debug, Default, Serialize)]
pub struct RedriveReport {
    /// Entries sent back, by source topic.
    pub redriven: BTreeMap<String, u64>,
    /// Entries without a source topic header, left where they are.
    pub skipped: u64,
}

/// Sends every dead letter not yet redriven back to its source topic: same key, value and
/// headers (minus the dead-letter ones, plus `funnel.redriven.from`). With `dry_run`, only
/// counts.
pub async fn redrive(settings: &Settings, dry_run: bool) -> anyhow::Result<RedriveReport> {
    let c = {
        let settings = settings.clone();
        tokio::task::spawn_blocking(move || consumer(&settings)).await??
    };
    let topic = settings.topic_dlq.clone();
    let (c, pos) = tokio::task::spawn_blocking(move || {
        let pos = positions(&c, &topic);
        (c, pos)
    })
    .await?;
    let pos = pos?;
    let producer = producer(settings)?;
    let topic = settings.topic_dlq.clone();
    let mut records = Vec::new();
    let (c, read_result) = tokio::task::spawn_blocking(move || {
        let r = read(&c, &topic, &pos, |m| {
            records.push(m.detach());
            Ok(true)
        });
        (c, r.map(|()| (records, pos)))
    })
    .await?;
    let (records, pos) = read_result?;
    let mut report = RedriveReport::default();
    let sources: Vec<Option<String>> = records
        .iter()
        .map(|m| header(m, SOURCE_TOPIC).filter(|t| !t.is_empty()))
        .collect();
    let froms: Vec<String> = records
        .iter()
        .map(|m| format!("{}/{}/{}", settings.topic_dlq, m.partition(), m.offset()))
        .collect();
    let mut acks = Vec::new();
    for ((m, source), from) in records.iter().zip(&sources).zip(&froms) {
        let Some(source) = source else {
            report.skipped += 1;
            continue;
        };
        *report.redriven.entry(source.clone()).or_default() += 1;
        if dry_run {
            continue;
        }
        let mut headers = OwnedHeaders::new();
        if let Some(h) = m.headers() {
            for h in h.iter().filter(|h| !h.key.starts_with("funnel.")) {
                headers = headers.insert(Header {
                    key: h.key,
                    value: h.value,
                });
            }
        }
        headers = headers.insert(Header {
            key: REDRIVEN_FROM,
            value: Some(from),
        });
        acks.push(producer.send(copy_of(m, source, headers), PRODUCE_TIMEOUT));
    }
    for r in futures::future::join_all(acks).await {
        r.map_err(|(e, _)| anyhow::anyhow!("redrive produce failed, nothing committed: {e}"))?;
    }
    if !dry_run {
        let mut tpl = TopicPartitionList::new();
        for (p, (_, high)) in &pos {
            tpl.add_partition_offset(&settings.topic_dlq, *p, Offset::Offset(*high))?;
        }
        tokio::task::spawn_blocking(move || c.commit(&tpl, CommitMode::Sync)).await??;
    }
    Ok(report)
}
