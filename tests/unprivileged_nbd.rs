//! The NBD route needs no privilege: a user other than root runs `up --nbd`
//! over a file leaf of their own, finds it with `list`, and stops it with
//! `down`, the control socket living in their `$XDG_RUNTIME_DIR/ublk-stack`.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_ublk-stack");
const NOBODY: u32 = 65534;

fn is_root() -> bool {
    std::fs::metadata("/proc/self").unwrap().uid() == 0
}

/// `ublk-stack ARGS` as nobody (when the test runs as root) or as the
/// unprivileged user the test already is, with `runtime` as its
/// XDG_RUNTIME_DIR and no UBLK_STACK_RUN_DIR.
fn unprivileged(runtime: &Path, args: &[&str]) -> Command {
    let mut command = if is_root() {
        let mut command = Command::new("setpriv");
        command.args(["--reuid=65534", "--regid=65534", "--clear-groups", BIN]);
        command
    } else {
        Command::new(BIN)
    };
    command
        .args(args)
        .env_remove("UBLK_STACK_RUN_DIR")
        .env("XDG_RUNTIME_DIR", runtime);
    command
}

#[test]
fn a_user_without_privileges_serves_lists_and_stops_an_nbd_device() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("user");
    std::fs::create_dir(&home).unwrap();
    std::fs::write(
        home.join("device.toml"),
        "version = 1\n[device]\nname = \"mine\"\ntop = \"leaf\"\n\
         [layers.leaf]\ntype = \"file\"\npath = \"leaf.img\"\nsize = \"16MiB\"\ncreate = true\n",
    )
    .unwrap();
    let runtime = home.join("runtime");
    std::fs::create_dir(&runtime).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    if is_root() {
        for path in [&home, &runtime, &home.join("device.toml")] {
            std::os::unix::fs::chown(path, Some(NOBODY), Some(NOBODY)).unwrap();
        }
    }
    let socket = home.join("nbd.sock");
    let mut daemon = unprivileged(
        &runtime,
        &[
            "up",
            home.join("device.toml").to_str().unwrap(),
            "--nbd",
            &format!("unix:{}", socket.display()),
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit())
    .spawn()
    .unwrap();
    let stdout = daemon.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        drop(BufReader::new(stdout).read_line(&mut line));
        drop(tx.send(line));
    });
    let ready = rx.recv_timeout(Duration::from_secs(30));
    let ready = match ready {
        Ok(line) if line.contains(" ready (") => line,
        other => {
            drop(daemon.kill());
            panic!("no ready line: {other:?}, exit {:?}", daemon.wait());
        }
    };
    assert!(ready.starts_with("mine: nbd+unix://"), "{ready}");
    assert!(runtime.join("ublk-stack/mine.sock").exists());

    let list = unprivileged(&runtime, &["list", "--json"])
        .output()
        .unwrap();
    assert!(list.status.success(), "{list:?}");
    let devices: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(devices[0]["name"], "mine", "{devices}");

    let down = unprivileged(&runtime, &["down", "mine"]).output().unwrap();
    assert!(down.status.success(), "{down:?}");
    assert!(daemon.wait().unwrap().success());
    assert!(!runtime.join("ublk-stack/mine.sock").exists());
}
