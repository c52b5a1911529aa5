//! The systemd unit and the readiness protocol it relies on (`Type=notify`).

use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

#[path = "support/nbd.rs"]
mod support;
use support::{Daemon, BIN};

const UNIT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/packaging/systemd/ublk-stack@.service"
);

/// `systemd-analyze verify` on an instance of the template, with the unit's
/// /usr/bin/ublk-stack pointed at the binary just built (verify checks that
/// every command exists).
#[test]
#[ignore = "needs systemd-analyze (Debian: systemd)"]
fn the_unit_verifies_clean() {
    let dir = tempfile::tempdir().unwrap();
    let unit = std::fs::read_to_string(UNIT).unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/ublk-stack up /etc/ublk-stack/%i.toml"));
    assert!(unit.contains("ExecReload=/usr/bin/ublk-stack reload %i"));
    assert!(unit.contains("Type=notify"));
    std::fs::write(
        dir.path().join("ublk-stack@.service"),
        unit.replace("/usr/bin/ublk-stack", BIN),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(dir.path().join("ublk-stack@demo.service"))
        .output()
        .expect("systemd-analyze is installed (apt-get install systemd)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify: {}\n{stderr}",
        out.status
    );
}

/// What the daemon sends to NOTIFY_SOCKET: READY=1 with a status once the
/// device serves, a status per reload, STOPPING=1 when it stops.
#[test]
fn the_daemon_tells_systemd_ready_reloaded_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let config = "version = 1\n[device]\nname = \"notified\"\ntop = \"mem\"\n\
                  [layers.mem]\ntype = \"memory\"\nsize = \"16MiB\"\n";
    let mut daemon = Daemon::start_with_env(
        dir.path(),
        config,
        &[],
        &[("NOTIFY_SOCKET", socket_path.as_os_str())],
    );
    let mut buf = vec![0u8; 4096];
    let mut next = || {
        let n = socket.recv(&mut buf).expect("a datagram from the daemon");
        String::from_utf8(buf[..n].to_vec()).unwrap()
    };
    let ready = next();
    assert!(ready.starts_with("READY=1\nSTATUS="), "{ready:?}");
    assert!(ready.contains("ready (16 MiB"), "{ready:?}");

    let out = Command::new(BIN)
        .args(["reload", "notified"])
        .env("UBLK_STACK_RUN_DIR", dir.path().join("run"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let reloaded = next();
    assert_eq!(
        reloaded, "STATUS=config generation 1: last reload unchanged (reload command)",
        "{reloaded:?}"
    );

    kill(Pid::from_raw(daemon.child.id() as i32), Signal::SIGTERM).unwrap();
    let stopping = next();
    assert!(stopping.starts_with("STOPPING=1\n"), "{stopping:?}");
    assert!(daemon.wait_exit(Duration::from_secs(30)).success());
}
