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

use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode, ModifyKind};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};

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

/// The running reload thread. Dropping it stops the file watch; the thread
/// ends once every sender of [`Watch::waker`] is gone.
pub struct Watch {
    wake: Sender<Wake>,
    /// `None` when the folder could not be watched: SIGHUP and `reload` still work.
    _watcher: Option<RecommendedWatcher>,
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
        // Two names of one folder would be one inotify watch; notify keeps one.
        if !same_folder {
            paths.push(target);
        }
    }
    paths
}

fn watch(targets: &[PathBuf], wake: Sender<Wake>) -> notify::Result<RecommendedWatcher> {
    let files = targets.to_vec();
    let mut watcher =
        notify::recommended_watcher(move |event: notify::Result<Event>| match event {
            // A failed send means the daemon is stopping: nothing to reload.
            Ok(event) if concerns(&event, &files) => {
                let _ = wake.send(Wake::FileChanged);
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("watching the config: {e}"),
        })?;
    for file in targets {
        let folder = file.parent().unwrap_or(Path::new("/"));
        watcher.watch(folder, RecursiveMode::NonRecursive)?;
    }
    Ok(watcher)
}

/// Whether `event` may have changed one of `files`.
fn concerns(event: &Event, files: &[PathBuf]) -> bool {
    // The kernel's queue overflowed: anything may have changed.
    if event.need_rescan() {
        return true;
    }
    let changes = match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        // Opens and reads, ours included.
        EventKind::Access(_) => false,
        // chmod, touch: the content is the same.
        EventKind::Modify(ModifyKind::Metadata(_)) => false,
        EventKind::Modify(_) | EventKind::Create(_) | EventKind::Remove(_) => true,
        EventKind::Any | EventKind::Other => true,
    };
    changes && event.paths.iter().any(|path| files.contains(path))
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
