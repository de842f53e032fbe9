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
//! - `report`: tallies, latency and the printed tables.
//!
//! Exit codes: 0 every check passed, 1 some check failed, 2 usage error or
//! the service could not be reached at all.

mod args;
mod client;
mod load;
mod progress;
mod report;
mod scenarios;

use std::ffi::OsString;
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
    if results.iter().all(report::Scenario::passed) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
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
