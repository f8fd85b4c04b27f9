//! The consume -> classify -> fold -> sink loop.
//!
//! Offsets live in PostgreSQL (`funnel_sink_offsets`), written in the same transaction as the
//! rows. Kafka's auto commit is off: Kafka's committed offsets are written only after a
//! PostgreSQL commit, for lag tooling, and are never read back as the source of truth.
//!
//! The first message seen from a partition after an assignment triggers its set-up: read the
//! stored offset, compare it with the RocksDB checkpoint, and seek. A partition whose RocksDB
//! state does not match PostgreSQL (missing, behind, ahead) is cleared and rebuilt by
//! re-reading the partition from its first offset up to the stored one without writing rows.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use funnel_schemas::{split_frame, ChatMessage};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::fold::{ContactState, Event};
use crate::metrics::Metrics;
use crate::registry::{RegistryError, SchemaCache};
use crate::rulebook::Rulebook;
use crate::settings::Settings;
use crate::sink::{self, ContactRow, OffsetMove, SinkError, StageEventRow};
use crate::state::{StateBatch, StateStore};

/// Remembers revoked partitions so the loop forgets their set-up; counts rebalances and
/// publishes lag from librdkafka's statistics.
pub struct Context {
    revoked: Mutex<Vec<i32>>,
    topic: String,
    metrics: Arc<Metrics>,
    /// Only the live generation's pipeline publishes lag: a replay's would hide it.
    live: Arc<std::sync::atomic::AtomicBool>,
}

impl ClientContext for Context {
    fn stats(&self, stats: rdkafka::Statistics) {
        if !self.live.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let Some(topic) = stats.topics.get(&self.topic) else {
            return;
        };
        for p in topic.partitions.values() {
            if p.partition < 0 || !p.desired || p.hi_offset < 0 {
                continue;
            }
            // Before the first commit there is no committed offset: everything is behind.
            let lag = if p.committed_offset >= 0 {
                p.consumer_lag.max(0)
            } else {
                (p.hi_offset - p.lo_offset.max(0)).max(0)
            };
            self.metrics
                .lag
                .with_label_values(&[&p.partition.to_string()])
                .set(lag);
        }
    }
}

