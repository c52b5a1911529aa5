//! A leaf in memory that journals its writes, zeroings and flushes, and the
//! crash images of a journal: everything before the last flush and a random
//! subset of what came after, writes torn at 512-byte sectors.

// Each test binary uses a part of it.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};

use layers::exec::IoCtx;
use layers::report::{LayerReport, NoDetails};
use layers::rng::Rng;
use layers::{AsyncLayer, IoBuf, IoBufMut, Result};

const SECTOR: usize = 512;

#[derive(Clone, Debug)]
pub enum Event {
    Write(u64, Vec<u8>),
    Zero(u64, u64),
    Flush,
}

#[derive(Default)]
pub struct State {
    pub image: Vec<u8>,
    pub events: Vec<Event>,
}

pub struct Leaf {
    state: Mutex<State>,
}

impl Leaf {
    pub fn new(image: Vec<u8>) -> Arc<Leaf> {
        Arc::new(Leaf {
            state: Mutex::new(State {
                image,
                events: Vec::new(),
            }),
        })
    }

    pub fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    pub fn image(&self) -> Vec<u8> {
        self.state().image.clone()
    }

    pub fn take_events(&self) -> Vec<Event> {
        std::mem::take(&mut self.state().events)
    }
}

impl AsyncLayer for Leaf {
    fn size(&self) -> u64 {
        self.state().image.len() as u64
    }

    async fn read(&self, _: &IoCtx, offset: u64, buf: &mut IoBufMut) -> Result<()> {
        yield_once().await;
        let state = self.state();
        let at = offset as usize;
        let len = buf.len();
        buf.copy_from_slice(&state.image[at..at + len]);
        Ok(())
    }

    async fn write(&self, _: &IoCtx, offset: u64, buf: &IoBuf) -> Result<()> {
        yield_once().await;
        let mut state = self.state();
        let at = offset as usize;
        state.image[at..at + buf.len()].copy_from_slice(buf);
        state.events.push(Event::Write(offset, buf.to_vec()));
        Ok(())
    }

    async fn flush(&self, _: &IoCtx) -> Result<()> {
        yield_once().await;
        self.state().events.push(Event::Flush);
        Ok(())
    }

    async fn discard(&self, ctx: &IoCtx, offset: u64, len: u64) -> Result<()> {
        AsyncLayer::write_zeroes(self, ctx, offset, len).await
    }

    async fn write_zeroes(&self, _: &IoCtx, offset: u64, len: u64) -> Result<()> {
        yield_once().await;
        let mut state = self.state();
        state.image[offset as usize..(offset + len) as usize].fill(0);
        state.events.push(Event::Zero(offset, len));
        Ok(())
    }

    fn report(&self) -> LayerReport {
        LayerReport::Memory(NoDetails {})
    }
}

/// Pending once: every operation of the leaf lets other requests run, as a
/// real device's would, so a grow interleaves with them.
async fn yield_once() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            return std::task::Poll::Ready(());
        }
        yielded = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    })
    .await
}

/// `base` after `events` and a crash: all before the last flush, then each
/// later sector written or zeroed with even odds.
pub fn crash_image(base: &[u8], events: &[Event], rng: &mut Rng) -> Vec<u8> {
    let mut image = base.to_vec();
    let last_flush = events
        .iter()
        .rposition(|e| matches!(e, Event::Flush))
        .map_or(0, |i| i + 1);
    for (i, event) in events.iter().enumerate() {
        let durable = i < last_flush;
        match event {
            Event::Write(offset, data) => {
                for (s, sector) in data.chunks(SECTOR).enumerate() {
                    if durable || rng.chance(50) {
                        let at = *offset as usize + s * SECTOR;
                        image[at..at + sector.len()].copy_from_slice(sector);
                    }
                }
            }
            Event::Zero(offset, len) => {
                for at in (*offset..offset + len).step_by(SECTOR) {
                    if durable || rng.chance(50) {
                        let end = (at + SECTOR as u64).min(offset + len);
                        image[at as usize..end as usize].fill(0);
                    }
                }
            }
            Event::Flush => {}
        }
    }
    image
}
