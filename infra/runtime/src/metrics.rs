//! Prometheus metrics: a registry that registers each metric as it is made, and renders the
//! text format for `/metrics`. Names and label sets are fixed in code (a bad one is a bug, so
//! making one panics); labels are small fixed sets, never a phone, tenant or key.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

#[derive(Default)]
pub struct MetricSet {
    registry: Registry,
}

#[allow(clippy::expect_used)]
impl MetricSet {
    fn register<M: prometheus::core::Collector + Clone + 'static>(&self, metric: M) -> M {
        self.registry
            .register(Box::new(metric.clone()))
            .expect("a metric name is registered once");
        metric
    }

    pub fn counter(&self, name: &str, help: &str) -> IntCounter {
        self.register(IntCounter::new(name, help).expect("valid metric"))
    }

    /// A counter per label value; `labels` lists the label names.
    pub fn counter_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        self.register(IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"))
    }

    pub fn gauge(&self, name: &str, help: &str) -> IntGauge {
        self.register(IntGauge::new(name, help).expect("valid metric"))
    }

    pub fn gauge_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        self.register(IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"))
    }

    pub fn histogram(&self, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
        self.register(
            Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
                .expect("valid metric"),
        )
    }

    /// Every metric in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// The `Content-Type` of [`MetricSet::render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_render_with_help_and_labels() {
        let m = MetricSet::default();
        let c = m.counter_vec("funnel_test_total", "Things counted", &["kind"]);
        c.with_label_values(&["a"]).inc_by(3);
        m.histogram("funnel_test_seconds", "Time", vec![0.1, 1.0])
            .observe(0.5);
        let text = m.render();
        assert!(
            text.contains("# HELP funnel_test_total Things counted"),
            "{text}"
        );
        assert!(text.contains("funnel_test_total{kind=\"a\"} 3"), "{text}");
        assert!(
            text.contains("funnel_test_seconds_bucket{le=\"1\"} 1"),
            "{text}"
        );
    }
}
