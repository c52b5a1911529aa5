//! Running a request's sub-operations concurrently on the queue's executor.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::{LocalBoxFuture, Result};

/// Poll every future until all finish; outputs in input order.
pub fn join_all<'a, T>(futs: Vec<LocalBoxFuture<'a, T>>) -> JoinAll<'a, T> {
    let outputs = futs.iter().map(|_| None).collect();
    JoinAll {
        futs: futs.into_iter().map(Some).collect(),
        outputs,
    }
}

pub struct JoinAll<'a, T> {
    futs: Vec<Option<LocalBoxFuture<'a, T>>>,
    outputs: Vec<Option<T>>,
}

impl<T> Unpin for JoinAll<'_, T> {}

impl<T> Future for JoinAll<'_, T> {
    type Output = Vec<T>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Vec<T>> {
        let this = &mut *self;
        let mut pending = false;
        for (slot, out) in this.futs.iter_mut().zip(this.outputs.iter_mut()) {
            if let Some(fut) = slot {
                match fut.as_mut().poll(cx) {
                    Poll::Ready(v) => {
                        *out = Some(v);
                        *slot = None;
                    }
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            return Poll::Pending;
        }
        Poll::Ready(
            this.outputs
                .iter_mut()
                .map(|o| o.take().expect("joined output"))
                .collect(),
        )
    }
}

/// Run all, then return the first error (every part has finished either way, so
/// no part is left running against a buffer the caller is about to reuse).
pub async fn try_join_all(futs: Vec<LocalBoxFuture<'_, Result<()>>>) -> Result<()> {
    if futs.len() == 1 {
        return futs.into_iter().next().expect("one future").await;
    }
    join_all(futs).await.into_iter().collect()
}
