//! Where every parsed request enters: one at a time per connection (see
//! `connections`), then its body read (see `intake`), then a lane.
//!
//! Work that may wait on the database goes to the workers; the rest to a
//! few light threads, so that /healthz, /metrics and refusals are answered
//! while every worker waits on a stuck database. Neither lane writes to a
//! socket: answers go to the writers (see `response`). A full lane is
//! answered 503 at once rather than stalling the accept loop behind it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use log::warn;
use tiny_http::Request;

use crate::context::Context;
use crate::workers::{Refused, Submitter};

use super::connections::{Admission, Connection, Lines};
use super::error::ApiError;
use super::intake::{Body, Incoming, take_in};
use super::router::{Endpoint, Lane, endpoint};

/// A request on its way to a handler.
pub struct Job {
    pub incoming: Incoming,
    pub endpoint: Endpoint,
    /// The route's name for metrics and logs.
    pub label: &'static str,
    pub started: Instant,
}

pub struct Gate {
    lines: Lines<Request>,
    ctx: Arc<Context>,
    database: Submitter<Job>,
    light: Submitter<Job>,
}

/// A connection's right to have one request worked on. Dropped once that
/// request's answer has been written, which starts the connection's next.
pub struct Turn {
    owner: Option<(Arc<Gate>, Connection)>,
}

impl Turn {
    /// Whether more requests of this connection wait behind this one.
    pub fn others_waiting(&self) -> bool {
        self.owner
            .as_ref()
            .is_some_and(|(gate, connection)| gate.lines.has_parked(*connection))
    }

    /// This request's answer could not be written: its connection gets no
    /// more answers (see `connections`).
    pub fn cut(mut self) {
        if let Some((gate, connection)) = self.owner.take() {
            let waiting = gate.lines.cut(connection);
            gate.lines.identify(connection);
            waiting.into_iter().for_each(drop_unanswered);
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        if let Some((gate, connection)) = self.owner.take()
            && let Some(next) = gate.lines.finished(connection)
        {
            gate.start(next, connection);
        }
    }
}

impl Gate {
    /// `idle_timeout` is the socket read timeout: a connection quiet for
    /// longer has been closed by tiny_http.
    /// `port` is the one the server listens on.
    pub fn new(
        ctx: Arc<Context>,
        database: Submitter<Job>,
        light: Submitter<Job>,
        idle_timeout: Duration,
        port: u16,
    ) -> Gate {
        Gate {
            lines: Lines::new(idle_timeout + Duration::from_secs(1), port),
            ctx,
            database,
            light,
        }
    }

    /// Takes a request from tiny_http; never waits.
    pub fn admit(self: &Arc<Self>, request: Request) {
        let Some(peer) = request.remote_addr().copied() else {
            // Not TCP: there is no connection to order on.
            let turn = Turn { owner: None };
            return take_in(request, turn, self.dispatcher());
        };
        match self.lines.admit(peer, request) {
            Admission::Start {
                request,
                connection,
                ended,
            } => {
                ended.into_iter().for_each(drop_unanswered);
                self.start(request, connection)
            }
            Admission::Parked => {}
            Admission::Cut(request, connection) => {
                self.lines.identify(connection);
                warn!("{peer} sent too many requests ahead of its answers; dropping the rest");
                drop_unanswered(request);
            }
            Admission::Drop(request) => drop_unanswered(request),
        }
    }

    fn start(self: &Arc<Self>, request: Request, connection: Connection) {
        let turn = Turn {
            owner: Some((Arc::clone(self), connection)),
        };
        take_in(request, turn, self.dispatcher());
    }

    fn dispatcher(self: &Arc<Self>) -> impl FnOnce(Incoming) + Send + 'static {
        let gate = Arc::clone(self);
        move |incoming| gate.dispatch(incoming)
    }

    fn dispatch(&self, incoming: Incoming) {
        let started = Instant::now();
        let (endpoint, label) = endpoint(incoming.request.method(), incoming.request.url());
        let lane = match endpoint.lane() {
            Lane::Database => &self.database,
            Lane::Light => &self.light,
        };
        let job = Job {
            incoming,
            endpoint,
            label,
            started,
        };
        match lane.try_submit(job) {
            Ok(()) => {}
            Err(Refused::Full(job)) => super::refuse(&self.ctx, job, ApiError::Overloaded),
            Err(Refused::Stopped(job)) => super::refuse(&self.ctx, job, ApiError::ShuttingDown),
        }
    }
}

/// Writes nothing: the connection's answers stop, in order, rather than a
/// later answer taking an earlier one's place. A body still on the socket is
/// read off it first on its own thread, as for any request (dropping the
/// request would read it on this one; see `intake`).
fn drop_unanswered(request: Request) {
    take_in(request, Turn { owner: None }, |incoming| {
        if let Body::Abandoned = incoming.body {
            // Never dropped, never drained (see `intake`).
            std::mem::forget(incoming.request);
        } else {
            drop(incoming.request.into_writer());
        }
    });
}
