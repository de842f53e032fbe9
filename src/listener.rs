//! The listening socket, made here rather than by tiny_http so that its
//! accept backlog fits a flash sale.

use std::net::{SocketAddr, TcpListener, ToSocketAddrs};

use socket2::{Domain, Protocol, Socket, Type};

/// Connections the kernel may hold for us before we accept them. std's
/// default (128) overflows when hundreds of clients connect in the same
/// instant, and the overflow shows up as connection resets: seen with 500
/// concurrent claims. The kernel caps it at net.core.somaxconn.
const BACKLOG: i32 = 4096;

pub fn bind(addr: &str) -> std::io::Result<TcpListener> {
    let mut last_err = None;
    for addr in addr.to_socket_addrs()? {
        match bind_one(addr) {
            Ok(listener) => return Ok(listener),
            Err(err) => last_err = Some(err),
        }
    }
    Err(last_err.unwrap_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "no address to listen on")
    }))
}

fn bind_one(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}
