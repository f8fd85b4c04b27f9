//! Per-tenant rate limits: messages per second with a burst on the ingest endpoints (a batch
//! counts its messages), requests per second on the others. Defaults come from the settings;
//! per-tenant values from `funnel_tenant_limits` (`funnel-ingest tenant limits`), which the
//! service reads again every few seconds ([`Limiter::set_stored`]), so a change applies without
//! a restart. GCRA buckets from `governor`.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use crate::queries::tenants::StoredLimits;
use governor::clock::{Clock, DefaultClock};
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

type Bucket = RateLimiter<NotKeyed, InMemoryState, DefaultClock>;

/// The limits in force for a tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Effective {
    pub messages_per_second: NonZeroU32,
    pub burst: NonZeroU32,
    pub reads_per_second: NonZeroU32,
}

impl Effective {
    /// `stored` over these defaults; a stored rate without a stored burst gets twice the rate.
    fn with(self, stored: &StoredLimits) -> Effective {
        let positive = |v: Option<i32>| v.and_then(|v| NonZeroU32::new(u32::try_from(v).ok()?));
        let messages_per_second =
            positive(stored.messages_per_second).unwrap_or(self.messages_per_second);
        let burst = positive(stored.burst).unwrap_or(if stored.messages_per_second.is_some() {
            messages_per_second.saturating_mul(NonZeroU32::MIN.saturating_add(1))
        } else {
            self.burst
        });
        Effective {
            messages_per_second,
            burst,
            reads_per_second: positive(stored.reads_per_second).unwrap_or(self.reads_per_second),
        }
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Over {
    /// Over the rate: this much later it would pass.
    RetryAfter(Duration),
    /// More messages at once than the burst: it never passes; send smaller batches.
    LargerThanBurst { burst: u32 },
}

struct Buckets {
    limits: Effective,
    messages: Bucket,
    reads: Bucket,
}

impl Buckets {
    fn new(limits: Effective) -> Self {
        Buckets {
            limits,
            messages: RateLimiter::direct(
                Quota::per_second(limits.messages_per_second).allow_burst(limits.burst),
            ),
            reads: RateLimiter::direct(Quota::per_second(limits.reads_per_second)),
        }
    }
}

pub struct Limiter {
    defaults: Effective,
    stored: RwLock<HashMap<String, StoredLimits>>,
    buckets: Mutex<HashMap<String, Arc<Buckets>>>,
    clock: DefaultClock,
}

impl Limiter {
    pub fn new(defaults: Effective) -> Self {
        Limiter {
            defaults,
            stored: RwLock::new(HashMap::new()),
            buckets: Mutex::new(HashMap::new()),
            clock: DefaultClock::default(),
        }
    }

    /// The limits in force for `tenant`.
    pub fn limits(&self, tenant: &str) -> Effective {
        let stored = self.stored.read().unwrap_or_else(|e| e.into_inner());
        stored
            .get(tenant)
            .map_or(self.defaults, |s| self.defaults.with(s))
    }

    /// The tenant's buckets; new ones when its limits changed.
    fn buckets(&self, tenant: &str) -> Arc<Buckets> {
        let limits = self.limits(tenant);
        let mut all = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        match all.get(tenant) {
            Some(b) if b.limits == limits => b.clone(),
            _ => {
                let b = Arc::new(Buckets::new(limits));
                all.insert(tenant.to_string(), b.clone());
                b
            }
        }
    }

    /// Takes `n` messages from the tenant's message bucket, or says why not.
    pub fn messages(&self, tenant: &str, n: usize) -> Result<(), Over> {
        let b = self.buckets(tenant);
        let burst = b.limits.burst.get();
        let n = u32::try_from(n)
            .ok()
            .and_then(NonZeroU32::new)
            .unwrap_or(NonZeroU32::MIN);
        match b.messages.check_n(n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(Over::RetryAfter(not_until.wait_time_from(self.clock.now()))),
            Err(_) => Err(Over::LargerThanBurst { burst }),
        }
    }

    /// Takes one request from the tenant's read bucket, or says how long to wait.
    pub fn read(&self, tenant: &str) -> Result<(), Over> {
        let b = self.buckets(tenant);
        b.reads
            .check()
            .map_err(|not_until| Over::RetryAfter(not_until.wait_time_from(self.clock.now())))
    }

    /// Replaces the stored per-tenant limits.
    pub fn set_stored(&self, stored: HashMap<String, StoredLimits>) {
        *self.stored.write().unwrap_or_else(|e| e.into_inner()) = stored;
    }
}

/// Whole seconds to put in `Retry-After` (at least 1).
pub fn retry_after_secs(wait: Duration) -> u32 {
    u32::try_from(wait.as_secs() + u64::from(wait.subsec_nanos() > 0))
        .unwrap_or(u32::MAX)
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nz(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).expect("positive")
    }

    fn defaults() -> Effective {
        Effective {
            messages_per_second: nz(10),
            burst: nz(20),
            reads_per_second: nz(2),
        }
    }

    #[test]
    fn a_burst_passes_then_the_rate_holds() {
        let l = Limiter::new(defaults());
        assert_eq!(l.messages("a", 20), Ok(()));
        let Err(Over::RetryAfter(wait)) = l.messages("a", 1) else {
            panic!("the 21st message passed");
        };
        assert!(wait <= Duration::from_millis(100), "{wait:?}");
        // Another tenant has its own bucket.
        assert_eq!(l.messages("b", 20), Ok(()));
        assert_eq!(
            l.messages("c", 21),
            Err(Over::LargerThanBurst { burst: 20 })
        );
        assert_eq!(l.read("a"), Ok(()));
        assert_eq!(l.read("a"), Ok(()));
        assert!(matches!(l.read("a"), Err(Over::RetryAfter(_))));
    }

    #[test]
    fn stored_limits_apply_without_a_restart() {
        let l = Limiter::new(defaults());
        assert!(l.messages("a", 20).is_ok());
        assert!(l.messages("a", 1).is_err());
        l.set_stored(HashMap::from([(
            "a".to_string(),
            StoredLimits {
                messages_per_second: Some(100),
                burst: None,
                reads_per_second: None,
            },
        )]));
        assert_eq!(l.limits("a").burst, nz(200));
        assert_eq!(l.limits("a").reads_per_second, nz(2));
        // New limits, new bucket: full again.
        assert_eq!(l.messages("a", 200), Ok(()));
        assert_eq!(l.limits("other"), defaults());
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1500)), 2);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
    }
}
