//! The daemon's record of its running or last scrub: one scrub at a time, its
//! progress lines, and what `status` shows of it.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use layers::mirror::ScrubReport;

use super::progress::{Event, EventKind, Progress, ScrubCounts, ScrubState, ScrubStatus};

#[derive(Default)]
pub struct ScrubRun {
    record: Mutex<Option<Record>>,
}

struct Record {
    started: Instant,
    started_unix: u64,
    total: u64,
    /// Bytes checked and what was found, so far.
    found: ScrubReport,
    state: ScrubState,
    error: Option<String>,
    /// How long it took, once it ended.
    took: Option<Duration>,
}

impl ScrubRun {
    /// Start a scrub of `total` bytes; refused while another one runs.
    pub fn begin(&self, total: u64) -> Result<(), String> {
        let mut record = self.lock();
        if let Some(running) = record.as_ref().filter(|r| r.state == ScrubState::Running) {
            return Err(format!(
                "a scrub is already running ({} of {} bytes checked); `status` shows its progress",
                running.found.bytes_checked, running.total
            ));
        }
        *record = Some(Record {
            started: Instant::now(),
            started_unix: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            total,
            found: ScrubReport::default(),
            state: ScrubState::Running,
            error: None,
            took: None,
        });
        Ok(())
    }

    /// Count what one step checked and found.
    pub fn advance(&self, step: &ScrubReport) {
        if let Some(record) = self.lock().as_mut() {
            record.found.add(step);
        }
    }

    /// The scrub ended, having failed with `error` or not.
    pub fn end(&self, error: Option<String>) {
        if let Some(record) = self.lock().as_mut() {
            record.took = Some(record.started.elapsed());
            record.state = match error {
                Some(_) => ScrubState::Failed,
                None => ScrubState::Done,
            };
            record.error = error;
        }
    }

    /// The running or last scrub; `None` before the first.
    pub fn status(&self) -> Option<ScrubStatus> {
        self.lock().as_ref().map(|r| ScrubStatus {
            state: r.state,
            started: r.started_unix,
            progress: r.progress(),
            counts: r.counts(),
            error: r.error.clone(),
        })
    }

    /// A progress line (or the last one) of the running scrub.
    pub fn event(&self, event: EventKind) -> Option<Event<ScrubCounts>> {
        self.lock().as_ref().map(|r| Event {
            event,
            progress: r.progress(),
            counts: r.counts(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Record>> {
        self.record.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Record {
    fn progress(&self) -> Progress {
        let elapsed = self.took.unwrap_or_else(|| self.started.elapsed());
        Progress::new(self.found.bytes_checked, self.total, elapsed)
    }

    fn counts(&self) -> ScrubCounts {
        ScrubCounts {
            repaired: self.found.repaired,
            mismatched: self.found.mismatched,
            unrepairable: self.found.unrepairable,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_scrub_at_a_time_and_its_counts_add_up() {
        let run = ScrubRun::default();
        assert!(run.status().is_none());
        run.begin(8 << 20).unwrap();
        let step = ScrubReport {
            bytes_checked: 1 << 20,
            repaired: 2,
            mismatched: 1,
            unrepairable: 0,
        };
        run.advance(&step);
        run.advance(&step);
        let error = run.begin(8 << 20).unwrap_err();
        assert!(error.contains("already running"), "{error}");
        let status = run.status().unwrap();
        assert_eq!(status.state, ScrubState::Running);
        assert_eq!(
            (status.progress.done, status.progress.total),
            (2 << 20, 8 << 20)
        );
        assert_eq!(status.counts.repaired, 4);
        run.end(Some("no leg is ok".into()));
        let status = run.status().unwrap();
        assert_eq!(status.state, ScrubState::Failed);
        assert_eq!(status.error.as_deref(), Some("no leg is ok"));
        run.begin(1).unwrap();
        assert_eq!(run.event(EventKind::Progress).unwrap().progress.done, 0);
    }
}
