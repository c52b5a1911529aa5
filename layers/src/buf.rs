//! Request buffers: owned memory that travels with a request down the layers.
//!
//! A READ's data lives in an [`IoBufMut`], a WRITE's in an [`IoBuf`]. Both are
//! handles on one piece of [`Memory`]: a 4 KiB aligned heap buffer (from the
//! queue's pool or fresh) or memory a front end lends (the ublk tag buffer). A
//! leaf points its SQE straight into the handle's bytes and gives the ring a
//! [`Hold`] on the memory, which the ring keeps in the operation's in-flight slot
//! until the CQE arrives, even when the request's future is dropped first. Memory
//! goes back where it came from (the pool, or the lender's [`Lease`]) only when
//! the last handle and the last hold are gone, so an operation left running by a
//! dropped future can never write into memory a later request owns.
//!
//! Access follows the usual rules without a runtime check: every byte is covered
//! either by one `IoBufMut` or by any number of `IoBuf`s, never both. Splitting an
//! `IoBufMut` ([`IoBufMut::split_to`]) gives disjoint handles; [`IoBufMut::freeze`]
//! consumes the mutable handle; `IoBuf`s only read. A layer that splits a request
//! hands each part below as its own buffer and joins the parts back
//! ([`IoBufMut::unsplit`]).
//!
//! Zero copy: a ublk request buffer the kernel registered in the queue ring's
//! fixed-buffer table is lent the same way ([`IoBufMut::lend_fixed`]) and
//! carries its table index; a leaf then reads or writes it with a fixed
//! operation at the handle's offset ([`IoBufMut::fixed`]), and the hold rule
//! keeps the index from being unregistered (the front end commits only once the
//! lease is returned) while an operation still names it. Its bytes are the
//! kernel's, not ours: the handle's own bytes are a scratch stand-in that only
//! a layer that transforms data would touch, and such stacks never get fixed
//! buffers.

use std::alloc::{self, Layout};
use std::cell::RefCell;
use std::ops::{Deref, DerefMut, Range};
use std::ptr::NonNull;
use std::rc::{Rc, Weak};

pub use crate::zero_prefix::ZeroPrefix;

/// Alignment of every [`AlignedBuf`]: enough for O_DIRECT on any block size.
pub const BUF_ALIGN: usize = 4096;

/// A heap buffer aligned to [`BUF_ALIGN`], zeroed at allocation.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
    cap: usize,
}

// SAFETY: AlignedBuf uniquely owns its allocation, like Vec<u8>; nothing in it is
// tied to the thread that allocated it.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared references only allow reading the bytes, as for Vec<u8>.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// A zeroed buffer of `len` bytes with room for at least `len` (rounded up to
    /// the alignment, never zero).
    pub fn new(len: usize) -> AlignedBuf {
        let cap = len.max(1).next_multiple_of(BUF_ALIGN);
        let layout = Layout::from_size_align(cap, BUF_ALIGN).expect("buffer size overflows");
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(raw) else {
            alloc::handle_alloc_error(layout)
        };
        AlignedBuf { ptr, len, cap }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Change the visible length; the bytes beyond the old length keep whatever
    /// they held (they were initialised at allocation).
    pub fn set_len(&mut self, len: usize) {
        assert!(len <= self.cap, "AlignedBuf::set_len beyond capacity");
        self.len = len;
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr is valid for cap >= len initialised bytes for our lifetime.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in as_slice, and &mut self guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    /// The start of the allocation, for memory handed to the kernel.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        let layout = Layout::from_size_align(self.cap, BUF_ALIGN).expect("checked in new");
        // SAFETY: allocated in `new` with exactly this layout and not freed since.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), layout) }
    }
}

/// Per-queue free lists of buffers by power-of-two size, so the data path does not
/// allocate per request. Bounded: at most `PER_CLASS` buffers are kept per size.
#[derive(Default)]
pub struct BufPool {
    classes: Vec<Vec<AlignedBuf>>,
}

impl BufPool {
    const PER_CLASS: usize = 256;

    fn class(len: usize) -> usize {
        len.max(BUF_ALIGN).next_power_of_two().trailing_zeros() as usize
    }

    /// A buffer of exactly `len` visible bytes (contents unspecified).
    pub fn take(&mut self, len: usize) -> AlignedBuf {
        let class = Self::class(len);
        let mut buf = match self.classes.get_mut(class).and_then(Vec::pop) {
            Some(buf) => buf,
            None => AlignedBuf::new(1 << class),
        };
        buf.set_len(len);
        buf
    }

