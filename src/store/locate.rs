//! Which socket in this process is a database connection's, so that the
//! watchdog can cut it (see `watchdog`): the server tells the connection's
//! two ends, and exactly one socket here has them (see `crate::sockets`).
//! Asked once, when a connection opens (see `deadline_client`).

use std::net::{IpAddr, SocketAddr};
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};

use log::{info, warn};

use crate::sockets::{self, Search};

/// The connection's socket in this process, from the two ends the server
/// sees. `None` over a Unix socket, or when no socket here has those ends.
pub(super) fn locate(client: &mut postgres::Client) -> Result<Option<RawFd>, postgres::Error> {
    // Each said once per process: every connection after the first would
    // say the same.
    static UNIX_NOTED: AtomicBool = AtomicBool::new(false);
    static UNMATCHED_NOTED: AtomicBool = AtomicBool::new(false);
    let row = client.query_one(
        "SELECT inet_client_addr() AS client_addr, inet_client_port() AS client_port, \
         inet_server_addr() AS server_addr, inet_server_port() AS server_port",
        &[],
    )?;
    let end = |addr: Option<IpAddr>, port: Option<i32>| {
        Some(SocketAddr::new(addr?, u16::try_from(port?).ok()?))
    };
    let ours = end(row.get("client_addr"), row.get("client_port"));
    let theirs = end(row.get("server_addr"), row.get("server_port"));
    let (Some(ours), Some(theirs)) = (ours, theirs) else {
        if !UNIX_NOTED.swap(true, Ordering::Relaxed) {
            info!(
                "database connections over a Unix socket have no client-side deadline \
                 (DB_QUERY_TIMEOUT_MS); statement_timeout still applies"
            );
        }
        return Ok(None);
    };
    let fd = match sockets::find(ours, theirs) {
        Search::One(socket) => Some(socket.fd()),
        Search::NotFound | Search::Unknown => None,
    };
    if fd.is_none() && !UNMATCHED_NOTED.swap(true, Ordering::Relaxed) {
        warn!(
            "cannot find the socket of a database connection (the database sees it as \
             {ours} -> {theirs}: a proxy or NAT between?); such connections have no \
             client-side deadline (DB_QUERY_TIMEOUT_MS), only statement_timeout and TCP \
             keepalives"
        );
    }
    Ok(fd)
}
