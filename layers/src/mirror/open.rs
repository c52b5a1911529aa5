//! Opening a mirror: read every leg's superblock and state records, refuse legs
//! that belong elsewhere (before writing anything), take the newest state,
//! format blank legs, and copy the regions a crash left dirty.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize};
use std::sync::{Arc, Mutex};

use super::bitmap::WriteIntent;
use super::state::{
    exposed_size, hex, region_bytes_for, Health, LegParams, Record, FORMAT_VERSION, MAX_LEGS,
    MAX_REGIONS, RECORD_AT, RECORD_BYTES, SUPERBLOCK_AT,
};
use super::{policy_code, Leg, Mirror, ScrubReport, REGION_LOCKS, STEP_BYTES};
use crate::async_lock::{AsyncLock, SharedLock};
use crate::exec::IoCtx;
use crate::plan::ReadPolicy;
use crate::superblock::{self, Superblock, SUPERBLOCK_BYTES};
use crate::Layer;

/// What open found on one leg.
pub(super) enum Found {
    /// An all-zero superblock: a new or replaced leg.
    Blank,
    /// A leg of this mirror, with its valid records.
    Member {
        uuid: [u8; 16],
        params: LegParams,
        records: Vec<Record>,
        /// The size in its superblock: the mirror's size when formatted.
        formatted: u64,
    },
    /// The leg cannot be read at all: it counts as failed.
    Unreadable(String),
}

impl Mirror {
    /// Open (formatting all-zero legs) the mirror over `legs`.
    pub async fn open(
        ctx: &IoCtx,
        legs: Vec<Arc<dyn Layer>>,
        read_policy: ReadPolicy,
        block_size: u32,
    ) -> Result<Mirror, String> {
        if legs.is_empty() || legs.len() > MAX_LEGS {
            return Err(format!(
                "a mirror has 1 to {MAX_LEGS} legs, not {}",
                legs.len()
            ));
        }
        let leg_size = legs[0].size();
        if legs.iter().any(|l| l.size() != leg_size) {
            let sizes: Vec<String> = legs.iter().map(|l| l.size().to_string()).collect();
            return Err(format!("legs differ in size ({} bytes)", sizes.join(", ")));
        }
        let size = exposed_size(leg_size, block_size);
        if size == 0 {
            return Err(format!("the legs ({leg_size} bytes) are too small"));
        }
        // Everything is read and checked before anything is written.
        let mut found = Vec::with_capacity(legs.len());
        for (i, leg) in legs.iter().enumerate() {
            found.push(inspect(ctx, &**leg, i, block_size, size).await?);
        }
        check_members(&found, legs.len())?;
        let member = found.iter().find_map(|f| match f {
            Found::Member { uuid, params, .. } => Some((*uuid, params.region_bytes)),
            _ => None,
        });
        let Some((uuid, region_bytes)) = member else {
            return format(ctx, legs, read_policy, block_size, size, &found).await;
        };
        let (mut newest, recorded) = found
            .iter()
            .filter_map(|f| match f {
                Found::Member {
                    records, formatted, ..
                } => records
                    .iter()
                    .max_by_key(|r| r.generation)
                    .map(|r| (r, r.size_or(*formatted))),
                _ => None,
            })
            .filter(|(r, recorded)| {
                r.health.len() == legs.len()
                    && r.dirty.len() as u64 == recorded.div_ceil(region_bytes)
            })
            .max_by_key(|(r, _)| r.generation)
            .map(|(r, recorded)| (r.clone(), recorded))
            .ok_or(
                "no leg holds a readable mirror state; refusing to guess which leg is current",
            )?;
        let grown = grown_at_open(&mut newest, recorded, size, region_bytes)?;
        let mirror = Mirror::build(
            legs,
            read_policy,
            block_size,
            size,
            uuid,
            region_bytes,
            &newest,
        );
        mirror
            .recover(ctx, &found, region_bytes, &newest, grown)
            .await
            .map(|()| mirror)
    }

