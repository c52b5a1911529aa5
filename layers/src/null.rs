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

    /// Zeros, stored only where the buffer's lender does not already know them
    /// to be zero (a ublk tag buffer that served a null read before).
    async fn read(&self, _: &IoCtx, _: u64, buf: &mut IoBufMut) -> Result<()> {
        buf.fill_zero();
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

#[cfg(test)]
#[allow(unsafe_code)]
mod tests {
    use super::*;
    use crate::buf::AlignedBuf;
    use crate::exec::Executor;
    use crate::ZeroPrefix;
    use std::ptr::NonNull;

    /// One ublk tag buffer, lent to request after request as the queue lends
    /// it: with its known zeros, forgotten when the kernel copies a WRITE in.
    struct Tag {
        memory: AlignedBuf,
        zeros: ZeroPrefix,
    }

    impl Tag {
        fn lend(&mut self, len: usize) -> IoBufMut {
            let ptr = NonNull::new(self.memory.as_mut_ptr()).unwrap();
            // SAFETY: `memory` outlives every handle the test makes, and the
            // test touches it directly only while no handle is out.
            unsafe { IoBufMut::lend(ptr, len, Some(self.zeros.clone())) }.0
        }

        fn kernel_copies_a_write_in(&mut self, byte: u8) {
            self.memory.as_mut_slice().fill(byte);
            self.zeros.forget();
        }
    }

    #[test]
    fn a_null_read_returns_zeros_whatever_wrote_its_buffer_before() {
        let leaf = NullLeaf::new(1 << 20);
        let ctx = IoCtx::new(0, 8).unwrap();
        let exec = Executor::new().unwrap();
        let mut memory = AlignedBuf::new(8192);
        memory.as_mut_slice().fill(0xee);
        let mut tag = Tag {
            memory,
            zeros: ZeroPrefix::new(),
        };
        let read = |tag: &mut Tag, len: usize, what: &str| {
            let mut buf = tag.lend(len);
            exec.block_on(&ctx, AsyncLayer::read(&leaf, &ctx, 0, &mut buf))
                .unwrap();
            assert!(buf.iter().all(|&b| b == 0), "{what}: not zeros");
        };
        read(&mut tag, 8192, "the first read");
        assert_eq!(tag.zeros.known(), 8192);
        tag.kernel_copies_a_write_in(0xaa);
        read(
            &mut tag,
            4096,
            "a read after a WRITE through the same buffer",
        );
        read(&mut tag, 8192, "a longer read after it");
        // A layer writing the bytes, through a part of a split handle.
        let mut buf = tag.lend(8192);
        let head = buf.split_to(4096);
        buf.fill(0xbb);
        drop((head, buf));
        read(&mut tag, 8192, "a read after a layer wrote the second half");
        // An operation given the memory through the ring.
        let mut buf = tag.lend(4096);
        let (ptr, hold) = buf.as_mut_ptr_held();
        // SAFETY: 4096 bytes of the tag's memory, which no other handle covers.
        unsafe { ptr.write_bytes(0xcc, 4096) };
        drop((buf, hold));
        read(&mut tag, 4096, "a read after an operation wrote the buffer");
    }
}
