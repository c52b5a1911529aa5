//! The `nbd` leaf when its server goes away: killed and started again within
//! `timeout`, the requests in flight are sent again and succeed; gone for
//! longer, they fail with EIO. A FLUSH after a reconnect fails with EIO when
//! acknowledged writes were not flushed before the loss (the server may have
//! lost them), and only that once.

mod nbd_servers;

use std::path::Path;
use std::time::{Duration, Instant};

use layers::exec::{Executor, IoCtx};
use layers::join::join_all;
use layers::report::LayerReport;
use layers::testing::PlanBuilder;
use layers::{compile, Error, LocalBoxFuture, Result, Stack};
use nbd_servers::{params, Server};

const MIB: u64 = 1 << 20;
/// nbdkit's delay filter holds every read this long, so requests are in
/// flight when the server is killed.
const DELAYED: &[&str] = &["--filter=delay", "delay-read=200ms"];

fn stack(port: u16, timeout: Duration) -> Stack {
    let dir = tempfile::tempdir().unwrap();
    let mut b = PlanBuilder::new(dir.path(), 4096);
    let mut p = params(&format!("nbd://127.0.0.1:{port}/"), Some(8 * MIB));
    p.timeout_us = timeout.as_micros() as u64;
    let top = b.layer("n", p);
    compile(&b.build(top)).unwrap()
}

fn connected(stack: &Stack) -> (bool, Option<String>) {
    let LayerReport::Nbd(report) = stack.layer("n").unwrap().report() else {
        panic!("an nbd leaf reports as nbd")
    };
    (report.connected, report.failure)
}

/// Kills `server` after `kill_after`, and starts it again on the same file
/// and port `restart_after` later (if given). The thread keeps the new
/// server, and stops it when `done` is sent: nbdkit shuts down when the
/// thread that started it ends.
fn bounce(
    server: Server,
    path: &Path,
    kill_after: Duration,
    restart_after: Option<Duration>,
) -> (std::sync::mpsc::Sender<()>, std::thread::JoinHandle<bool>) {
    let path = path.to_path_buf();
    let (done, wait) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        std::thread::sleep(kill_after);
        let port = server.port();
        drop(server);
        let Some(pause) = restart_after else {
            return false;
        };
        std::thread::sleep(pause);
        let server = Server::nbdkit_file_on(&path, port, DELAYED);
        wait.recv().ok();
        drop(server);
        true
    });
    (done, thread)
}

fn block(tag: u8) -> Vec<u8> {
    (0..4096u32)
        .map(|i| (i as u8).wrapping_mul(31) ^ tag)
        .collect()
}

#[test]
#[ignore = "needs nbdkit (tests/nbd/setup.sh)"]
fn requests_in_flight_are_sent_again_after_the_server_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("export.img");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(8 * MIB)
        .unwrap();
    let server = Server::nbdkit_file_on(&path, nbd_servers::free_port(), DELAYED);
    let stack = stack(server.port(), Duration::from_secs(20));
    let ctx = IoCtx::new(0, 256).unwrap();
    let exec = Executor::new().unwrap();
    let top = stack.top();
    // Sixteen blocks written and flushed before the server goes away.
    exec.block_on(&ctx, async {
        for i in 0..16u8 {
            top.write_bytes(&ctx, u64::from(i) * 4096, &block(i))
                .await
                .unwrap();
        }
        top.flush(&ctx).await.unwrap();
    });
    // Reads that each take 200 ms are in flight when the server is killed;
    // it is back 500 ms later.
    let (done, bouncer) = bounce(
        server,
        &path,
        Duration::from_millis(100),
        Some(Duration::from_millis(500)),
    );
    let started = Instant::now();
    let results: Vec<Result<Vec<u8>>> = exec.block_on(&ctx, async {
        let reads: Vec<LocalBoxFuture<'_, Result<Vec<u8>>>> = (0..16u8)
            .map(|i| -> LocalBoxFuture<'_, Result<Vec<u8>>> {
                let ctx = &ctx;
                Box::pin(async move {
                    // The request's own buffer, as a front end lends it.
                    let mut buf = ctx.buf(4096);
                    top.read(ctx, u64::from(i) * 4096, &mut buf).await?;
                    Ok(buf.to_vec())
                })
            })
            .collect();
        join_all(reads).await
    });
    assert!(
        started.elapsed() >= Duration::from_millis(600),
        "the reads finished before the server was back"
    );
    for (i, result) in results.into_iter().enumerate() {
        assert_eq!(result.unwrap(), block(i as u8), "block {i}");
    }
    assert_eq!(connected(&stack), (true, None));
    // Nothing was acknowledged and unflushed at the loss: FLUSH succeeds.
    exec.block_on(&ctx, top.flush(&ctx)).unwrap();
    done.send(()).unwrap();
    assert!(bouncer.join().unwrap(), "restarted");
}