    fn build(
        legs: Vec<Arc<dyn Layer>>,
        read_policy: ReadPolicy,
        block_size: u32,
        size: u64,
        uuid: [u8; 16],
        region_bytes: u64,
        record: &Record,
    ) -> Mirror {
        Mirror {
            legs: legs
                .into_iter()
                .zip(&record.health)
                .map(|(layer, health)| Leg {
                    layer,
                    health: AtomicU8::new(health.code()),
                    recorded: AtomicU8::new(health.code()),
                    pending: AtomicUsize::new(0),
                    consecutive_read_errors: AtomicU32::new(0),
                    read_errors: AtomicU64::new(0),
                    write_errors: AtomicU64::new(0),
                    repaired: AtomicU64::new(0),
                })
                .collect(),
            size: AtomicU64::new(size),
            block_size,
            uuid,
            read_policy: AtomicU8::new(policy_code(read_policy)),
            next: AtomicUsize::new(0),
            regions: (0..REGION_LOCKS).map(|_| SharedLock::default()).collect(),
            turnstiles: (0..REGION_LOCKS).map(|_| AsyncLock::default()).collect(),
            meta_lock: AsyncLock::default(),
            generation: AtomicU64::new(record.generation),
            intent: Mutex::new(WriteIntent::new(region_bytes, record.dirty.clone())),
            resync_lock: AsyncLock::default(),
            resync_at: AtomicU64::new(0),
            resync_unreadable: AtomicU64::new(0),
            resync_all: AtomicBool::new(true),
            resync_bytes: AtomicU64::new(0),
            resync_pass_bytes: AtomicU64::new(0),
            all_ok_generation: AtomicU64::new(record.generation),
        }
    }

    /// After a restart: blank and unreadable legs become failed members, and the
    /// regions a crash left dirty are copied from the first ok leg that reads
    /// them to the other ok legs. Then the state is written once.
    async fn recover(
        &self,
        ctx: &IoCtx,
        found: &[Found],
        region_bytes: u64,
        newest: &Record,
        grown: bool,
    ) -> Result<(), String> {
        // A mirror grown at open records its new size now.
        let mut changed = grown;
        for (i, f) in found.iter().enumerate() {
            match f {
                Found::Member { .. } => {}
                Found::Blank => {
                    tracing::warn!(
                        leg = i,
                        "mirror: leg is blank; it joins as failed (re-add it to rebuild)"
                    );
                    let sb = leg_superblock(
                        self.uuid,
                        i,
                        self.legs.len(),
                        region_bytes,
                        self.block_size,
                        self.bytes(),
                    );
                    if let Err(e) = superblock::write(ctx, &*self.legs[i].layer, &sb).await {
                        tracing::error!(
                            leg = i,
                            "mirror: cannot write the superblock of a blank leg: {e}"
                        );
                    }
                    changed |= self.health_of(i) != Health::Failed;
                    self.set_health(i, Health::Failed);
                }
                Found::Unreadable(e) => {
                    tracing::error!(leg = i, "mirror: leg cannot be read ({e}); it is failed");
                    changed |= self.health_of(i) != Health::Failed;
                    self.set_health(i, Health::Failed);
                }
            }
        }
        let dirty: Vec<usize> = (0..newest.dirty.len())
            .filter(|&r| newest.dirty[r])
            .collect();
        if !dirty.is_empty() {
            let sources = self.ok_legs();
            if sources.len() > 1 {
                tracing::info!(
                    regions = dirty.len(),
                    "mirror: resyncing the regions left dirty by a crash"
                );
                let mut report = ScrubReport::default();
                for r in dirty {
                    let start = r as u64 * region_bytes;
                    let end = (start + region_bytes).min(self.bytes());
                    let mut at = start;
                    while at < end {
                        let len = STEP_BYTES.min(end - at);
                        report.add(&self.scrub_range(ctx, at, len).await?);
                        at += len;
                    }
                }
                tracing::info!(?report, "mirror: crash resync done");
                let mut failed = Vec::new();
                for &i in &sources {
                    if let Err(e) = self.legs[i].layer.flush(ctx).await {
                        tracing::error!(
                            leg = i,
                            "mirror: flush after the crash resync failed: {e}"
                        );
                        failed.push(i);
                    }
                }
                for i in failed {
                    self.set_health(i, Health::Failed);
                }
            }
            // While a leg is failed or rebuilding the bits say what it
            // missed: they stay for its rebuild.
            if self.all_legs_ok() {
                self.intent
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clear_all();
                changed = true;
            }
        }
        if changed {
            let _meta = self.meta_lock.lock().await;
            self.persist_locked(ctx, &self.dirty_snapshot())
                .await
                .map_err(|e| format!("cannot record the mirror state on any leg: {e}"))?;
        }
        Ok(())
    }
}

