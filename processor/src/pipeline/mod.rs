//! One generation's consume -> classify -> fold -> sink loop.
//!
//! Offsets live in PostgreSQL (`funnel_sink_offsets`), written in the same transaction as the
//! rows. Kafka's auto commit is off: Kafka's committed offsets are written only after a
//! PostgreSQL commit, for lag tooling, and are never read back as the source of truth.
//!
//! A batch goes through four concerns, one module each:
//! - [`partitions`]: the first record seen from a partition after an assignment sets it up
//!   (the stored offset against the RocksDB checkpoint; a state that does not match is cleared
//!   and rebuilt by re-reading the partition without writing rows), and each batch moves it on;
//! - decoding, with the record decoder every reader shares ([`crate::decode`]);
//! - [`batch`]: the fold of the batch's records into their contacts' states, synchronous;
//! - [`commit`]: the PostgreSQL transaction, then RocksDB, then Kafka's offsets.

pub(crate) mod batch;
mod commit;
mod context;
mod partitions;
mod topics;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use funnel_runtime::sink;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::Offset;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};

use self::batch::{fold_batch, Classification, Record, Working};
use self::commit::{InFlight, Prepared};
use self::context::Context;
use self::partitions::{PartitionState, Partitions};
use crate::decode::RecordDecoder;
use crate::dlq::DeadLetters;
use crate::generation::{Boundaries, Generation};
use crate::metrics::Metrics;
use crate::rulebook::Rulebook;
use crate::settings::Settings;
use crate::state::StateStore;

pub use self::topics::TopicCheckError;

pub struct Pipeline {
    settings: Settings,
    /// The generation this pipeline writes (docs/replay.md); its schema is the pool's.
    generation: i32,
    /// The generation's consumer group, also the key of its stored offsets.
    group: String,
    /// For a generation built by a replay: where records keep the classification of the
    /// generation it replaces, and that generation's schema.
    boundaries: Option<Boundaries>,
    source_schema: Option<String>,
    /// Whether the generation is live (else being built): set by the supervisor at the switch.
    live: Arc<AtomicBool>,
    pool: PgPool,
    consumer: StreamConsumer<Context>,
    dead_letters: DeadLetters,
    decoder: RecordDecoder,
    state: StateStore,
    rules: Rulebook,
    partitions: Partitions,
    metrics: Arc<Metrics>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum BatchError {
    /// Retry the batch with backoff (PostgreSQL, the broker or the registry did not answer).
    #[error("transient: {0}")]
    Transient(anyhow::Error),
    /// A newer owner moved a partition's offset: start over from the stored offsets.
    #[error("fenced: {0}")]
    Fenced(anyhow::Error),
    /// Stop the processor with this message.
    #[error("fatal: {0}")]
    Fatal(anyhow::Error),
}

impl Pipeline {
    /// Connects the generation's consumer (its own group), checks the input topics and the
    /// registry, and opens its RocksDB folder.
    pub async fn new(
        settings: Settings,
        generation: &Generation,
        live: Arc<AtomicBool>,
        pool: PgPool,
        rules: Rulebook,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let group = generation.consumer_group(&settings.consumer_group);
        let topic = settings.kafka.topic_messages.clone();
        let mut config = funnel_runtime::kafka::consumer_config(&settings.kafka, &group)?;
        if !settings.instance_id.is_empty() {
            config.set("group.instance.id", &settings.instance_id);
        }
        // Offsets live in PostgreSQL, written with the rows; Kafka's committed offsets are only
        // written after that, for lag tooling. Auto commit would let Kafka run ahead of the rows.
        let consumer: StreamConsumer<Context> = config
            .set("auto.offset.reset", "earliest")
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("session.timeout.ms", "10000")
            .set("statistics.interval.ms", "5000")
            .create_with_context(Context::new(&topic, metrics.clone(), live.clone()))?;
        topics::check_topics(
            &consumer,
            &pool,
            &group,
            &topic,
            &settings.co_partitioned_topics,
        )
        .await?;
        consumer.subscribe(&[&topic])?;
        let decoder = RecordDecoder::new(&settings.kafka)?;
        decoder
            .ping()
            .await
            .map_err(|e| anyhow::anyhow!("{e}; check FUNNEL_SCHEMA_REGISTRY_URL"))?;
        let state = StateStore::open(&generation.state_dir(&settings.state_dir))?;
        Ok(Self {
            dead_letters: DeadLetters::new(&settings)?,
            settings,
            generation: generation.number,
            group,
            boundaries: generation.boundaries.clone(),
            source_schema: generation.source_schema.clone(),
            live,
            pool,
            consumer,
            decoder,
            state,
            rules,
            partitions: Partitions::default(),
            metrics,
        })
    }

