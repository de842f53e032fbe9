//! The HTTP API, on owned requests: which worker pool a request goes to,
//! routing, the handlers, the error table, the admin token, and each
//! answer's log line and metrics. Nothing here knows the HTTP server: requests
//! come from the transport as [`Request`] values and answers go back as
//! [`Response`] values through a [`Respond`] callback, so every piece can be
//! run on a plain request.
//!
//! A request's path: the transport calls [`dispatch`] on its own thread;
//! the request goes to one of two worker pools (see [`Pool`]); a worker runs
//! [`serve`]; a claim may then be decided by another claim's batch leader
//! (`claims`), whose thread answers it.

mod auth;
mod body;
mod error;
mod handlers;
mod query;
mod router;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use log::{error, info};

use crate::claims::Done;
use crate::context::Context;
use crate::domain::{ClaimOutcome, CouponName, Operation};
use crate::failure_log::Say;
use crate::store::{BatchClaim, StoreError};
use crate::transport::{Method, Request, Response};
use crate::workers::{Refused, Submitter};

pub use error::{ApiError, FieldProblem};
pub use router::{Endpoint, Pool, endpoint};

/// Where an answer goes: called once, with the response, on whichever
/// thread decided it.
pub type Respond = Box<dyn FnOnce(Response) + Send>;

/// A request on its way to a worker.
pub struct Job {
    pub request: Request,
    pub respond: Respond,
    pub endpoint: Endpoint,
    /// The route's name for metrics and logs.
    pub label: &'static str,
    pub started: Instant,
    /// A claim's body as the transport's thread already parsed it (see
    /// [`join_running_batch`]), so that the worker does not parse it again.
    pub claim: Option<ParsedClaim>,
}

/// A claim's coupon and claimant, or why its body is refused.
pub type ParsedClaim = Result<(CouponName, BatchClaim), ApiError>;

/// The queues of the two worker pools (see [`Pool`]).
#[derive(Clone)]
pub struct Pools {
    pub database: Submitter<Job>,
    pub quick: Submitter<Job>,
}

/// Routes a request and queues it for its pool; never waits. A full pool
/// is answered 503 at once rather than holding up the transport's thread.
pub fn dispatch(ctx: &Arc<Context>, pools: &Pools, request: Request, respond: Respond) {
    let started = Instant::now();
    let (endpoint, label) = endpoint(&request.method, &request.target);
    let (respond, claim) = match endpoint {
        Endpoint::Claim => match join_running_batch(ctx, &request, respond, started, label) {
            Joined::Yes => return,
            Joined::No { respond, parsed } => (respond, parsed),
        },
        _ => (respond, None),
    };
    let pool = match endpoint.pool() {
        Pool::Database => &pools.database,
        Pool::Quick => &pools.quick,
    };
    let job = Job {
        request,
        respond,
        endpoint,
        label,
        started,
        claim,
    };
    match pool.try_submit(job) {
        Ok(()) => {}
        Err(Refused::Full(job)) => refuse(ctx, job, ApiError::Overloaded),
        Err(Refused::Stopped(job)) => refuse(ctx, job, ApiError::ShuttingDown),
    }
}

/// Answers one request completely, whatever it holds. A claim is answered
/// by whichever thread decides it, which may be another worker's.
pub fn serve(ctx: &Arc<Context>, job: Job) {
    ctx.metrics.request_started();
    let Job {
        request,
        respond,
        endpoint,
        label,
        started,
        claim: parsed,
    } = job;
    let line = RequestLine::of(&request);
    if let Some(refused) = body::refused_by_framing(&request.body) {
        return finish(ctx, &line, started, "none", Err(refused), respond);
    }
    // Every route of the API, and what answers it.
    let result = match endpoint {
        // Answered by whichever thread decides it, maybe another worker's.
        Endpoint::Claim => {
            let parsed = parsed.unwrap_or_else(|| handlers::parse_claim(&request));
            return claim(ctx, parsed, line, started, label, respond);
        }
        Endpoint::Health => Ok(handlers::health(ctx)),
        Endpoint::Metrics => Ok(handlers::metrics(ctx)),
        Endpoint::ListCoupons => handlers::coupons_page(ctx, &request.target),
        Endpoint::CreateCoupon => auth::require_admin(ctx.admin_token.as_deref(), &request)
            .and_then(|()| handlers::create_coupon(ctx, &request)),
        Endpoint::GetCoupon(name) => handlers::get_coupon(ctx, &name),
        Endpoint::ClaimsPage(name) => handlers::claims_page(ctx, &name, &request.target),
        Endpoint::ReleaseClaim(name, user) => release(ctx, &request, &name, &user),
        Endpoint::NotFound => Err(ApiError::RouteNotFound),
        Endpoint::MethodNotAllowed { allow } => Err(ApiError::MethodNotAllowed { allow }),
    };
    finish(ctx, &line, started, label, result, respond);
}

