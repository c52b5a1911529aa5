//! The control socket of a running device, `$UBLK_STACK_RUN_DIR/NAME.sock`
//! (default /run/ublk-stack, mode 0600), and the client side used by `down`,
//! `list`, `status` and `reload`.
//!
//! Protocol: the client sends one JSON object on one line, `{"cmd": "info"}`,
//! `{"cmd": "status"}`, `{"cmd": "reload"}`, `{"cmd": "down", "force": BOOL}`,
//! `{"cmd": "plan", "text": TOML, "path": FILE}`, `{"cmd": "scrub"}` or
//! `{"cmd": "readd", "layer": MIRROR, "leg": N, "wait": BOOL}` or
//! `{"cmd": "upgrade", "binary": PATH}`, and reads one
//! JSON line back. Every reply has `"ok"`; failures carry `"error"`. `down` is
//! answered only once the device is gone (or, without `force`, at once with
//! `"refused": true` when it is in use and goes on serving), so the client's
//! exit status tells the truth; `reload` once the reload is applied or refused;
//! `scrub` once the scrub is over, and `readd` with `"wait": true` once the
//! rebuild is; `upgrade` once the new daemon is started (its `"pid"`) or the
//! handover refused (see `upgrade.rs`). With `"progress_ms": N`, those two send progress lines before
//! the reply, at most one per N ms: `{"event": "progress", ...}`
//! (`repair/progress.rs`), which carry no `"ok"`.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub const DEFAULT_RUN_DIR: &str = "/run/ublk-stack";

/// `$UBLK_STACK_RUN_DIR`; else, for a user other than root, that user's
/// `$XDG_RUNTIME_DIR/ublk-stack` (they cannot create /run/ublk-stack; `up
/// --nbd` needs no privilege); else /run/ublk-stack.
pub fn run_dir() -> PathBuf {
    let var = |name: &str| std::env::var_os(name).filter(|dir| !dir.is_empty());
    if let Some(dir) = var("UBLK_STACK_RUN_DIR") {
        return PathBuf::from(dir);
    }
    match var("XDG_RUNTIME_DIR") {
        Some(runtime) if !is_root() => PathBuf::from(runtime).join("ublk-stack"),
        _ => PathBuf::from(DEFAULT_RUN_DIR),
    }
}

/// Whether this process runs as root (effective uid 0).
pub fn is_root() -> bool {
    // The owner of /proc/self is the process's effective uid.
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

pub fn socket_path(name: &str) -> PathBuf {
    run_dir().join(format!("{name}.sock"))
}

/// What the server side answers `info` and `status` from.
pub trait Report: Send + Sync + 'static {
    /// Name, path, size, state and the like.
    fn info(&self) -> Value;
    /// `info` plus the layer tree with counters.
    fn status(&self) -> Value;
    /// Re-read the config now and say what was applied and what refused.
    fn reload(&self) -> Value {
        json!({"ok": false, "error": "reload is not available"})
    }
    /// What a reload from config `text` (the file at `path`) would do.
    fn plan(&self, _text: &str, _path: &Path) -> Value {
        json!({"ok": false, "error": "plan is not available"})
    }
    /// Read every copy, verify and repair (see `repair.rs`), sending progress
    /// lines to `progress`.
    fn scrub(&self, _progress: &mut ProgressLines) -> Value {
        json!({"ok": false, "error": "scrub is not available"})
    }
    /// Re-add a failed mirror leg and rebuild it; with `wait`, answer once the
    /// rebuild is over, sending progress lines to `progress` meanwhile.
    fn readd(
        &self,
        _layer: &str,
        _leg: usize,
        _wait: bool,
        _progress: &mut ProgressLines,
    ) -> Value {
        json!({"ok": false, "error": "readd is not available"})
    }
}

/// Where a scrub or a rebuild sends its progress: lines on the client's
/// connection, at most one per interval the client asked for; none when it
/// asked for none or has gone (the work goes on without it).
pub struct ProgressLines {
    stream: Option<UnixStream>,
    every: Duration,
    last: Option<Instant>,
}

impl ProgressLines {
    /// No lines.
    fn none() -> ProgressLines {
        ProgressLines {
            stream: None,
            every: Duration::MAX,
            last: None,
        }
    }

    /// Lines on `stream` when `request` has `progress_ms` (at least 100 ms apart).
    fn for_request(stream: &UnixStream, request: &Value) -> ProgressLines {
        let Some(ms) = request["progress_ms"].as_u64() else {
            return ProgressLines::none();
        };
        ProgressLines {
            stream: stream.try_clone().ok(),
            every: Duration::from_millis(ms.max(100)),
            last: None,
        }
    }

