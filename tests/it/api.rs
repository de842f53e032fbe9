//! The spec's API, response by response, against the real server and a real
//! PostgreSQL.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;

use crate::support::answer::{Answer, answers, answers_to_head, statuses};
use crate::support::http::{raw, request_with};
use crate::support::{TestApp, serial};

#[test]
fn create_returns_201_with_the_coupon_and_its_location() {
    let _turn = serial::turn!();
    let app = TestApp::spawn();
    let answer = app.create("PROMO_SUPER", 100);
    assert_eq!(answer.status, 201);
    assert_eq!(
        answer.body,
        json!({"name": "PROMO_SUPER", "amount": 100, "remaining_amount": 100, "claimed_by": []})
    );
    assert_eq!(answer.header("Location"), Some("/api/coupons/PROMO_SUPER"));
    assert_eq!(answer.header("Content-Type"), Some("application/json"));
}

#[test]
fn create_accepts_zero_and_the_largest_amount() {
    let _turn = serial::turn!();
    let app = TestApp::spawn();
    assert_eq!(app.create("NONE", 0).status, 201);
    assert_eq!(app.create("MAX", i64::from(i32::MAX)).status, 201);
    assert_eq!(
        app.get("/api/coupons/MAX").body["remaining_amount"],
        i32::MAX
    );
}

#[test]
fn create_returns_409_when_the_name_is_taken_and_keeps_the_first() {
    let _turn = serial::turn!();
    let app = TestApp::spawn();
    app.create("TWICE", 5);
    app.create("TWICE", 7).assert_error(409, "coupon_exists");
    assert_eq!(app.get("/api/coupons/TWICE").body["amount"], 5);
}

#[test]
fn create_percent_encodes_the_location_of_an_unusual_name() {
    let _turn = serial::turn!();
    let app = TestApp::spawn();
    let answer = app.create("50% off/now", 1);
    assert_eq!(
        answer.header("Location"),
        Some("/api/coupons/50%25%20off%2Fnow")
    );
    let read = app.get(answer.header("Location").unwrap());
    assert_eq!(read.status, 200);
    assert_eq!(read.body["name"], "50% off/now");
}

#[test]
fn create_refuses_each_invalid_field_with_a_code_naming_it() {
    let _turn = serial::turn!();
    let app = TestApp::spawn();
    let long = "x".repeat(129);
    let cases = [
        (json!({"amount": 1}), "name_missing"),
        (json!({"name": "A"}), "amount_missing"),
        (json!({"name": 5, "amount": 1}), "name_not_a_string"),
        (json!({"name": null, "amount": 1}), "name_not_a_string"),
        (json!({"name": "", "amount": 1}), "name_empty"),
        (
            json!({"name": " A", "amount": 1}),
            "name_surrounding_whitespace",
        ),
        (
            json!({"name": "A\n", "amount": 1}),
            "name_surrounding_whitespace",
        ),
        (
            json!({"name": "A\u{7}B", "amount": 1}),
            "name_control_character",
        ),
        (json!({"name": long, "amount": 1}), "name_too_long"),
        (
            json!({"name": "A", "amount": "5"}),
            "amount_not_a_whole_number",
        ),
        (
            json!({"name": "A", "amount": 1.5}),
            "amount_not_a_whole_number",
        ),
        (
            json!({"name": "A", "amount": 2.0}),
            "amount_not_a_whole_number",
        ),
        (
            json!({"name": "A", "amount": null}),
            "amount_not_a_whole_number",
        ),
        (
            json!({"name": "A", "amount": true}),
            "amount_not_a_whole_number",
        ),
        (json!({"name": "A", "amount": -1}), "amount_negative"),
        (
            json!({"name": "A", "amount": 2147483648_i64}),
            "amount_too_large",
        ),
        (json!({"name": "A", "amount": 1e30}), "amount_too_large"),
        (
            json!({"name": "A", "amount": 1, "extra": 1}),
            "unknown_field",
        ),
    ];
    for (body, code) in cases {
        app.post_json("/api/coupons", &body.to_string())
            .assert_error(400, code);
    }
    assert_eq!(app.db.count("SELECT count(*) FROM coupons"), 0);
}

