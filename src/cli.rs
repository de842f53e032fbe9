//! The command line. The server itself takes no arguments (everything is
//! configured from the environment, see `config`); `attack` runs the load
//! tool against a deployment; `--help` and `--version` answer and exit
//! without touching anything else. Anything else is a mistake, said at once
//! rather than taken for "start the server".

use std::ffi::OsString;

use crate::config;

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// No arguments: run the server.
    Serve,
    /// `--help` or `-h`: print [`usage`] and exit 0.
    Help,
    /// `--version` or `-V`: print the version and exit 0.
    Version,
    /// `attack ...`: run the load tool with the rest of the arguments.
    Attack(Vec<OsString>),
    /// Anything else: say what was wrong, point at `--help`, exit 2.
    Mistake(String),
}

/// Reads the arguments after the program's name.
pub fn parse(mut args: impl Iterator<Item = OsString>) -> Command {
    let Some(first) = args.next() else {
        return Command::Serve;
    };
    let rest: Vec<OsString> = args.collect();
    match first.to_str() {
        Some("attack") => Command::Attack(rest),
        Some("--help" | "-h" | "help") if rest.is_empty() => Command::Help,
        Some("--version" | "-V") if rest.is_empty() => Command::Version,
        Some("--help" | "-h" | "help" | "--version" | "-V") => {
            Command::Mistake(format!("unexpected argument {:?}", rest[0]))
        }
        Some(other) if other.starts_with('-') => {
            Command::Mistake(format!("unknown option {other:?}"))
        }
        Some(other) => Command::Mistake(format!(
            "unknown command {other:?} (the only command is attack; the server takes no \
             arguments)"
        )),
        None => Command::Mistake(format!("unreadable argument {first:?}")),
    }
}

/// The version line.
pub fn version() -> String {
    format!("flash-coupons {}", env!("CARGO_PKG_VERSION"))
}

/// What `--help` prints: the commands, then every setting with its default.
pub fn usage() -> String {
    let mut text = format!(
        "{}: a flash-sale coupon service (HTTP API on PostgreSQL).\n\n\
         Usage:\n  \
         flash-coupons              run the server, configured from the environment below\n  \
         flash-coupons attack ...   run the spec's attacks against a deployment \
         (flash-coupons attack --help)\n  \
         flash-coupons --help       this text\n  \
         flash-coupons --version    the version\n\n\
         Environment (read once at start; a bad value stops start-up with exit code 2):\n",
        version()
    );
    let settings = config::settings();
    let width = settings.iter().map(|s| s.name.len()).max().unwrap_or(0);
    for setting in settings {
        text.push_str(&format!(
            "  {:width$}  {} (default: {})\n",
            setting.name, setting.meaning, setting.default
        ));
    }
    text.push_str(
        "\nExit codes: 0 after SIGTERM or SIGINT, 1 when start-up fails, 2 for a mistake in \
         the command line or the configuration.\n",
    );
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(args: &[&str]) -> Command {
        parse(args.iter().map(OsString::from))
    }

    #[test]
    fn no_arguments_runs_the_server() {
        assert_eq!(parse_all(&[]), Command::Serve);
    }

    #[test]
    fn help_and_version_are_answered_and_nothing_else_is_taken_for_the_server() {
        assert_eq!(parse_all(&["--help"]), Command::Help);
        assert_eq!(parse_all(&["-h"]), Command::Help);
        assert_eq!(parse_all(&["--version"]), Command::Version);
        assert_eq!(parse_all(&["-V"]), Command::Version);
        for mistake in [
            &["--verbose"][..],
            &["atack"],
            &["--help", "extra"],
            &["serve"],
            &["-"],
        ] {
            assert!(
                matches!(parse_all(mistake), Command::Mistake(_)),
                "{mistake:?}"
            );
        }
    }

    #[test]
    fn attack_takes_the_rest_of_the_arguments() {
        assert_eq!(
            parse_all(&["attack", "--url", "http://127.0.0.1:8080"]),
            Command::Attack(vec!["--url".into(), "http://127.0.0.1:8080".into()])
        );
    }

    #[test]
    fn usage_lists_every_setting_with_its_default() {
        let text = usage();
        for setting in config::settings() {
            assert!(
                text.lines()
                    .any(|l| l.trim_start().starts_with(setting.name)
                        && l.contains(&setting.default)),
                "{} is not listed with its default in:\n{text}",
                setting.name
            );
        }
        assert!(text.contains("attack"));
    }
}
