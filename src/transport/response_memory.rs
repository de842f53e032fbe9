//! A bound on the memory and the writers that large answers hold.
//!
//! A coupon's body lists every claimer, and it is read from the database
//! whole before it is written, so that no database connection waits on a
//! slow reader. Each such body reserves its size here as it grows and gives
//! it back once written. A body past [`LARGE`] is large: it also takes one of
//! a few large-answer places, each with a writer of its own (see `writer`),
//! so slow readers of large answers never hold the writers that everything
//! else is answered by. When the memory or the places are all taken, the
//! request is answered 503 instead.

use std::io::{self, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Bytes reserved at a time as a body grows.
pub const STEP: usize = 64 * 1024;

/// The largest body that is not large. Smaller answers fit in the kernel's
/// socket buffers of a normal connection and leave their writer at once; a
/// lower bound made clients reading an ordinary coupon at full speed run
/// out of large-answer places.
pub const LARGE: usize = 1024 * 1024;

#[derive(Debug)]
pub struct ResponseMemory {
    bytes: Limited,
    large: Limited,
}

/// A count that may not pass its limit.
#[derive(Debug)]
struct Limited {
    used: AtomicUsize,
    limit: usize,
}

impl Limited {
    fn take(&self, n: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|&total| total <= self.limit)
            })
            .is_ok()
    }

    fn give_back(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::AcqRel);
    }
}

/// What one answer holds of a [`ResponseMemory`] until dropped.
#[derive(Debug)]
pub struct Held {
    memory: Arc<ResponseMemory>,
    bytes: usize,
    large: bool,
}

impl Held {
    /// Whether the answer holds a large-answer place (and so its writer).
    pub fn is_large(&self) -> bool {
        self.large
    }
}

impl ResponseMemory {
    /// At most `bytes` of bodies at once, and at most `large` bodies over
    /// [`LARGE`].
    pub fn new(bytes: usize, large: usize) -> Arc<ResponseMemory> {
        let limited = |limit| Limited {
            used: AtomicUsize::new(0),
            limit,
        };
        Arc::new(ResponseMemory {
            bytes: limited(bytes),
            large: limited(large),
        })
    }

    /// Bytes reserved now, and large answers held, over all answers.
    pub fn used(&self) -> (usize, usize) {
        (
            self.bytes.used.load(Ordering::Relaxed),
            self.large.used.load(Ordering::Relaxed),
        )
    }

    /// A buffer whose growth is charged to this memory.
    pub fn buffer(self: &Arc<Self>) -> ResponseBuffer {
        ResponseBuffer {
            bytes: Vec::new(),
            held: Held {
                memory: Arc::clone(self),
                bytes: 0,
                large: false,
            },
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.memory.bytes.give_back(self.bytes);
        if self.large {
            self.memory.large.give_back(1);
        }
    }
}

/// Bytes in memory, paid for from a [`ResponseMemory`]; a write that would
/// go past it fails with [`io::ErrorKind::OutOfMemory`].
pub struct ResponseBuffer {
    bytes: Vec<u8>,
    held: Held,
}

impl ResponseBuffer {
    pub fn into_parts(self) -> (Vec<u8>, Held) {
        (self.bytes, self.held)
    }

    fn grow(&mut self, needed: usize) -> io::Result<()> {
        let held = &mut self.held;
        let spent = || {
            io::Error::new(
                io::ErrorKind::OutOfMemory,
                "the memory for answers is spent",
            )
        };
        let becomes_large = needed > LARGE && !held.large;
        if becomes_large && !held.memory.large.take(1) {
            return Err(spent());
        }
        let more = (needed - held.bytes).div_ceil(STEP) * STEP;
        if !held.memory.bytes.take(more) {
            if becomes_large {
                held.memory.large.give_back(1);
            }
            return Err(spent());
        }
        held.large |= becomes_large;
        held.bytes += more;
        Ok(())
    }
}

impl Write for ResponseBuffer {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let needed = self.bytes.len() + data.len();
        if needed > self.held.bytes {
            self.grow(needed)?;
        }
        self.bytes.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_share_the_memory_and_give_it_back_when_dropped() {
        let memory = ResponseMemory::new(LARGE + 2 * STEP, 10);
        let mut a = memory.buffer();
        a.write_all(&[0; 100]).unwrap();
        assert_eq!(memory.used(), (STEP, 0));
        let mut b = memory.buffer();
        b.write_all(&vec![0; LARGE + 1]).unwrap();
        assert_eq!(memory.used(), (LARGE + 2 * STEP, 1));
        let refused = a.write_all(&vec![0; STEP]).unwrap_err();
        assert_eq!(refused.kind(), io::ErrorKind::OutOfMemory);
        drop(b);
        assert_eq!(memory.used(), (STEP, 0));
        let (bytes, held) = a.into_parts();
        assert_eq!(bytes.len(), 100);
        assert!(!held.is_large());
        drop(held);
        assert_eq!(memory.used(), (0, 0));
    }

    #[test]
    fn a_body_past_one_mib_needs_a_large_answer_place() {
        let memory = ResponseMemory::new(100 * LARGE, 1);
        let mut a = memory.buffer();
        a.write_all(&vec![0; LARGE + STEP]).unwrap();
        let mut b = memory.buffer();
        b.write_all(&vec![0; LARGE]).unwrap();
        let refused = b.write_all(&[0]).unwrap_err();
        assert_eq!(refused.kind(), io::ErrorKind::OutOfMemory);
        let (_, held) = a.into_parts();
        assert!(held.is_large());
        drop(held);
        b.write_all(&[0]).unwrap();
        assert_eq!(memory.used(), (LARGE + STEP, 1));
    }
}
