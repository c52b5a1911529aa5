//! The clean-handover mark, `$UBLK_STACK_RUN_DIR/NAME.handover`: what lets a
//! new daemon resume a device whose stack has a `cache`.
//!
//! A cache may hold acknowledged writes in the daemon's memory only (write-back
//! mode, which a reload can turn on at any time), so after a crash they are
//! gone and resuming the device would let a filesystem read old data where it
//! wrote new. Only a clean handover may resume such a device: the old daemon,
//! once QUIESCE_DEV has ended its queues (the kernel holds every new request, and
//! no thread of the daemon serves the stack any more) and a flush of the whole
//! stack succeeded (every dirty block written back, every leaf flushed), writes
//! this mark naming the device (and its own pid, for the log). Nothing can write to the stack
//! after that flush, so nothing unflushed exists while the mark does.
//!
//! The mark is consumed: the daemon that takes the device over removes it just
//! before END_USER_RECOVERY lets requests through, the old daemon removes it
//! before it serves again itself (`resume`), and creating a new device removes
//! one left behind. A held device without a mark naming it was left by a
//! daemon that died: it is not resumed.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::daemon::control;

/// `$UBLK_STACK_RUN_DIR/NAME.handover`.
pub(super) fn path(name: &str) -> PathBuf {
    control::run_dir().join(format!("{name}.handover"))
}

/// What a mark says: the device handed over, and the daemon that flushed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Mark {
    pub(super) dev_id: u32,
    pub(super) pid: i32,
}

impl Mark {
    /// Whether this mark vouches for device `dev_id`, whose server the kernel
    /// names as `server_pid`: not a mark for another device, nor one while the
    /// kernel names another process as the server. (Once the server has let
    /// go, 7.3 reports -1; the mark's own pid then cannot be checked there.)
    pub(super) fn vouches_for(&self, dev_id: u32, server_pid: i32) -> bool {
        self.dev_id == dev_id && (server_pid <= 0 || server_pid == self.pid)
    }
}

/// The mark at `path`; `None` when there is none or it is not a whole mark.
pub(super) fn read(path: &Path) -> Option<Mark> {
    let text = std::fs::read_to_string(path).ok()?;
    let field = |key: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(key)?.strip_prefix(' '))
            .map(str::trim)
    };
    Some(Mark {
        dev_id: field("dev_id")?.parse().ok()?,
        pid: field("pid")?.parse().ok()?,
    })
}

/// Write `mark` at `path` durably: whole, then renamed, then the folder synced.
pub(super) fn write(path: &Path, mark: Mark) -> io::Result<()> {
    let partial = path.with_extension("handover.partial");
    let mut file = File::create(&partial)?;
    write!(file, "dev_id {}\npid {}\n", mark.dev_id, mark.pid)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&partial, path)?;
    sync_folder(path)
}

/// Remove the mark at `path`, durably; none there is fine.
pub(super) fn remove(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => sync_folder(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn sync_folder(path: &Path) -> io::Result<()> {
    let folder = path.parent().unwrap_or(Path::new("."));
    File::open(folder)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mark_round_trips_and_is_removed_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.handover");
        assert_eq!(read(&path), None);
        let mark = Mark {
            dev_id: 3,
            pid: 4242,
        };
        write(&path, mark).unwrap();
        assert_eq!(read(&path), Some(mark));
        assert!(!dir.path().join("c.handover.partial").exists());
        remove(&path).unwrap();
        assert_eq!(read(&path), None);
        remove(&path).unwrap();
    }

    #[test]
    fn a_partial_or_garbled_mark_is_no_mark() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.handover");
        for text in [
            "",
            "dev_id 3\n",
            "pid 7\n",
            "dev_id x\npid 7\n",
            "dev_id3\npid 7\n",
        ] {
            std::fs::write(&path, text).unwrap();
            assert_eq!(read(&path), None, "{text:?}");
        }
    }

    #[test]
    fn a_mark_vouches_only_for_its_device_and_server() {
        let mark = Mark { dev_id: 3, pid: 77 };
        assert!(mark.vouches_for(3, 77));
        assert!(mark.vouches_for(3, -1), "the server has let go");
        assert!(!mark.vouches_for(4, 77), "another device");
        assert!(!mark.vouches_for(4, -1), "another device");
        assert!(!mark.vouches_for(3, 78), "another server since");
    }
}