/// Hands a claim to the claim path; the thread that decides it answers.
fn claim(
    ctx: &Arc<Context>,
    parsed: ParsedClaim,
    line: RequestLine,
    started: Instant,
    label: &'static str,
    respond: Respond,
) {
    match parsed {
        Ok((coupon, claim)) => {
            let done = answer_claim(ctx, line, &coupon, &claim, started, label, respond);
            ctx.claims.submit(coupon, claim, done);
        }
        Err(err) => {
            ctx.metrics.claim_answered("invalid");
            finish(ctx, &line, started, label, Err(err), respond)
        }
    }
}

/// A claim on a coupon whose batch is running joins the claims queued
/// behind that batch from the transport's thread, without a hop through a
/// worker: on a hot coupon, nearly every claim. The batch decides it as if
/// a worker had queued it (the database decides every claim in a batch,
/// so skipping the sold-out memory changes no answer). Gives `respond`
/// back, with the body as parsed, when the claim did not join: no batch
/// running, a full queue, or a request a worker answers.
fn join_running_batch(
    ctx: &Arc<Context>,
    request: &Request,
    respond: Respond,
    started: Instant,
    label: &'static str,
) -> Joined {
    if body::refused_by_framing(&request.body).is_some() {
        return Joined::No {
            respond,
            parsed: None,
        };
    }
    let (coupon, claim) = match handlers::parse_claim(request) {
        Ok(parsed) => parsed,
        Err(err) => {
            return Joined::No {
                respond,
                parsed: Some(Err(err)),
            };
        }
    };
    let (mut respond, mut claim) = (Some(respond), Some(claim));
    let joined = ctx.claims.join_running(&coupon, || {
        ctx.metrics.request_started();
        let respond = respond.take().expect("joins once");
        let claim = claim.take().expect("joins once");
        let line = RequestLine::of(request);
        let done = answer_claim(ctx, line, &coupon, &claim, started, label, respond);
        (claim, done)
    });
    match (joined, respond, claim) {
        (false, Some(respond), Some(claim)) => Joined::No {
            respond,
            parsed: Some(Ok((coupon, claim))),
        },
        _ => Joined::Yes,
    }
}

/// What became of a claim offered to its coupon's running batch.
enum Joined {
    /// Queued behind the batch, which answers it.
    Yes,
    /// Not queued: a worker is to answer it.
    No {
        respond: Respond,
        parsed: Option<ParsedClaim>,
    },
}

/// What answers a claim once the claim path has decided it.
fn answer_claim(
    ctx: &Arc<Context>,
    line: RequestLine,
    coupon: &CouponName,
    claim: &BatchClaim,
    started: Instant,
    label: &'static str,
    respond: Respond,
) -> Done {
    let (coupon, user) = (coupon.clone(), claim.user.clone());
    let ctx = Arc::clone(ctx);
    Box::new(move |outcome| {
        ctx.metrics.claim_answered(outcome_label(&outcome));
        match outcome {
            Ok(ClaimOutcome::Replayed { .. }) => {
                ctx.metrics.idempotency_key(Operation::Claim, "replayed")
            }
            Ok(ClaimOutcome::KeyMismatch) => {
                ctx.metrics.idempotency_key(Operation::Claim, "mismatch")
            }
            _ => {}
        }
        let response = handlers::claim_response(&coupon, &user, outcome);
        finish(&ctx, &line, started, label, response, respond)
    })
}

