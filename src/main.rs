//! `ublk-stack`: stacked block devices from a TOML file.
#![deny(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = ublk_stack::cli::Args::parse();
    ExitCode::from(ublk_stack::cli::run(args))
}
