//! Scrub: read a step of the device from every ok leg, verify, and repair.
//!
//! A leg's copy is bad when its read fails (`Corrupt` from a `checksum` or
//! `crypt` layer in the leg, or an I/O error) or when it differs from the first
//! good copy in leg order. Bad copies are rewritten from that good copy (the
//! same rewrite the self-healing read uses) while the step's range is held
//! exclusively, so no write can interleave. A block no ok leg reads is
//! unrepairable.

use std::sync::atomic::Ordering;

use super::{Mirror, STEP_BYTES};
use crate::exec::IoCtx;
use crate::{Error, IoBuf};

/// What one or more scrub steps found, in blocks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScrubReport {
    pub bytes_checked: u64,
    /// Copies that failed to read (corrupt or I/O error) and were rewritten.
    pub repaired: u64,
    /// Copies that read fine but differed from the first good copy, rewritten.
    pub mismatched: u64,
    /// Blocks that no ok leg could read.
    pub unrepairable: u64,
}

impl ScrubReport {
    pub fn add(&mut self, other: &ScrubReport) {
        self.bytes_checked += other.bytes_checked;
        self.repaired += other.repaired;
        self.mismatched += other.mismatched;
        self.unrepairable += other.unrepairable;
    }

    /// Nothing needed repair.
    pub fn is_clean(&self) -> bool {
        self.repaired == 0 && self.mismatched == 0 && self.unrepairable == 0
    }
}

impl Mirror {
    /// How many steps a full scrub takes (`scrub_step(ctx, 0..scrub_steps())`).
    pub fn scrub_steps(&self) -> u64 {
        self.bytes().div_ceil(STEP_BYTES)
    }

    /// Scrub step `step`: bytes `step * STEP_BYTES` onwards, at most `STEP_BYTES`.
    pub async fn scrub_step(&self, ctx: &IoCtx, step: u64) -> Result<ScrubReport, String> {
        if step >= self.scrub_steps() {
            return Err(format!(
                "scrub step {step} is past the end ({} steps)",
                self.scrub_steps()
            ));
        }
        let offset = step * STEP_BYTES;
        let len = STEP_BYTES.min(self.bytes() - offset);
        let guards = self.exclusive_regions(ctx, offset, len).await;
        let report = self.scrub_range(ctx, offset, len).await;
        drop(guards);
        report
    }

    /// Scrub `[offset, offset+len)` (at most `STEP_BYTES`); the caller holds it
    /// exclusively. Also the open-time resync of the regions a crash left dirty:
    /// each block ends up as the first good copy in leg order on every ok leg.
    pub(super) async fn scrub_range(
        &self,
        ctx: &IoCtx,
        offset: u64,
        len: u64,
    ) -> Result<ScrubReport, String> {
        let legs = self.ok_legs();
        if legs.is_empty() {
            return Err("no leg is ok: nothing to scrub".into());
        }
        let mut copies = Vec::with_capacity(legs.len());
        for &i in &legs {
            let mut buf = vec![0u8; len as usize];
            let res = self.legs[i]
                .layer
                .read_bytes(ctx, super::DATA_START + offset, &mut buf)
                .await;
            copies.push(res.map(|()| buf));
        }
        let mut report = ScrubReport {
            bytes_checked: len,
            ..ScrubReport::default()
        };
        let all_same = copies.iter().all(|c| match (c, &copies[0]) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        });
        if !all_same {
            let block = u64::from(self.block_size);
            let mut at = 0;
            while at < len {
                self.scrub_block(ctx, offset + at, &legs, &copies, at as usize, &mut report)
                    .await;
                at += block;
            }
        }
        Ok(report)
    }

    async fn scrub_block(
        &self,
        ctx: &IoCtx,
        offset: u64,
        legs: &[usize],
        copies: &[crate::Result<Vec<u8>>],
        at: usize,
        report: &mut ScrubReport,
    ) {
        let block = self.block_size as usize;
        // Each leg's copy of this block: from the step's read, or read alone
        // when the step's read failed (one bad block fails the whole read).
        let mut blocks = Vec::with_capacity(legs.len());
        for (&i, copy) in legs.iter().zip(copies) {
            blocks.push(match copy {
                Ok(data) => Ok(data[at..at + block].to_vec()),
                Err(_) => {
                    let mut buf = vec![0u8; block];
                    match self.legs[i]
                        .layer
                        .read_bytes(ctx, super::DATA_START + offset, &mut buf)
                        .await
                    {
                        Ok(()) => Ok(buf),
                        Err(e) => Err(e),
                    }
                }
            });
        }
        let Some(good) = blocks.iter().position(|b| b.is_ok()) else {
            report.unrepairable += 1;
            tracing::error!(offset, "mirror scrub: no leg reads this block");
            return;
        };
        let good_data = match &blocks[good] {
            Ok(data) => data.clone(),
            Err(_) => return,
        };
        let mut bad = Vec::new();
        for (k, b) in blocks.iter().enumerate() {
            let leg = legs[k];
            match b {
                Ok(data) if *data == good_data => {}
                Ok(_) => {
                    report.mismatched += 1;
                    bad.push(leg);
                    tracing::warn!(
                        leg,
                        offset,
                        "mirror scrub: copy differs from leg {}",
                        legs[good]
                    );
                }
                Err(e) => {
                    report.repaired += 1;
                    self.legs[leg].read_errors.fetch_add(1, Ordering::Relaxed);
                    self.legs[leg].repaired.fetch_add(1, Ordering::Relaxed);
                    bad.push(leg);
                    if !matches!(e, Error::Corrupt { .. }) {
                        tracing::warn!(leg, offset, "mirror scrub: read failed: {e}");
                    }
                }
            }
        }
        self.rewrite(ctx, offset, &IoBuf::copy_from(&good_data), &bad)
            .await;
    }
}
