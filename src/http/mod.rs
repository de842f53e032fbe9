//! HTTP glue: the gate every request enters by, intake, routing, bodies,
//! answers and the request log line.
//!
//! A request's path: tiny_http parses it; the [`Gate`] starts it when its
//! connection has nothing else in progress, reads its body off the socket
//! and puts it on a lane; a worker (or a light thread) runs its handler
//! ([`serve`]); a claim may be decided by another claim's batch leader; the
//! answer goes to a writer ([`response`]), whose finished write starts the
//! connection's next request.

mod auth;
mod body;
mod budget;
mod connections;
mod error;
mod gate;
mod handlers;
mod intake;
mod query;
mod response;
mod router;

use std::sync::Arc;
use std::time::Instant;

use log::{error, info};

use crate::context::Context;
use crate::domain::ClaimOutcome;
use crate::failure_log::Say;
use crate::store::StoreError;

pub use budget::Budget;
pub use error::{ApiError, FieldProblem};
pub use gate::{Gate, Job};
pub use intake::{Body, Incoming, MAX_BODY_BYTES};
pub use response::{Outgoing, Reply, send as write};
use router::Endpoint;

/// Answers one request completely, whatever it holds. A claim is answered
/// by whichever thread decides it, which may be another worker's.
pub fn serve(ctx: &Arc<Context>, job: Job) {
    ctx.metrics.request_started();
    let Job {
        incoming,
        endpoint,
        label,
        started,
    } = job;
    if let Body::Abandoned = incoming.body {
        // Answered before routing: such a request is never dropped (see intake).
        let too_large = ApiError::PayloadTooLarge {
            limit: MAX_BODY_BYTES,
        };
        return finish(ctx, incoming, started, "none", Err(too_large));
    }
    let target = incoming.request.url();
    // Every route of the API, and what answers it.
    let result = match endpoint {
        // Answered by whichever thread decides it, maybe another worker's.
        Endpoint::Claim => return claim(ctx, incoming, started, label),
        Endpoint::Health => Ok(handlers::health(ctx)),
        Endpoint::Metrics => Ok(handlers::metrics(ctx)),
        Endpoint::ListCoupons => handlers::coupons_page(ctx, target),
        Endpoint::CreateCoupon => auth::require_admin(ctx, &incoming.request)
            .and_then(|()| handlers::create_coupon(ctx, &incoming)),
        Endpoint::GetCoupon(name) => handlers::get_coupon(ctx, &name),
        Endpoint::ClaimsPage(name) => handlers::claims_page(ctx, &name, target),
        Endpoint::ReleaseClaim(name, user) => release(ctx, &incoming.request, &name, &user),
        Endpoint::NotFound => Err(ApiError::RouteNotFound),
        Endpoint::MethodNotAllowed { allow } => Err(ApiError::MethodNotAllowed { allow }),
    };
    finish(ctx, incoming, started, label, result);
}

/// Hands a claim to the claim path; the thread that decides it answers.
fn claim(ctx: &Arc<Context>, incoming: Incoming, started: Instant, label: &'static str) {
    match handlers::parse_claim(&incoming) {
        Ok((coupon, user)) => {
            let (c, u) = (coupon.clone(), user.clone());
            let shared = Arc::clone(ctx);
            ctx.claims.submit(
                coupon,
                user,
                Box::new(move |outcome| {
                    shared.metrics.claim_answered(outcome_label(&outcome));
                    let reply = handlers::claim_reply(&c, &u, outcome);
                    finish(&shared, incoming, started, label, reply)
                }),
            );
        }
        Err(err) => {
            ctx.metrics.claim_answered("invalid");
            finish(ctx, incoming, started, label, Err(err))
        }
    }
}

