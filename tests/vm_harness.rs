//! tests/vm/run.sh against a stand-in for qemu: a boot whose kernel oopses
//! before it runs /init is booted again (three boots at most), and any failure
//! once /init has started counts at once. The stand-in prints what a kernel
//! would on the serial console and writes the scenario's marker, so no guest
//! kernel is needed; the host tools run.sh packs into the initramfs are.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A `qemu-system-x86_64` that plays boot number N (counted in `boots`) as
/// the line of `plan` with that number says: `early-oops`, `late-oops` or
/// `pass`.
const FAKE_QEMU: &str = r#"#!/bin/bash
dir=$(dirname "$0")
n=$(( $(cat "$dir/boots" 2>/dev/null || echo 0) + 1 ))
echo "$n" >"$dir/boots"
what=$(sed -n "${n}p" "$dir/plan")
result= name=
for arg in "$@"; do
    case $arg in
    file:*) result=${arg#file:} ;;
    *vmtest.scenario=*) name=${arg##*vmtest.scenario=}; name=${name%% *} ;;
    esac
done
echo "[    0.500000] Linux version 0.0-fake"
case $what in
early-oops)
    echo "[    1.054446] Oops: int3: 0000 [#1] SMP NOPTI"
    echo "[    1.057326] Kernel panic - not syncing: Fatal exception in interrupt" ;;
late-oops)
    echo "[    2.517796] Run /init as init process"
    echo "[    3.000000] Oops: general protection fault [#1] SMP NOPTI" ;;
pass)
    echo "[    2.517796] Run /init as init process"
    echo "VMTEST-BEGIN $name"
    echo "VMTEST $name PASS" >"$result" ;;
esac
"#;

struct Run {
    output: Output,
    boots: u32,
}

fn run(plan: &[&str]) -> Run {
    let dir = tempfile::tempdir().expect("temp dir");
    let bin = dir.path().join("bin");
    fs::create_dir_all(&bin).unwrap();
    let qemu = bin.join("qemu-system-x86_64");
    fs::write(&qemu, FAKE_QEMU).unwrap();
    fs::set_permissions(&qemu, fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(bin.join("plan"), plan.join("\n") + "\n").unwrap();
    let kernel = dir.path().join("cache/kernels/6.12");
    fs::create_dir_all(kernel.join("modules")).unwrap();
    fs::write(kernel.join(".done"), "").unwrap();
    fs::write(kernel.join("VERSION"), "release=0.0-fake\n").unwrap();
    fs::write(kernel.join("vmlinuz"), "").unwrap();
    fs::write(kernel.join("modules/ORDER"), "").unwrap();
    fs::write(kernel.join("modules/none.ko"), "").unwrap();
    let scenario = dir.path().join("fake_scenario.sh");
    fs::write(&scenario, "exit 0\n").unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let output = Command::new("bash")
        .arg(repo().join("tests/vm/run.sh"))
        .arg("-")
        .arg(&scenario)
        .env("PATH", path)
        .env("VM_CACHE", dir.path().join("cache"))
        .env("VM_KERNEL", "6.12")
        .env("VM_LOG_DIR", dir.path().join("logs"))
        .output()
        .expect("run tests/vm/run.sh");
    let boots = read_count(&bin.join("boots"));
    Run { output, boots }
}

fn read_count(path: &Path) -> u32 {
    fs::read_to_string(path)
        .map(|s| s.trim().parse().unwrap_or(0))
        .unwrap_or(0)
}

fn describe(run: &Run) -> String {
    format!(
        "{} after {} boots\n--- stdout\n{}\n--- stderr\n{}",
        run.output.status,
        run.boots,
        String::from_utf8_lossy(&run.output.stdout),
        String::from_utf8_lossy(&run.output.stderr)
    )
}

#[test]
#[ignore = "needs the host tools run.sh packs (bash tests/vm/setup.sh); run with --run-ignored all"]
fn a_kernel_that_oopses_before_init_is_booted_again() {
    let run = run(&["early-oops", "pass"]);
    assert!(run.output.status.success(), "{}", describe(&run));
    assert_eq!(run.boots, 2, "{}", describe(&run));
    let stderr = String::from_utf8_lossy(&run.output.stderr);
    assert!(
        stderr.contains("the kernel failed before it started /init (boot 1"),
        "{}",
        describe(&run)
    );
}

#[test]
#[ignore = "needs the host tools run.sh packs (bash tests/vm/setup.sh); run with --run-ignored all"]
fn an_oops_after_init_started_fails_at_once() {
    let run = run(&["late-oops", "pass"]);
    assert_eq!(run.output.status.code(), Some(1), "{}", describe(&run));
    assert_eq!(run.boots, 1, "{}", describe(&run));
    let stderr = String::from_utf8_lossy(&run.output.stderr);
    assert!(
        stderr.contains("kernel BUG/Oops/panic"),
        "{}",
        describe(&run)
    );
}

#[test]
#[ignore = "needs the host tools run.sh packs (bash tests/vm/setup.sh); run with --run-ignored all"]
fn three_boots_that_oops_before_init_fail() {
    let run = run(&["early-oops", "early-oops", "early-oops", "pass"]);
    assert_eq!(run.output.status.code(), Some(1), "{}", describe(&run));
    assert_eq!(run.boots, 3, "{}", describe(&run));
}
