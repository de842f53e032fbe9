//! The command line of `flash-coupons attack`, parsed and checked once.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use lexopt::prelude::*;

pub const USAGE: &str = "\
usage: flash-coupons attack --url http://HOST:PORT [--users N --stock K]
                            [--concurrency C] [--timeout-secs S] [--deadline-secs S]
                            [--idempotency-keys] [--report FILE.html]

Runs the spec's Flash Sale Attack (50 users, 5 units, all at once) and
Double Dip Attack (one user 10 times at once, 10 units) against a running
service, each on a fresh coupon, and checks every answer.

  --url URL            the service, e.g. http://127.0.0.1:8080 (required; http only)
  --users N            also run a burst: N distinct users claim one fresh coupon ...
  --stock K            ... that has K units (give both or neither)
  --concurrency C      burst workers in flight at once (default 64, 1-1024)
  --timeout-secs S     timeout of each request (default 30)
  --deadline-secs S    deadline of the whole run (default 600)
  --idempotency-keys   send every claim with an Idempotency-Key of its own, and
                       send again, with the same key, each claim that got no
                       answer or a 503 (up to 5 times); the checks stay exact
  --report FILE        also write FILE, one self-contained HTML page (inline SVG
                       charts and style; opening it fetches nothing): the run's
                       and each scenario's verdict with the numbers checked, and
                       per scenario its answers per second over time by outcome,
                       latency p50/p90/p99 over time, and claims by status and code
  -h, --help           this text

Where the service guards coupon creation with ADMIN_TOKEN, set the same
ADMIN_TOKEN in the environment: it is sent as `Authorization: Bearer`.

`flash-coupons attack` runs the binary flash-coupons-attack installed
beside flash-coupons; running flash-coupons-attack itself is the same.

Exit code: 0 every check passed, 1 a check failed, 2 usage error, the
service is unreachable, or the --report file cannot be written.";

const MAX_USERS: u64 = 10_000_000;
const MAX_STOCK: u64 = i32::MAX as u64;
const MAX_CONCURRENCY: u64 = 1024;
const MAX_TIMEOUT_SECS: u64 = 3600;
const MAX_DEADLINE_SECS: u64 = 86_400;

/// What to run, every value already within its bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    /// The service's base URL without a trailing slash.
    pub url: String,
    pub burst: Option<Burst>,
    pub concurrency: usize,
    pub timeout: Duration,
    pub deadline: Duration,
    /// Every claim with an Idempotency-Key, retried with it.
    pub idempotency_keys: bool,
    /// Where to write the HTML report, if anywhere.
    pub report: Option<PathBuf>,
}

/// The optional burst: `users` distinct users on a coupon of `stock` units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Burst {
    pub users: usize,
    pub stock: u32,
}

/// What parsing produced instead of [`Args`].
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    Run(Args),
    Help,
}

/// Parses the arguments after `attack`; the error is one line for the user.
pub fn parse<I>(args: I) -> Result<Parsed, String>
where
    I: IntoIterator,
    I::Item: Into<OsString>,
{
    let mut url = None;
    let mut users = None;
    let mut stock = None;
    let mut concurrency = 64;
    let mut timeout_secs = 30;
    let mut deadline_secs = 600;
    let mut idempotency_keys = false;
    let mut report = None;

    let mut parser = lexopt::Parser::from_args(args);
    while let Some(arg) = parser.next().map_err(|e| e.to_string())? {
        match arg {
            Short('h') | Long("help") => return Ok(Parsed::Help),
            Long("url") => url = Some(text(&mut parser, "--url")?),
            Long("users") => users = Some(number(&mut parser, "--users", 1, MAX_USERS)?),
            Long("stock") => stock = Some(number(&mut parser, "--stock", 0, MAX_STOCK)?),
            Long("concurrency") => {
                concurrency = number(&mut parser, "--concurrency", 1, MAX_CONCURRENCY)?;
            }
            Long("timeout-secs") => {
                timeout_secs = number(&mut parser, "--timeout-secs", 1, MAX_TIMEOUT_SECS)?;
            }
            Long("deadline-secs") => {
                deadline_secs = number(&mut parser, "--deadline-secs", 1, MAX_DEADLINE_SECS)?;
            }
            Long("idempotency-keys") => idempotency_keys = true,
            Long("report") => {
                let path = PathBuf::from(parser.value().map_err(|e| e.to_string())?);
                if path.as_os_str().is_empty() {
                    return Err("--report wants a file name".into());
                }
                report = Some(path);
            }
            other => return Err(other.unexpected().to_string()),
        }
    }

    let url = base_url(&url.ok_or("--url is required")?)?;
    let burst = match (users, stock) {
        (Some(users), Some(stock)) => Some(Burst {
            users: usize::try_from(users).map_err(|_| "--users is too large")?,
            stock: u32::try_from(stock).map_err(|_| "--stock is too large")?,
        }),
        (None, None) => None,
        _ => return Err("--users and --stock go together: give both or neither".into()),
    };
    Ok(Parsed::Run(Args {
        url,
        burst,
        concurrency: usize::try_from(concurrency).map_err(|_| "--concurrency is too large")?,
        timeout: Duration::from_secs(timeout_secs),
        deadline: Duration::from_secs(deadline_secs),
        idempotency_keys,
        report,
    }))
}

