//! `ublk-stack upgrade NAME [--binary PATH]`: hand a running ublk device to a
//! new daemon process, which may run a new binary, without the device going
//! away or a request failing.
//!
//! The running daemon does the handover when its control socket asks
//! (`{"cmd": "upgrade", "binary": PATH}`):
//! 1. it refuses, changing nothing, when the kernel or the device cannot be
//!    quiesced (UBLK_F_QUIESCE, Linux 6.16+) or when `PATH validate CONFIG`
//!    fails (a binary that does not run, or cannot read the config);
//! 2. QUIESCE_DEV (a batch device is drained instead): the kernel holds new
//!    requests; the queues finish those in flight and end (see
//!    `ublk::device::handover`);
//! 3. the stack is flushed as in a clean stop (a write-back cache is written
//!    back), then the front end records the clean handover (the mark that
//!    lets a stack with a cache be resumed, see `front_end::ublk`); if either
//!    fails, the daemon takes the device back and serves on;
//! 4. it starts `PATH up CONFIG` (with its `--metrics`), with
//!    `UBLK_STACK_UPGRADE_FROM` naming its own pid, tells systemd the new
//!    process is the service's main one (`MAINPID=`), answers with the new
//!    pid and exits, leaving the device to the kernel.
//!
//! The new process inherits the daemon's environment, output and cgroup. It
//! waits for the old one to be gone (its leaf files are locked until then),
//! then takes the device over like a crash recovery and prints its ready line.
//! The command waits for it to answer on the control socket with its pid.
//! Should it die before that, the device stays with its I/O held (nothing
//! fails) and the command says which `up` serves it again; under systemd,
//! `Restart=on-failure` runs that `up`.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use layers::Stack;
use serde_json::{json, Value};

use super::control;
use super::front_end::{FrontEnd, Handover};

/// Set in the new daemon's environment: the pid of the daemon it replaces.
pub const FROM_ENV: &str = "UBLK_STACK_UPGRADE_FROM";
/// How long `validate` by the new binary may take.
const PREFLIGHT_LIMIT: Duration = Duration::from_secs(60);
/// How long the new daemon waits for the old one to exit.
const PREDECESSOR_LIMIT: Duration = Duration::from_secs(60);
/// How long the command waits for the new daemon to answer.
const READY_LIMIT: Duration = Duration::from_secs(180);

/// What a running daemon needs to hand its device over.
pub(super) struct Successor<'a> {
    pub(super) binary: &'a Path,
    /// The config file, absolute.
    pub(super) config: &'a Path,
    /// `--metrics ADDR`, as given to `up`.
    pub(super) metrics: Option<&'a str>,
}

/// How a handover ended, for the daemon's main loop.
pub(super) enum Outcome {
    /// The new daemon (this pid) is started; this one must exit now.
    Started(u32),
    /// Refused: the device is served by this daemon as before.
    Refused(String),
    /// The device is held for the next `up`; this daemon must exit.
    Stranded(String),
}

/// Steps 1–4 of the module doc, run by the daemon's main loop.
pub(super) fn hand_over(
    front: &mut dyn FrontEnd,
    stack: &Arc<Stack>,
    successor: &Successor<'_>,
    flush: impl Fn(&Stack) -> Result<(), String>,
) -> Outcome {
    if let Some(why) = front.handover_refusal() {
        return Outcome::Refused(why);
    }
    if let Err(why) = preflight(successor.binary, successor.config) {
        return Outcome::Refused(why);
    }
    super::notify::notify("STATUS=handing the device over to a new daemon");
    match front.hand_over() {
        Ok(()) => {}
        Err(Handover::Refused(why)) => return Outcome::Refused(why),
        Err(Handover::Stranded(why)) => return Outcome::Stranded(why),
    }
    let resume = |front: &mut dyn FrontEnd, why: String| match front.resume(stack.clone()) {
        Ok(()) => Outcome::Refused(format!("{why}; the device is served by this daemon again")),
        Err(e) => Outcome::Stranded(format!("{why}; taking the device back failed too: {e}")),
    };
    // Nothing writes to the stack from here on: the kernel holds new requests
    // (quiesced, or canceling after a drain) and `hand_over` returned once
    // the queue threads had finished those in flight and ended.
    if let Err(e) = flush(stack) {
        return resume(front, format!("flushing the stack: {e}"));
    }
    if let Err(e) = front.mark_clean_handover() {
        return resume(front, format!("recording the clean handover: {e}"));
    }
    match spawn(successor) {
        Ok(pid) => {
            // The new process becomes the unit's main process before this one exits.
            super::notify::notify(&format!("MAINPID={pid}"));
            Outcome::Started(pid)
        }
        Err(e) => resume(
            front,
            format!("starting {}: {e}", successor.binary.display()),
        ),
    }
}

