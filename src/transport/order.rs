//! One request at a time per client connection (tiny_http defects 10, 11
//! and 12 in the transport's list).
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
//! in order). A connection whose answer could not be written is cut too.
//!
//! A connection is known by its peer address, the only identity tiny_http
//! gives a request; two live connections to one listener never share it,
//! but a new connection may take the address of one that has ended. So a
//! cut lasts exactly as long as the cut connection: its socket is found
//! (see `crate::sockets`) and no longer read (tiny_http sees its end, and
//! reads no more requests from it), and every request read from it holds it
//! open until that request is answered or dropped. Once it has closed, no
//! request of the cut connection can still arrive, and the first request
//! from the same address starts a new line, with a new generation that the
//! old connection's turns cannot touch. Where the socket cannot be found,
//! the cut lasts until the address has been quiet for a while.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::lock::lock;
use crate::sockets::{self, Search, Socket};

/// Requests that may wait behind a connection's current one.
pub const MAX_PARKED: usize = 64;

/// One connection as the queues know it: its peer address, and which of
/// the connections from that address it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connection {
    pub peer: SocketAddr,
    generation: u64,
}

/// What to do with a request that has just arrived.
#[derive(Debug, PartialEq, Eq)]
pub enum Arrival<T> {
    /// Its connection has nothing else in progress: start it now. `ended`
    /// holds what still waited on an earlier, cut connection from the same
    /// address, which has closed: to be dropped unanswered.
    Start {
        request: T,
        connection: Connection,
        ended: Vec<T>,
    },
    /// Kept until the requests before it on its connection are answered.
    Parked,
    /// Its connection has just been cut, at this request: drop it without
    /// an answer, like every later one. The caller then tells the queues
    /// which socket was cut ([`ConnectionQueues::identify`]).
    Cut(T, Connection),
    /// Its connection was cut: drop it without an answer.
    Drop(T),
}

#[derive(Debug)]
struct ConnectionQueue<T> {
    generation: u64,
    /// A request of this connection is being worked on or answered.
    busy: bool,
    parked: VecDeque<T>,
    cut: Option<Cut>,
}

/// A cut connection, and how to tell when it has ended.
#[derive(Debug)]
struct Cut {
    /// Until then, requests are dropped (while the socket is not known).
    until: Instant,
    socket: CutSocket,
}

#[derive(Debug, Clone, Copy)]
enum CutSocket {
    /// Not looked for yet, or this system cannot tell: the cut lasts until
    /// the address has been quiet for a while.
    Unknown,
    /// The cut connection's socket, no longer read: the cut ends when it
    /// closes.
    Known(Socket),
    /// It had already closed when it was looked for: nothing more of it
    /// can come.
    Gone,
}

/// The connections that have a request in progress, and what waits
/// behind it.
#[derive(Debug)]
pub struct ConnectionQueues<T> {
    queues: Mutex<HashMap<SocketAddr, ConnectionQueue<T>>>,
    /// How long a cut connection whose socket is not known must be quiet
    /// before its address is served again: longer than the socket read
    /// timeout, after which tiny_http closes a connection that sent nothing.
    cut_for: Duration,
    /// The port the connections were accepted on, to find their sockets.
    port: u16,
    last_sweep: Mutex<Instant>,
}

impl<T> ConnectionQueue<T> {
    fn new() -> ConnectionQueue<T> {
        static GENERATIONS: AtomicU64 = AtomicU64::new(0);
        ConnectionQueue {
            generation: GENERATIONS.fetch_add(1, Ordering::Relaxed),
            busy: false,
            parked: VecDeque::new(),
            cut: None,
        }
    }
}

impl Cut {
    fn new(now: Instant, cut_for: Duration) -> Cut {
        Cut {
            until: now + cut_for,
            socket: CutSocket::Unknown,
        }
    }

    /// Whether a request of the cut connection may still arrive.
    fn lasts(&self, now: Instant) -> bool {
        match self.socket {
            CutSocket::Known(socket) => socket.is_open(),
            CutSocket::Gone => false,
            CutSocket::Unknown => now < self.until,
        }
    }
}

impl<T> ConnectionQueues<T> {
    pub fn new(cut_for: Duration, port: u16) -> ConnectionQueues<T> {
        ConnectionQueues {
            queues: Mutex::new(HashMap::new()),
            cut_for,
            port,
            last_sweep: Mutex::new(Instant::now()),
        }
    }

