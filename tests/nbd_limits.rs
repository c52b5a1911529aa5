//! `ublk-stack up --nbd` against hostile clients: one that never reads its
//! replies (to READs, or to requests refused at once), slow handshakes that
//! try to hold every slot, handshakes that trickle forever, and a flood of
//! connections past the limit. Each test
//! starts the real binary over a 16 MiB `memory` leaf in a tempdir with its
//! own run dir (UBLK_STACK_RUN_DIR), and is bounded in time.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "support/nbd.rs"]
mod support;
use support::{greeted, handshake, read_block, request, rss_of, Daemon};

const DEVICE_BYTES: u64 = 16 << 20;
const MIB: u64 = 1 << 20;

/// The daemon under attack: a 16 MiB `memory` leaf, two queues.
fn start(name: &str, options: &[&str]) -> Daemon {
    let config = format!(
        "version = 1\n[device]\nname = \"{name}\"\ntop = \"mem\"\nqueues = 2\n\
         [layers.mem]\ntype = \"memory\"\nsize = {DEVICE_BYTES}\n"
    );
    Daemon::start_temp(&config, options)
}

/// Samples a process's RSS every 20 ms and keeps the largest.
struct PeakRss {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PeakRss {
    fn watch(pid: u32) -> PeakRss {
        let (stop, peak) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
        );
        let thread = {
            let (stop, peak) = (stop.clone(), peak.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    peak.fetch_max(rss_of(pid), Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        };
        PeakRss {
            stop,
            peak,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
        self.peak.load(Ordering::SeqCst)
    }
}

/// The attack: READs of 64 KiB, pipelined 500 to a write, replies never read,
/// 32,000 requests or until the server stops reading. Asserts that it did
/// stop, that the daemon stayed under 256 MiB, that another client is served
/// meanwhile, and that the memory goes back once the client leaves.
fn never_reading_client(name: &str, options: &[&str]) {
    const REQUESTS: u64 = 32_000;
    let daemon = start(name, options);
    let before = daemon.rss();
    let peak = PeakRss::watch(daemon.child.id());
    let mut greedy = handshake(&daemon.socket).unwrap();
    // The server stopped reading when a write stays blocked this long.
    greedy
        .set_write_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let started = Instant::now();
    let mut sent = 0u64;
    while sent < REQUESTS && started.elapsed() < Duration::from_secs(20) {
        let batch: Vec<u8> = (sent..(sent + 500).min(REQUESTS))
            .flat_map(|cookie| request(0, cookie, cookie * 65536 % DEVICE_BYTES, 65536))
            .collect();
        if greedy.write_all(&batch).is_err() {
            break;
        }
        sent = (sent + 500).min(REQUESTS);
    }
    // Let the server work through whatever it took in.
    std::thread::sleep(Duration::from_secs(1));

    // Meanwhile, another client is served.
    let asked = Instant::now();
    let mut normal = handshake(&daemon.socket).expect("a normal client connects during the attack");
    read_block(&mut normal, 1, 4096).expect("a normal client reads during the attack");
    let served_in = asked.elapsed();
    drop(normal);
    let peak = peak.finish();

    drop(greedy);
    let left = Instant::now();
    let mut after = daemon.rss();
    while after > before + 64 * MIB && left.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(100));
        after = daemon.rss();
    }
    eprintln!(
        "{options:?}: RSS before {} MiB, peak {} MiB, {:.1} s after the client left {} MiB; \
         {sent} of {REQUESTS} requests sent in {:.1} s; a normal client served in {served_in:?}",
        before / MIB,
        peak / MIB,
        left.elapsed().as_secs_f64(),
        after / MIB,
        started.elapsed().as_secs_f64(),
    );
    assert!(sent < REQUESTS, "the server read every request it was sent");
    assert!(peak < 256 * MIB, "the daemon grew to {} MiB", peak / MIB);
    assert!(served_in < Duration::from_secs(5), "{served_in:?}");
    assert!(
        after <= before + 64 * MIB,
        "RSS {} MiB 5 s after the client left (before: {} MiB)",
        after / MIB,
        before / MIB
    );
}

#[test]
fn a_client_that_never_reads_its_replies_is_held_back_by_the_request_limit() {
    // 128 requests (the default queue_depth) of 64 KiB: 8 MiB at most.
    never_reading_client("greedy", &[]);
}

#[test]
fn a_client_that_never_reads_its_replies_is_held_back_by_the_byte_limit() {
    // 4096 requests of 64 KiB would be 256 MiB: the 64 MiB default holds it.
    never_reading_client("greedy2", &["--nbd-max-inflight", "4096"]);
}

#[test]
fn slow_handshakes_do_not_lock_other_clients_out() {
    let daemon = start("slow", &[]);
    // 64 clients that trickle a valid handshake one byte every 2 s.
    let slow: Vec<UnixStream> = (0..64)
        .map(|_| greeted(&daemon.socket).expect("a slow client is greeted"))
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let trickle = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut slow = slow;
            let bytes = [0, 0, 0, 3, b'I', b'H', b'A', b'V', b'E', b'O', b'P', b'T'];
            for &byte in &bytes {
                for s in &mut slow {
                    drop(s.write_all(&[byte]));
                }
                for _ in 0..20 {
                    if stop.load(Ordering::SeqCst) {
                        return slow;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            slow
        })
    };
    let mut times = Vec::new();
    for attempt in 0..6u64 {
        let asked = Instant::now();
        let mut s = handshake(&daemon.socket)
            .unwrap_or_else(|e| panic!("attempt {attempt}: handshake failed: {e}"));
        read_block(&mut s, attempt, attempt * 4096)
            .unwrap_or_else(|e| panic!("attempt {attempt}: read failed: {e}"));
        times.push(asked.elapsed());
        std::thread::sleep(Duration::from_millis(500));
    }
    stop.store(true, Ordering::SeqCst);
    let slow = trickle.join().unwrap();
    times.sort();
    eprintln!(
        "handshake + read with 64 slow handshakes open: min {:?}, median {:?}, max {:?}",
        times[0], times[3], times[5]
    );
    for time in &times {
        assert!(*time < Duration::from_secs(1), "{times:?}");
    }
    drop(slow);
}

#[test]
fn a_handshake_has_one_deadline_however_slowly_it_trickles() {
    let daemon = start("deadline", &["--nbd-handshake-timeout", "2s"]);
    let mut s = greeted(&daemon.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    // A valid start, then an INFO option of 4 KiB, one byte every 200 ms:
    // no single read ever waits long.
    let mut bytes = 3u32.to_be_bytes().to_vec();
    bytes.extend_from_slice(b"IHAVEOPT");
    bytes.extend_from_slice(&6u32.to_be_bytes());
    bytes.extend_from_slice(&4096u32.to_be_bytes());
    bytes.resize(bytes.len() + 4096, 0);
    let started = Instant::now();
    let mut closed = false;
    for &byte in &bytes {
        if started.elapsed() > Duration::from_secs(8) {
            break;
        }
        if s.write_all(&[byte]).is_err() {
            closed = true;
            break;
        }
        let mut one = [0u8; 1];
        match s.read(&mut one) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(_) => panic!("the server answered an unfinished option"),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => {
                closed = true;
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(150));
    }
    let took = started.elapsed();
    assert!(closed, "a trickling handshake still open after {took:?}");
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(5),
        "closed after {took:?} (deadline 2 s)"
    );
}

#[test]
fn the_connection_limit_refuses_with_one_log_line_and_frees_slots() {
    let daemon = start("limit", &["--nbd-max-connections", "4"]);
    let mut established = handshake(&daemon.socket).unwrap();
    let other = handshake(&daemon.socket).unwrap();
    let handshaking = greeted(&daemon.socket).unwrap();
    let fourth = greeted(&daemon.socket).unwrap();
    for i in 0..50 {
        let mut s = UnixStream::connect(&daemon.socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 18];
        match s.read(&mut buf) {
            Ok(0) | Err(_) => {}
            Ok(_) => panic!("connection {i} past the limit was greeted"),
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let log = daemon.log();
    assert_eq!(
        log.matches("connection limit").count(),
        1,
        "one line per episode:\n{log}"
    );
    // The connections inside the limit still work.
    read_block(&mut established, 1, 0).unwrap();
    // An established connection and a handshake that end each free a slot.
    drop(established);
    drop(handshaking);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut admitted = Vec::new();
    while admitted.len() < 2 {
        assert!(Instant::now() < deadline, "slots not freed after 5 s");
        match handshake(&daemon.socket) {
            Ok(s) => admitted.push(s),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    for (i, s) in admitted.iter_mut().enumerate() {
        read_block(s, i as u64, 0).unwrap();
    }
    drop((other, fourth));
}

#[test]
fn refused_requests_count_too_when_their_replies_are_not_read() {
    // Requests the server answers with an error at once (an unknown command)
    // still wait for their reply to go out: a client that never reads gets
    // backpressure, not an ever-growing queue of error replies.
    const REQUESTS: u64 = 200_000;
    let daemon = start("refused", &[]);
    let peak = PeakRss::watch(daemon.child.id());
    let mut client = handshake(&daemon.socket).unwrap();
    client
        .set_write_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let started = Instant::now();
    let mut sent = 0u64;
    while sent < REQUESTS && started.elapsed() < Duration::from_secs(20) {
        let batch: Vec<u8> = (sent..sent + 1000)
            .flat_map(|cookie| request(9, cookie, 0, 0))
            .collect();
        if client.write_all(&batch).is_err() {
            break;
        }
        sent += 1000;
    }
    // The connection still works once its replies are read.
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reply = [0u8; 16];
    client.read_exact(&mut reply).unwrap();
    assert_eq!(&reply[4..8], &22u32.to_be_bytes(), "EINVAL");
    let peak = peak.finish();
    eprintln!(
        "{sent} of {REQUESTS} refused requests sent in {:.1} s; peak RSS {} MiB",
        started.elapsed().as_secs_f64(),
        peak / MIB
    );
    assert!(sent < REQUESTS, "the server read every request it was sent");
    assert!(peak < 256 * MIB, "the daemon grew to {} MiB", peak / MIB);
}