pub(super) fn leg_superblock(
    uuid: [u8; 16],
    index: usize,
    legs: usize,
    region_bytes: u64,
    block_size: u32,
    size: u64,
) -> Superblock {
    Superblock {
        layer_type: "mirror".into(),
        version: FORMAT_VERSION,
        block_size,
        uuid,
        size,
        params: LegParams {
            index: index as u16,
            legs: legs as u16,
            region_bytes,
        }
        .encode(),
    }
}

/// Read leg `index`'s superblock and records. Errors refuse the whole mirror.
pub(super) async fn inspect(
    ctx: &IoCtx,
    leg: &dyn Layer,
    index: usize,
    block_size: u32,
    size: u64,
) -> Result<Found, String> {
    let mut block = vec![0u8; SUPERBLOCK_BYTES as usize];
    if let Err(e) = leg.read_bytes(ctx, SUPERBLOCK_AT, &mut block).await {
        return Ok(Found::Unreadable(e.to_string()));
    }
    let Some(sb) = Superblock::decode(&block).map_err(|e| format!("leg {index}: {e}"))? else {
        return Ok(Found::Blank);
    };
    sb.expect("mirror", FORMAT_VERSION, block_size)
        .map_err(|e| format!("leg {index}: {e}"))?;
    let params = LegParams::decode(&sb.params).map_err(|e| format!("leg {index}: {e}"))?;
    if sb.size > size {
        return Err(format!(
            "leg {index}: formatted for {} bytes but the legs now give {size}; a leg shrank, \
             and shrinking a mirror is not supported",
            sb.size
        ));
    }
    if sb.size.div_ceil(params.region_bytes) > MAX_REGIONS {
        return Err(format!("leg {index}: the mirror parameters are damaged"));
    }
    let mut records = Vec::with_capacity(2);
    let mut slot = vec![0u8; RECORD_BYTES];
    for s in 0..2u64 {
        // A slot torn under a checksummed leg reads as an error: it is just
        // not a record, and must not hide its twin.
        if leg
            .read_bytes(ctx, RECORD_AT + s * RECORD_BYTES as u64, &mut slot)
            .await
            .is_ok()
        {
            records.extend(Record::decode(&slot));
        }
    }
    Ok(Found::Member {
        uuid: sb.uuid,
        params,
        records,
        formatted: sb.size,
    })
}

/// The legs give `size` bytes and the newest record says `recorded`: legs
/// grown while the device was down (a bigger `size` of created files, a grown
/// disk) grow the mirror. The new regions are marked dirty, since nothing says
/// the legs agree there (a grown disk holds whatever it held): the crash
/// resync of `recover` makes them equal, and the record with the new size is
/// written then. Returns whether it grew.
fn grown_at_open(
    newest: &mut Record,
    recorded: u64,
    size: u64,
    region_bytes: u64,
) -> Result<bool, String> {
    if recorded > size {
        return Err(format!(
            "the mirror is {recorded} bytes but the legs now give only {size}; a leg shrank, \
             and shrinking a mirror is not supported"
        ));
    }
    if recorded == size {
        return Ok(false);
    }
    let regions = size.div_ceil(region_bytes);
    if regions > MAX_REGIONS {
        return Err(too_many_regions(recorded, size, region_bytes));
    }
    tracing::info!(from = recorded, to = size, "mirror: the legs grew; growing");
    newest.dirty.resize(regions as usize, true);
    // The region that held the old end now reaches past it too.
    if let Some(last) = newest.dirty.get_mut((recorded / region_bytes) as usize) {
        *last = true;
    }
    Ok(true)
}

