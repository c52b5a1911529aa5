//! `fault`: injects errors and latency, to rehearse failures from the config file
//! (in the manner of dm-flakey, dm-dust and dm-delay).
//!
//! Every knob is live (see [`Fault::set_knobs`]):
//! - `read_error_rate`: probability (0..=1) that a read fails with EIO;
//! - `write_error_rate`: probability that a write, discard, write_zeroes or flush
//!   fails with EIO (a failed write is not passed down: nothing is written);
//! - `delay`: added latency per request (an io_uring timeout, so the queue keeps
//!   serving other requests meanwhile);
//! - `range`: `[start, end)` bytes the faults apply to (flushes always qualify);
//!   requests outside it pass untouched.
//!
//! No on-disk format; FLUSH passes down (unless it is failed on purpose).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use crate::exec::IoCtx;
use crate::plan::{FaultKnobs, LiveChange};
use crate::report::{ByteRange, FaultReport, LayerReport};
use crate::uring::Op;
use crate::{AsyncLayer, Error, IoBuf, IoBufMut, Layer, Result};

pub struct Fault {
    lower: Arc<dyn Layer>,
    knobs: RwLock<FaultKnobs>,
    /// Lock-free random stream (SplitMix64 over an atomic counter).
    state: AtomicU64,
    injected: AtomicU64,
}

#[derive(Clone, Copy)]
enum Kind {
    Read,
    Write,
}

impl Fault {
    pub fn new(lower: Arc<dyn Layer>, knobs: FaultKnobs) -> Fault {
        Fault {
            lower,
            knobs: RwLock::new(knobs),
            state: AtomicU64::new(0x5EED_F0F0_1234_5678),
            injected: AtomicU64::new(0),
        }
    }

    /// Live knob change: takes effect for the next request.
    pub fn set_knobs(&self, knobs: FaultKnobs) {
        *self.knobs.write().unwrap_or_else(|e| e.into_inner()) = knobs;
    }

    pub fn knobs(&self) -> FaultKnobs {
        self.knobs.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Uniform in [0, 1).
    fn random(&self) -> f64 {
        let mut z = self
            .state
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Delay, then decide whether this request fails.
    async fn gate(&self, ctx: &IoCtx, kind: Kind, range: Option<(u64, u64)>) -> Result<()> {
        let knobs = self.knobs();
        let hit = match (range, knobs.range) {
            (Some((offset, len)), Some((start, end))) => offset < end && start < offset + len,
            _ => true,
        };
        if !hit {
            return Ok(());
        }
        if knobs.delay_us > 0 {
            let res = ctx
                .uring()
                .submit(Op::Sleep {
                    nanos: knobs.delay_us * 1000,
                })
                .await;
            debug_assert!(res == -libc::ETIME || res == 0, "timeout result {res}");
        }
        let rate = match kind {
            Kind::Read => knobs.read_error_rate,
            Kind::Write => knobs.write_error_rate,
        };
        if rate > 0.0 && self.random() < rate {
            self.injected.fetch_add(1, Ordering::Relaxed);
            return Err(Error::Io(libc::EIO));
        }
        Ok(())
    }
}

impl AsyncLayer for Fault {
    fn size(&self) -> u64 {
        self.lower.size()
    }

    /// The size is the layer below's, which has grown already.
    async fn grow(&self, _: &IoCtx, new_size: u64) -> std::result::Result<(), String> {
        crate::grown_below(&*self.lower, new_size)
    }

    async fn read(&self, ctx: &IoCtx, offset: u64, buf: &mut IoBufMut) -> Result<()> {
        self.gate(ctx, Kind::Read, Some((offset, buf.len() as u64)))
            .await?;
        self.lower.read(ctx, offset, buf).await
    }

    async fn write(&self, ctx: &IoCtx, offset: u64, buf: &IoBuf) -> Result<()> {
        self.gate(ctx, Kind::Write, Some((offset, buf.len() as u64)))
            .await?;
        self.lower.write(ctx, offset, buf).await
    }

    async fn flush(&self, ctx: &IoCtx) -> Result<()> {
        self.gate(ctx, Kind::Write, None).await?;
        self.lower.flush(ctx).await
    }

    async fn discard(&self, ctx: &IoCtx, offset: u64, len: u64) -> Result<()> {
        self.gate(ctx, Kind::Write, Some((offset, len))).await?;
        self.lower.discard(ctx, offset, len).await
    }

    async fn write_zeroes(&self, ctx: &IoCtx, offset: u64, len: u64) -> Result<()> {
        self.gate(ctx, Kind::Write, Some((offset, len))).await?;
        self.lower.write_zeroes(ctx, offset, len).await
    }

    fn discard_frees_space(&self) -> bool {
        self.lower.discard_frees_space()
    }

    async fn apply_live(
        &self,
        _ctx: &IoCtx,
        change: &LiveChange,
    ) -> std::result::Result<(), String> {
        let res = match change {
            LiveChange::Fault(knobs) => {
                self.set_knobs(knobs.clone());
                Ok(())
            }
            other => Err(format!("{other:?} does not apply to a fault layer")),
        };
        res
    }

    fn report(&self) -> LayerReport {
        let k = self.knobs();
        LayerReport::Fault(FaultReport {
            read_error_rate: k.read_error_rate,
            write_error_rate: k.write_error_rate,
            delay_us: k.delay_us,
            injected_errors: self.injected.load(Ordering::Relaxed),
            range: k.range.map(|(start, end)| ByteRange { start, end }),
        })
    }
}