    /// A request from `peer` has arrived: what to do with it.
    pub fn arrive(&self, peer: SocketAddr, request: T) -> Arrival<T> {
        let now = Instant::now();
        self.sweep(now);
        let mut queues = lock(&self.queues);
        let line = queues.entry(peer).or_insert_with(ConnectionQueue::new);
        let mut ended = Vec::new();
        if let Some(cut) = &mut line.cut {
            if cut.lasts(now) {
                if let CutSocket::Unknown = cut.socket {
                    // Still sending: stay cut until it has been quiet a while.
                    cut.until = now + self.cut_for;
                }
                return Arrival::Drop(request);
            }
            // The cut connection has ended: this request is a new one's.
            ended = std::mem::replace(line, ConnectionQueue::new())
                .parked
                .into();
        }
        let connection = Connection {
            peer,
            generation: line.generation,
        };
        if !line.busy {
            line.busy = true;
            return Arrival::Start {
                request,
                connection,
                ended,
            };
        }
        if line.parked.len() >= MAX_PARKED {
            line.cut = Some(Cut::new(now, self.cut_for));
            return Arrival::Cut(request, connection);
        }
        line.parked.push_back(request);
        Arrival::Parked
    }

    /// The answer to the connection's current request has been written:
    /// returns its next request to start, if one is waiting.
    pub fn finished(&self, connection: Connection) -> Option<T> {
        let mut queues = lock(&self.queues);
        let line = queues
            .get_mut(&connection.peer)
            .filter(|l| l.generation == connection.generation)?;
        if let Some(next) = line.parked.pop_front() {
            return Some(next);
        }
        line.busy = false;
        if line.cut.is_none() {
            queues.remove(&connection.peer);
        }
        None
    }

    /// Whether requests wait behind the connection's current one.
    pub fn has_parked(&self, connection: Connection) -> bool {
        lock(&self.queues)
            .get(&connection.peer)
            .is_some_and(|l| l.generation == connection.generation && !l.parked.is_empty())
    }

    /// The connection's current request could not be answered (the client
    /// went away or read too slowly): cuts the connection, and returns what
    /// waited behind the request, to be dropped unanswered. The caller then
    /// tells the queues which socket was cut ([`ConnectionQueues::identify`]).
    pub fn cut(&self, connection: Connection) -> Vec<T> {
        let mut queues = lock(&self.queues);
        let Some(line) = queues
            .get_mut(&connection.peer)
            .filter(|l| l.generation == connection.generation)
        else {
            return Vec::new();
        };
        line.busy = false;
        line.cut = Some(Cut::new(Instant::now(), self.cut_for));
        line.parked.drain(..).collect()
    }

    /// Finds the socket of a connection that was just cut, so that the cut
    /// ends when it closes, and stops reading from it. Looks through this
    /// process's descriptors: only ever called for a cut.
    pub fn identify(&self, connection: Connection) {
        let socket = match sockets::find_by_peer(self.port, connection.peer) {
            Search::One(socket) => {
                socket.shut_down_reading();
                CutSocket::Known(socket)
            }
            Search::NotFound => CutSocket::Gone,
            Search::Unknown => CutSocket::Unknown,
        };
        let mut queues = lock(&self.queues);
        if let Some(cut) = queues
            .get_mut(&connection.peer)
            .filter(|l| l.generation == connection.generation)
            .and_then(|l| l.cut.as_mut())
        {
            cut.socket = socket;
        }
    }

    /// Whether `peer`'s connection is cut and has not ended.
    #[cfg(test)]
    fn is_cut(&self, peer: SocketAddr) -> bool {
        lock(&self.queues)
            .get(&peer)
            .and_then(|line| line.cut.as_ref())
            .is_some_and(|cut| cut.lasts(Instant::now()))
    }

    /// Connections with a request in progress.
    #[cfg(test)]
    fn busy(&self) -> usize {
        lock(&self.queues).values().filter(|l| l.busy).count()
    }

