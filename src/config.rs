//! All configuration, read from the environment in one place.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use log::LevelFilter;

use crate::store::StoreSettings;
use crate::transport;

/// Everything the server needs to start. Built from the environment by
/// [`Config::from_env`], or directly by tests.
#[derive(Debug, Clone)]
pub struct Config {
    /// Worker threads that answer requests that may wait on the database.
    pub workers: usize,
    /// When set, POST /api/coupons needs `Authorization: Bearer <token>`.
    pub admin_token: Option<String>,
    /// Memory that answers read whole before writing may hold at once.
    pub response_buffer_bytes: usize,
    pub log_level: LevelFilter,
    /// On SIGTERM or SIGINT, how long /healthz fails while everything else
    /// is served, before the server stops accepting (0: stop at once).
    pub shutdown_drain: Duration,
    pub store: StoreSettings,
    pub transport: transport::Settings,
}

/// A setting that is missing or cannot be used, named for the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// Loopback only: a replica is never exposed directly (it is meant to sit
/// behind the edge); Docker and deploy/run-local set what they need.
pub const DEFAULT_LISTEN_ADDR: &str = "127.0.0.1:8080";
pub const DEFAULT_WORKERS: usize = 16;
pub const DEFAULT_DB_POOL_SIZE: u32 = 16;
pub const DEFAULT_CLAIM_MAX_RETRIES: u32 = 20;
pub const DEFAULT_DB_STARTUP_TIMEOUT_SECS: u64 = 30;
pub const DEFAULT_DB_CHECKOUT_TIMEOUT_MS: u64 = 2000;
/// The client-side deadline of each database operation. A claim batch of
/// 1,024 takes tens of milliseconds on a healthy database even under a flash
/// sale, and a claim waits on the
/// coupon's row lock only behind other servers' claim transactions on the
/// same coupon, each that short: 5 s is two orders of magnitude above that,
/// so only a database that stopped answering reaches it.
pub const DEFAULT_DB_QUERY_TIMEOUT_MS: u64 = 5000;
pub const DEFAULT_HTTP_IDLE_TIMEOUT_SECS: u64 = 5;
pub const DEFAULT_HTTP_KEEP_ALIVE_REQUESTS: u32 = 1;
pub const DEFAULT_HTTP_WRITE_TIMEOUT_SECS: u64 = 30;
pub const DEFAULT_HTTP_WRITERS: usize = 64;
pub const DEFAULT_HTTP_LARGE_ANSWERS: usize = 8;
pub const DEFAULT_RESPONSE_BUFFER_MB: usize = 256;
/// A day: a client retrying after a lost answer does so within minutes; a
/// day also covers a phone that comes back online the next morning.
pub const DEFAULT_IDEMPOTENCY_TTL_HOURS: i32 = 24;
/// No drain: the binary alone stops accepting as soon as it is signalled.
/// Deployments behind a load balancer set it to a few health-check
/// intervals.
pub const DEFAULT_SHUTDOWN_DRAIN_SECS: u64 = 0;

