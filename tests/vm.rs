//! Real-kernel tests: each scenario in `tests/vm/scenarios/` boots each of the
//! two test kernels, Debian's 6.12 and 7.3 cloud kernels, under qemu with
//! `ublk_drv` loaded and a static ublk-stack as `/bin/ublk-stack` (see
//! `tests/vm/README.md`). A scenario is one module with one test per kernel,
//! `NAME::linux_6_12` and `NAME::linux_7_3`, so a failure names its kernel.
//!
//! The scenarios are `#[ignore]`d, so a plain `cargo nextest run` lists them as
//! skipped; `--run-ignored all` (what `.ci/run` passes) runs them. A scenario
//! that runs but cannot boot its VM fails: without qemu or the kernel cache it
//! runs `bash tests/vm/setup.sh` when `CI` is set (to anything but empty, `0`
//! or `false`) and panics saying why otherwise, so it never passes unrun.
//!
//! nextest runs each test in its own process, so the static build cannot be
//! shared through a `Once`; every test runs the same `cargo build` into
//! `target/vm`, and cargo's lock on that directory makes the first one build
//! while the others wait and then find nothing to do. setup.sh is serialised
//! the same way with `flock`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// One module per scenario (the file name without `.sh`), holding one `#[test]`
/// per kernel.
macro_rules! scenarios {
    ($($name:ident),* $(,)?) => {
        const SCENARIOS: &[&str] = &[$(stringify!($name)),*];
        $(
            mod $name {
                #[test]
                #[ignore = "boots a VM: needs qemu and the guest kernels (bash tests/vm/setup.sh); run with --run-ignored all"]
                fn linux_6_12() {
                    super::run_scenario(stringify!($name), "6.12");
                }

                #[test]
                #[ignore = "boots a VM: needs qemu and the guest kernels (bash tests/vm/setup.sh); run with --run-ignored all"]
                fn linux_7_3() {
                    super::run_scenario(stringify!($name), "7.3");
                }
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
    ublk_nbd_leg_readd,
    ublk_metrics,
    ublk_safe_stop,
    ublk_upgrade,
    ublk_upgrade_cache,
    ublk_zero_copy,
    ublk_batch_io,
    ublk_grow,
    ublk_null_zeros,
    ublk_queue_threads,
);

const TARGET: &str = "x86_64-unknown-linux-gnu";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `CI` set to anything but empty, `0` or `false` (any case).
fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|value| {
        let value = value.trim();
        !(value.is_empty() || value == "0" || value.eq_ignore_ascii_case("false"))
    })
}

/// Why the VM cannot boot kernel `series` here, or `None` when it can.
fn missing_prerequisite(series: &str) -> Option<String> {
    let has_qemu = Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_ok_and(|output| output.status.success());
    if !has_qemu {
        return Some("qemu-system-x86_64 is not installed".into());
    }
    let stamp = repo().join(format!("tests/vm/cache/kernels/{series}/.done"));
    if !stamp.exists() {
        return Some(format!(
            "no {series} guest kernel ({} missing)",
            stamp.display()
        ));
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

/// Panics unless the VM can boot kernel `series`: a scenario that runs never
/// passes unrun, and a kernel that fails to set up fails its scenarios.
fn ensure_prerequisites(series: &str) {
    let Some(reason) = missing_prerequisite(series) else {
        return;
    };
    assert!(
        in_ci(),
        "the VM scenario cannot run: {reason}; run `bash tests/vm/setup.sh` first"
    );
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
    if let Some(reason) = missing_prerequisite(series) {
        panic!("CI is set and the VM tests cannot run: {reason} (even after setup.sh)");
    }
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

fn run_scenario(name: &str, series: &str) {
    ensure_prerequisites(series);
    let binary = static_binary();
    let scenario = repo().join(format!("tests/vm/scenarios/{name}.sh"));
    let log_dir = repo().join("target/vm/logs");
    let output = Command::new("bash")
        .arg(repo().join("tests/vm/run.sh"))
        .arg(&binary)
        .arg(&scenario)
        .env("VM_LOG_DIR", &log_dir)
        .env("VM_KERNEL", series)
        .current_dir(repo())
        .output()
        .expect("run tests/vm/run.sh");
    let log = log_dir.join(format!("{name}.{series}.log"));
    assert!(
        output.status.success(),
        "scenario {name} failed on Linux {series} (full serial log: {}): {}",
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
