//! Thread names and the panic hook: how a tiny_http thread is traced to its
//! generation (tiny_http defects 5 and 6 in the transport's list).
//!
//! tiny_http's threads are unnamed, so on Linux they inherit the name of
//! the thread that started them. Each generation is created from under the
//! name `http-<n>` (`as_named`); the panic hook reads that name back to
//! tell the supervisor which generation lost a thread, and the retired pump
//! reads the names of all threads to know which generations have any left.

use std::any::Any;
use std::cell::Cell;
use std::collections::HashSet;
use std::io;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::lock::lock;
use std::thread;

use crossbeam_channel::Sender;

use super::accept::Wake;

/// What the threads of a generation are named, before its number.
const GENERATION_PREFIX: &str = "http-";

/// Supervisors to tell when a thread of a generation panics, by server.
static WATCHERS: Mutex<Vec<(u64, Sender<Wake>)>> = Mutex::new(Vec::new());

thread_local! {
    /// Set while this thread runs `catch_quietly`: a panic then is caught
    /// and reported by its caller, not by the panic hook.
    static CATCHING: Cell<bool> = const { Cell::new(false) };
}

/// tiny_http's threads die of panics that `recv()` never reports (tiny_http
/// defect 5). A panic hook is the only place that sees them: it tells every
/// supervisor the generation of the panicking thread, from the thread's
/// name, and logs nothing itself (the supervisor does). Other panics go to
/// the hook that was there before. Returns the id to give to
/// [`unwatch_panics`].
pub(super) fn watch_panics(wake: Sender<Wake>) -> u64 {
    static HOOK: std::sync::Once = std::sync::Once::new();
    static IDS: AtomicU64 = AtomicU64::new(0);
    let id = IDS.fetch_add(1, Ordering::SeqCst);
    lock(&WATCHERS).push((id, wake));
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if CATCHING.try_with(Cell::get).unwrap_or(false) {
                return;
            }
            let Some(generation) = thread_name().as_deref().and_then(generation_of) else {
                return previous(info);
            };
            // tiny_http's `ClientConnection` runs in its task pool's
            // threads, one per connection: a panic there (the peer address
            // of a connection whose peer had gone, defect 5) costs that
            // connection's thread and nothing else.
            let one_connection = info.location().is_some_and(|at| {
                at.file().contains("tiny_http") && at.file().ends_with("client.rs")
            });
            let what = match info.location() {
                Some(at) => format!(
                    "{} at {}:{}",
                    panic_message(info.payload()),
                    at.file(),
                    at.line()
                ),
                None => panic_message(info.payload()),
            };
            let mut told = false;
            for (_, watcher) in lock(&WATCHERS).iter() {
                let wake = Wake::Panicked {
                    generation,
                    what: what.clone(),
                    one_connection,
                };
                told |= watcher.send(wake).is_ok();
            }
            if !told {
                previous(info);
            }
        }));
    });
    id
}

pub(super) fn unwatch_panics(id: u64) {
    lock(&WATCHERS).retain(|(watcher, _)| *watcher != id);
}

/// Runs `f`, catching a panic, which the caller reports: the panic hook
/// keeps quiet about it even on a generation's thread.
pub(super) fn catch_quietly<T>(f: impl FnOnce() -> T) -> thread::Result<T> {
    CATCHING.set(true);
    let caught = catch_unwind(AssertUnwindSafe(f));
    CATCHING.set(false);
    caught
}

/// Runs `work` with `value` on a new thread named `name`; gives `value`
/// back, with the reason, when no thread can be had (the process is at its
/// thread limit). A failed `spawn` drops what its closure holds, and some
/// of what goes to these threads (a tiny_http request) must not be dropped
/// just anywhere.
pub(super) fn on_own_thread<T: Send + 'static>(
    name: &str,
    value: T,
    work: impl FnOnce(T) + Send + 'static,
) -> Result<(), (T, io::Error)> {
    let slot = std::sync::Arc::new(Mutex::new(Some(value)));
    let on_thread = std::sync::Arc::clone(&slot);
    let spawned = thread::Builder::new().name(name.to_owned()).spawn(move || {
        if let Some(value) = lock(&on_thread).take() {
            work(value)
        }
    });
    match spawned {
        Ok(_) => Ok(()),
        Err(err) => match lock(&slot).take() {
            Some(value) => Err((value, err)),
            // Cannot happen: a thread that never started took nothing.
            None => Ok(()),
        },
    }
}

