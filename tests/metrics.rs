//! `up --metrics`: a real daemon serving over NBD (no kernel module needed)
//! is scraped before and after I/O, and the counters must move with it: ops
//! and bytes, cache lookups, a corrupted block read through a checksum layer
//! (repaired from the other mirror leg), a reload. The page passes `promtool
//! check metrics` while I/O runs (`#[ignore]`d: it needs promtool, from
//! Debian's `prometheus`; `--run-ignored all` runs it and it fails when the
//! tool is missing). Hostile HTTP clients get their errors and leave the
//! daemon serving; a bad address or a port in use stops `up` before anything
//! is created.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "support/nbd.rs"]
mod support;
use support::{handshake, read_block, request, write_block, Daemon, BIN};

const CONFIG: &str = r#"version = 1
[device]
name = "scraped"
top = "cache"
queues = 1

[log]
level = "info"

# 16 blocks in all, so that writing a few hundred evicts the first.
[layers.cache]
type = "cache"
over = "mirror"
capacity = "64KiB"

[layers.mirror]
type = "mirror"
legs = ["sum", "copy"]
read_policy = "first"

[layers.sum]
type = "checksum"
over = "a"

[layers.a]
type = "file"
path = "a.img"
size = "16MiB"
create = true

[layers.copy]
type = "checksum"
over = "b"

[layers.b]
type = "file"
path = "b.img"
size = "16MiB"
create = true
"#;

const BLOCK: usize = 4096;
const CMD_FLUSH: u16 = 3;

/// A daemon over [`CONFIG`] with `--metrics 0` (loopback, a free port), and
/// its metrics URL as `status --json` gives it.
fn start() -> (Daemon, String) {
    let daemon = Daemon::start_temp(CONFIG, &["--metrics", "0"]);
    let status = cli(&daemon, &["status", "scraped", "--json"]);
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    let url = status["metrics"]
        .as_str()
        .expect("status names the metrics URL")
        .to_string();
    // `--metrics PORT` is this host only.
    assert!(
        url.starts_with("http://127.0.0.1:") && url.ends_with("/metrics"),
        "{url}"
    );
    (daemon, url)
}

fn cli(daemon: &Daemon, args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(args)
        .env("UBLK_STACK_RUN_DIR", daemon.dir.join("run"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{args:?}: {out:?}\n{}", daemon.log());
    String::from_utf8(out.stdout).unwrap()
}

/// `host:port` of `http://host:port/metrics`.
fn authority(url: &str) -> &str {
    url.strip_prefix("http://")
        .unwrap()
        .strip_suffix("/metrics")
        .unwrap()
}

/// Send `request` as is and read the whole reply (the server closes).
fn exchange(url: &str, request: &[u8]) -> (String, Vec<u8>) {
    let mut s = TcpStream::connect(authority(url)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(request).unwrap();
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).unwrap();
    let end = reply
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a reply head");
    let head = String::from_utf8(reply[..end].to_vec()).unwrap();
    (head, reply[end + 4..].to_vec())
}

fn get(url: &str, accept: Option<&str>) -> (String, String) {
    let accept = accept.map_or(String::new(), |a| format!("Accept: {a}\r\n"));
    let request = format!(
        "GET /metrics HTTP/1.1\r\nHost: {}\r\n{accept}\r\n",
        authority(url)
    );
    let (head, body) = exchange(url, request.as_bytes());
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    (head, String::from_utf8(body).unwrap())
}

fn scrape(url: &str) -> Scrape {
    let (head, body) = get(url, None);
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4"),
        "{head}"
    );
    Scrape::parse(&body)
}

/// The samples of one scrape: `name{labels}` → value.
struct Scrape {
    samples: BTreeMap<String, (BTreeMap<String, String>, f64)>,
    text: String,
}

impl Scrape {
    fn parse(text: &str) -> Scrape {
        let mut samples = BTreeMap::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (series, value) = line.rsplit_once(' ').unwrap();
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, rest.strip_suffix('}').unwrap()),
                None => (series, ""),
            };
            let mut map = BTreeMap::new();
            // Values in these tests have no commas or escaped quotes.
            for pair in labels.split(',').filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once('=').unwrap();
                map.insert(k.to_string(), v.trim_matches('"').to_string());
            }
            map.insert("__name__".to_string(), name.to_string());
            let value = match value {
                "+Inf" => f64::INFINITY,
                v => v.parse().unwrap(),
            };
            let before = samples.insert(series.to_string(), (map, value));
            assert!(before.is_none(), "{series} twice in\n{text}");
        }
        Scrape {
            samples,
            text: text.to_string(),
        }
    }

    /// The one sample of `name` whose labels include `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found: Vec<f64> = self
            .samples
            .values()
            .filter(|(map, _)| {
                map["__name__"] == name
                    && labels
                        .iter()
                        .all(|(k, v)| map.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, value)| *value)
            .collect();
        assert_eq!(
            found.len(),
            1,
            "{name} {labels:?}: {found:?} in\n{}",
            self.text
        );
        found[0]
    }
}