#[test]
fn post_bodies_that_are_not_one_json_object_get_400() {
    let _turn = serial::turn!();
    let app = TestApp::spawn();
    for (body, code) in [
        ("", "invalid_json"),
        ("{", "invalid_json"),
        ("{\"name\": \"A\", \"amount\": 1", "invalid_json"),
        ("nonsense", "invalid_json"),
        ("{\"name\": \"A\", \"amount\": 1} trailing", "invalid_json"),
        ("[1, 2]", "body_not_object"),
        ("\"text\"", "body_not_object"),
        ("null", "body_not_object"),
    ] {
        app.post_json("/api/coupons", body).assert_error(400, code);
        app.post_json("/api/coupons/claim", body)
            .assert_error(400, code);
    }
}

#[test]
fn post_with_a_type_not_read_as_json_gets_415() {
    let _turn = serial::turn!();
    let app = TestApp::spawn();
    let body = r#"{"name":"A","amount":1}"#;
    for content_type in [
        "multipart/form-data; boundary=x",
        "application/xml",
        "application/jsonx",
    ] {
        request_with(
            "POST",
            &app.url("/api/coupons"),
            Some((content_type, body)),
            &[],
        )
        .assert_error(415, "unsupported_media_type");
    }
    // No type, `curl -d`'s form type, text/plain and JSON with a charset are
    // read as JSON: an empty body is not JSON, the others create.
    request_with("POST", &app.url("/api/coupons/claim"), None, &[])
        .assert_error(400, "invalid_json");
    for (i, content_type) in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/json; charset=utf-8",
    ]
    .into_iter()
    .enumerate()
    {
        let body = json!({"name": format!("A{i}"), "amount": 1}).to_string();
        let created = request_with(
            "POST",
            &app.url("/api/coupons"),
            Some((content_type, &body)),
            &[],
        );
        assert_eq!(created.status, 201, "{content_type}: {created:?}");
    }
}

#[test]
fn a_body_over_16_kib_gets_413_and_creates_nothing() {
    let _turn = serial::turn!();
    let app = TestApp::spawn();
    let body = json!({"name": "A", "amount": 1, "pad": "x".repeat(17 * 1024)}).to_string();
    app.post_json("/api/coupons", &body)
        .assert_error(413, "payload_too_large");
    assert_eq!(app.db.count("SELECT count(*) FROM coupons"), 0);
    assert_eq!(app.get("/healthz").status, 200);
}

#[test]
fn a_huge_declared_body_gets_413_and_the_server_keeps_serving() {
    let _turn = serial::turn!();
    let app = TestApp::spawn();
    let head = "POST /api/coupons HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
                Content-Length: 999999999999\r\n\r\n{\"name\":\"A\"";
    let got = raw(app.addr(), head.as_bytes(), Duration::from_secs(2));
    assert_eq!(statuses(&got), vec![413], "{got}");
    // Its length is said, so the client needs no end of the connection (which
    // never comes: tiny_http defect 13), and its body is the JSON error.
    let answers = answers(got.as_bytes()).expect("whole answers");
    assert_eq!(answers.len(), 1, "{got}");
    assert!(answers[0].header("Content-Length").is_some(), "{got}");
    answers[0].assert_error(413, "payload_too_large");
    assert_eq!(app.get("/healthz").status, 200);
    assert_eq!(app.db.count("SELECT count(*) FROM coupons"), 0);
}

#[test]
fn a_chunked_body_is_read_like_any_other() {
    let _turn = serial::turn!();
    let app = TestApp::spawn();
    let body = r#"{"name":"CHUNKED","amount":3}"#;
    let request = format!(
        "POST /api/coupons HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
        body.len()
    );
    let got = raw(app.addr(), request.as_bytes(), Duration::from_secs(5));
    assert_eq!(statuses(&got), vec![201], "{got}");
    assert_eq!(app.get("/api/coupons/CHUNKED").body["amount"], 3);
}

#[test]
fn claim_returns_200_with_the_claim_and_the_stock_left() {
    let _turn = serial::turn!();
    let app = TestApp::spawn();
    app.create("PROMO", 2);
    let answer = app.claim("user_12345", "PROMO");
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.body,
        json!({"user_id": "user_12345", "coupon_name": "PROMO", "remaining_amount": 1})
    );
}

