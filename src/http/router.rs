/// The paths the API answers, with the coupon name still percent-encoded.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    Health,
    Metrics,
    Coupons,
    Claim,
    Coupon(String),
    CouponClaims(String),
}

/// Matches the path part of a request target (the query is ignored).
pub fn route(target: &str) -> Option<Route> {
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    match path {
        "/healthz" => Some(Route::Health),
        "/metrics" => Some(Route::Metrics),
        "/api/coupons" => Some(Route::Coupons),
        "/api/coupons/claim" => Some(Route::Claim),
        _ => {
            let rest = path.strip_prefix("/api/coupons/")?;
            let (name, claims) = match rest.strip_suffix("/claims") {
                Some(name) => (name, true),
                None => (rest, false),
            };
            if name.is_empty() || name.contains('/') {
                return None;
            }
            Some(if claims {
                Route::CouponClaims(name.to_owned())
            } else {
                Route::Coupon(name.to_owned())
            })
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
        }
    }

    /// The methods this path answers, as the Allow header lists them.
    pub fn allow(&self) -> &'static str {
        match self {
            Route::Health | Route::Metrics | Route::Coupon(_) | Route::CouponClaims(_) => "GET",
            Route::Coupons => "GET, POST",
            // GET here reads the coupon named "claim", which is a valid name.
            Route::Claim => "GET, POST",
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
    fn unknown_paths_do_not() {
        assert_eq!(route("/"), None);
        assert_eq!(route("/api/coupons/"), None);
        assert_eq!(route("/api/coupons/a/b"), None);
        assert_eq!(route("/api/coupons//claims"), None);
        assert_eq!(route("/api/couponsX"), None);
    }
}