fn flush(s: &mut UnixStream, cookie: u64) {
    s.write_all(&request(CMD_FLUSH, cookie, 0, 0)).unwrap();
    let mut reply = [0u8; 16];
    s.read_exact(&mut reply).unwrap();
    assert_eq!(&reply[4..8], &[0; 4], "FLUSH failed");
}

/// A block's contents, different for every `seed`.
fn pattern(seed: u64) -> Vec<u8> {
    let mut data: Vec<u8> = (0..BLOCK)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed as u8)
        .collect();
    data[..8].copy_from_slice(&seed.to_le_bytes());
    data
}

/// Flip a byte of the copy of `data` in the leaf file at `path`.
fn corrupt(path: &Path, data: &[u8]) {
    let mut bytes = std::fs::read(path).unwrap();
    let at = bytes
        .chunks(BLOCK)
        .position(|chunk| chunk == data)
        .expect("the block is on the leaf");
    bytes[at * BLOCK + 100] ^= 0xff;
    let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    std::os::unix::fs::FileExt::write_all_at(
        &file,
        &bytes[at * BLOCK..(at + 1) * BLOCK],
        (at * BLOCK) as u64,
    )
    .unwrap();
}

#[test]
fn counters_move_with_io_a_corrupted_block_and_a_reload() {
    let (daemon, url) = start();
    let before = scrape(&url);
    let top = [("layer", "cache"), ("type", "cache")];
    let ops = |s: &Scrape, layer: &[(&str, &str)], op: &str| {
        let mut labels = layer.to_vec();
        labels.push(("op", op));
        s.value("ublk_stack_layer_ops_total", &labels)
    };
    assert_eq!(ops(&before, &top, "write"), 0.0);
    assert_eq!(before.value("ublk_stack_config_generation", &[]), 1.0);
    assert_eq!(before.value("ublk_stack_nbd_connections", &[]), 0.0);
    for state in ["ok", "failed", "rebuilding"] {
        let expected = if state == "ok" { 1.0 } else { 0.0 };
        for (leg, leg_layer) in [("0", "sum"), ("1", "copy")] {
            let labels = [("leg", leg), ("leg_layer", leg_layer), ("state", state)];
            assert_eq!(
                before.value("ublk_stack_mirror_leg_state", &labels),
                expected
            );
        }
    }

    let mut s = handshake(&daemon.socket).unwrap();
    let target = pattern(u64::MAX);
    write_block(&mut s, 1, 0, &target).unwrap();
    // Enough other blocks that the cache (16 blocks) no longer holds block 0.
    let others = 512u64;
    for i in 1..=others {
        write_block(&mut s, 1 + i, i * BLOCK as u64, &pattern(i)).unwrap();
    }
    flush(&mut s, 10_000);
    // A block never written: a miss, then a hit.
    for cookie in [10_001, 10_002] {
        read_block(&mut s, cookie, 1000 * BLOCK as u64).unwrap();
    }
    let middle = scrape(&url);
    let writes = others as f64 + 1.0;
    assert_eq!(ops(&middle, &top, "write"), writes);
    assert_eq!(ops(&middle, &top, "flush"), 1.0);
    assert_eq!(ops(&middle, &top, "read"), 2.0);
    let bytes = |s: &Scrape, op: &str| {
        s.value(
            "ublk_stack_layer_bytes_total",
            &[("layer", "cache"), ("op", op)],
        )
    };
    assert_eq!(bytes(&middle, "write"), writes * BLOCK as f64);
    assert_eq!(bytes(&middle, "read"), 2.0 * BLOCK as f64);
    // Every leaf saw the writes too (the mirror writes both legs).
    assert!(ops(&middle, &[("layer", "a")], "write") >= writes);
    assert!(ops(&middle, &[("layer", "b")], "write") >= writes);
    let cache = |s: &Scrape, name: &str| s.value(name, &[("layer", "cache")]);
    assert!(
        cache(&middle, "ublk_stack_cache_hits_total") >= 1.0,
        "{}",
        middle.text
    );
    assert!(cache(&middle, "ublk_stack_cache_misses_total") >= 1.0);
    assert!(cache(&middle, "ublk_stack_cache_evictions_total") > 0.0);
    // One write in 32 per queue is timed (these all come from one queue);
    // every flush.
    let timed = |s: &Scrape, op: &str| {
        s.value(
            "ublk_stack_layer_latency_seconds_count",
            &[("layer", "cache"), ("op", op)],
        )
    };
    assert_eq!(timed(&middle, "write"), (writes / 32.0).floor());
    assert_eq!(timed(&middle, "flush"), 1.0);
    let inf = [("layer", "cache"), ("op", "write"), ("le", "+Inf")];
    assert_eq!(
        middle.value("ublk_stack_layer_latency_seconds_bucket", &inf),
        timed(&middle, "write")
    );
    assert!(
        middle.value(
            "ublk_stack_layer_latency_seconds_sum",
            &[("layer", "cache"), ("op", "write")]
        ) > 0.0
    );
    assert_eq!(middle.value("ublk_stack_nbd_connections", &[]), 1.0);
    assert_eq!(
        middle.value("ublk_stack_nbd_connections_accepted_total", &[]),
        1.0
    );
    assert_eq!(
        middle.value("ublk_stack_checksum_mismatches_total", &[("layer", "sum")]),
        0.0
    );

    // Block 0 rots on leg 0; the read is served from leg 1 and repaired.
    corrupt(&daemon.dir.join("a.img"), &target);
    assert_eq!(read_block(&mut s, 20_000, 0).unwrap(), target);
    let after = scrape(&url);
    assert_eq!(
        after.value("ublk_stack_checksum_mismatches_total", &[("layer", "sum")]),
        1.0
    );
    assert_eq!(
        after.value("ublk_stack_checksum_mismatches_total", &[("layer", "copy")]),
        0.0
    );
    let sum_read = [("layer", "sum"), ("op", "read")];
    assert!(after.value("ublk_stack_layer_errors_total", &sum_read) >= 1.0);
    let leg0 = [("layer", "mirror"), ("leg", "0")];
    assert_eq!(
        after.value("ublk_stack_mirror_leg_repaired_total", &leg0),
        1.0
    );
    assert_eq!(ops(&after, &top, "read"), 3.0);
    // The device answered without an error.
    let top_read = [("layer", "cache"), ("op", "read")];
    assert_eq!(after.value("ublk_stack_layer_errors_total", &top_read), 0.0);

    // An applied reload shows as a new generation and its result.
    let config = daemon.dir.join("device.toml");
    std::fs::write(&config, CONFIG.replace("\"64KiB\"", "\"128KiB\"")).unwrap();
    cli(&daemon, &["reload", "scraped"]);
    let reloaded = scrape(&url);
    assert_eq!(reloaded.value("ublk_stack_config_generation", &[]), 2.0);
    assert_eq!(
        reloaded.value("ublk_stack_reload_last_result", &[("result", "applied")]),
        1.0
    );
    assert_eq!(
        reloaded.value("ublk_stack_reload_last_result", &[("result", "refused")]),
        0.0
    );
    assert_eq!(
        cache(&reloaded, "ublk_stack_cache_capacity_bytes"),
        128.0 * 1024.0
    );
    assert!(reloaded.value("ublk_stack_reload_last_timestamp_seconds", &[]) > 1.7e9);
    drop(s);
}

