//! Claims on a sold-out coupon, answered without a write.
//!
//! Every claim row is inserted in the same transaction that takes a unit, so
//! while a coupon stays at 0 its holders are final: a holder gets 409 and
//! anyone else 400, from memory when the holders are few enough, from one
//! index probe otherwise. Stock can rise again (a release, anyone's SQL), so
//! what is remembered is dropped whenever a commit may have changed it, and
//! used only while the freshness listener is known to hear of such commits:
//! docs/architecture.md, "Keeping the memory fresh", says how, and why a
//! learning is registered before its read (the race with a release). Here:
//! [`SoldOut::forget`] for this process's releases, and [`StockEvents`] for
//! what the listener reports.

use std::collections::{HashMap, HashSet};
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use prometheus::IntCounter;
use prometheus::core::Collector;

use crate::domain::{ClaimOutcome, CouponName, UserId};
use crate::store::{StockEvents, Store, StoreError};

/// Holders kept in memory for one coupon at most.
const MAX_HOLDERS_PER_COUPON: usize = 10_000;
/// Holders kept in memory over all coupons at most.
const MAX_HOLDERS_IN_MEMORY: usize = 1_000_000;
/// Sold-out coupons remembered at most; later ones take the normal path.
const MAX_COUPONS: usize = 100_000;

enum Holders {
    InMemory(HashSet<String>),
    InDatabase,
}

impl Holders {
    fn in_memory(&self) -> usize {
        match self {
            Holders::InMemory(set) => set.len(),
            Holders::InDatabase => 0,
        }
    }
}

pub enum Verdict {
    Known(Result<ClaimOutcome, StoreError>),
    Open,
}

/// What is remembered, and what is being learned, under one lock.
#[derive(Default)]
struct Memory {
    known: HashMap<CouponName, Holders>,
    /// Coupons whose holders are being read, and whether they were
    /// forgotten since (spoiled).
    learning: HashMap<CouponName, bool>,
}

pub struct SoldOut {
    memory: RwLock<Memory>,
    holders_in_memory: AtomicUsize,
    /// Memory answers while `origin.elapsed()` is below this many
    /// nanoseconds: 0 until the listener first confirms its connection.
    fresh_until: AtomicU64,
    origin: Instant,
    /// Whether the listener holds a connection that has LISTENed.
    listening: AtomicBool,
    /// Prometheus counters, counted as it happens, which GET /metrics
    /// gathers (see `metrics`).
    connects: IntCounter,
    notifications: IntCounter,
}

/// The freshness listener's state, for /metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Freshness {
    /// Memory may answer now: the listener's connection was confirmed
    /// within the last second.
    pub fresh: bool,
    pub listening: bool,
    /// Connections the listener has LISTENed on since start.
    pub connects: u64,
    /// Notifications heard since start.
    pub notifications: u64,
}

impl SoldOut {
    pub fn new() -> SoldOut {
        SoldOut {
            memory: RwLock::new(Memory::default()),
            holders_in_memory: AtomicUsize::new(0),
            fresh_until: AtomicU64::new(0),
            origin: Instant::now(),
            listening: AtomicBool::new(false),
            // The definitions are constants: building them cannot fail.
            connects: IntCounter::new(
                "flash_coupons_freshness_listener_connects_total",
                "Connections the freshness listener has LISTENed on (each forgets every sold-out coupon).",
            )
            .expect("a valid metric definition"),
            notifications: IntCounter::new(
                "flash_coupons_freshness_notifications_total",
                "Stock notifications heard (a coupon, or every coupon, forgotten).",
            )
            .expect("a valid metric definition"),
        }
    }

    /// The listener's counters, for a registry to gather.
    pub fn collectors(&self) -> Vec<Box<dyn Collector>> {
        vec![
            Box::new(self.connects.clone()),
            Box::new(self.notifications.clone()),
        ]
    }