    pub async fn run(mut self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut rules_tick =
            tokio::time::interval(Duration::from_millis(self.settings.rules_poll_ms));
        // Ticks missed while PostgreSQL was down are not made up in a burst: the loop must get
        // back to the records (whose failing batches are what retries and reports the outage).
        rules_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The batch whose PostgreSQL transaction runs while the next one is received, decoded,
        // classified and folded.
        let mut inflight: Option<InFlight> = None;
        loop {
            let first = tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = rules_tick.tick() => { self.reload_rules().await; continue; }
                // Nothing new came while the transaction ran: settle it.
                Some(result) = async { match inflight.as_mut() {
                    Some(f) => Some((&mut f.commit).await),
                    None => None,
                } }, if inflight.is_some() =>
                {
                    if let Some(f) = inflight.take() {
                        if let Err(e) = self.complete(&f.batch, result).await {
                            self.recover(e, f.records, &shutdown).await?;
                        }
                    }
                    continue;
                }
                m = self.consumer.recv() => match m {
                    Ok(m) => m.detach(),
                    Err(e) => {
                        consumer_error(e)?;
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                },
            };
            let records = self.receive(first).await?;
            // Folded on top of the states of the batch in flight, as if it commits.
            let prepared = self
                .prepare(&records, inflight.as_ref().map(|f| &f.batch.working))
                .await;
            // The batch in flight settles before the next transaction starts, so states and
            // checkpoints reach RocksDB in batch order.
            if let Some(f) = inflight.take() {
                let result = f.commit.await;
                if let Err(e) = self.complete(&f.batch, result).await {
                    // The new batch was prepared on the assumption that this one commits
                    // (offsets and states): redo both, in order.
                    let mut all = f.records;
                    all.extend(records);
                    self.recover(e, all, &shutdown).await?;
                    continue;
                }
            }
            match prepared {
                Ok(batch) => inflight = Some(self.start(batch, records)),
                Err(e) => self.recover(e, records, &shutdown).await?,
            }
        }
        if let Some(f) = inflight.take() {
            let result = f.commit.await;
            if let Err(e) = self.complete(&f.batch, result).await {
                warn!(error = %e, "last batch not committed; it is read again on restart");
            }
        }
        info!("processor stopping");
        Ok(())
    }

    /// A batch: `first` and what else arrives within the linger time, up to the batch size
    /// (larger for a generation being built: nobody reads it yet).
    async fn receive(&mut self, first: OwnedMessage) -> anyhow::Result<Vec<OwnedMessage>> {
        let mut records = vec![first];
        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(self.settings.batch_linger_ms);
        let batch_max = if self.live.load(Ordering::Relaxed) {
            self.settings.batch_max
        } else {
            self.settings.replay_batch_max
        };
        while records.len() < batch_max {
            match tokio::time::timeout_at(deadline, self.consumer.recv()).await {
                Ok(Ok(m)) => records.push(m.detach()),
                // Process what arrived; the error is looked at on the next receive.
                Ok(Err(e)) => {
                    consumer_error(e)?;
                    break;
                }
                Err(_) => break,
            }
        }
        for p in self.consumer.context().take_revoked() {
            self.partitions.forget(p);
        }
        Ok(records)
    }

