//! One io_uring context and one executor, to drive layers from a test; each
//! test binary adds the helpers it needs in its own `impl Rig`.

// Each test binary uses a part of it.
#![allow(dead_code)]

use std::future::Future;

use layers::exec::{Executor, IoCtx};

pub struct Rig {
    pub ctx: IoCtx,
    pub exec: Executor,
}

impl Rig {
    pub fn new() -> Rig {
        Rig {
            ctx: IoCtx::new(0, 16).unwrap(),
            exec: Executor::new().unwrap(),
        }
    }

    pub fn run<T>(&self, fut: impl Future<Output = T>) -> T {
        self.exec.block_on(&self.ctx, fut)
    }
}
