//! The HTTP API's Prometheus metrics. Labels are small fixed sets: never a phone, tenant or
//! key.

use funnel_runtime::metrics::MetricSet;
use prometheus::{Histogram, IntCounter, IntCounterVec, IntGauge};

pub struct Metrics {
    set: MetricSet,
    pub accepted: IntCounter,
    pub rejected: IntCounterVec,
    pub produce_seconds: Histogram,
    pub in_flight: IntGauge,
    pub broker_errors: IntCounter,
}

impl Default for Metrics {
    fn default() -> Self {
        let set = MetricSet::default();
        let m = Self {
            accepted: set.counter(
                "funnel_ingest_messages_accepted_total",
                "Messages acknowledged by the broker and answered as accepted",
            ),
            rejected: set.counter_vec(
                "funnel_ingest_messages_rejected_total",
                "Messages not accepted, by reason",
                &["reason"],
            ),
            produce_seconds: set.histogram(
                "funnel_ingest_produce_seconds",
                "Time from produce to the broker's acknowledgement",
                vec![
                    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
                ],
            ),
            in_flight: set.gauge(
                "funnel_ingest_in_flight_messages",
                "Messages produced and waiting for the broker's acknowledgement",
            ),
            broker_errors: set.counter(
                "funnel_ingest_broker_errors_total",
                "Produce attempts that failed (queue full, timeout, broker error)",
            ),
            set,
        };
        for reason in ["validation", "unavailable"] {
            m.rejected.with_label_values(&[reason]);
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
