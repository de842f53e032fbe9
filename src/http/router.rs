//! The route table: which handler a method and path reach, in one place.

use crate::transport::Method;

/// What a request asks for; [`endpoint`] holds every route of the API.
#[derive(Debug, PartialEq, Eq)]
pub enum Endpoint {
    Health,
    Metrics,
    ListCoupons,
    CreateCoupon,
    Claim,
    /// A coupon by its still percent-encoded name.
    GetCoupon(String),
    ClaimsPage(String),
    /// One user's claim on a coupon, given back: the coupon name and the
    /// user id, both still percent-encoded.
    ReleaseClaim(String, String),
    /// No such path.
    NotFound,
    /// The path exists; the method is not one it answers.
    MethodNotAllowed {
        allow: &'static str,
    },
}

/// Which worker pool answers a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pool {
    /// The workers (WORKERS), which may wait on the database.
    Database,
    /// A few threads that never wait on the database beyond the health
    /// probe's own short deadline, so that /healthz, /metrics and
    /// refusals are answered while every worker is stuck.
    Quick,
}

/// The endpoint, and its route's name for metrics and logs.
pub fn endpoint(method: &Method, target: &str) -> (Endpoint, &'static str) {
    let Some(found) = route(target) else {
        return (Endpoint::NotFound, "none");
    };
    let label = found.label();
    // HEAD is answered wherever GET is, as GET is (RFC 9110, 9.3.2); the
    // body is left out when the answer is written.
    let reads = matches!(method, Method::Get | Method::Head);
    let endpoint = match (found, method) {
        (Route::Health, _) if reads => Endpoint::Health,
        (Route::Metrics, _) if reads => Endpoint::Metrics,
        (Route::Coupons, _) if reads => Endpoint::ListCoupons,
        (Route::Coupons, Method::Post) => Endpoint::CreateCoupon,
        (Route::Claim, Method::Post) => Endpoint::Claim,
        // GET here reads the coupon named "claim", which is a valid name.
        (Route::Claim, _) if reads => Endpoint::GetCoupon("claim".to_owned()),
        (Route::Coupon(name), _) if reads => Endpoint::GetCoupon(name),
        (Route::CouponClaims(name), _) if reads => Endpoint::ClaimsPage(name),
        (Route::CouponClaim(name, user), Method::Delete) => Endpoint::ReleaseClaim(name, user),
        (found, _) => Endpoint::MethodNotAllowed {
            allow: found.allow(),
        },
    };
    (endpoint, label)
}

impl Endpoint {
    pub fn pool(&self) -> Pool {
        match self {
            Endpoint::ListCoupons
            | Endpoint::CreateCoupon
            | Endpoint::Claim
            | Endpoint::GetCoupon(_)
            | Endpoint::ClaimsPage(_)
            | Endpoint::ReleaseClaim(..) => Pool::Database,
            Endpoint::Health
            | Endpoint::Metrics
            | Endpoint::NotFound
            | Endpoint::MethodNotAllowed { .. } => Pool::Quick,
        }
    }
}

/// The paths the API answers, with the coupon name still percent-encoded.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    Health,
    Metrics,
    Coupons,
    Claim,
    Coupon(String),
    CouponClaims(String),
    /// A coupon name and a user id, still percent-encoded.
    CouponClaim(String, String),
}

/// Matches the path part of a request target in origin form (the query is
/// ignored; the transport has made an absolute-form target origin-form).
pub fn route(target: &str) -> Option<Route> {
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    match path {
        "/healthz" => Some(Route::Health),
        "/metrics" => Some(Route::Metrics),
        "/api/coupons" => Some(Route::Coupons),
        "/api/coupons/claim" => Some(Route::Claim),
        _ => {
            let rest = path.strip_prefix("/api/coupons/")?;
            let segments: Vec<&str> = rest.split('/').collect();
            if segments.iter().any(|s| s.is_empty()) {
                return None;
            }
            match segments.as_slice() {
                [name] => Some(Route::Coupon((*name).to_owned())),
                [name, "claims"] => Some(Route::CouponClaims((*name).to_owned())),
                [name, "claims", user] => {
                    Some(Route::CouponClaim((*name).to_owned(), (*user).to_owned()))
                }
                _ => None,
            }
        }
    }
}