    /// Forgets cut connections that have ended, at most once a second.
    fn sweep(&self, now: Instant) {
        {
            let mut last = lock(&self.last_sweep);
            if now.duration_since(*last) < Duration::from_secs(1) {
                return;
            }
            *last = now;
        }
        lock(&self.queues)
            .retain(|_, line| line.busy || line.cut.as_ref().is_some_and(|cut| cut.lasts(now)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// Not a port anything here listens on: no socket is ever found.
    const PORT: u16 = 1;

    /// The connection a request was started on.
    fn started<T: std::fmt::Debug + PartialEq>(admission: Arrival<T>, expected: T) -> Connection {
        match admission {
            Arrival::Start {
                request,
                connection,
                ended,
            } if request == expected && ended.is_empty() => connection,
            other => panic!("expected {expected:?} to start, got {other:?}"),
        }
    }

    #[test]
    fn a_connections_requests_start_one_after_another_in_order() {
        let queues = ConnectionQueues::new(Duration::from_secs(10), PORT);
        let one = started(queues.arrive(peer(1), 1), 1);
        assert_eq!(queues.arrive(peer(1), 2), Arrival::Parked);
        started(queues.arrive(peer(2), 10), 10);
        assert_eq!(queues.arrive(peer(1), 3), Arrival::Parked);
        assert!(queues.has_parked(one));
        assert_eq!(queues.finished(one), Some(2));
        assert_eq!(queues.finished(one), Some(3));
        assert_eq!(queues.finished(one), None);
        assert_eq!(queues.busy(), 1);
        started(queues.arrive(peer(1), 4), 4);
    }

    #[test]
    fn a_connection_past_the_limit_is_cut_but_its_parked_requests_are_kept() {
        let queues = ConnectionQueues::new(Duration::from_secs(10), PORT);
        let one = started(queues.arrive(peer(1), 0), 0);
        for n in 1..=MAX_PARKED {
            assert_eq!(queues.arrive(peer(1), n), Arrival::Parked);
        }
        assert_eq!(queues.arrive(peer(1), 1000), Arrival::Cut(1000, one));
        assert!(queues.is_cut(peer(1)));
        assert_eq!(queues.arrive(peer(1), 1001), Arrival::Drop(1001));
        for n in 1..=MAX_PARKED {
            assert_eq!(queues.finished(one), Some(n));
        }
        assert_eq!(queues.finished(one), None);
        assert_eq!(queues.arrive(peer(1), 2000), Arrival::Drop(2000));
    }

    #[test]
    fn a_connection_whose_answer_failed_is_cut_with_what_waited_behind_it() {
        let queues = ConnectionQueues::new(Duration::from_secs(10), PORT);
        let one = started(queues.arrive(peer(1), 1), 1);
        assert_eq!(queues.arrive(peer(1), 2), Arrival::Parked);
        assert_eq!(queues.arrive(peer(1), 3), Arrival::Parked);
        assert_eq!(queues.cut(one), vec![2, 3]);
        assert_eq!(queues.arrive(peer(1), 4), Arrival::Drop(4));
        assert_eq!(queues.busy(), 0);
    }

    #[test]
    fn a_cut_address_whose_socket_is_not_known_is_served_again_once_it_has_been_quiet() {
        let queues = ConnectionQueues::new(Duration::from_millis(20), PORT);
        let one = started(queues.arrive(peer(1), 0), 0);
        for n in 1..=MAX_PARKED + 1 {
            queues.arrive(peer(1), n);
        }
        while queues.finished(one).is_some() {}
        std::thread::sleep(Duration::from_millis(40));
        assert!(!queues.is_cut(peer(1)));
        let two = started(queues.arrive(peer(1), 7), 7);
        assert_ne!(two, one, "a new generation");
        assert_eq!(
            queues.finished(one),
            None,
            "the old connection's turn changes nothing"
        );
        assert_eq!(queues.busy(), 1);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_cut_ends_with_its_connection_and_what_still_waited_on_it_is_handed_back() {
        use std::net::{TcpListener, TcpStream};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, from) = listener.accept().unwrap();
        // Long enough that only the socket's end can end the cut here.
        let queues = ConnectionQueues::new(Duration::from_secs(3600), port);
        let one = started(queues.arrive(from, 0), 0);
        for n in 1..=MAX_PARKED {
            queues.arrive(from, n);
        }
        assert_eq!(queues.arrive(from, 99), Arrival::Cut(99, one));
        queues.identify(one);
        assert_eq!(queues.arrive(from, 100), Arrival::Drop(100));
        assert!(queues.is_cut(from));
        drop(client);
        drop(server);
        assert!(!queues.is_cut(from), "the cut ended with the socket");
        match queues.arrive(from, 200) {
            Arrival::Start {
                request: 200,
                connection,
                ended,
            } => {
                assert_ne!(connection, one);
                assert_eq!(ended, (1..=MAX_PARKED).collect::<Vec<_>>());
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(queues.finished(one), None);
    }
}
