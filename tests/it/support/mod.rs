//! Test support: a fresh database per test and the real server on port 0.

pub mod answer;
pub mod client;
pub mod cluster;
pub mod crowd;
pub mod database;
pub mod edge;
pub mod http;
pub mod process;
pub mod serial;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use flash_coupons::Server;
use flash_coupons::config::{Config, parse_database_url};

pub use answer::Answer;

/// A database of its own for one test, dropped when the test ends.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    pub fn new() -> TestDb {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let stamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros());
        let name = format!(
            "fc_test_{}_{}_{}",
            std::process::id(),
            stamp % 1_000_000_000,
            SEQ.fetch_add(1, Ordering::SeqCst)
        );
        admin()
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .expect("creating a test database");
        TestDb {
            url: database::url_for(&name),
            name,
        }
    }

    pub fn client(&self) -> postgres::Client {
        postgres::Client::connect(&self.url, postgres::NoTls)
            .expect("connecting to the test database")
    }

    /// Every coupon's amount equals its remaining stock plus its claims.
    pub fn assert_invariant(&self) {
        assert_invariant(&mut self.client());
    }

    pub fn count(&self, sql: &str) -> i64 {
        self.client().query_one(sql, &[]).expect(sql).get(0)
    }
}

impl TestDb {
    /// Drops the database now, under whatever is connected to it.
    pub fn drop_now(&self) -> Result<(), postgres::Error> {
        admin().batch_execute(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ))
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let _ = self.drop_now();
    }
}

fn admin() -> postgres::Client {
    postgres::Client::connect(&database::url_for("postgres"), postgres::NoTls)
        .expect("connecting to the test PostgreSQL server")
}

/// The real server, started in this process on a free port, with its own
/// database.
pub struct TestApp {
    pub server: Server,
    pub db: TestDb,
    pub base: String,
}

impl TestApp {
    pub fn spawn() -> TestApp {
        TestApp::spawn_with(|_| {})
    }

    pub fn spawn_with(adjust: impl FnOnce(&mut Config)) -> TestApp {
        TestApp::spawn_on(TestDb::new(), adjust)
    }

    /// The server on a database the test has prepared.
    pub fn spawn_on(db: TestDb, adjust: impl FnOnce(&mut Config)) -> TestApp {
        let mut config = test_config(&db.url);
        adjust(&mut config);
        let server = Server::start(&config).expect("starting the server");
        // Until its freshness listener has confirmed its connection, a new
        // server decides every claim by a transaction and remembers no
        // sold-out coupon: tests that look at that memory start after it.
        let listening = wait_for(std::time::Duration::from_secs(10), || {
            server.context().claims.freshness().fresh
        });
        assert!(listening, "the freshness listener did not connect");
        let base = format!("http://{}", server.addr());
        TestApp { server, db, base }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn get(&self, path: &str) -> Answer {
        http::request("GET", &self.url(path), None)
    }

    pub fn post_json(&self, path: &str, body: &str) -> Answer {
        http::request("POST", &self.url(path), Some(body))
    }

    pub fn create(&self, name: &str, amount: i64) -> Answer {
        self.post_json(
            "/api/coupons",
            &serde_json::json!({ "name": name, "amount": amount }).to_string(),
        )
    }

    pub fn claim(&self, user: &str, coupon: &str) -> Answer {
        http::claim(&self.base, user, coupon)
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        self.server.addr()
    }
}

pub fn test_config(database_url: &str) -> Config {
    let mut config = Config::for_database(parse_database_url(database_url).expect("a valid URL"));
    config.transport.listen_addr = "127.0.0.1:0".into();
    config.workers = 8;
    config.store.pool_size = 8;
    config
}

/// Every coupon's amount equals its remaining stock plus its claims.
pub fn assert_invariant(client: &mut postgres::Client) {
    let rows = client
        .query(
            "SELECT c.name, c.amount, c.remaining_amount, count(cl.id) \
             FROM coupons c LEFT JOIN claims cl ON cl.coupon_name = c.name \
             GROUP BY c.name, c.amount, c.remaining_amount",
            &[],
        )
        .expect("reading the invariant");
    for row in rows {
        let (name, amount, remaining, claims): (String, i32, i32, i64) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        assert_eq!(
            i64::from(amount),
            i64::from(remaining) + claims,
            "coupon {name}: amount {amount} != remaining {remaining} + claims {claims}"
        );
    }
}

/// Fails the test, saying what it needs the program for and how to install
/// it, unless `program --version` runs.
pub fn require_program(program: &str, what_for: &str, install: &str) {
    let found = std::process::Command::new(program)
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "\n\n{what_for}, and `{program}` was not found on PATH. Install it ({install}).\n\n"
    );
}

/// Waits until `done` holds, polling, for at most `limit`.
pub fn wait_for(limit: std::time::Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if done() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}
