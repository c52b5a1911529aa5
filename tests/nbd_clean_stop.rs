//! A clean stop keeps every acknowledged write. Over a write-back `cache`, a
//! write is acknowledged while its data sits only in the daemon's memory; a
//! client that never sent FLUSH still finds its data on the leaf after the
//! daemon stopped on SIGTERM, SIGINT or `down`, because the stop flushes the
//! stack before it exits. The leaf is a plain `file` (no metadata), so the test
//! reads the data straight from the file.

use std::os::unix::fs::FileExt;
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

#[path = "support/nbd.rs"]
mod support;
use support::{handshake, read_block, write_block, Daemon, BIN};

const DEVICE_BYTES: u64 = 16 << 20;

/// Offsets written, spread over the device, and what each block holds.
fn blocks() -> Vec<(u64, Vec<u8>)> {
    (0..16u64)
        .map(|i| {
            let offset = i * 1_048_576 + (i % 4) * 4096;
            let fill = 0x40 + i as u8;
            (offset, vec![fill; 4096])
        })
        .collect()
}

/// Start a write-back cache over a file leaf, write without FLUSH, stop the
/// daemon with `stop`, and check the file holds every write.
fn writes_survive(name: &str, stop: impl FnOnce(&mut Daemon)) {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "version = 1\n[device]\nname = \"{name}\"\ntop = \"cache\"\nqueues = 2\n\
         [layers.cache]\ntype = \"cache\"\nover = \"leaf\"\ncapacity = \"32MiB\"\n\
         mode = \"write-back\"\n\
         [layers.leaf]\ntype = \"file\"\npath = \"leaf.img\"\nsize = {DEVICE_BYTES}\n\
         create = true\n"
    );
    let mut daemon = Daemon::start(dir.path(), &config, &[]);
    let mut client = handshake(&daemon.socket).unwrap();
    for (cookie, (offset, data)) in blocks().iter().enumerate() {
        write_block(&mut client, cookie as u64, *offset, data).unwrap();
    }
    // Acknowledged and readable, but not flushed: the leaf has none of it yet.
    let (offset, data) = &blocks()[3];
    assert_eq!(&read_block(&mut client, 99, *offset).unwrap(), data);
    let leaf = std::fs::File::open(dir.path().join("leaf.img")).unwrap();
    let mut on_leaf = vec![0u8; 4096];
    leaf.read_exact_at(&mut on_leaf, *offset).unwrap();
    assert_ne!(
        &on_leaf, data,
        "the write-back cache wrote through at once: this test would prove nothing"
    );

    // The client stays connected while the daemon stops.
    stop(&mut daemon);
    let status = daemon.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{status}\n{}", daemon.log());
    assert!(
        daemon.log().contains("every acknowledged write is flushed"),
        "{}",
        daemon.log()
    );
    drop(client);
    for (offset, data) in blocks() {
        leaf.read_exact_at(&mut on_leaf, offset).unwrap();
        assert!(
            on_leaf == data,
            "block at byte {offset} lost by the stop: reads {:#04x}, was written {:#04x}",
            on_leaf[0],
            data[0]
        );
    }
}

fn signal(daemon: &Daemon, signal: Signal) {
    kill(Pid::from_raw(daemon.child.id() as i32), signal).unwrap();
}

#[test]
fn sigterm_flushes_acknowledged_writes() {
    writes_survive("stopterm", |d| signal(d, Signal::SIGTERM));
}

#[test]
fn sigint_flushes_acknowledged_writes() {
    writes_survive("stopint", |d| signal(d, Signal::SIGINT));
}

#[test]
fn down_flushes_acknowledged_writes() {
    writes_survive("stopdown", |d| {
        let out = Command::new(BIN)
            .args(["down", "stopdown"])
            .env("UBLK_STACK_RUN_DIR", d.dir.join("run"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "down: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            d.log()
        );
    });
}

/// `--force` skips the in-use check (NBD has none) and stops the same way.
#[test]
fn forced_down_flushes_acknowledged_writes() {
    writes_survive("stopforce", |d| {
        let out = Command::new(BIN)
            .args(["down", "stopforce", "--force"])
            .env("UBLK_STACK_RUN_DIR", d.dir.join("run"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "down --force: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            d.log()
        );
    });
}
