//! The API answered from plain request values, with no socket and no
//! transport: the service's handlers against a real database.

use std::sync::Arc;
use std::sync::mpsc::channel;
use std::time::{Duration, Instant};

use flash_coupons::context::Context;
use flash_coupons::http::{self, Job};
use flash_coupons::store::Store;
use flash_coupons::transport::{Method, Request, Response};

use crate::support::{self, TestDb, serial};

/// The service's handlers on their own database.
struct Handlers {
    ctx: Arc<Context>,
    _db: TestDb,
}

impl Handlers {
    fn new() -> Handlers {
        let db = TestDb::new();
        let config = support::test_config(&db.url);
        let store = Store::open(&config.store).expect("opening the store");
        Handlers {
            ctx: Arc::new(Context::new(store, &config)),
            _db: db,
        }
    }

    /// Serves `request` as a worker would, and waits for its answer.
    fn answer(&self, request: Request) -> Response {
        let (sent, answered) = channel();
        let (endpoint, label) = http::endpoint(&request.method, &request.target);
        http::serve(
            &self.ctx,
            Job {
                request,
                respond: Box::new(move |response| {
                    let _ = sent.send(response);
                }),
                endpoint,
                label,
                started: Instant::now(),
                claim: None,
            },
        );
        answered
            .recv_timeout(Duration::from_secs(30))
            .expect("an answer")
    }
}

fn json(method: Method, target: &str, body: &str) -> Request {
    Request::new(method, target)
        .with_header("Content-Type", "application/json")
        .with_body(body.as_bytes())
}

fn body(response: &Response) -> serde_json::Value {
    serde_json::from_slice(&response.body).expect("a JSON body")
}

#[test]
fn a_coupon_is_created_claimed_and_read_from_request_values_alone() {
    let _turn = serial::turn!();
    let handlers = Handlers::new();
    let created = handlers.answer(json(
        Method::Post,
        "/api/coupons",
        r#"{"name":"PLAIN","amount":2}"#,
    ));
    assert_eq!(created.status, 201);
    assert_eq!(created.header("Location"), Some("/api/coupons/PLAIN"));
    let claim = r#"{"user_id":"u1","coupon_name":"PLAIN"}"#;
    let claimed = handlers.answer(json(Method::Post, "/api/coupons/claim", claim));
    assert_eq!(claimed.status, 200);
    assert_eq!(body(&claimed)["remaining_amount"], 1);
    let again = handlers.answer(json(Method::Post, "/api/coupons/claim", claim));
    assert_eq!(
        (again.status, body(&again)["error"]["code"].clone()),
        (409, "already_claimed".into())
    );
    let read = handlers.answer(Request::new(Method::Get, "/api/coupons/PLAIN"));
    assert_eq!(read.status, 200);
    assert_eq!(body(&read)["claimed_by"], serde_json::json!(["u1"]));
}

#[test]
fn errors_are_answered_from_request_values_alone() {
    let _turn = serial::turn!();
    let handlers = Handlers::new();
    let missing = handlers.answer(Request::new(Method::Get, "/api/coupons/NOPE"));
    assert_eq!(missing.status, 404);
    let wrong = handlers.answer(Request::new(Method::Other("PUT".into()), "/healthz"));
    assert_eq!(
        (wrong.status, wrong.header("Allow")),
        (405, Some("GET, HEAD"))
    );
    let release = handlers.answer(Request::new(Method::Delete, "/api/coupons/A/claims/u"));
    assert_eq!(
        release.status, 403,
        "no admin token configured: releases are refused"
    );
}
