//! `ublk-stack upgrade NAME` through the binary, where no kernel is needed:
//! the errors it gives before and without a daemon, and what it says with a
//! stand-in for the daemon's control socket.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::{Command, Output};

#[path = "support/control.rs"]
mod control;
use control::daemon_answering;

const BIN: &str = env!("CARGO_BIN_EXE_ublk-stack");

fn is_root() -> bool {
    std::fs::metadata("/proc/self").expect("/proc/self").uid() == 0
}

fn upgrade(run_dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("upgrade")
        .args(args)
        .env("UBLK_STACK_RUN_DIR", run_dir)
        .output()
        .expect("run ublk-stack")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Run by a user other than root, the tests that need the command to go
/// further check that it stops at the root check instead.
fn refused_for_want_of_root() {
    let dir = tempfile::tempdir().unwrap();
    let out = upgrade(dir.path(), &["d0"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(stderr(&out).contains("upgrade needs root"), "{out:?}");
}

#[test]
fn upgrade_needs_root() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = if is_root() {
        let mut command = Command::new("setpriv");
        command.args(["--reuid=65534", "--regid=65534", "--clear-groups", BIN]);
        command
    } else {
        Command::new(BIN)
    };
    let out = command
        .args(["upgrade", "d0"])
        .env("UBLK_STACK_RUN_DIR", dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(stderr(&out).contains("upgrade needs root"), "{out:?}");
}

#[test]
fn upgrade_of_a_device_that_is_not_running_exits_1() {
    if !is_root() {
        return refused_for_want_of_root();
    }
    let dir = tempfile::tempdir().unwrap();
    let out = upgrade(dir.path(), &["nothing"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no running device named \"nothing\""),
        "{out:?}"
    );
    // A socket left by a daemon that died: nobody answers.
    drop(UnixListener::bind(dir.path().join("dead.sock")).unwrap());
    let out = upgrade(dir.path(), &["dead"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no running device named \"dead\""),
        "{out:?}"
    );
}

#[test]
fn a_binary_that_is_missing_or_not_executable_is_refused_before_asking() {
    if !is_root() {
        return refused_for_want_of_root();
    }
    let dir = tempfile::tempdir().unwrap();
    let out = upgrade(dir.path(), &["d0", "--binary", "/nonexistent/ublk-stack"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("--binary /nonexistent/ublk-stack: No such file"),
        "{out:?}"
    );
    let plain = dir.path().join("plain");
    std::fs::write(&plain, "not a program").unwrap();
    std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = upgrade(dir.path(), &["d0", "--binary", plain.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("not an executable file"), "{out:?}");
}

#[test]
fn a_refusal_is_relayed_and_the_binary_sent_absolute() {
    if !is_root() {
        return refused_for_want_of_root();
    }
    let dir = tempfile::tempdir().unwrap();
    let why = "the kernel's ublk driver cannot quiesce a device (no UBLK_F_QUIESCE in its features 0x1fe; Linux 6.16 or later is needed)";
    let daemon = daemon_answering(
        dir.path(),
        "d0",
        format!(r#"{{"ok":false,"refused":true,"error":"{why}"}}"#),
    );
    // A relative --binary, named from another working directory.
    let bin_dir = tempfile::tempdir().unwrap();
    let work = std::fs::canonicalize(bin_dir.path()).unwrap();
    std::fs::write(work.join("new-ublk-stack"), "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(
        work.join("new-ublk-stack"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["upgrade", "d0", "--binary", "new-ublk-stack"])
        .current_dir(&work)
        .env("UBLK_STACK_RUN_DIR", dir.path())
        .output()
        .unwrap();
    let request = daemon.join().unwrap();
    assert!(request.contains(r#""cmd":"upgrade""#), "{request}");
    let sent = format!(r#""binary":"{}/new-ublk-stack""#, work.display());
    assert!(request.contains(&sent), "{request}");
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains(&format!("d0: {why}")), "{out:?}");
}

#[test]
fn a_new_daemon_that_dies_leaves_instructions() {
    if !is_root() {
        return refused_for_want_of_root();
    }
    let dir = tempfile::tempdir().unwrap();
    // A process that has already exited stands for the new daemon.
    let mut gone = Command::new("/bin/true").spawn().unwrap();
    let pid = gone.id();
    gone.wait().unwrap();
    let daemon = daemon_answering(
        dir.path(),
        "d0",
        format!(
            r#"{{"ok":true,"pid":{pid},"previous_pid":1,"previous_binary":"/usr/bin/ublk-stack","config":"/etc/ublk-stack/d0.toml","path":"/dev/ublkb3"}}"#
        ),
    );
    let out = upgrade(dir.path(), &["d0", "--binary", "/bin/true"]);
    daemon.join().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let said = stderr(&out);
    assert!(
        said.contains(&format!(
            "the new daemon (pid {pid}) exited before it served the device"
        )),
        "{said}"
    );
    assert!(
        said.contains("/dev/ublkb3 stays with its I/O held (nothing fails meanwhile): run `/usr/bin/ublk-stack up /etc/ublk-stack/d0.toml` to serve it again"),
        "{said}"
    );
}
