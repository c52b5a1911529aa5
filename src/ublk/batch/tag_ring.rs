//! Where FETCH_IO_CMDS writes tags: a provided-buffer ring (registered with
//! the queue's io_uring under its own group id) holding one buffer of
//! `depth` tags, consumed incrementally (IOU_PBUF_RING_INC): each CQE says
//! how many bytes the kernel appended after the previous ones. Once the
//! buffer is used up the command ends with -ENOBUFS, and the queue puts the
//! buffer back ([`TagRing::refill`]) and issues a new FETCH.

use std::alloc::{self, Layout};
use std::cell::Cell;
use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};

use super::uapi::RingBuf;
use layers::uring::Uring;

/// `IOU_PBUF_RING_INC`: the kernel takes from a buffer only what each
/// completion needs.
const IOU_PBUF_RING_INC: u16 = 2;
const RING_BYTES: usize = 4096;

pub(super) struct TagRing {
    /// One page, page-aligned, as the kernel requires: the ring's single entry.
    ring: NonNull<RingBuf>,
    /// The buffer the kernel writes tags into: `capacity` u16s.
    tags: NonNull<u16>,
    capacity: usize,
    /// Bytes of the current fill already handed to the queue.
    read: Cell<usize>,
    tail: Cell<u16>,
    pub(super) group: u16,
}

impl TagRing {
    pub(super) fn new(capacity: u16, group: u16) -> io::Result<TagRing> {
        let capacity = usize::from(capacity.max(1));
        let ring_layout =
            Layout::from_size_align(RING_BYTES, RING_BYTES).map_err(io::Error::other)?;
        let tags_layout = Layout::array::<u16>(capacity).map_err(io::Error::other)?;
        // SAFETY: both layouts have a non-zero size.
        let ring = unsafe { alloc::alloc_zeroed(ring_layout) };
        let Some(ring) = NonNull::new(ring.cast::<RingBuf>()) else {
            return Err(io::Error::from(io::ErrorKind::OutOfMemory));
        };
        // SAFETY: as above.
        let tags = unsafe { alloc::alloc_zeroed(tags_layout) };
        let Some(tags) = NonNull::new(tags.cast::<u16>()) else {
            // SAFETY: allocated just above with this layout.
            unsafe { alloc::dealloc(ring.as_ptr().cast(), ring_layout) };
            return Err(io::Error::from(io::ErrorKind::OutOfMemory));
        };
        Ok(TagRing {
            ring,
            tags,
            capacity,
            read: Cell::new(0),
            tail: Cell::new(0),
            group,
        })
    }

    /// Register the ring with `uring` under `group`, and put the buffer in it.
    pub(super) fn register(&self, uring: &Uring) -> io::Result<()> {
        // SAFETY: the ring's page stays allocated until `self` is dropped,
        // which the queue does only after the io_uring is closed (or never,
        // see `leak`).
        unsafe {
            uring
                .ring()
                .borrow()
                .submitter()
                .register_buf_ring_with_flags(
                    self.ring.as_ptr() as u64,
                    1,
                    self.group,
                    IOU_PBUF_RING_INC,
                )
        }?;
        self.refill();
        Ok(())
    }

    fn bytes(&self) -> usize {
        self.capacity * 2
    }

    /// Offer the whole buffer to the kernel again (after it used it up).
    pub(super) fn refill(&self) {
        let entry = RingBuf {
            addr: self.tags.as_ptr() as u64,
            len: self.bytes() as u32,
            bid: 0,
            resv: 0,
        };
        let ring = self.ring.as_ptr();
        // SAFETY: the ring page is ours and mapped; the kernel reads the entry
        // only after the tail store below publishes it, and writes to it only
        // while it owns it (between that store and using it up), which the
        // caller ensures is over. `resv` (the tail) is written separately.
        unsafe {
            std::ptr::addr_of_mut!((*ring).addr).write_volatile(entry.addr);
            std::ptr::addr_of_mut!((*ring).len).write_volatile(entry.len);
            std::ptr::addr_of_mut!((*ring).bid).write_volatile(entry.bid);
        }
        self.read.set(0);
        let tail = self.tail.get().wrapping_add(1);
        self.tail.set(tail);
        // SAFETY: `resv` of entry 0 is the ring tail, a u16 at offset 14 (checked
        // in uapi.rs), suitably aligned; the kernel reads it concurrently.
        let tail_ref = unsafe { AtomicU16::from_ptr(std::ptr::addr_of_mut!((*ring).resv)) };
        tail_ref.store(tail, Ordering::Release);
    }

    /// Whether the kernel has written into every byte of the current fill.
    pub(super) fn used_up(&self) -> bool {
        self.read.get() >= self.bytes()
    }

    /// The tags a completion of `bytes` delivered (after the ones before it),
    /// or `None` if the kernel claims more than the buffer holds.
    pub(super) fn take(&self, bytes: usize) -> Option<Vec<u16>> {
        let start = self.read.get();
        let end = start
            .checked_add(bytes)
            .filter(|&end| end <= self.bytes())?;
        self.read.set(end);
        let tags = (start / 2..end / 2)
            .map(|i| {
                // SAFETY: i < capacity; the kernel wrote these bytes before
                // posting the CQE that reported them and does not write them
                // again until the buffer is refilled.
                unsafe { self.tags.as_ptr().add(i).read_volatile() }
            })
            .collect();
        Some(tags)
    }

    /// Never free the memory: the kernel may still hold the buffer.
    pub(super) fn leak(self) {
        std::mem::forget(self);
    }
}

impl Drop for TagRing {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with these layouts; dropped only after the
        // io_uring that knew of them is closed.
        unsafe {
            alloc::dealloc(
                self.ring.as_ptr().cast(),
                Layout::from_size_align_unchecked(RING_BYTES, RING_BYTES),
            );
            alloc::dealloc(
                self.tags.as_ptr().cast(),
                Layout::array::<u16>(self.capacity).expect("checked in new"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_taken_in_order_and_never_past_the_buffer() {
        let ring = TagRing::new(4, 0).unwrap();
        // Stand in for the kernel: write four tags into the buffer.
        for (i, tag) in [3u16, 1, 0, 2].into_iter().enumerate() {
            // SAFETY: i < capacity, and nothing else touches the buffer here.
            unsafe { ring.tags.as_ptr().add(i).write(tag) };
        }
        assert_eq!(ring.take(4), Some(vec![3, 1]));
        assert!(!ring.used_up());
        assert_eq!(ring.take(6), None);
        assert_eq!(ring.take(4), Some(vec![0, 2]));
        assert!(ring.used_up());
        ring.refill();
        assert!(!ring.used_up());
        // SAFETY: entry 0 of the ring page, written by refill.
        let entry = unsafe { ring.ring.as_ptr().read() };
        assert_eq!(entry.len, 8);
        assert_eq!(entry.addr, ring.tags.as_ptr() as u64);
        assert_eq!(entry.resv, 1, "the tail moved by one");
    }
}
