//! Units of a `compress` layer as its grow tests write them, and the
//! request they send while a grow runs; shared by `grow_compress` and
//! `grow_compress_size`.

// Each test binary uses a part of it.
#![allow(dead_code)]

use layers::exec::IoCtx;
use layers::report::{CompressReport, LayerReport};
use layers::rng::Rng;
use layers::{Error, Layer};

pub const UNIT: u64 = 32 * 1024;

/// Incompressible contents of unit `unit`: each takes a whole unit below.
pub fn contents(unit: u64) -> Vec<u8> {
    let mut out = vec![0u8; UNIT as usize];
    Rng::new(unit + 1).fill(&mut out);
    out
}

pub fn report(layer: &dyn Layer) -> CompressReport {
    match layer.report() {
        LayerReport::Compress(report) => report,
        other => panic!("not a compress report: {other:?}"),
    }
}

/// One request while a grow runs: read unit `unit` (which must hold
/// `contents(unit)` when `written`), write it again (running out of space
/// is allowed), and flush every fourth unit.
pub async fn busy_unit(
    layer: &dyn Layer,
    ctx: &IoCtx,
    unit: u64,
    written: bool,
    during: &str,
) -> Result<(), String> {
    let mut buf = vec![0u8; UNIT as usize];
    layer
        .read_bytes(ctx, unit * UNIT, &mut buf)
        .await
        .map_err(|e| format!("{e:?}"))?;
    if written {
        assert!(buf == contents(unit), "unit {unit} during the {during}");
    }
    match layer.write_bytes(ctx, unit * UNIT, &contents(unit)).await {
        Ok(()) | Err(Error::NoSpace) => {}
        Err(e) => return Err(format!("unit {unit}: {e:?}")),
    }
    if unit % 4 == 0 {
        layer.flush(ctx).await.map_err(|e| format!("{e:?}"))?;
    }
    Ok(())
}
