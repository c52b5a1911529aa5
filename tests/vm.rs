//! Real-kernel tests: each scenario in `tests/vm/scenarios/` boots Debian's 6.12
//! cloud kernel under qemu with `ublk_drv` loaded and a static ublk-stack as
//! `/bin/ublk-stack` (see `tests/vm/README.md`).
//!
//! Without qemu or the kernel cache (`bash tests/vm/setup.sh`) the tests say why
//! and pass, unless `CI` is set: then they run setup.sh themselves and fail if
//! that does not help. `VM_TESTS=skip` skips them outside CI.
//!
//! nextest runs each test in its own process, so the static build cannot be
//! shared through a `Once`; every test runs the same `cargo build` into
//! `target/vm`, and cargo's lock on that directory makes the first one build
//! while the others wait and then find nothing to do. setup.sh is serialised
//! the same way with `flock`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// One `#[test]` per scenario; the name is the file name without `.sh`.
macro_rules! scenarios {
    ($($name:ident),* $(,)?) => {
        const SCENARIOS: &[&str] = &[$(stringify!($name)),*];
        $(
            #[test]
            fn $name() {
                run_scenario(stringify!($name));
            }
        )*
    };
}

scenarios!(
    smoke,
    ublk_mirror_ext4,
    ublk_raid0_fio,
    ublk_leaf_errors,
    ublk_kill9,
    ublk_vs_loop_iops,
    ublk_up_refusals,
    ublk_checksum_flip,
    ublk_crypt,
    ublk_secure_ext4,
    ublk_recovery,
    reload_live,
    mirror_fault_readd,
    mirror_scrub,
);

const TARGET: &str = "x86_64-unknown-linux-gnu";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn in_ci() -> bool {
    std::env::var_os("CI").is_some_and(|value| !value.is_empty())
}

/// Why the VM cannot run here, or `None` when it can.
fn missing_prerequisite() -> Option<String> {
    let has_qemu = Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_ok_and(|output| output.status.success());
    if !has_qemu {
        return Some("qemu-system-x86_64 is not installed".into());
    }
    let stamp = repo().join("tests/vm/cache/kernel/.done");
    if !stamp.exists() {
        return Some(format!("no guest kernel ({} missing)", stamp.display()));
    }
    None
}

fn describe(output: &Output) -> String {
    format!(
        "{}\n--- stdout\n{}\n--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Returns false when the test should be skipped.
fn ensure_prerequisites() -> bool {
    if std::env::var("VM_TESTS").as_deref() == Ok("skip") && !in_ci() {
        eprintln!("skipping VM test: VM_TESTS=skip");
        return false;
    }
    let Some(reason) = missing_prerequisite() else {
        return true;
    };
    if !in_ci() {
        eprintln!("skipping VM test: {reason}; run `bash tests/vm/setup.sh` to enable it");
        return false;
    }
    let cache = repo().join("tests/vm/cache");
    std::fs::create_dir_all(&cache).expect("create tests/vm/cache");
    let output = Command::new("flock")
        .arg(cache.join(".setup.lock"))
        .args(["bash", "tests/vm/setup.sh"])
        .current_dir(repo())
        .output()
        .expect("run flock bash tests/vm/setup.sh");
    assert!(
        output.status.success(),
        "tests/vm/setup.sh failed: {}",
        describe(&output)
    );
    if let Some(reason) = missing_prerequisite() {
        panic!("CI is set and the VM tests cannot run: {reason} (even after setup.sh)");
    }
    true
}

/// Builds the statically linked binary the guest runs and returns its path.
fn static_binary() -> PathBuf {
    let target_dir = repo().join("target/vm");
    let output = Command::new(env!("CARGO"))
        .args([
            "build",
            "--release",
            "--bin",
            "ublk-stack",
            "--target",
            TARGET,
        ])
        .arg("--target-dir")
        .arg(&target_dir)
        .current_dir(repo())
        // glibc's static build: the guest has no shared libraries for it.
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .output()
        .expect("run cargo build for the VM binary");
    assert!(
        output.status.success(),
        "static build failed: {}",
        describe(&output)
    );
    target_dir.join(TARGET).join("release/ublk-stack")
}

fn run_scenario(name: &str) {
    if !ensure_prerequisites() {
        return;
    }
    let binary = static_binary();
    let scenario = repo().join(format!("tests/vm/scenarios/{name}.sh"));
    let log_dir = repo().join("target/vm/logs");
    let output = Command::new("bash")
        .arg(repo().join("tests/vm/run.sh"))
        .arg(&binary)
        .arg(&scenario)
        .env("VM_LOG_DIR", &log_dir)
        .current_dir(repo())
        .output()
        .expect("run tests/vm/run.sh");
    let log = log_dir.join(format!("{name}.log"));
    assert!(
        output.status.success(),
        "scenario {name} failed (full serial log: {}): {}",
        log.display(),
        describe(&output)
    );
    print!("{}", String::from_utf8_lossy(&output.stdout));
}

/// A scenario file without a test would silently never run.
#[test]
fn every_scenario_file_has_a_test() {
    let dir = repo().join("tests/vm/scenarios");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .expect("read tests/vm/scenarios")
        .map(|entry| entry.expect("read dir entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "sh"))
        .map(|path| file_stem(&path))
        .collect();
    files.sort();
    let mut listed: Vec<String> = SCENARIOS.iter().map(|name| name.to_string()).collect();
    listed.sort();
    assert_eq!(
        files, listed,
        "tests/vm/scenarios/*.sh and the scenarios! list in tests/vm.rs differ"
    );
}

fn file_stem(path: &Path) -> String {
    path.file_stem()
        .expect("file has a name")
        .to_string_lossy()
        .into_owned()
}
