//! At most one claim transaction per coupon in flight in this process.
//!
//! A flash sale is thousands of claims on one row. One transaction each makes
//! them abort one another (40001) and throughput falls as clients rise. Here
//! the first claim on a coupon leads: it runs the transaction, and claims
//! that arrive meanwhile queue up and go together in the next one. Waiting
//! claims do not hold a worker: the leader answers them.
//!
//! Across server processes on one database, the store serializes a coupon's
//! claim transactions with an advisory lock (`Store::claim_batch`); claims
//! that queue here while the leader waits for another server's batch join
//! the leader's batch once its turn comes. Releases (`Claims::release`) take
//! the same lock and not this queue: the database orders them with the
//! batches, and nothing queued here depends on stock.

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use log::error;

use crate::domain::{ClaimOutcome, CouponName};
use crate::store::{BatchClaim, Store, StoreError};

use super::sold_out::SoldOut;

/// Receives a claim's outcome; it is expected to answer the client.
pub type Done = Box<dyn FnOnce(Result<ClaimOutcome, StoreError>) + Send>;

/// The most claims decided in one transaction; a longer queue is split.
pub const MAX_BATCH: usize = 1024;

struct Waiting {
    claim: BatchClaim,
    done: Done,
}

pub struct Combiner {
    /// A coupon is a key here exactly while a leader is running its batches;
    /// the value is what arrived since the leader took its current batch.
    queues: Mutex<HashMap<CouponName, Vec<Waiting>>>,
    /// Claims queued behind a running transaction, over all coupons.
    waiting: AtomicUsize,
    stats: BatchStats,
}

impl Combiner {
    pub fn new() -> Combiner {
        Combiner {
            queues: Mutex::new(HashMap::new()),
            waiting: AtomicUsize::new(0),
            stats: BatchStats::default(),
        }
    }

    pub fn stats(&self) -> &BatchStats {
        &self.stats
    }

    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    fn queues(&self) -> MutexGuard<'_, HashMap<CouponName, Vec<Waiting>>> {
        // Nothing panics while holding the lock; recover rather than
        // spread a poison to every later claim.
        self.queues.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn submit(
        &self,
        store: &Store,
        sold_out: &SoldOut,
        coupon: CouponName,
        claim: BatchClaim,
        done: Done,
    ) {
        {
            let mut queues = self.queues();
            if let Some(queue) = queues.get_mut(&coupon) {
                queue.push(Waiting { claim, done });
                self.waiting.fetch_add(1, Ordering::SeqCst);
                return;
            }
            queues.insert(coupon.clone(), Vec::new());
        }
        let mut batch = vec![Waiting { claim, done }];
        loop {
            self.run(store, sold_out, &coupon, batch);
            let mut queues = self.queues();
            let Some(queue) = queues.get_mut(&coupon) else {
                return;
            };
            if queue.is_empty() {
                queues.remove(&coupon);
                return;
            }
            drop(queues);
            batch = self.take_queued(&coupon, MAX_BATCH);
        }
    }

    /// Queues a claim behind `coupon`'s leader when one is running and
    /// fewer than a batch's worth wait; the caller's claim otherwise goes
    /// through [`Combiner::submit`] from a worker, whose bounded queue is
    /// what bounds the claims waiting here.
    pub fn join_running(
        &self,
        coupon: &CouponName,
        make: impl FnOnce() -> (BatchClaim, Done),
    ) -> bool {
        let mut queues = self.queues();
        let Some(queue) = queues.get_mut(coupon) else {
            return false;
        };
        if queue.len() >= MAX_BATCH {
            return false;
        }
        let (claim, done) = make();
        queue.push(Waiting { claim, done });
        self.waiting.fetch_add(1, Ordering::SeqCst);
        true
    }

    fn run(&self, store: &Store, sold_out: &SoldOut, coupon: &CouponName, batch: Vec<Waiting>) {
        let mut batch = batch;
        let claims: Vec<BatchClaim> = batch.iter().map(|w| w.claim.clone()).collect();
        // Claims that arrived while the batch waited for another server's
        // batch on the same coupon: they join it rather than wait a turn.
        let mut late: Vec<Waiting> = Vec::new();
        let decided = catch_unwind(AssertUnwindSafe(|| {
            store.claim_batch(coupon, claims, || {
                let room = MAX_BATCH.saturating_sub(batch.len() + late.len());
                let joined = self.take_queued(coupon, room);
                let claims = joined.iter().map(|w| w.claim.clone()).collect();
                late.extend(joined);
                claims
            })
        }))
        .unwrap_or_else(|_| {
            Err(StoreError::Internal(
                "the claim transaction panicked".into(),
            ))
        });
        batch.extend(late);
        self.stats.record(batch.len());
        // Only coupons without a window: a windowed coupon's answer depends on
        // the database clock, so it is always asked.
        let sold_out_now =
            matches!(&decided, Ok(result) if result.remaining == Some(0) && !result.windowed);
        match decided {
            Ok(result) => {
                debug_assert_eq!(result.outcomes.len(), batch.len());
                for (waiting, outcome) in batch.into_iter().zip(result.outcomes) {
                    answer(waiting.done, Ok(outcome));
                }
            }
            Err(err) => {
                for waiting in batch {
                    answer(waiting.done, Err(err.clone()));
                }
            }
        }
        if sold_out_now {
            sold_out.learn(store, coupon);
        }
    }

    /// Up to `room` of the claims queued behind `coupon`'s leader, oldest
    /// first, taken off the queue.
    fn take_queued(&self, coupon: &CouponName, room: usize) -> Vec<Waiting> {
        let mut queues = self.queues();
        let Some(queue) = queues.get_mut(coupon) else {
            return Vec::new();
        };
        let take = queue.len().min(room);
        self.waiting.fetch_sub(take, Ordering::SeqCst);
        queue.drain(..take).collect()
    }
}

/// A failing answer must not stop the leader: the claims queued behind it
/// would never be decided.
fn answer(done: Done, outcome: Result<ClaimOutcome, StoreError>) {
    if catch_unwind(AssertUnwindSafe(|| done(outcome))).is_err() {
        error!("answering a claim panicked");
    }
}

/// How many claims went into how many transactions: a Prometheus
/// histogram of batch sizes, observed as each batch is decided, which GET
/// /metrics gathers (see `metrics`).
pub struct BatchStats {
    largest: AtomicU64,
    sizes: prometheus::Histogram,
}

impl Default for BatchStats {
    fn default() -> BatchStats {
        let buckets = (0..=10).map(|i| f64::from(1u32 << i)).collect();
        let opts = prometheus::HistogramOpts::new(
            "flash_coupons_claim_batch_size",
            "Claims decided together in one transaction.",
        )
        .buckets(buckets);
        BatchStats {
            largest: AtomicU64::new(0),
            // The options are constant and valid.
            sizes: prometheus::Histogram::with_opts(opts).expect("valid histogram options"),
        }
    }
}

impl BatchStats {
    fn record(&self, size: usize) {
        let size = size as u64;
        self.largest.fetch_max(size, Ordering::Relaxed);
        self.sizes.observe(size as f64);
    }

    pub fn batches(&self) -> u64 {
        self.sizes.get_sample_count()
    }

    pub fn claims(&self) -> u64 {
        // Whole numbers of claims: the sum is exact up to 2^53.
        self.sizes.get_sample_sum() as u64
    }

    pub fn largest(&self) -> u64 {
        self.largest.load(Ordering::Relaxed)
    }

    /// The histogram, for a registry to gather.
    pub fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        vec![Box::new(self.sizes.clone())]
    }
}
