//! HTTP glue: intake, routing, bodies, answers and the request log line.

mod auth;
mod body;
mod error;
mod handlers;
mod intake;
mod query;
mod response;
mod router;

use std::sync::Arc;
use std::time::Instant;

use log::{error, info, warn};
use tiny_http::Method;

use crate::context::Context;
use crate::domain::ClaimOutcome;
use crate::store::StoreError;

pub use error::{ApiError, FieldProblem};
pub use intake::{Body, Incoming, MAX_BODY_BYTES, take_in};
pub use response::Reply;
use router::{Route, route};

/// Answers one request completely, whatever it holds. A claim is answered
/// by whichever thread decides it, which may be another worker's.
pub fn serve(ctx: &Arc<Context>, incoming: Incoming) {
    let started = Instant::now();
    ctx.metrics.request_started();
    if let Body::Abandoned = incoming.body {
        // Answered before routing: such a request is never dropped (see intake).
        let too_large = ApiError::PayloadTooLarge {
            limit: MAX_BODY_BYTES,
        };
        return finish(ctx, incoming, started, "none", Err(too_large));
    }
    let found = route(incoming.request.url());
    let label = found.as_ref().map_or("none", Route::label);
    if let (Some(Route::Claim), Method::Post) = (&found, incoming.request.method()) {
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
        return;
    }
    let result = dispatch(ctx, found, &incoming);
    finish(ctx, incoming, started, label, result);
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

fn dispatch(ctx: &Context, found: Option<Route>, incoming: &Incoming) -> Result<Reply, ApiError> {
    let found = found.ok_or(ApiError::RouteNotFound)?;
    match (&found, incoming.request.method()) {
        (Route::Health, Method::Get) => Ok(handlers::health(ctx)),
        (Route::Metrics, Method::Get) => Ok(handlers::metrics(ctx)),
        (Route::Coupons, Method::Get) => handlers::coupons_page(ctx, incoming.request.url()),
        (Route::Coupons, Method::Post) => {
            auth::require_admin(ctx, &incoming.request)?;
            handlers::create_coupon(ctx, incoming)
        }
        (Route::Claim, Method::Get) => handlers::get_coupon(ctx, "claim"),
        (Route::Coupon(name), Method::Get) => handlers::get_coupon(ctx, name),
        (Route::CouponClaims(name), Method::Get) => {
            handlers::claims_page(ctx, name, incoming.request.url())
        }
        _ => Err(ApiError::MethodNotAllowed {
            allow: found.allow(),
        }),
    }
}

/// Sends the answer, and records its log line and metrics.
fn finish(
    ctx: &Context,
    incoming: Incoming,
    started: Instant,
    route: &'static str,
    result: Result<Reply, ApiError>,
) {
    let method = incoming.request.method().clone();
    let target = loggable(incoming.request.url());
    let reply = result.unwrap_or_else(|err| {
        if let ApiError::Store(cause) = &err {
            // The cause stays in the log; the client gets only the code.
            match err.status() {
                500 => error!("{method} {target}: {cause}"),
                _ => warn!("{method} {target}: {cause}"),
            }
        }
        err.into_reply()
    });
    let status = reply.status;
    response::send(incoming, reply, ctx.keep_alive());
    let took = started.elapsed();
    ctx.metrics.request_finished(route, status, took);
    info!(
        "{method} {target} {status} {:.3}ms",
        took.as_secs_f64() * 1000.0
    );
}

/// Answers a request that arrived too late to be served: the pool stopped.
pub fn refuse_while_stopping(incoming: Incoming) {
    response::send(incoming, ApiError::ShuttingDown.into_reply(), false);
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