/// Every claim outcome /metrics counts: the labels of [`outcome_label`],
/// and `invalid` for a claim refused before it reached the claim path.
pub const CLAIM_OUTCOMES: [&str; 12] = [
    "claimed",
    "already_claimed",
    "out_of_stock",
    "coupon_not_found",
    "not_started",
    "expired",
    "replayed",
    "key_mismatch",
    "busy",
    "unavailable",
    "error",
    "invalid",
];

fn outcome_label(outcome: &Result<ClaimOutcome, StoreError>) -> &'static str {
    match outcome {
        Ok(ClaimOutcome::Claimed { .. }) => "claimed",
        Ok(ClaimOutcome::AlreadyClaimed) => "already_claimed",
        Ok(ClaimOutcome::OutOfStock) => "out_of_stock",
        Ok(ClaimOutcome::CouponNotFound) => "coupon_not_found",
        Ok(ClaimOutcome::NotStarted) => "not_started",
        Ok(ClaimOutcome::Expired) => "expired",
        Ok(ClaimOutcome::Replayed { .. }) => "replayed",
        Ok(ClaimOutcome::KeyMismatch) => "key_mismatch",
        Err(StoreError::Busy { .. }) => "busy",
        Err(StoreError::Unavailable(_)) => "unavailable",
        Err(StoreError::Internal(_)) => "error",
    }
}

/// A release: the admin token first (always needed), then the path.
fn release(ctx: &Context, request: &Request, name: &str, user: &str) -> Result<Response, ApiError> {
    let result = auth::require_admin_always(ctx.admin_token.as_deref(), request)
        .and_then(|()| handlers::release_claim(ctx, request, name, user));
    let outcome = match &result {
        Ok(response) if response.header("Idempotent-Replayed").is_some() => "replayed",
        Ok(_) => "released",
        Err(ApiError::IdempotencyKeyMismatch) => "key_mismatch",
        Err(ApiError::ClaimNotFound) => "claim_not_found",
        Err(ApiError::CouponNotFound) => "coupon_not_found",
        Err(ApiError::Unauthorized | ApiError::Forbidden | ApiError::NoAdminToken) => "refused",
        Err(
            ApiError::Field { .. } | ApiError::InvalidPath | ApiError::InvalidIdempotencyKey(_),
        ) => "invalid",
        Err(ApiError::Store(StoreError::Busy { .. })) => "busy",
        Err(ApiError::Store(StoreError::Unavailable(_))) => "unavailable",
        Err(_) => "error",
    };
    ctx.metrics.release_answered(outcome);
    result
}

/// What a request's log line says of it, kept from the request itself so
/// that the request need not outlive its handler. Kept raw: the line is
/// only written when its level is on (`LOG_LEVEL=warn` writes none for
/// answered requests), so escaping waits until then.
struct RequestLine {
    method: Method,
    target: String,
    peer: Option<SocketAddr>,
    /// The last `X-Forwarded-For` header's value, if any.
    forwarded: Option<String>,
}

impl RequestLine {
    fn of(request: &Request) -> RequestLine {
        RequestLine {
            method: request.method.clone(),
            target: request.target.clone(),
            peer: request.peer,
            forwarded: request.headers("X-Forwarded-For").last().map(str::to_owned),
        }
    }

    /// The target, bounded and escaped.
    fn target(&self) -> String {
        loggable(&self.target)
    }

    fn client(&self) -> String {
        client(self.peer, self.forwarded.as_deref())
    }
}

