//! `make bench-processor`: a topic pre-filled with generated chat messages, and the baselines
//! the processor is measured against in the same run.
//!
//! - [`prefill`] produces `messages` records for `contacts` contacts, streamed from a seed (a
//!   million records never sit in memory), with the totals the tables must end with ([`Tally`]).
//! - [`bare_upsert`] writes the same rows straight into PostgreSQL: the records in batches of the
//!   processor's size, folded per contact beforehand, each batch one transaction of the
//!   processor's own `UNNEST` upserts. Only the transactions are timed: the ceiling for writing.
//! - [`naive_consumer`] reads the topic the way the seeds' workers do: per message one upsert
//!   and one synchronous offset commit.
//! - [`check`] compares the tables with the tally after the processor's run.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::DateTime;
use funnel_runtime::settings::KafkaSettings;
use funnel_runtime::sink::{self, ContactRow, StageEventRow};
use funnel_schemas::fold::{ContactState, Event};
use funnel_schemas::rules::{rules_from_csv, Classifier, Stage};
use funnel_schemas::{ChatMessage, Direction};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;
use rust_decimal::Decimal;
use serde::Serialize;
use sqlx::PgPool;

use crate::generate::{pick, weighted};
use crate::vocabulary::{
    AGENT_REPLIES, BOOKING_TEXTS, CAMPAIGNS, CHANNELS, LEAD_TEXTS, PAYMENT_TEXTS, SMALL_TALK,
};

/// What to generate: `messages` records (copies included) for `contacts` contacts of one
/// tenant, over `days` days.
#[derive(Debug, Clone)]
pub struct BenchData {
    pub seed: u64,
    pub messages: u64,
    pub contacts: u64,
    pub tenant: String,
    /// Records that are a second copy of the record before them (same event id)
    pub duplicate_share: f64,
    pub days: u32,
}

/// One generated record.
pub struct BenchRecord {
    pub msg: ChatMessage,
    /// A second copy of the previous record: must not count again
    pub copy: bool,
}

/// The records of a [`BenchData`], in produce order. Message `i` belongs to contact
/// `i % contacts`, so each contact's messages are spread over the whole topic (and over many
/// batches), and it is the contact's `i / contacts`-th message: the first is usually an enquiry
/// from an ad, later ones chat, agent replies, bookings and payments.
pub struct Records {
    data: BenchData,
    rng: ChaCha8Rng,
    produced: u64,
    unique: u64,
    start_ms: i64,
    step_ms: i64,
    copy: Option<ChatMessage>,
}

/// An E.164 mobile number per contact index; distinct for indexes below 10^8 (7919 is prime
/// to 10^8, so the multiplication permutes).
pub fn bench_phone(contact: u64) -> String {
    format!("+62812{:08}", (contact * 7919 + 12_345) % 100_000_000)
}

impl Records {
    pub fn new(data: &BenchData) -> Self {
        #[allow(clippy::unwrap_used)]
        let start = DateTime::parse_from_rfc3339("2026-10-01T00:00:00+07:00")
            .unwrap()
            .timestamp_millis();
        let span = i64::from(data.days.max(1)) * 86_400_000;
        Self {
            data: data.clone(),
            rng: ChaCha8Rng::seed_from_u64(data.seed),
            produced: 0,
            unique: 0,
            start_ms: start,
            step_ms: (span / data.messages.max(1) as i64).max(1),
            copy: None,
        }
    }

    fn make(&mut self, i: u64) -> ChatMessage {
        let contacts = self.data.contacts.max(1);
        let round = i / contacts;
        let rng = &mut self.rng;
        let x: f64 = rng.random();
        let (direction, text) = if round == 0 {
            if x < 0.75 {
                (Direction::Inbound, pick(rng, &LEAD_TEXTS))
            } else {
                (Direction::Inbound, pick(rng, &SMALL_TALK))
            }
        } else if x < 0.35 {
            (Direction::Outbound, pick(rng, &AGENT_REPLIES))
        } else if x < 0.60 {
            (Direction::Inbound, pick(rng, &SMALL_TALK))
        } else if x < 0.75 {
            (Direction::Inbound, pick(rng, &LEAD_TEXTS))
        } else if x < 0.90 {
            (Direction::Inbound, pick(rng, &BOOKING_TEXTS))
        } else {
            (Direction::Inbound, pick(rng, &PAYMENT_TEXTS))
        };
        let channel = weighted(rng, &CHANNELS).to_string();
        let campaign = rng
            .random_bool(0.5)
            .then(|| pick(rng, &CAMPAIGNS).to_string());
        let sent_at = self.start_ms + i as i64 * self.step_ms;
        ChatMessage {
            event_id: format!("bench.{}.{i:010}", self.data.seed),
            tenant: self.data.tenant.clone(),
            phone: bench_phone(i % contacts),
            channel,
            direction,
            text: text.to_string(),
            sent_at,
            received_at: sent_at + 1_500,
            conversation_id: None,
            campaign,
            source: Some("bench".into()),
            metadata: Default::default(),
            ..Default::default()
        }
    }
}

