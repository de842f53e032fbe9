use std::io::Write;

use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};
use serde::Serialize;
use serde_json::json;

use crate::context::Context;
use crate::domain::{
    Amount, ClaimOutcome, Coupon, CouponName, IdempotencyKey, Operation, SaleWindow, UserId,
    format_instant, parse_instant,
};
use crate::store::{BatchClaim, Claimers, CreateOutcome, ReleaseOutcome, StoreError};

use crate::transport::{Request, Response, ResponseBuffer};

use super::body::{Fields, json_object};
use super::error::{ApiError, FieldProblem};
use super::query;

/// A coupon's fields as every answer shows them. The window's ends appear
/// only when they were set, so coupons without one look exactly as the spec
/// says.
#[derive(Serialize)]
struct CouponFields<'a> {
    name: &'a str,
    amount: i32,
    remaining_amount: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    starts_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_at: Option<String>,
}

impl<'a> From<&'a Coupon> for CouponFields<'a> {
    fn from(c: &'a Coupon) -> CouponFields<'a> {
        CouponFields {
            name: &c.name,
            amount: c.amount,
            remaining_amount: c.remaining_amount,
            starts_at: c.window.starts_at().map(format_instant),
            expires_at: c.window.expires_at().map(format_instant),
        }
    }
}

/// A claim's or a release's answer, in this order.
#[derive(Serialize)]
struct ClaimBody<'a> {
    user_id: &'a str,
    coupon_name: &'a str,
    remaining_amount: i32,
}

/// One claim in a page of a coupon's claims.
#[derive(Serialize)]
struct ClaimEntry<'a> {
    user_id: &'a str,
    claimed_at: String,
}

/// A page of a listing: its items under `key`, and the cursor of the next
/// page when there is one. Serialized field by field so that every item
/// keeps its own field order (a `serde_json::Value` sorts keys).
struct Page<'k, T> {
    key: &'k str,
    items: Vec<T>,
    next: Option<String>,
}

impl<T: Serialize> Serialize for Page<'_, T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry(self.key, &self.items)?;
        if let Some(next) = &self.next {
            map.serialize_entry("next", next)?;
        }
        map.end()
    }
}

#[derive(Serialize)]
struct CouponBody<'a> {
    #[serde(flatten)]
    fields: CouponFields<'a>,
    claimed_by: &'a [String],
}

/// Characters escaped in the Location header's path segment: all that
/// RFC 3986 does not allow in one, so every client reads the same path.
/// (WHATWG URL parsers, in browsers and most HTTP libraries, read a bare
/// `\` as `/`.)
const SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'/')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'[')
    .add(b'\\')
    .add(b']')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}');

/// The coupon a create request asks for.
#[derive(Debug, PartialEq, Eq)]
pub struct NewCoupon {
    pub name: CouponName,
    pub amount: Amount,
    pub window: SaleWindow,
}

/// The coupon a request asks to create, or why it cannot be one.
pub fn parse_new_coupon(request: &Request) -> Result<NewCoupon, ApiError> {
    let object = json_object(request)?;
    let fields = Fields::new(object, &["name", "amount", "starts_at", "expires_at"])?;
    let name = CouponName::parse(fields.text("name")?)
        .map_err(|e| ApiError::field("name", FieldProblem::Text(e)))?;
    let amount = Amount::parse(fields.whole_number("amount")?)
        .map_err(|e| ApiError::field("amount", FieldProblem::Amount(e)))?;
    let instant = |field: &'static str| -> Result<_, ApiError> {
        fields
            .optional_text(field)?
            .map(|raw| parse_instant(raw).ok_or(ApiError::InvalidTimestamp { field }))
            .transpose()
    };
    let window = SaleWindow::new(instant("starts_at")?, instant("expires_at")?)
        .map_err(|_| ApiError::WindowOrder)?;
    Ok(NewCoupon {
        name,
        amount,
        window,
    })
}

