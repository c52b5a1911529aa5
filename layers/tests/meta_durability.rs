//! The flush protocol of the metadata tables (`meta_table.rs`) under writes held
//! in flight, and what `checksum` and `crypt` detect: a lost, misdirected,
//! flipped or rolled back block reads as EIO once a FLUSH covered its write, and
//! is counted in `status`.
//!
//! The leaf here keeps a durable image (what a flush made durable) next to the
//! live one, and can hold, lose or misdirect one chosen write. A crash image is
//! the durable image with the writes in flight torn in half.

mod rig;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use layers::checksum::Checksum;
use layers::compress::Compress;
use layers::crypt::Crypt;
use layers::exec::{Executor, IoCtx};
use layers::join::join_all;
use layers::meta_table::{MetaTable, HEADER_BYTES};
use layers::report::{LayerReport, NoDetails};
use layers::superblock::{Superblock, SUPERBLOCK_BYTES};
use layers::{Error, IoBuf, IoBufMut, Layer, LocalBoxFuture, Result};
use rig::Rig;

const BLOCK: u64 = 4096;
const LEAF: u64 = 1 << 20;
const KEY: [u8; 32] = [0x42; 32];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Action {
    /// Completes only once released; torn in a crash image until then.
    Hold,
    /// Completes, never stored.
    Lose,
    /// Completes, stored at another offset.
    Redirect(u64),
}

#[derive(Default)]
struct State {
    image: Vec<u8>,
    durable: Vec<u8>,
    /// The next write starting in `range` gets `action`.
    armed: Option<(std::ops::Range<u64>, Action)>,
    held: Option<(u64, Vec<u8>)>,
    released: bool,
    waker: Option<Waker>,
}

struct TestLeaf {
    state: Mutex<State>,
}

impl TestLeaf {
    fn new(image: Vec<u8>) -> Arc<TestLeaf> {
        Arc::new(TestLeaf {
            state: Mutex::new(State {
                durable: image.clone(),
                image,
                ..Default::default()
            }),
        })
    }

    fn arm(&self, range: std::ops::Range<u64>, action: Action) {
        let mut s = self.state.lock().unwrap();
        s.armed = Some((range, action));
        s.released = false;
    }

    fn release(&self) {
        let mut s = self.state.lock().unwrap();
        s.released = true;
        if let Some(w) = s.waker.take() {
            w.wake();
        }
    }

    fn holding(&self) -> bool {
        self.state.lock().unwrap().held.is_some()
    }

    /// What a power cut leaves now: the durable image, the held write torn.
    fn crash_image(&self) -> Vec<u8> {
        let s = self.state.lock().unwrap();
        let mut image = s.durable.clone();
        if let Some((offset, data)) = &s.held {
            let half = data.len() / 2;
            image[*offset as usize..*offset as usize + half].copy_from_slice(&data[..half]);
        }
        image
    }

    fn live_image(&self) -> Vec<u8> {
        self.state.lock().unwrap().image.clone()
    }

    /// Change bytes on the "disk" behind the layer's back (live and durable).
    fn poke(&self, offset: u64, bytes: &[u8]) {
        let mut s = self.state.lock().unwrap();
        let at = offset as usize;
        s.image[at..at + bytes.len()].copy_from_slice(bytes);
        s.durable[at..at + bytes.len()].copy_from_slice(bytes);
    }

    fn peek(&self, offset: u64, len: usize) -> Vec<u8> {
        let s = self.state.lock().unwrap();
        s.image[offset as usize..offset as usize + len].to_vec()
    }
}

struct HeldWrite<'a> {
    leaf: &'a TestLeaf,
}

impl Future for HeldWrite<'_> {
    type Output = Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let mut s = self.leaf.state.lock().unwrap();
        if !s.released {
            s.waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        if let Some((offset, data)) = s.held.take() {
            s.image[offset as usize..offset as usize + data.len()].copy_from_slice(&data);
        }
        Poll::Ready(Ok(()))
    }
}