/// `BINARY validate CONFIG` must pass: a binary that does not run, or cannot
/// read the config, is refused before anything changes.
fn preflight(binary: &Path, config: &Path) -> Result<(), String> {
    let mut child = Command::new(binary)
        .arg("validate")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{} cannot be run: {e}", binary.display()))?;
    let stderr = child.stderr.take();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut stderr) = stderr {
            drop(io::Read::read_to_string(&mut stderr, &mut text));
        }
        text
    });
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if start.elapsed() < PREFLIGHT_LIMIT => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Ok(None) => {
                drop(child.kill());
                drop(child.wait());
                return Err(format!(
                    "`{} validate {}` did not finish within {} s",
                    binary.display(),
                    config.display(),
                    PREFLIGHT_LIMIT.as_secs()
                ));
            }
            Err(e) => return Err(format!("waiting for {}: {e}", binary.display())),
        }
    };
    let stderr = reader.join().unwrap_or_default();
    if status.success() {
        return Ok(());
    }
    let said = stderr.lines().last().unwrap_or("").trim();
    Err(format!(
        "`{} validate {}` failed ({status}){}",
        binary.display(),
        config.display(),
        if said.is_empty() {
            String::new()
        } else {
            format!(": {said}")
        }
    ))
}

fn spawn(successor: &Successor<'_>) -> io::Result<u32> {
    let mut command = Command::new(successor.binary);
    command.arg("up").arg(successor.config);
    if let Some(metrics) = successor.metrics {
        command.arg("--metrics").arg(metrics);
    }
    let child = command
        .env(FROM_ENV, std::process::id().to_string())
        .stdin(Stdio::null())
        .spawn()?;
    Ok(child.id())
}