    /// Sets the committed classification of the records that keep one (`keeps`, by record),
    /// with one query per generation read.
    async fn committed_classifications(
        &self,
        records: &mut [Record<&OwnedMessage>],
        keeps: Vec<Keep>,
    ) -> Result<(), BatchError> {
        let mut committed = HashMap::new();
        for generation in [Keep::Own, Keep::Replaced] {
            let keys: Vec<(&str, &str, &str)> = records
                .iter()
                .zip(&keeps)
                .filter(|(_, k)| **k == generation)
                .filter_map(|(r, _)| r.decoded.as_ref().ok())
                .map(|m| (m.tenant.as_str(), m.phone.as_str(), m.event_id.as_str()))
                .collect();
            if keys.is_empty() {
                continue;
            }
            let schema = match generation {
                Keep::Nothing | Keep::Own => None,
                Keep::Replaced => Some(self.source_schema.as_deref().ok_or_else(|| {
                    BatchError::Fatal(anyhow::anyhow!(
                        "generation {} has replay boundaries but no source generation",
                        self.generation
                    ))
                })?),
            };
            let hits = sink::recorded_hits(&self.pool, schema, &keys)
                .await
                .map_err(|e| BatchError::Transient(e.into()))?;
            committed.insert(generation, hits);
        }
        for (r, keep) in records.iter_mut().zip(keeps) {
            let (Keep::Own | Keep::Replaced, Ok(m)) = (keep, &r.decoded) else {
                continue;
            };
            let (hits, version) = committed
                .get(&keep)
                .and_then(|c| c.get(&(m.tenant.clone(), m.event_id.clone())))
                .cloned()
                .unwrap_or_default();
            r.classification = Classification::Committed(hits, version);
        }
        Ok(())
    }

    /// Looks for a new rule set, for at most a second: with PostgreSQL down, waiting for a
    /// connection (up to the pool's 10 s) on every tick kept the loop from ever reading the
    /// records again.
    async fn reload_rules(&mut self) {
        match tokio::time::timeout(Duration::from_secs(1), self.rules.refresh(&self.pool)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => warn!(error = %e, "could not look for a new rule set"),
            Err(_) => {
                warn!("could not look for a new rule set: PostgreSQL did not answer within 1 s")
            }
        }
    }