#[test]
fn claim_returns_409_when_the_user_already_holds_the_coupon() {
    let _turn = serial::turn!();
    let app = TestApp::spawn();
    app.create("PROMO", 5);
    assert_eq!(app.claim("u1", "PROMO").status, 200);
    app.claim("u1", "PROMO")
        .assert_error(409, "already_claimed");
    assert_eq!(app.get("/api/coupons/PROMO").body["remaining_amount"], 4);
}

#[test]
fn claim_returns_409_not_400_for_a_holder_of_a_sold_out_coupon() {
    let _turn = serial::turn!();
    let app = TestApp::spawn();
    app.create("ONE", 1);
    assert_eq!(app.claim("u1", "ONE").status, 200);
    app.claim("u1", "ONE").assert_error(409, "already_claimed");
    app.claim("u2", "ONE").assert_error(400, "out_of_stock");
}

#[test]
fn claim_returns_400_out_of_stock_for_a_coupon_opened_with_zero() {
    let _turn = serial::turn!();
    let app = TestApp::spawn();
    app.create("ZERO", 0);
    app.claim("u1", "ZERO").assert_error(400, "out_of_stock");
    assert_eq!(app.db.count("SELECT count(*) FROM claims"), 0);
}

#[test]
fn claim_returns_404_for_an_unknown_coupon() {
    let _turn = serial::turn!();
    let app = TestApp::spawn();
    app.claim("u1", "NOPE")
        .assert_error(404, "coupon_not_found");
}

#[test]
fn one_user_may_claim_several_different_coupons() {
    let _turn = serial::turn!();
    let app = TestApp::spawn();
    app.create("A", 1);
    app.create("B", 1);
    assert_eq!(app.claim("u1", "A").status, 200);
    assert_eq!(app.claim("u1", "B").status, 200);
}

#[test]
fn claim_refuses_each_invalid_field_with_a_code_naming_it() {
    let _turn = serial::turn!();
    let app = TestApp::spawn();
    app.create("PROMO", 5);
    let cases = [
        (json!({"coupon_name": "PROMO"}), "user_id_missing"),
        (json!({"user_id": "u"}), "coupon_name_missing"),
        (
            json!({"user_id": 12345, "coupon_name": "PROMO"}),
            "user_id_not_a_string",
        ),
        (
            json!({"user_id": "u", "coupon_name": ["PROMO"]}),
            "coupon_name_not_a_string",
        ),
        (
            json!({"user_id": "", "coupon_name": "PROMO"}),
            "user_id_empty",
        ),
        (
            json!({"user_id": "u ", "coupon_name": "PROMO"}),
            "user_id_surrounding_whitespace",
        ),
        (
            json!({"user_id": "u\u{0}v", "coupon_name": "PROMO"}),
            "user_id_control_character",
        ),
        (
            json!({"user_id": "u".repeat(129), "coupon_name": "PROMO"}),
            "user_id_too_long",
        ),
        (
            json!({"user_id": "u", "coupon_name": " PROMO"}),
            "coupon_name_surrounding_whitespace",
        ),
        (
            json!({"user_id": "u", "coupon_name": "PROMO", "x": 1}),
            "unknown_field",
        ),
    ];
    for (body, code) in cases {
        app.post_json("/api/coupons/claim", &body.to_string())
            .assert_error(400, code);
    }
    assert_eq!(app.db.count("SELECT count(*) FROM claims"), 0);
    assert_eq!(app.get("/api/coupons/PROMO").body["remaining_amount"], 5);
}

#[test]
fn get_lists_claimers_in_claim_order() {
    let _turn = serial::turn!();
    let app = TestApp::spawn();
    app.create("ORDER", 5);
    for user in ["zed", "amy", "mid"] {
        assert_eq!(app.claim(user, "ORDER").status, 200);
    }
    assert_eq!(
        app.get("/api/coupons/ORDER").body,
        json!({"name": "ORDER", "amount": 5, "remaining_amount": 2, "claimed_by": ["zed", "amy", "mid"]})
    );
}

#[test]
fn get_returns_an_empty_list_never_null_when_nobody_claimed() {
    let _turn = serial::turn!();
    let app = TestApp::spawn();
    app.create("EMPTY", 3);
    assert_eq!(app.get("/api/coupons/EMPTY").body["claimed_by"], json!([]));
}

