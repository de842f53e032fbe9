//! `flash-coupons attack`: the spec's stress scenarios run against any
//! running deployment, with a verdict per scenario and an exit code. A
//! package of its own, so that the service links none of it; its binary
//! `flash-coupons-attack` is what the server binary's `attack` runs.
//!
//! - `args`: the command line;
//! - `client`: HTTP requests (ureq), bounded by a timeout and the deadline;
//! - `load`: worker threads released together;
//! - `progress`: the progress line on stderr;
//! - `scenarios`: Flash Sale, Double Dip and the optional burst, with checks;
//! - `timeline`: each volley's answers over time, in bounded memory;
//! - `report`: tallies, latency and the printed tables;
//! - `html` and `charts`: the `--report` page and its SVG charts (`charts`
//!   also draws bench/run's, through `examples/bench_plot.rs`).
//!
//! Exit codes: 0 every check passed, 1 some check failed, 2 usage error,
//! the service could not be reached at all, or the `--report` file could
//! not be written.

mod args;
pub mod charts;
mod client;
mod html;
mod load;
mod progress;
mod report;
mod scenarios;
mod timeline;

use std::ffi::OsString;
use std::fs::File;
use std::io::Write;
use std::process::ExitCode;
use std::time::Instant;

use args::{Args, Parsed, USAGE};
use client::Client;

const USAGE_OR_UNREACHABLE: u8 = 2;

/// Runs the command; `args` come after `attack`.
pub fn run<I>(args: I) -> ExitCode
where
    I: IntoIterator,
    I::Item: Into<OsString>,
{
    let args = match args::parse(args) {
        Ok(Parsed::Run(args)) => args,
        Ok(Parsed::Help) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(msg) => {
            eprintln!("flash-coupons attack: {msg}\n\n{USAGE}");
            return ExitCode::from(USAGE_OR_UNREACHABLE);
        }
    };
    // The report's file is made before any claim is sent: a path that
    // cannot be written is a usage error, not a lost run.
    let mut report_file = match &args.report {
        Some(path) => match File::create(path) {
            Ok(file) => Some((path.as_path(), file)),
            Err(err) => {
                eprintln!(
                    "flash-coupons attack: cannot write --report {}: {err}",
                    path.display()
                );
                return ExitCode::from(USAGE_OR_UNREACHABLE);
            }
        },
        None => None,
    };
    let started = time::OffsetDateTime::now_utc();
    let deadline = Instant::now() + args.deadline;
    // The server's own variable: where creating coupons needs a token,
    // the operator has it in the environment, never on the command line.
    let admin_token = std::env::var("ADMIN_TOKEN").ok().filter(|t| !t.is_empty());
    let run_id = scenarios::run_id();
    let client = Client::new(
        &args.url,
        args.timeout,
        deadline,
        args.concurrency,
        admin_token,
        args.idempotency_keys.then(|| format!("attack-{run_id}")),
    );

    match client.probe() {
        Ok(200) => {}
        Ok(status) => eprintln!(
            "flash-coupons attack: note: GET {}/healthz answered {status}; attacking anyway",
            args.url
        ),
        Err(why) => {
            let probe = format!("{}/healthz: ", args.url);
            let why = why.strip_prefix(&probe).unwrap_or(&why);
            eprintln!("flash-coupons attack: cannot reach {}: {why}", args.url);
            return ExitCode::from(USAGE_OR_UNREACHABLE);
        }
    }

    println!(
        "flash-coupons attack on {} (run {run_id}; request timeout {} s, run deadline {} s)\n",
        args.url,
        args.timeout.as_secs(),
        args.deadline.as_secs()
    );
    let results = run_scenarios(&client, &args, &run_id);
    if Instant::now() >= deadline {
        println!(
            "note: the run deadline ({} s) was reached: claims still in flight then count as \
             timeouts, later ones as not_sent_deadline\n",
            args.deadline.as_secs()
        );
    }
    print!("{}", report::render_summary(&results));
    if let Some((path, file)) = &mut report_file {
        let info = html::RunInfo {
            service: args.url.trim_start_matches("http://"),
            run_id: &run_id,
            started: &started
                .format(time::macros::format_description!(
                    "[year]-[month]-[day] [hour]:[minute]:[second] UTC"
                ))
                .unwrap_or_default(),
            timeout: args.timeout,
            deadline: args.deadline,
            idempotency_keys: args.idempotency_keys,
        };
        if let Err(err) = write_report(file, &info, &results) {
            eprintln!(
                "flash-coupons attack: cannot write --report {}: {err}",
                path.display()
            );
            return ExitCode::from(USAGE_OR_UNREACHABLE);
        }
        println!("report written to {}", path.display());
    }
    if results.iter().all(report::Scenario::passed) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn write_report(
    file: &mut File,
    info: &html::RunInfo,
    results: &[report::Scenario],
) -> Result<(), String> {
    let page = html::render(info, results)?;
    file.write_all(page.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| e.to_string())
}

fn run_scenarios(client: &Client, args: &Args, run_id: &str) -> Vec<report::Scenario> {
    let mut results = Vec::new();
    let mut show = |scenario: report::Scenario| {
        println!("{}", report::render(&scenario));
        results.push(scenario);
    };
    show(scenarios::flash_sale(client, run_id));
    show(scenarios::double_dip(client, run_id));
    if let Some(burst) = args.burst {
        show(scenarios::burst(
            client,
            run_id,
            burst.users,
            burst.stock,
            args.concurrency,
        ));
    }
    results
}
