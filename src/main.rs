use std::process::ExitCode;

use log::{error, info};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use simplelog::{ColorChoice, ConfigBuilder, TermLogger, TerminalMode};

use flash_coupons::{Config, Server};

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    if args.next().is_some_and(|arg| arg == "attack") {
        let rest = args.map(|arg| arg.to_string_lossy().into_owned()).collect();
        return flash_coupons::attack::run(rest);
    }
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(err) => {
            eprintln!("flash-coupons: {err}");
            return ExitCode::from(2);
        }
    };
    let log_config = ConfigBuilder::new()
        .set_target_level(log::LevelFilter::Off)
        .set_thread_level(log::LevelFilter::Off)
        // tiny_http logs each end of an accept loop as an error; the server
        // restarts them on purpose and logs what matters itself.
        .add_filter_ignore_str("tiny_http")
        .build();
    let _ = TermLogger::init(
        config.log_level,
        log_config,
        TerminalMode::Stderr,
        ColorChoice::Never,
    );

    // Registered before start-up so a SIGTERM during it is not lost.
    let mut signals = match Signals::new([SIGTERM, SIGINT]) {
        Ok(signals) => signals,
        Err(err) => {
            error!("cannot install signal handlers: {err}");
            return ExitCode::FAILURE;
        }
    };
    let server = match Server::start(&config) {
        Ok(server) => server,
        Err(err) => {
            error!("start-up failed: {err}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(signal) = signals.forever().next() {
        info!("signal {signal} received; finishing requests in flight");
    }
    server.shutdown();
    ExitCode::SUCCESS
}