/// In a daemon started by a handover: wait until the daemon it replaces has
/// exited (its leaf files and /dev/ublkcN are closed by then).
pub(super) fn wait_for_predecessor() -> Result<(), String> {
    let Some(pid) = std::env::var_os(FROM_ENV) else {
        return Ok(());
    };
    // Not passed on to anything this daemon starts.
    std::env::remove_var(FROM_ENV);
    let Some(pid) = pid.to_str().and_then(|p| p.parse::<u32>().ok()) else {
        return Err(format!("{FROM_ENV}={pid:?} is not a pid"));
    };
    let start = Instant::now();
    while running(pid) {
        if start.elapsed() > PREDECESSOR_LIMIT {
            return Err(format!(
                "the daemon this one replaces (pid {pid}) is still running after {} s",
                PREDECESSOR_LIMIT.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Whether process `pid` exists and has not exited (a zombie has closed its
/// files).
fn running(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the command name, which is in parentheses.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, Some('Z') | Some('X') | None)
}

fn fail(message: impl std::fmt::Display) -> u8 {
    // Names and paths in a message may come from a config file.
    eprintln!(
        "ublk-stack: {}",
        layers::escape::escape_controls(&message.to_string())
    );
    1
}

/// `ublk-stack upgrade NAME [--binary PATH]`.
pub fn command(name: &str, binary: Option<&Path>) -> u8 {
    if !control::is_root() {
        return fail(format!(
            "upgrade needs root: the daemon serving \"{name}\" and the one that takes over run as root"
        ));
    }
    let binary = match binary_to_run(binary) {
        Ok(binary) => binary,
        Err(e) => return fail(e),
    };
    let socket = match control::find(name) {
        Ok(socket) => socket,
        Err(reason) => return fail(reason),
    };
    let request = json!({"cmd": "upgrade", "binary": binary});
    // The old daemon flushes the stack before it answers; give it time.
    let reply = match control::request_value(&socket, &request, Duration::from_secs(600)) {
        Ok(reply) => reply,
        Err(e) => return fail(control::unreachable(name, &socket, &e)),
    };
    if reply["ok"] != true {
        let error = reply["error"].as_str().unwrap_or("upgrade failed");
        return fail(format!("{name}: {error}"));
    }
    let Some(pid) = reply["pid"].as_u64().and_then(|p| u32::try_from(p).ok()) else {
        return fail(format!("{name}: the daemon's answer has no pid: {reply}"));
    };
    match wait_until_served(&socket, pid) {
        Ok(info) => {
            println!(
                "{name}: {} served by pid {pid} ({}), taken over from pid {}",
                info["path"].as_str().unwrap_or("the device"),
                binary.display(),
                reply["previous_pid"]
            );
            0
        }
        Err(why) => fail(format!(
            "{name}: {why}; {} stays with its I/O held (nothing fails meanwhile): \
             run `{} up {}` to serve it again",
            reply["path"].as_str().unwrap_or("the device"),
            reply["previous_binary"].as_str().unwrap_or("ublk-stack"),
            reply["config"].as_str().unwrap_or("CONFIG"),
        )),
    }
}

/// `--binary PATH` made absolute (the daemon runs it from its own directory),
/// or this executable; an error unless it is an executable file.
fn binary_to_run(binary: Option<&Path>) -> Result<PathBuf, String> {
    let Some(binary) = binary else {
        return std::env::current_exe().map_err(|e| format!("finding this executable: {e}"));
    };
    // Not canonicalized: a multi-call binary (busybox) goes by the name it is run as.
    let absolute =
        std::path::absolute(binary).map_err(|e| format!("--binary {}: {e}", binary.display()))?;
    let meta =
        std::fs::metadata(&absolute).map_err(|e| format!("--binary {}: {e}", binary.display()))?;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        return Err(format!(
            "--binary {}: not an executable file",
            binary.display()
        ));
    }
    Ok(absolute)
}

/// Wait until the daemon `pid` answers `info` on `socket`; an error if it
/// exits first or takes too long.
fn wait_until_served(socket: &Path, pid: u32) -> Result<Value, String> {
    let start = Instant::now();
    loop {
        if let Ok(info) = control::request(socket, "info", Duration::from_secs(5)) {
            if info["pid"].as_u64() == Some(u64::from(pid)) {
                return Ok(info);
            }
        }
        if !running(pid) {
            return Err(format!(
                "the new daemon (pid {pid}) exited before it served the device (its messages are in the old daemon's log)"
            ));
        }
        if start.elapsed() > READY_LIMIT {
            return Err(format!(
                "the new daemon (pid {pid}) is not serving the device after {} s",
                READY_LIMIT.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_runs_and_a_missing_one_does_not() {
        assert!(running(std::process::id()));
        assert!(!running(u32::MAX));
    }

    #[test]
    fn a_binary_that_fails_validate_is_refused_with_its_status() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("c.toml");
        let why = preflight(Path::new("/bin/false"), &config).unwrap_err();
        assert!(why.contains("/bin/false validate"), "{why}");
        assert!(why.contains("exit status: 1"), "{why}");
        let why = preflight(&dir.path().join("missing"), &config).unwrap_err();
        assert!(why.contains("cannot be run"), "{why}");
        assert!(preflight(Path::new("/bin/true"), &config).is_ok());
    }
}
