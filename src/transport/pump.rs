//! The pumps: two threads that take the requests of every generation and
//! hand them to the admission, so that none is dropped unanswered (tiny_http
//! defect 9 in the transport's list). One waits on the accepting generation; the
//! other takes the requests of the retired ones until they have no thread
//! left, since a slow request head can complete long after its accept loop
//! ended.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use log::{debug, error};

use super::accept::{Control, Generation, Wake};
use super::admission::Admission;
use super::threads::generations_with_threads;

/// How often the retired pump looks for requests on the generations it
/// does not wait on: soon after one came, then less often, down to once per
/// `POLL_MAX`.
const POLL_MIN: Duration = Duration::from_millis(1);
const POLL_MAX: Duration = Duration::from_millis(20);
/// How long a pump waits on one generation, or for one, before it looks
/// again whether the server is stopping.
const IDLE_WAIT: Duration = Duration::from_secs(1);
/// How often the retired pump checks which generations have threads left.
const SCAN_EVERY: Duration = Duration::from_secs(1);
/// Without /proc to tell (tiny_http defect 6), how long a retired
/// generation is pumped.
const RETIRED_BLIND: Duration = Duration::from_secs(600);
/// At shutdown, how long the retired pump waits for the accepting pump to
/// pass on the generation it held.
const LAST_RETIRED: Duration = Duration::from_secs(5);
/// At shutdown, the grace period for requests that connection threads are
/// still parsing: this many looks at each generation, `DRAIN_PAUSE` apart.
const DRAIN_LOOKS: u32 = 4;
const DRAIN_PAUSE: Duration = Duration::from_millis(50);
/// How long a pump that panicked waits before it carries on.
const AFTER_PANIC: Duration = Duration::from_millis(100);

/// What a pump hands each request to.
pub(super) type Forward<'a> = dyn Fn(tiny_http::Request) + 'a;

/// The accepting pump's thread: takes the requests of the generation the
/// supervisor sends on `generations`, and passes each generation on to
/// `retire` once its accept loop has ended.
pub(super) fn accepting(
    admission: &Arc<Admission>,
    control: &Control,
    generations: &Receiver<Arc<Generation>>,
    retire: &Sender<Arc<Generation>>,
) {
    let mut state = Accepting::default();
    run_pump(admission, |forward| {
        pump_accepting(&mut state, control, generations, retire, forward)
    });
}

/// The retired pump's thread: takes the requests of every generation that
/// comes on `retiring`, until it has no thread left.
pub(super) fn retired(
    admission: &Arc<Admission>,
    control: &Control,
    retiring: &Receiver<Arc<Generation>>,
) {
    let mut state = Retired::default();
    run_pump(admission, |forward| {
        pump_retired(&mut state, control, retiring, forward)
    });
}

/// The accepting pump's state, which outlives a panic of the pump.
#[derive(Default)]
struct Accepting {
    /// The generation accepting connections, if any.
    current: Option<Arc<Generation>>,
    /// Whether `current` has passed on a request yet.
    serving: bool,
}

/// The retired pump's state, which outlives a panic of the pump.
#[derive(Default)]
struct Retired {
    /// Generations whose accept loop ended, with when, until no thread of
    /// theirs is left.
    generations: Vec<(Arc<Generation>, Instant)>,
    /// The one the pump waits on: the last that had a request.
    busiest: usize,
    poll: Duration,
    scanned: Option<Instant>,
}

impl Retired {
    /// Forgets the generations that have no thread left (or, if that cannot
    /// be told, that retired long ago), after passing on their last
    /// requests.
    fn forget_finished(&mut self, forward: &Forward) {
        self.scanned = Some(Instant::now());
        if self.generations.is_empty() {
            return;
        }
        let alive = generations_with_threads();
        if let Err(err) = &alive {
            debug!("cannot list this process's threads: {err}");
        }
        self.generations.retain(|(generation, since)| {
            let finished = match &alive {
                Ok(alive) => !alive.contains(&generation.number),
                Err(_) => since.elapsed() >= RETIRED_BLIND,
            };
            if finished {
                generation.forward_queued(forward);
                debug!("{}: no connection left", generation.name());
            }
            !finished
        });
    }
}

/// Runs `pump` with `role`, and again should it panic (`role` keeps its
/// state in what it captures).
fn run_pump(admission: &Arc<Admission>, mut role: impl FnMut(&Forward)) {
    while catch_unwind(AssertUnwindSafe(|| pump(admission, &mut role))).is_err() {
        error!("a request pump panicked; carrying on");
        thread::sleep(AFTER_PANIC);
    }
}

/// Hands each request of some generations to the admission: `role` says which
/// (`pump_accepting` or `pump_retired`).
fn pump(admission: &Arc<Admission>, role: &mut dyn FnMut(&Forward)) {
    let forward = |request: tiny_http::Request| admission.admit(request);
    role(&forward);
}

