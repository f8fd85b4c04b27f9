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
    pub whatsapp_webhooks: IntCounterVec,
    pub whatsapp_items: IntCounterVec,
    pub signed: IntCounterVec,
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
            whatsapp_webhooks: set.counter_vec(
                "funnel_ingest_whatsapp_webhooks_total",
                "WhatsApp webhook deliveries, by outcome",
                &["outcome"],
            ),
            whatsapp_items: set.counter_vec(
                "funnel_ingest_whatsapp_items_total",
                "Items of WhatsApp webhook payloads: messages produced, statuses counted, changes ignored, messages unusable",
                &["item"],
            ),
            signed: set.counter_vec(
                "funnel_ingest_signed_webhooks_total",
                "Standard Webhooks deliveries: accepted, replayed (an id seen before), refused",
                &["outcome"],
            ),
            set,
        };
        for reason in ["validation", "unavailable"] {
            m.rejected.with_label_values(&[reason]);
        }
        for outcome in [
            "ok",
            "unauthorized",
            "unknown_channel",
            "invalid",
            "rate_limited",
            "unavailable",
        ] {
            m.whatsapp_webhooks.with_label_values(&[outcome]);
        }
        for item in ["message", "status", "ignored", "unusable"] {
            m.whatsapp_items.with_label_values(&[item]);
        }
        for outcome in ["accepted", "replayed", "refused"] {
            m.signed.with_label_values(&[outcome]);
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