impl TestLeaf {
    /// Apply a write at once, unless an armed action says otherwise; true when
    /// the write is held until released.
    fn write_now(&self, offset: u64, buf: &[u8]) -> bool {
        let mut s = self.state.lock().unwrap();
        let action = match &s.armed {
            Some((range, action)) if range.contains(&offset) => Some(*action),
            _ => None,
        };
        if action.is_some() {
            s.armed = None;
        }
        let mut at = offset as usize;
        match action {
            Some(Action::Hold) => {
                s.held = Some((offset, buf.to_vec()));
                return true;
            }
            Some(Action::Lose) => return false,
            Some(Action::Redirect(to)) => at = to as usize,
            None => {}
        }
        s.image[at..at + buf.len()].copy_from_slice(buf);
        false
    }
}

impl layers::AsyncLayer for TestLeaf {
    fn size(&self) -> u64 {
        self.state.lock().unwrap().image.len() as u64
    }

    async fn read(&self, _: &IoCtx, offset: u64, buf: &mut IoBufMut) -> Result<()> {
        let s = self.state.lock().unwrap();
        let len = buf.len();
        buf.copy_from_slice(&s.image[offset as usize..offset as usize + len]);
        Ok(())
    }

    async fn write(&self, _: &IoCtx, offset: u64, buf: &IoBuf) -> Result<()> {
        if self.write_now(offset, buf) {
            return HeldWrite { leaf: self }.await;
        }
        Ok(())
    }

    async fn flush(&self, _: &IoCtx) -> Result<()> {
        let mut s = self.state.lock().unwrap();
        s.durable = s.image.clone();
        Ok(())
    }

    async fn discard(&self, ctx: &IoCtx, offset: u64, len: u64) -> Result<()> {
        layers::AsyncLayer::write_zeroes(self, ctx, offset, len).await
    }

    async fn write_zeroes(&self, _: &IoCtx, offset: u64, len: u64) -> Result<()> {
        let mut s = self.state.lock().unwrap();
        s.image[offset as usize..(offset + len) as usize].fill(0);
        Ok(())
    }

    fn report(&self) -> LayerReport {
        LayerReport::Memory(NoDetails {})
    }
}

/// Yield to the other futures of a join `n` times.
struct YieldN(usize);

impl Future for YieldN {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 == 0 {
            return Poll::Ready(());
        }
        self.0 -= 1;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Checksum,
    Crypt,
}

const KINDS: [Kind; 2] = [Kind::Checksum, Kind::Crypt];

impl Kind {
    fn entry_bytes(self) -> usize {
        match self {
            Kind::Checksum => 16,
            Kind::Crypt => 64,
        }
    }

    fn open(self, ctx: &IoCtx, exec: &Executor, leaf: &Arc<TestLeaf>) -> Box<dyn Layer> {
        let lower: Arc<dyn Layer> = leaf.clone();
        exec.block_on(ctx, async {
            match self {
                Kind::Checksum => Box::new(Checksum::open(ctx, lower, BLOCK as u32).await.unwrap())
                    as Box<dyn Layer>,
                Kind::Crypt => Box::new(Crypt::open(ctx, lower, BLOCK as u32, &KEY).await.unwrap()),
            }
        })
    }

    /// Byte offset below of data block `block`.
    fn data_at(self, _layer: &dyn Layer, block: u64) -> u64 {
        MetaTable::grouped_data_at(SUPERBLOCK_BYTES, self.entry_bytes(), BLOCK, block)
    }

    fn mismatches(self, layer: &dyn Layer) -> u64 {
        match (self, layer.report()) {
            (Kind::Checksum, LayerReport::Checksum(report)) => report.mismatches,
            (Kind::Crypt, LayerReport::Crypt(report)) => report.auth_failures,
            (_, other) => panic!("not the layer asked for: {other:?}"),
        }
    }
}

