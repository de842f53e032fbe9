//! A fixed pool of threads fed by one channel, after the Rust Book's
//! ThreadPool: dropping the pool stops it, and the workers finish every job
//! already queued before they are joined, so shutdown is one line.
//!
//! The stop travels in the same channel as the jobs, one message per
//! worker queued behind them, so that a worker waits on one channel with a
//! plain `recv` (a `select!` over a second stop channel cost every request
//! a few thousand instructions).
//!
//! Two channels, for two kinds of pool (see [`Wait`]): crossbeam-channel
//! for the request workers, flume for pools of many threads that mostly
//! sleep, such as the transport's writers.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use log::error;

/// How an idle thread of a pool waits for its next job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// crossbeam-channel: a receiver with nothing to do spins, then yields
    /// its core (`sched_yield`) several times before it sleeps, which pays
    /// when the next job comes within microseconds: a few busy workers.
    Spin,
    /// flume: a receiver with nothing to do sleeps at once. For many
    /// threads that mostly sleep, where spinning costs more than it saves:
    /// with the 64 writers on crossbeam-channel, every answer of a claim
    /// batch woke a writer that then yielded about four times (perf: 3.9
    /// `sched_yield` and 5.0 context switches per claim in the writers,
    /// 0 and 1.1 with flume).
    Sleep,
}

pub struct WorkerPool<J: Send + 'static> {
    jobs: Sender<J>,
    workers: Vec<JoinHandle<()>>,
}

/// What a worker receives.
enum Message<J> {
    Job(J),
    /// Ends the worker that takes it.
    Stop,
}

/// The sending side of either channel.
enum Sender<J> {
    Spin(crossbeam_channel::Sender<Message<J>>),
    Sleep(flume::Sender<Message<J>>),
}

impl<J> Clone for Sender<J> {
    fn clone(&self) -> Self {
        match self {
            Sender::Spin(s) => Sender::Spin(s.clone()),
            Sender::Sleep(s) => Sender::Sleep(s.clone()),
        }
    }
}

/// Why a send did not queue its message, which it gives back.
enum SendError<J> {
    Full(Message<J>),
    Disconnected(Message<J>),
}

impl<J> Sender<J> {
    fn send(&self, message: Message<J>) -> Result<(), Message<J>> {
        match self {
            Sender::Spin(s) => s.send(message).map_err(|e| e.into_inner()),
            Sender::Sleep(s) => s.send(message).map_err(|e| e.into_inner()),
        }
    }

    fn try_send(&self, message: Message<J>) -> Result<(), SendError<J>> {
        use crossbeam_channel::TrySendError as C;
        use flume::TrySendError as F;
        match self {
            Sender::Spin(s) => s.try_send(message).map_err(|e| match e {
                C::Full(m) => SendError::Full(m),
                C::Disconnected(m) => SendError::Disconnected(m),
            }),
            Sender::Sleep(s) => s.try_send(message).map_err(|e| match e {
                F::Full(m) => SendError::Full(m),
                F::Disconnected(m) => SendError::Disconnected(m),
            }),
        }
    }
}

/// The receiving side of either channel.
enum Receiver<J> {
    Spin(crossbeam_channel::Receiver<Message<J>>),
    Sleep(flume::Receiver<Message<J>>),
}

impl<J> Receiver<J> {
    /// The next message; `None` once every sender is gone.
    fn recv(&self) -> Option<Message<J>> {
        match self {
            Receiver::Spin(r) => r.recv().ok(),
            Receiver::Sleep(r) => r.recv().ok(),
        }
    }
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
        self.0.send(Message::Job(job)).map_err(Message::into_job)
    }

    /// Queues a job only if there is room now.
    pub fn try_submit(&self, job: J) -> Result<(), Refused<J>> {
        self.0.try_send(Message::Job(job)).map_err(|e| match e {
            SendError::Full(m) => Refused::Full(m.into_job()),
            SendError::Disconnected(m) => Refused::Stopped(m.into_job()),
        })
    }
}

impl<J> Message<J> {
    /// The job a submitter's send gave back (only the pool sends stops).
    fn into_job(self) -> J {
        match self {
            Message::Job(job) => job,
            Message::Stop => unreachable!("only the pool sends a stop"),
        }
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
    /// Starts `size` threads that run `handle` on each job, waiting as
    /// `wait` says; at most `queue` jobs wait for a free thread before
    /// `submit` blocks (`None`: no bound).
    pub fn new<F>(
        name: &str,
        size: usize,
        queue: Option<usize>,
        wait: Wait,
        handle: F,
    ) -> std::io::Result<Self>
    where
        F: Fn(J) + Send + Sync + 'static,
    {
        let (jobs, receiver) = match (wait, queue) {
            (Wait::Spin, Some(n)) => {
                let (s, r) = crossbeam_channel::bounded(n);
                (Sender::Spin(s), Receiver::Spin(r))
            }
            (Wait::Spin, None) => {
                let (s, r) = crossbeam_channel::unbounded();
                (Sender::Spin(s), Receiver::Spin(r))
            }
            (Wait::Sleep, Some(n)) => {
                let (s, r) = flume::bounded(n);
                (Sender::Sleep(s), Receiver::Sleep(r))
            }
            (Wait::Sleep, None) => {
                let (s, r) = flume::unbounded();
                (Sender::Sleep(s), Receiver::Sleep(r))
            }
        };
        let receiver = Arc::new(receiver);
        let handle = Arc::new(handle);
        let workers = (0..size)
            .map(|i| {
                let receiver = Arc::clone(&receiver);
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

fn work<J>(jobs: &Receiver<J>, handle: &dyn Fn(J)) {
    while let Some(Message::Job(job)) = jobs.recv() {
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
        for wait in [Wait::Spin, Wait::Sleep] {
            dropping_the_pool_runs_every_queued_job_first_with(wait);
        }
    }

    fn dropping_the_pool_runs_every_queued_job_first_with(wait: Wait) {
        let done = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&done);
        let pool = WorkerPool::new("t", 3, Some(100), wait, move |n: usize| {
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
        for wait in [Wait::Spin, Wait::Sleep] {
            a_panicking_job_does_not_kill_its_worker_with(wait);
        }
    }

    fn a_panicking_job_does_not_kill_its_worker_with(wait: Wait) {
        let done = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&done);
        let pool = WorkerPool::new("t", 1, Some(10), wait, move |n: usize| {
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