impl Iterator for Records {
    type Item = BenchRecord;

    fn next(&mut self) -> Option<BenchRecord> {
        if self.produced >= self.data.messages {
            return None;
        }
        self.produced += 1;
        if let Some(msg) = self.copy.take() {
            return Some(BenchRecord { msg, copy: true });
        }
        let i = self.unique;
        self.unique += 1;
        let msg = self.make(i);
        if self
            .rng
            .random_bool(self.data.duplicate_share.clamp(0.0, 1.0))
        {
            self.copy = Some(msg.clone());
        }
        Some(BenchRecord { msg, copy: false })
    }
}

/// The rules the bench classifies with: the rule set every new database starts with.
pub fn default_classifier() -> anyhow::Result<Classifier> {
    let rules = rules_from_csv(crate::generate::DEFAULT_RULES_CSV).context("default rules")?;
    Ok(Classifier::new(1, rules)?)
}

/// What the tables must hold for the tenant once every record is processed exactly once.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Tally {
    pub contacts: i64,
    pub messages: i64,
    pub leads: i64,
    pub bookings: i64,
    pub transactions: i64,
    pub revenue: Decimal,
    pub stage_events: i64,
}

/// Counts what the records must produce (the copies count once).
pub fn tally(data: &BenchData, classifier: &Classifier) -> Tally {
    let mut t = Tally::default();
    // Per contact: seen, lead, booking.
    let mut flags = vec![0u8; data.contacts.max(1) as usize];
    for (i, r) in Records::new(data).filter(|r| !r.copy).enumerate() {
        let c = i % flags.len();
        let f = &mut flags[c];
        *f |= 1;
        t.messages += 1;
        for h in classifier.classify(&r.msg.text, &r.msg.channel, r.msg.direction) {
            t.stage_events += 1;
            match h.stage {
                Stage::Lead => *f |= 2,
                Stage::Booking => *f |= 4,
                Stage::Transaction => {
                    t.transactions += 1;
                    t.revenue += h.value;
                }
            }
        }
    }
    for f in flags {
        t.contacts += i64::from(f & 1 != 0);
        t.leads += i64::from(f & 2 != 0);
        t.bookings += i64::from(f & 4 != 0);
    }
    t
}

/// The tenant's totals as the tables hold them.
pub async fn table_totals(pool: &PgPool, tenant: &str) -> anyhow::Result<Tally> {
    let (contacts, messages, leads, bookings, transactions, revenue): (
        i64,
        i64,
        i64,
        i64,
        i64,
        Decimal,
    ) = sqlx::query_as(
        "SELECT count(*), coalesce(sum(message_count), 0)::bigint, count(lead_at), count(booking_at),
                coalesce(sum(transaction_count), 0)::bigint, coalesce(sum(transaction_value), 0)
           FROM funnel_contacts WHERE tenant = $1",
    )
    .bind(tenant)
    .fetch_one(pool)
    .await?;
    let stage_events: i64 =
        sqlx::query_scalar("SELECT count(*) FROM funnel_stage_events WHERE tenant = $1")
            .bind(tenant)
            .fetch_one(pool)
            .await?;
    Ok(Tally {
        contacts,
        messages,
        leads,
        bookings,
        transactions,
        revenue,
        stage_events,
    })
}

#[derive(Default)]
struct DeliveryCounts {
    ok: AtomicU64,
    failed: AtomicU64,
}

struct Counting(Arc<DeliveryCounts>);

impl ClientContext for Counting {}

