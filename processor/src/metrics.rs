//! The processor's Prometheus metrics, served at `/metrics` on `FUNNEL_PROCESSOR_ADDR`.
//! Labels are small fixed sets (stage, partition, kind): never a phone, tenant or key.

use funnel_runtime::metrics::MetricSet;
use funnel_schemas::rules::Stage;
use prometheus::{Histogram, IntCounter, IntCounterVec, IntGaugeVec};

pub struct Metrics {
    set: MetricSet,
    /// Records read from the input topic and applied (or dead-lettered), not re-reads.
    pub consumed: IntCounter,
    /// Stage events written, by stage.
    pub classified: IntCounterVec,
    pub dead_lettered: IntCounter,
    /// Duplicates dropped by the fold (event id already folded).
    pub duplicates: IntCounter,
    pub batch_messages: Histogram,
    pub batch_seconds: Histogram,
    pub commit_seconds: Histogram,
    /// Batches retried after a transient error, and batches fenced by a newer owner.
    pub retries: IntCounterVec,
    /// Messages behind the end of each assigned partition (from librdkafka's statistics).
    pub lag: IntGaugeVec,
    /// Partitions assigned and revoked.
    pub rebalances: IntCounterVec,
    /// Time to rebuild a partition's RocksDB state from the log.
    pub restore_seconds: Histogram,
    /// Conversions posted to Meta, by outcome.
    pub conversions: IntCounterVec,
}

impl Default for Metrics {
    fn default() -> Self {
        let set = MetricSet::default();
        let fast = vec![
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ];
        let m = Self {
            consumed: set.counter(
                "funnel_processor_messages_consumed_total",
                "Input records applied or dead-lettered (re-reads while rebuilding state excluded)",
            ),
            classified: set.counter_vec(
                "funnel_processor_stage_events_total",
                "Stage events written, by stage",
                &["stage"],
            ),
            dead_lettered: set.counter(
                "funnel_processor_dead_letters_total",
                "Records sent to the dead-letter topic",
            ),
            duplicates: set.counter(
                "funnel_processor_duplicates_total",
                "Messages dropped because their event id was already folded",
            ),
            batch_messages: set.histogram(
                "funnel_processor_batch_messages",
                "Records per batch",
                vec![1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2000.0, 5000.0],
            ),
            batch_seconds: set.histogram(
                "funnel_processor_batch_seconds",
                "Time to process one batch: decode, classify, fold, commit, state write",
                fast.clone(),
            ),
            commit_seconds: set.histogram(
                "funnel_processor_commit_seconds",
                "Time of the PostgreSQL transaction of one batch (rows, events, offsets)",
                fast,
            ),
            retries: set.counter_vec(
                "funnel_processor_batch_retries_total",
                "Batches started over, by reason: transient (PostgreSQL, broker, registry) or fenced",
                &["reason"],
            ),
            lag: set.gauge_vec(
                "funnel_processor_lag_messages",
                "Records between the group's committed offset and the end of each assigned partition",
                &["partition"],
            ),
            rebalances: set.counter_vec(
                "funnel_processor_rebalances_total",
                "Partitions assigned to or revoked from this instance",
                &["kind"],
            ),
            restore_seconds: set.histogram(
                "funnel_processor_state_restore_seconds",
                "Time to rebuild one partition's state from the log",
                vec![0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0],
            ),
            conversions: set.counter_vec(
                "funnel_processor_conversions_total",
                "Conversions API attempts, by outcome: sent, retried (429, 5xx, no answer, transient codes), parked",
                &["outcome"],
            ),
            set,
        };
        for outcome in ["sent", "retried", "parked"] {
            m.conversions.with_label_values(&[outcome]);
        }
        // Every label value exists from the start, at 0.
        for stage in Stage::ALL {
            m.classified.with_label_values(&[stage.as_str()]);
        }
        for reason in ["transient", "fenced"] {
            m.retries.with_label_values(&[reason]);
        }
        for kind in ["assigned", "revoked"] {
            m.rebalances.with_label_values(&[kind]);
        }
        m
    }
}

impl Metrics {
    /// Every metric in the Prometheus text format.
    pub fn render(&self) -> String {
        self.set.render()
    }
}
