//! `ublk-stack reload NAME` through the binary, against a stand-in for the
//! daemon's control socket: what it prints and its exit status.

use std::path::Path;
use std::process::Output;

#[path = "support/control.rs"]
mod control;
use control::daemon_answering;

fn reload(run_dir: &Path, name: &str) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_ublk-stack"))
        .args(["reload", name])
        .env("UBLK_STACK_RUN_DIR", run_dir)
        .output()
        .unwrap()
}

#[test]
fn reload_of_a_device_that_is_not_running_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let out = reload(dir.path(), "nothing");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no running device named \"nothing\""),
        "{stderr}"
    );
}

#[test]
fn a_refused_reload_prints_each_reason_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = daemon_answering(
        dir.path(),
        "d0",
        r#"{"ok":false,"error":"reload refused","result":"refused","trigger":"reload command","generation":3,"applied":[],"refused":["layers.a.path: structural, needs down/up","device.queues: structural, needs down/up"],"time":1800000000,"took_s":0.001}"#,
    );
    let out = reload(dir.path(), "d0");
    assert!(daemon.join().unwrap().contains(r#""cmd":"reload""#));
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout,
        "d0: refused (generation 3): the running device is unchanged\n\
         refused: layers.a.path: structural, needs down/up\n\
         refused: device.queues: structural, needs down/up\n"
    );
}

#[test]
fn an_applied_reload_prints_each_change_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = daemon_answering(
        dir.path(),
        "d0",
        r#"{"ok":true,"result":"applied","trigger":"reload command","generation":2,"applied":["layers.cache.capacity: 64MiB -> 512MiB"],"refused":[],"time":1800000000,"took_s":0.001}"#,
    );
    let out = reload(dir.path(), "d0");
    daemon.join().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout,
        "d0: applied (generation 2)\napplied: layers.cache.capacity: 64MiB -> 512MiB\n"
    );
}

#[test]
fn an_unchanged_file_is_nothing_to_do_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = daemon_answering(
        dir.path(),
        "d0",
        r#"{"ok":true,"result":"unchanged","trigger":"reload command","generation":1,"applied":[],"refused":[],"time":1800000000,"took_s":0.001}"#,
    );
    let out = reload(dir.path(), "d0");
    daemon.join().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("d0: unchanged (generation 1)"));
}