fn text(parser: &mut lexopt::Parser, name: &str) -> Result<String, String> {
    parser
        .value()
        .map_err(|e| e.to_string())?
        .into_string()
        .map_err(|_| format!("{name} is not valid UTF-8"))
}

fn number(parser: &mut lexopt::Parser, name: &str, min: u64, max: u64) -> Result<u64, String> {
    let raw = text(parser, name)?;
    match raw.trim().parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(format!(
            "{name} wants a whole number from {min} to {max}, not {raw:?}"
        )),
    }
}

/// Checks the URL's shape (the HTTP client checks the rest on first use)
/// and drops trailing slashes so paths can be appended.
fn base_url(raw: &str) -> Result<String, String> {
    let url = raw.trim().trim_end_matches('/');
    let Some(rest) = url.strip_prefix("http://") else {
        return Err(format!(
            "--url must start with http:// (this build speaks plain HTTP), not {raw:?}"
        ));
    };
    if rest.is_empty() || rest.starts_with('/') {
        return Err(format!("--url has no host: {raw:?}"));
    }
    if rest.contains(['?', '#']) {
        return Err(format!(
            "--url must be the service's base, without a query or fragment: {raw:?}"
        ));
    }
    Ok(url.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(line: &str) -> Result<Parsed, String> {
        parse(line.split_whitespace())
    }

    fn args(line: &str) -> Args {
        match parse_str(line) {
            Ok(Parsed::Run(args)) => args,
            other => panic!("{line}: {other:?}"),
        }
    }

    #[test]
    fn defaults_apply_when_only_the_url_is_given() {
        let a = args("--url http://127.0.0.1:8080/");
        assert_eq!(a.url, "http://127.0.0.1:8080");
        assert_eq!(a.burst, None);
        assert_eq!(a.concurrency, 64);
        assert_eq!(a.timeout, Duration::from_secs(30));
        assert_eq!(a.deadline, Duration::from_secs(600));
        assert!(!a.idempotency_keys);
        assert_eq!(a.report, None);
    }

    #[test]
    fn every_option_is_read_in_either_spelling() {
        let a = args(
            "--url=http://h:1 --users 300 --stock=40 --concurrency 8 --timeout-secs 5 --deadline-secs 60 --idempotency-keys --report=out/r.html",
        );
        assert!(a.idempotency_keys);
        assert_eq!(a.report, Some(PathBuf::from("out/r.html")));
        assert_eq!(
            a.burst,
            Some(Burst {
                users: 300,
                stock: 40
            })
        );
        assert_eq!(a.concurrency, 8);
        assert_eq!(a.timeout, Duration::from_secs(5));
        assert_eq!(a.deadline, Duration::from_secs(60));
    }

    #[test]
    fn help_is_not_an_error() {
        assert_eq!(parse_str("--help"), Ok(Parsed::Help));
        assert_eq!(parse_str("-h --url x"), Ok(Parsed::Help));
    }

    #[test]
    fn bad_input_is_refused_with_a_reason() {
        for line in [
            "",
            "--url",
            "--url https://h:1",
            "--url ftp://h",
            "--url http://",
            "--url http://h/?x=1",
            "--url http://h --users 10",
            "--url http://h --stock 10",
            "--url http://h --users 0 --stock 1",
            "--url http://h --users -1 --stock 1",
            "--url http://h --users 1 --stock 2147483648",
            "--url http://h --concurrency 0",
            "--url http://h --concurrency 1025",
            "--url http://h --timeout-secs 0",
            "--url http://h --timeout-secs 1.5",
            "--url http://h --deadline-secs many",
            "--url http://h --frobnicate",
            "--url http://h --report",
            "--url http://h --report=",
            "--url http://h extra",
        ] {
            let err = parse_str(line).expect_err(line);
            assert!(!err.is_empty(), "{line}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn an_argument_that_is_not_utf8_is_refused_by_name() {
        use std::os::unix::ffi::OsStringExt;

        let url = OsString::from_vec(b"http://h\xff".to_vec());
        assert_eq!(
            parse([OsString::from("--url"), url]),
            Err("--url is not valid UTF-8".to_owned())
        );
    }
}
