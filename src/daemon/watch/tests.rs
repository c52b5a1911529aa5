use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::inotify::AddWatchFlags;

use super::{concerns, settle, start, watch, Wake, MASK, WATCH_THREAD};
use crate::daemon::reload::{Reloader, Trigger, Verdict};

#[test]
fn only_changes_to_the_config_file_count() {
    let files = [PathBuf::from("/etc/stack/d0.toml")];
    let ours = Some(Path::new("/etc/stack/d0.toml"));
    for kind in [
        AddWatchFlags::IN_CLOSE_WRITE,
        AddWatchFlags::IN_MOVED_TO,
        AddWatchFlags::IN_MOVED_FROM,
        AddWatchFlags::IN_CREATE,
        AddWatchFlags::IN_DELETE,
    ] {
        assert!(concerns(kind, ours, &files), "{kind:?}");
        for other in ["/etc/stack/other.toml", "/etc/stack/.d0.toml.swp"] {
            assert!(!concerns(kind, Some(Path::new(other)), &files), "{kind:?}");
        }
    }
    // Never asked for, so never counted should they come.
    for kind in [
        AddWatchFlags::IN_OPEN,
        AddWatchFlags::IN_CLOSE_NOWRITE,
        AddWatchFlags::IN_ATTRIB,
        AddWatchFlags::IN_MODIFY,
    ] {
        assert!(!MASK.intersects(kind), "{kind:?}");
        assert!(!concerns(kind, ours, &files), "{kind:?}");
    }
    assert!(concerns(AddWatchFlags::IN_Q_OVERFLOW, None, &files));
}

/// The watch threads' voluntary context switches: how often they slept and
/// woke (summed, should other tests of this process watch too).
fn watch_thread_wakeups() -> u64 {
    let tasks = std::fs::read_dir("/proc/self/task").unwrap();
    let mut found = Vec::new();
    for task in tasks {
        let task = task.unwrap().path();
        let Ok(comm) = std::fs::read_to_string(task.join("comm")) else {
            continue;
        };
        if comm.trim_end() != WATCH_THREAD {
            continue;
        }
        let status = std::fs::read_to_string(task.join("status")).unwrap();
        let switches = status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .unwrap();
        found.push(switches.trim().parse::<u64>().unwrap());
    }
    assert!(!found.is_empty(), "no {WATCH_THREAD} thread");
    found.iter().sum()
}

/// A leaf's file next to the config, written the way a `file` leaf on tmpfs
/// writes (pwrite after pwrite, never closed), must not wake the watch: that
/// was an event and a wake-up per write, on the queue thread's CPU.
#[test]
fn writes_to_another_file_in_the_folder_do_not_wake_the_watch() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("w1.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let leaf = std::fs::File::create(dir.path().join("leaf.img")).unwrap();
    let (tx, rx) = mpsc::channel();
    let watch = watch(std::slice::from_ref(&config), tx).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let before = watch_thread_wakeups();
    for i in 0..2000u64 {
        leaf.write_at(&[0xaa; 4096], (i % 64) * 4096).unwrap();
        if i % 20 == 0 {
            // Let the watch thread run, had it been woken.
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    std::thread::sleep(Duration::from_millis(50));
    let woke = watch_thread_wakeups() - before;
    assert!(
        woke <= 5,
        "2000 writes to leaf.img woke the watch {woke} times"
    );
    assert!(rx.try_recv().is_err(), "leaf.img is not the config");
    // The config itself, written in place, still counts once closed.
    std::fs::write(&config, CONFIG).unwrap();
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(5)),
        Ok(Wake::FileChanged)
    );
    drop(watch);
}

#[test]
fn a_burst_settles_once_quiet() {
    let (tx, rx) = mpsc::channel();
    let sender = std::thread::spawn(move || {
        for _ in 0..5 {
            tx.send(Wake::FileChanged).unwrap();
            std::thread::sleep(Duration::from_millis(50));
        }
        tx.send(Wake::Sighup).unwrap();
        // Keep the channel open past the quiet period.
        std::thread::sleep(Duration::from_millis(600));
    });
    let begun = Instant::now();
    assert_eq!(settle(&rx), Some(true));
    let waited = begun.elapsed();
    assert!(waited >= Duration::from_millis(400), "{waited:?}");
    assert!(waited < Duration::from_millis(1500), "{waited:?}");
    sender.join().unwrap();
}

const CONFIG: &str = r#"version = 1
[device]
name = "w0"
top = "m"
queues = 1
[layers.m]
type = "mirror"
legs = ["a", "b"]
read_policy = "round-robin"
[layers.a]
type = "memory"
size = "1MiB"
[layers.b]
type = "memory"
size = "1MiB"
"#;

/// Wait up to 5 s for the reload thread to record a reload of generation `generation`.
fn wait_generation(reloader: &Reloader, generation: u64) -> Duration {
    let begun = Instant::now();
    while reloader.record().generation < generation {
        assert!(
            begun.elapsed() < Duration::from_secs(5),
            "{:?}",
            reloader.record()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    begun.elapsed()
}

#[test]
fn an_editor_save_by_rename_reloads_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w0.toml");
    std::fs::write(&path, CONFIG).unwrap();
    let plan = crate::config::load(&path).unwrap();
    let stack = Arc::new(layers::compile(&plan).unwrap());
    let reloader = Arc::new(Reloader::new(
        path.clone(),
        plan,
        stack,
        Box::new(|_| Ok(())),
    ));
    let watch = start(reloader.clone()).unwrap();

    // Save the way editors do: a new file renamed over the old one.
    let temporary = dir.path().join(".w0.toml.new");
    std::fs::write(&temporary, CONFIG.replace("round-robin", "first")).unwrap();
    std::fs::rename(&temporary, &path).unwrap();
    let took = wait_generation(&reloader, 2);
    assert!(took >= super::QUIET, "{took:?}");
    let last = reloader.record().last.unwrap();
    assert_eq!(last.trigger, Trigger::FileChanged);
    // The reload's own read of the file must not wake the thread again.
    std::thread::sleep(Duration::from_millis(600));
    let again = reloader.record().last.unwrap();
    assert_eq!((again.verdict, again.time), (Verdict::Applied, last.time));

    // Written in place this time, and SIGHUP goes through the same thread.
    std::fs::write(&path, CONFIG.replace("round-robin", "least-pending")).unwrap();
    wait_generation(&reloader, 3);
    watch.waker().send(Wake::Sighup).unwrap();
    let begun = Instant::now();
    while reloader.record().last.unwrap().trigger != Trigger::Sighup {
        assert!(begun.elapsed() < Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(reloader.record().last.unwrap().verdict, Verdict::Unchanged);
}
