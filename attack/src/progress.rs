//! Progress on stderr while a scenario's claims run: on a terminal one line
//! redrawn every half second, otherwise a plain line every two seconds;
//! either way a closing line.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

const TICK: Duration = Duration::from_millis(500);
/// Ticks between plain lines when stderr is not a terminal.
const PLAIN_EVERY: u32 = 4;

/// The counter the workers bump; the reporter reads it.
pub struct Progress {
    done: AtomicUsize,
}

impl Progress {
    pub fn finished_one(&self) {
        self.done.fetch_add(1, Ordering::Relaxed);
    }

    fn done(&self) -> usize {
        self.done.load(Ordering::Relaxed)
    }
}

/// Runs `work` with a [`Progress`] for `total` requests, reporting on
/// stderr under `label` until it returns.
pub fn track<R>(label: &str, total: usize, work: impl FnOnce(&Progress) -> R) -> R {
    let progress = &Progress {
        done: AtomicUsize::new(0),
    };
    let terminal = std::io::stderr().is_terminal();
    let started = Instant::now();
    let (stop, stopped) = mpsc::channel::<()>();
    thread::scope(|scope| {
        let reporter = thread::Builder::new()
            .name("attack-progress".into())
            .spawn_scoped(scope, move || {
                report(label, total, progress, terminal, started, &stopped);
            });
        let result = work(progress);
        drop(stop);
        if reporter.is_err() {
            // No reporter thread: at least say how it ended.
            finish(label, total, progress.done(), started, terminal);
        }
        result
    })
}

fn report(
    label: &str,
    total: usize,
    progress: &Progress,
    terminal: bool,
    started: Instant,
    stopped: &mpsc::Receiver<()>,
) {
    let mut last = (started, 0usize);
    let mut ticks = 0u32;
    while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(TICK) {
        ticks += 1;
        let now = Instant::now();
        let done = progress.done();
        let secs = now.duration_since(last.0).as_secs_f64();
        let rate = if secs > 0.0 {
            (done - last.1) as f64 / secs
        } else {
            0.0
        };
        last = (now, done);
        let line = format!(
            "{label}: {done}/{total} done, {rate:.0} req/s, {:.1} s",
            now.duration_since(started).as_secs_f64()
        );
        let mut err = std::io::stderr().lock();
        if terminal {
            let _ = write!(err, "\r\x1b[2K{line}");
            let _ = err.flush();
        } else if ticks >= PLAIN_EVERY {
            ticks = 0;
            let _ = writeln!(err, "{line}");
        }
    }
    finish(label, total, progress.done(), started, terminal);
}

fn finish(label: &str, total: usize, done: usize, started: Instant, terminal: bool) {
    let secs = started.elapsed().as_secs_f64();
    let rate = if secs > 0.0 { done as f64 / secs } else { 0.0 };
    let clear = if terminal { "\r\x1b[2K" } else { "" };
    let mut err = std::io::stderr().lock();
    let _ = writeln!(
        err,
        "{clear}{label}: {done}/{total} done in {secs:.2} s, {rate:.0} req/s"
    );
}
