//! A check-out's deadline, where r2d2 cannot be told it. r2d2 checks each
//! idle connection it hands out (`Manager::is_valid`) on the thread that
//! asked for one, and gives that check no time limit of its own; against a
//! stalled database each check would wait for the query deadline, and a
//! pool of idle connections could hold one check-out for a check each. So
//! the store notes, on its own thread, when the check-out must end, and the
//! manager bounds its checks by what is left of that.

use std::cell::Cell;
use std::time::Instant;

thread_local! {
    /// When the check-out running on this thread must end.
    static CHECKOUT_DEADLINE: Cell<Option<Instant>> = const { Cell::new(None) };
    /// A connection was handed out unchecked: the deadline had come.
    static HANDED_UNCHECKED: Cell<bool> = const { Cell::new(false) };
}

/// A check-out with a deadline, on this thread, until dropped.
pub(crate) struct CheckoutScope {
    outer: Option<Instant>,
}

impl CheckoutScope {
    pub(crate) fn begin(deadline: Instant) -> CheckoutScope {
        HANDED_UNCHECKED.set(false);
        CheckoutScope {
            outer: CHECKOUT_DEADLINE.replace(Some(deadline)),
        }
    }

    /// True if r2d2 handed out a connection that could not be checked
    /// before the deadline.
    pub(crate) fn handed_unchecked(&self) -> bool {
        HANDED_UNCHECKED.get()
    }
}

impl Drop for CheckoutScope {
    fn drop(&mut self) {
        CHECKOUT_DEADLINE.set(self.outer);
        HANDED_UNCHECKED.set(false);
    }
}

/// When the check-out running on this thread must end, if one is.
pub(super) fn deadline() -> Option<Instant> {
    CHECKOUT_DEADLINE.get()
}

/// Notes that a connection goes out unchecked, its check-out's deadline
/// too close to check it.
pub(super) fn note_handed_unchecked() {
    HANDED_UNCHECKED.set(true);
}