#[test]
fn get_returns_404_for_an_unknown_coupon() {
    let _turn = serial::turn!();
    let app = TestApp::spawn();
    app.get("/api/coupons/NOPE")
        .assert_error(404, "coupon_not_found");
}

#[test]
fn get_percent_decodes_the_name_in_the_path() {
    let _turn = serial::turn!();
    let app = TestApp::spawn();
    app.create("SUMMER SALE é", 1);
    let answer = app.get("/api/coupons/SUMMER%20SALE%20%C3%A9");
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body["name"], "SUMMER SALE é");
}

#[test]
fn get_refuses_a_path_name_that_is_not_utf8_or_breaks_the_rules() {
    let _turn = serial::turn!();
    let app = TestApp::spawn();
    app.get("/api/coupons/%FF%FE")
        .assert_error(400, "invalid_path");
    app.get("/api/coupons/%20A")
        .assert_error(400, "coupon_name_surrounding_whitespace");
}

#[test]
fn a_coupon_named_claim_can_be_read_but_not_posted_to() {
    let _turn = serial::turn!();
    let app = TestApp::spawn();
    app.create("claim", 1);
    assert_eq!(app.get("/api/coupons/claim").body["name"], "claim");
}

#[test]
fn sql_looking_names_are_stored_and_returned_literally() {
    let _turn = serial::turn!();
    let app = TestApp::spawn();
    let name = "x'); DROP TABLE coupons; --";
    assert_eq!(app.create(name, 2).status, 201);
    let user = "u' OR '1'='1";
    assert_eq!(app.claim(user, name).status, 200);
    let encoded = "x%27%29%3B%20DROP%20TABLE%20coupons%3B%20--";
    let answer = app.get(&format!("/api/coupons/{encoded}"));
    assert_eq!(answer.body["name"], name);
    assert_eq!(answer.body["claimed_by"], json!([user]));
}

#[test]
fn quotes_and_backslashes_in_a_claim_reach_the_database_as_they_were_sent() {
    let _turn = serial::turn!();
    let app = TestApp::spawn();
    // One claim at a time goes to the database as literals in one message:
    // every character must arrive as sent, and none may end a literal.
    let name = r"c\'; SELECT 1; --\";
    assert_eq!(app.create(name, 2).status, 201);
    let users = [r"u\", r"u\'", "u'", r"\'); DELETE FROM claims; --"];
    assert_eq!(app.claim(users[0], name).status, 200);
    assert_eq!(app.claim(users[0], name).status, 409);
    assert_eq!(app.claim(users[1], name).status, 200);
    // Sold out: a holder is told 409, anyone else 400.
    assert_eq!(app.claim(users[1], name).status, 409);
    assert_eq!(app.claim(users[2], name).status, 400);
    assert_eq!(app.claim(users[3], name).status, 400);
    let holders: Vec<String> = app
        .db
        .client()
        .query(
            "SELECT user_id FROM claims WHERE coupon_name = $1 ORDER BY id",
            &[&name],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(holders, [users[0], users[1]]);
    app.db.assert_invariant();
}

#[test]
fn wrong_methods_get_405_with_an_allow_header() {
    let _turn = serial::turn!();
    let app = TestApp::spawn();
    for (method, path, allow) in [
        ("PUT", "/api/coupons", "GET, HEAD, POST"),
        ("DELETE", "/api/coupons", "GET, HEAD, POST"),
        ("PUT", "/api/coupons/claim", "GET, HEAD, POST"),
        ("POST", "/api/coupons/PROMO", "GET, HEAD"),
        ("DELETE", "/api/coupons/PROMO", "GET, HEAD"),
        ("POST", "/healthz", "GET, HEAD"),
    ] {
        let answer = request_with(method, &app.url(path), None, &[]);
        answer.assert_error(405, "method_not_allowed");
        assert_eq!(answer.header("Allow"), Some(allow), "{method} {path}");
    }
}

#[test]
fn unknown_paths_get_404_not_found() {
    let _turn = serial::turn!();
    let app = TestApp::spawn();
    for path in [
        "/",
        "/api",
        "/api/coupons/",
        "/api/coupons/a/b",
        "/api/couponsX",
    ] {
        app.get(path).assert_error(404, "not_found");
    }
}

#[test]
fn healthz_answers_200_when_the_database_answers() {
    let _turn = serial::turn!();
    let app = TestApp::spawn();
    let answer = app.get("/healthz");
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body, json!({"status": "ok"}));
}

#[test]
fn healthz_answers_503_when_the_database_is_gone() {
    let _turn = serial::turn!();
    let app = TestApp::spawn();
    assert_eq!(app.get("/healthz").status, 200);
    // Dropping the database under the server makes every new connection fail.
    app.db.drop_now().unwrap();
    app.get("/healthz")
        .assert_error(503, "database_unavailable");
    app.claim("u1", "ANY")
        .assert_error(503, "database_unavailable");
}

#[test]
fn the_server_applies_its_schema_to_an_empty_database_and_again_harmlessly() {
    let _turn = serial::turn!();
    let app = TestApp::spawn();
    let mut client = app.db.client();
    client
        .batch_execute(flash_coupons::store::SCHEMA_SQL)
        .unwrap();
    client
        .batch_execute(flash_coupons::store::SCHEMA_SQL)
        .unwrap();
    let tables = app.db.count(
        "SELECT count(*) FROM information_schema.tables WHERE table_name IN ('coupons', 'claims')",
    );
    assert_eq!(tables, 2);
}

#[test]
fn the_database_refuses_a_second_claim_even_without_the_service() {
    let _turn = serial::turn!();
    let app = TestApp::spawn();
    app.create("RAW", 5);
    let mut client = app.db.client();
    client
        .execute(
            "INSERT INTO claims (user_id, coupon_name) VALUES ('u', 'RAW')",
            &[],
        )
        .unwrap();
    let err = client
        .execute(
            "INSERT INTO claims (user_id, coupon_name) VALUES ('u', 'RAW')",
            &[],
        )
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(&postgres::error::SqlState::UNIQUE_VIOLATION)
    );
}