impl Rig {
    fn write(&self, layer: &dyn Layer, block: u64, byte: u8) {
        let data = vec![byte; BLOCK as usize];
        self.exec
            .block_on(
                &self.ctx,
                layer.write_bytes(&self.ctx, block * BLOCK, &data),
            )
            .unwrap();
    }

    fn flush(&self, layer: &dyn Layer) {
        self.exec
            .block_on(&self.ctx, layer.flush(&self.ctx))
            .unwrap();
    }

    fn read(&self, layer: &dyn Layer, block: u64) -> Result<u8> {
        let mut buf = vec![0u8; BLOCK as usize];
        self.exec.block_on(
            &self.ctx,
            layer.read_bytes(&self.ctx, block * BLOCK, &mut buf),
        )?;
        assert!(buf.iter().all(|&b| b == buf[0]), "a block reads mixed data");
        Ok(buf[0])
    }
}

fn fresh(kind: Kind, rig: &Rig) -> (Arc<TestLeaf>, Box<dyn Layer>) {
    let leaf = TestLeaf::new(vec![0u8; LEAF as usize]);
    let layer = kind.open(&rig.ctx, &rig.exec, &leaf);
    (leaf, layer)
}

fn assert_corrupt(kind: Kind, what: &str, res: Result<u8>) {
    match res {
        Err(Error::Corrupt { .. }) => {}
        other => panic!("{kind:?}: {what}: read gave {other:?}, not EIO"),
    }
}

#[test]
fn a_block_rolled_back_after_a_flush_reads_as_eio_and_is_counted() {
    let rig = Rig::new();
    for kind in KINDS {
        let (leaf, layer) = fresh(kind, &rig);
        let at = kind.data_at(&*layer, 5);
        rig.write(&*layer, 5, 0x11);
        rig.flush(&*layer);
        let old = leaf.peek(at, BLOCK as usize);
        rig.write(&*layer, 5, 0x22);
        rig.flush(&*layer);
        leaf.poke(at, &old);
        assert_corrupt(kind, "rolled back", rig.read(&*layer, 5));
        assert_eq!(kind.mismatches(&*layer), 1, "{kind:?}");
        // And after a restart, from what the flushes left.
        drop(layer);
        let leaf = TestLeaf::new(leaf.crash_image());
        let layer = kind.open(&rig.ctx, &rig.exec, &leaf);
        assert_corrupt(kind, "rolled back, reopened", rig.read(&*layer, 5));
    }
}

#[test]
fn lost_misdirected_and_flipped_writes_read_as_eio_once_flushed() {
    let rig = Rig::new();
    for kind in KINDS {
        let (leaf, layer) = fresh(kind, &rig);
        for block in [1, 2, 3] {
            rig.write(&*layer, block, 0x10 + block as u8);
        }
        rig.flush(&*layer);
        // Lost: completes, never stored.
        let at1 = kind.data_at(&*layer, 1);
        leaf.arm(at1..at1 + 1, Action::Lose);
        rig.write(&*layer, 1, 0x51);
        // Misdirected: block 2's write lands on block 3.
        let (at2, at3) = (kind.data_at(&*layer, 2), kind.data_at(&*layer, 3));
        leaf.arm(at2..at2 + 1, Action::Redirect(at3));
        rig.write(&*layer, 2, 0x52);
        rig.flush(&*layer);
        assert_corrupt(kind, "lost write", rig.read(&*layer, 1));
        assert_corrupt(kind, "misdirected write, its block", rig.read(&*layer, 2));
        assert_corrupt(
            kind,
            "misdirected write, where it landed",
            rig.read(&*layer, 3),
        );
        // A bit flip in a flushed block.
        rig.write(&*layer, 4, 0x14);
        rig.flush(&*layer);
        let at4 = kind.data_at(&*layer, 4);
        let mut flipped = leaf.peek(at4 + 100, 1);
        flipped[0] ^= 0x08;
        leaf.poke(at4 + 100, &flipped);
        assert_corrupt(kind, "bit flip", rig.read(&*layer, 4));
        assert_eq!(kind.mismatches(&*layer), 4, "{kind:?}");
        // The blocks around them still read back.
        rig.write(&*layer, 6, 0x16);
        assert_eq!(rig.read(&*layer, 6).unwrap(), 0x16);
    }
}

