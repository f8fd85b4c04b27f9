//! The consumer's context: remembers revoked partitions so the loop forgets their set-up,
//! counts rebalances, and publishes lag from librdkafka's statistics (the live generation's
//! pipeline only: a replay's would hide the live sink's).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};
use rdkafka::ClientContext;
use tracing::{info, warn};

use crate::metrics::Metrics;

/// Remembers revoked partitions so the loop forgets their set-up; counts rebalances and
/// publishes lag from librdkafka's statistics.
pub struct Context {
    revoked: Mutex<Vec<i32>>,
    topic: String,
    metrics: Arc<Metrics>,
    /// Only the live generation's pipeline publishes lag: a replay's would hide it.
    live: Arc<AtomicBool>,
}

impl Context {
    pub fn new(topic: &str, metrics: Arc<Metrics>, live: Arc<AtomicBool>) -> Self {
        Self {
            revoked: Mutex::default(),
            topic: topic.to_string(),
            metrics,
            live,
        }
    }

    /// The partitions revoked since the last call.
    pub fn take_revoked(&self) -> Vec<i32> {
        self.revoked
            .lock()
            .map(|mut r| std::mem::take(&mut *r))
            .unwrap_or_default()
    }
}

impl ClientContext for Context {
    fn stats(&self, stats: rdkafka::Statistics) {
        if !self.live.load(Ordering::Relaxed) {
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
        let live = self.live.load(Ordering::Relaxed);
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
