//! The reload thread: changes of the config file and SIGHUP both wake it, and
//! it runs [`Reloader::reload`].
//!
//! The watch is on the file's folder, not the file: editors save by writing a
//! new file and renaming it over the old one, which a watch on the old file
//! would lose. Events for other files in the folder are dropped, and so are
//! reads (the reload itself opens the file). A save is a burst of events
//! (create, writes, close, rename), so the thread waits until the folder has
//! been quiet for [`QUIET`] before it reads the file, and at most [`MAX_WAIT`]
//! for a writer that never stops.
//!
//! Only the events that end a change are watched ([`MASK`]): a close after
//! writing, a rename, a create or delete. Not each write (IN_MODIFY): the
//! folder may hold files the daemon serves, and the kernel would queue an
//! event and wake the watching thread for every write a leaf makes to them
//! (a `file` leaf on tmpfs does thousands a second, and each wake-up took the
//! queue thread's CPU: benches/vm/README.md, "4 KiB random writes on tmpfs").
//! A change written in place is seen when its writer closes the file.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};

use super::reload::{Reloader, Trigger};

/// How long the folder must be quiet after a change before the file is read.
pub const QUIET: Duration = Duration::from_millis(200);
/// The longest a burst of changes can put a reload off.
pub const MAX_WAIT: Duration = Duration::from_secs(2);

/// What wakes the reload thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wake {
    FileChanged,
    Sighup,
}

/// What the watch asks inotify for on the config's folder (see the module
/// comment for what is left out, and why).
pub const MASK: AddWatchFlags = AddWatchFlags::IN_CLOSE_WRITE
    .union(AddWatchFlags::IN_MOVED_TO)
    .union(AddWatchFlags::IN_MOVED_FROM)
    .union(AddWatchFlags::IN_CREATE)
    .union(AddWatchFlags::IN_DELETE);

/// The name of the thread that reads the folder's events.
const WATCH_THREAD: &str = "config-watch";

/// The running reload thread. Dropping it stops the file watch; the thread
/// ends once every sender of [`Watch::waker`] is gone.
pub struct Watch {
    wake: Sender<Wake>,
    /// `None` when the folder could not be watched: SIGHUP and `reload` still work.
    _watcher: Option<FolderWatch>,
}

/// The inotify watches on the config's folders; dropping it removes them,
/// which ends the thread reading their events.
struct FolderWatch {
    inotify: Arc<Inotify>,
    watches: Vec<WatchDescriptor>,
}

impl Drop for FolderWatch {
    fn drop(&mut self) {
        for &wd in &self.watches {
            // Each removal queues IN_IGNORED, which the reading thread counts.
            let _ = self.inotify.rm_watch(wd);
        }
    }
}

impl Watch {
    /// For the signal thread: send `Wake::Sighup` on SIGHUP.
    pub fn waker(&self) -> Sender<Wake> {
        self.wake.clone()
    }
}

/// Start the reload thread and watch `reloader`'s config file.
pub fn start(reloader: Arc<Reloader>) -> io::Result<Watch> {
    let (wake, woken) = mpsc::channel();
    let targets = watched_paths(reloader.config());
    let watcher = match watch(&targets, wake.clone()) {
        Ok(watcher) => Some(watcher),
        Err(e) => {
            tracing::warn!(
                "cannot watch {}: {e}; reload with SIGHUP or `ublk-stack reload`",
                reloader.config().display()
            );
            None
        }
    };
    std::thread::Builder::new()
        .name("reload".into())
        .spawn(move || run(&reloader, &woken))?;
    Ok(Watch {
        wake,
        _watcher: watcher,
    })
}

/// The config file as named, and the file it links to when it is a symlink
/// (a config kept in a git checkout and linked from /etc, say).
fn watched_paths(config: &Path) -> Vec<PathBuf> {
    let mut paths = vec![config.to_path_buf()];
    if let Ok(target) = std::fs::canonicalize(config) {
        let same_folder = match (config.parent(), target.parent()) {
            (Some(a), Some(b)) => std::fs::canonicalize(a).is_ok_and(|a| a == b),
            _ => true,
        };
        // Two names of one folder would be one inotify watch.
        if !same_folder {
            paths.push(target);
        }
    }
    paths
}

