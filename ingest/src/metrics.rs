//! The ingest service's Prometheus metrics. Labels are small fixed sets: never a phone,
//! tenant or key.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    pub accepted: IntCounter,
    pub rejected: IntCounterVec,
    pub produce_seconds: Histogram,
    pub in_flight: IntGauge,
    pub broker_errors: IntCounter,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let accepted = IntCounter::new(
            "funnel_ingest_messages_accepted_total",
            "Messages acknowledged by the broker and answered as accepted",
        )
        .expect("valid metric");
        let rejected = IntCounterVec::new(
            Opts::new(
                "funnel_ingest_messages_rejected_total",
                "Messages not accepted, by reason",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let produce_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "funnel_ingest_produce_seconds",
                "Time from produce to the broker's acknowledgement",
            )
            .buckets(vec![
                0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
            ]),
        )
        .expect("valid metric");
        let in_flight = IntGauge::new(
            "funnel_ingest_in_flight_messages",
            "Messages produced and waiting for the broker's acknowledgement",
        )
        .expect("valid metric");
        let broker_errors = IntCounter::new(
            "funnel_ingest_broker_errors_total",
            "Produce attempts that failed (queue full, timeout, broker error)",
        )
        .expect("valid metric");
        for m in [
            Box::new(accepted.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(rejected.clone()),
            Box::new(produce_seconds.clone()),
            Box::new(in_flight.clone()),
            Box::new(broker_errors.clone()),
        ] {
            registry.register(m).expect("metric registered once");
        }
        for reason in ["validation", "unavailable"] {
            rejected.with_label_values(&[reason]);
        }
        Self {
            registry,
            accepted,
            rejected,
            produce_seconds,
            in_flight,
            broker_errors,
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
