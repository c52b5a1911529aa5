//! The daemon's log: stderr, at `log.level` (or `RUST_LOG` when set at `up`),
//! behind a reload handle so that an edit of `log.level` takes effect live.

use std::io::IsTerminal;

use layers::plan::{LogLevel, Plan};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, reload, EnvFilter};

use super::reload::SetLogLevel;

/// Install the subscriber; the returned function changes its level. An edited
/// `log.level` wins over `RUST_LOG`: it is the newer instruction.
pub fn init(plan: &Plan) -> SetLogLevel {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(plan.log_level.as_str()));
    let (filter, handle) = reload::Layer::new(filter);
    // Fails only if a subscriber is already installed (tests): keep that one.
    drop(
        tracing_subscriber::registry()
            .with(filter)
            .with(
                fmt::layer()
                    .with_writer(std::io::stderr)
                    // Colour codes only for a person at a terminal, not in log files.
                    .with_ansi(std::io::stderr().is_terminal()),
            )
            .try_init(),
    );
    Box::new(move |level: LogLevel| {
        handle
            .reload(EnvFilter::new(level.as_str()))
            .map_err(|e| format!("cannot change the log level: {e}"))
    })
}
