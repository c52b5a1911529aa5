//! Test support: a network namespace joined to this one by a veth pair, with
//! servers started inside it, all removed on drop (even when the test
//! panics). Deleting the namespace takes its end of the veth pair, and so
//! the pair, with it. Namespaces left by a test process that died without
//! unwinding (named after its pid) are removed by the next one.

// Each test binary uses a part of this.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

const PREFIX: &str = "ubstest";
/// At most this many namespaces per test process: each takes a /30 of the
/// process's /24.
const MAX_PER_PROCESS: u32 = 32;
static NEXT: AtomicU32 = AtomicU32::new(0);

pub struct NetNs {
    pub name: String,
    /// The veth end in this namespace; taking it down cuts the link.
    pub host_if: String,
    pub host_ip: String,
    /// The address servers in the namespace listen on.
    pub peer_ip: String,
    children: Vec<Child>,
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?} does not start ({e})"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn ip(args: &[&str]) -> Output {
    run(Command::new("ip").args(args))
}

/// Removes namespaces of this prefix whose test process is gone.
fn sweep_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let pid = rest.split('n').next().and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid {
            if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                drop(Command::new("ip").args(["netns", "del", name]).status());
            }
        }
    }
}

impl NetNs {
    /// A new namespace with its loopback up and a veth pair to this one.
    /// Needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN) and iproute2.
    pub fn new() -> NetNs {
        sweep_stale();
        let pid = std::process::id();
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        assert!(n < MAX_PER_PROCESS, "too many namespaces in one test");
        let name = format!("{PREFIX}{pid}n{n}");
        // Interface names are at most 15 bytes.
        let host_if = format!("ubh{:x}n{n}", pid & 0xf_ffff);
        let peer_if = format!("ubp{:x}n{n}", pid & 0xf_ffff);
        let net = format!("10.{}.{}", 128 + ((pid >> 8) & 127), pid & 255);
        let host_ip = format!("{net}.{}", 4 * n + 1);
        let peer_ip = format!("{net}.{}", 4 * n + 2);
        ip(&["netns", "add", &name]);
        let ns = NetNs {
            name,
            host_if,
            host_ip,
            peer_ip,
            children: Vec::new(),
        };
        ip(&[
            "link",
            "add",
            &ns.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &peer_if,
        ]);
        ip(&["link", "set", &peer_if, "netns", &ns.name]);
        ip(&[
            "addr",
            "add",
            &format!("{}/30", ns.host_ip),
            "dev",
            &ns.host_if,
        ]);
        ip(&["link", "set", &ns.host_if, "up"]);
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns.exec(&[
            "ip",
            "addr",
            "add",
            &format!("{}/30", ns.peer_ip),
            "dev",
            &peer_if,
        ]);
        ns.exec(&["ip", "link", "set", &peer_if, "up"]);
        ns
    }

    /// Runs `args` in the namespace to completion.
    pub fn exec(&self, args: &[&str]) -> Output {
        run(Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args))
    }

    /// Starts `args` in the namespace (`ip netns exec` execs it, so the
    /// child is the server itself), killed on drop.
    pub fn spawn(&mut self, args: &[&str], env: &[(&str, &str)]) {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{args:?} does not start ({e})"));
        self.children.push(child);
    }

    /// Waits until something in the namespace listens on `port`.
    pub fn wait_listening(&self, port: u16) {
        let addr: SocketAddr = format!("{}:{port}", self.peer_ip).parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(Instant::now() < deadline, "nothing listens on {addr}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Takes this end of the link down (packets to the namespace are
    /// dropped, nothing is closed) or up again.
    pub fn link(&self, up: bool) {
        let state = if up { "up" } else { "down" };
        ip(&["link", "set", &self.host_if, state]);
        if up {
            // Taking the link down dropped its address's route; make sure it
            // is back before anyone counts on it.
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let out = Command::new("ip")
                    .args(["route", "get", &self.peer_ip])
                    .output()
                    .expect("ip runs");
                if String::from_utf8_lossy(&out.stdout).contains(&self.host_if) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "no route back to {}",
                    self.peer_ip
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        for child in &mut self.children {
            drop(child.kill());
            drop(child.wait());
        }
        drop(
            Command::new("ip")
                .args(["netns", "del", &self.name])
                .status(),
        );
        // Gone with the namespace's end; only in case the move failed.
        drop(
            Command::new("ip")
                .args(["link", "del", &self.host_if])
                .stderr(Stdio::null())
                .status(),
        );
    }
}