#[test]
#[ignore = "needs nbdkit (tests/nbd/setup.sh)"]
fn the_first_flush_after_losing_unflushed_writes_fails() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("export.img");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(8 * MIB)
        .unwrap();
    let server = Server::nbdkit_file_on(&path, nbd_servers::free_port(), &[]);
    let port = server.port();
    let stack = stack(port, Duration::from_secs(20));
    let ctx = IoCtx::new(0, 64).unwrap();
    let exec = Executor::new().unwrap();
    let top = stack.top();
    exec.block_on(&ctx, top.write_bytes(&ctx, 0, &block(1)))
        .unwrap();
    drop(server);
    let _server = Server::nbdkit_file_on(&path, port, &[]);
    let mut buf = vec![0u8; 4096];
    // The read meets the dead socket, reconnects, and is sent again.
    exec.block_on(&ctx, top.read_bytes(&ctx, 0, &mut buf))
        .unwrap();
    assert_eq!(buf, block(1));
    assert_eq!(
        exec.block_on(&ctx, top.flush(&ctx)),
        Err(Error::Io(libc::EIO)),
        "a write acknowledged but not flushed before the loss"
    );
    exec.block_on(&ctx, top.flush(&ctx)).unwrap();
}

#[test]
#[ignore = "needs nbdkit (tests/nbd/setup.sh)"]
fn a_server_gone_past_the_timeout_fails_the_requests() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("export.img");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(8 * MIB)
        .unwrap();
    let server = Server::nbdkit_file_on(&path, nbd_servers::free_port(), DELAYED);
    let stack = stack(server.port(), Duration::from_millis(700));
    let ctx = IoCtx::new(0, 64).unwrap();
    let exec = Executor::new().unwrap();
    let top = stack.top();
    let (_done, bouncer) = bounce(server, &path, Duration::from_millis(100), None);
    let started = Instant::now();
    let mut buf = vec![0u8; 4096];
    let result = exec.block_on(&ctx, top.read_bytes(&ctx, 0, &mut buf));
    assert!(!bouncer.join().unwrap());
    assert_eq!(result, Err(Error::Io(libc::EIO)));
    assert!(
        started.elapsed() >= Duration::from_millis(700),
        "failed before the timeout: {:?}",
        started.elapsed()
    );
    let (up, failure) = connected(&stack);
    assert!(!up);
    assert!(failure.unwrap().contains("unreachable"));
    // Later requests fail at once.
    let again = Instant::now();
    let result = exec.block_on(&ctx, top.write_bytes(&ctx, 0, &buf));
    assert_eq!(result, Err(Error::Io(libc::EIO)));
    assert!(again.elapsed() < Duration::from_millis(500));
}

#[test]
#[ignore = "needs nbdkit (tests/nbd/setup.sh)"]
fn a_leaf_that_gave_up_serves_again_once_its_server_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("export.img");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(8 * MIB)
        .unwrap();
    let server = Server::nbdkit_file_on(&path, nbd_servers::free_port(), &[]);
    let port = server.port();
    let stack = stack(port, Duration::from_millis(500));
    let ctx = IoCtx::new(0, 64).unwrap();
    let exec = Executor::new().unwrap();
    let top = stack.top();
    exec.block_on(&ctx, top.write_bytes(&ctx, 0, &block(3)))
        .unwrap();
    drop(server);
    let mut buf = vec![0u8; 4096];
    assert_eq!(
        exec.block_on(&ctx, top.read_bytes(&ctx, 0, &mut buf)),
        Err(Error::Io(libc::EIO)),
        "the server stayed away past the timeout"
    );
    assert!(!connected(&stack).0);
    let _server = Server::nbdkit_file_on(&path, port, &[]);
    // The leaf goes on dialling after giving up, every 2 s.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !connected(&stack).0 {
        assert!(Instant::now() < deadline, "the leaf did not come back");
        std::thread::sleep(Duration::from_millis(50));
    }
    exec.block_on(&ctx, top.read_bytes(&ctx, 0, &mut buf))
        .unwrap();
    assert_eq!(buf, block(3));
    assert_eq!(
        exec.block_on(&ctx, top.flush(&ctx)),
        Err(Error::Io(libc::EIO)),
        "a write acknowledged but not flushed before the loss"
    );
    exec.block_on(&ctx, top.flush(&ctx)).unwrap();
}