    /// Send the line `line` makes if one is due (the first is due at once).
    pub fn offer(&mut self, line: impl FnOnce() -> Option<Value>) {
        let Some(stream) = self.stream.as_mut() else {
            return;
        };
        if self.last.is_some_and(|last| last.elapsed() < self.every) {
            return;
        }
        let Some(line) = line() else {
            return;
        };
        self.last = Some(Instant::now());
        if stream.write_all(format!("{line}\n").as_bytes()).is_err() {
            self.stream = None;
        }
    }
}

/// Bind the device's socket. A socket file left by a daemon that died is
/// replaced; one that answers means the device is already running.
pub fn bind(name: &str) -> Result<(UnixListener, PathBuf), String> {
    let dir = run_dir();
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let path = socket_path(name);
    if path.exists() {
        refuse_if_running(name)?;
        std::fs::remove_file(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let listener = UnixListener::bind(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((listener, path))
}

/// Refuse a second daemon for `name`: checked before `up` opens any leaf, so
/// the answer is "already running", not a lock held on a leaf file.
pub fn refuse_if_running(name: &str) -> Result<(), String> {
    let path = socket_path(name);
    if UnixStream::connect(&path).is_ok() {
        return Err(format!(
            "device \"{name}\" is already running (its control socket {} answers); \
             `ublk-stack down {name}` stops it",
            path.display()
        ));
    }
    Ok(())
}

/// What the daemon's main loop waits for.
pub enum Event {
    /// SIGINT or SIGTERM.
    Signal(i32),
    /// `down`: answer on this connection once the device is gone. Without
    /// `force`, a device in use is not stopped.
    Down { client: UnixStream, force: bool },
    /// `upgrade`: hand the device to a new daemon started from `binary`, and
    /// answer on this connection once it is started or the handover refused.
    Upgrade { client: UnixStream, binary: PathBuf },
}

/// Serve the socket on a thread of its own: `info` and `status` are answered
/// here, `down` is handed to the daemon's main loop with the connection to
/// answer on.
pub fn serve(
    listener: UnixListener,
    report: Arc<dyn Report>,
    down: Sender<Event>,
) -> io::Result<()> {
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                if let Err(e) = handle(stream, &report, &down) {
                    tracing::debug!("control connection: {e}");
                }
            }
        })?;
    Ok(())
}

fn handle(stream: UnixStream, report: &Arc<dyn Report>, down: &Sender<Event>) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line)?;
    let request: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
    let reply = match request.get("cmd").and_then(Value::as_str) {
        Some("info") => report.info(),
        Some("status") => report.status(),
        Some("plan") => report.plan(
            request["text"].as_str().unwrap_or_default(),
            Path::new(request["path"].as_str().unwrap_or("/config.toml")),
        ),
        // A reload may write back a cache: on a thread of its own, so that
        // `status` keeps answering meanwhile.
        Some("reload") => {
            let report = report.clone();
            std::thread::Builder::new()
                .name("control-reload".into())
                .spawn(move || reply_to(stream, &report.reload()))?;
            return Ok(());
        }
        // Scrubs and re-adds read or write the whole device: on threads of their own.
        Some("scrub") => {
            let report = report.clone();
            let mut progress = ProgressLines::for_request(&stream, &request);
            std::thread::Builder::new()
                .name("control-scrub".into())
                .spawn(move || reply_to(stream, &report.scrub(&mut progress)))?;
            return Ok(());
        }
        Some("readd") => {
            let layer = request["layer"].as_str().unwrap_or_default().to_string();
            let leg = request["leg"].as_u64().unwrap_or(u64::MAX) as usize;
            let wait = request["wait"] == true;
            let report = report.clone();
            let mut progress = ProgressLines::for_request(&stream, &request);
            std::thread::Builder::new()
                .name("control-readd".into())
                .spawn(move || reply_to(stream, &report.readd(&layer, leg, wait, &mut progress)))?;
            return Ok(());
        }
        Some("down") => {
            let force = request["force"].as_bool().unwrap_or(false);
            return down
                .send(Event::Down {
                    client: stream,
                    force,
                })
                .map_err(|_| io::Error::other("daemon is shutting down"));
        }
        Some("upgrade") => {
            let Some(binary) = request["binary"].as_str().map(PathBuf::from) else {
                return reply_to(
                    stream,
                    &json!({"ok": false, "error": "upgrade needs \"binary\""}),
                );
            };
            return down
                .send(Event::Upgrade {
                    client: stream,
                    binary,
                })
                .map_err(|_| io::Error::other("daemon is shutting down"));
        }
        _ => json!({"ok": false, "error": "unknown command"}),
    };
    reply_to(stream, &reply)
}

