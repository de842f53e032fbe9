use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, bounded, select};

use log::LevelFilter;
use log::{error, info};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use simplelog::{ColorChoice, CombinedLogger, ConfigBuilder, TermLogger, TerminalMode};

use flash_coupons::cli::{self, Command};
use flash_coupons::store::OpenError;
use flash_coupons::{Config, Server, StartError};

fn main() -> ExitCode {
    match cli::parse(std::env::args_os().skip(1)) {
        Command::Serve => {}
        Command::Help => {
            print!("{}", cli::usage());
            return ExitCode::SUCCESS;
        }
        Command::Version => {
            println!("{}", cli::version());
            return ExitCode::SUCCESS;
        }
        Command::Mistake(what) => {
            eprintln!("flash-coupons: {what}; see flash-coupons --help");
            return ExitCode::from(2);
        }
        Command::Attack(rest) => return attack(rest.into_iter()),
    }
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(err) => {
            eprintln!("flash-coupons: {err}");
            return ExitCode::from(2);
        }
    };
    init_logging(config.log_level);

    // Registered before start-up so a SIGTERM during it is not lost.
    let signals = match Signals::new([SIGTERM, SIGINT]) {
        Ok(signals) => signals,
        Err(err) => {
            error!("cannot install signal handlers: {err}");
            return ExitCode::FAILURE;
        }
    };
    let signals = match forward(signals) {
        Ok(signals) => signals,
        Err(err) => {
            error!("cannot start the signal thread: {err}");
            return ExitCode::FAILURE;
        }
    };
    let drain = config.shutdown_drain;
    let workers = config.workers;
    let (server, early) = match start_unless_signalled(config, &signals) {
        Ok(started) => started,
        Err(code) => return code,
    };
    // Said only here, once this thread holds the server: whoever waits for
    // this line may signal at once, and the signal is a running server's.
    info!(
        "listening on http://{} with {workers} workers",
        server.addr()
    );
    if let Some(signal) = early.or_else(|| signals.recv().ok()) {
        if drain.is_zero() {
            info!("signal {signal} received; finishing requests in flight");
        } else {
            drain_then_log(&server, &signals, signal, drain);
        }
    }
    server.shutdown();
    ExitCode::SUCCESS
}

/// The service's own lines at `level`, each naming the module that wrote
/// it; other crates' lines (the database driver's, tiny_http's) only from
/// warnings up, so that debug level shows the service, not the driver's
/// every statement.
fn init_logging(level: LevelFilter) {
    let ours = ConfigBuilder::new()
        .set_target_level(LevelFilter::Error)
        .set_thread_level(LevelFilter::Off)
        .add_filter_allow_str("flash_coupons")
        .build();
    let theirs = ConfigBuilder::new()
        .set_target_level(LevelFilter::Error)
        .set_thread_level(LevelFilter::Off)
        .add_filter_ignore_str("flash_coupons")
        .add_filter_ignore_str(flash_coupons::transport::QUIET_LOG_TARGET)
        .build();
    let _ = CombinedLogger::init(vec![
        TermLogger::new(level, ours, TerminalMode::Stderr, ColorChoice::Never),
        TermLogger::new(
            level.min(LevelFilter::Warn),
            theirs,
            TerminalMode::Stderr,
            ColorChoice::Never,
        ),
    ]);
}

/// `flash-coupons attack ARGS`: the load tool is a binary of its own,
/// `flash-coupons-attack`, so that the service links none of it. It is
/// looked for beside this executable, where `cargo build` and the image put
/// it, and runs in this process's place: its output and exit code are the
/// command's.
fn attack(args: impl Iterator<Item = OsString>) -> ExitCode {
    let name = "flash-coupons-attack";
    let path = match std::env::current_exe() {
        Ok(exe) => exe.with_file_name(name),
        Err(err) => {
            eprintln!("flash-coupons: cannot find this executable to run {name} beside it: {err}");
            return ExitCode::from(2);
        }
    };
    // exec returns only when it failed.
    let err = std::process::Command::new(&path).args(args).exec();
    if err.kind() == std::io::ErrorKind::NotFound {
        eprintln!(
            "flash-coupons: attack needs {} (build it with `cargo build --release -p \
             flash-coupons-attack`, or `cargo build --release` for both binaries)",
            path.display()
        );
    } else {
        eprintln!("flash-coupons: cannot run {}: {err}", path.display());
    }
    ExitCode::from(2)
}

