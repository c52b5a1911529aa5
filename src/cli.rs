//! The command line: one function per subcommand, each returning its exit code.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "ublk-stack",
    version,
    about = "Stacked block devices from a TOML file, served through Linux ublk"
)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Compile CONFIG, open its leaves, create the device and serve it in the foreground.
    Up {
        config: PathBuf,
        /// Serve over NBD instead of ublk: unix:PATH or HOST:PORT.
        #[arg(long)]
        nbd: Option<String>,
    },
    /// Flush and remove a running device, and stop its daemon.
    Down { name: String },
    /// List running devices.
    List,
    /// Show a running device's layer tree, counters and health.
    Status {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Check config files and print each compiled tree with its live keys.
    Validate {
        #[arg(required = true)]
        configs: Vec<PathBuf>,
    },
    /// Re-read a running device's config now.
    Reload { name: String },
    /// Read everything, verify checksums, repair from mirrors.
    Scrub { name: String },
    /// Run a workload against the compiled stack in-process and print throughput.
    Bench {
        config: PathBuf,
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        #[arg(long, default_value = "randread")]
        pattern: String,
        #[arg(long, default_value = "4KiB")]
        bs: String,
        #[arg(long, default_value_t = 32)]
        qd: u32,
    },
}

pub fn run(args: Args) -> u8 {
    match args.command {
        Command::Validate { configs } => validate(&configs),
        other => {
            eprintln!("ublk-stack: {other:?}: not available in this build");
            1
        }
    }
}

/// `validate CONFIG...`: prints each valid file's tree to stdout and each invalid
/// file's errors to stderr. Reads the leaves' sizes but never creates or
/// changes one. Exit 0 if every file is valid, 1 otherwise.
fn validate(paths: &[PathBuf]) -> u8 {
    let mut all_valid = true;
    for (index, path) in paths.iter().enumerate() {
        if index > 0 {
            println!();
        }
        let shown = path.display().to_string();
        match crate::config::check_file(path) {
            Ok(checked) => print!("{}", crate::config::tree::render(&shown, &checked)),
            Err(errors) => {
                all_valid = false;
                eprintln!("{errors}");
                let count = errors.len();
                let noun = if count == 1 { "error" } else { "errors" };
                eprintln!("{shown}: invalid ({count} {noun})");
            }
        }
    }
    u8::from(!all_valid)
}