/// Records the answer's log line and metrics, and sends it.
fn finish(
    ctx: &Context,
    line: &RequestLine,
    started: Instant,
    route: &'static str,
    result: Result<Response, ApiError>,
    respond: Respond,
) {
    let method = &line.method;
    let response = match result {
        Ok(response) => response,
        Err(err) => {
            if let ApiError::Store(cause) = &err {
                // The cause stays in the log; the client gets only the code.
                match err.status() {
                    500 => error!("{method} {}: {cause}", line.target()),
                    _ => log_failure!(
                        ctx.failing_requests,
                        log::Level::Warn,
                        "{method} {} answered 503: {cause}",
                        line.target()
                    ),
                }
            }
            err.into_response()
        }
    };
    let status = response.status;
    if status < 500 && !matches!(route, "healthz" | "metrics" | "none") {
        log_recovery!(ctx.failing_requests, "requests are served again");
    }
    let took = started.elapsed();
    ctx.metrics.request_finished(route, status, took);
    let level = if route == "healthz" {
        probe_level(ctx, status)
    } else {
        log::Level::Info
    };
    log::log!(
        level,
        "{method} {} {status} {:.3}ms client={}",
        line.target(),
        took.as_secs_f64() * 1000.0,
        line.client()
    );
    respond(response);
}

/// The level of a /healthz request line. The edge and Docker probe it
/// every second or so: a passing probe is not worth a line at info, and
/// failing ones are one run of failures (see `failure_log`): the first
/// probe's line at info, then a count at info at most every REPORT_EVERY,
/// and a line when a probe passes again; the other lines at debug.
fn probe_level(ctx: &Context, status: u16) -> log::Level {
    if status == 200 {
        log_recovery!(ctx.failing_probes, "/healthz passes again");
        return log::Level::Debug;
    }
    match ctx.failing_probes.failed() {
        Say::InFull => log::Level::Info,
        Say::Count { failures, over } => {
            info!("/healthz still failing: {failures} failing probes in a row over {over:.1?}");
            log::Level::Debug
        }
        Say::Quietly => log::Level::Debug,
    }
}

/// Answers a request that no pool could take.
fn refuse(ctx: &Context, job: Job, err: ApiError) {
    ctx.metrics.request_started();
    let line = RequestLine::of(&job.request);
    finish(ctx, &line, job.started, job.label, Err(err), job.respond);
}

/// Who sent a request, for its log line: the peer's address, and before it,
/// when the request carries `X-Forwarded-For`, the last address in it (the
/// one our own proxy appended; those before it are the client's say):
/// `203.0.113.5 via 127.0.0.1:4567`. An entry that is not an address is
/// shown quoted, bounded and escaped like the target.
fn client(peer: Option<SocketAddr>, forwarded: Option<&str>) -> String {
    let peer = peer.map_or_else(|| "unknown".to_owned(), |peer| peer.to_string());
    let forwarded = forwarded
        .and_then(|value| value.rsplit(',').next())
        .map(str::trim)
        .filter(|entry| !entry.is_empty());
    match forwarded {
        None => peer,
        Some(entry) if is_address(entry) => format!("{entry} via {peer}"),
        Some(entry) => format!("\"{}\" via {peer}", loggable(entry)),
    }
}

/// An IP address, with or without a port.
fn is_address(text: &str) -> bool {
    text.parse::<std::net::IpAddr>().is_ok() || text.parse::<SocketAddr>().is_ok()
}

/// A request target fit for one log line: bounded and escaped.
fn loggable(target: &str) -> String {
    let shown: String = target.chars().take(200).collect();
    let ellipsis = if shown.len() < target.len() {
        "…"
    } else {
        ""
    };
    format!("{}{ellipsis}", shown.escape_debug())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_line_names_the_forwarded_client_before_the_peer() {
        let peer = "127.0.0.1:4567".parse().unwrap();
        let mut request = Request::new(Method::Get, "/healthz")
            .with_header("X-Forwarded-For", "198.51.100.7, 203.0.113.5");
        request.peer = Some(peer);
        assert_eq!(
            RequestLine::of(&request).client(),
            "203.0.113.5 via 127.0.0.1:4567"
        );
        let odd = Request::new(Method::Get, "/").with_header("X-Forwarded-For", "a\"b\nc");
        assert_eq!(RequestLine::of(&odd).client(), "\"a\\\"b\\nc\" via unknown");
        assert_eq!(
            RequestLine::of(&Request::new(Method::Get, "/")).client(),
            "unknown"
        );
    }

    #[test]
    fn targets_in_the_log_are_bounded_and_escaped() {
        assert_eq!(loggable("/a\nb"), "/a\\nb");
        let long = "x".repeat(500);
        assert_eq!(loggable(&long).chars().count(), 201);
    }
}
