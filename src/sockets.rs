//! Finding one of this process's TCP sockets by its two addresses, and
//! telling later whether it is still the same open connection.
//!
//! Neither the database driver nor the HTTP server hands out the sockets they
//! open, and both the store (to cut a database connection past its
//! deadline, see `store::watchdog`) and the transport (to know when a client
//! connection it stopped answering has ended, see `http::connections`) need
//! one. An established TCP connection's address pair is unique on the host,
//! so while the connection is open the descriptor found is its own. Linux
//! only (`/proc/self/fd`); elsewhere nothing is ever found.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::RawFd;

/// The result of looking for a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Search {
    /// Exactly one socket matched.
    One(Socket),
    /// No socket matched: the connection is gone (or never was).
    NotFound,
    /// More than one matched, or this process's descriptors cannot be
    /// listed: nothing can be told.
    Unknown,
}

/// One socket: the inode behind it, which no other socket has while this
/// one is open, and the descriptors of it that this process held when it
/// was found (the HTTP server holds two of each client connection: one to read,
/// one to write).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Socket {
    inode: u64,
    fds: [RawFd; MAX_FDS],
    count: usize,
}

/// Descriptors of one socket that are kept track of.
const MAX_FDS: usize = 4;

/// The socket whose local address is `local` and whose peer is `peer`.
pub fn find(local: SocketAddr, peer: SocketAddr) -> Search {
    let (local, peer) = (canonical(local), canonical(peer));
    search(|ours, theirs| ours == local && theirs == peer)
}

/// The socket connected to `peer` whose local port is `port` (whatever the
/// local address: a listener on 0.0.0.0 accepts on several).
pub fn find_by_peer(port: u16, peer: SocketAddr) -> Search {
    let peer = canonical(peer);
    search(|ours, theirs| ours.port() == port && theirs == peer)
}

impl Socket {
    /// A descriptor of the socket, as it was found.
    pub fn fd(&self) -> RawFd {
        self.fds[0]
    }

    /// Whether the socket is still open in this process: one of its
    /// descriptors still refers to it (a closed descriptor, or one reused
    /// for another socket, has another inode or none).
    pub fn is_open(&self) -> bool {
        self.fds[..self.count]
            .iter()
            .any(|&fd| inode(fd) == Some(self.inode))
    }

    /// Stops reading from the socket (`shutdown(SHUT_RD)`): whoever reads
    /// it sees its end. Writing goes on. Nothing is done if the socket has
    /// closed meanwhile.
    pub fn shut_down_reading(&self) {
        for &fd in &self.fds[..self.count] {
            // A descriptor of our own, so that the one found cannot be
            // closed and reused for another socket between the check and
            // the shutdown.
            // SAFETY: dup takes any descriptor number (EBADF if closed).
            let own = unsafe { libc::dup(fd) };
            if own < 0 {
                continue;
            }
            let same = inode(own) == Some(self.inode);
            // SAFETY: `own` is a descriptor this function opened; shutdown
            // does not close it, close does, once.
            unsafe {
                if same {
                    libc::shutdown(own, libc::SHUT_RD);
                }
                libc::close(own);
            }
            if same {
                return;
            }
        }
    }
}

fn search(matches: impl Fn(SocketAddr, SocketAddr) -> bool) -> Search {
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return Search::Unknown;
    };
    let mut found: Option<Socket> = None;
    for entry in entries.flatten() {
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<RawFd>().ok())
        else {
            continue;
        };
        let (Some(ours), Some(theirs)) = (address(fd, Side::Local), address(fd, Side::Peer)) else {
            continue;
        };
        if !matches(ours, theirs) {
            continue;
        }
        let Some(inode) = inode(fd) else { continue };
        match &mut found {
            None => {
                found = Some(Socket {
                    inode,
                    fds: [fd; MAX_FDS],
                    count: 1,
                })
            }
            Some(socket) if socket.inode == inode && socket.count < MAX_FDS => {
                socket.fds[socket.count] = fd;
                socket.count += 1;
            }
            Some(socket) if socket.inode == inode => {}
            // Two sockets with these addresses: cannot be told apart.
            Some(_) => return Search::Unknown,
        }
    }
    found.map_or(Search::NotFound, Search::One)
}