    pub fn put(&mut self, buf: AlignedBuf) {
        if !buf.capacity().is_power_of_two() {
            return;
        }
        let class = Self::class(buf.capacity());
        if self.classes.len() <= class {
            self.classes.resize_with(class + 1, Vec::new);
        }
        if self.classes[class].len() < Self::PER_CLASS {
            self.classes[class].push(buf);
        }
    }
}

/// Who owns the bytes behind a set of handles.
enum Owner {
    /// A heap buffer; on release it goes back to `home` (a queue's pool) if any.
    Heap {
        buf: Option<AlignedBuf>,
        home: Option<Rc<RefCell<BufPool>>>,
    },
    /// Memory a front end lent (see [`IoBufMut::lend`]); the lender learns of
    /// its return through its [`Lease`].
    Lent,
}

/// The bytes behind handles and holds, released when the last of them goes.
struct Memory {
    ptr: NonNull<u8>,
    len: usize,
    owner: Owner,
    /// The index of the ring's fixed-buffer table where the kernel registered
    /// the real bytes (zero copy); `None` for memory of our own.
    fixed: Option<u16>,
    /// What the lender knows of zeros at the start of the memory, if it keeps
    /// count ([`ZeroPrefix`]).
    zeros: Option<ZeroPrefix>,
}

impl Drop for Memory {
    fn drop(&mut self) {
        if let Owner::Heap {
            buf,
            home: Some(home),
        } = &mut self.owner
        {
            if let Some(buf) = buf.take() {
                home.borrow_mut().put(buf);
            }
        }
    }
}

