//! `list` and `status` never answer with silence: no devices is said in words,
//! and a control socket (0600) or run directory the user cannot reach is
//! "permission denied" with a non-zero exit, not an empty list.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn is_root() -> bool {
    std::fs::metadata("/proc/self").expect("/proc/self").uid() == 0
}

/// Runs `ublk-stack ARGS` against `run_dir` as a user that is not the
/// socket's owner: as root, drops to nobody (65534) with setpriv; otherwise
/// runs as itself, the files then being closed to their own owner by mode.
fn as_other_user(run_dir: &Path, args: &[&str]) -> Output {
    let binary = env!("CARGO_BIN_EXE_ublk-stack");
    let mut command = if is_root() {
        let mut command = Command::new("setpriv");
        command.args(["--reuid=65534", "--regid=65534", "--clear-groups", binary]);
        command
    } else {
        Command::new(binary)
    };
    let mut child = command
        .args(args)
        .env("UBLK_STACK_RUN_DIR", run_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ublk-stack");
    let start = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if start.elapsed() > Duration::from_secs(30) {
            drop(child.kill());
            panic!("ublk-stack {args:?} still running after 30 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().expect("output")
}

/// A folder every user may enter, for the run directory.
fn open_folder() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    dir
}

#[test]
fn list_with_no_devices_says_so() {
    let dir = open_folder();
    for run_dir in [dir.path().to_path_buf(), dir.path().join("never-created")] {
        let output = as_other_user(&run_dir, &["list"]);
        assert_eq!(output.status.code(), Some(0), "{output:?}");
        assert_eq!(
            String::from_utf8_lossy(&output.stdout),
            "no devices running\n"
        );
    }
}

#[test]
fn list_and_status_say_permission_denied_for_a_socket_of_another_user() {
    let dir = open_folder();
    let socket = dir.path().join("d0.sock");
    let _listener = UnixListener::bind(&socket).expect("bind");
    // The control socket's mode; a non-root owner is kept out by mode 0.
    let mode = if is_root() { 0o600 } else { 0o000 };
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(mode)).expect("chmod");
    for args in [
        &["list"][..],
        &["status", "d0"],
        &["status", "d0", "--json"],
    ] {
        let output = as_other_user(dir.path(), args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains("permission denied"), "{args:?}: {stderr}");
        assert!(stderr.contains("\"d0\""), "{args:?}: {stderr}");
        assert!(output.stdout.is_empty(), "{args:?}");
    }
}

#[test]
fn list_and_status_say_permission_denied_for_a_closed_run_directory() {
    let dir = open_folder();
    let run_dir = dir.path().join("run");
    std::fs::create_dir(&run_dir).expect("mkdir");
    let _listener = UnixListener::bind(run_dir.join("d0.sock")).expect("bind");
    let mode = if is_root() { 0o700 } else { 0o000 };
    std::fs::set_permissions(&run_dir, std::fs::Permissions::from_mode(mode)).expect("chmod");
    for args in [&["list"][..], &["status", "d0"]] {
        let output = as_other_user(&run_dir, args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains("permission denied"), "{args:?}: {stderr}");
    }
    std::fs::set_permissions(&run_dir, std::fs::Permissions::from_mode(0o700)).expect("chmod");
}
