//! The admin token that guards coupon creation (when set) and releases
//! (always).

use constant_time_eq::constant_time_eq;

use crate::transport::Request;

use super::error::ApiError;

/// With a token configured (ADMIN_TOKEN): no credentials is 401, a wrong
/// token is 403. The comparison takes the same time wherever the first
/// difference is. Without one, anyone may.
pub fn require_admin(token: Option<&str>, request: &Request) -> Result<(), ApiError> {
    match token {
        None => Ok(()),
        Some(expected) => check(expected, request),
    }
}

/// The same, for what must never be open to anyone (giving units back):
/// without a token configured every such request is 403.
pub fn require_admin_always(token: Option<&str>, request: &Request) -> Result<(), ApiError> {
    match token {
        None => Err(ApiError::NoAdminToken),
        Some(expected) => check(expected, request),
    }
}

fn check(expected: &str, request: &Request) -> Result<(), ApiError> {
    let given = request
        .header("Authorization")
        .ok_or(ApiError::Unauthorized)?;
    let (scheme, token) = given.trim().split_once(' ').ok_or(ApiError::Unauthorized)?;
    if !scheme.eq_ignore_ascii_case("Bearer") {
        return Err(ApiError::Unauthorized);
    }
    if constant_time_eq(token.trim().as_bytes(), expected.as_bytes()) {
        Ok(())
    } else {
        Err(ApiError::Forbidden)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::Method;

    fn with_authorization(value: &str) -> Request {
        Request::new(Method::Post, "/api/coupons").with_header("Authorization", value)
    }

    #[test]
    fn without_a_configured_token_creating_is_open_and_releasing_is_closed() {
        let bare = Request::new(Method::Post, "/api/coupons");
        assert!(require_admin(None, &bare).is_ok());
        assert!(matches!(
            require_admin_always(None, &with_authorization("Bearer x")),
            Err(ApiError::NoAdminToken)
        ));
    }

    #[test]
    fn a_missing_or_malformed_credential_is_401_and_a_wrong_token_403() {
        let token = Some("s3cret");
        let bare = Request::new(Method::Post, "/api/coupons");
        assert!(matches!(
            require_admin(token, &bare),
            Err(ApiError::Unauthorized)
        ));
        for malformed in ["s3cret", "Basic s3cret", "Bearer"] {
            assert!(
                matches!(
                    require_admin(token, &with_authorization(malformed)),
                    Err(ApiError::Unauthorized)
                ),
                "{malformed}"
            );
        }
        assert!(matches!(
            require_admin_always(token, &with_authorization("Bearer s3cre")),
            Err(ApiError::Forbidden)
        ));
    }

    #[test]
    fn the_right_token_passes_in_any_case_of_the_scheme() {
        let token = Some("s3cret");
        for good in ["Bearer s3cret", "bearer s3cret", "  BEARER  s3cret  "] {
            assert!(
                require_admin_always(token, &with_authorization(good)).is_ok(),
                "{good}"
            );
        }
    }
}