pub fn create_coupon(ctx: &Context, request: &Request) -> Result<Response, ApiError> {
    let key = idempotency_key(request)?;
    let NewCoupon {
        name,
        amount,
        window,
    } = parse_new_coupon(request)?;
    let created = |coupon: &Coupon| {
        let body = CouponBody {
            fields: CouponFields::from(coupon),
            claimed_by: &[],
        };
        Response::json(201, &body).with_header("Location", location(&name))
    };
    match ctx
        .store
        .create_coupon(&name, amount, window, key.as_ref())?
    {
        CreateOutcome::Created(coupon) => Ok(created(&coupon)),
        CreateOutcome::Exists => Err(ApiError::CouponExists),
        // The answer depends only on what was asked, which is what the key
        // was recorded with: the coupon as it was created.
        CreateOutcome::Replayed => {
            ctx.metrics.idempotency_key(Operation::Create, "replayed");
            let coupon = Coupon {
                name: name.to_string(),
                amount: amount.get(),
                remaining_amount: amount.get(),
                window,
            };
            Ok(replayed(created(&coupon)))
        }
        CreateOutcome::KeyMismatch => {
            ctx.metrics.idempotency_key(Operation::Create, "mismatch");
            Err(ApiError::IdempotencyKeyMismatch)
        }
    }
}

/// The Idempotency-Key the request came with, if any: one header of 1 to
/// 255 visible ASCII characters.
pub fn idempotency_key(request: &Request) -> Result<Option<IdempotencyKey>, ApiError> {
    let mut given = request.headers("Idempotency-Key");
    let Some(first) = given.next() else {
        return Ok(None);
    };
    if given.next().is_some() {
        return Err(ApiError::InvalidIdempotencyKey(
            "must be sent once".to_owned(),
        ));
    }
    IdempotencyKey::parse(first)
        .map(Some)
        .map_err(|e| ApiError::InvalidIdempotencyKey(e.to_string()))
}

/// An answer given again for a request whose idempotency key was recorded
/// with it.
fn replayed(response: Response) -> Response {
    response.with_header("Idempotent-Replayed", "true")
}

/// Where a coupon is read. A segment that is only "." or ".." would be
/// taken as a dot segment and resolved away by the client (RFC 3986,
/// 5.2.4): it is sent percent-encoded, which names the same coupon.
fn location(name: &CouponName) -> String {
    let segment = match name.as_str() {
        "." => "%2E".to_owned(),
        ".." => "%2E%2E".to_owned(),
        other => utf8_percent_encode(other, SEGMENT).to_string(),
    };
    format!("/api/coupons/{segment}")
}

/// The claim a request asks for, or why it cannot be one: the coupon, and
/// who claims with which idempotency key.
pub fn parse_claim(request: &Request) -> Result<(CouponName, BatchClaim), ApiError> {
    let key = idempotency_key(request)?;
    let (coupon, user) = parse_claim_body(request)?;
    Ok((coupon, BatchClaim { user, key }))
}

fn parse_claim_body(request: &Request) -> Result<(CouponName, UserId), ApiError> {
    let object = json_object(request)?;
    let fields = Fields::new(object, &["user_id", "coupon_name"])?;
    let user = UserId::parse(fields.text("user_id")?)
        .map_err(|e| ApiError::field("user_id", FieldProblem::Text(e)))?;
    let coupon = CouponName::parse(fields.text("coupon_name")?)
        .map_err(|e| ApiError::field("coupon_name", FieldProblem::Text(e)))?;
    Ok((coupon, user))
}

