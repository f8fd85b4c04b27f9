//! The commit of a batch: its PostgreSQL transaction (contact rows, stage events, offset moves,
//! conditional on the stored offsets) runs in a task while the next batch is prepared; once it
//! has committed, and only then, the states and checkpoints go to RocksDB and the offsets to
//! Kafka (for lag tooling).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use funnel_runtime::sink::{self, ContactRow, ConversionRow, OffsetMove, SinkError, StageEventRow};
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::OwnedMessage;
use rdkafka::{Offset, TopicPartitionList};
use tracing::{debug, warn};

use super::batch::{Key, Working};
use super::{BatchError, Pipeline};
use crate::replay::offsets::commit_metadata;
use crate::state::StateBatch;

/// A batch folded and ready to commit: everything its PostgreSQL transaction and RocksDB write
/// need, owned, so the transaction can run while the next batch is prepared.
pub(super) struct Prepared {
    /// Records in the batch
    pub records: usize,
    pub working: Working,
    /// The contacts whose rows change (not those only re-read for a rebuild), in key order
    pub touched: Vec<Key>,
    pub events: Vec<StageEventRow>,
    /// Conversions for Meta the events lead to (live generation only)
    pub conversions: Vec<ConversionRow>,
    pub moves: Vec<OffsetMove>,
    /// Per settled partition, the next offset its RocksDB state includes after this batch
    pub checkpoints: Vec<(i32, i64)>,
    pub consumed: u64,
    pub duplicates: u64,
    pub dead: u64,
    pub started: Instant,
}

/// A batch whose PostgreSQL transaction is running, with its records (to redo it if the
/// transaction fails).
pub(super) struct InFlight {
    pub batch: Arc<Prepared>,
    pub records: Vec<OwnedMessage>,
    pub commit: tokio::task::JoinHandle<Result<Duration, SinkError>>,
}

pub(super) type CommitResult = Result<Result<Duration, SinkError>, tokio::task::JoinError>;

impl Pipeline {
    /// Starts the batch's PostgreSQL transaction (rows, stage events, offset moves) in a task.
    pub(super) fn start(&self, batch: Prepared, records: Vec<OwnedMessage>) -> InFlight {
        if !batch.moves.is_empty() {
            // Crash tests (FAILPOINTS): mid-batch, dead letters produced, nothing committed.
            fail::fail_point!("before-pg-commit", |_| std::process::abort());
        }
        let batch = Arc::new(batch);
        let (pool, group, topic, b) = (
            self.pool.clone(),
            self.group.clone(),
            self.settings.kafka.topic_messages.clone(),
            batch.clone(),
        );
        let commit = tokio::spawn(async move {
            if b.moves.is_empty() {
                return Ok(Duration::ZERO);
            }
            let started = Instant::now();
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
            sink::commit_batch(
                &pool,
                &group,
                &topic,
                &rows,
                &b.events,
                &b.moves,
                &b.conversions,
            )
            .await?;
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
    pub(super) async fn complete(
        &mut self,
        batch: &Prepared,
        result: CommitResult,
    ) -> Result<(), BatchError> {
        let took = match result {
            Err(e) => return Err(BatchError::Fatal(anyhow::anyhow!("commit task: {e}"))),
            Ok(Err(e @ SinkError::Fenced { .. })) => return Err(BatchError::Fenced(e.into())),
            Ok(Err(e @ SinkError::Db(_))) => return Err(BatchError::Transient(e.into())),
            Ok(Ok(took)) => took,
        };
        // The metrics describe the live sink; a replay's progress is `replay status`.
        let live = self.live.load(Ordering::Relaxed);
        if live {
            self.count(batch, took);
        }
        // RocksDB after PostgreSQL: a crash in between leaves the checkpoint behind the stored
        // offset, which the next set-up detects and rebuilds.
        if !batch.moves.is_empty() {
            fail::fail_point!("after-pg-commit", |_| std::process::abort());
        }
        let topic = &self.settings.kafka.topic_messages;
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
        if !batch.moves.is_empty() {
            fail::fail_point!("after-state-write", |_| std::process::abort());
            self.commit_to_kafka(&batch.moves);
        }
        if live {
            self.metrics.batch_messages.observe(batch.records as f64);
            self.metrics
                .batch_seconds
                .observe(batch.started.elapsed().as_secs_f64());
        }
        Ok(())
    }

    /// Counts a batch once it is durable (a retried batch counts once).
    fn count(&self, batch: &Prepared, took: Duration) {
        let m = &self.metrics;
        if !batch.moves.is_empty() {
            m.commit_seconds.observe(took.as_secs_f64());
            debug!(
                rows = batch.touched.len(),
                events = batch.events.len(),
                ms = took.as_millis() as u64,
                "batch committed"
            );
        }
        m.consumed.inc_by(batch.consumed);
        m.duplicates.inc_by(batch.duplicates);
        m.dead_lettered.inc_by(batch.dead);
        for e in &batch.events {
            m.classified.with_label_values(&[e.stage]).inc();
        }
    }

    /// Commits the batch's offsets to Kafka, for lag tooling only (`kafka-consumer-groups
    /// --describe`); a failure is logged, not fatal. The metadata marks the commit as Funnel's:
    /// a commit without it was made by another tool, which the processor refuses to ignore
    /// (docs/replay.md).
    fn commit_to_kafka(&self, moves: &[OffsetMove]) {
        let metadata = commit_metadata(self.generation);
        let mut tpl = TopicPartitionList::new();
        for m in moves {
            let mut e = tpl.add_partition(&self.settings.kafka.topic_messages, m.partition);
            let _ = e.set_offset(Offset::Offset(m.to));
            e.set_metadata(&metadata);
        }
        if let Err(e) = self.consumer.commit(&tpl, CommitMode::Async) {
            warn!(error = %e, "kafka offset commit failed (lag tooling only)");
        }
    }
}