#[test]
fn openmetrics_is_served_to_scrapers_that_ask_for_it() {
    let (_daemon, url) = start();
    let prometheus = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5";
    let (head, body) = get(&url, Some(prometheus));
    assert!(
        head.contains("Content-Type: application/openmetrics-text; version=1.0.0"),
        "{head}"
    );
    assert!(body.ends_with("# EOF\n"), "{body}");
    assert!(body.contains("# TYPE ublk_stack_layer_ops counter\n"));
    assert!(body.contains("ublk_stack_layer_ops_total{"));
    let (head, body) = get(&url, Some("text/plain"));
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4"),
        "{head}"
    );
    assert!(!body.contains("# EOF"));
}

/// Hostile and confused clients get their errors, none of them holds the
/// endpoint for long, and the daemon goes on serving both metrics and I/O.
#[test]
fn hostile_http_clients_neither_hang_nor_crash_the_daemon() {
    let (mut daemon, url) = start();
    let status = |request: &[u8]| {
        let (head, _) = exchange(&url, request);
        head.split(' ').nth(1).unwrap().to_string()
    };
    assert_eq!(status(b"GET / HTTP/1.1\r\n\r\n"), "404");
    assert_eq!(status(b"GET /metrics/../x HTTP/1.1\r\n\r\n"), "404");
    assert_eq!(
        status(b"POST /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"),
        "405"
    );
    assert_eq!(status(b"BREW /metrics HTCPCP/1.0\r\n\r\n"), "400");
    assert_eq!(status(b"\x00\x01\x02\xff\r\n\r\n"), "400");
    let mut huge = b"GET /metrics HTTP/1.1\r\nCookie: ".to_vec();
    huge.resize(64 << 10, b'x');
    assert_eq!(status(&huge), "431");
    let (head, body) = exchange(&url, b"HEAD /metrics HTTP/1.1\r\n\r\n");
    assert!(
        head.starts_with("HTTP/1.1 200 OK") && body.is_empty(),
        "{head}"
    );

    // Clients that connect and send nothing, or a byte now and then, are cut
    // off after the deadline (5 s), and never take the daemon down.
    let start = Instant::now();
    let slow = std::thread::spawn({
        let url = url.clone();
        move || {
            let mut s = TcpStream::connect(authority(&url)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            for byte in b"GET /metrics HTTP/1.1\r\n" {
                if s.write_all(&[*byte]).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(400));
            }
            let mut reply = Vec::new();
            drop(s.read_to_end(&mut reply));
            reply
        }
    });
    let slow = slow.join().unwrap();
    let waited = start.elapsed();
    assert!(
        slow.starts_with(b"HTTP/1.1 408 "),
        "{}",
        String::from_utf8_lossy(&slow)
    );
    assert!(waited < Duration::from_secs(8), "{waited:?}");
    // More idle clients than the endpoint serves at once.
    let start = Instant::now();
    let idle: Vec<TcpStream> = (0..20)
        .map(|_| TcpStream::connect(authority(&url)).unwrap())
        .collect();
    for mut s in idle {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut reply = Vec::new();
        // Closed at once (past the connection limit) or after the deadline.
        drop(s.read_to_end(&mut reply));
        assert!(reply.is_empty() || reply.starts_with(b"HTTP/1.1 408 "));
    }
    assert!(start.elapsed() < Duration::from_secs(10));
    // The last of them may still be giving back its place.
    std::thread::sleep(Duration::from_millis(200));

    let scraped = scrape(&url);
    assert_eq!(scraped.value("ublk_stack_config_generation", &[]), 1.0);
    let mut s = handshake(&daemon.socket).unwrap();
    write_block(&mut s, 1, 0, &pattern(1)).unwrap();
    assert_eq!(read_block(&mut s, 2, 0).unwrap(), pattern(1));
    assert!(
        daemon.child.try_wait().unwrap().is_none(),
        "the daemon exited"
    );
    drop(s);
    cli(&daemon, &["down", "scraped"]);
    assert!(daemon.wait_exit(Duration::from_secs(30)).success());
}

