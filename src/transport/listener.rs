//! The listening socket, made here rather than by tiny_http so that its
//! accept backlog fits a flash sale.

use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

/// Connections the kernel may hold for us before we accept them. std's
/// default (128) overflows when hundreds of clients connect in the same
/// instant, and the overflow shows up as connection resets: seen with 500
/// concurrent claims. The kernel caps it at net.core.somaxconn.
const BACKLOG: i32 = 4096;

/// Binds `addr`. `idle_timeout` becomes the read and write timeout of the
/// listening socket, which Linux copies to every accepted socket: tiny_http
/// sets no timeouts of its own, so without this a client that stops sending
/// or reading holds a thread forever. The listener's own accept() then also
/// times out when no client connects for that long; the server starts a new
/// accept loop when that happens (see `server`).
pub fn bind(addr: &str, idle_timeout: Duration) -> std::io::Result<TcpListener> {
    let mut last_err = None;
    for addr in addr.to_socket_addrs()? {
        match bind_one(addr, idle_timeout) {
            Ok(listener) => return Ok(listener),
            Err(err) => last_err = Some(err),
        }
    }
    Err(last_err.unwrap_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "no address to listen on")
    }))
}

fn bind_one(addr: SocketAddr, idle_timeout: Duration) -> std::io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_read_timeout(Some(idle_timeout))?;
    socket.set_write_timeout(Some(idle_timeout))?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// Raises the soft limit on open descriptors to the hard limit: every
/// connection is a descriptor, and the usual soft limit of 1024 would stop
/// accepting at a thousand clients. Returns the limit now in force.
pub fn raise_descriptor_limit() -> std::io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct given.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    Ok(limit.rlim_cur)
}