impl Config {
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::from_lookup(|key| std::env::var(key).ok())
    }

    /// Reads the settings through `lookup`, so tests need not touch the
    /// process environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let get = |key: &str| lookup(key).filter(|v| !v.trim().is_empty());
        let url = get("DATABASE_URL")
            .ok_or_else(|| ConfigError("DATABASE_URL is not set; set it to a PostgreSQL connection string such as postgres://postgres@127.0.0.1:5432/postgres".into()))?;
        let database = parse_database_url(&url)?;
        let mut config = Config::for_database(database);
        if let Some(addr) = get("LISTEN_ADDR") {
            config.transport.listen_addr = listen_addr(&addr)?;
        }
        config.workers = number(&get, "WORKERS", DEFAULT_WORKERS, 1, 1024)?;
        config.store.pool_size = number(&get, "DB_POOL_SIZE", DEFAULT_DB_POOL_SIZE, 1, 1024)?;
        config.store.max_retries = number(
            &get,
            "CLAIM_MAX_RETRIES",
            DEFAULT_CLAIM_MAX_RETRIES,
            0,
            1000,
        )?;
        config.store.startup_timeout = Duration::from_secs(number(
            &get,
            "DB_STARTUP_TIMEOUT_SECS",
            DEFAULT_DB_STARTUP_TIMEOUT_SECS,
            0,
            3600,
        )?);
        config.store.checkout_timeout = Duration::from_millis(number(
            &get,
            "DB_CHECKOUT_TIMEOUT_MS",
            DEFAULT_DB_CHECKOUT_TIMEOUT_MS,
            10,
            600_000,
        )?);
        config.store.idempotency_ttl_hours = number(
            &get,
            "IDEMPOTENCY_TTL_HOURS",
            DEFAULT_IDEMPOTENCY_TTL_HOURS,
            1,
            24 * 365,
        )?;
        config.store.query_timeout = Duration::from_millis(number(
            &get,
            "DB_QUERY_TIMEOUT_MS",
            DEFAULT_DB_QUERY_TIMEOUT_MS,
            100,
            600_000,
        )?);
        config.transport.idle_timeout = Duration::from_secs(number(
            &get,
            "HTTP_IDLE_TIMEOUT_SECS",
            DEFAULT_HTTP_IDLE_TIMEOUT_SECS,
            1,
            3600,
        )?);
        config.transport.write_timeout = Duration::from_secs(number(
            &get,
            "HTTP_WRITE_TIMEOUT_SECS",
            DEFAULT_HTTP_WRITE_TIMEOUT_SECS,
            1,
            3600,
        )?);
        config.transport.writers = number(&get, "HTTP_WRITERS", DEFAULT_HTTP_WRITERS, 1, 4096)?;
        config.transport.large_writers = number(
            &get,
            "HTTP_LARGE_ANSWERS",
            DEFAULT_HTTP_LARGE_ANSWERS,
            1,
            1024,
        )?;
        config.response_buffer_bytes = number(
            &get,
            "RESPONSE_BUFFER_MB",
            DEFAULT_RESPONSE_BUFFER_MB,
            1,
            1 << 20,
        )? << 20;
        config.transport.keep_alive_requests = number(
            &get,
            "HTTP_KEEP_ALIVE_REQUESTS",
            DEFAULT_HTTP_KEEP_ALIVE_REQUESTS,
            0,
            1_000_000,
        )?;
        config.shutdown_drain = Duration::from_secs(number(
            &get,
            "SHUTDOWN_DRAIN_SECS",
            DEFAULT_SHUTDOWN_DRAIN_SECS,
            0,
            3600,
        )?);
        config.admin_token = admin_token(lookup("ADMIN_TOKEN"))?;
        if let Some(level) = get("LOG_LEVEL") {
            config.log_level = LevelFilter::from_str(level.trim()).map_err(|_| {
                ConfigError(format!(
                    "LOG_LEVEL must be one of off, error, warn, info, debug, trace (got {level:?})"
                ))
            })?;
        }
        Ok(config)
    }

    /// The defaults, pointed at `database`.
    pub fn for_database(database: postgres::Config) -> Config {
        Config {
            workers: DEFAULT_WORKERS,
            admin_token: None,
            response_buffer_bytes: DEFAULT_RESPONSE_BUFFER_MB << 20,
            log_level: LevelFilter::Info,
            shutdown_drain: Duration::from_secs(DEFAULT_SHUTDOWN_DRAIN_SECS),
            store: StoreSettings {
                database,
                pool_size: DEFAULT_DB_POOL_SIZE,
                max_retries: DEFAULT_CLAIM_MAX_RETRIES,
                startup_timeout: Duration::from_secs(DEFAULT_DB_STARTUP_TIMEOUT_SECS),
                checkout_timeout: Duration::from_millis(DEFAULT_DB_CHECKOUT_TIMEOUT_MS),
                query_timeout: Duration::from_millis(DEFAULT_DB_QUERY_TIMEOUT_MS),
                idempotency_ttl_hours: DEFAULT_IDEMPOTENCY_TTL_HOURS,
            },
            transport: transport::Settings {
                listen_addr: DEFAULT_LISTEN_ADDR.to_owned(),
                idle_timeout: Duration::from_secs(DEFAULT_HTTP_IDLE_TIMEOUT_SECS),
                write_timeout: Duration::from_secs(DEFAULT_HTTP_WRITE_TIMEOUT_SECS),
                writers: DEFAULT_HTTP_WRITERS,
                large_writers: DEFAULT_HTTP_LARGE_ANSWERS,
                keep_alive_requests: DEFAULT_HTTP_KEEP_ALIVE_REQUESTS,
            },
        }
    }
}

/// One setting as `flash-coupons --help` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    pub name: &'static str,
    pub default: String,
    pub meaning: &'static str,
}