/// `promtool check metrics` on pages scraped while a client writes and reads.
#[test]
#[ignore = "needs promtool (Debian: prometheus); run with --run-ignored all"]
fn promtool_accepts_the_page_scraped_during_io() {
    let found = Command::new("promtool")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    assert!(
        found,
        "promtool is not installed (apt-get install prometheus)"
    );
    let (daemon, url) = start();
    let stop = Arc::new(AtomicBool::new(false));
    let io = std::thread::spawn({
        let (socket, stop) = (daemon.socket.clone(), stop.clone());
        move || {
            let mut s = handshake(&socket).unwrap();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let offset = (n % 1024) * BLOCK as u64;
                write_block(&mut s, n, offset, &pattern(n)).unwrap();
                assert_eq!(read_block(&mut s, n, offset).unwrap(), pattern(n));
                n += 1;
            }
            n
        }
    });
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(200));
        let (_, page) = get(&url, None);
        let mut check = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        check
            .stdin
            .take()
            .unwrap()
            .write_all(page.as_bytes())
            .unwrap();
        let out = check.wait_with_output().unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && said.trim().is_empty(),
            "promtool: {}\n{said}",
            out.status
        );
    }
    stop.store(true, Ordering::Relaxed);
    let requests = io.join().unwrap();
    assert!(requests > 0);
}

