//! Test support: run the real `ublk-stack up --nbd unix:…` in a directory of its
//! own (its own run dir through UBLK_STACK_RUN_DIR) and speak NBD to it by hand,
//! so a test controls every byte a client sends and when.

// Each test binary uses a part of this.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_ublk-stack");

/// A running `ublk-stack up CONFIG --nbd unix:DIR/nbd.sock` and what it logged so far.
pub struct Daemon {
    pub child: Child,
    pub dir: PathBuf,
    pub socket: PathBuf,
    log: Arc<Mutex<String>>,
    _temp: Option<tempfile::TempDir>,
}

impl Daemon {
    /// Start over `config` (TOML text) in a temporary directory removed on drop.
    pub fn start_temp(config: &str, options: &[&str]) -> Daemon {
        let temp = tempfile::tempdir().unwrap();
        let mut daemon = Daemon::start(temp.path(), config, options);
        daemon._temp = Some(temp);
        daemon
    }

    /// Start over `config` (TOML text, written to DIR/device.toml) in `dir`,
    /// which outlives the daemon; wait for its ready line.
    pub fn start(dir: &Path, config: &str, options: &[&str]) -> Daemon {
        Daemon::start_with_env(dir, config, options, &[])
    }

    /// [`Daemon::start`] with extra environment variables.
    pub fn start_with_env(
        dir: &Path,
        config: &str,
        options: &[&str],
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Daemon {
        let config_path = dir.join("device.toml");
        std::fs::write(&config_path, config).unwrap();
        let socket = dir.join("nbd.sock");
        let mut child = Command::new(BIN)
            .arg("up")
            .arg(&config_path)
            .arg("--nbd")
            .arg(format!("unix:{}", socket.display()))
            .args(options)
            .env("UBLK_STACK_RUN_DIR", dir.join("run"))
            .env_remove("RUST_LOG")
            .env_remove("NOTIFY_SOCKET")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ublk-stack starts");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("daemon: {line}");
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            drop(BufReader::new(stdout).read_line(&mut line));
            drop(tx.send(line));
        });
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("ublk-stack up --nbd prints its ready line");
        let daemon = Daemon {
            child,
            dir: dir.to_path_buf(),
            socket,
            log,
            _temp: None,
        };
        assert!(
            line.contains(" ready ("),
            "unexpected first line: {line:?}\n{}",
            daemon.log()
        );
        daemon
    }

    /// The daemon's resident memory (VmRSS), in bytes.
    pub fn rss(&self) -> u64 {
        rss_of(self.child.id())
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Wait up to `limit` for the daemon to exit by itself.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the daemon still runs after {limit:?}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        drop(self.child.kill());
        drop(self.child.wait());
    }
}

pub fn rss_of(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;

/// One request header (no payload).
pub fn request(kind: u16, cookie: u64, offset: u64, len: u32) -> Vec<u8> {
    let mut r = Vec::with_capacity(28);
    r.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
    r.extend_from_slice(&0u16.to_be_bytes());
    r.extend_from_slice(&kind.to_be_bytes());
    r.extend_from_slice(&cookie.to_be_bytes());
    r.extend_from_slice(&offset.to_be_bytes());
    r.extend_from_slice(&len.to_be_bytes());
    r
}

/// Connect and read the server's greeting.
pub fn greeted(socket: &Path) -> std::io::Result<UnixStream> {
    let mut s = UnixStream::connect(socket)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    let mut greeting = [0u8; 18];
    s.read_exact(&mut greeting)?;
    assert_eq!(&greeting[..8], b"NBDMAGIC");
    Ok(s)
}

/// Connect and finish the handshake with NBD_OPT_GO (simple replies).
pub fn handshake(socket: &Path) -> std::io::Result<UnixStream> {
    let mut s = greeted(socket)?;
    s.write_all(&3u32.to_be_bytes())?;
    let mut go = b"IHAVEOPT".to_vec();
    go.extend_from_slice(&7u32.to_be_bytes());
    go.extend_from_slice(&6u32.to_be_bytes());
    go.extend_from_slice(&0u32.to_be_bytes()); // the default export
    go.extend_from_slice(&0u16.to_be_bytes()); // no info requests
    s.write_all(&go)?;
    loop {
        let mut header = [0u8; 20];
        s.read_exact(&mut header)?;
        let kind = u32::from_be_bytes(header[12..16].try_into().unwrap());
        let len = u32::from_be_bytes(header[16..20].try_into().unwrap());
        let mut data = vec![0u8; len as usize];
        s.read_exact(&mut data)?;
        match kind {
            1 => return Ok(s),
            3 => {}
            other => panic!("GO answered with {other:#x}"),
        }
    }
}

/// Read a simple reply to `cookie` and check it succeeded.
fn expect_ok_reply(s: &mut UnixStream, cookie: u64, what: &str) -> std::io::Result<()> {
    let mut header = [0u8; 16];
    s.read_exact(&mut header)?;
    assert_eq!(&header[..4], &SIMPLE_REPLY_MAGIC.to_be_bytes());
    assert_eq!(&header[4..8], &[0; 4], "{what} failed");
    assert_eq!(u64::from_be_bytes(header[8..].try_into().unwrap()), cookie);
    Ok(())
}

/// One 4 KiB READ at `offset`, answered in full.
pub fn read_block(s: &mut UnixStream, cookie: u64, offset: u64) -> std::io::Result<Vec<u8>> {
    s.write_all(&request(CMD_READ, cookie, offset, 4096))?;
    expect_ok_reply(s, cookie, "READ")?;
    let mut data = vec![0u8; 4096];
    s.read_exact(&mut data)?;
    Ok(data)
}

/// One WRITE of `data` at `offset`, acknowledged (no FUA, no FLUSH).
pub fn write_block(
    s: &mut UnixStream,
    cookie: u64,
    offset: u64,
    data: &[u8],
) -> std::io::Result<()> {
    let mut bytes = request(CMD_WRITE, cookie, offset, data.len() as u32);
    bytes.extend_from_slice(data);
    s.write_all(&bytes)?;
    expect_ok_reply(s, cookie, "WRITE")
}