/// Keeps a buffer's memory alive (and away from later requests) while the
/// kernel may still read or write it; gives no access to the bytes. The ring
/// keeps one in each in-flight slot.
pub struct Hold(#[allow(dead_code)] Rc<Memory>);

/// The lender's side of lent memory: tells when every handle and hold on it is
/// gone, so the memory may serve another request.
pub struct Lease(Weak<Memory>);

impl Lease {
    /// Whether the memory is back: no handle and no in-flight operation refers
    /// to it any more.
    pub fn is_returned(&self) -> bool {
        self.0.strong_count() == 0
    }
}

/// The mutable handle on a range of a request buffer: a READ's destination.
/// Dereferences to its bytes. Not `Send`: it stays on its queue thread.
pub struct IoBufMut {
    mem: Rc<Memory>,
    start: usize,
    len: usize,
}

/// A shared, read-only handle on a range of a request buffer: a WRITE's source.
/// Cloning or slicing it is cheap; the bytes are not copied.
#[derive(Clone)]
pub struct IoBuf {
    mem: Rc<Memory>,
    start: usize,
    len: usize,
}

impl IoBufMut {
    fn whole(mem: Memory) -> IoBufMut {
        let len = mem.len;
        IoBufMut {
            mem: Rc::new(mem),
            start: 0,
            len,
        }
    }

    fn heap(mut buf: AlignedBuf, home: Option<Rc<RefCell<BufPool>>>) -> IoBufMut {
        let (ptr, len) = (NonNull::new(buf.as_mut_ptr()).expect("non-null"), buf.len());
        IoBufMut::whole(Memory {
            ptr,
            len,
            owner: Owner::Heap {
                buf: Some(buf),
                home,
            },
            fixed: None,
            zeros: None,
        })
    }

    /// A fresh zeroed buffer of `len` bytes, aligned to [`BUF_ALIGN`].
    pub fn zeroed(len: usize) -> IoBufMut {
        IoBufMut::heap(AlignedBuf::new(len), None)
    }

    /// A fresh aligned buffer holding a copy of `data`.
    pub fn copy_from(data: &[u8]) -> IoBufMut {
        let mut buf = IoBufMut::zeroed(data.len());
        buf.copy_from_slice(data);
        buf
    }

    /// Wrap `buf` (its visible length); [`IoBufMut::into_aligned`] gives it back.
    pub fn from_aligned(buf: AlignedBuf) -> IoBufMut {
        IoBufMut::heap(buf, None)
    }

    /// A buffer that returns to `pool` when its last handle and hold are gone.
    pub(crate) fn pooled(buf: AlignedBuf, pool: Rc<RefCell<BufPool>>) -> IoBufMut {
        IoBufMut::heap(buf, Some(pool))
    }

    /// Lend `len` bytes at `ptr` (e.g. a ublk tag buffer) as a request buffer.
    /// The lease says when the memory is back. `zeros`, if the lender keeps
    /// one for this memory, is told of every write through the handles.
    ///
    /// # Safety
    /// The memory must be valid for reads and writes of `len` bytes, and nothing
    /// but the returned handle (and the handles and holds made from it) may
    /// touch it, until the lease reports it returned; if that never happens, the
    /// memory must stay valid forever. `zeros` must count only bytes that are
    /// zero now.
    pub unsafe fn lend(
        ptr: NonNull<u8>,
        len: usize,
        zeros: Option<ZeroPrefix>,
    ) -> (IoBufMut, Lease) {
        let buf = IoBufMut::whole(Memory {
            ptr,
            len,
            owner: Owner::Lent,
            fixed: None,
            zeros,
        });
        let lease = Lease(Rc::downgrade(&buf.mem));
        (buf, lease)
    }

    /// Lend a request buffer of `len` bytes that the kernel registered at
    /// `index` of the ring's fixed-buffer table (ublk zero copy). Leaves read
    /// and write it with fixed operations ([`IoBufMut::fixed`]); `scratch`
    /// stands in for its bytes should a layer look at them (none that a
    /// zero-copy stack holds does), so that doing so is wrong but not unsound.
    ///
    /// # Safety
    /// As for [`IoBufMut::lend`], for `scratch`; and the registration at `index`
    /// must stay in place until the lease reports the memory returned.
    pub unsafe fn lend_fixed(scratch: NonNull<u8>, len: usize, index: u16) -> (IoBufMut, Lease) {
        let buf = IoBufMut::whole(Memory {
            ptr: scratch,
            len,
            owner: Owner::Lent,
            fixed: Some(index),
            zeros: None,
        });
        let lease = Lease(Rc::downgrade(&buf.mem));
        (buf, lease)
    }

    /// For a kernel-registered buffer: its fixed-buffer index and where this
    /// handle starts in it (the address a fixed operation names).
    pub fn fixed(&self) -> Option<(u16, usize)> {
        self.mem.fixed.map(|index| (index, self.start))
    }

    /// The heap buffer back, if this is the last handle on it and no operation
    /// holds it (its length is the one it was wrapped with); otherwise `self`.
    /// Lent memory is never handed out here.
    pub fn into_aligned(self) -> Result<AlignedBuf, IoBufMut> {
        let IoBufMut { mem, start, len } = self;
        match Rc::try_unwrap(mem) {
            Ok(mut mem) => match &mut mem.owner {
                Owner::Heap { buf, .. } => Ok(buf.take().expect("heap memory has its buffer")),
                Owner::Lent => unreachable!("lent memory has a lease, not into_aligned"),
            },
            Err(mem) => Err(IoBufMut { mem, start, len }),
        }
    }

    /// Remove the first `at` bytes from this handle and return them as their
    /// own handle; `self` keeps the rest.
    pub fn split_to(&mut self, at: usize) -> IoBufMut {
        assert!(at <= self.len, "split_to({at}) past {} bytes", self.len);
        let head = IoBufMut {
            mem: self.mem.clone(),
            start: self.start,
            len: at,
        };
        self.start += at;
        self.len -= at;
        head
    }

    /// Append `next`, which must be the bytes right after this handle's, in the
    /// same buffer (the inverse of [`IoBufMut::split_to`]). An empty `self`
    /// takes `next` as it is.
    pub fn unsplit(&mut self, next: IoBufMut) {
        if self.len == 0 {
            *self = next;
            return;
        }
        assert!(
            Rc::ptr_eq(&self.mem, &next.mem) && self.start + self.len == next.start,
            "unsplit of buffers that are not neighbours"
        );
        self.len += next.len;
    }

    /// Split into consecutive parts of `lens` bytes (which must add up to the
    /// length); `self` is left empty until [`IoBufMut::join`] gives them back.
    pub fn split_parts(&mut self, lens: impl IntoIterator<Item = usize>) -> Vec<IoBufMut> {
        let parts: Vec<IoBufMut> = lens.into_iter().map(|n| self.split_to(n)).collect();
        assert_eq!(self.len, 0, "split_parts lengths must cover the buffer");
        parts
    }

    /// Split into the bytes before `range`, those in it (`[1]`) and those after,
    /// for a read of just that range; [`IoBufMut::join`] puts them back.
    pub fn split_around(&mut self, range: Range<usize>) -> Vec<IoBufMut> {
        let len = self.len;
        assert!(range.start <= range.end && range.end <= len);
        self.split_parts([range.start, range.len(), len - range.end])
    }

    /// Join parts made by [`IoBufMut::split_parts`] back into `self`, in order.
    pub fn join(&mut self, parts: Vec<IoBufMut>) {
        let mut parts = parts.into_iter();
        let Some(mut joined) = parts.next() else {
            return;
        };
        for part in parts {
            joined.unsplit(part);
        }
        *self = joined;
    }

    /// The same bytes, read-only and shareable.
    pub fn freeze(self) -> IoBuf {
        IoBuf {
            mem: self.mem,
            start: self.start,
            len: self.len,
        }
    }

    /// Make every byte of this handle zero, skipping the stores when the
    /// lender knows they already are ([`ZeroPrefix`]).
    pub fn fill_zero(&mut self) {
        let end = self.start + self.len;
        let Some(zeros) = self.mem.zeros.clone() else {
            self.fill(0);
            return;
        };
        let known = zeros.known();
        if known >= end {
            return;
        }
        self.fill(0);
        if known >= self.start {
            zeros.zeroed_to(end);
        }
    }

    /// Where the bytes start, for the SQE, and a hold for the ring's slot.
    pub fn as_mut_ptr_held(&mut self) -> (*mut u8, Hold) {
        if let Some(zeros) = &self.mem.zeros {
            // The operation may write anywhere in the handle.
            zeros.written_from(self.start);
        }
        // SAFETY: start + len <= mem.len by construction, so the offset stays
        // inside the memory.
        let ptr = unsafe { self.mem.ptr.as_ptr().add(self.start) };
        (ptr, Hold(self.mem.clone()))
    }
}

impl Deref for IoBufMut {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        // SAFETY: the range lies inside the memory, which is valid while `mem`
        // lives; no other handle covers these bytes mutably (module doc), and the
        // kernel touches them only while an operation holding `&mut self` or a
        // dropped one is in flight, and in the latter case this handle is gone
        // with the request or its owner no longer reads it.
        unsafe { std::slice::from_raw_parts(self.mem.ptr.as_ptr().add(self.start), self.len) }
    }
}

