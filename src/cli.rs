//! The command line: one function per subcommand, each returning its exit code.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::daemon::front_end::{FrontEnd, Nbd, Ublk};

/// `--version`: the crate version and the commit it was built from.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("UBLK_STACK_COMMIT"),
    ")"
);

#[derive(Parser, Debug)]
#[command(
    name = "ublk-stack",
    version = VERSION,
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
        /// Serve Prometheus metrics at http://ADDR/metrics: PORT (this host
        /// only, 127.0.0.1) or HOST:PORT (0.0.0.0:PORT for every interface).
        #[arg(long, value_name = "ADDR")]
        metrics: Option<String>,
        #[command(flatten)]
        nbd_limits: crate::nbd::NbdOptions,
    },
    /// Flush and remove a running device, and stop its daemon. Refused (exit 1)
    /// while the device is in use: mounted, or open in a process.
    Down {
        name: String,
        /// Remove the device even while it is in use (its users get I/O errors).
        #[arg(long)]
        force: bool,
    },
    /// List running devices.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show a running device's layer tree, counters and health.
    Status {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Show the ublk features the running kernel offers and those the daemon
    /// uses (exit 0, also when ublk_drv is not loaded; 1 when they cannot be read).
    Features {
        #[arg(long)]
        json: bool,
    },
    /// Check config files and print each compiled tree with its live keys.
    Validate {
        #[arg(required = true)]
        configs: Vec<PathBuf>,
    },
    /// Show what applying CONFIG would do (a reload of the running device of
    /// its name, or `up`), applying nothing. Exit 0: nothing to do; 2: changes; 1: refused.
    Plan {
        config: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Re-read a running device's config now.
    Reload { name: String },
    /// Hand a running ublk device to a new daemon process (a new binary, say)
    /// without removing it: its I/O pauses and none fails. Needs a kernel with
    /// UBLK_F_QUIESCE (Linux 6.16+); refused, changing nothing, otherwise.
    Upgrade {
        name: String,
        /// The executable the new daemon runs (default: this one). It must
        /// pass `validate` on the device's config first.
        #[arg(long, value_name = "PATH")]
        binary: Option<PathBuf>,
    },
    /// Read everything, verify checksums, repair from mirrors; show progress.
    Scrub {
        name: String,
        /// Print progress and the result as JSON lines.
        #[arg(long)]
        json: bool,
    },
    /// Put a failed leg of a mirror back and rebuild it while the device runs;
    /// show progress until the rebuild is over.
    Readd {
        name: String,
        /// The mirror layer's name in the config.
        mirror: String,
        /// The leg's position in the mirror's `legs` (0 for the first).
        leg: usize,
        /// Print progress and the result as JSON lines.
        #[arg(long)]
        json: bool,
        /// Return once the rebuild has started.
        #[arg(long)]
        no_wait: bool,
    },
    /// Make and manage the keys of crypt layers.
    Key {
        #[command(subcommand)]
        command: crate::keys::KeyCommand,
    },
    /// Print a shell completion script (install it where your shell looks).
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff), for `man -l -` or /usr/share/man/man1/ublk-stack.1.
    Manpage,
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
        /// Queue threads driving the stack (the primitives and the plain loop use as many).
        #[arg(long, default_value_t = 1)]
        queues: u16,
        /// What writes carry and --prefill stores: random | text.
        #[arg(long, default_value = "random")]
        data: String,
        /// Write the whole device once before a read workload.
        #[arg(long)]
        prefill: bool,
        /// Confine the workload to the first SIZE bytes (a hot set).
        #[arg(long)]
        hot: Option<String>,
        /// Warm the hot set, scan the whole device once, then measure.
        #[arg(long)]
        scan: bool,
    },
}

pub fn run(args: Args) -> u8 {
    match args.command {
        Command::Up {
            config,
            nbd: None,
            metrics,
            ..
        } => up(&config, &mut Ublk::new(), metrics.as_deref()),
        Command::Up {
            config,
            nbd: Some(address),
            nbd_limits,
            metrics,
        } => up(
            &config,
            &mut Nbd::new(&address, nbd_limits),
            metrics.as_deref(),
        ),
        Command::Down { name, force } => down(&name, force),
        Command::Features { json } => crate::daemon::features::command(json),
        Command::List { json } => list(json),
        Command::Status { name, json } => status(&name, json),
        Command::Validate { configs } => validate(&configs),
        Command::Scrub { name, json } => crate::daemon::repair::scrub_command(&name, json),
        Command::Readd {
            name,
            mirror,
            leg,
            json,
            no_wait,
        } => crate::daemon::repair::readd_command(&name, &mirror, leg, json, no_wait),
        Command::Reload { name } => reload(&name),
        Command::Upgrade { name, binary } => {
            crate::daemon::upgrade::command(&name, binary.as_deref())
        }
        Command::Plan { config, json } => crate::daemon::plan::command(&config, json),
        Command::Key { command } => crate::keys::run(command),
        Command::Completions { shell } => completions(shell),
        Command::Manpage => manpage(),
        Command::Bench {
            config,
            seconds,
            pattern,
            bs,
            qd,
            queues,
            data,
            prefill,
            hot,
            scan,
        } => bench(
            &config,
            &BenchArgs {
                seconds,
                pattern,
                bs,
                qd,
                queues,
                data,
                prefill,
                hot,
                scan,
            },
        ),
    }
}

