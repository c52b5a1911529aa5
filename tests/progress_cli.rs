//! `scrub` and `readd` report their progress: with `--json`, one line per
//! update while the work goes on and a final `done` line; `status` shows the
//! running or last scrub and a rebuild going on. A real daemon serves the
//! stack over NBD (no kernel module needed); its mirror legs sit under `fault`
//! layers that delay every request, so that a scrub of 32 MiB takes seconds.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

#[path = "support/nbd.rs"]
mod support;
use support::{handshake, write_block, Daemon, BIN};

/// Mirror "m" of two 32 MiB files, each under a fault layer adding `delay`.
fn mirror_config(delay: &str, write_error_rate: f64) -> String {
    format!(
        r#"version = 1
[device]
name = "slow"
top = "m"
queues = 1

[layers.m]
type = "mirror"
legs = ["fa", "fb"]
read_policy = "first"

[layers.fa]
type = "fault"
over = "a"
delay = "{delay}"
write_error_rate = {write_error_rate:.1}

[layers.fb]
type = "fault"
over = "b"
delay = "{delay}"

[layers.a]
type = "file"
path = "a.img"
size = "32MiB"
create = true

[layers.b]
type = "file"
path = "b.img"
size = "32MiB"
create = true
"#
    )
}

fn cli(daemon: &Daemon, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("UBLK_STACK_RUN_DIR", daemon.dir.join("run"))
        .output()
        .unwrap()
}

fn status(daemon: &Daemon) -> Value {
    let out = cli(daemon, &["status", "slow", "--json"]);
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

fn mirror(status: &Value) -> &Value {
    &status["layers"][0]["details"]
}

/// Each stdout line of a `--json` run, parsed.
fn lines(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?}: {e}")))
        .collect()
}

/// At least two progress lines whose `done` never goes back and whose
/// `total` is `total`, then one `done` line with everything done. Returns it.
fn check_progress(out: &Output, total: u64) -> Value {
    let mut lines = lines(out);
    let last = lines.pop().expect("a final line");
    assert_eq!(last["event"], "done", "{out:?}");
    assert_eq!(last["done"], total, "{last}");
    assert_eq!(last["total"], total, "{last}");
    assert!(last["rate_bytes_per_s"].as_f64().unwrap() > 0.0, "{last}");
    assert!(lines.len() >= 2, "fewer than 2 progress lines: {out:?}");
    let mut done = 0;
    for line in &lines {
        assert_eq!(line["event"], "progress", "{line}");
        assert_eq!(line["total"], total, "{line}");
        let now = line["done"].as_u64().unwrap();
        assert!(
            now >= done && now <= total,
            "done went from {done} to {now}"
        );
        assert!(line["rate_bytes_per_s"].is_number() && line["elapsed_s"].is_number());
        done = now;
    }
    last
}