/// Why a mirror cannot grow past what its write-intent bitmap covers.
pub(super) fn too_many_regions(from: u64, to: u64, region_bytes: u64) -> String {
    format!(
        "a mirror formatted at {from} bytes has {} KiB write-intent regions and grows to at \
         most {} bytes ({MAX_REGIONS} regions), not {to}",
        region_bytes >> 10,
        MAX_REGIONS * region_bytes
    )
}

/// Every member must be this mirror's leg at its own position.
fn check_members(found: &[Found], legs: usize) -> Result<(), String> {
    let mut first: Option<(usize, [u8; 16], u64)> = None;
    for (i, f) in found.iter().enumerate() {
        let Found::Member { uuid, params, .. } = f else {
            continue;
        };
        if usize::from(params.legs) != legs {
            return Err(format!(
                "leg {i} was formatted as one of {} legs, but the config lists {legs}",
                params.legs
            ));
        }
        if usize::from(params.index) != i {
            return Err(format!(
                "leg {i} holds leg {} of this mirror: the legs are listed in another order \
                 than when the mirror was formatted",
                params.index
            ));
        }
        match first {
            None => first = Some((i, *uuid, params.region_bytes)),
            Some((j, other, _)) if other != *uuid => {
                return Err(format!(
                    "leg {i} belongs to another mirror (uuid {}) than leg {j} (uuid {}); \
                     refusing to mix them",
                    hex(uuid),
                    hex(&other)
                ))
            }
            Some((j, _, region)) if region != params.region_bytes => {
                return Err(format!(
                    "leg {i} and leg {j} disagree on the region size; the superblock is damaged"
                ))
            }
            Some(_) => {}
        }
    }
    if first.is_none() {
        if let Some(i) = found.iter().position(|f| matches!(f, Found::Unreadable(_))) {
            return Err(format!(
                "leg {i} cannot be read; refusing to format a new mirror over it"
            ));
        }
    }
    Ok(())
}

/// Every leg is blank: a new mirror. Records first, then the superblocks (each
/// written and flushed), so a crash while formatting leaves blank legs.
async fn format(
    ctx: &IoCtx,
    legs: Vec<Arc<dyn Layer>>,
    read_policy: ReadPolicy,
    block_size: u32,
    size: u64,
    found: &[Found],
) -> Result<Mirror, String> {
    debug_assert!(found.iter().all(|f| matches!(f, Found::Blank)));
    let uuid = superblock::random_bytes();
    let region_bytes = region_bytes_for(size);
    let record = Record {
        generation: 1,
        health: vec![Health::Ok; legs.len()],
        dirty: vec![false; size.div_ceil(region_bytes) as usize],
        size,
    };
    let bytes = record.encode();
    for (i, leg) in legs.iter().enumerate() {
        let at = RECORD_AT + record.slot() * RECORD_BYTES as u64;
        let sb = leg_superblock(uuid, i, legs.len(), region_bytes, block_size, size);
        let res = match leg.write_bytes(ctx, at, &bytes).await {
            Ok(()) => superblock::write(ctx, &**leg, &sb).await,
            Err(e) => Err(e),
        };
        res.map_err(|e| format!("leg {i}: cannot format: {e}"))?;
    }
    Ok(Mirror::build(
        legs,
        read_policy,
        block_size,
        size,
        uuid,
        region_bytes,
        &record,
    ))
}