    /// After a failed batch: processes `records` again, one batch at a time with nothing in
    /// flight, until they commit. Every attempt starts over from the offsets stored in
    /// PostgreSQL: partitions still ours are set up again (records another owner already
    /// applied are skipped), partitions no longer ours are skipped.
    async fn recover(
        &mut self,
        first: BatchError,
        records: Vec<OwnedMessage>,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        let mut backoff = Duration::from_millis(100);
        let mut error = first;
        loop {
            match error {
                BatchError::Fatal(e) => return Err(e),
                BatchError::Fenced(e) => {
                    self.metrics.retries.with_label_values(&["fenced"]).inc();
                    warn!(error = %e, "batch fenced; re-reading stored offsets");
                }
                BatchError::Transient(e) => {
                    self.metrics.retries.with_label_values(&["transient"]).inc();
                    warn!(error = %e, backoff_ms = backoff.as_millis() as u64, "batch failed; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
            self.partitions.clear();
            for p in self.consumer.context().take_revoked() {
                self.partitions.forget(p);
            }
            let attempt = match self.prepare(&records, None).await {
                Ok(batch) => {
                    let f = self.start(batch, Vec::new());
                    let result = f.commit.await;
                    self.complete(&f.batch, result).await
                }
                Err(e) => Err(e),
            };
            match attempt {
                Ok(()) => return Ok(()),
                Err(e) => error = e,
            }
        }
    }

    /// Sets a partition up on its first message; returns false when the message must be
    /// skipped (already applied, a partition no longer assigned, or a seek was made).
    async fn admit(
        &mut self,
        msg: &OwnedMessage,
        seeked: &mut Vec<i32>,
    ) -> Result<bool, BatchError> {
        let p = msg.partition();
        if seeked.contains(&p) {
            return Ok(false);
        }
        if let Some(ps) = self.partitions.get(p) {
            // Below `next`: already applied (a redelivery after a seek). Above it: a gap the
            // log itself has (compaction, transaction markers).
            return Ok(msg.offset() >= ps.next);
        }
        let topic = self.settings.kafka.topic_messages.clone();
        // A record fetched before its partition was revoked is not ours to set up (seeking an
        // unassigned partition fails, and the new owner is already reading it).
        let assigned = self
            .consumer
            .assignment()
            .map_err(|e| BatchError::Transient(e.into()))?;
        if assigned.find_partition(&topic, p).is_none() {
            debug!(
                partition = p,
                "record of a partition no longer assigned; skipped"
            );
            return Ok(false);
        }
        let stored = sink::stored_offset(&self.pool, &self.group, &topic, p)
            .await
            .map_err(|e| BatchError::Transient(e.into()))?;
        let checkpoint = self
            .state
            .checkpoint(&topic, p)
            .map_err(|e| BatchError::Fatal(e.into()))?;
        let watermarks = tokio::task::block_in_place(|| {
            self.consumer
                .fetch_watermarks(&topic, p, Duration::from_secs(10))
        })
        .map_err(|e| BatchError::Transient(e.into()))?;
        let ps = PartitionState::set_up(stored, checkpoint, watermarks, Instant::now()).map_err(
            |(stored, high)| {
                BatchError::Fatal(anyhow::anyhow!(
                    "stored offset {stored} of {topic}/{p} is past the end of the partition ({high}): was the topic recreated? \
                     reset the sink as docs/exactly-once.md (\"Resetting the sink\") says"
                ))
            },
        )?;
        if ps.rebuilds() {
            info!(
                partition = p,
                ?stored,
                ?checkpoint,
                low = watermarks.0,
                "state does not match the sink; rebuilding the partition"
            );
            self.state
                .clear_partition(&topic, p)
                .map_err(|e| BatchError::Fatal(e.into()))?;
            if watermarks.0 > 0 {
                warn!(
                    partition = p,
                    low = watermarks.0,
                    "the partition no longer starts at 0: rebuilt state misses expired messages"
                );
            }
        }
        self.partitions.insert(p, ps);
        if msg.offset() == ps.next {
            return Ok(true);
        }
        debug!(partition = p, offset = ps.next, "seeking");
        self.consumer
            .seek(&topic, p, Offset::Offset(ps.next), Duration::from_secs(10))
            .map_err(|e| BatchError::Transient(e.into()))?;
        seeked.push(p);
        Ok(false)
    }

    /// Admits, decodes, classifies and folds a batch, and produces its dead letters: everything
    /// up to its PostgreSQL transaction. Contact states come from `overlay` (the batch in
    /// flight) before RocksDB; offset moves start where the batch in flight ends.
    async fn prepare(
        &mut self,
        batch: &[OwnedMessage],
        overlay: Option<&Working>,
    ) -> Result<Prepared, BatchError> {
        let span =
            info_span!("batch", topic = %self.settings.kafka.topic_messages, count = batch.len());
        async {
            let started = Instant::now();
            let records = self.gather(batch).await?;
            let (rules, state) = (&self.rules, &self.state);
            let folded = fold_batch(
                records,
                |m| {
                    let c = rules.for_tenant(&m.tenant);
                    (c.classify(&m.text, &m.channel, m.direction), c.version())
                },
                |key| match overlay.and_then(|o| o.get(key)) {
                    Some(st) => Ok(Some(st.clone())),
                    None => state.contact(key.0, &key.1, &key.2),
                },
            )
            .map_err(|e| BatchError::Fatal(e.into()))?;
            let advance = self.partitions.advance(&folded.progress, Instant::now());
            for (p, offset, took) in &advance.rebuilt {
                info!(partition = p, offset, "partition state rebuilt");
                self.metrics.restore_seconds.observe(took.as_secs_f64());
            }
            // Dead letters must be in Kafka before the offset moves past them.
            for (msg, poison) in &folded.dead {
                self.dead_letters.send(*msg, &poison.0).await.map_err(|e| {
                    BatchError::Transient(anyhow::anyhow!("dead-letter produce failed: {e}"))
                })?;
            }
            // Only the live generation tells Meta: a replay's generation re-reads history
            // that was sent already (docs/channels.md).
            let conversions = if self.live.load(std::sync::atomic::Ordering::Relaxed) {
                crate::conversions::enqueue::of_batch(&folded.events, &folded.working)
            } else {
                Vec::new()
            };
            Ok(Prepared {
                records: batch.len(),
                conversions,
                dead: folded.dead.len() as u64,
                working: folded.working,
                touched: folded.touched,
                events: folded.events,
                moves: advance.moves,
                checkpoints: advance.checkpoints,
                consumed: folded.consumed,
                duplicates: folded.duplicates,
                started,
            })
        }
        .instrument(span)
        .await
    }

    /// Admits and decodes every record of a batch, and looks up the committed classification
    /// of those that keep it (re-read to rebuild state, or before a replay's boundary): a
    /// record re-read to rebuild state keeps the classification it was committed with (its
    /// stage events), not what today's rules make of it; before a replay's boundary, the one
    /// the replaced generation committed (docs/replay.md).
    async fn gather<'m>(
        &mut self,
        batch: &'m [OwnedMessage],
    ) -> Result<Vec<Record<&'m OwnedMessage>>, BatchError> {
        let mut seeked = Vec::new();
        let mut records = Vec::with_capacity(batch.len());
        let mut keeps: Vec<Keep> = Vec::with_capacity(batch.len());
        for msg in batch {
            if !self.admit(msg, &mut seeked).await? {
                continue;
            }
            let Some(ps) = self.partitions.get(msg.partition()) else {
                continue;
            };
            let (p, offset) = (msg.partition(), msg.offset());
            let rebuilding = ps.rebuilding(offset);
            let boundaries = self.boundaries.as_ref();
            let keep = if rebuilding {
                Keep::Own
            } else if boundaries.is_some_and(|b| b.keeps_classification(p, offset)) {
                Keep::Replaced
            } else {
                Keep::Nothing
            };
            let dead_lettered = boundaries.is_some_and(|b| b.already_dead_lettered(p, offset));
            let decoded = self
                .decoder
                .decode(msg.key(), msg.payload())
                .await
                .map_err(|e| BatchError::Transient(e.into()))?;
            keeps.push(keep);
            records.push(Record {
                source: msg,
                partition: p,
                offset,
                rebuilding,
                decoded,
                classification: Classification::Now,
                dead_lettered,
            });
        }
        self.committed_classifications(&mut records, keeps).await?;
        Ok(records)
    }
}

/// Whose committed classification a record keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Keep {
    /// None: it is classified under the rules active now.
    Nothing,
    /// Its own generation's: it is re-read to rebuild state.
    Own,
    /// The replaced generation's: it is before a replay's boundary.
    Replaced,
}

/// An error from the consumer instead of a record. librdkafka reconnects and retries by itself
/// (a broker restarting, a leader moving, a coordinator not yet known), so those are logged and
/// the loop goes on; only an error librdkafka calls fatal stops the processor.
fn consumer_error(e: rdkafka::error::KafkaError) -> anyhow::Result<()> {
    if e.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::Fatal) {
        return Err(anyhow::anyhow!("fatal consumer error: {e}"));
    }
    warn!(error = %e, "consumer error; librdkafka retries");
    Ok(())
}
