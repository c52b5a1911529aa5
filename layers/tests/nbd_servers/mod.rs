//! NBD servers for the `nbd` leaf's tests: nbdkit and qemu-nbd started in
//! the foreground, killed on drop, and the leaf parameters that reach them.

// Each test binary uses a part of this.
#![allow(dead_code)]

pub mod certs;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use layers::nbd::uri::NbdUri;
use layers::plan::NbdParams;

/// A running server and where it listens.
pub struct Server {
    child: Child,
    socket: Option<PathBuf>,
    port: Option<u16>,
    _dir: tempfile::TempDir,
}

impl Server {
    /// `nbdkit memory` of `size` bytes on a unix socket.
    pub fn nbdkit_memory(size: u64) -> Server {
        Server::nbdkit_memory_with(size, &[])
    }

    /// `nbdkit memory` with extra options before the plugin (`--no-sr`,
    /// `--filter=…`).
    pub fn nbdkit_memory_with(size: u64, options: &[&str]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("nbd.sock");
        let mut cmd = Command::new("nbdkit");
        cmd.args(["-f", "--exit-with-parent", "-U"])
            .arg(&socket)
            .args(options)
            .args(["memory", &format!("size={size}")]);
        Server::start(cmd, dir, Some(socket), None)
    }

    /// `nbdkit memory` of `size` bytes on loopback TCP, with options before
    /// the plugin (`--tls=require`, …).
    pub fn nbdkit_memory_tcp(size: u64, options: &[&str]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut cmd = Command::new("nbdkit");
        cmd.args(["-f", "--exit-with-parent", "-i", "127.0.0.1", "-p"])
            .arg(port.to_string())
            .args(options)
            .args(["memory", &format!("size={size}")]);
        Server::start(cmd, dir, None, Some(port))
    }

    /// `nbdkit file` on a new file of `size` bytes, on loopback TCP.
    pub fn nbdkit_file_tcp(path: &Path, size: u64) -> Server {
        std::fs::File::create(path).unwrap().set_len(size).unwrap();
        Server::nbdkit_file_on(path, free_port(), &[])
    }

    /// `nbdkit file` on the existing `path`, on loopback TCP `port`, with
    /// extra options (`--…` before the plugin, `key=value` after it).
    pub fn nbdkit_file_on(path: &Path, port: u16, options: &[&str]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("nbdkit");
        cmd.args(["-f", "--exit-with-parent", "-i", "127.0.0.1", "-p"])
            .arg(port.to_string())
            .args(options.iter().filter(|o| o.starts_with("--")))
            .arg("file")
            .arg(path)
            .args(options.iter().filter(|o| !o.starts_with("--")));
        Server::start(cmd, dir, None, Some(port))
    }

    pub fn port(&self) -> u16 {
        self.port.expect("a TCP server")
    }

    /// `qemu-nbd` on a new raw file of `size` bytes, on a unix socket,
    /// serving one client after another.
    pub fn qemu_nbd(path: &Path, size: u64) -> Server {
        std::fs::File::create(path).unwrap().set_len(size).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("nbd.sock");
        let mut cmd = Command::new("qemu-nbd");
        cmd.args(["-f", "raw", "--persistent", "--shared=8", "-k"])
            .arg(&socket)
            .arg(path);
        Server::start(cmd, dir, Some(socket), None)
    }

    /// `qemu-nbd` on a new raw file of `size` bytes, on a unix socket, TLS
    /// only, with the certificates in `certs` (see [`certs::Certs`]); with
    /// `verify_peer`, clients must show a certificate signed by the CA.
    pub fn qemu_nbd_tls(path: &Path, size: u64, certs: &Path, verify_peer: bool) -> Server {
        std::fs::File::create(path).unwrap().set_len(size).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("nbd.sock");
        let verify = if verify_peer { "on" } else { "off" };
        let mut cmd = Command::new("qemu-nbd");
        cmd.arg("--object")
            .arg(format!(
                "tls-creds-x509,id=tls0,endpoint=server,dir={},verify-peer={verify}",
                certs.display()
            ))
            .args(["--tls-creds", "tls0"])
            .args(["-f", "raw", "--persistent", "--shared=8", "-k"])
            .arg(&socket)
            .arg(path);
        Server::start(cmd, dir, Some(socket), None)
    }

    fn start(
        mut cmd: Command,
        dir: tempfile::TempDir,
        socket: Option<PathBuf>,
        port: Option<u16>,
    ) -> Server {
        let program = format!("{:?}", cmd.get_program());
        let child = cmd
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{program} does not start ({e}): run tests/nbd/setup.sh"));
        let server = Server {
            child,
            socket,
            port,
            _dir: dir,
        };
        server.wait_listening(&program);
        server
    }

    fn wait_listening(&self, program: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let up = match (&self.socket, self.port) {
                (Some(socket), _) => std::os::unix::net::UnixStream::connect(socket).is_ok(),
                (None, Some(port)) => std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
                (None, None) => unreachable!("a server listens somewhere"),
            };
            if up {
                return;
            }
            assert!(Instant::now() < deadline, "{program} does not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn unix_uri(&self) -> String {
        let socket = self.socket.as_ref().expect("a unix socket server");
        format!("nbd+unix:///?socket={}", socket.display())
    }

    pub fn tcp_uri(&self) -> String {
        format!("nbd://127.0.0.1:{}/", self.port.expect("a TCP server"))
    }

    /// `nbds://HOST:PORT/`.
    pub fn tls_uri(&self, host: &str) -> String {
        format!("nbds://{host}:{}/", self.port.expect("a TCP server"))
    }

    /// `nbds+unix:///?socket=…&tls-hostname=NAME`.
    pub fn tls_unix_uri(&self, name: &str) -> String {
        let socket = self.socket.as_ref().expect("a unix socket server");
        format!(
            "nbds+unix:///?socket={}&tls-hostname={name}",
            socket.display()
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        drop(self.child.kill());
        drop(self.child.wait());
    }
}

/// A port nobody listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Leaf parameters for `uri`, with a short timeout.
pub fn params(uri: &str, size_bytes: Option<u64>) -> NbdParams {
    NbdParams {
        uri: NbdUri::parse(uri).unwrap(),
        size_bytes,
        connections: 1,
        timeout_us: 5_000_000,
        tls_ca: None,
        tls_cert: None,
        tls_key: None,
    }
}

/// Leaf parameters for an nbds:// `uri` checked against the CA `ca`, with
/// a client certificate and key if given.
pub fn tls_params(
    uri: &str,
    size_bytes: Option<u64>,
    ca: &Path,
    client: Option<(PathBuf, PathBuf)>,
) -> NbdParams {
    let (tls_cert, tls_key) = client.unzip();
    NbdParams {
        tls_ca: Some(ca.to_path_buf()),
        tls_cert,
        tls_key,
        ..params(uri, size_bytes)
    }
}
