//! What a lender knows to be zero in memory it lends (see [`ZeroPrefix`]).

use std::cell::Cell;
use std::rc::Rc;

/// How many bytes at the start of a lender's memory are known to be zero,
/// carried from one request to the next (a ublk tag buffer), so that a leaf
/// that reads zeros ([`crate::IoBufMut::fill_zero`]) need not store them again: under
/// emulation a 4 KiB fill is thousands of instructions per request. Every
/// mutable access through a handle lowers the count to where that handle
/// starts; the lender calls [`ZeroPrefix::forget`] whenever anything else may
/// have written the memory (the kernel copying a WRITE's data in).
#[derive(Clone, Default)]
pub struct ZeroPrefix(Rc<Cell<usize>>);

impl ZeroPrefix {
    /// Nothing known to be zero.
    pub fn new() -> ZeroPrefix {
        ZeroPrefix::default()
    }

    /// The memory was written from outside the handles: nothing is known zero.
    pub fn forget(&self) {
        self.0.set(0);
    }

    /// Bytes known zero from the start of the memory.
    pub fn known(&self) -> usize {
        self.0.get()
    }

    /// The first `end` bytes are zero.
    pub(crate) fn zeroed_to(&self, end: usize) {
        self.0.set(end);
    }

    /// Bytes from `from` on may be written.
    pub(crate) fn written_from(&self, from: usize) {
        if self.0.get() > from {
            self.0.set(from);
        }
    }
}