/// Every setting [`Config::from_env`] reads, with its default, in one
/// line each.
pub fn settings() -> Vec<Setting> {
    let setting = |name, default: &dyn fmt::Display, meaning| Setting {
        name,
        default: default.to_string(),
        meaning,
    };
    vec![
        setting(
            "DATABASE_URL",
            &"none, required",
            "PostgreSQL connection string (postgres://user:password@host:5432/database)",
        ),
        setting(
            "LISTEN_ADDR",
            &DEFAULT_LISTEN_ADDR,
            "address and port to listen on (port 0: any free port)",
        ),
        setting(
            "WORKERS",
            &DEFAULT_WORKERS,
            "threads answering requests that may wait on the database (1-1024)",
        ),
        setting(
            "DB_POOL_SIZE",
            &DEFAULT_DB_POOL_SIZE,
            "most database connections held (1-1024)",
        ),
        setting(
            "CLAIM_MAX_RETRIES",
            &DEFAULT_CLAIM_MAX_RETRIES,
            "retries of a conflicting claim transaction before 503 busy (0-1000)",
        ),
        setting(
            "DB_STARTUP_TIMEOUT_SECS",
            &DEFAULT_DB_STARTUP_TIMEOUT_SECS,
            "how long start-up keeps trying to reach the database (0-3600)",
        ),
        setting(
            "DB_CHECKOUT_TIMEOUT_MS",
            &DEFAULT_DB_CHECKOUT_TIMEOUT_MS,
            "how long a request waits for a database connection before 503 (10-600000)",
        ),
        setting(
            "DB_QUERY_TIMEOUT_MS",
            &DEFAULT_DB_QUERY_TIMEOUT_MS,
            "deadline of every database operation; past it, 503 (100-600000)",
        ),
        setting(
            "HTTP_IDLE_TIMEOUT_SECS",
            &DEFAULT_HTTP_IDLE_TIMEOUT_SECS,
            "a client that sends or reads nothing this long is disconnected (1-3600)",
        ),
        setting(
            "HTTP_WRITE_TIMEOUT_SECS",
            &DEFAULT_HTTP_WRITE_TIMEOUT_SECS,
            "the longest a client may take to read one whole answer (1-3600)",
        ),
        setting(
            "HTTP_WRITERS",
            &DEFAULT_HTTP_WRITERS,
            "threads writing answers to clients (1-4096)",
        ),
        setting(
            "HTTP_LARGE_ANSWERS",
            &DEFAULT_HTTP_LARGE_ANSWERS,
            "answers over 1 MiB in flight at once, each with its own writer (1-1024)",
        ),
        setting(
            "RESPONSE_BUFFER_MB",
            &DEFAULT_RESPONSE_BUFFER_MB,
            "memory answers made whole before writing may hold at once (1-1048576)",
        ),
        setting(
            "HTTP_KEEP_ALIVE_REQUESTS",
            &DEFAULT_HTTP_KEEP_ALIVE_REQUESTS,
            "mean answers per connection before Connection: close; 1 always closes, 0 never",
        ),
        setting(
            "SHUTDOWN_DRAIN_SECS",
            &DEFAULT_SHUTDOWN_DRAIN_SECS,
            "after SIGTERM, how long /healthz fails while everything else is served (0-3600)",
        ),
        setting(
            "IDEMPOTENCY_TTL_HOURS",
            &DEFAULT_IDEMPOTENCY_TTL_HOURS,
            "how long an Idempotency-Key is remembered (1-8760)",
        ),
        setting(
            "ADMIN_TOKEN",
            &"none",
            "bearer token for creating coupons; releasing claims always needs it",
        ),
        setting(
            "LOG_LEVEL",
            &"info",
            "off, error, warn, info (a line per request), debug or trace",
        ),
    ]
}

pub fn parse_database_url(url: &str) -> Result<postgres::Config, ConfigError> {
    // The parser's message can quote the input; it is not repeated here
    // because the input may carry a password.
    postgres::Config::from_str(url)
        .map_err(|_| ConfigError("DATABASE_URL is not a valid PostgreSQL connection string".into()))
}

