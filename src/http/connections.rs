//! One request at a time per client connection.
//!
//! HTTP/1.1 answers go out in request order, and tiny_http keeps that order
//! by making each answer's writer wait until the previous answer on the same
//! connection is finished. Two pipelined requests worked on at once can
//! therefore wait on each other for good: the later one decided first (say,
//! by the leader of its coupon's claim batch) waits to be written behind the
//! earlier one, which sits in the queue only that blocked leader would run.
//! So a connection's next request starts only once the answer before it has
//! been written: no writer ever waits for another request.
//!
//! tiny_http reads a connection's requests ahead of its answers, so a client
//! that sends far more than it reads would pile them up here. Past
//! [`MAX_PARKED`] waiting requests the connection is cut: later requests on
//! it are dropped unanswered (the ones already waiting are still answered,
//! in order), until it has been quiet long enough to be sure it is closed.
//!
//! A connection is known by its peer address, the only identity tiny_http
//! gives a request; two live connections to one listener never share it.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Requests that may wait behind a connection's current one.
pub const MAX_PARKED: usize = 64;

/// What to do with a request that has just arrived.
#[derive(Debug, PartialEq, Eq)]
pub enum Admission<T> {
    /// Its connection has nothing else in progress: start it now.
    Start(T),
    /// Kept until the requests before it on its connection are answered.
    Parked,
    /// Its connection has just been cut, at this request: drop it without
    /// an answer, like every later one.
    Cut(T),
    /// Its connection was cut: drop it without an answer.
    Drop(T),
}

#[derive(Debug)]
struct Line<T> {
    /// A request of this connection is being worked on or answered.
    busy: bool,
    parked: VecDeque<T>,
    /// Requests arriving before then are dropped.
    cut_until: Option<Instant>,
}

/// The connections that have a request in progress, and what waits
/// behind it.
#[derive(Debug)]
pub struct Lines<T> {
    lines: Mutex<HashMap<SocketAddr, Line<T>>>,
    /// How long a cut connection must be quiet before its address is
    /// served again: longer than the socket read timeout, after which
    /// tiny_http closes a connection that sent nothing.
    cut_for: Duration,
    last_sweep: Mutex<Instant>,
}

impl<T> Lines<T> {
    pub fn new(cut_for: Duration) -> Lines<T> {
        Lines {
            lines: Mutex::new(HashMap::new()),
            cut_for,
            last_sweep: Mutex::new(Instant::now()),
        }
    }

    /// Takes in a request from `peer`.
    pub fn admit(&self, peer: SocketAddr, request: T) -> Admission<T> {
        let now = Instant::now();
        self.sweep(now);
        let mut lines = lock(&self.lines);
        let line = lines.entry(peer).or_insert_with(|| Line {
            busy: false,
            parked: VecDeque::new(),
            cut_until: None,
        });
        if line.cut_until.is_some_and(|until| now < until) {
            // Still flooding: stay cut until it has been quiet for a while.
            line.cut_until = Some(now + self.cut_for);
            return Admission::Drop(request);
        }
        line.cut_until = None;
        if !line.busy {
            line.busy = true;
            return Admission::Start(request);
        }
        if line.parked.len() >= MAX_PARKED {
            line.cut_until = Some(now + self.cut_for);
            return Admission::Cut(request);
        }
        line.parked.push_back(request);
        Admission::Parked
    }

    /// The answer to `peer`'s current request has been written: returns the
    /// next request to start, if one is waiting.
    pub fn finished(&self, peer: SocketAddr) -> Option<T> {
        let mut lines = lock(&self.lines);
        let Entry::Occupied(mut entry) = lines.entry(peer) else {
            return None;
        };
        let line = entry.get_mut();
        if let Some(next) = line.parked.pop_front() {
            return Some(next);
        }
        line.busy = false;
        if line.cut_until.is_none() {
            entry.remove();
        }
        None
    }

    /// Whether requests wait behind `peer`'s current one.
    pub fn has_parked(&self, peer: SocketAddr) -> bool {
        lock(&self.lines)
            .get(&peer)
            .is_some_and(|line| !line.parked.is_empty())
    }

