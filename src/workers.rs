//! A fixed pool of threads fed by one channel, after the Rust Book's
//! ThreadPool: dropping the pool stops it, and the workers finish every job
//! already queued before they are joined, so shutdown is one line.
//!
//! The stop travels in the same channel as the jobs, one message per
//! worker queued behind them, so that a worker waits on one channel with a
//! plain `recv` (a `select!` over a second stop channel cost every request
//! a few thousand instructions).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use crossbeam_channel::{Receiver, Sender, TrySendError, bounded, unbounded};
use log::error;

pub struct WorkerPool<J: Send + 'static> {
    jobs: Sender<Message<J>>,
    workers: Vec<JoinHandle<()>>,
}

/// What a worker receives.
enum Message<J> {
    Job(J),
    /// Ends the worker that takes it.
    Stop,
}

/// A handle that queues jobs, for threads other than the pool's owner.
/// Holding one does not keep the pool from stopping.
pub struct Submitter<J>(Sender<Message<J>>);

impl<J> Clone for Submitter<J> {
    fn clone(&self) -> Self {
        Submitter(self.0.clone())
    }
}

impl<J> Submitter<J> {
    /// Queues a job (waiting while the queue is full); gives it back once
    /// the pool has stopped.
    pub fn submit(&self, job: J) -> Result<(), J> {
        self.0
            .send(Message::Job(job))
            .map_err(|e| match e.into_inner() {
                Message::Job(job) => job,
                Message::Stop => unreachable!("only the pool sends a stop"),
            })
    }

    /// Queues a job only if there is room now.
    pub fn try_submit(&self, job: J) -> Result<(), Refused<J>> {
        self.0.try_send(Message::Job(job)).map_err(|e| match e {
            TrySendError::Full(Message::Job(job)) => Refused::Full(job),
            TrySendError::Disconnected(Message::Job(job)) => Refused::Stopped(job),
            _ => unreachable!("only the pool sends a stop"),
        })
    }
}

/// A job [`Submitter::try_submit`] gives back, and why.
pub enum Refused<J> {
    /// Every place in the queue is taken.
    Full(J),
    /// The pool has stopped.
    Stopped(J),
}

impl<J: Send + 'static> WorkerPool<J> {
    /// Starts `size` threads that run `handle` on each job; at most
    /// `queue` jobs wait for a free thread before `submit` blocks (`None`:
    /// no bound).
    pub fn new<F>(name: &str, size: usize, queue: Option<usize>, handle: F) -> std::io::Result<Self>
    where
        F: Fn(J) + Send + Sync + 'static,
    {
        let (jobs, receiver) = queue.map_or_else(unbounded, bounded::<Message<J>>);
        let handle = Arc::new(handle);
        let workers = (0..size)
            .map(|i| {
                let receiver = receiver.clone();
                let handle = Arc::clone(&handle);
                thread::Builder::new()
                    .name(format!("{name}-{i}"))
                    .spawn(move || work(&receiver, &*handle))
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(WorkerPool { jobs, workers })
    }

    pub fn submitter(&self) -> Submitter<J> {
        Submitter(self.jobs.clone())
    }
}

fn work<J>(jobs: &Receiver<Message<J>>, handle: &dyn Fn(J)) {
    while let Ok(Message::Job(job)) = jobs.recv() {
        // A bug in one request must not take a worker away from every
        // request after it.
        if catch_unwind(AssertUnwindSafe(|| handle(job))).is_err() {
            error!("a request handler panicked; the worker carries on");
        }
    }
}

impl<J: Send + 'static> Drop for WorkerPool<J> {
    fn drop(&mut self) {
        // One stop per worker, behind every job already queued: each worker
        // takes at most one, as it ends on it. A send fails only when no
        // worker is left to receive.
        for _ in &self.workers {
            if self.jobs.send(Message::Stop).is_err() {
                break;
            }
        }
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn dropping_the_pool_runs_every_queued_job_first() {
        let done = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&done);
        let pool = WorkerPool::new("t", 3, Some(100), move |n: usize| {
            thread::sleep(std::time::Duration::from_millis(1));
            counter.fetch_add(n, Ordering::SeqCst);
        })
        .unwrap();
        let submitter = pool.submitter();
        for _ in 0..100 {
            submitter.submit(1).unwrap();
        }
        drop(pool);
        assert_eq!(done.load(Ordering::SeqCst), 100);
        assert!(submitter.submit(1).is_err(), "a stopped pool takes no jobs");
    }

    #[test]
    fn a_panicking_job_does_not_kill_its_worker() {
        let done = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&done);
        let pool = WorkerPool::new("t", 1, Some(10), move |n: usize| {
            if n == 0 {
                panic!("a deliberate panic in a test job");
            }
            counter.fetch_add(1, Ordering::SeqCst);
        })
        .unwrap();
        pool.submitter().submit(0).unwrap();
        pool.submitter().submit(1).unwrap();
        drop(pool);
        assert_eq!(done.load(Ordering::SeqCst), 1);
    }
}