/// Where the database is, for logs: host, port and database, never the
/// password.
pub fn describe_database(config: &postgres::Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|h| match h {
            postgres::config::Host::Tcp(name) => name.clone(),
            postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    let ports: Vec<String> = config.get_ports().iter().map(u16::to_string).collect();
    format!(
        "host={} port={} dbname={} user={}",
        hosts.join(","),
        ports.join(","),
        config.get_dbname().unwrap_or("(default)"),
        config.get_user().unwrap_or("(default)")
    )
}

/// ADMIN_TOKEN exactly as given (empty: none). A token that starts or ends
/// with whitespace is refused: the token a client presents is read from a
/// header, whose surrounding whitespace is never part of its value, so such
/// a token could never match.
fn admin_token(raw: Option<String>) -> Result<Option<String>, ConfigError> {
    match raw {
        None => Ok(None),
        Some(token) if token.is_empty() => Ok(None),
        Some(token) if token.trim() != token => Err(ConfigError(
            "ADMIN_TOKEN starts or ends with whitespace, which no request's token can match \
             (a header's value never does); remove it"
                .into(),
        )),
        Some(token) => Ok(Some(token)),
    }
}

/// `LISTEN_ADDR`: a host (an IP address, `[v6]`, or a name) and a port,
/// checked here so that a mistake stops start-up before the database is
/// tried, like any other setting's. Whether it can be bound is learnt when
/// it is.
fn listen_addr(raw: &str) -> Result<String, ConfigError> {
    let addr = raw.trim();
    let well_formed = addr.parse::<std::net::SocketAddr>().is_ok()
        || addr.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty()
                && !host.contains(|c: char| c.is_whitespace() || c == ':' || c == '/')
                && port.parse::<u16>().is_ok()
        });
    if well_formed {
        Ok(addr.to_owned())
    } else {
        Err(ConfigError(format!(
            "LISTEN_ADDR must be a host and a port, such as 127.0.0.1:8080 or [::1]:8080 (got {raw:?})"
        )))
    }
}