/// Write one reply line.
pub fn reply_to(mut stream: UnixStream, reply: &Value) -> io::Result<()> {
    let mut text = reply.to_string();
    text.push('\n');
    stream.write_all(text.as_bytes())
}

/// Client side: send `cmd` to the daemon behind `socket` and read its reply.
/// `timeout` bounds the wait for the reply (`down` waits for a whole teardown).
pub fn request(socket: &Path, cmd: &str, timeout: Duration) -> io::Result<Value> {
    request_value(socket, &json!({ "cmd": cmd }), timeout)
}

/// Client side: send a request with arguments and read the reply.
pub fn request_value(socket: &Path, request: &Value, timeout: Duration) -> io::Result<Value> {
    request_with_progress(socket, request, timeout, &mut |_| {})
}

/// Client side: send a request whose reply may follow progress lines (see the
/// module doc); hand each of those to `progress` and return the reply.
/// `timeout` bounds the wait for each line.
pub fn request_with_progress(
    socket: &Path,
    request: &Value,
    timeout: Duration,
    progress: &mut dyn FnMut(&Value),
) -> io::Result<Value> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.write_all(format!("{request}\n").as_bytes())?;
    let mut lines = BufReader::new(&stream);
    loop {
        let mut line = String::new();
        lines.read_line(&mut line)?;
        if line.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "daemon closed the connection",
            ));
        }
        let value: Value = serde_json::from_str(&line)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        if value.get("ok").is_some() {
            return Ok(value);
        }
        progress(&value);
    }
}

/// Why the control socket of device `name` could not be reached, as one line:
/// no such device, or no permission (the socket is 0600 and its folder may be
/// closed to other users), which must not read as "nothing is running".
pub fn unreachable(name: &str, socket: &Path, error: &io::Error) -> String {
    match error.kind() {
        io::ErrorKind::PermissionDenied => format!(
            "permission denied: cannot reach {} (the control socket of \"{name}\"); \
             run as root or as the user that runs the device",
            socket.display()
        ),
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
            format!("no running device named \"{name}\"")
        }
        _ => format!("{name}: {}: {error}", socket.display()),
    }
}

/// The control socket of device `name`, or why there is none to talk to.
pub fn find(name: &str) -> Result<PathBuf, String> {
    let socket = socket_path(name);
    match std::fs::symlink_metadata(&socket) {
        Ok(_) => Ok(socket),
        Err(error) => Err(unreachable(name, &socket, &error)),
    }
}

/// Every `*.sock` in the run directory, with the device name it stands for.
/// No run directory means no devices; one that cannot be read is an error
/// (permission denied), not an empty list.
pub fn sockets() -> io::Result<Vec<(String, PathBuf)>> {
    let entries = match std::fs::read_dir(run_dir()) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(error),
    };
    let mut found: Vec<(String, PathBuf)> = entries
        .flatten()
        .filter_map(|entry| {
            let path = entry.path();
            let name = path
                .file_name()?
                .to_str()?
                .strip_suffix(".sock")?
                .to_string();
            Some((name, path))
        })
        .collect();
    found.sort();
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    struct Fixed;
    impl Report for Fixed {
        fn info(&self) -> Value {
            json!({"ok": true, "name": "t"})
        }
        fn status(&self) -> Value {
            json!({"ok": true, "layers": []})
        }
    }

    #[test]
    fn socket_answers_info_and_hands_down_to_the_main_loop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let (tx, rx) = mpsc::channel();
        serve(listener, Arc::new(Fixed), tx).unwrap();
        let info = request(&path, "info", Duration::from_secs(5)).unwrap();
        assert_eq!(info["name"], "t");
        let unknown = request(&path, "nonsense", Duration::from_secs(5)).unwrap();
        assert_eq!(unknown["ok"], false);
        let down = json!({"cmd": "down", "force": true});
        let client =
            std::thread::spawn(move || request_value(&path, &down, Duration::from_secs(5)));
        let Event::Down {
            client: stream,
            force,
        } = rx.recv().unwrap()
        else {
            panic!("expected down")
        };
        assert!(force);
        reply_to(stream, &json!({"ok": true})).unwrap();
        assert_eq!(client.join().unwrap().unwrap()["ok"], true);
    }
}