/// `up` with `--metrics` it cannot serve: exit 1 with one line, before any
/// leaf is created or the control socket bound.
fn refused(metrics: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("device.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let out = Command::new(BIN)
        .arg("up")
        .arg(&config)
        .arg("--nbd")
        .arg(format!("unix:{}", dir.path().join("nbd.sock").display()))
        .args(["--metrics", metrics])
        .env("UBLK_STACK_RUN_DIR", dir.path().join("run"))
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    for created in ["a.img", "b.img", "nbd.sock", "run/scraped.sock"] {
        assert!(!dir.path().join(created).exists(), "{created} was created");
    }
    stderr
}

#[test]
fn a_port_in_use_stops_up_before_anything_is_created() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let error = refused(&format!("127.0.0.1:{port}"));
    assert!(
        error.starts_with("ublk-stack: --metrics 127.0.0.1:"),
        "{error}"
    );
    assert!(error.contains("in use"), "{error}");
    // PORT alone is the same loopback address.
    assert!(refused(&port.to_string()).contains("in use"));
}

#[test]
fn a_bad_address_stops_up_naming_the_forms_that_work() {
    for bad in ["nonsense", "127.0.0.1:70000", "127.0.0.1"] {
        let error = refused(bad);
        assert!(error.contains(&format!("--metrics {bad}: ")), "{error}");
        assert!(error.contains("HOST:PORT"), "{error}");
    }
}

#[test]
fn every_interface_must_be_asked_for_by_address() {
    let error = refused(":9474");
    assert!(error.contains("no host"), "{error}");
    assert!(error.contains("0.0.0.0:9474"), "{error}");
}
