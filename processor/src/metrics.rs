//! The processor's Prometheus metrics, served at `/metrics` on `FUNNEL_PROCESSOR_ADDR`.
//! Labels are small fixed sets (stage, partition, kind): never a phone, tenant or key.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::rules::Stage;

pub struct Metrics {
    registry: Registry,
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
}

fn seconds(name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    #[allow(clippy::expect_used)]
    Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets)).expect("valid metric")
}

impl Metrics {
    #[allow(clippy::expect_used)]
    pub fn new() -> Self {
        let registry = Registry::new();
        let consumed = IntCounter::new(
            "funnel_processor_messages_consumed_total",
            "Input records applied or dead-lettered (re-reads while rebuilding state excluded)",
        )
        .expect("valid metric");
        let classified = IntCounterVec::new(
            Opts::new(
                "funnel_processor_stage_events_total",
                "Stage events written, by stage",
            ),
            &["stage"],
        )
        .expect("valid metric");
        let dead_lettered = IntCounter::new(
            "funnel_processor_dead_letters_total",
            "Records sent to the dead-letter topic",
        )
        .expect("valid metric");
        let duplicates = IntCounter::new(
            "funnel_processor_duplicates_total",
            "Messages dropped because their event id was already folded",
        )
        .expect("valid metric");
        let batch_messages = seconds(
            "funnel_processor_batch_messages",
            "Records per batch",
            vec![1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2000.0, 5000.0],
        );
        let fast = vec![
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ];
        let batch_seconds = seconds(
            "funnel_processor_batch_seconds",
            "Time to process one batch: decode, classify, fold, commit, state write",
            fast.clone(),
        );
        let commit_seconds = seconds(
            "funnel_processor_commit_seconds",
            "Time of the PostgreSQL transaction of one batch (rows, events, offsets)",
            fast,
        );
        let retries = IntCounterVec::new(
            Opts::new(
                "funnel_processor_batch_retries_total",
                "Batches started over, by reason: transient (PostgreSQL, broker, registry) or fenced",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let lag = IntGaugeVec::new(
            Opts::new(
                "funnel_processor_lag_messages",
                "Records between the group's committed offset and the end of each assigned partition",
            ),
            &["partition"],
        )
        .expect("valid metric");
        let rebalances = IntCounterVec::new(
            Opts::new(
                "funnel_processor_rebalances_total",
                "Partitions assigned to or revoked from this instance",
            ),
            &["kind"],
        )
        .expect("valid metric");
        let restore_seconds = seconds(
            "funnel_processor_state_restore_seconds",
            "Time to rebuild one partition's state from the log",
            vec![0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0],
        );
        for m in [
            Box::new(consumed.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(classified.clone()),
            Box::new(dead_lettered.clone()),
            Box::new(duplicates.clone()),
            Box::new(batch_messages.clone()),
            Box::new(batch_seconds.clone()),
            Box::new(commit_seconds.clone()),
            Box::new(retries.clone()),
            Box::new(lag.clone()),
            Box::new(rebalances.clone()),
            Box::new(restore_seconds.clone()),
        ] {
            registry.register(m).expect("metric registered once");
        }
        for stage in Stage::ALL {
            classified.with_label_values(&[stage.as_str()]);
        }
        for reason in ["transient", "fenced"] {
            retries.with_label_values(&[reason]);
        }
        for kind in ["assigned", "revoked"] {
            rebalances.with_label_values(&[kind]);
        }
        Self {
            registry,
            consumed,
            classified,
            dead_lettered,
            duplicates,
            batch_messages,
            batch_seconds,
            commit_seconds,
            retries,
            lag,
            rebalances,
            restore_seconds,
        }
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
