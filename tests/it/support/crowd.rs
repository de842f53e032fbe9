//! Many requests at once: each on a thread of its own, all held at one
//! barrier until every thread is there, then released together.

use std::sync::{Arc, Barrier};
use std::thread::{self, JoinHandle};

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
