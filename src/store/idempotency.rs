//! Idempotency keys in the database (table `idempotency_keys`, schema.sql):
//! looking up what a key was recorded with, recording keys in the
//! transaction of their answer's effect, and removing expired ones.
//!
//! A key is recorded exactly when its effect committed: the claim, create or
//! release transaction records it itself. Creates and releases look their
//! key up and record it ([`recorded_keys`], [`record_keys`]); claims, which
//! run many at once, reserve their keys first and settle them at the end
//! ([`reserve_keys`], [`settle_keys`]), so that they never read a key's
//! index page and fail one another to serialize (schema.sql says why). A key
//! older than IDEMPOTENCY_TTL_HOURS does not count, and [`KeySweeper`]
//! removes such rows a few hundred at a time, in short transactions that
//! skip rows anyone holds, so that no claim ever waits on it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use log::debug;

use crate::domain::{IdempotencyKey, Operation};
use crate::failure_log::FailureLog;

use super::session::BEGIN_WRITE;
use super::statements::Statements;
use super::{Store, StoreError, in_transaction};

/// What a key was recorded with: the request it came with, and the stock
/// in its answer (claims and releases).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedKey {
    pub request: String,
    pub remaining_amount: Option<i32>,
}

/// What a key means for a request that comes with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyVerdict {
    /// Recorded by this same request: answer what it was answered, again.
    Replay { remaining_amount: Option<i32> },
    /// Recorded for another request: refuse.
    Mismatch,
}

impl RecordedKey {
    /// What this record means for a request asking for `request`.
    pub fn verdict(&self, request: &str) -> KeyVerdict {
        if self.request == request {
            KeyVerdict::Replay {
                remaining_amount: self.remaining_amount,
            }
        } else {
            KeyVerdict::Mismatch
        }
    }
}

/// The live records of `keys` for `operation`, by key.
pub(super) fn recorded_keys(
    tx: &mut postgres::Client,
    stmts: &Statements,
    operation: Operation,
    keys: &[&str],
    ttl_hours: i32,
) -> Result<HashMap<String, RecordedKey>, postgres::Error> {
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = tx.query(
        &stmts.recorded_keys,
        &[&operation.as_str(), &keys, &ttl_hours],
    )?;
    Ok(rows
        .iter()
        .map(|row| {
            (
                row.get("key"),
                RecordedKey {
                    request: row.get("request"),
                    remaining_amount: row.get("remaining_amount"),
                },
            )
        })
        .collect())
}

/// The keys of a claim batch once reserved (see schema.sql's
/// `flash_coupons_reserve_keys`): where the row of each key reserved for
/// this transaction is, and the records of the keys recorded before it.
#[derive(Debug, Default)]
pub(super) struct Reserved {
    /// By key: its row's place, to settle it by (a `tid` as text).
    pub slots: HashMap<String, String>,
    pub recorded: HashMap<String, RecordedKey>,
}

/// Reserves `keyed` (each key with its request; a key's first request
/// counts) for `operation` in this transaction, which must settle them
/// ([`settle_keys`]) before it commits. Fails to serialize when another
/// transaction recorded one of them since this one's snapshot.
pub(super) fn reserve_keys(
    tx: &mut postgres::Client,
    stmts: &Statements,
    operation: Operation,
    keyed: &[(&str, &str)],
    ttl_hours: i32,
) -> Result<Reserved, postgres::Error> {
    if keyed.is_empty() {
        return Ok(Reserved::default());
    }
    let mut seen = std::collections::HashSet::new();
    let (keys, requests): (Vec<&str>, Vec<&str>) = keyed
        .iter()
        .filter(|(key, _)| seen.insert(*key))
        .copied()
        .unzip();
    let rows = tx.query(
        &stmts.reserve_keys,
        &[&operation.as_str(), &keys, &requests, &ttl_hours],
    )?;
    let mut reserved = Reserved::default();
    for row in &rows {
        let key: String = row.get("reserved_key");
        match row.get::<_, Option<String>>("slot") {
            Some(slot) => {
                reserved.slots.insert(key, slot);
            }
            None => {
                let record = RecordedKey {
                    request: row.get("recorded_request"),
                    remaining_amount: row.get("recorded_remaining"),
                };
                reserved.recorded.insert(key, record);
            }
        }
    }
    Ok(reserved)
}

/// Settles reserved keys, each by its slot: `Some(stock)` records it as
/// answered `status` with that stock, `None` removes it (its request took
/// no effect).
pub(super) fn settle_keys(
    tx: &mut postgres::Client,
    stmts: &Statements,
    settled: &[(&str, Option<i32>)],
    status: i16,
) -> Result<(), postgres::Error> {
    if settled.is_empty() {
        return Ok(());
    }
    let slots: Vec<&str> = settled.iter().map(|(slot, _)| *slot).collect();
    let statuses: Vec<Option<i16>> = settled
        .iter()
        .map(|(_, stock)| stock.map(|_| status))
        .collect();
    let remainings: Vec<Option<i32>> = settled.iter().map(|(_, stock)| *stock).collect();
    tx.execute(&stmts.settle_keys, &[&slots, &statuses, &remainings])?;
    Ok(())
}

