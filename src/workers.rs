//! A fixed pool of threads fed by one channel, after the Rust Book's
//! ThreadPool: dropping the pool stops it, and the workers finish every job
//! already queued before they are joined, so shutdown is one line.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use crossbeam_channel::{Receiver, Sender, TrySendError, bounded, select, unbounded};
use log::error;

pub struct WorkerPool<J: Send + 'static> {
    jobs: Sender<J>,
    stop: Option<Sender<()>>,
    workers: Vec<JoinHandle<()>>,
}

/// A handle that queues jobs, for threads other than the pool's owner.
/// Holding one does not keep the pool from stopping.
pub struct Submitter<J>(Sender<J>);

impl<J> Clone for Submitter<J> {
    fn clone(&self) -> Self {
        Submitter(self.0.clone())
    }
}

impl<J> Submitter<J> {
    /// Queues a job (waiting while the queue is full); gives it back once
    /// the pool has stopped.
    pub fn submit(&self, job: J) -> Result<(), J> {
        self.0.send(job).map_err(|e| e.into_inner())
    }

    /// Queues a job only if there is room now.
    pub fn try_submit(&self, job: J) -> Result<(), Refused<J>> {
        self.0.try_send(job).map_err(|e| match e {
            TrySendError::Full(job) => Refused::Full(job),
            TrySendError::Disconnected(job) => Refused::Stopped(job),
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
        let (jobs, receiver) = queue.map_or_else(unbounded, bounded::<J>);
        let (stop, stopped) = bounded::<()>(0);
        let handle = Arc::new(handle);
        let workers = (0..size)
            .map(|i| {
                let receiver = receiver.clone();
                let stopped = stopped.clone();
                let handle = Arc::clone(&handle);
                thread::Builder::new()
                    .name(format!("{name}-{i}"))
                    .spawn(move || work(&receiver, &stopped, &*handle))
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(WorkerPool {
            jobs,
            stop: Some(stop),
            workers,
        })
    }

    pub fn submitter(&self) -> Submitter<J> {
        Submitter(self.jobs.clone())
    }
}

fn work<J>(jobs: &Receiver<J>, stopped: &Receiver<()>, handle: &dyn Fn(J)) {
    let run = |job: J| {
        // A bug in one request must not take a worker away from every
        // request after it.
        if catch_unwind(AssertUnwindSafe(|| handle(job))).is_err() {
            error!("a request handler panicked; the worker carries on");
        }
    };
    loop {
        select! {
            recv(jobs) -> job => match job {
                Ok(job) => run(job),
                Err(_) => return,
            },
            recv(stopped) -> _ => {
                jobs.try_iter().for_each(run);
                return;
            }
        }
    }
}

impl<J: Send + 'static> Drop for WorkerPool<J> {
    fn drop(&mut self) {
        // Disconnecting `stop` wakes every worker at once.
        drop(self.stop.take());
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