impl ProducerContext for Counting {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        let counter = if result.is_ok() {
            &self.0.ok
        } else {
            &self.0.failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

#[derive(Debug, Serialize)]
pub struct PrefillReport {
    pub topic: String,
    pub records: u64,
    pub bytes: u64,
    pub average_record_bytes: u64,
    pub seconds: f64,
    pub records_per_second: f64,
}

/// Produces the records to `topic`: keyed by phone, Avro in the Confluent wire format under the
/// registry id ingest uses, with ingest's producer settings (idempotent, acks=all, lz4).
pub async fn prefill(data: &BenchData, kafka: &KafkaSettings) -> anyhow::Result<PrefillReport> {
    let topic = &kafka.topic_messages;
    let schema_id = funnel_runtime::registry::register_schema(kafka).await?;
    let counts = Arc::new(DeliveryCounts::default());
    let producer: ThreadedProducer<Counting> = funnel_runtime::kafka::producer_config(kafka)?
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.messages", "500000")
        .create_with_context(Counting(counts.clone()))
        .context("Kafka producer")?;
    let started = Instant::now();
    let (mut records, mut bytes) = (0u64, 0u64);
    for r in Records::new(data) {
        let payload = funnel_schemas::encode(schema_id, &r.msg)?;
        bytes += payload.len() as u64;
        records += 1;
        let mut record = BaseRecord::to(topic)
            .key(r.msg.phone.as_bytes())
            .payload(&payload);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((e, _)) => return Err(e).context("producing"),
            }
        }
    }
    rdkafka::producer::Producer::flush(&producer, Duration::from_secs(120))?;
    let seconds = started.elapsed().as_secs_f64();
    let failed = counts.failed.load(Ordering::Relaxed);
    anyhow::ensure!(failed == 0, "{failed} records were not delivered");
    anyhow::ensure!(
        counts.ok.load(Ordering::Relaxed) == records,
        "the broker acknowledged {} of {records} records",
        counts.ok.load(Ordering::Relaxed)
    );
    Ok(PrefillReport {
        topic: topic.to_string(),
        records,
        bytes,
        average_record_bytes: bytes / records.max(1),
        seconds,
        records_per_second: records as f64 / seconds.max(1e-9),
    })
}

#[derive(Debug, Serialize)]
pub struct RateReport {
    pub messages: u64,
    /// Rows upserted (one per contact per batch, or one per message)
    pub rows: u64,
    /// Time spent in PostgreSQL transactions (the bare upsert) or from the first message
    /// received (the naive consumer)
    pub seconds: f64,
    pub messages_per_second: f64,
    /// Of `seconds`, the time in PostgreSQL (upserts and their commits)
    pub postgres_seconds: f64,
    /// Of `seconds`, the time in Kafka offset commits (the naive consumer)
    pub kafka_commit_seconds: f64,
}

/// The ceiling for writing: the records in batches of `batch`, each folded per contact
/// beforehand (not timed), each batch written as one transaction of the processor's own
/// `UNNEST` upserts of contact rows and stage events (timed). No Kafka, no RocksDB, no offsets.
pub async fn bare_upsert(
    data: &BenchData,
    pool: &PgPool,
    batch: usize,
) -> anyhow::Result<RateReport> {
    let classifier = default_classifier()?;
    let mut records = Records::new(data).peekable();
    let (mut messages, mut rows_written) = (0u64, 0u64);
    let mut in_db = Duration::ZERO;
    while records.peek().is_some() {
        let mut states: HashMap<String, ContactState> = HashMap::new();
        let mut events = Vec::new();
        for r in records.by_ref().take(batch.max(1)) {
            messages += 1;
            let m = r.msg;
            let hits = classifier.classify(&m.text, &m.channel, m.direction);
            let ev = Event::of(&m, hits, classifier.version());
            let state = states.entry(m.phone.clone()).or_default();
            if !state.apply(&ev) {
                continue;
            }
            for h in &ev.hits {
                events.push(StageEventRow::of(
                    &m,
                    h,
                    ev.rule_set_version,
                    0,
                    messages as i64,
                ));
            }
        }
        let mut rows: Vec<ContactRow<'_>> = states
            .iter()
            .map(|(phone, state)| ContactRow {
                tenant: &data.tenant,
                phone,
                state,
            })
            .collect();
        // The processor writes its rows in key order too (fewer lock waits, fewer page splits).
        rows.sort_by(|a, b| a.phone.cmp(b.phone));
        rows_written += rows.len() as u64;
        let t = Instant::now();
        sink::commit_batch(pool, "bench-upsert", "bench", &rows, &events, &[], &[]).await?;
        in_db += t.elapsed();
    }
    let seconds = in_db.as_secs_f64();
    Ok(RateReport {
        messages,
        rows: rows_written,
        seconds,
        messages_per_second: messages as f64 / seconds.max(1e-9),
        postgres_seconds: seconds,
        kafka_commit_seconds: 0.0,
    })
}

