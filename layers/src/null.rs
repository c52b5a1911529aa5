//! `null` leaf: reads zeros, discards writes. For benchmarks: it measures the
//! stack and the front end without any storage cost. FLUSH does nothing.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::exec::IoCtx;
use crate::report::{LayerReport, NoDetails};
use crate::{AsyncLayer, IoBuf, IoBufMut, Result};

pub struct NullLeaf {
    size: AtomicU64,
}

impl NullLeaf {
    pub fn new(size: u64) -> NullLeaf {
        NullLeaf {
            size: AtomicU64::new(size),
        }
    }
}

impl AsyncLayer for NullLeaf {
    fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    async fn grow(&self, _: &IoCtx, new_size: u64) -> std::result::Result<(), String> {
        let size = self.size();
        if new_size < size {
            return Err(format!(
                "shrinking a null leaf ({size} to {new_size} bytes) is not supported"
            ));
        }
        self.size.store(new_size, Ordering::Release);
        Ok(())
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
