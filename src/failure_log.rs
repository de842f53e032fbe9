//! A failure that repeats, kept to a few lines in the log: the first of a
//! run in full, a count at most every so often while the run lasts, and one
//! line when it ends. Every failure in between is still logged, at debug
//! level.
//!
//! While the database is down every request fails alike, the pool retries
//! several times a second, and start-up, the freshness listener and the
//! accept loops keep trying: one line each would bury everything else.
//! [`log_failure!`] and [`log_recovery!`] write the lines, under the target
//! of the module that calls them.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::lock::lock;

/// How often, at most, a run of failures is counted in the log, unless a
/// log is given another interval.
pub const REPORT_EVERY: Duration = Duration::from_secs(10);

/// One kind of failure's current run, if any. Shared by every thread that
/// meets the failure.
#[derive(Debug)]
pub struct FailureLog {
    every: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// When the current run began; `None` between runs.
    since: Option<Instant>,
    failures: u64,
    last_line: Option<Instant>,
}

/// What the log should say about one more failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Say {
    /// The first failure of a run: in full.
    InFull,
    /// The run goes on: in full, with the count so far.
    Count { failures: u64, over: Duration },
    /// Said already: at debug level only.
    Quietly,
}

/// A run that ended: `failures` in a row over `over`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ended {
    pub failures: u64,
    pub over: Duration,
}

impl Default for FailureLog {
    fn default() -> FailureLog {
        FailureLog::new(REPORT_EVERY)
    }
}

impl FailureLog {
    /// Counts a run in the log at most once per `every`.
    pub fn new(every: Duration) -> FailureLog {
        FailureLog {
            every,
            state: Mutex::new(State::default()),
        }
    }

    /// One more failure: what to say about it.
    pub fn failed(&self) -> Say {
        let mut state = lock(&self.state);
        let now = Instant::now();
        let since = *state.since.get_or_insert(now);
        state.failures += 1;
        let say = match state.last_line {
            None => Say::InFull,
            Some(at) if now - at >= self.every => Say::Count {
                failures: state.failures,
                over: now - since,
            },
            Some(_) => return Say::Quietly,
        };
        state.last_line = Some(now);
        say
    }

    /// A success: the run it ends, if one was going on.
    pub fn succeeded(&self) -> Option<Ended> {
        let mut state = lock(&self.state);
        let since = state.since?;
        let ended = Ended {
            failures: state.failures,
            over: since.elapsed(),
        };
        *state = State::default();
        Some(ended)
    }
}

/// Logs one more failure of `$log` (a [`FailureLog`]) at `$level`, as the
/// rest of the arguments format it: in full when a run starts, with the
/// count at most every interval, at debug level otherwise.
#[macro_export]
macro_rules! log_failure {
    ($log:expr, $level:expr, $($arg:tt)+) => {
        match $log.failed() {
            $crate::failure_log::Say::InFull => log::log!($level, $($arg)+),
            $crate::failure_log::Say::Count { failures, over } => log::log!(
                $level,
                "{} ({failures} in a row over {over:.1?})",
                format_args!($($arg)+)
            ),
            $crate::failure_log::Say::Quietly => log::debug!($($arg)+),
        }
    };
}

/// Ends the run of `$log`, if one was going on, with a line at info level:
/// the rest of the arguments, then how many failures it took and how long.
#[macro_export]
macro_rules! log_recovery {
    ($log:expr, $($arg:tt)+) => {
        if let Some($crate::failure_log::Ended { failures, over }) = $log.succeeded() {
            log::info!(
                "{}, after {failures} failures over {over:.1?}",
                format_args!($($arg)+)
            );
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;

    #[test]
    fn a_run_is_said_in_full_then_counted_at_most_every_interval_then_ended() {
        let log = FailureLog::new(Duration::from_millis(200));
        assert_eq!(log.succeeded(), None, "no run yet");
        assert_eq!(log.failed(), Say::InFull);
        for _ in 0..50 {
            assert_eq!(log.failed(), Say::Quietly);
        }
        thread::sleep(Duration::from_millis(250));
        match log.failed() {
            Say::Count { failures, over } => {
                assert_eq!(failures, 52);
                assert!(over >= Duration::from_millis(250), "{over:?}");
            }
            other => panic!("expected a count, got {other:?}"),
        }
        assert_eq!(log.failed(), Say::Quietly);
        let ended = log.succeeded().expect("the run ends");
        assert_eq!(ended.failures, 53);
        assert_eq!(log.succeeded(), None, "ended once");
        assert_eq!(log.failed(), Say::InFull, "a new run starts");
    }
}