fn outcome_label(outcome: &Result<ClaimOutcome, StoreError>) -> &'static str {
    match outcome {
        Ok(ClaimOutcome::Claimed { .. }) => "claimed",
        Ok(ClaimOutcome::AlreadyClaimed) => "already_claimed",
        Ok(ClaimOutcome::OutOfStock) => "out_of_stock",
        Ok(ClaimOutcome::CouponNotFound) => "coupon_not_found",
        Ok(ClaimOutcome::NotStarted) => "not_started",
        Ok(ClaimOutcome::Expired) => "expired",
        Err(StoreError::Busy { .. }) => "busy",
        Err(StoreError::Unavailable(_)) => "unavailable",
        Err(StoreError::Internal(_)) => "error",
    }
}

/// A release: the admin token first (always needed), then the path.
fn release(
    ctx: &Context,
    request: &tiny_http::Request,
    name: &str,
    user: &str,
) -> Result<Reply, ApiError> {
    let result = auth::require_admin_token(ctx, request)
        .and_then(|()| handlers::release_claim(ctx, name, user));
    let outcome = match &result {
        Ok(_) => "released",
        Err(ApiError::ClaimNotFound) => "claim_not_found",
        Err(ApiError::CouponNotFound) => "coupon_not_found",
        Err(ApiError::Unauthorized | ApiError::Forbidden | ApiError::NoAdminToken) => "refused",
        Err(ApiError::Field { .. } | ApiError::InvalidPath) => "invalid",
        Err(ApiError::Store(StoreError::Busy { .. })) => "busy",
        Err(ApiError::Store(StoreError::Unavailable(_))) => "unavailable",
        Err(_) => "error",
    };
    ctx.metrics.release_answered(outcome);
    result
}

/// Records the answer's log line and metrics, and hands it to a writer.
fn finish(
    ctx: &Context,
    incoming: Incoming,
    started: Instant,
    route: &'static str,
    result: Result<Reply, ApiError>,
) {
    let method = incoming.request.method().clone();
    let target = loggable(incoming.request.url());
    let reply = match result {
        Ok(reply) => reply,
        Err(err) => {
            if let ApiError::Store(cause) = &err {
                // The cause stays in the log; the client gets only the code.
                match err.status() {
                    500 => error!("{method} {target}: {cause}"),
                    _ => unavailable_line(ctx, &method, &target, cause),
                }
            }
            err.into_reply()
        }
    };
    let status = reply.status;
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
        "{method} {target} {status} {:.3}ms client={}",
        took.as_secs_f64() * 1000.0,
        client(&incoming.request)
    );
    ctx.answer(Outgoing {
        incoming,
        reply,
        keep_alive: ctx.keep_alive(),
    });
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

/// The cause of a 503 from the store (the database unreachable, retries
/// run out): while the database is down every request fails alike, so
/// these are one run of failures (see `failure_log`); the next request
/// served ends the run with a line of its own.
fn unavailable_line(ctx: &Context, method: &tiny_http::Method, target: &str, cause: &StoreError) {
    log_failure!(
        ctx.failing_requests,
        log::Level::Warn,
        "{method} {target} answered 503: {cause}"
    );
}

/// Answers a request that no lane could take.
fn refuse(ctx: &Context, job: Job, err: ApiError) {
    ctx.metrics.request_started();
    finish(ctx, job.incoming, job.started, job.label, Err(err));
}

/// Who sent a request, for its log line: the peer's address, and before it,
/// when the request carries `X-Forwarded-For`, the last address in it (the
/// one our own proxy appended; those before it are the client's say):
/// `203.0.113.5 via 127.0.0.1:4567`. An entry that is not an address is
/// shown quoted, bounded and escaped like the target.
fn client(request: &tiny_http::Request) -> String {
    let peer = request
        .remote_addr()
        .map_or_else(|| "unknown".to_owned(), ToString::to_string);
    let forwarded = intake::headers(request, "X-Forwarded-For")
        .last()
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
    text.parse::<std::net::IpAddr>().is_ok() || text.parse::<std::net::SocketAddr>().is_ok()
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