/// Records `keys` for `operation`, each with its request and the stock in
/// its answer, all answered `status`. Fails to serialize when another
/// transaction recorded one of them since this one's snapshot: the caller's
/// retry then finds it (see schema.sql's `flash_coupons_record_keys`).
pub(super) fn record_keys(
    tx: &mut postgres::Client,
    stmts: &Statements,
    operation: Operation,
    recorded: &[(&str, &str, Option<i32>)],
    status: i16,
    ttl_hours: i32,
) -> Result<(), postgres::Error> {
    if recorded.is_empty() {
        return Ok(());
    }
    let keys: Vec<&str> = recorded.iter().map(|(key, _, _)| *key).collect();
    let requests: Vec<&str> = recorded.iter().map(|(_, request, _)| *request).collect();
    let remainings: Vec<Option<i32>> = recorded.iter().map(|(_, _, r)| *r).collect();
    tx.execute(
        &stmts.record_keys,
        &[
            &operation.as_str(),
            &keys,
            &requests,
            &status,
            &remainings,
            &ttl_hours,
        ],
    )?;
    Ok(())
}

/// Expired keys removed by one statement, at most.
const SWEEP_BATCH: i64 = 500;
/// Statements in one round of sweeping, at most: a round removes at most
/// `SWEEP_BATCH` times this many keys, and the next round the rest.
const SWEEP_BATCHES: usize = 100;
/// How often the sweeper runs a round.
const SWEEP_EVERY: Duration = Duration::from_secs(60);
/// How often, at least, the sweeper looks whether it should stop.
const STOP_POLL: Duration = Duration::from_millis(100);

impl Store {
    /// What `key` was recorded with for `operation`, if it is recorded and
    /// live: for an answer that would otherwise need no transaction (a
    /// claim on a sold-out coupon), which must not win over a replay.
    pub fn recorded_key(
        &self,
        operation: Operation,
        key: &IdempotencyKey,
    ) -> Result<Option<RecordedKey>, StoreError> {
        let ttl = self.idempotency_ttl_hours;
        self.read(|client, stmts| {
            let mut found = recorded_keys(client, stmts, operation, &[key.as_str()], ttl)?;
            Ok(found.remove(key.as_str()))
        })
    }

    /// Removes expired keys, [`SWEEP_BATCH`] per statement (skipping rows
    /// another transaction holds), until fewer are left or [`SWEEP_BATCHES`]
    /// statements have run: how many were removed.
    pub fn sweep_idempotency_keys(&self) -> Result<u64, StoreError> {
        let ttl = self.idempotency_ttl_hours;
        let mut removed = 0;
        for _ in 0..SWEEP_BATCHES {
            let mut conn = self.conn()?;
            let super::manager::Conn { client, stmts } = &mut *conn;
            let batch = in_transaction(client, "removing expired keys", BEGIN_WRITE, |tx| {
                tx.execute(&stmts.sweep_keys, &[&ttl, &SWEEP_BATCH])
            })
            .map_err(|err| super::failure(client, err).unretried("removing expired keys"))?;
            removed += batch;
            if batch < SWEEP_BATCH as u64 {
                break;
            }
        }
        Ok(removed)
    }
}

/// The thread that removes expired keys every [`SWEEP_EVERY`]; dropping it
/// stops the thread.
pub struct KeySweeper {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl KeySweeper {
    pub fn start(store: Store) -> std::io::Result<KeySweeper> {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = Arc::clone(&stop);
            thread::Builder::new()
                .name("key-sweeper".into())
                .spawn(move || sweep_every(&store, &stop))?
        };
        Ok(KeySweeper {
            stop,
            thread: Some(thread),
        })
    }
}

fn sweep_every(store: &Store, stop: &AtomicBool) {
    let failures = FailureLog::default();
    let mut next = Instant::now() + SWEEP_EVERY;
    while !stop.load(Ordering::SeqCst) {
        if Instant::now() < next {
            thread::sleep(STOP_POLL.min(next.saturating_duration_since(Instant::now())));
            continue;
        }
        next = Instant::now() + SWEEP_EVERY;
        match store.sweep_idempotency_keys() {
            Ok(removed) => {
                log_recovery!(failures, "expired idempotency keys are removed again");
                if removed > 0 {
                    debug!("removed {removed} expired idempotency keys");
                }
            }
            Err(err) => log_failure!(
                failures,
                log::Level::Warn,
                "cannot remove expired idempotency keys: {err}"
            ),
        }
    }
}

impl Drop for KeySweeper {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            // A round in progress ends within its statements' deadlines.
            let _ = thread.join();
        }
    }
}
