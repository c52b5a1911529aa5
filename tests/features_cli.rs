//! `ublk-stack features [--json]` as a user runs it. The development and CI
//! machines have no ublk_drv (DESIGN.md §4), so this checks the answer
//! without it: the module named, how to load it, exit 0, and `--json` still
//! one structured object. On a machine with the driver it checks the answer
//! with it instead (the VM scenarios do that on both test kernels).

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_ublk-stack");

fn features(args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("features")
        .args(args)
        .output()
        .expect("run ublk-stack features")
}

fn driver_loaded() -> bool {
    Path::new("/dev/ublk-control").exists()
}

#[test]
fn without_ublk_drv_it_says_so_and_how_to_load_it() {
    let out = features(&[]);
    let stdout = String::from_utf8(out.stdout.clone()).unwrap();
    if driver_loaded() {
        assert!(stdout.contains("GET_FEATURES 0x"), "{out:?}");
        return;
    }
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(stdout.contains("ublk_drv is not loaded"), "{stdout}");
    assert!(stdout.contains("/dev/ublk-control is missing"), "{stdout}");
    assert!(stdout.contains("modprobe ublk_drv"), "{stdout}");
    assert!(stdout.contains("--nbd"), "{stdout}");
    assert_eq!(stdout.lines().count(), 1, "one line: {stdout}");
    assert!(out.stderr.is_empty(), "{out:?}");
}

#[test]
fn without_ublk_drv_json_is_still_one_object() {
    let out = features(&["--json"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["control"], "/dev/ublk-control");
    if driver_loaded() {
        assert_eq!(report["loaded"], true);
        assert!(report["kernel_features"].is_u64(), "{report}");
        assert_eq!(report["data_path"], "copy");
        return;
    }
    assert_eq!(report["loaded"], false, "{report}");
    assert!(report["error"]
        .as_str()
        .is_some_and(|e| e.contains("modprobe ublk_drv")));
    assert!(report["kernel_features"].is_null(), "{report}");
    assert!(report["kernel_features_hex"].is_null(), "{report}");
    assert!(report["data_path"].is_null(), "{report}");
    assert!(report["safe_stop"].is_null(), "{report}");
    assert_eq!(report["offered"], serde_json::json!([]));
    assert_eq!(report["in_use"], serde_json::json!([]));
    assert_eq!(report["unknown_bits"], serde_json::json!([]));
}

#[test]
fn unknown_options_are_usage_errors() {
    let out = features(&["--jsn"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}