impl DerefMut for IoBufMut {
    fn deref_mut(&mut self) -> &mut [u8] {
        if let Some(zeros) = &self.mem.zeros {
            zeros.written_from(self.start);
        }
        // SAFETY: as in deref; `&mut self` makes this the only access through
        // this handle, and no other handle covers these bytes.
        unsafe { std::slice::from_raw_parts_mut(self.mem.ptr.as_ptr().add(self.start), self.len) }
    }
}

impl IoBuf {
    /// A fresh aligned buffer holding a copy of `data`.
    pub fn copy_from(data: &[u8]) -> IoBuf {
        IoBufMut::copy_from(data).freeze()
    }

    /// `len` zero bytes.
    pub fn zeroed(len: usize) -> IoBuf {
        IoBufMut::zeroed(len).freeze()
    }

    /// The bytes at `range` of this handle, as their own handle (no copy).
    pub fn slice(&self, range: Range<usize>) -> IoBuf {
        assert!(
            range.start <= range.end && range.end <= self.len,
            "slice {range:?} of {} bytes",
            self.len
        );
        IoBuf {
            mem: self.mem.clone(),
            start: self.start + range.start,
            len: range.len(),
        }
    }

    /// The heap buffer back, if this is the last handle on it and no operation
    /// holds it; otherwise `self`.
    pub fn into_aligned(self) -> Result<AlignedBuf, IoBuf> {
        let IoBuf { mem, start, len } = self;
        IoBufMut { mem, start, len }
            .into_aligned()
            .map_err(IoBufMut::freeze)
    }

    /// See [`IoBufMut::fixed`].
    pub fn fixed(&self) -> Option<(u16, usize)> {
        self.mem.fixed.map(|index| (index, self.start))
    }