/// Watch the folders of `targets` and send `Wake::FileChanged` to `wake` on
/// every event that concerns one of them.
fn watch(targets: &[PathBuf], wake: Sender<Wake>) -> io::Result<FolderWatch> {
    let inotify = Arc::new(Inotify::init(InitFlags::IN_CLOEXEC)?);
    let mut folders = Vec::new();
    let mut watch = FolderWatch {
        inotify: inotify.clone(),
        watches: Vec::new(),
    };
    for file in targets {
        let folder = file.parent().unwrap_or(Path::new("/"));
        let wd = inotify
            .add_watch(folder, MASK)
            .map_err(|e| io::Error::other(format!("{}: {e}", folder.display())))?;
        // Two names of one folder are one watch, removed (and ended) once.
        if !watch.watches.contains(&wd) {
            watch.watches.push(wd);
            folders.push((wd, folder.to_path_buf()));
        }
    }
    let files = targets.to_vec();
    std::thread::Builder::new()
        .name(WATCH_THREAD.into())
        .spawn(move || read_events(&inotify, &folders, &files, &wake))?;
    Ok(watch)
}

/// Until every watch is removed (or the daemon stops listening): wake the
/// reload thread for each event that concerns one of `files`.
fn read_events(
    inotify: &Inotify,
    folders: &[(WatchDescriptor, PathBuf)],
    files: &[PathBuf],
    wake: &Sender<Wake>,
) {
    let mut live = folders.len();
    while live > 0 {
        let events = match inotify.read_events() {
            Ok(events) => events,
            Err(Errno::EINTR) => continue,
            Err(e) => {
                tracing::warn!(
                    "watching the config: {e}; reload with SIGHUP or `ublk-stack reload`"
                );
                return;
            }
        };
        for event in events {
            if event.mask.contains(AddWatchFlags::IN_IGNORED) {
                live -= 1;
                continue;
            }
            let path = folders
                .iter()
                .find(|(wd, _)| *wd == event.wd)
                .zip(event.name.as_ref())
                .map(|((_, folder), name)| folder.join(name));
            // A failed send means the daemon is stopping: nothing to reload.
            if concerns(event.mask, path.as_deref(), files) && wake.send(Wake::FileChanged).is_err()
            {
                return;
            }
        }
    }
}

/// Whether an event of `mask` on `path` may have changed one of `files`.
fn concerns(mask: AddWatchFlags, path: Option<&Path>, files: &[PathBuf]) -> bool {
    // The kernel's queue overflowed: anything may have changed.
    if mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
        return true;
    }
    mask.intersects(MASK) && path.is_some_and(|path| files.iter().any(|f| f == path))
}

fn run(reloader: &Reloader, woken: &Receiver<Wake>) {
    while let Ok(first) = woken.recv() {
        let mut sighup = first == Wake::Sighup;
        if first == Wake::FileChanged {
            match settle(woken) {
                Some(also_sighup) => sighup |= also_sighup,
                None => return,
            }
        }
        if sighup {
            reloader.reload(Trigger::Sighup);
        } else if reloader.config().exists() {
            reloader.reload(Trigger::FileChanged);
        } else {
            // Deleted, or a save half done: the create that follows wakes us.
            tracing::info!(
                "{} is gone; the running config stays until it is back",
                reloader.config().display()
            );
        }
    }
}

/// Wait until no change has come for [`QUIET`] (or [`MAX_WAIT`] passed).
/// Returns whether a SIGHUP came meanwhile, or `None` when the daemon is done.
fn settle(woken: &Receiver<Wake>) -> Option<bool> {
    let deadline = Instant::now() + MAX_WAIT;
    let mut sighup = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Some(sighup);
        }
        match woken.recv_timeout(QUIET.min(left)) {
            Ok(Wake::FileChanged) => {}
            Ok(Wake::Sighup) => sighup = true,
            Err(RecvTimeoutError::Timeout) => return Some(sighup),
            Err(RecvTimeoutError::Disconnected) => return None,
        }
    }
}

#[cfg(test)]
mod tests;