/// The seeds' worker, in Rust: per message decode, classify, one upsert merging the message
/// into the row in SQL, and one synchronous offset commit. It stops after `duration` (timed
/// from the first message received) or at `limit` messages.
pub async fn naive_consumer(
    kafka: &KafkaSettings,
    group: &str,
    pool: &PgPool,
    duration: Duration,
    limit: u64,
) -> anyhow::Result<RateReport> {
    let classifier = default_classifier()?;
    let mut registry = funnel_runtime::registry::SchemaCache::new(kafka)?;
    let consumer: StreamConsumer = funnel_runtime::kafka::consumer_config(kafka, group)?
        .set("auto.offset.reset", "earliest")
        .create()?;
    consumer.subscribe(&[&kafka.topic_messages])?;
    let mut started = None;
    let mut messages = 0u64;
    let (mut in_db, mut in_commit) = (Duration::ZERO, Duration::ZERO);
    while messages < limit {
        let m = tokio::time::timeout(Duration::from_secs(60), consumer.recv())
            .await
            .context("no message for a minute")??;
        let t0 = *started.get_or_insert_with(Instant::now);
        if t0.elapsed() >= duration {
            break;
        }
        let payload = m.payload().unwrap_or_default();
        let (id, body) = funnel_schemas::split_frame(payload)?;
        let msg = registry.decoder(id).await?.decode(body)?;
        let hits = classifier.classify(&msg.text, &msg.channel, msg.direction);
        let at = sink::millis(msg.sent_at);
        let hit = |s: Stage| hits.iter().find(|h| h.stage == s);
        let lead = hit(Stage::Lead).map(|_| at);
        let booking = hit(Stage::Booking).map(|_| at);
        let transaction = hit(Stage::Transaction);
        let t = Instant::now();
        sqlx::query(
            "INSERT INTO funnel_contacts AS c (tenant, phone, lead_at, channel, campaign, lead_event_id,
                 booking_at, transaction_at, transaction_value, transaction_count, first_message_at,
                 last_message_at, message_count, rule_set_version)
             VALUES ($1, $2, $3, CASE WHEN $3 IS NOT NULL THEN $4 END, CASE WHEN $3 IS NOT NULL THEN $5 END,
                 CASE WHEN $3 IS NOT NULL THEN $6 END, $7, $8, $9, $10, $11, $11, 1, $12)
             ON CONFLICT (tenant, phone) DO UPDATE SET
                 lead_at = LEAST(c.lead_at, EXCLUDED.lead_at),
                 channel = CASE WHEN EXCLUDED.lead_at < c.lead_at OR c.lead_at IS NULL
                                THEN coalesce(EXCLUDED.channel, c.channel) ELSE c.channel END,
                 booking_at = LEAST(c.booking_at, EXCLUDED.booking_at),
                 transaction_at = LEAST(c.transaction_at, EXCLUDED.transaction_at),
                 transaction_value = c.transaction_value + EXCLUDED.transaction_value,
                 transaction_count = c.transaction_count + EXCLUDED.transaction_count,
                 first_message_at = LEAST(c.first_message_at, EXCLUDED.first_message_at),
                 last_message_at = GREATEST(c.last_message_at, EXCLUDED.last_message_at),
                 message_count = c.message_count + 1,
                 updated_at = now()",
        )
        .bind(&msg.tenant)
        .bind(&msg.phone)
        .bind(lead.flatten())
        .bind(&msg.channel)
        .bind(&msg.campaign)
        .bind(&msg.event_id)
        .bind(booking.flatten())
        .bind(transaction.and(at))
        .bind(transaction.map_or(Decimal::ZERO, |h| h.value))
        .bind(i32::from(transaction.is_some()))
        .bind(at)
        .bind(classifier.version())
        .execute(pool)
        .await?;
        in_db += t.elapsed();
        let t = Instant::now();
        consumer.commit_message(&m, CommitMode::Sync)?;
        in_commit += t.elapsed();
        messages += 1;
    }
    let seconds = started.map_or(0.0, |t| t.elapsed().as_secs_f64());
    Ok(RateReport {
        messages,
        rows: messages,
        seconds,
        messages_per_second: messages as f64 / seconds.max(1e-9),
        postgres_seconds: in_db.as_secs_f64(),
        kafka_commit_seconds: in_commit.as_secs_f64(),
    })
}

