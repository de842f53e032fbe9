//! Firing many claims at once: worker threads that all wait at a start
//! line and are released together, then take jobs until none are left.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use super::client::Outcome;
use super::progress::{self, Progress};

/// The answers of one volley, in job order, and how long it took from the
/// release to the last answer.
pub struct Volley {
    pub outcomes: Vec<Outcome>,
    pub wall: Duration,
    /// Workers that could be started (fewer than asked only when the
    /// system refused threads).
    pub workers: usize,
}

/// Runs `job(0..jobs)` on up to `workers` threads released together. With
/// at least as many workers as jobs every job has a thread of its own, so
/// all of them are in flight at once. Fails only when no thread starts.
pub fn fire(
    label: &str,
    jobs: usize,
    workers: usize,
    job: impl Fn(usize) -> Outcome + Sync,
) -> Result<Volley, String> {
    let wanted = workers.clamp(1, jobs.max(1));
    progress::track(label, jobs, |progress| {
        let start = StartLine::default();
        let next = AtomicUsize::new(0);
        thread::scope(|scope| {
            let mut handles = Vec::with_capacity(wanted);
            for id in 0..wanted {
                let (start, next, job) = (&start, &next, &job);
                let spawned = thread::Builder::new()
                    .name(format!("attack-{id}"))
                    .spawn_scoped(scope, move || {
                        start.arrive_and_wait();
                        work(id, jobs, next, job, progress)
                    });
                match spawned {
                    Ok(handle) => handles.push(handle),
                    Err(_) => break,
                }
            }
            if handles.is_empty() {
                return Err("could not start a single worker thread".to_owned());
            }
            // Jobs below the number of workers are each worker's first.
            next.store(handles.len(), Ordering::SeqCst);
            let released = start.release_when_all_arrived(handles.len());

            let mut slots: Vec<Option<Outcome>> = vec![None; jobs];
            let workers = handles.len();
            for handle in handles {
                // A worker only panics on a bug; its jobs stay unanswered.
                for (index, outcome) in handle.join().unwrap_or_default() {
                    slots[index] = Some(outcome);
                }
            }
            let wall = released.elapsed();
            let outcomes = slots
                .into_iter()
                .map(|slot| slot.unwrap_or_else(lost))
                .collect();
            Ok(Volley {
                outcomes,
                wall,
                workers,
            })
        })
    })
}

fn work(
    id: usize,
    jobs: usize,
    next: &AtomicUsize,
    job: &(impl Fn(usize) -> Outcome + Sync),
    progress: &Progress,
) -> Vec<(usize, Outcome)> {
    let mut done = Vec::new();
    let mut index = id;
    while index < jobs {
        done.push((index, job(index)));
        progress.finished_one();
        index = next.fetch_add(1, Ordering::Relaxed);
    }
    done
}

fn lost() -> Outcome {
    Outcome {
        status: None,
        code: "worker_lost".to_owned(),
        latency: Duration::ZERO,
        retries: 0,
    }
}

/// Like `std::sync::Barrier`, but the number of parties is known only
/// after the threads have been started, and the releasing side learns the
/// moment of release.
#[derive(Default)]
struct StartLine {
    state: Mutex<(usize, bool)>,
    changed: Condvar,
}

impl StartLine {
    fn arrive_and_wait(&self) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.0 += 1;
        self.changed.notify_all();
        while !state.1 {
            state = self
                .changed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    fn release_when_all_arrived(&self, parties: usize) -> Instant {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        while state.0 < parties {
            state = self
                .changed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        state.1 = true;
        self.changed.notify_all();
        Instant::now()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::Mutex;

    fn outcome(index: usize) -> Outcome {
        Outcome {
            status: Some(200),
            code: index.to_string(),
            latency: Duration::from_millis(1),
            retries: 0,
        }
    }

    #[test]
    fn every_job_runs_once_and_answers_come_back_in_job_order() {
        let seen = Mutex::new(Vec::new());
        let volley = fire("test", 1000, 16, |i| {
            seen.lock().unwrap().push(i);
            outcome(i)
        })
        .unwrap();
        assert_eq!(volley.workers, 16);
        let seen = seen.into_inner().unwrap();
        assert_eq!(seen.len(), 1000);
        assert_eq!(seen.iter().collect::<HashSet<_>>().len(), 1000);
        for (i, o) in volley.outcomes.iter().enumerate() {
            assert_eq!(o.code, i.to_string());
        }
    }

    #[test]
    fn with_a_worker_per_job_all_jobs_are_in_flight_together() {
        let inside = AtomicUsize::new(0);
        let most = AtomicUsize::new(0);
        fire("test", 20, 20, |i| {
            let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            thread::sleep(Duration::from_millis(200));
            inside.fetch_sub(1, Ordering::SeqCst);
            outcome(i)
        })
        .unwrap();
        assert_eq!(most.load(Ordering::SeqCst), 20);
    }

    #[test]
    fn no_jobs_is_an_empty_volley() {
        let volley = fire("test", 0, 8, outcome).unwrap();
        assert!(volley.outcomes.is_empty());
    }
}