fn up(config: &std::path::Path, front: &mut dyn FrontEnd, metrics: Option<&str>) -> u8 {
    crate::daemon::lifecycle::up(config, front, metrics)
}

fn down(name: &str, force: bool) -> u8 {
    crate::daemon::lifecycle::down(name, force)
}

fn list(json: bool) -> u8 {
    crate::daemon::list::list(json)
}

fn status(name: &str, json: bool) -> u8 {
    crate::daemon::status::show(name, json)
}

fn completions(shell: clap_complete::Shell) -> u8 {
    use clap::CommandFactory;
    // Generated whole, then written: the generator panics on a write error.
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Args::command(), "ublk-stack", &mut script);
    write_stdout(&script)
}

fn manpage() -> u8 {
    use clap::CommandFactory;
    let mut out = Vec::new();
    if let Err(e) = clap_mangen::Man::new(Args::command()).render(&mut out) {
        eprintln!("ublk-stack: rendering the man page: {e}");
        return 1;
    }
    write_stdout(&out)
}

fn write_stdout(bytes: &[u8]) -> u8 {
    match crate::stdout::write_all(bytes) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("ublk-stack: writing to stdout: {e}");
            1
        }
    }
}

fn reload(name: &str) -> u8 {
    crate::daemon::reload::command(name)
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

/// The options of `bench`, as typed.
struct BenchArgs {
    seconds: f64,
    pattern: String,
    bs: String,
    qd: u32,
    queues: u16,
    data: String,
    prefill: bool,
    hot: Option<String>,
    scan: bool,
}

/// `bench CONFIG ...`: compile the stack in-process and drive it.
fn bench(config: &std::path::Path, args: &BenchArgs) -> u8 {
    use crate::bench::{DataKind, Options, Pattern};
    let fail = |msg: String| {
        eprintln!("ublk-stack bench: {msg}");
        1
    };
    let Some(pattern) = Pattern::parse(&args.pattern) else {
        return fail(format!(
            "--pattern {}: use one of {}",
            args.pattern,
            Pattern::NAMES.join(", ")
        ));
    };
    let Some(data) = DataKind::parse(&args.data) else {
        return fail(format!(
            "--data {}: use one of {}",
            args.data,
            DataKind::NAMES.join(", ")
        ));
    };
    let size = |flag: &str, text: &str| {
        crate::config::size::parse_size(text).map_err(|e| format!("--{flag} {text}: {e}"))
    };
    let bs = match size("bs", &args.bs) {
        Ok(bs) => bs,
        Err(e) => return fail(e),
    };
    let hot = match args.hot.as_deref().map(|h| size("hot", h)).transpose() {
        Ok(hot) => hot,
        Err(e) => return fail(e),
    };
    let (seconds, qd, queues) = (args.seconds, args.qd, args.queues);
    if !(seconds > 0.0 && seconds <= 3600.0) || qd == 0 || qd > 4096 || queues == 0 || queues > 64 {
        return fail("--seconds must be in (0, 3600], --qd in 1..=4096, --queues in 1..=64".into());
    }
    let plan = match crate::config::check_file(config) {
        Ok(checked) => checked.plan,
        Err(errors) => {
            eprintln!("{errors}");
            return 1;
        }
    };
    let stack = match layers::compile(&plan) {
        Ok(stack) => std::sync::Arc::new(stack),
        Err(e) => return fail(format!("{}: {e}", config.display())),
    };
    let opts = Options {
        seconds,
        pattern,
        bs,
        qd,
        queues,
        data,
        prefill: args.prefill,
        hot,
        scan: args.scan,
    };
    match crate::bench::report(&plan, stack, &opts) {
        Ok(()) => 0,
        Err(e) => fail(e),
    }
}
