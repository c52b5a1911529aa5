//! The ublk front end: the kernel UAPI (`sys`) and its feature bits by name
//! (`features`), the control device (`ctrl`), the per-queue I/O loop
//! (`queue`) and its threads (`queue_threads`), its batch protocol (`batch`)
//! and its zero-copy data path (`zero_copy`), a device's lifecycle
//! (`device`) and who has it open (`openers`).
//!
//! Most of the binary's unsafe code lives here (mmap of the request
//! descriptors and tag buffers, io_uring passthrough commands), each with its
//! `// SAFETY:` argument; CPU pinning and the like go through `nix`.

pub mod batch;
pub mod ctrl;
pub mod device;
pub mod features;
mod openers;
pub mod queue;
pub mod queue_threads;
mod shared_memory;
pub mod sys;
pub mod user_copy;
pub mod zero_copy;

pub use ctrl::{Control, CtrlError};
pub use device::{Device, DeviceConfig, DeviceError};
pub use queue::TopLayer;
