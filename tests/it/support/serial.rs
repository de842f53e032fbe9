//! Turns: which tests run beside which, in the one process they share.
//!
//! Many tests start clusters, server processes or HAProxy, put real load on
//! the machine and check liveness bounds, which hold only beside tests of
//! their own kind. So each test takes its module's turn first ([`turn!`]):
//! tests of one module run side by side on the harness's threads, never
//! beside another module's. A test that must run beside no other test
//! takes [`alone`] instead.

use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

/// Who is running now.
struct Room {
    /// The module whose tests hold turns, if any.
    module: Option<&'static str>,
    /// How many turns are held.
    inside: usize,
    /// The one turn held is [`alone`].
    alone: bool,
}

static ROOM: Mutex<Room> = Mutex::new(Room {
    module: None,
    inside: 0,
    alone: false,
});
static LEFT: Condvar = Condvar::new();

fn room() -> MutexGuard<'static, Room> {
    ROOM.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A test's turn, held until it is dropped (at the end of the test, also
/// when the test fails).
#[must_use = "the turn ends when this is dropped"]
pub struct Turn(());

/// Waits until no test of another module holds a turn, and none holds one
/// alone; then holds a turn of `module`. Use [`turn!`].
pub fn turn_of(module: &'static str) -> Turn {
    let mut room = room();
    while room.inside > 0 && (room.alone || room.module != Some(module)) {
        room = LEFT.wait(room).unwrap_or_else(PoisonError::into_inner);
    }
    room.module = Some(module);
    room.inside += 1;
    Turn(())
}

/// Waits until no other test holds a turn, then holds one that no other
/// test shares.
pub fn alone() -> Turn {
    let mut room = room();
    while room.inside > 0 {
        room = LEFT.wait(room).unwrap_or_else(PoisonError::into_inner);
    }
    room.module = None;
    room.inside = 1;
    room.alone = true;
    Turn(())
}

impl Drop for Turn {
    fn drop(&mut self) {
        let mut room = room();
        room.inside -= 1;
        if room.inside == 0 {
            room.module = None;
            room.alone = false;
            LEFT.notify_all();
        }
    }
}

/// The calling module's turn (see [`turn_of`]).
macro_rules! turn {
    () => {
        $crate::support::serial::turn_of(module_path!())
    };
}
pub(crate) use turn;