pub fn claim_response(
    coupon: &CouponName,
    user: &UserId,
    outcome: Result<ClaimOutcome, StoreError>,
) -> Result<Response, ApiError> {
    match outcome? {
        ClaimOutcome::Claimed { remaining_amount } => Ok(Response::json(
            200,
            &ClaimBody {
                user_id: user.as_str(),
                coupon_name: coupon.as_str(),
                remaining_amount,
            },
        )),
        ClaimOutcome::Replayed { remaining_amount } => Ok(replayed(Response::json(
            200,
            &ClaimBody {
                user_id: user.as_str(),
                coupon_name: coupon.as_str(),
                remaining_amount,
            },
        ))),
        ClaimOutcome::KeyMismatch => Err(ApiError::IdempotencyKeyMismatch),
        ClaimOutcome::CouponNotFound => Err(ApiError::CouponNotFound),
        ClaimOutcome::NotStarted => Err(ApiError::NotStarted),
        ClaimOutcome::Expired => Err(ApiError::Expired),
        ClaimOutcome::AlreadyClaimed => Err(ApiError::AlreadyClaimed),
        ClaimOutcome::OutOfStock => Err(ApiError::OutOfStock),
    }
}

/// DELETE /api/coupons/{name}/claims/{user_id}: gives the user's unit back
/// (the admin token was checked before). The answer is sent only after the
/// release committed, and after this process stopped answering the coupon's
/// claims from memory.
pub fn release_claim(
    ctx: &Context,
    request: &Request,
    raw_name: &str,
    raw_user: &str,
) -> Result<Response, ApiError> {
    let key = idempotency_key(request)?;
    let coupon = path_name(raw_name)?;
    let user = path_user(raw_user)?;
    let released = |remaining_amount| {
        Response::json(
            200,
            &ClaimBody {
                user_id: user.as_str(),
                coupon_name: coupon.as_str(),
                remaining_amount,
            },
        )
    };
    match ctx.claims.release(&coupon, &user, key.as_ref())? {
        ReleaseOutcome::Released { remaining_amount } => Ok(released(remaining_amount)),
        ReleaseOutcome::CouponNotFound => Err(ApiError::CouponNotFound),
        ReleaseOutcome::ClaimNotFound => Err(ApiError::ClaimNotFound),
        ReleaseOutcome::Replayed { remaining_amount } => {
            ctx.metrics.idempotency_key(Operation::Release, "replayed");
            Ok(replayed(released(remaining_amount)))
        }
        ReleaseOutcome::KeyMismatch => {
            ctx.metrics.idempotency_key(Operation::Release, "mismatch");
            Err(ApiError::IdempotencyKeyMismatch)
        }
    }
}

/// The spec's coupon body. Claimers are read a page at a time from one
/// snapshot into a buffer charged to the memory for answers; the database
/// connection goes back to the pool before the first byte is written.
pub fn get_coupon(ctx: &Context, raw_name: &str) -> Result<Response, ApiError> {
    let name = path_name(raw_name)?;
    let (coupon, claimers) = ctx
        .store
        .coupon_with_claimers(&name)?
        .ok_or(ApiError::CouponNotFound)?;
    let mut body = ctx.response_memory.buffer();
    write_coupon(&mut body, &coupon, claimers)?;
    let (bytes, held) = body.into_parts();
    Ok(Response::json_held(200, bytes, held))
}

/// Writing to a [`ResponseBuffer`] fails only when the memory for answers
/// is spent.
fn write_coupon(
    out: &mut ResponseBuffer,
    coupon: &Coupon,
    mut claimers: Claimers,
) -> Result<(), ApiError> {
    let spent = |_| ApiError::Overloaded;
    let mut head =
        serde_json::to_vec(&CouponFields::from(coupon)).map_err(|_| ApiError::Overloaded)?;
    head.pop(); // the closing brace: claimed_by follows
    out.write_all(&head).map_err(spent)?;
    out.write_all(b",\"claimed_by\":[").map_err(spent)?;
    let mut first = true;
    loop {
        let page = claimers.next_page()?;
        if page.is_empty() {
            break;
        }
        for user in page {
            if !first {
                out.write_all(b",").map_err(spent)?;
            }
            first = false;
            serde_json::to_writer(&mut *out, &user).map_err(|_| ApiError::Overloaded)?;
        }
    }
    out.write_all(b"]}").map_err(spent)?;
    Ok(claimers.finish()?)
}

