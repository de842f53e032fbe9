//! The `flash-coupons-attack` binary: the command line of
//! [`flash_coupons_attack::run`], which is also what `flash-coupons attack`
//! runs.

use std::process::ExitCode;

fn main() -> ExitCode {
    flash_coupons_attack::run(std::env::args_os().skip(1))
}
