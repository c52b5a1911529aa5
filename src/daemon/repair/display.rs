//! How `scrub` and `readd` show a long run while it goes on: with `--json`,
//! each progress line as one JSON line on stdout; otherwise a progress bar
//! (indicatif) on stderr when stderr is a terminal, and nothing when it is
//! not (a log or a pipe gets only the summary the command prints at the end;
//! the daemon's log has the progress by tens of percent).

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use super::progress::{Event, Progress};

pub enum Display {
    Json,
    Bar(ProgressBar),
    Quiet,
}

impl Display {
    /// For a run named `label` (`scrub mirror0`).
    pub fn new(json: bool, label: &str) -> Display {
        if json {
            return Display::Json;
        }
        if !std::io::stderr().is_terminal() {
            return Display::Quiet;
        }
        // Drawn from the first progress line on, when the total is known.
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden());
        // The bar takes the width the rest leaves, so the line never wraps.
        let template = "{prefix} [{wide_bar}] {percent:>3}% {bytes}/{total_bytes} \
                        {binary_bytes_per_sec} ETA {eta}{msg}";
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(label.to_string());
        Display::Bar(bar)
    }

    /// A progress line from the daemon, and what to say after the bar (from
    /// its second character on: the first separates it).
    pub fn progress<C: Serialize>(&self, event: &Event<C>, note: String) {
        match self {
            Display::Json => print_json(event),
            Display::Bar(bar) => {
                let Progress { done, total, .. } = event.progress;
                if bar.is_hidden() {
                    bar.set_draw_target(ProgressDrawTarget::stderr());
                }
                bar.set_length(total);
                bar.set_position(done);
                bar.set_message(note);
            }
            Display::Quiet => {}
        }
    }

    /// The run is over: the bar goes, so the summary stands alone.
    pub fn finish(&self) {
        if let Display::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}

/// One JSON line on stdout.
pub fn print_json(value: &impl Serialize) {
    match serde_json::to_string(value) {
        Ok(line) => println!("{line}"),
        Err(e) => eprintln!("ublk-stack: {e}"),
    }
}
