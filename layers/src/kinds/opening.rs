//! What a kind opens its layer with (see [`super::Kind::open`]).

use std::any::Any;
use std::future::Future;
use std::sync::Arc;

use crate::exec::{Executor, IoCtx};
use crate::Layer;

/// One layer being opened by [`crate::compile()`], its children open already.
pub struct Opening<'a> {
    pub block_size: u32,
    /// The children, counted and range-checked, in
    /// [`super::Kind::children`] order.
    pub children: Vec<Arc<dyn Layer>>,
    io: &'a IoCtx,
    exec: &'a Executor,
    prepared: Option<Box<dyn Any>>,
    kept: Option<Box<dyn Any + Send + Sync>>,
}

impl<'a> Opening<'a> {
    pub(crate) fn new(
        block_size: u32,
        children: Vec<Arc<dyn Layer>>,
        io: &'a IoCtx,
        exec: &'a Executor,
        prepared: Option<Box<dyn Any>>,
    ) -> Opening<'a> {
        Opening {
            block_size,
            children,
            io,
            exec,
            prepared,
            kept: None,
        }
    }

    /// The ring to read on-disk metadata through while opening.
    pub fn io(&self) -> &'a IoCtx {
        self.io
    }

    /// Runs an async open to its end, on [`Opening::io`].
    pub fn block_on<F: Future>(&self, fut: F) -> F::Output {
        self.exec.block_on(self.io, fut)
    }

    /// The one layer below.
    pub fn child(&self) -> Result<Arc<dyn Layer>, String> {
        self.children
            .first()
            .cloned()
            .ok_or_else(|| "it has no layer below".to_string())
    }

    /// What [`super::Kind::prepare`] returned, if it is a `T`.
    pub fn prepared<T: 'static>(&mut self) -> Option<T> {
        let prepared = self.prepared.take()?;
        prepared.downcast::<T>().ok().map(|boxed| *boxed)
    }

    /// Keeps `handle` with the compiled stack, for calls that are no `Layer`
    /// operation (a mirror's re-add and scrub): see `Stack::handle`.
    pub fn keep<T: Any + Send + Sync>(&mut self, handle: T) {
        self.kept = Some(Box::new(handle));
    }

    pub(crate) fn into_kept(self) -> Option<Box<dyn Any + Send + Sync>> {
        self.kept
    }
}