/// Waits on the accepting generation, reports the end of its accept loop
/// and passes it on to the retired pump.
fn pump_accepting(
    state: &mut Accepting,
    control: &Control,
    generations: &Receiver<Arc<Generation>>,
    retire: &Sender<Arc<Generation>>,
    forward: &Forward,
) {
    loop {
        if control.stopping.load(Ordering::SeqCst) {
            let all: Vec<_> = state
                .current
                .take()
                .into_iter()
                .chain(generations.try_iter())
                .collect();
            drain(&all, forward);
            return;
        }
        let Some(current) = state.current.clone() else {
            match generations.recv_timeout(IDLE_WAIT) {
                Ok(generation) => {
                    state.current = Some(generation);
                    state.serving = false;
                }
                Err(RecvTimeoutError::Timeout) => {}
                // Only while stopping.
                Err(RecvTimeoutError::Disconnected) => thread::sleep(POLL_MAX),
            }
            continue;
        };
        match current.http().recv_timeout(IDLE_WAIT) {
            Ok(Some(request)) => {
                forward(request);
                if !state.serving {
                    state.serving = true;
                    let _ = control.wake.send(Wake::Serving {
                        generation: current.number,
                    });
                }
            }
            // A timeout, or unblocked by the supervisor or at shutdown.
            Ok(None) => {}
            // tiny_http defect 4: its accept loop has ended for good.
            Err(error) => {
                if current.accepting.swap(false, Ordering::SeqCst)
                    && !control.stopping.load(Ordering::SeqCst)
                {
                    let _ = control.wake.send(Wake::Ended {
                        generation: current.number,
                        error,
                    });
                }
            }
        }
        if !current.accepting.load(Ordering::SeqCst) {
            debug!("{}: retired", current.name());
            state.current = None;
            // Fails only while stopping, when the retired pump has drained
            // and gone; this pump drains the generation itself then.
            if let Err(unsent) = retire.send(current) {
                drain(&[unsent.into_inner()], forward);
            }
        }
    }
}

/// Takes the requests of every retired generation until it has no thread
/// left: waits on the one that had a request last, and looks at the
/// others soon after a request came, less often as they stay quiet.
fn pump_retired(
    state: &mut Retired,
    control: &Control,
    retiring: &Receiver<Arc<Generation>>,
    forward: &Forward,
) {
    loop {
        let now = Instant::now();
        state
            .generations
            .extend(retiring.try_iter().map(|generation| (generation, now)));
        if control.stopping.load(Ordering::SeqCst) {
            return drain_retired(state, retiring, forward);
        }
        if state.scanned.is_none_or(|at| at.elapsed() >= SCAN_EVERY) {
            state.forget_finished(forward);
        }
        if state.generations.is_empty() {
            match retiring.recv_timeout(IDLE_WAIT) {
                Ok(generation) => state.generations.push((generation, Instant::now())),
                Err(RecvTimeoutError::Timeout) => {}
                // Only while stopping.
                Err(RecvTimeoutError::Disconnected) => thread::sleep(POLL_MAX),
            }
            continue;
        }
        let busiest = state.busiest.min(state.generations.len() - 1);
        let waited = match state.generations[busiest].0.http().recv_timeout(state.poll) {
            Ok(Some(request)) => {
                forward(request);
                true
            }
            // Nothing within the wait, or an unblock, or the end of an
            // accept loop already retired.
            Ok(None) | Err(_) => false,
        };
        let mut others = None;
        for (i, (generation, _)) in state.generations.iter().enumerate() {
            if generation.forward_queued(forward) && i != busiest {
                others = Some(i);
            }
        }
        if !waited && let Some(other) = others {
            state.busiest = other;
        }
        state.poll = if waited || others.is_some() {
            POLL_MIN
        } else {
            (state.poll * 2).clamp(POLL_MIN, POLL_MAX)
        };
    }
}

/// At shutdown: goes on passing on the retired generations' requests until
/// the accepting pump, which may pass on one more generation, has gone
/// (waiting at most `LAST_RETIRED`), then drains them all.
fn drain_retired(state: &mut Retired, retiring: &Receiver<Arc<Generation>>, forward: &Forward) {
    let deadline = Instant::now() + LAST_RETIRED;
    loop {
        for (generation, _) in &state.generations {
            generation.forward_queued(forward);
        }
        match retiring.recv_deadline(deadline.min(Instant::now() + POLL_MAX)) {
            Ok(generation) => state.generations.push((generation, Instant::now())),
            Err(RecvTimeoutError::Timeout) if Instant::now() < deadline => {}
            Err(_) => break,
        }
    }
    let all: Vec<_> = state.generations.drain(..).map(|(g, _)| g).collect();
    drain(&all, forward);
}

/// Passes on every request the generations have parsed, including those
/// their connection threads finish parsing within a short grace period.
fn drain(generations: &[Arc<Generation>], forward: &Forward) {
    for look in 1..=DRAIN_LOOKS {
        for generation in generations {
            generation.forward_queued(forward);
        }
        if look < DRAIN_LOOKS {
            thread::sleep(DRAIN_PAUSE);
        }
    }
}