/// GET /api/coupons/{name}/claims?limit=&after=
pub fn claims_page(ctx: &Context, raw_name: &str, target: &str) -> Result<Response, ApiError> {
    let name = path_name(raw_name)?;
    let limit = query::limit(target)?;
    let after = match query::param(target, "after") {
        None => 0,
        Some(raw) => query::decode_cursor('c', &raw)?
            .parse::<i64>()
            .map_err(|_| ApiError::InvalidCursor)?,
    };
    let mut rows = ctx
        .store
        .claims_page(&name, after, limit + 1)?
        .ok_or(ApiError::CouponNotFound)?;
    let more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let next = more
        .then(|| {
            rows.last()
                .map(|r| query::encode_cursor('c', &r.id.to_string()))
        })
        .flatten();
    let claims: Vec<_> = rows
        .iter()
        .map(|r| ClaimEntry {
            user_id: &r.user_id,
            claimed_at: format_instant(r.claimed_at),
        })
        .collect();
    let page = Page {
        key: "claims",
        items: claims,
        next,
    };
    Ok(Response::json(200, &page))
}

/// GET /api/coupons?limit=&after=
pub fn coupons_page(ctx: &Context, target: &str) -> Result<Response, ApiError> {
    let limit = query::limit(target)?;
    let after = match query::param(target, "after") {
        None => String::new(),
        // Our cursors only ever hold a valid coupon name.
        Some(raw) => CouponName::parse(&query::decode_cursor('n', &raw)?)
            .map_err(|_| ApiError::InvalidCursor)?
            .to_string(),
    };
    let mut coupons = ctx.store.coupons_page(&after, limit + 1)?;
    let more = coupons.len() as i64 > limit;
    coupons.truncate(limit as usize);
    let next = more
        .then(|| coupons.last().map(|c| query::encode_cursor('n', &c.name)))
        .flatten();
    let items: Vec<_> = coupons.iter().map(CouponFields::from).collect();
    let page = Page {
        key: "coupons",
        items,
        next,
    };
    Ok(Response::json(200, &page))
}

/// The Prometheus text exposition.
pub fn metrics(ctx: &Context) -> Response {
    let text = ctx.metrics.render(&ctx.store, &ctx.claims);
    Response::text(
        200,
        "text/plain; version=0.0.4; charset=utf-8",
        text.into_bytes(),
    )
}

/// 200 while the database answers; 503 `shutting_down` while the server
/// drains before stopping (without asking the database), so that a load
/// balancer stops sending here; 503 `database_unavailable` otherwise.
pub fn health(ctx: &Context) -> Response {
    if ctx.draining() {
        return ApiError::ShuttingDown.into_response();
    }
    if ctx.database_answers() {
        Response::json(200, &json!({ "status": "ok" }))
    } else {
        let down = StoreError::Unavailable("the health check got no answer".into());
        ApiError::Store(down).into_response()
    }
}

/// The coupon name from a path segment, percent-decoded and checked like
/// the name in a request body.
fn path_name(raw: &str) -> Result<CouponName, ApiError> {
    CouponName::parse(&path_segment(raw)?)
        .map_err(|e| ApiError::field("coupon_name", FieldProblem::Text(e)))
}

/// The user id from a path segment, percent-decoded and checked like the
/// user id in a claim's body.
fn path_user(raw: &str) -> Result<UserId, ApiError> {
    UserId::parse(&path_segment(raw)?)
        .map_err(|e| ApiError::field("user_id", FieldProblem::Text(e)))
}