pub(super) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "a panic without a message".to_owned()
    }
}

pub(super) fn generation_name(number: u64) -> String {
    format!("{GENERATION_PREFIX}{number}")
}

fn generation_of(thread_name: &str) -> Option<u64> {
    let digits = thread_name.strip_prefix(GENERATION_PREFIX)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The generations that still have a thread, from the names of this
/// process's threads.
pub(super) fn generations_with_threads() -> io::Result<HashSet<u64>> {
    let mut alive = HashSet::new();
    for task in std::fs::read_dir("/proc/self/task")? {
        // A thread can end between the listing and the read.
        let Ok(task) = task else { continue };
        if let Ok(name) = std::fs::read_to_string(task.path().join("comm"))
            && let Some(number) = generation_of(name.trim_end_matches('\n'))
        {
            alive.insert(number);
        }
    }
    Ok(alive)
}

/// Runs `f` with this thread named `name`, a name the threads it starts
/// inherit; then gives the thread its own name back.
pub(super) fn as_named<T>(name: &str, f: impl FnOnce() -> T) -> T {
    struct Restore(Option<String>);
    impl Drop for Restore {
        fn drop(&mut self) {
            if let Some(name) = &self.0 {
                set_thread_name(name);
            }
        }
    }
    let own = thread_name();
    if own.is_some() {
        set_thread_name(name);
    }
    let _restore = Restore(own);
    f()
}

/// This thread's name as the kernel has it (at most 15 bytes).
#[cfg(target_os = "linux")]
fn thread_name() -> Option<String> {
    let mut name = [0u8; 16];
    // SAFETY: PR_GET_NAME writes at most 16 bytes, NUL included, to `name`.
    if unsafe { libc::prctl(libc::PR_GET_NAME, name.as_mut_ptr()) } != 0 {
        return None;
    }
    let len = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    Some(String::from_utf8_lossy(&name[..len]).into_owned())
}

/// Names this thread `name`, cut to the kernel's 15 bytes.
#[cfg(target_os = "linux")]
fn set_thread_name(name: &str) {
    let mut buf = [0u8; 16];
    let len = name.len().min(15);
    buf[..len].copy_from_slice(&name.as_bytes()[..len]);
    // SAFETY: PR_SET_NAME reads a NUL-terminated string; `buf` ends in NUL.
    unsafe { libc::prctl(libc::PR_SET_NAME, buf.as_ptr()) };
}

// Elsewhere threads do not inherit names: panics cannot be traced to a
// generation, and retired generations are pumped for `RETIRED_BLIND`.
#[cfg(not(target_os = "linux"))]
fn thread_name() -> Option<String> {
    None
}

#[cfg(not(target_os = "linux"))]
fn set_thread_name(_name: &str) {}

#[cfg(test)]
mod tests {
    use super::*;
    use crossbeam_channel::bounded;

    #[test]
    fn generation_names_round_trip_and_fit_the_kernel_limit() {
        assert_eq!(generation_of(&generation_name(7)), Some(7));
        assert!(generation_name(9_999_999_999).len() <= 15);
        assert_eq!(generation_of("http-"), None);
        assert_eq!(generation_of("http-+3"), None);
        assert_eq!(generation_of("worker-3"), None);
        assert_eq!(generation_of("http-pump"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn threads_started_under_a_generation_name_carry_it() {
        let name = generation_name(9_999_999_998);
        let (tx, rx) = bounded::<()>(0);
        let child = as_named(&name, || {
            thread::spawn(move || {
                let _ = rx.recv();
                thread_name()
            })
        });
        assert_ne!(thread_name().as_deref(), Some(name.as_str()));
        assert!(generations_with_threads().unwrap().contains(&9_999_999_998));
        drop(tx);
        assert_eq!(child.join().unwrap().as_deref(), Some(name.as_str()));
    }
}
