//! `null` leaf: reads zeros, discards writes. For benchmarks: it measures the
//! stack and the front end without any storage cost. FLUSH does nothing.

use crate::exec::IoCtx;
use crate::{Layer, LocalBoxFuture, Result};

pub struct NullLeaf {
    size: u64,
}

impl NullLeaf {
    pub fn new(size: u64) -> NullLeaf {
        NullLeaf { size }
    }
}

impl Layer for NullLeaf {
    fn size(&self) -> u64 {
        self.size
    }

    fn read<'a>(
        &'a self,
        _: &'a IoCtx,
        _: u64,
        buf: &'a mut [u8],
    ) -> LocalBoxFuture<'a, Result<()>> {
        buf.fill(0);
        Box::pin(std::future::ready(Ok(())))
    }

    fn write<'a>(&'a self, _: &'a IoCtx, _: u64, _: &'a [u8]) -> LocalBoxFuture<'a, Result<()>> {
        Box::pin(std::future::ready(Ok(())))
    }

    fn flush<'a>(&'a self, _: &'a IoCtx) -> LocalBoxFuture<'a, Result<()>> {
        Box::pin(std::future::ready(Ok(())))
    }

    fn discard<'a>(&'a self, _: &'a IoCtx, _: u64, _: u64) -> LocalBoxFuture<'a, Result<()>> {
        Box::pin(std::future::ready(Ok(())))
    }

    fn write_zeroes<'a>(&'a self, _: &'a IoCtx, _: u64, _: u64) -> LocalBoxFuture<'a, Result<()>> {
        Box::pin(std::future::ready(Ok(())))
    }

    fn discard_frees_space(&self) -> bool {
        true
    }
}