impl Route {
    /// The route's name in metrics: a fixed set, never a coupon name.
    pub fn label(&self) -> &'static str {
        match self {
            Route::Health => "healthz",
            Route::Metrics => "metrics",
            Route::Coupons => "coupons",
            Route::Claim => "claim",
            Route::Coupon(_) => "coupon",
            Route::CouponClaims(_) => "coupon_claims",
            Route::CouponClaim(..) => "coupon_claim",
        }
    }

    /// The methods this path answers, as the Allow header lists them.
    fn allow(&self) -> &'static str {
        match self {
            Route::Health | Route::Metrics | Route::Coupon(_) | Route::CouponClaims(_) => {
                "GET, HEAD"
            }
            Route::Coupons => "GET, HEAD, POST",
            // GET here reads the coupon named "claim", which is a valid name.
            Route::Claim => "GET, HEAD, POST",
            Route::CouponClaim(..) => "DELETE",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_paths_match_and_the_query_is_ignored() {
        assert_eq!(route("/healthz"), Some(Route::Health));
        assert_eq!(route("/api/coupons?x=1"), Some(Route::Coupons));
        assert_eq!(route("/api/coupons/claim"), Some(Route::Claim));
        assert_eq!(
            route("/api/coupons/A%20B"),
            Some(Route::Coupon("A%20B".into()))
        );
    }

    #[test]
    fn methods_pick_the_endpoint_and_only_database_work_goes_to_the_workers() {
        let (e, label) = endpoint(&Method::Post, "/api/coupons/claim");
        assert_eq!((e.pool(), label), (Pool::Database, "claim"));
        let (e, _) = endpoint(&Method::Get, "/api/coupons/claim");
        assert_eq!(e, Endpoint::GetCoupon("claim".into()));
        let (e, _) = endpoint(&Method::Delete, "/api/coupons");
        assert_eq!(
            e,
            Endpoint::MethodNotAllowed {
                allow: "GET, HEAD, POST"
            }
        );
        assert_eq!(e.pool(), Pool::Quick);
        let (e, label) = endpoint(&Method::Get, "/nowhere");
        assert_eq!((e, label), (Endpoint::NotFound, "none"));
        assert_eq!(endpoint(&Method::Get, "/healthz").0.pool(), Pool::Quick);
        assert_eq!(endpoint(&Method::Get, "/metrics").0.pool(), Pool::Quick);
        let (e, label) = endpoint(&Method::Delete, "/api/coupons/A%20B/claims/u%2F1");
        assert_eq!(e, Endpoint::ReleaseClaim("A%20B".into(), "u%2F1".into()));
        assert_eq!((e.pool(), label), (Pool::Database, "coupon_claim"));
        let (e, _) = endpoint(&Method::Get, "/api/coupons/A/claims/u1");
        assert_eq!(e, Endpoint::MethodNotAllowed { allow: "DELETE" });
        let (e, _) = endpoint(&Method::Delete, "/api/coupons/A/claims");
        assert_eq!(e, Endpoint::MethodNotAllowed { allow: "GET, HEAD" });
    }

    #[test]
    fn head_goes_wherever_get_goes_and_allow_says_so() {
        for path in [
            "/healthz",
            "/metrics",
            "/api/coupons",
            "/api/coupons/claim",
            "/api/coupons/A/claims",
        ] {
            let (get, _) = endpoint(&Method::Get, path);
            let (head, _) = endpoint(&Method::Head, path);
            assert_eq!(get, head, "{path}");
        }
        let (e, _) = endpoint(&Method::Head, "/api/coupons/A/claims/u1");
        assert_eq!(e, Endpoint::MethodNotAllowed { allow: "DELETE" });
        let (e, _) = endpoint(&Method::Other("PUT".into()), "/api/coupons");
        assert_eq!(
            e,
            Endpoint::MethodNotAllowed {
                allow: "GET, HEAD, POST"
            }
        );
    }

    #[test]
    fn unknown_paths_do_not() {
        assert_eq!(route("/"), None);
        assert_eq!(route("/api/coupons/"), None);
        assert_eq!(route("/api/coupons/a/b"), None);
        assert_eq!(route("/api/coupons//claims"), None);
        assert_eq!(route("/api/couponsX"), None);
        assert_eq!(route("/api/coupons/a/claims/"), None);
        assert_eq!(route("/api/coupons/a/claims/u/x"), None);
        assert_eq!(route("/api/coupons/a/other/u"), None);
        assert_eq!(route("/api/coupons//claims/u"), None);
    }
}