    /// Where the bytes start, for the SQE, and a hold for the ring's slot.
    pub fn as_ptr_held(&self) -> (*const u8, Hold) {
        // SAFETY: start + len <= mem.len by construction.
        let ptr = unsafe { self.mem.ptr.as_ptr().add(self.start) };
        (ptr.cast_const(), Hold(self.mem.clone()))
    }
}

impl Deref for IoBuf {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        // SAFETY: the range lies inside the memory, valid while `mem` lives; these
        // bytes have no mutable handle (it was consumed by `freeze`), and the
        // kernel only reads them for a WRITE.
        unsafe { std::slice::from_raw_parts(self.mem.ptr.as_ptr().add(self.start), self.len) }
    }
}

impl std::fmt::Debug for IoBufMut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IoBufMut({} bytes)", self.len)
    }
}

impl std::fmt::Debug for IoBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IoBuf({} bytes)", self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_reuses_by_size_class() {
        let mut pool = BufPool::default();
        let buf = pool.take(5000);
        assert_eq!(buf.len(), 5000);
        assert_eq!(buf.capacity(), 8192);
        assert_eq!(buf.as_slice().as_ptr() as usize % BUF_ALIGN, 0);
        let ptr = buf.as_slice().as_ptr();
        pool.put(buf);
        let again = pool.take(8192);
        assert_eq!(again.as_slice().as_ptr(), ptr);
    }

    #[test]
    fn split_and_join_give_back_the_same_bytes() {
        let mut buf = IoBufMut::zeroed(12288);
        let ptr = buf.as_ptr();
        let mut parts = buf.split_parts([4096, 0, 8192]);
        assert!(buf.is_empty());
        parts[0].fill(1);
        parts[2].fill(3);
        buf.join(parts);
        assert_eq!(buf.len(), 12288);
        assert_eq!(buf.as_ptr(), ptr);
        assert!(buf[..4096].iter().all(|&b| b == 1));
        assert!(buf[4096..].iter().all(|&b| b == 3));
        let frozen = buf.freeze();
        assert_eq!(frozen.slice(4096..4100).to_vec(), vec![3; 4]);
        assert!(frozen.into_aligned().is_ok());
    }

    #[test]
    fn a_held_buffer_goes_back_to_its_pool_only_when_the_hold_is_gone() {
        let pool = Rc::new(RefCell::new(BufPool::default()));
        let mut buf = IoBufMut::pooled(pool.borrow_mut().take(4096), pool.clone());
        let (ptr, hold) = buf.as_mut_ptr_held();
        drop(buf);
        assert_ne!(pool.borrow_mut().take(4096).as_slice().as_ptr(), ptr);
        drop(hold);
        assert_eq!(pool.borrow_mut().take(4096).as_slice().as_ptr(), ptr);
    }

    #[test]
    fn a_lease_is_returned_when_every_handle_and_hold_is_gone() {
        let mut memory = AlignedBuf::new(8192);
        let ptr = NonNull::new(memory.as_mut_ptr()).unwrap();
        // SAFETY: `memory` outlives the handles below and is not touched meanwhile.
        let (mut buf, lease) = unsafe { IoBufMut::lend(ptr, 8192, None) };
        let tail = buf.split_to(4096);
        let (_, hold) = buf.as_mut_ptr_held();
        drop(buf);
        assert!(!lease.is_returned());
        drop(tail);
        assert!(!lease.is_returned());
        drop(hold);
        assert!(lease.is_returned());
    }

    #[test]
    fn a_fixed_buffer_keeps_its_index_and_offsets_through_splits() {
        let mut scratch = AlignedBuf::new(16384);
        let ptr = NonNull::new(scratch.as_mut_ptr()).unwrap();
        // SAFETY: `scratch` outlives the handles below; no registration is
        // involved in this test.
        let (mut buf, lease) = unsafe { IoBufMut::lend_fixed(ptr, 16384, 7) };
        assert_eq!(buf.fixed(), Some((7, 0)));
        let head = buf.split_to(4096);
        assert_eq!(head.fixed(), Some((7, 0)));
        assert_eq!(buf.fixed(), Some((7, 4096)));
        let frozen = buf.freeze();
        assert_eq!(frozen.slice(8192..12288).fixed(), Some((7, 12288)));
        let (_, hold) = frozen.as_ptr_held();
        drop((head, frozen));
        assert!(!lease.is_returned());
        drop(hold);
        assert!(lease.is_returned());
        assert_eq!(IoBufMut::zeroed(4096).fixed(), None);
    }
}
