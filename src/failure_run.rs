//! A failure that repeats, in the log: one line when a run of them starts,
//! a count at most every so often while it lasts, and one line when it
//! ends. Every failure in between is still logged, at debug level.
//!
//! Used for the database connection failures of the pool, start-up's
//! attempts to reach the database, the freshness listener's connection, and
//! failing /healthz probes. (The accept loops' restarts in `server::accept`
//! follow the same rule with a counter of their own.)

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often, at most, a run of failures is counted in the log, unless a
/// run is given another interval.
pub const REPORT_EVERY: Duration = Duration::from_secs(10);

/// One kind of failure's current run, if any. Cheap to share: callers in
/// many threads report to one `FailureRun`.
pub struct FailureRun {
    every: Duration,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// When the current run began; `None` between runs.
    since: Option<Instant>,
    failures: u64,
    last_line: Option<Instant>,
}

/// What the log should say about a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Line {
    /// The first failure of a run: say it in full, at warning (or info)
    /// level.
    First,
    /// The run goes on: `failures` in a row over `over`, counted at the
    /// same level as the first line.
    Count { failures: u64, over: Duration },
    /// Counted already: log it at debug level only.
    Quiet,
}

/// A run that ended: `failures` in a row over `over`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ended {
    pub failures: u64,
    pub over: Duration,
}

impl Default for FailureRun {
    fn default() -> FailureRun {
        FailureRun::new(REPORT_EVERY)
    }
}

impl FailureRun {
    /// Counts a run in the log at most once per `every`.
    pub fn new(every: Duration) -> FailureRun {
        FailureRun {
            every,
            state: Mutex::new(State::default()),
        }
    }

    /// One more failure: what to log about it.
    pub fn failed(&self) -> Line {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let since = *state.since.get_or_insert(now);
        state.failures += 1;
        let line = match state.last_line {
            None => Line::First,
            Some(at) if now - at >= self.every => Line::Count {
                failures: state.failures,
                over: now - since,
            },
            Some(_) => return Line::Quiet,
        };
        state.last_line = Some(now);
        line
    }

    /// A success: the run it ends, if one was going on.
    pub fn succeeded(&self) -> Option<Ended> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let since = state.since?;
        let ended = Ended {
            failures: state.failures,
            over: since.elapsed(),
        };
        *state = State::default();
        Some(ended)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;

    #[test]
    fn a_run_is_one_first_line_then_counts_at_most_every_interval_then_its_end() {
        let run = FailureRun::new(Duration::from_millis(200));
        assert_eq!(run.succeeded(), None, "no run yet");
        assert_eq!(run.failed(), Line::First);
        for _ in 0..50 {
            assert_eq!(run.failed(), Line::Quiet);
        }
        thread::sleep(Duration::from_millis(250));
        match run.failed() {
            Line::Count { failures, over } => {
                assert_eq!(failures, 52);
                assert!(over >= Duration::from_millis(250), "{over:?}");
            }
            other => panic!("expected a count, got {other:?}"),
        }
        assert_eq!(run.failed(), Line::Quiet);
        let ended = run.succeeded().expect("the run ends");
        assert_eq!(ended.failures, 53);
        assert_eq!(run.succeeded(), None, "ended once");
        assert_eq!(run.failed(), Line::First, "a new run starts");
    }
}
