//! Where every request tiny_http has parsed enters: one at a time per
//! connection (see `order`), its body read off the socket (see `intake`),
//! then handed to the service as an owned [`Request`](super::Request) with a
//! [`Responder`] for its answer. Never waits: the pumps call it.

use std::sync::Arc;
use std::time::Duration;

use log::warn;

use super::Service;
use super::intake::{self, read_body};
use super::message::Body;
use super::order::{Arrival, Connection, ConnectionQueues};
use super::writer::{BodyEnd, Responder, Writers};

pub struct Admission {
    queues: ConnectionQueues<tiny_http::Request>,
    service: Service,
    writers: Arc<Writers>,
}

/// A connection's request in flight: the right to have one request worked
/// on. Dropped once that request's answer has been written, which starts
/// the connection's next.
pub struct InFlight {
    owner: Option<(Arc<Admission>, Connection)>,
}

impl InFlight {
    /// Whether more requests of this connection wait behind this one.
    pub fn others_waiting(&self) -> bool {
        self.owner
            .as_ref()
            .is_some_and(|(admission, connection)| admission.queues.has_parked(*connection))
    }

    /// This request's answer could not be written: its connection gets no
    /// more answers (see `order`).
    pub fn cut(mut self) {
        if let Some((admission, connection)) = self.owner.take() {
            let waiting = admission.queues.cut(connection);
            admission.queues.identify(connection);
            waiting.into_iter().for_each(drop_unanswered);
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some((admission, connection)) = self.owner.take()
            && let Some(next) = admission.queues.finished(connection)
        {
            admission.start(next, connection);
        }
    }
}

impl Admission {
    /// `idle_timeout` is the socket read timeout: a connection quiet for
    /// longer has been closed by tiny_http. `port` is the one listened on.
    pub fn new(
        service: Service,
        writers: Arc<Writers>,
        idle_timeout: Duration,
        port: u16,
    ) -> Admission {
        Admission {
            queues: ConnectionQueues::new(idle_timeout + Duration::from_secs(1), port),
            service,
            writers,
        }
    }

    /// Takes a request from tiny_http.
    pub fn admit(self: &Arc<Self>, request: tiny_http::Request) {
        let Some(peer) = request.remote_addr().copied() else {
            // Not TCP: there is no connection to order on.
            return self.hand_over(request, InFlight { owner: None });
        };
        match self.queues.arrive(peer, request) {
            Arrival::Start {
                request,
                connection,
                ended,
            } => {
                ended.into_iter().for_each(drop_unanswered);
                self.start(request, connection)
            }
            Arrival::Parked => {}
            Arrival::Cut(request, connection) => {
                self.queues.identify(connection);
                warn!("{peer} sent too many requests ahead of its answers; dropping the rest");
                drop_unanswered(request);
            }
            Arrival::Drop(request) => drop_unanswered(request),
        }
    }

    fn start(self: &Arc<Self>, request: tiny_http::Request, connection: Connection) {
        let in_flight = InFlight {
            owner: Some((Arc::clone(self), connection)),
        };
        self.hand_over(request, in_flight);
    }

    /// Reads the body, then hands the request to the service.
    fn hand_over(self: &Arc<Self>, request: tiny_http::Request, in_flight: InFlight) {
        let admission = Arc::clone(self);
        read_body(request, move |request, body| {
            let ending = BodyEnd::of(&body);
            let owned = intake::owned(&request, body);
            let responder = Responder::new(request, ending, in_flight, &admission.writers);
            (admission.service)(owned, responder);
        });
    }
}

/// Writes nothing: the connection's answers stop, in order, rather than a
/// later answer taking an earlier one's place. A body still on the socket is
/// read off it first on its own thread, as for any request (dropping the
/// request would read it on this one; see `intake`).
fn drop_unanswered(request: tiny_http::Request) {
    read_body(request, |request, body| {
        if let Body::Abandoned = body {
            // Never dropped, never drained (tiny_http defect 13).
            std::mem::forget(request);
        } else {
            drop(request.into_writer());
        }
    });
}