#[test]
fn an_erased_table_entry_reads_as_eio_not_zeros() {
    let rig = Rig::new();
    for kind in KINDS {
        let (leaf, layer) = fresh(kind, &rig);
        rig.write(&*layer, 0, 0x33);
        rig.flush(&*layer);
        drop(layer);
        // Erase both copies of the first table page: a valid, empty page.
        let pages = SUPERBLOCK_BYTES + HEADER_BYTES;
        leaf.poke(pages, &vec![0u8; 2 * BLOCK as usize]);
        let leaf = TestLeaf::new(leaf.crash_image());
        let layer = kind.open(&rig.ctx, &rig.exec, &leaf);
        assert_corrupt(kind, "erased entry", rig.read(&*layer, 0));
        // A block never written still reads as zeros; a discarded one too.
        assert_eq!(rig.read(&*layer, 1).unwrap(), 0);
        rig.write(&*layer, 2, 0x44);
        rig.exec
            .block_on(&rig.ctx, layer.discard(&rig.ctx, 2 * BLOCK, BLOCK))
            .unwrap();
        rig.flush(&*layer);
        assert_eq!(rig.read(&*layer, 2).unwrap(), 0);
    }
}

#[test]
fn a_block_a_crash_left_at_its_previous_version_survives_the_next_flush() {
    let rig = Rig::new();
    for kind in KINDS {
        let (leaf, layer) = fresh(kind, &rig);
        rig.write(&*layer, 7, 0x71);
        rig.flush(&*layer);
        // The table page lands, the data write is lost, then the power goes.
        let at = kind.data_at(&*layer, 7);
        leaf.arm(at..at + 1, Action::Lose);
        rig.write(&*layer, 7, 0x72);
        drop(layer);
        let leaf = TestLeaf::new(leaf.live_image());
        let layer = kind.open(&rig.ctx, &rig.exec, &leaf);
        assert_eq!(rig.read(&*layer, 7).unwrap(), 0x71, "{kind:?}");
        rig.flush(&*layer);
        assert_eq!(
            rig.read(&*layer, 7).unwrap(),
            0x71,
            "{kind:?}: after a flush"
        );
        drop(layer);
        let leaf = TestLeaf::new(leaf.crash_image());
        let layer = kind.open(&rig.ctx, &rig.exec, &leaf);
        assert_eq!(rig.read(&*layer, 7).unwrap(), 0x71, "{kind:?}: reopened");
    }
}

/// Run `ops` together with a release of the held write after some yields; return
/// the crash image taken when `flush_b` (the last op) completes.
fn crash_when_flush_acks(
    rig: &Rig,
    leaf: &Arc<TestLeaf>,
    layer: &dyn Layer,
    first: LocalBoxFuture<'_, Result<()>>,
    flushes: usize,
) -> Vec<u8> {
    let image = Mutex::new(None);
    let ctx = &rig.ctx;
    let mut futs: Vec<LocalBoxFuture<'_, Result<()>>> = vec![first];
    for i in 0..flushes {
        let image = &image;
        futs.push(Box::pin(async move {
            layer.flush(ctx).await?;
            if i + 1 == flushes {
                *image.lock().unwrap() = Some(leaf.crash_image());
            }
            Ok(())
        }));
    }
    futs.push(Box::pin(async {
        YieldN(50).await;
        assert!(leaf.holding() || image.lock().unwrap().is_some());
        leaf.release();
        Ok(())
    }));
    for res in rig.exec.block_on(ctx, join_all(futs)) {
        res.unwrap();
    }
    let image = image.lock().unwrap().take().unwrap();
    image
}