/// The drain period (SHUTDOWN_DRAIN_SECS): /healthz fails while everything
/// else is served as usual, so that a load balancer checking it stops
/// sending here before the server stops accepting. A second signal ends it
/// at once.
fn drain_then_log(server: &Server, signals: &Receiver<i32>, signal: i32, drain: Duration) {
    server.start_draining();
    info!(
        "signal {signal} received; draining for {}s (/healthz answers 503, everything else is \
         served) before stopping; a second signal stops at once",
        drain.as_secs()
    );
    let began = Instant::now();
    select! {
        recv(signals) -> again => match again {
            Ok(again) => info!(
                "signal {again} received; drain ended after {:.1?}; no longer accepting, \
                 finishing requests in flight",
                began.elapsed()
            ),
            // The signal thread is gone: nothing can cut the drain short.
            Err(_) => {
                thread::sleep(drain.saturating_sub(began.elapsed()));
                info!(
                    "drain ended after {:.1?}; no longer accepting, finishing requests in flight",
                    began.elapsed()
                );
            }
        },
        default(drain) => info!(
            "drain ended after {:.1?}; no longer accepting, finishing requests in flight",
            began.elapsed()
        ),
    }
}

/// The signals, as a channel that can be waited on together with others.
fn forward(mut signals: Signals) -> std::io::Result<Receiver<i32>> {
    let (sender, receiver) = bounded(4);
    thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                if sender.send(signal).is_err() {
                    return;
                }
            }
        })?;
    Ok(receiver)
}

/// Starts the server on a thread of its own, so that a signal during
/// start-up (which can wait up to DB_STARTUP_TIMEOUT_SECS for the database)
/// is acted on at once.
///
/// A signal during start-up ends the process with exit code 0, as a signal
/// after it does: stopping was asked for, and nothing failed or was left
/// half-done (the schema is applied in one transaction, which PostgreSQL
/// rolls back when the connection goes), so a supervisor has nothing to
/// report or retry. Failing to start is exit code 1.
///
/// A signal that comes as start-up finishes is returned with the server:
/// the server has already said it listens, so it is the first signal of a
/// running server (and a drain, if one is configured, must run).
fn start_unless_signalled(
    config: Config,
    signals: &Receiver<i32>,
) -> Result<(Server, Option<i32>), ExitCode> {
    let (sender, started) = bounded(1);
    let spawned = thread::Builder::new()
        .name("start-up".into())
        .spawn(move || {
            let _ = sender.send(Server::start(&config));
        });
    if let Err(err) = spawned {
        error!("start-up failed: cannot start a thread: {err}");
        return Err(ExitCode::FAILURE);
    }
    select! {
        recv(started) -> result => match result {
            Ok(Ok(server)) => Ok((server, None)),
            Ok(Err(err)) => {
                error!("start-up failed: {}", with_causes(&err));
                // A database the service cannot use as configured is a
                // configuration mistake, like a bad setting.
                match err {
                    StartError::Database(OpenError::Unsuitable(_)) => Err(ExitCode::from(2)),
                    _ => Err(ExitCode::FAILURE),
                }
            }
            Err(_) => {
                error!("start-up failed: the start-up thread panicked");
                Err(ExitCode::FAILURE)
            }
        },
        recv(signals) -> signal => {
            let signal = signal.unwrap_or(0);
            if let Ok(Ok(server)) = started.try_recv() {
                return Ok((server, Some(signal)));
            }
            info!("signal {signal} received during start-up; exiting");
            Err(ExitCode::SUCCESS)
        }
    }
}

/// `err` followed by its causes, each after a colon.
fn with_causes(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(next) = cause {
        text.push_str(": ");
        text.push_str(&next.to_string());
        cause = next.source();
    }
    text
}
