use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode, CreateKind, DataChange, MetadataKind, RenameMode};
use notify::{Event, EventKind};

use super::{concerns, settle, start, Wake};
use crate::daemon::reload::{Reloader, Trigger, Verdict};

fn event(kind: EventKind, path: &str) -> Event {
    Event::new(kind).add_path(PathBuf::from(path))
}

#[test]
fn only_changes_to_the_config_file_count() {
    let files = [PathBuf::from("/etc/stack/d0.toml")];
    let write = EventKind::Modify(notify::event::ModifyKind::Data(DataChange::Any));
    let rename = EventKind::Modify(notify::event::ModifyKind::Name(RenameMode::To));
    let close_write = EventKind::Access(AccessKind::Close(AccessMode::Write));
    let create = EventKind::Create(CreateKind::File);
    for kind in [write, rename, close_write, create] {
        assert!(
            concerns(&event(kind, "/etc/stack/d0.toml"), &files),
            "{kind:?}"
        );
        assert!(
            !concerns(&event(kind, "/etc/stack/other.toml"), &files),
            "{kind:?}"
        );
        assert!(
            !concerns(&event(kind, "/etc/stack/.d0.toml.swp"), &files),
            "{kind:?}"
        );
    }
    let open = EventKind::Access(AccessKind::Open(AccessMode::Any));
    let read_done = EventKind::Access(AccessKind::Close(AccessMode::Read));
    let chmod = EventKind::Modify(notify::event::ModifyKind::Metadata(MetadataKind::Any));
    for kind in [open, read_done, chmod] {
        assert!(
            !concerns(&event(kind, "/etc/stack/d0.toml"), &files),
            "{kind:?}"
        );
    }
    // An editor's rename of its temporary file names both paths.
    let both = EventKind::Modify(notify::event::ModifyKind::Name(RenameMode::Both));
    let saved = event(both, "/etc/stack/.d0.toml.tmp").add_path(files[0].clone());
    assert!(concerns(&saved, &files));
    let overflow = Event::new(EventKind::Other).set_flag(notify::event::Flag::Rescan);
    assert!(concerns(&overflow, &files));
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