#[test]
fn scrub_json_streams_progress_then_a_done_line_and_status_shows_the_scrub() {
    let daemon = Daemon::start_temp(&mirror_config("40ms", 0.0), &[]);
    let size = status(&daemon)["size"].as_u64().unwrap();
    assert!(status(&daemon)["scrub"].is_null());

    let run_dir = daemon.dir.join("run");
    let scrub = std::thread::spawn(move || {
        let started = Instant::now();
        let out = Command::new(BIN)
            .args(["scrub", "slow", "--json"])
            .env("UBLK_STACK_RUN_DIR", run_dir)
            .output()
            .unwrap();
        (out, started.elapsed())
    });
    // While it runs: `status` shows it, and a second scrub is refused.
    let deadline = Instant::now() + Duration::from_secs(20);
    let running = loop {
        let s = status(&daemon);
        if s["scrub"]["state"] == "running" {
            break s;
        }
        assert!(Instant::now() < deadline, "no running scrub in {s:#}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(running["scrub"]["total"], size, "{running:#}");
    let text = String::from_utf8(cli(&daemon, &["status", "slow"]).stdout).unwrap();
    assert!(text.contains("\nscrub: running, "), "{text}");
    let second = cli(&daemon, &["scrub", "slow"]);
    assert_eq!(second.status.code(), Some(1), "{second:?}");
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains("a scrub is already running"), "{stderr}");

    let (out, took) = scrub.join().unwrap();
    assert!(out.status.success(), "{out:?}\n{}", daemon.log());
    assert!(
        took > Duration::from_secs(1),
        "the scrub took {took:?}: too short to test"
    );
    let done = check_progress(&out, size);
    assert_eq!(done["unrepairable"], 0, "{done}");
    assert_eq!(done["repaired"], 0, "{done}");

    let after = status(&daemon)["scrub"].clone();
    assert_eq!(after["state"], "done", "{after}");
    assert_eq!(after["done"], size, "{after}");
    assert!(after["error"].is_null(), "{after}");
    let text = String::from_utf8(cli(&daemon, &["status", "slow"]).stdout).unwrap();
    assert!(text.contains("\nlast scrub: done "), "{text}");

    // Without --json and a terminal: the summary alone.
    let out = cli(&daemon, &["scrub", "slow"]);
    assert!(out.status.success(), "{out:?}");
    assert!(out.stderr.is_empty(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.starts_with("slow: scrubbed 32.0 MiB in ")
            && stdout.ends_with(": 0 repaired, 0 mismatched copies rewritten, 0 unrepairable\n")
            && stdout.lines().count() == 1,
        "{stdout:?}"
    );

    // On a terminal (script(1) gives it one): a bar with the percentage, the
    // bytes and the rate, cleared before the summary.
    let out = Command::new("script")
        .args(["-q", "-e", "-c"])
        .arg(format!("stty cols 100; {BIN} scrub slow"))
        .arg("/dev/null")
        .env("UBLK_STACK_RUN_DIR", daemon.dir.join("run"))
        .output()
        .expect("script(1) runs (util-linux)");
    assert!(out.status.success(), "{out:?}");
    let screen = String::from_utf8_lossy(&out.stdout);
    assert!(
        screen.contains("scrub slow [") && screen.contains("% ") && screen.contains(" MiB/s ETA "),
        "no progress bar: {screen:?}"
    );
    assert!(
        screen.contains("\r\x1b[2Kslow: scrubbed 32.0 MiB in "),
        "the bar is not cleared before the summary: {screen:?}"
    );
}

/// Fail leg 0 (writes to it fail) by writing one block to each of `regions`
/// regions of `region_bytes`, then let it take writes again.
fn fail_leg_0(daemon: &Daemon, regions: u64, region_bytes: u64) {
    let config = daemon.dir.join("device.toml");
    std::fs::write(&config, mirror_config("40ms", 1.0)).unwrap();
    assert!(cli(daemon, &["reload", "slow"]).status.success());
    let mut nbd = handshake(&daemon.socket).unwrap();
    for region in 0..regions {
        let block = vec![region as u8 + 1; 4096];
        write_block(&mut nbd, region, region * region_bytes, &block).unwrap();
    }
    assert_eq!(mirror(&status(daemon))["legs"][0]["health"], "failed");
    std::fs::write(&config, mirror_config("40ms", 0.0)).unwrap();
    assert!(cli(daemon, &["reload", "slow"]).status.success());
}

#[test]
fn readd_waits_for_the_rebuild_with_progress_or_returns_at_once_with_no_wait() {
    let daemon = Daemon::start_temp(&mirror_config("40ms", 0.0), &[]);
    let region_bytes = mirror(&status(&daemon))["region_bytes"].as_u64().unwrap();
    let regions = 16;
    fail_leg_0(&daemon, regions, region_bytes);

    let out = cli(&daemon, &["readd", "slow", "m", "0", "--json"]);
    assert!(out.status.success(), "{out:?}\n{}", daemon.log());
    // Only the regions written while the leg was failed are copied.
    let done = check_progress(&out, regions * region_bytes);
    assert_eq!(done["unreadable_blocks"], 0, "{done}");
    let after = status(&daemon);
    assert_eq!(mirror(&after)["legs"][0]["health"], "ok", "{after:#}");
    assert!(mirror(&after)["resync_done_bytes"].is_null(), "{after:#}");

    // --no-wait: back while the rebuild goes on, which status shows.
    fail_leg_0(&daemon, regions, region_bytes);
    let out = cli(&daemon, &["readd", "slow", "m", "0", "--no-wait", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let started = lines(&out);
    assert_eq!(started.len(), 1, "{out:?}");
    assert_eq!(started[0]["event"], "started", "{out:?}");
    let s = status(&daemon);
    assert_eq!(mirror(&s)["legs"][0]["health"], "rebuilding", "{s:#}");
    let total = mirror(&s)["resync_total_bytes"].as_u64().unwrap();
    assert_eq!(total, regions * region_bytes, "{s:#}");
    let text = String::from_utf8(cli(&daemon, &["status", "slow"]).stdout).unwrap();
    assert!(text.contains("\nrebuild of mirror \"m\": "), "{text}");
}

#[test]
fn readd_fails_when_the_leg_fails_again_during_the_rebuild() {
    let daemon = Daemon::start_temp(&mirror_config("40ms", 0.0), &[]);
    let region_bytes = mirror(&status(&daemon))["region_bytes"].as_u64().unwrap();
    fail_leg_0(&daemon, 16, region_bytes);
    let run_dir = daemon.dir.join("run");
    let readd = std::thread::spawn(move || {
        Command::new(BIN)
            .args(["readd", "slow", "m", "0", "--json"])
            .env("UBLK_STACK_RUN_DIR", run_dir)
            .output()
            .unwrap()
    });
    // Once the rebuild has copied something (the leg took the re-add's state
    // record before that).
    let deadline = Instant::now() + Duration::from_secs(20);
    while mirror(&status(&daemon))["resync_done_bytes"]
        .as_u64()
        .unwrap_or(0)
        == 0
    {
        assert!(Instant::now() < deadline, "leg 0 never rebuilt");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Its writes fail again while the rebuild copies to it.
    std::fs::write(daemon.dir.join("device.toml"), mirror_config("40ms", 1.0)).unwrap();
    assert!(cli(&daemon, &["reload", "slow"]).status.success());
    let out = readd.join().unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}\n{}", daemon.log());
    let last = lines(&out).pop().unwrap();
    assert_eq!(last["event"], "error", "{out:?}");
    assert!(
        last["error"]
            .as_str()
            .unwrap()
            .contains("leg 0 failed during the"),
        "{last}"
    );
    assert_eq!(mirror(&status(&daemon))["legs"][0]["health"], "failed");
}

#[test]
fn scrub_and_readd_errors_are_one_line_and_exit_1() {
    let daemon = Daemon::start_temp(&mirror_config("0s", 0.0), &[]);
    let cases: [(&[&str], &str); 6] = [
        (&["scrub", "nosuch"], "no running device named \"nosuch\""),
        (
            &["readd", "nosuch", "m", "0"],
            "no running device named \"nosuch\"",
        ),
        (
            &["readd", "slow", "nosuch", "0"],
            "no mirror named \"nosuch\"",
        ),
        (
            &["readd", "slow", "m", "0"],
            "leg 0 is ok; only a failed leg is re-added",
        ),
        (&["readd", "slow", "m", "7"], "there is no leg 7"),
        (
            &["readd", "slow", "m", "7", "--no-wait"],
            "there is no leg 7",
        ),
    ];
    for (args, message) in cases {
        let out = cli(&daemon, args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(message), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}: {out:?}");
        // With --json, the error is a JSON line too.
        let out = cli(&daemon, &[args, &["--json"]].concat());
        assert_eq!(out.status.code(), Some(1), "{args:?}: {out:?}");
        let lines = lines(&out);
        assert_eq!(lines.len(), 1, "{args:?}: {out:?}");
        assert_eq!(lines[0]["event"], "error", "{args:?}: {out:?}");
        assert!(lines[0]["error"].as_str().unwrap().contains(message));
    }
}

#[test]
fn scrub_of_a_stack_with_nothing_to_verify_is_refused() {
    let config = r#"version = 1
[device]
name = "plain"
top = "ram"
queues = 1

[layers.ram]
type = "memory"
size = "8MiB"
"#;
    let daemon = Daemon::start_temp(config, &[]);
    let out = cli(&daemon, &["scrub", "plain"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("has no mirror, checksum, crypt or compress layer: nothing to verify"),
        "{stderr}"
    );
    let out = cli(&daemon, &["readd", "plain", "ram", "0"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no mirror named \"ram\""));
}

#[test]
fn scrub_without_a_mirror_reads_and_verifies_the_whole_device() {
    let config = r#"version = 1
[device]
name = "sums"
top = "sum"
queues = 1

[layers.sum]
type = "checksum"
over = "leaf"

[layers.leaf]
type = "file"
path = "leaf.img"
size = "16MiB"
create = true
"#;
    let daemon = Daemon::start_temp(config, &[]);
    let out = Command::new(BIN)
        .args(["status", "sums", "--json"])
        .env("UBLK_STACK_RUN_DIR", daemon.dir.join("run"))
        .output()
        .unwrap();
    let size = serde_json::from_slice::<Value>(&out.stdout).unwrap()["size"]
        .as_u64()
        .unwrap();
    let out = cli(&daemon, &["scrub", "sums", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let last = lines(&out).pop().unwrap();
    assert_eq!(last["event"], "done", "{out:?}");
    assert_eq!(
        (last["done"].as_u64(), last["total"].as_u64()),
        (Some(size), Some(size))
    );
    assert_eq!(last["unrepairable"], 0);
}
