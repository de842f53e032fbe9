//! Firing many claims at once: worker threads that all wait at a start
//! line and are released together, then take jobs until none are left,
//! each answer also counted in the volley's [`Timeline`] at the moment it
//! came.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use super::client::Outcome;
use super::progress::{self, Progress};
use super::timeline::{Class, Timeline};

/// The answers of one volley, in job order, and how long it took from the
/// release to the last answer.
pub struct Volley {
    pub outcomes: Vec<Outcome>,
    pub wall: Duration,
    /// Workers that could be started (fewer than asked only when the
    /// system refused threads).
    pub workers: usize,
    /// The answers over time, from the release.
    pub timeline: Timeline,
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
        let timeline = Mutex::new(Timeline::default());
        thread::scope(|scope| {
            let mut handles = Vec::with_capacity(wanted);
            for id in 0..wanted {
                let (start, next, job) = (&start, &next, &job);
                let shared = Shared {
                    jobs,
                    next,
                    progress,
                    timeline: &timeline,
                };
                let spawned = thread::Builder::new()
                    .name(format!("attack-{id}"))
                    .spawn_scoped(scope, move || {
                        let released = start.arrive_and_wait();
                        work(id, job, &shared, released)
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
                timeline: std::mem::take(
                    &mut *timeline.lock().unwrap_or_else(PoisonError::into_inner),
                ),
            })
        })
    })
}

/// What every worker of a volley shares.
struct Shared<'a> {
    jobs: usize,
    next: &'a AtomicUsize,
    progress: &'a Progress,
    timeline: &'a Mutex<Timeline>,
}

fn work(
    id: usize,
    job: &(impl Fn(usize) -> Outcome + Sync),
    shared: &Shared,
    released: Instant,
) -> Vec<(usize, Outcome)> {
    let mut done = Vec::new();
    let mut index = id;
    while index < shared.jobs {
        let outcome = job(index);
        if let Some(class) = Class::of(&outcome) {
            let at = released.elapsed();
            shared
                .timeline
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .record(at, class, outcome.latency);
        }
        done.push((index, outcome));
        shared.progress.finished_one();
        index = shared.next.fetch_add(1, Ordering::Relaxed);
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
/// after the threads have been started, and every side learns the moment
/// of release.
#[derive(Default)]
struct StartLine {
    /// Parties arrived, and the moment of release once released.
    state: Mutex<(usize, Option<Instant>)>,
    changed: Condvar,
}

impl StartLine {
    fn arrive_and_wait(&self) -> Instant {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.0 += 1;
        self.changed.notify_all();
        loop {
            if let Some(released) = state.1 {
                return released;
            }
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
        let released = Instant::now();
        state.1 = Some(released);
        self.changed.notify_all();
        released
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
        assert_eq!(volley.timeline.total(), 1000);
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