#[test]
fn pipelined_and_http_1_0_requests_are_each_answered() {
    let _turn = serial::turn!();
    let app = TestApp::spawn();
    let two = "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\nGET /nope HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    assert_eq!(
        statuses(&raw(app.addr(), two.as_bytes(), Duration::from_secs(5))),
        vec![200, 404]
    );
    let old = "GET /healthz HTTP/1.0\r\n\r\n";
    assert_eq!(
        statuses(&raw(app.addr(), old.as_bytes(), Duration::from_secs(5))),
        vec![200]
    );
}

#[test]
fn with_an_admin_token_creating_needs_it_and_claims_stay_open() {
    let _turn = serial::turn!();
    let app = TestApp::spawn_with(|c| c.admin_token = Some("s3cret-token".into()));
    let body = r#"{"name":"GUARDED","amount":2}"#;
    let url = app.url("/api/coupons");
    let json = Some(("application/json", body));
    request_with("POST", &url, json, &[]).assert_error(401, "unauthorized");
    request_with(
        "POST",
        &url,
        json,
        &[("Authorization", "Basic s3cret-token")],
    )
    .assert_error(401, "unauthorized");
    request_with("POST", &url, json, &[("Authorization", "Bearer wrong")])
        .assert_error(403, "forbidden");
    request_with(
        "POST",
        &url,
        json,
        &[("Authorization", "Bearer s3cret-token-longer")],
    )
    .assert_error(403, "forbidden");
    assert_eq!(app.db.count("SELECT count(*) FROM coupons"), 0);
    let created = request_with(
        "POST",
        &url,
        json,
        &[("Authorization", "Bearer s3cret-token")],
    );
    assert_eq!(created.status, 201);
    assert_eq!(app.claim("u1", "GUARDED").status, 200);
    assert_eq!(app.get("/api/coupons/GUARDED").status, 200);
}

/// The one answer to `text` (a request that closes its connection),
/// received to the close; one to HEAD has no body.
fn only_answer(addr: SocketAddr, text: &str) -> Answer {
    let got = raw(addr, text.as_bytes(), Duration::from_secs(10));
    let to_head = text.starts_with("HEAD ");
    let mut answers = if to_head {
        answers_to_head(got.as_bytes())
    } else {
        answers(got.as_bytes())
    }
    .unwrap_or_else(|why| panic!("{why}"));
    assert_eq!(answers.len(), 1, "{got:?}");
    answers.remove(0)
}

