//! Many requests at once: each on a thread of its own, all held at one
//! barrier until every thread is there, then released together; and a tally
//! of what became of them.

use std::collections::BTreeMap;
use std::sync::{Arc, Barrier};
use std::thread::{self, JoinHandle};

use super::answer::Answer;
use super::client::Exchange;

/// Starts each of `jobs` on a thread of its own, held until all have
/// started, then released at once; the threads, in the order of `jobs`.
pub fn spawn_at_once<T, F>(jobs: impl IntoIterator<Item = F>) -> Vec<JoinHandle<T>>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let jobs: Vec<F> = jobs.into_iter().collect();
    let barrier = Arc::new(Barrier::new(jobs.len()));
    jobs.into_iter()
        .map(|job| {
            let barrier = Arc::clone(&barrier);
            thread::spawn(move || {
                barrier.wait();
                job()
            })
        })
        .collect()
}

/// The same, waiting for every job: their results, in the order of `jobs`.
pub fn all_at_once<T, F>(jobs: impl IntoIterator<Item = F>) -> Vec<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    spawn_at_once(jobs)
        .into_iter()
        .map(|thread| thread.join().expect("a thread released at once"))
        .collect()
}

/// One claim per (user, coupon) pair, all sent at once: claim `i` is
/// `send(i, user, coupon)` (so that `i` may pick a server). The results,
/// in the order of `claims`.
pub fn claims_at_once<T>(
    claims: &[(String, String)],
    send: impl Fn(usize, &str, &str) -> T + Send + Sync + 'static,
) -> Vec<T>
where
    T: Send + 'static,
{
    let send = Arc::new(send);
    all_at_once(
        claims
            .iter()
            .cloned()
            .enumerate()
            .map(|(i, (user, coupon))| {
                let send = Arc::clone(&send);
                move || send(i, &user, &coupon)
            }),
    )
}

/// What became of one request, as [`tally`] and [`count`] see it.
pub trait Tallied {
    /// The answer's status and error code (empty when it has none), or
    /// status 0 and what failed when no complete answer came.
    fn outcome(&self) -> (u16, String);
}

impl Tallied for Answer {
    fn outcome(&self) -> (u16, String) {
        (self.status, self.code().to_owned())
    }
}

impl Tallied for Exchange {
    fn outcome(&self) -> (u16, String) {
        match &self.result {
            Ok(answered) => answered.outcome(),
            Err(failure) => (0, failure.to_string()),
        }
    }
}

/// (status, code) -> how many, for messages and exact comparisons;
/// failures under status 0.
pub fn tally<'a, T: Tallied + 'a>(
    requests: impl IntoIterator<Item = &'a T>,
) -> BTreeMap<(u16, String), usize> {
    let mut counts = BTreeMap::new();
    for request in requests {
        *counts.entry(request.outcome()).or_insert(0) += 1;
    }
    counts
}

/// Asserts that the answers were exactly `expected`, as (status, error code
/// or "" for a success, how many), nothing else; the whole tally on failure.
pub fn assert_outcomes<'a, T: Tallied + 'a>(
    requests: impl IntoIterator<Item = &'a T>,
    expected: &[(u16, &str, usize)],
    context: &str,
) {
    let got = tally(requests);
    let wanted: BTreeMap<(u16, String), usize> = expected
        .iter()
        .filter(|(_, _, n)| *n > 0)
        .map(|(status, code, n)| ((*status, (*code).to_owned()), *n))
        .collect();
    assert_eq!(got, wanted, "{context}");
}

/// How many were answered `status` with the error code `code`, or with any
/// code when `code` is empty.
pub fn count<'a, T: Tallied + 'a>(
    requests: impl IntoIterator<Item = &'a T>,
    status: u16,
    code: &str,
) -> usize {
    requests
        .into_iter()
        .map(Tallied::outcome)
        .filter(|(s, c)| *s == status && (code.is_empty() || c == code))
        .count()
}
