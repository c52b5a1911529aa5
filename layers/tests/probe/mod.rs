//! A leaf for cache tests: memory-backed, counting its I/O, failing on demand,
//! and holding reads and writes at a gate until the test opens it.

use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Mutex;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use layers::memory::MemoryLeaf;
use layers::LayerReport;
use layers::{AsyncLayer, Error, IoBuf, IoBufMut, IoCtx, Result};

pub struct Probe {
    inner: MemoryLeaf,
    pub reads: AtomicU64,
    pub flushes: AtomicU64,
    /// Reads and writes that reached the gate.
    pub arrived: AtomicU64,
    pub fail_reads: AtomicBool,
    pub fail_writes: AtomicBool,
    pub fail_discards: AtomicBool,
    /// While set, reads and writes wait at the gate.
    pub hold: AtomicBool,
    held: Mutex<Vec<Waker>>,
}

impl Probe {
    pub fn new(size: u64) -> Probe {
        Probe {
            inner: MemoryLeaf::new(size).expect("memory leaf"),
            reads: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
            arrived: AtomicU64::new(0),
            fail_reads: AtomicBool::new(false),
            fail_writes: AtomicBool::new(false),
            fail_discards: AtomicBool::new(false),
            hold: AtomicBool::new(false),
            held: Mutex::new(Vec::new()),
        }
    }

    /// Let held I/O go on, and stop holding.
    pub fn open(&self) {
        let mut held = self.held.lock().unwrap();
        self.hold.store(false, SeqCst);
        for w in held.drain(..) {
            w.wake();
        }
    }

    /// Wait (up to 5 s) until `n` operations reached the gate.
    pub fn wait_for_held(&self, n: u64) {
        let start = Instant::now();
        while self.arrived.load(SeqCst) < n {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "nothing reached the gate"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// The leaf's bytes, bypassing the cache.
    pub fn image(&self, offset: usize, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        let ctx = IoCtx::new(9, 4).unwrap();
        let fut = layers::Layer::read_bytes(&self.inner, &ctx, offset as u64, &mut buf);
        layers::Executor::new()
            .unwrap()
            .block_on(&ctx, fut)
            .unwrap();
        buf
    }

    /// Put bytes on the leaf, bypassing the cache.
    pub fn put(&self, offset: usize, data: &[u8]) {
        let ctx = IoCtx::new(9, 4).unwrap();
        let fut = layers::Layer::write_bytes(&self.inner, &ctx, offset as u64, data);
        layers::Executor::new()
            .unwrap()
            .block_on(&ctx, fut)
            .unwrap();
    }

    async fn gate(&self) {
        self.arrived.fetch_add(1, SeqCst);
        poll_fn(|cx| {
            let mut held = self.held.lock().unwrap();
            if !self.hold.load(SeqCst) {
                return Poll::Ready(());
            }
            held.push(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    fn fails(flag: &AtomicBool) -> Result<()> {
        match flag.load(SeqCst) {
            true => Err(Error::Io(libc::EIO)),
            false => Ok(()),
        }
    }
}

impl AsyncLayer for Probe {
    fn size(&self) -> u64 {
        self.inner.size()
    }

    async fn read(&self, ctx: &IoCtx, offset: u64, buf: &mut IoBufMut) -> Result<()> {
        self.gate().await;
        self.reads.fetch_add(1, SeqCst);
        Self::fails(&self.fail_reads)?;
        self.inner.read(ctx, offset, buf).await
    }

    async fn write(&self, ctx: &IoCtx, offset: u64, buf: &IoBuf) -> Result<()> {
        self.gate().await;
        Self::fails(&self.fail_writes)?;
        self.inner.write(ctx, offset, buf).await
    }

    async fn flush(&self, ctx: &IoCtx) -> Result<()> {
        self.flushes.fetch_add(1, SeqCst);
        self.inner.flush(ctx).await
    }

    async fn discard(&self, ctx: &IoCtx, offset: u64, len: u64) -> Result<()> {
        Self::fails(&self.fail_discards)?;
        self.inner.discard(ctx, offset, len).await
    }

    async fn write_zeroes(&self, ctx: &IoCtx, offset: u64, len: u64) -> Result<()> {
        Self::fails(&self.fail_discards)?;
        self.inner.write_zeroes(ctx, offset, len).await
    }

    fn report(&self) -> LayerReport {
        self.inner.report()
    }
}