#[test]
fn concurrent_flushes_never_ack_before_a_page_write_in_flight_is_durable() {
    let rig = Rig::new();
    for kind in KINDS {
        let (leaf, layer) = fresh(kind, &rig);
        // Block 0 written and acknowledged; its table page is not flushed yet.
        rig.write(&*layer, 0, 0xa0);
        // A write to block 1 (same table page) has its page write in flight
        // while two FLUSHes arrive.
        let pages = SUPERBLOCK_BYTES + HEADER_BYTES;
        leaf.arm(pages..pages + 2 * BLOCK, Action::Hold);
        let data = vec![0xa1u8; BLOCK as usize];
        let write = layer.write_bytes(&rig.ctx, BLOCK, &data);
        let image = crash_when_flush_acks(&rig, &leaf, &*layer, write, 2);
        drop(layer);
        let leaf = TestLeaf::new(image);
        let layer = kind.open(&rig.ctx, &rig.exec, &leaf);
        assert_eq!(
            rig.read(&*layer, 0).ok(),
            Some(0xa0),
            "{kind:?}: a write acknowledged before a FLUSH was lost with it"
        );
    }
}

#[test]
fn a_flush_waits_for_the_data_of_writes_in_its_epoch() {
    let rig = Rig::new();
    for kind in KINDS {
        let (leaf, layer) = fresh(kind, &rig);
        rig.write(&*layer, 3, 0x30);
        rig.flush(&*layer);
        // A write whose data write is in flight when a FLUSH arrives.
        let at = kind.data_at(&*layer, 3);
        leaf.arm(at..at + 1, Action::Hold);
        let data = vec![0x31u8; BLOCK as usize];
        let write = layer.write_bytes(&rig.ctx, 3 * BLOCK, &data);
        let image = crash_when_flush_acks(&rig, &leaf, &*layer, write, 1);
        drop(layer);
        let leaf = TestLeaf::new(image);
        let layer = kind.open(&rig.ctx, &rig.exec, &leaf);
        let got = rig.read(&*layer, 3);
        assert!(
            matches!(got, Ok(0x30 | 0x31)),
            "{kind:?}: the block reads {got:?} after a crash"
        );
    }
}

/// Older formats are refused before anything is written: version 1 (the
/// table without flush epochs) and, for `checksum` and `crypt`, version 2
/// (the flat table that cannot grow).
#[test]
fn older_devices_are_refused_naming_both_versions() {
    let rig = Rig::new();
    for (name, old, now) in [
        ("checksum", 1, 3),
        ("checksum", 2, 3),
        ("crypt", 1, 3),
        ("crypt", 2, 3),
        ("compress", 1, 3),
    ] {
        let mut image = vec![0u8; LEAF as usize];
        let sb = Superblock {
            layer_type: name.into(),
            version: old,
            block_size: BLOCK as u32,
            uuid: [3; 16],
            size: LEAF / 2,
            params: b"crc32".to_vec(),
        };
        image[..4096].copy_from_slice(&sb.encode());
        // An old table page right behind it (entries of block 0).
        image[4096..4104].copy_from_slice(&[1, 2, 3, 4, 0, 0, 0, 0]);
        let leaf = TestLeaf::new(image.clone());
        let lower: Arc<dyn Layer> = leaf.clone();
        let ctx = &rig.ctx;
        let err = rig.exec.block_on(ctx, async {
            match name {
                "checksum" => Checksum::open(ctx, lower, BLOCK as u32).await.err(),
                "crypt" => Crypt::open(ctx, lower, BLOCK as u32, &KEY).await.err(),
                _ => Compress::open(ctx, lower, BLOCK as u32, "lz4", None)
                    .await
                    .err(),
            }
        });
        let err = err.unwrap_or_else(|| panic!("{name}: a version {old} device was opened"));
        let want =
            format!("formatted with {name} format version {old}; this build reads version {now}: ");
        assert!(err.contains(&want), "{name}: {err}");
        assert!(leaf.live_image() == image, "{name}: the device was written");
    }
}