/// A segment percent-decoded, refusing a `%` that does not start an escape
/// (two hex digits): taken as itself, `%zz` and `%25zz` would name the same
/// coupon.
fn path_segment(raw: &str) -> Result<std::borrow::Cow<'_, str>, ApiError> {
    let bytes = raw.as_bytes();
    let escapes_whole = bytes.iter().enumerate().all(|(i, &b)| {
        b != b'%'
            || bytes
                .get(i + 1..i + 3)
                .is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit))
    });
    if !escapes_whole {
        return Err(ApiError::InvalidPath);
    }
    percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| ApiError::InvalidPath)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::{Body, Method};

    fn post(path: &str, body: &str) -> Request {
        Request::new(Method::Post, path)
            .with_header("Content-Type", "application/json")
            .with_body(body.as_bytes())
    }

    fn code(err: ApiError) -> String {
        err.code()
    }

    #[test]
    fn a_claim_is_read_from_a_plain_request() {
        let request = post(
            "/api/coupons/claim",
            r#"{"user_id":"user_1","coupon_name":"PROMO"}"#,
        );
        let (coupon, claim) = parse_claim(&request).unwrap();
        assert_eq!((coupon.as_str(), claim.user.as_str()), ("PROMO", "user_1"));
        assert_eq!(claim.key, None);
        let keyed = request.clone().with_header("Idempotency-Key", "k-1");
        let (_, claim) = parse_claim(&keyed).unwrap();
        assert_eq!(claim.key.as_ref().map(IdempotencyKey::as_str), Some("k-1"));
    }

    #[test]
    fn an_idempotency_key_is_refused_unless_it_is_one_visible_ascii_word() {
        let body = r#"{"user_id":"u","coupon_name":"P"}"#;
        for (headers, expected) in [
            (&[""][..], "invalid_idempotency_key"),
            (&["a b"], "invalid_idempotency_key"),
            (&["é"], "invalid_idempotency_key"),
            (&["a", "b"], "invalid_idempotency_key"),
        ] {
            let mut request = post("/api/coupons/claim", body);
            for value in headers {
                request = request.with_header("Idempotency-Key", value);
            }
            let err = parse_claim(&request).unwrap_err();
            assert_eq!(
                (err.status(), err.code()),
                (400, expected.to_owned()),
                "{headers:?}"
            );
        }
        let long = "k".repeat(256);
        let request = post("/api/coupons/claim", body).with_header("Idempotency-Key", &long);
        assert_eq!(parse_claim(&request).unwrap_err().status(), 400);
    }

    #[test]
    fn a_replayed_claim_is_answered_as_it_was_with_the_replay_header() {
        let coupon = CouponName::parse("P").unwrap();
        let user = UserId::parse("u").unwrap();
        let first = claim_response(
            &coupon,
            &user,
            Ok(ClaimOutcome::Claimed {
                remaining_amount: 3,
            }),
        )
        .unwrap();
        let again = claim_response(
            &coupon,
            &user,
            Ok(ClaimOutcome::Replayed {
                remaining_amount: 3,
            }),
        )
        .unwrap();
        assert_eq!((again.status, &again.body), (first.status, &first.body));
        assert_eq!(again.header("Idempotent-Replayed"), Some("true"));
        assert_eq!(first.header("Idempotent-Replayed"), None);
        let other = claim_response(&coupon, &user, Ok(ClaimOutcome::KeyMismatch)).unwrap_err();
        assert_eq!(
            (other.status(), other.code()),
            (422, "idempotency_key_mismatch".into())
        );
    }

    #[test]
    fn a_bad_claim_is_refused_with_the_code_that_names_what_is_wrong() {
        for (body, expected) in [
            ("", "invalid_json"),
            ("[]", "body_not_object"),
            (r#"{"user_id":"u"}"#, "coupon_name_missing"),
            (r#"{"user_id":7,"coupon_name":"P"}"#, "user_id_not_a_string"),
            (
                r#"{"user_id":"u","coupon_name":"P","x":1}"#,
                "unknown_field",
            ),
            (
                r#"{"user_id":"u","user_id":"v","coupon_name":"P"}"#,
                "duplicate_field",
            ),
            (
                r#"{"user_id":" u","coupon_name":"P"}"#,
                "user_id_surrounding_whitespace",
            ),
        ] {
            let err = parse_claim(&post("/api/coupons/claim", body)).unwrap_err();
            assert_eq!(code(err), expected, "{body}");
        }
        let mut unfinished = post("/api/coupons/claim", "");
        unfinished.body = Body::TimedOut;
        assert_eq!(parse_claim(&unfinished).unwrap_err().status(), 408);
        let xml = Request::new(Method::Post, "/api/coupons/claim")
            .with_header("Content-Type", "application/xml")
            .with_body(b"{}");
        assert_eq!(parse_claim(&xml).unwrap_err().status(), 415);
    }

    #[test]
    fn a_new_coupon_is_read_with_its_sale_window() {
        let coupon = parse_new_coupon(&post(
            "/api/coupons",
            r#"{"name":"SUMMER","amount":5,"starts_at":"2026-11-25T12:00:00+07:00"}"#,
        ))
        .unwrap();
        assert_eq!(coupon.name.as_str(), "SUMMER");
        assert_eq!(coupon.amount.get(), 5);
        assert_eq!(
            coupon.window.starts_at().map(format_instant).as_deref(),
            Some("2026-11-25T05:00:00Z")
        );
        for (body, expected) in [
            (r#"{"name":"X","amount":-1}"#, "amount_negative"),
            (r#"{"name":"X","amount":1.5}"#, "amount_not_a_whole_number"),
            (r#"{"name":"","amount":1}"#, "name_empty"),
            (
                r#"{"name":"X","amount":1,"starts_at":"2026-01-02T00:00:00Z","expires_at":"2026-01-01T00:00:00Z"}"#,
                "expires_at_not_after_starts_at",
            ),
            (
                r#"{"name":"X","amount":1,"expires_at":"soon"}"#,
                "expires_at_not_rfc3339",
            ),
        ] {
            let err = parse_new_coupon(&post("/api/coupons", body)).unwrap_err();
            assert_eq!(code(err), expected, "{body}");
        }
    }

    #[test]
    fn each_claim_outcome_has_its_answer() {
        let coupon = CouponName::parse("P").unwrap();
        let user = UserId::parse("u").unwrap();
        let answer = |outcome| match claim_response(&coupon, &user, Ok(outcome)) {
            Ok(response) => (response.status, String::from_utf8(response.body).unwrap()),
            Err(err) => (err.status(), err.code()),
        };
        assert_eq!(
            answer(ClaimOutcome::Claimed {
                remaining_amount: 4
            }),
            (
                200,
                r#"{"user_id":"u","coupon_name":"P","remaining_amount":4}"#.to_owned()
            )
        );
        assert_eq!(
            answer(ClaimOutcome::AlreadyClaimed),
            (409, "already_claimed".into())
        );
        assert_eq!(
            answer(ClaimOutcome::OutOfStock),
            (400, "out_of_stock".into())
        );
        assert_eq!(
            answer(ClaimOutcome::CouponNotFound),
            (404, "coupon_not_found".into())
        );
        assert_eq!(
            answer(ClaimOutcome::NotStarted),
            (403, "not_started".into())
        );
        assert_eq!(answer(ClaimOutcome::Expired), (410, "expired".into()));
        let busy = claim_response(&coupon, &user, Err(StoreError::Busy { attempts: 21 }));
        assert_eq!(busy.unwrap_err().status(), 503);
    }

    #[test]
    fn locations_name_the_coupon_and_never_a_dot_segment() {
        let at = |name: &str| location(&CouponName::parse(name).unwrap());
        assert_eq!(at("PROMO"), "/api/coupons/PROMO");
        assert_eq!(at("A B/C"), "/api/coupons/A%20B%2FC");
        assert_eq!(at("."), "/api/coupons/%2E");
        assert_eq!(at(".."), "/api/coupons/%2E%2E");
        assert_eq!(at("..."), "/api/coupons/...");
    }
}