fn number<T>(
    get: &impl Fn(&str) -> Option<String>,
    key: &str,
    default: T,
    min: T,
    max: T,
) -> Result<T, ConfigError>
where
    T: FromStr + PartialOrd + fmt::Display + Copy,
{
    let Some(raw) = get(key) else {
        return Ok(default);
    };
    match raw.trim().parse::<T>() {
        Ok(value) if value >= min && value <= max => Ok(value),
        _ => Err(ConfigError(format!(
            "{key} must be a whole number from {min} to {max} (got {raw:?})"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_lookup(|key| {
            vars.iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.to_string())
        })
    }

    const URL: (&str, &str) = ("DATABASE_URL", "postgres://app:s3cret@db:5432/coupons");

    #[test]
    fn a_listen_address_is_a_host_and_a_port() {
        for good in [
            "0.0.0.0:8080",
            "127.0.0.1:0",
            "[::1]:8080",
            "localhost:8080",
        ] {
            let c = config(&[URL, ("LISTEN_ADDR", good)]).unwrap();
            assert_eq!(c.transport.listen_addr, good);
        }
        for bad in [
            "nope",
            "127.0.0.1",
            "127.0.0.1:99999",
            ":8080",
            "::1:8080",
            "a b:80",
        ] {
            let err = config(&[URL, ("LISTEN_ADDR", bad)]).unwrap_err();
            assert!(err.0.starts_with("LISTEN_ADDR"), "{bad}: {}", err.0);
        }
    }

    #[test]
    fn defaults_apply_when_only_the_database_is_given() {
        let c = config(&[URL]).unwrap();
        assert_eq!(c.transport.listen_addr, DEFAULT_LISTEN_ADDR);
        assert_eq!(c.workers, DEFAULT_WORKERS);
        assert_eq!(c.store.pool_size, DEFAULT_DB_POOL_SIZE);
        assert_eq!(c.store.max_retries, DEFAULT_CLAIM_MAX_RETRIES);
        assert_eq!(c.log_level, LevelFilter::Info);
    }

    #[test]
    fn help_lists_exactly_the_settings_that_are_read() {
        let asked = std::cell::RefCell::new(Vec::new());
        let _ = Config::from_lookup(|key| {
            asked.borrow_mut().push(key.to_owned());
            (key == "DATABASE_URL").then(|| URL.1.to_owned())
        });
        let mut asked = asked.into_inner();
        asked.sort();
        asked.dedup();
        let mut listed: Vec<String> = settings().iter().map(|s| s.name.to_owned()).collect();
        listed.sort();
        assert_eq!(asked, listed);
    }

    #[test]
    fn help_shows_the_defaults_in_force() {
        let c = config(&[URL]).unwrap();
        let default = |name: &str| {
            settings()
                .into_iter()
                .find(|s| s.name == name)
                .map(|s| s.default)
                .unwrap()
        };
        assert_eq!(default("LISTEN_ADDR"), c.transport.listen_addr);
        assert_eq!(default("WORKERS"), c.workers.to_string());
        assert_eq!(default("DB_POOL_SIZE"), c.store.pool_size.to_string());
        assert_eq!(
            default("DB_QUERY_TIMEOUT_MS"),
            c.store.query_timeout.as_millis().to_string()
        );
        assert_eq!(
            default("HTTP_KEEP_ALIVE_REQUESTS"),
            c.transport.keep_alive_requests.to_string()
        );
        assert_eq!(default("LOG_LEVEL"), c.log_level.to_string().to_lowercase());
    }

    #[test]
    fn a_missing_database_url_is_named() {
        let err = config(&[]).unwrap_err();
        assert!(err.to_string().contains("DATABASE_URL"));
    }

    #[test]
    fn malformed_numbers_and_levels_are_named() {
        let err = config(&[URL, ("WORKERS", "many")]).unwrap_err();
        assert!(err.to_string().starts_with("WORKERS"), "{err}");
        let err = config(&[URL, ("DB_POOL_SIZE", "0")]).unwrap_err();
        assert!(err.to_string().starts_with("DB_POOL_SIZE"), "{err}");
        let err = config(&[URL, ("LOG_LEVEL", "loud")]).unwrap_err();
        assert!(err.to_string().starts_with("LOG_LEVEL"), "{err}");
    }

    #[test]
    fn the_query_deadline_defaults_to_five_seconds_and_is_bounded() {
        let c = config(&[URL]).unwrap();
        assert_eq!(
            c.store.query_timeout,
            Duration::from_millis(DEFAULT_DB_QUERY_TIMEOUT_MS)
        );
        assert_eq!(c.store.query_timeout, Duration::from_secs(5));
        let c = config(&[URL, ("DB_QUERY_TIMEOUT_MS", " 1500 ")]).unwrap();
        assert_eq!(c.store.query_timeout, Duration::from_millis(1500));
        for bad in ["99", "600001", "-1", "5s", "1.5"] {
            let err = config(&[URL, ("DB_QUERY_TIMEOUT_MS", bad)]).unwrap_err();
            assert!(
                err.to_string()
                    .starts_with("DB_QUERY_TIMEOUT_MS must be a whole number from 100 to 600000"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn the_shutdown_drain_defaults_to_none_and_is_bounded() {
        let c = config(&[URL]).unwrap();
        assert_eq!(c.shutdown_drain, Duration::ZERO);
        let c = config(&[URL, ("SHUTDOWN_DRAIN_SECS", "3")]).unwrap();
        assert_eq!(c.shutdown_drain, Duration::from_secs(3));
        let c = config(&[URL, ("SHUTDOWN_DRAIN_SECS", "")]).unwrap();
        assert_eq!(c.shutdown_drain, Duration::ZERO);
        for bad in ["-1", "3601", "3s", "0.5"] {
            let err = config(&[URL, ("SHUTDOWN_DRAIN_SECS", bad)]).unwrap_err();
            assert!(
                err.to_string()
                    .starts_with("SHUTDOWN_DRAIN_SECS must be a whole number from 0 to 3600"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn an_admin_token_with_surrounding_whitespace_is_refused() {
        for bad in [" secret", "secret\n", "\tsecret", "   "] {
            let err = config(&[URL, ("ADMIN_TOKEN", bad)]).unwrap_err();
            assert!(err.to_string().starts_with("ADMIN_TOKEN"), "{bad:?}: {err}");
        }
        let c = config(&[URL, ("ADMIN_TOKEN", "s3 cr3t")]).unwrap();
        assert_eq!(c.admin_token.as_deref(), Some("s3 cr3t"));
        let c = config(&[URL, ("ADMIN_TOKEN", "")]).unwrap();
        assert_eq!(c.admin_token, None);
    }

    #[test]
    fn the_password_never_reaches_an_error_or_description() {
        let err = config(&[("DATABASE_URL", "postgres://a:s3cret@[bad")]).unwrap_err();
        assert!(!err.to_string().contains("s3cret"));
        let c = config(&[URL]).unwrap();
        let text = describe_database(&c.store.database);
        assert!(!text.contains("s3cret"), "{text}");
        assert!(text.contains("host=db"), "{text}");
    }
}