    /// `peer`'s current request could not be answered (the client went away
    /// or read too slowly): cuts the connection, and returns what waited
    /// behind the request, to be dropped unanswered.
    pub fn cut(&self, peer: SocketAddr) -> Vec<T> {
        let mut lines = lock(&self.lines);
        let Some(line) = lines.get_mut(&peer) else {
            return Vec::new();
        };
        line.busy = false;
        line.cut_until = Some(Instant::now() + self.cut_for);
        line.parked.drain(..).collect()
    }

    /// Whether `peer` was cut and has not yet been quiet long enough.
    #[cfg(test)]
    fn is_cut(&self, peer: SocketAddr) -> bool {
        lock(&self.lines)
            .get(&peer)
            .and_then(|line| line.cut_until)
            .is_some_and(|until| Instant::now() < until)
    }

    /// Connections with a request in progress.
    #[cfg(test)]
    fn busy(&self) -> usize {
        lock(&self.lines).values().filter(|l| l.busy).count()
    }

    /// Forgets cut connections that have gone quiet, at most once a second.
    fn sweep(&self, now: Instant) {
        {
            let mut last = lock(&self.last_sweep);
            if now.duration_since(*last) < Duration::from_secs(1) {
                return;
            }
            *last = now;
        }
        lock(&self.lines).retain(|_, line| line.busy || line.cut_until.is_some_and(|u| now < u));
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn a_connections_requests_start_one_after_another_in_order() {
        let lines = Lines::new(Duration::from_secs(10));
        assert_eq!(lines.admit(peer(1), 1), Admission::Start(1));
        assert_eq!(lines.admit(peer(1), 2), Admission::Parked);
        assert_eq!(lines.admit(peer(2), 10), Admission::Start(10));
        assert_eq!(lines.admit(peer(1), 3), Admission::Parked);
        assert_eq!(lines.finished(peer(1)), Some(2));
        assert_eq!(lines.finished(peer(1)), Some(3));
        assert_eq!(lines.finished(peer(1)), None);
        assert_eq!(lines.busy(), 1);
        assert_eq!(lines.admit(peer(1), 4), Admission::Start(4));
    }

    #[test]
    fn a_connection_past_the_limit_is_cut_but_its_parked_requests_are_kept() {
        let lines = Lines::new(Duration::from_secs(10));
        assert_eq!(lines.admit(peer(1), 0), Admission::Start(0));
        for n in 1..=MAX_PARKED {
            assert_eq!(lines.admit(peer(1), n), Admission::Parked);
        }
        assert_eq!(lines.admit(peer(1), 1000), Admission::Cut(1000));
        assert!(lines.is_cut(peer(1)));
        assert_eq!(lines.admit(peer(1), 1001), Admission::Drop(1001));
        for n in 1..=MAX_PARKED {
            assert_eq!(lines.finished(peer(1)), Some(n));
        }
        assert_eq!(lines.finished(peer(1)), None);
        assert_eq!(lines.admit(peer(1), 2000), Admission::Drop(2000));
    }

    #[test]
    fn a_connection_whose_answer_failed_is_cut_with_what_waited_behind_it() {
        let lines = Lines::new(Duration::from_secs(10));
        assert_eq!(lines.admit(peer(1), 1), Admission::Start(1));
        assert_eq!(lines.admit(peer(1), 2), Admission::Parked);
        assert_eq!(lines.admit(peer(1), 3), Admission::Parked);
        assert_eq!(lines.cut(peer(1)), vec![2, 3]);
        assert_eq!(lines.admit(peer(1), 4), Admission::Drop(4));
        assert_eq!(lines.busy(), 0);
    }

    #[test]
    fn a_cut_address_is_served_again_once_it_has_been_quiet() {
        let lines = Lines::new(Duration::from_millis(20));
        assert_eq!(lines.admit(peer(1), 0), Admission::Start(0));
        for n in 1..=MAX_PARKED + 1 {
            lines.admit(peer(1), n);
        }
        while lines.finished(peer(1)).is_some() {}
        std::thread::sleep(Duration::from_millis(40));
        assert!(!lines.is_cut(peer(1)));
        assert_eq!(lines.admit(peer(1), 7), Admission::Start(7));
    }
}
