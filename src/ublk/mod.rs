//! The ublk front end: the kernel UAPI (`sys`), the control device (`ctrl`), the
//! per-queue I/O loop (`queue`) and a device's lifecycle (`device`).
//!
//! Most of the binary's unsafe code lives here (mmap of the request
//! descriptors and tag buffers, io_uring passthrough commands), each with its
//! `// SAFETY:` argument; CPU pinning and the like go through `nix`.

pub mod ctrl;
pub mod device;
pub mod queue;
mod shared_memory;
pub mod sys;

pub use ctrl::{Control, CtrlError};
pub use device::{Device, DeviceConfig, DeviceError};
pub use queue::TopLayer;