    /// Whether memory may answer now.
    fn fresh(&self) -> bool {
        let now = u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX);
        now < self.fresh_until.load(Ordering::SeqCst)
    }

    pub fn verdict(&self, store: &Store, coupon: &CouponName, user: &UserId) -> Verdict {
        if !self.fresh() {
            return Verdict::Open;
        }
        let memory = self.read();
        let decide = |holds: bool| {
            if holds {
                ClaimOutcome::AlreadyClaimed
            } else {
                ClaimOutcome::OutOfStock
            }
        };
        match memory.known.get(coupon) {
            None => Verdict::Open,
            Some(Holders::InMemory(set)) => Verdict::Known(Ok(decide(set.contains(user.as_str())))),
            Some(Holders::InDatabase) => {
                drop(memory);
                Verdict::Known(store.holds(coupon, user).map(decide))
            }
        }
    }

    /// Records that `coupon` is at 0, with its holders, if a read of both
    /// in one snapshot says so and the coupon was not forgotten meanwhile. A
    /// failed read is simply not recorded: the next batch that sees 0 tries
    /// again.
    pub fn learn(&self, store: &Store, coupon: &CouponName) {
        if !self.fresh() {
            return;
        }
        {
            let mut memory = self.write();
            if memory.known.contains_key(coupon)
                || memory.known.len() >= MAX_COUPONS
                || memory.learning.contains_key(coupon)
            {
                return;
            }
            memory.learning.insert(coupon.clone(), false);
        }
        let read = store.sold_out_holders(coupon, MAX_HOLDERS_PER_COUPON as i64 + 1);
        let mut memory = self.write();
        let spoiled = memory.learning.remove(coupon).unwrap_or(true);
        let Ok(Some(holders)) = read else {
            return;
        };
        if spoiled || memory.known.contains_key(coupon) {
            return;
        }
        let count = holders.len();
        let fits = count <= MAX_HOLDERS_PER_COUPON
            && self
                .holders_in_memory
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
                    (used + count <= MAX_HOLDERS_IN_MEMORY).then_some(used + count)
                })
                .is_ok();
        let entry = if fits {
            Holders::InMemory(holders.into_iter().collect())
        } else {
            Holders::InDatabase
        };
        memory.known.insert(coupon.clone(), entry);
    }

    /// Drops what is remembered about `coupon` (`None`: about every coupon),
    /// and spoils any learning of it under way.
    pub fn forget(&self, coupon: Option<&CouponName>) {
        let mut memory = self.write();
        let freed: usize = match coupon {
            Some(coupon) => {
                if let Some(spoiled) = memory.learning.get_mut(coupon) {
                    *spoiled = true;
                }
                memory.known.remove(coupon).map_or(0, |h| h.in_memory())
            }
            None => {
                memory
                    .learning
                    .values_mut()
                    .for_each(|spoiled| *spoiled = true);
                memory.known.drain().map(|(_, h)| h.in_memory()).sum()
            }
        };
        self.holders_in_memory.fetch_sub(freed, Ordering::SeqCst);
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Memory> {
        self.memory.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Memory> {
        self.memory.write().unwrap_or_else(|p| p.into_inner())
    }

    /// How many sold-out coupons are answered from memory and from the
    /// database, for /metrics.
    pub fn sizes(&self) -> (usize, usize) {
        let memory = self.read();
        let in_memory = memory
            .known
            .values()
            .filter(|h| matches!(h, Holders::InMemory(_)))
            .count();
        (in_memory, memory.known.len() - in_memory)
    }

    pub fn freshness(&self) -> Freshness {
        Freshness {
            fresh: self.fresh(),
            listening: self.listening.load(Ordering::SeqCst),
            connects: self.connects.get(),
            notifications: self.notifications.get(),
        }
    }
}

impl StockEvents for SoldOut {
    fn listening(&self) {
        // Nothing heard before this connection can be trusted: notifications
        // sent while there was none are lost.
        self.forget(None);
        self.listening.store(true, Ordering::SeqCst);
        self.connects.inc();
    }

    fn confirmed_until(&self, until: Instant) {
        let nanos = until
            .checked_duration_since(self.origin)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        if self.listening.load(Ordering::SeqCst) {
            self.fresh_until.fetch_max(nanos, Ordering::SeqCst);
        }
    }

    fn lost(&self) {
        self.listening.store(false, Ordering::SeqCst);
        self.fresh_until.store(0, Ordering::SeqCst);
        self.forget(None);
    }

    fn changed(&self, coupon: Option<&str>) {
        self.notifications.inc();
        match coupon {
            // A name the service would refuse is never remembered, nor
            // learned.
            Some(name) => {
                if let Ok(name) = CouponName::parse(name) {
                    self.forget(Some(&name));
                }
            }
            None => self.forget(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn name(n: &str) -> CouponName {
        CouponName::parse(n).unwrap()
    }

    fn remember(sold_out: &SoldOut, coupon: &str, holders: &[&str]) {
        let set: HashSet<String> = holders.iter().map(|h| h.to_string()).collect();
        sold_out
            .holders_in_memory
            .fetch_add(set.len(), Ordering::SeqCst);
        sold_out
            .write()
            .known
            .insert(name(coupon), Holders::InMemory(set));
    }

    #[test]
    fn memory_answers_only_while_the_listener_is_confirmed() {
        let sold_out = SoldOut::new();
        assert!(!sold_out.fresh(), "not before the listener first listens");
        sold_out.listening();
        assert!(!sold_out.fresh(), "not before its first round trip");
        sold_out.confirmed_until(Instant::now() + Duration::from_secs(60));
        assert!(sold_out.fresh());
        sold_out.confirmed_until(Instant::now());
        assert!(sold_out.fresh(), "a lease is never shortened");
        sold_out.lost();
        assert!(!sold_out.fresh(), "not once the connection is lost");
        sold_out.confirmed_until(Instant::now() + Duration::from_secs(60));
        assert!(!sold_out.fresh(), "nor until it listens again");
        let lapsed = SoldOut::new();
        lapsed.listening();
        lapsed.confirmed_until(Instant::now());
        assert!(!lapsed.fresh(), "not once the lease ran out");
    }

    #[test]
    fn notifications_forget_one_coupon_or_all_and_free_their_holders() {
        let sold_out = SoldOut::new();
        remember(&sold_out, "A", &["u1", "u2"]);
        remember(&sold_out, "B", &["u3"]);
        sold_out.write().learning.insert(name("A"), false);
        sold_out.write().learning.insert(name("Z"), false);
        sold_out.changed(Some("A"));
        assert_eq!(sold_out.sizes(), (1, 0));
        assert_eq!(sold_out.holders_in_memory.load(Ordering::SeqCst), 1);
        assert!(sold_out.read().learning[&name("A")], "A's learning spoiled");
        assert!(!sold_out.read().learning[&name("Z")], "Z's not");
        sold_out.changed(Some(" not a name "));
        assert_eq!(sold_out.sizes(), (1, 0), "a name never remembered");
        remember(&sold_out, "C", &["u4"]);
        sold_out.changed(None);
        assert_eq!(sold_out.sizes(), (0, 0));
        assert!(sold_out.read().learning[&name("Z")], "everything spoils Z");
        assert_eq!(sold_out.holders_in_memory.load(Ordering::SeqCst), 0);
        remember(&sold_out, "D", &["u5"]);
        sold_out.listening();
        assert_eq!(sold_out.sizes(), (0, 0), "a new connection forgets all");
        assert_eq!(sold_out.freshness().notifications, 3);
    }
}