/// Differences between the tally and the tables, one line each (empty: equal).
pub fn compare(expected: &Tally, actual: &Tally) -> Vec<String> {
    let e = serde_json::to_value(expected).unwrap_or_default();
    let a = serde_json::to_value(actual).unwrap_or_default();
    let mut out = Vec::new();
    if let (Some(e), Some(a)) = (e.as_object(), a.as_object()) {
        for (k, v) in e {
            if a.get(k) != Some(v) {
                out.push(format!(
                    "{k}: expected {v}, the tables hold {}",
                    a.get(k).cloned().unwrap_or_default()
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(messages: u64, contacts: u64) -> BenchData {
        BenchData {
            seed: 3,
            messages,
            contacts,
            tenant: "default".into(),
            duplicate_share: 0.1,
            days: 14,
        }
    }

    #[test]
    fn records_are_deterministic_and_spread_over_every_contact() {
        let a: Vec<_> = Records::new(&data(500, 40)).map(|r| r.msg).collect();
        let b: Vec<_> = Records::new(&data(500, 40)).map(|r| r.msg).collect();
        assert_eq!(a, b);
        assert_eq!(a.len(), 500);
        let phones: std::collections::BTreeSet<_> = a.iter().map(|m| &m.phone).collect();
        assert_eq!(phones.len(), 40);
        let ids: std::collections::BTreeSet<_> = a.iter().map(|m| &m.event_id).collect();
        assert!(ids.len() < 500, "some records are copies");
        assert!(ids.len() > 400, "copies are about a tenth: {}", ids.len());
    }

    #[test]
    fn phones_stay_distinct_and_valid() {
        let phones: std::collections::BTreeSet<_> = (0..200_000).map(bench_phone).collect();
        assert_eq!(phones.len(), 200_000);
        let region = funnel_schemas::phone::parse_region("ID").unwrap();
        for p in phones.iter().step_by(997) {
            // What ingest makes of it: valid, and already normal.
            assert_eq!(
                funnel_schemas::phone::normalize_phone(p, region),
                Ok(p.clone())
            );
        }
    }

    /// The tally is what the processor's own fold makes of the records.
    #[test]
    fn tally_matches_the_fold() {
        let d = data(3_000, 250);
        let classifier = default_classifier().unwrap();
        let t = tally(&d, &classifier);
        let mut states: HashMap<String, ContactState> = HashMap::new();
        let mut stage_events = 0;
        for r in Records::new(&d) {
            let m = r.msg;
            let ev = Event::of(&m, classifier.classify(&m.text, &m.channel, m.direction), 1);
            if states.entry(m.phone).or_default().apply(&ev) {
                stage_events += ev.hits.len() as i64;
            }
        }
        let from_fold = Tally {
            contacts: states.len() as i64,
            messages: states.values().map(|s| s.message_count()).sum(),
            leads: states.values().filter(|s| s.lead.is_some()).count() as i64,
            bookings: states.values().filter(|s| s.booking_at.is_some()).count() as i64,
            transactions: states.values().map(|s| s.transactions.len() as i64).sum(),
            revenue: states.values().map(ContactState::transaction_value).sum(),
            stage_events,
        };
        assert_eq!(t, from_fold);
        assert!(t.leads > 0 && t.bookings > 0 && t.transactions > 0, "{t:?}");
        assert!(compare(&t, &from_fold).is_empty());
        let mut off = from_fold.clone();
        off.messages += 1;
        assert_eq!(compare(&t, &off).len(), 1);
    }
}
