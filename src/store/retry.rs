use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::error::RetryCause;

/// Bounded exponential backoff with full jitter: conflicting transactions
/// spread out instead of colliding again in lockstep.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub max_retries: u32,
    pub base: Duration,
    pub cap: Duration,
}

impl RetryPolicy {
    pub fn new(max_retries: u32) -> RetryPolicy {
        RetryPolicy {
            max_retries,
            base: Duration::from_millis(1),
            cap: Duration::from_millis(100),
        }
    }

    /// The pause before retry number `retry` (0 for the first retry).
    pub fn backoff(&self, retry: u32) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32 << retry.min(20))
            .min(self.cap);
        let micros = u64::try_from(ceiling.as_micros()).unwrap_or(u64::MAX);
        Duration::from_micros(fastrand::u64(0..=micros))
    }
}

/// Retries seen, by cause, since start: read by tests and by /metrics.
#[derive(Debug, Default)]
pub struct RetryCounts {
    counts: [AtomicU64; RetryCause::ALL.len()],
    exhausted: AtomicU64,
}

impl RetryCounts {
    pub(crate) fn record(&self, cause: RetryCause) {
        self.counts[cause as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_exhausted(&self) {
        self.exhausted.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self, cause: RetryCause) -> u64 {
        self.counts[cause as usize].load(Ordering::Relaxed)
    }

    pub fn total(&self) -> u64 {
        RetryCause::ALL.iter().map(|&c| self.get(c)).sum()
    }

    /// Transactions that gave up at the bound (each answered 503 busy).
    pub fn exhausted(&self) -> u64 {
        self.exhausted.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_stays_under_the_cap() {
        let policy = RetryPolicy::new(10);
        for retry in 0..40 {
            let ceiling = policy
                .base
                .saturating_mul(1 << retry.min(20))
                .min(policy.cap);
            assert!(policy.backoff(retry) <= ceiling);
        }
    }
}