impl ConsumerContext for Context {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        // The metrics describe the live sink (a replay's pipeline would remove its lag labels).
        let live = self.live.load(std::sync::atomic::Ordering::Relaxed);
        match rebalance {
            Rebalance::Revoke(tpl) => {
                let parts: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
                info!(partitions = ?parts, "partitions revoked");
                if live {
                    self.metrics
                        .rebalances
                        .with_label_values(&["revoked"])
                        .inc_by(parts.len() as u64);
                    for p in &parts {
                        let _ = self.metrics.lag.remove_label_values(&[&p.to_string()]);
                    }
                }
                if let Ok(mut r) = self.revoked.lock() {
                    r.extend(parts);
                }
            }
            Rebalance::Assign(tpl) => {
                let parts: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
                info!(partitions = ?parts, "partitions assigned");
                if live {
                    self.metrics
                        .rebalances
                        .with_label_values(&["assigned"])
                        .inc_by(parts.len() as u64);
                }
            }
            Rebalance::Error(e) => warn!(error = %e, "rebalance error"),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct PartitionState {
    /// The next offset to apply; also the `from` of the next offset move in PostgreSQL.
    next: i64,
    /// The offset stored in PostgreSQL (None: no row yet).
    stored: Option<i64>,
    /// While rebuilding RocksDB state: messages below this offset are folded, not written.
    rebuild_until: Option<i64>,
    /// When the rebuild started (for the restore-time metric).
    rebuild_started: Option<std::time::Instant>,
}

pub struct Pipeline {
    settings: Settings,
    /// The generation this pipeline writes (docs/replay.md); its schema is the pool's.
    generation: i32,
    /// For a generation built by a replay: where records keep the classification of the
    /// generation it replaces, and that generation's schema.
    boundaries: Option<crate::generation::Boundaries>,
    source_schema: Option<String>,
    /// Whether the generation is live (else being built): set by the supervisor at the switch.
    live: Arc<std::sync::atomic::AtomicBool>,
    pool: PgPool,
    consumer: StreamConsumer<Context>,
    dlq: FutureProducer,
    registry: SchemaCache,
    state: StateStore,
    rules: Rulebook,
    partitions: HashMap<i32, PartitionState>,
    metrics: Arc<Metrics>,
}

/// A batch's working set: contact states by (partition, tenant, phone).
type Working = HashMap<(i32, String, String), ContactState>;

/// A batch folded and ready to commit: everything its PostgreSQL transaction and RocksDB write
/// need, owned, so the transaction can run while the next batch is prepared.
struct Prepared {
    /// Records in the batch
    records: usize,
    working: Working,
    /// The contacts whose rows change (not those only re-read for a rebuild), in key order
    touched: Vec<(i32, String, String)>,
    events: Vec<StageEventRow>,
    moves: Vec<OffsetMove>,
    /// Per settled partition, the next offset its RocksDB state includes after this batch
    checkpoints: Vec<(i32, i64)>,
    consumed: u64,
    duplicates: u64,
    dead: u64,
    started: std::time::Instant,
}

/// A batch whose PostgreSQL transaction is running, with its records (to redo it if the
/// transaction fails).
struct InFlight {
    batch: Arc<Prepared>,
    records: Vec<OwnedMessage>,
    commit: tokio::task::JoinHandle<Result<Duration, SinkError>>,
}

impl Pipeline {
    pub async fn new(
        settings: Settings,
        generation: &crate::generation::Generation,
        live: Arc<std::sync::atomic::AtomicBool>,
        pool: PgPool,
        rules: Rulebook,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let mut config = ClientConfig::new();
        if !settings.instance_id.is_empty() {
            config.set("group.instance.id", &settings.instance_id);
        }
        let consumer: StreamConsumer<Context> = config
            .set("bootstrap.servers", &settings.kafka_brokers)
            .set("group.id", &settings.consumer_group)
            // Offsets live in PostgreSQL, written with the rows; Kafka's committed offsets are
            // only written after that, for lag tooling. Auto commit would let Kafka run ahead
            // of the rows.
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("session.timeout.ms", "10000")
            .set("isolation.level", "read_committed")
            .set("statistics.interval.ms", "5000")
            .create_with_context(Context {
                revoked: Mutex::default(),
                topic: settings.topic_messages.clone(),
                metrics: metrics.clone(),
                live: live.clone(),
            })?;
        check_topics(&consumer, &pool, &settings).await?;
        consumer.subscribe(&[&settings.topic_messages])?;
        let dlq: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &settings.kafka_brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", "30000")
            .create()?;
        let registry = SchemaCache::new(&settings.schema_registry_url)?;
        registry
            .ping()
            .await
            .map_err(|e| anyhow::anyhow!("{e}; check FUNNEL_SCHEMA_REGISTRY_URL"))?;
        let state = StateStore::open(&settings.state_dir)?;
        Ok(Self {
            settings,
            generation: generation.number,
            boundaries: generation.boundaries.clone(),
            source_schema: generation.source_schema.clone(),
            live,
            pool,
            consumer,
            dlq,
            registry,
            state,
            rules,
            partitions: HashMap::new(),
            metrics,
        })
    }

    pub async fn run(mut self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let linger = Duration::from_millis(self.settings.batch_linger_ms);
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
                result = async { inflight.as_mut().map(|f| &mut f.commit).expect("guarded").await },
                    if inflight.is_some() =>
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
            let mut records = vec![first];
            let deadline = tokio::time::Instant::now() + linger;
            let batch_max = if self.live.load(std::sync::atomic::Ordering::Relaxed) {
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
            self.forget_revoked();
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

    /// Forgets the set-up of partitions revoked since the last batch.
    fn forget_revoked(&mut self) {
        let revoked: Vec<i32> = self
            .consumer
            .context()
            .revoked
            .lock()
            .map(|mut r| std::mem::take(&mut *r))
            .unwrap_or_default();
        for p in revoked {
            self.partitions.remove(&p);
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
            self.forget_revoked();
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

    /// Sets a partition up on its first message; returns false when the message must be skipped.
    async fn admit(
        &mut self,
        msg: &OwnedMessage,
        seeked: &mut Vec<i32>,
    ) -> Result<bool, BatchError> {
        let p = msg.partition();
        if seeked.contains(&p) {
            return Ok(false);
        }
        if let Some(ps) = self.partitions.get(&p) {
            // Below `next`: already applied (a redelivery after a seek). Above it: a gap the
            // log itself has (compaction, transaction markers).
            return Ok(msg.offset() >= ps.next);
        }
        let topic = self.settings.topic_messages.clone();
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
        let stored = sink::stored_offset(&self.pool, &self.settings.consumer_group, &topic, p)
            .await
            .map_err(|e| BatchError::Transient(e.into()))?;
        let checkpoint = self
            .state
            .checkpoint(&topic, p)
            .map_err(|e| BatchError::Fatal(e.into()))?;
        let (low, high) = tokio::task::block_in_place(|| {
            self.consumer
                .fetch_watermarks(&topic, p, Duration::from_secs(10))
        })
        .map_err(|e| BatchError::Transient(e.into()))?;
        if let Some(s) = stored {
            if s > high {
                return Err(BatchError::Fatal(anyhow::anyhow!(
                    "stored offset {s} of {topic}/{p} is past the end of the partition ({high}): was the topic recreated? \
                     reset the sink as docs/exactly-once.md (\"Resetting the sink\") says"
                )));
            }
        }
        let ps = if checkpoint == stored || (stored.is_none() && checkpoint.is_none()) {
            PartitionState {
                next: stored.unwrap_or(low),
                stored,
                rebuild_until: None,
                rebuild_started: None,
            }
        } else {
            info!(
                partition = p,
                ?stored,
                ?checkpoint,
                low,
                "state does not match the sink; rebuilding the partition"
            );
            self.state
                .clear_partition(&topic, p)
                .map_err(|e| BatchError::Fatal(e.into()))?;
            if low > 0 {
                warn!(
                    partition = p,
                    low,
                    "the partition no longer starts at 0: rebuilt state misses expired messages"
                );
            }
            PartitionState {
                next: low,
                stored,
                rebuild_until: stored.filter(|s| *s > low),
                rebuild_started: Some(std::time::Instant::now()),
            }
        };
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
        let span = info_span!("batch", topic = %self.settings.topic_messages, count = batch.len());
        self.prepare_inner(batch, overlay).instrument(span).await
    }

    async fn prepare_inner(
        &mut self,
        batch: &[OwnedMessage],
        overlay: Option<&Working>,
    ) -> Result<Prepared, BatchError> {
        let started = std::time::Instant::now();
        let window_ms = self.settings.dedup_window_hours.saturating_mul(3_600_000);
        let mut working: Working = HashMap::with_capacity(batch.len());
        let mut touched: Vec<(i32, String, String)> = Vec::new();
        let mut events: Vec<StageEventRow> = Vec::new();
        // Per partition: (stored offset the move starts from, first record applied, next).
        let mut moves: BTreeMap<i32, (Option<i64>, i64, i64)> = BTreeMap::new();
        let mut dead = Vec::new();
        let mut seeked = Vec::new();
        let mut consumed = 0u64;
        let mut duplicates = 0u64;
        // Admit and decode every record first, so the classifications of the records being
        // re-read for a rebuild, or kept by a replay, can be fetched in one query each.
        let mut admitted: Vec<(&OwnedMessage, bool, bool, Result<ChatMessage, String>)> =
            Vec::with_capacity(batch.len());
        for msg in batch {
            if !self.admit(msg, &mut seeked).await? {
                continue;
            }
            let Some(ps) = self.partitions.get(&msg.partition()).copied() else {
                continue;
            };
            let rebuilding = ps.rebuild_until.is_some_and(|u| msg.offset() < u);
            // Before a replay's boundary a record keeps the classification the replaced
            // generation committed (docs/replay.md).
            let kept = !rebuilding
                && self
                    .boundaries
                    .as_ref()
                    .is_some_and(|b| b.keeps_classification(msg.partition(), msg.offset()));
            let decoded = self.decode(msg).await?;
            admitted.push((msg, rebuilding, kept, decoded));
        }
        // A record re-read to rebuild state keeps the classification it was committed with
        // (its stage events), not what today's rules make of it: rules change, and only a
        // replay reclassifies what was already processed.
        let keys_of = |want: fn(bool, bool) -> bool| -> Vec<(&str, &str, &str)> {
            admitted
                .iter()
                .filter(|(_, rebuilding, kept, _)| want(*rebuilding, *kept))
                .filter_map(|(_, _, _, d)| d.as_ref().ok())
                .map(|m| (m.tenant.as_str(), m.phone.as_str(), m.event_id.as_str()))
                .collect()
        };
        let recorded = {
            let keys = keys_of(|rebuilding, _| rebuilding);
            if keys.is_empty() {
                Default::default()
            } else {
                sink::recorded_hits(&self.pool, None, &keys)
                    .await
                    .map_err(|e| BatchError::Transient(e.into()))?
            }
        };
        let kept_hits = {
            let keys = keys_of(|_, kept| kept);
            match (&self.source_schema, keys.is_empty()) {
                (_, true) => Default::default(),
                (Some(schema), false) => sink::recorded_hits(&self.pool, Some(schema), &keys)
                    .await
                    .map_err(|e| BatchError::Transient(e.into()))?,
                (None, false) => {
                    return Err(BatchError::Fatal(anyhow::anyhow!(
                        "generation {} has replay boundaries but no source generation",
                        self.generation
                    )))
                }
            }
        };
        for (msg, rebuilding, kept, decoded) in admitted {
            let p = msg.partition();
            let Some(ps) = self.partitions.get(&p).copied() else {
                continue;
            };
            match decoded {
                Ok(m) => {
                    let (hits, rule_set_version) = if rebuilding || kept {
                        let from = if rebuilding { &recorded } else { &kept_hits };
                        from.get(&(m.tenant.clone(), m.event_id.clone()))
                            .cloned()
                            .unwrap_or_default()
                    } else {
                        let classifier = self.rules.for_tenant(&m.tenant);
                        (
                            classifier.classify(&m.text, &m.channel, m.direction),
                            classifier.version(),
                        )
                    };
                    let ev = Event::of(&m, hits, rule_set_version);
                    let key = (p, m.tenant.clone(), m.phone.clone());
                    if !working.contains_key(&key) {
                        let loaded = match overlay.and_then(|o| o.get(&key)) {
                            Some(st) => st.clone(),
                            None => self
                                .state
                                .contact(p, &m.tenant, &m.phone)
                                .map_err(|e| BatchError::Fatal(e.into()))?
                                .unwrap_or_default(),
                        };
                        working.insert(key.clone(), loaded);
                    }
                    let st = working.get_mut(&key).ok_or_else(|| {
                        BatchError::Fatal(anyhow::anyhow!("working set lost a contact"))
                    })?;
                    let fresh = st.apply(&ev, window_ms);
                    if !rebuilding {
                        if !fresh {
                            duplicates += 1;
                        }
                        if fresh {
                            for h in &ev.hits {
                                events.push(StageEventRow::of(
                                    &m,
                                    h,
                                    ev.rule_set_version,
                                    p,
                                    msg.offset(),
                                ));
                            }
                        }
                        touched.push(key);
                    }
                }
                Err(reason) if !rebuilding => {
                    if self
                        .boundaries
                        .as_ref()
                        .is_some_and(|b| b.already_dead_lettered(p, msg.offset()))
                    {
                        debug!(
                            partition = p,
                            offset = msg.offset(),
                            "poison record already dead-lettered by the replaced generation"
                        );
                    } else {
                        dead.push((msg, reason));
                    }
                }
                Err(_) => {}
            }
            let next = msg.offset() + 1;
            let entry = self
                .partitions
                .get_mut(&p)
                .ok_or_else(|| BatchError::Fatal(anyhow::anyhow!("partition state lost")))?;
            entry.next = next;
            if rebuilding {
                continue;
            }
            consumed += 1;
            if entry.rebuild_until.is_some() {
                entry.rebuild_until = None;
            }
            moves
                .entry(p)
                .and_modify(|m| m.2 = next)
                .or_insert((ps.stored, msg.offset(), next));
        }
        // Partitions whose rebuild reached the stored offset without a new message.
        for (p, ps) in self.partitions.iter_mut() {
            if ps.rebuild_until.is_some_and(|u| ps.next >= u) {
                ps.rebuild_until = None;
                info!(partition = *p, offset = ps.next, "partition state rebuilt");
            }
            if ps.rebuild_until.is_none() {
                if let Some(started) = ps.rebuild_started.take() {
                    self.metrics
                        .restore_seconds
                        .observe(started.elapsed().as_secs_f64());
                }
            }
        }

        // Dead letters must be in Kafka before the offset moves past them.
        for (msg, reason) in &dead {
            self.dead_letter(msg, reason).await?;
        }

        touched.sort();
        touched.dedup();
        let moves: Vec<OffsetMove> = moves
            .iter()
            .map(|(p, (from, start, to))| OffsetMove {
                partition: *p,
                from: *from,
                start: *start,
                to: *to,
            })
            .collect();
        // The next batch starts where this one ends (if this one fails, both are redone).
        for m in &moves {
            if let Some(ps) = self.partitions.get_mut(&m.partition) {
                ps.stored = Some(m.to);
            }
        }
        let checkpoints = self
            .partitions
            .iter()
            .filter(|(_, ps)| ps.rebuild_until.is_none())
            .filter_map(|(p, ps)| ps.stored.map(|s| (*p, s)))
            .collect();
        Ok(Prepared {
            records: batch.len(),
            working,
            touched,
            events,
            moves,
            checkpoints,
            consumed,
            duplicates,
            dead: dead.len() as u64,
            started,
        })
    }

    /// Starts the batch's PostgreSQL transaction (rows, stage events, offset moves) in a task.
    fn start(&self, batch: Prepared, records: Vec<OwnedMessage>) -> InFlight {
        if !batch.moves.is_empty() {
            // Crash tests (FAILPOINTS): mid-batch, dead letters produced, nothing committed.
            fail::fail_point!("before-pg-commit", |_| std::process::abort());
        }
        let batch = Arc::new(batch);
        let (pool, group, topic, b) = (
            self.pool.clone(),
            self.settings.consumer_group.clone(),
            self.settings.topic_messages.clone(),
            batch.clone(),
        );
        let commit = tokio::spawn(async move {
            if b.moves.is_empty() {
                return Ok(Duration::ZERO);
            }
            let started = std::time::Instant::now();
            let rows: Vec<ContactRow<'_>> = b
                .touched
                .iter()
                .filter_map(|k| {
                    b.working.get(k).map(|s| ContactRow {
                        tenant: &k.1,
                        phone: &k.2,
                        state: s,
                    })
                })
                .collect();
            sink::commit_batch(&pool, &group, &topic, &rows, &b.events, &b.moves).await?;
            Ok(started.elapsed())
        });
        InFlight {
            batch,
            records,
            commit,
        }
    }

    /// Completes a batch whose transaction ended: then, and only then, its states and
    /// checkpoints go to RocksDB and its offsets to Kafka (for lag tooling).
    async fn complete(
        &mut self,
        batch: &Prepared,
        result: Result<Result<Duration, SinkError>, tokio::task::JoinError>,
    ) -> Result<(), BatchError> {
        let took = match result {
            Err(e) => return Err(BatchError::Fatal(anyhow::anyhow!("commit task: {e}"))),
            Ok(Err(e @ SinkError::Fenced { .. })) => return Err(BatchError::Fenced(e.into())),
            Ok(Err(e @ SinkError::Db(_))) => return Err(BatchError::Transient(e.into())),
            Ok(Ok(took)) => took,
        };
        let topic = &self.settings.topic_messages;
        // The metrics describe the live sink; a replay's progress is `replay status`.
        let live = self.live.load(std::sync::atomic::Ordering::Relaxed);
        if !batch.moves.is_empty() && live {
            self.metrics.commit_seconds.observe(took.as_secs_f64());
            debug!(
                rows = batch.touched.len(),
                events = batch.events.len(),
                ms = took.as_millis() as u64,
                "batch committed"
            );
        }
        // Counted once the batch is durable; a retried batch counts once.
        if live {
            self.metrics.consumed.inc_by(batch.consumed);
            self.metrics.duplicates.inc_by(batch.duplicates);
            self.metrics.dead_lettered.inc_by(batch.dead);
            for e in &batch.events {
                self.metrics.classified.with_label_values(&[e.stage]).inc();
            }
        }

        // RocksDB after PostgreSQL: a crash in between leaves the checkpoint behind the stored
        // offset, which the next set-up detects and rebuilds.
        if !batch.moves.is_empty() {
            fail::fail_point!("after-pg-commit", |_| std::process::abort());
        }
        let mut sb = StateBatch::default();
        for ((p, tenant, phone), st) in &batch.working {
            sb.put_contact(*p, tenant, phone, st)
                .map_err(|e| BatchError::Fatal(e.into()))?;
        }
        for (p, next) in &batch.checkpoints {
            sb.put_checkpoint(topic, *p, *next);
        }
        self.state
            .write(sb)
            .map_err(|e| BatchError::Fatal(e.into()))?;

        // For lag tooling only (kafka-consumer-groups --describe); failure is not fatal.
        if !batch.moves.is_empty() {
            fail::fail_point!("after-state-write", |_| std::process::abort());
            // The metadata marks the commit as Funnel's: a commit without it was made by
            // another tool (kafka-consumer-groups --reset-offsets), which the processor
            // refuses to ignore (docs/replay.md).
            let metadata = commit_metadata(self.generation);
            let mut tpl = TopicPartitionList::new();
            for m in &batch.moves {
                let mut e = tpl.add_partition(topic, m.partition);
                let _ = e.set_offset(Offset::Offset(m.to));
                e.set_metadata(&metadata);
            }
            if let Err(e) = self.consumer.commit(&tpl, CommitMode::Async) {
                warn!(error = %e, "kafka offset commit failed (lag tooling only)");
            }
        }
        if live {
            self.metrics.batch_messages.observe(batch.records as f64);
            self.metrics
                .batch_seconds
                .observe(batch.started.elapsed().as_secs_f64());
        }
        Ok(())
    }

    /// Decodes and validates a message. The outer error is transient (registry down); the
    /// inner one is the reason a poison message is dead-lettered.
    async fn decode(
        &mut self,
        msg: &OwnedMessage,
    ) -> Result<Result<ChatMessage, String>, BatchError> {
        let Some(bytes) = msg.payload() else {
            return Ok(Err("empty value (tombstone)".into()));
        };
        let (id, payload) = match split_frame(bytes) {
            Ok(f) => f,
            Err(e) => return Ok(Err(e.to_string())),
        };
        let decoder = match self.registry.decoder(id).await {
            Ok(d) => d,
            Err(e @ RegistryError::Unknown { .. }) => return Ok(Err(e.to_string())),
            Err(e @ RegistryError::Unavailable(_)) => return Err(BatchError::Transient(e.into())),
        };
        let m = match decoder.decode(payload) {
            Ok(m) => m,
            Err(e) => return Ok(Err(e.to_string())),
        };
        Ok(validate(&m, msg.key()).map(|()| m))
    }

    async fn dead_letter(&self, msg: &OwnedMessage, reason: &str) -> Result<(), BatchError> {
        warn!(
            partition = msg.partition(),
            offset = msg.offset(),
            error = reason,
            "dead-lettering message"
        );
        let partition = msg.partition().to_string();
        let offset = msg.offset().to_string();
        let mut headers = OwnedHeaders::new()
            .insert(Header {
                key: crate::dlq::ERROR,
                value: Some(reason),
            })
            .insert(Header {
                key: crate::dlq::SOURCE_TOPIC,
                value: Some(&self.settings.topic_messages),
            })
            .insert(Header {
                key: crate::dlq::SOURCE_PARTITION,
                value: Some(&partition),
            })
            .insert(Header {
                key: crate::dlq::SOURCE_OFFSET,
                value: Some(&offset),
            });
        if let Some(h) = msg.headers() {
            for h in h.iter() {
                headers = headers.insert(Header {
                    key: h.key,
                    value: h.value,
                });
            }
        }
        let mut record = FutureRecord::<[u8], [u8]>::to(&self.settings.topic_dlq).headers(headers);
        if let Some(k) = msg.key() {
            record = record.key(k);
        }
        if let Some(v) = msg.payload() {
            record = record.payload(v);
        }
        self.dlq
            .send(record, Duration::from_secs(30))
            .await
            .map_err(|(e, _)| {
                BatchError::Transient(anyhow::anyhow!("dead-letter produce failed: {e}"))
            })?;
        Ok(())
    }
}

/// The metadata of the processor's Kafka offset commits.
pub fn commit_metadata(generation: i32) -> String {
    format!("{COMMIT_METADATA_PREFIX}{generation}")
}

pub const COMMIT_METADATA_PREFIX: &str = "funnel-processor generation=";

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

/// The fatal configuration checks on the input topics: they exist, the co-partitioned ones
/// have the messages topic's partition count, and that count is the one the sink first saw.
async fn check_topics(
    consumer: &StreamConsumer<Context>,
    pool: &PgPool,
    settings: &Settings,
) -> anyhow::Result<()> {
    let topics: Vec<String> = std::iter::once(settings.topic_messages.clone())
        .chain(
            settings
                .co_partitioned_topics
                .iter()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty()),
        )
        .collect();
    let mut counts = Vec::new();
    for t in &topics {
        let md = tokio::task::block_in_place(|| {
            consumer.fetch_metadata(Some(t), Duration::from_secs(15))
        })
        .map_err(|e| {
            anyhow::anyhow!("cannot read the metadata of topic {t} (FUNNEL_KAFKA_BROKERS): {e}")
        })?;
        let n = md
            .topics()
            .iter()
            .find(|m| m.name() == t && m.error().is_none())
            .map_or(0, |m| m.partitions().len());
        anyhow::ensure!(
            n > 0,
            "input topic {t} does not exist; create it (same partition count as {}) or fix FUNNEL_TOPIC_MESSAGES / FUNNEL_CO_PARTITIONED_TOPICS",
            settings.topic_messages
        );
        counts.push((t.clone(), n as i32));
    }
    let (main, main_count) = counts[0].clone();
    for (t, n) in &counts[1..] {
        anyhow::ensure!(
            *n == main_count,
            "topic {t} has {n} partitions but {main} has {main_count}: input topics must be co-partitioned \
             (same partition count, keyed by contact) so one contact's events meet on one partition; \
             recreate {t} with {main_count} partitions"
        );
    }
    let seen: Option<i32> = sqlx::query_scalar(
        "INSERT INTO funnel_sink_topics (consumer_group, topic, partitions) VALUES ($1, $2, $3)
         ON CONFLICT (consumer_group, topic) DO UPDATE SET partitions = funnel_sink_topics.partitions
         RETURNING partitions",
    )
    .bind(&settings.consumer_group)
    .bind(&main)
    .bind(main_count)
    .fetch_optional(pool)
    .await?;
    if let Some(seen) = seen {
        anyhow::ensure!(
            seen == main_count,
            "topic {main} has {main_count} partitions but consumer group {} was built on {seen}: \
             contacts are placed by murmur2(key) mod partitions, so they would move between \
             partitions and their funnel state would split. Keep {seen} partitions, or reset \
             the sink as docs/exactly-once.md (\"Resetting the sink\") says",
            settings.consumer_group
        );
    }
    Ok(())
}

/// What a consumer can rely on beyond the schema: the checks ingest makes, repeated for
/// integrations that produce straight to Kafka.
pub fn validate(m: &ChatMessage, key: Option<&[u8]>) -> Result<(), String> {
    if m.event_id.is_empty() || m.event_id.chars().count() > 128 {
        return Err("event_id must be 1..128 characters".into());
    }
    if m.tenant.is_empty() {
        return Err("tenant must not be empty".into());
    }
    if m.phone.is_empty() {
        return Err("phone must not be empty".into());
    }
    if m.channel.is_empty() {
        return Err("channel must not be empty".into());
    }
    if key != Some(m.phone.as_bytes()) {
        return Err(
            "the record key must be the phone (E.164, UTF-8) so the contact stays on one partition"
                .into(),
        );
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
enum BatchError {
    #[error("transient: {0}")]
    Transient(anyhow::Error),
    #[error("fenced: {0}")]
    Fenced(anyhow::Error),
    #[error("fatal: {0}")]
    Fatal(anyhow::Error),
}
