//! `null` leaf: reads zeros, discards writes. For benchmarks: it measures the
//! stack and the front end without any storage cost. FLUSH does nothing.

use crate::exec::IoCtx;
use crate::report::{LayerReport, NoDetails};
use crate::{AsyncLayer, IoBuf, IoBufMut, Result};

pub struct NullLeaf {
    size: u64,
}

impl NullLeaf {
    pub fn new(size: u64) -> NullLeaf {
        NullLeaf { size }
    }
}

impl AsyncLayer for NullLeaf {
    fn size(&self) -> u64 {
        self.size
    }

    async fn read(&self, _: &IoCtx, _: u64, buf: &mut IoBufMut) -> Result<()> {
        buf.fill(0);
        Ok(())
    }

    async fn write(&self, _: &IoCtx, _: u64, _: &IoBuf) -> Result<()> {
        Ok(())
    }

    async fn flush(&self, _: &IoCtx) -> Result<()> {
        Ok(())
    }

    async fn discard(&self, _: &IoCtx, _: u64, _: u64) -> Result<()> {
        Ok(())
    }

    async fn write_zeroes(&self, _: &IoCtx, _: u64, _: u64) -> Result<()> {
        Ok(())
    }

    fn discard_frees_space(&self) -> bool {
        true
    }
    fn report(&self) -> LayerReport {
        LayerReport::Null(NoDetails {})
    }
}