#[derive(Clone, Copy)]
enum Side {
    Local,
    Peer,
}

/// getsockname or getpeername of `fd`, if it is a connected IP socket. Any
/// descriptor number may be passed: a closed one or one that is not a
/// socket only gives `None`.
#[cfg(target_os = "linux")]
fn address(fd: RawFd, side: Side) -> Option<SocketAddr> {
    let name = match side {
        Side::Local => libc::getsockname,
        Side::Peer => libc::getpeername,
    };
    // SAFETY: the closure writes at most `len` bytes into the storage that
    // try_init provides, as getsockname/getpeername promise.
    let (_, addr) = unsafe {
        socket2::SockAddr::try_init(|storage, len| {
            if name(fd, storage.cast(), len) == -1 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(())
            }
        })
    }
    .ok()?;
    addr.as_socket().map(canonical)
}

#[cfg(not(target_os = "linux"))]
fn address(_fd: RawFd, _side: Side) -> Option<SocketAddr> {
    None
}

/// The inode of the socket `fd`, if it is an open socket.
fn inode(fd: RawFd) -> Option<u64> {
    // SAFETY: fstat writes only into `stat`; any descriptor number may be
    // passed (a closed one gives EBADF).
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd, &mut stat) } != 0 || stat.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return None;
    }
    Some(stat.st_ino)
}

/// IPv4-mapped IPv6 addresses as plain IPv4, so both ends compare alike.
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(
        match addr.ip() {
            IpAddr::V6(v6) => v6.to_canonical(),
            v4 => v4,
        },
        addr.port(),
    )
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    #[test]
    fn finds_exactly_the_socket_of_a_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let found = |search| match search {
            Search::One(socket) => Some(socket.fd()),
            _ => None,
        };
        let (local, peer) = (client.local_addr().unwrap(), client.peer_addr().unwrap());
        assert_eq!(found(find(local, peer)), Some(client.as_raw_fd()));
        let (local, peer) = (server.local_addr().unwrap(), server.peer_addr().unwrap());
        assert_eq!(found(find(local, peer)), Some(server.as_raw_fd()));
        assert_eq!(
            found(find_by_peer(local.port(), peer)),
            Some(server.as_raw_fd())
        );
        let elsewhere = "127.0.0.1:1".parse().unwrap();
        assert_eq!(
            find(client.local_addr().unwrap(), elsewhere),
            Search::NotFound
        );
    }

    #[test]
    fn a_socket_is_open_while_any_of_its_descriptors_is() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, peer) = listener.accept().unwrap();
        let twin = server.try_clone().unwrap();
        let port = listener.local_addr().unwrap().port();
        let Search::One(socket) = find_by_peer(port, peer) else {
            panic!("the accepted socket is found once, under both descriptors");
        };
        assert!(socket.is_open());
        drop(client);
        assert!(socket.is_open(), "the peer's end does not close ours");
        drop(server);
        assert!(socket.is_open(), "one descriptor is left");
        drop(twin);
        assert!(!socket.is_open());
        assert_eq!(find_by_peer(port, peer), Search::NotFound);
    }

    #[test]
    fn shutting_down_reading_ends_the_reads_and_leaves_writing() {
        use std::io::{Read, Write};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, peer) = listener.accept().unwrap();
        let Search::One(socket) = find_by_peer(listener.local_addr().unwrap().port(), peer) else {
            panic!("the accepted socket is found");
        };
        socket.shut_down_reading();
        let mut buf = [0u8; 8];
        assert_eq!(server.read(&mut buf).unwrap(), 0, "end of stream");
        server.write_all(b"still").unwrap();
        assert_eq!(client.read(&mut buf).unwrap(), 5);
    }
}
