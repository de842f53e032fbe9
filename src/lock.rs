//! Taking a lock whatever became of the thread that held it last.

use std::sync::{Mutex, MutexGuard};

/// Locks `mutex`, also when a thread panicked while holding it. Nothing in
/// this service leaves shared state half-changed across a panic (each
/// critical section is a few assignments), and one request's bug must not
/// poison every later request that needs the same lock.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