#[test]
fn head_answers_every_get_route_as_get_does_without_a_body() {
    let _turn = serial::turn!();
    let app = TestApp::spawn();
    app.create("HEADED", 3);
    assert_eq!(app.claim("u1", "HEADED").status, 200);
    let ask = |method: &str, path: &str| {
        let text = format!("{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        only_answer(app.addr(), &text)
    };
    for path in [
        "/healthz",
        "/api/coupons",
        "/api/coupons/HEADED",
        "/api/coupons/HEADED/claims",
        "/api/coupons/NOPE",
        "/api/coupons/claim",
    ] {
        let get = ask("GET", path);
        // Read as HEAD's answer: any byte after its head is an answer too
        // many.
        let head = ask("HEAD", path);
        assert_eq!(head.status_line, get.status_line, "{path}");
        for name in ["content-type", "content-length"] {
            assert_eq!(head.header(name), get.header(name), "{path}: {name}");
        }
        assert_eq!(
            get.header("content-length"),
            Some(get.text.len().to_string().as_str()),
            "{path}"
        );
    }
    assert_eq!(ask("HEAD", "/metrics").status, 200);
}

#[test]
fn a_request_target_in_absolute_form_is_routed_by_its_path() {
    let _turn = serial::turn!();
    let app = TestApp::spawn();
    let addr = app.addr();
    let send = |method: &str, target: &str, body: &str| {
        let text = format!(
            "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        only_answer(addr, &text)
    };
    let created = send(
        "POST",
        &format!("http://{addr}/api/coupons"),
        r#"{"name":"ABSOLUTE","amount":2}"#,
    );
    assert_eq!(created.status, 201, "{created:?}");
    let claimed = send(
        "POST",
        &format!("HTTP://{addr}/api/coupons/claim"),
        r#"{"user_id":"u1","coupon_name":"ABSOLUTE"}"#,
    );
    assert_eq!(claimed.status, 200, "{claimed:?}");
    let listed = send("GET", &format!("http://{addr}/api/coupons?limit=1"), "");
    assert_eq!(listed.status, 200, "{listed:?}");
    let listing: serde_json::Value = serde_json::from_str(&listed.text).unwrap();
    assert_eq!(listing["coupons"][0]["name"], "ABSOLUTE");
    app.db.assert_invariant();
}

/// Every character RFC 3986 leaves out of a path segment is encoded, so a
/// WHATWG parser (ureq's here, a browser's) reads the path that was meant:
/// it takes a bare `\` for `/`.
#[test]
fn the_location_of_a_name_with_characters_a_path_may_not_hold_leads_back_to_it() {
    let _turn = serial::turn!();
    let app = TestApp::spawn();
    let name = r"a\b|c^d[e]";
    let created = app.create(name, 1);
    assert_eq!(created.status, 201, "{created:?}");
    assert_eq!(
        created.header("Location"),
        Some("/api/coupons/a%5Cb%7Cc%5Ed%5Be%5D")
    );
    let read = app.get(created.header("Location").unwrap());
    assert_eq!(read.status, 200, "{read:?}");
    assert_eq!(read.body["name"], name);
}

#[test]
fn the_location_of_a_coupon_named_dot_or_dot_dot_leads_back_to_it() {
    let _turn = serial::turn!();
    let app = TestApp::spawn();
    for (name, location) in [(".", "/api/coupons/%2E"), ("..", "/api/coupons/%2E%2E")] {
        let created = app.create(name, 1);
        assert_eq!(created.status, 201, "{created:?}");
        assert_eq!(created.header("Location"), Some(location));
        // Sent as it is: WHATWG URL parsers (ureq's, browsers') take %2E as
        // a dot segment too, which RFC 3986 does not.
        let text = format!("GET {location} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        let read = only_answer(app.addr(), &text);
        assert_eq!(read.status, 200, "{read:?}");
        let read: serde_json::Value = serde_json::from_str(&read.text).unwrap();
        assert_eq!(read["name"], name);
    }
    // Names that only contain dots beside other characters stay as they are.
    assert_eq!(
        app.create("...", 1).header("Location"),
        Some("/api/coupons/...")
    );
}
