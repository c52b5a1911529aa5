//! How far a scrub or a rebuild has come: the lines the daemon streams to
//! `scrub` and `readd` (which print them as they are with `--json`), and the
//! scrub `status` shows. Bytes are bytes and times seconds, so scripts never
//! parse units.

use std::time::Duration;

use layers::units::size::format_human;
use serde::{Deserialize, Serialize};

/// Bytes done of a total, and the rate so far.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Bytes checked (scrub) or copied (rebuild) so far.
    pub done: u64,
    /// Bytes to check or copy in all.
    pub total: u64,
    pub elapsed_s: f64,
    pub rate_bytes_per_s: f64,
    /// Seconds left at the rate so far; `None` before the first byte.
    pub eta_s: Option<f64>,
}

impl Progress {
    pub fn new(done: u64, total: u64, elapsed: Duration) -> Progress {
        let elapsed_s = elapsed.as_secs_f64();
        let rate_bytes_per_s = if elapsed_s > 0.0 {
            done as f64 / elapsed_s
        } else {
            0.0
        };
        let eta_s =
            (rate_bytes_per_s > 0.0).then(|| total.saturating_sub(done) as f64 / rate_bytes_per_s);
        Progress {
            done,
            total,
            elapsed_s,
            rate_bytes_per_s,
            eta_s,
        }
    }
}

impl Progress {
    /// Done of total in percent.
    pub fn percent(&self) -> u64 {
        percent(self.done, self.total)
    }

    /// `37% (24.0 MiB of 64 MiB, 12.0 MiB/s, 3 s left)`, for people.
    pub fn describe(&self) -> String {
        let left = match self.eta_s {
            Some(eta) => format!(", {} left", seconds(eta)),
            None => String::new(),
        };
        format!(
            "{}% ({} of {}, {}{left})",
            self.percent(),
            format_human(self.done),
            format_human(self.total),
            rate(self.rate_bytes_per_s),
        )
    }

    /// `64 MiB in 5.3 s (12.0 MiB/s)`, for people, once it is over.
    pub fn describe_done(&self) -> String {
        format!(
            "{} in {} ({})",
            format_human(self.done),
            seconds(self.elapsed_s),
            rate(self.rate_bytes_per_s)
        )
    }
}

/// `done` of `total` in percent (100 for nothing to do).
pub fn percent(done: u64, total: u64) -> u64 {
    (u128::from(done.min(total)) * 100)
        .checked_div(u128::from(total))
        .map_or(100, |p| p as u64)
}

/// `12.0 MiB/s`.
pub fn rate(bytes_per_s: f64) -> String {
    // Precision loss is fine: this is only for display.
    format!("{}/s", format_human(bytes_per_s as u64))
}

/// `0.4 s`, `12 s`, `3 min 20 s`, `2 h 5 min`.
pub fn seconds(s: f64) -> String {
    let whole = s.round() as u64;
    match whole {
        _ if s < 10.0 => format!("{s:.1} s"),
        0..=59 => format!("{whole} s"),
        60..=3599 => format!("{} min {} s", whole / 60, whole % 60),
        _ => format!("{} h {} min", whole / 3600, whole % 3600 / 60),
    }
}

/// What a scrub found so far, in blocks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScrubCounts {
    /// Copies that failed to read (corrupt or an I/O error), rewritten.
    pub repaired: u64,
    /// Copies that read but differed from the first good one, rewritten.
    pub mismatched: u64,
    /// Blocks no copy of which reads.
    pub unrepairable: u64,
}

/// What a rebuild met so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResyncCounts {
    /// Blocks no ok leg could read: not copied.
    pub unreadable_blocks: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// Still running.
    Progress,
    /// Finished: the last line.
    Done,
}

/// One line: `{"event": "progress", "done": …, "total": …, "rate_bytes_per_s":
/// …, …}` with the counts of a scrub (`ScrubCounts`) or a rebuild
/// (`ResyncCounts`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event<C> {
    pub event: EventKind,
    #[serde(flatten)]
    pub progress: Progress,
    #[serde(flatten)]
    pub counts: C,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScrubState {
    Running,
    Done,
    Failed,
}

impl ScrubCounts {
    /// `0 repaired, 0 mismatched copies rewritten, 0 unrepairable`.
    pub fn describe(&self) -> String {
        format!(
            "{} repaired, {} mismatched copies rewritten, {} unrepairable",
            self.repaired, self.mismatched, self.unrepairable
        )
    }
}

/// The running or last scrub, as `status` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScrubStatus {
    pub state: ScrubState,
    /// When it started, in seconds since the Unix epoch.
    pub started: u64,
    #[serde(flatten)]
    pub progress: Progress,
    #[serde(flatten)]
    pub counts: ScrubCounts,
    /// Why it failed; `None` unless `state` is `failed`.
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_and_eta_follow_from_done_total_and_time() {
        let p = Progress::new(1 << 20, 4 << 20, Duration::from_secs(2));
        assert_eq!(p.rate_bytes_per_s, 524_288.0);
        assert_eq!(p.eta_s, Some(6.0));
        let start = Progress::new(0, 4 << 20, Duration::ZERO);
        assert_eq!((start.rate_bytes_per_s, start.eta_s), (0.0, None));
    }

    #[test]
    fn people_read_percent_sizes_rate_and_time_left() {
        let p = Progress::new(24 << 20, 64 << 20, Duration::from_secs(2));
        assert_eq!(p.describe(), "37% (24 MiB of 64 MiB, 12 MiB/s, 3.3 s left)");
        assert_eq!(p.describe_done(), "24 MiB in 2.0 s (12 MiB/s)");
        assert_eq!(Progress::new(0, 0, Duration::ZERO).percent(), 100);
        assert_eq!(seconds(75.0), "1 min 15 s");
        assert_eq!(seconds(7300.0), "2 h 1 min");
    }

    #[test]
    fn a_line_is_flat_json_with_its_event() {
        let line = Event {
            event: EventKind::Done,
            progress: Progress::new(8, 8, Duration::from_secs(1)),
            counts: ScrubCounts::default(),
        };
        let json = serde_json::to_value(line).unwrap();
        assert_eq!(json["event"], "done");
        assert_eq!(json["done"], 8);
        assert_eq!(json["total"], 8);
        assert_eq!(json["rate_bytes_per_s"], 8.0);
        assert_eq!(json["unrepairable"], 0);
        let back: Event<ScrubCounts> = serde_json::from_value(json).unwrap();
        assert_eq!(back, line);
    }
}
