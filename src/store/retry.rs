//! How often a transaction that failed to serialize is run again, the
//! pause before each attempt, and the counts of retries that /metrics shows.

use std::time::Duration;

use prometheus::core::Collector;
use prometheus::{IntCounter, IntCounterVec, Opts};

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

/// Retries seen, by cause, since start, and transactions that gave up at
/// the bound: Prometheus counters, counted as it happens, which GET
/// /metrics gathers (see `metrics`); tests read them too.
#[derive(Debug)]
pub struct RetryCounts {
    by_cause: IntCounterVec,
    /// `by_cause`'s counter for each cause, in the order of RetryCause::ALL.
    counts: [IntCounter; RetryCause::ALL.len()],
    exhausted: IntCounter,
}

impl Default for RetryCounts {
    fn default() -> RetryCounts {
        // The definitions are constants: building them cannot fail.
        let by_cause = IntCounterVec::new(
            Opts::new(
                "flash_coupons_claim_retries_total",
                "Claim transactions run again, by cause.",
            ),
            &["cause"],
        )
        .expect("a valid metric definition");
        // Every cause is in the exposition from the start, at 0.
        let counts = RetryCause::ALL.map(|cause| by_cause.with_label_values(&[cause.label()]));
        let exhausted = IntCounter::new(
            "flash_coupons_claim_retries_exhausted_total",
            "Claim transactions that gave up at CLAIM_MAX_RETRIES (answered 503 busy).",
        )
        .expect("a valid metric definition");
        RetryCounts {
            by_cause,
            counts,
            exhausted,
        }
    }
}

impl RetryCounts {
    pub(crate) fn record(&self, cause: RetryCause) {
        self.counts[cause as usize].inc();
    }

    pub(crate) fn record_exhausted(&self) {
        self.exhausted.inc();
    }

    pub fn get(&self, cause: RetryCause) -> u64 {
        self.counts[cause as usize].get()
    }

    pub fn total(&self) -> u64 {
        RetryCause::ALL.iter().map(|&c| self.get(c)).sum()
    }

    /// Transactions that gave up at the bound (each answered 503 busy).
    pub fn exhausted(&self) -> u64 {
        self.exhausted.get()
    }

    /// The counters, for a registry to gather.
    pub fn collectors(&self) -> Vec<Box<dyn Collector>> {
        vec![
            Box::new(self.by_cause.clone()),
            Box::new(self.exhausted.clone()),
        ]
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
