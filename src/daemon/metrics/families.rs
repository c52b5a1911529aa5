//! The families of one scrape, built from the typed data `status` reports:
//! the layers' counters, histograms and reports ([`NodeStatus`]), the reload
//! record and the front end's connections, each under its [`Def`] of the
//! catalog.

use std::collections::HashMap;

use layers::compile::NodeStatus;
use layers::report::{LegHealth, MirrorReport};
use layers::{LayerReport, Op, EXPORT_BOUNDS_NS};

use super::catalog::*;
use super::render::{Family, Labels, Value};
use crate::daemon::front_end::ConnectionCounts;
use crate::daemon::reload::{ReloadSummary, Verdict};

/// What one scrape reports, read from the running daemon.
pub struct Snapshot {
    pub device: String,
    pub path: String,
    pub size: u64,
    pub block_size: u32,
    pub queues: u16,
    /// Every layer from the top down, as `status` lists them.
    pub layers: Vec<NodeStatus>,
    pub generation: u64,
    pub last_reload: Option<ReloadSummary>,
    /// The NBD front end's connections; `None` under ublk.
    pub connections: Option<ConnectionCounts>,
}

/// The families of the catalog, filled as samples are added.
struct Families {
    list: Vec<Family>,
    index: HashMap<&'static str, usize>,
}

impl Families {
    fn new() -> Families {
        Families {
            list: CATALOG
                .iter()
                .map(|d| Family::new(d.kind, d.name, d.help))
                .collect(),
            index: CATALOG
                .iter()
                .enumerate()
                .map(|(i, d)| (d.name, i))
                .collect(),
        }
    }

    fn family(&mut self, def: &Def, labels: &Labels) -> &mut Family {
        debug_assert!(
            labels
                .iter()
                .map(|(k, _)| *k)
                .eq(def.labels.iter().copied()),
            "{}: labels {labels:?}",
            def.name
        );
        &mut self.list[self.index[def.name]]
    }

    fn int(&mut self, def: &Def, labels: Labels, value: u64) {
        self.family(def, &labels).push(labels, Value::Int(value));
    }

    fn float(&mut self, def: &Def, labels: Labels, value: f64) {
        self.family(def, &labels).push(labels, Value::Float(value));
    }

    /// One sample per state, 1 for the one that holds.
    fn states(
        &mut self,
        def: &Def,
        labels: &Labels,
        key: &'static str,
        all: &[&str],
        on: Option<&str>,
    ) {
        for &state in all {
            let mut labels = labels.clone();
            labels.push((key, state.to_string()));
            self.int(def, labels, u64::from(on == Some(state)));
        }
    }
}

fn with(labels: &Labels, more: &[(&'static str, &str)]) -> Labels {
    let mut out = labels.clone();
    out.extend(more.iter().map(|&(k, v)| (k, v.to_string())));
    out
}

/// The exported families of `snapshot`, in catalog order.
pub fn collect(snapshot: &Snapshot) -> Vec<Family> {
    let mut out = Families::new();
    let device: Labels = vec![("device", snapshot.device.clone())];
    out.int(
        &BUILD,
        with(
            &device,
            &[
                ("version", env!("CARGO_PKG_VERSION")),
                ("commit", env!("UBLK_STACK_COMMIT")),
            ],
        ),
        1,
    );
    out.int(&DEVICE, with(&device, &[("path", &snapshot.path)]), 1);
    out.int(&DEVICE_SIZE, device.clone(), snapshot.size);
    out.int(&BLOCK_SIZE, device.clone(), u64::from(snapshot.block_size));
    out.int(&QUEUES, device.clone(), u64::from(snapshot.queues));
    out.int(&GENERATION, device.clone(), snapshot.generation);
    let last = snapshot.last_reload.as_ref();
    let verdicts = [
        Verdict::Applied,
        Verdict::Unchanged,
        Verdict::Refused,
        Verdict::Failed,
    ]
    .map(Verdict::as_str);
    let result = last.map(|l| l.result.as_str());
    out.states(&RELOAD_RESULT, &device, "result", &verdicts, result);
    out.int(&RELOAD_TIME, device.clone(), last.map_or(0, |l| l.time));
    out.float(&RELOAD_TOOK, device.clone(), last.map_or(0.0, |l| l.took_s));

    // The layer above each one: the last layer seen one level up.
    let mut above: Vec<&str> = Vec::new();
    for (i, node) in snapshot.layers.iter().enumerate() {
        above.truncate(node.depth);
        let parent = above.last().copied().unwrap_or("");
        above.push(&node.name);
        let layer = with(&device, &[("layer", &node.name)]);
        let typed = with(&layer, &[("type", node.report.type_name())]);
        out.int(&LAYER, with(&typed, &[("parent", parent)]), 1);
        out.int(&LAYER_SIZE, typed.clone(), node.size);
        layer_requests(&mut out, node, &typed);
        let children = snapshot.layers[i + 1..]
            .iter()
            .take_while(|n| n.depth > node.depth)
            .filter(|n| n.depth == node.depth + 1)
            .map(|n| n.name.as_str());
        layer_report(&mut out, node, &layer, children.collect());
    }

    if let Some(c) = snapshot.connections {
        out.int(&NBD_CONNECTIONS, device.clone(), c.open);
        out.int(&NBD_ACCEPTED, device.clone(), c.accepted);
        out.int(&NBD_REFUSED, device, c.refused);
    }
    out.list
}

/// A layer's counters and latency histograms, per op.
fn layer_requests(out: &mut Families, node: &NodeStatus, typed: &Labels) {
    let bounds = EXPORT_BOUNDS_NS.map(|ns| ns as f64 / 1e9);
    for (i, op) in Op::ALL.into_iter().enumerate() {
        let labels = with(typed, &[("op", op.as_str())]);
        let counts = node.stats.of(op);
        out.int(&LAYER_OPS, labels.clone(), counts.ops);
        if op != Op::Flush {
            out.int(&LAYER_BYTES, labels.clone(), counts.bytes);
        }
        out.int(&LAYER_ERRORS, labels.clone(), counts.errors);
        if let Some(h) = node.histograms.get(i) {
            out.family(&LAYER_LATENCY, &labels).push_histogram(
                &labels,
                &bounds,
                &h.cumulative,
                h.count,
                h.sum_ns as f64 / 1e9,
            );
        }
    }
}

/// What the layer's type reports. `children`: the layers right below it, in
/// order (a mirror's legs).
fn layer_report(out: &mut Families, node: &NodeStatus, layer: &Labels, children: Vec<&str>) {
    let l = || layer.clone();
    match &node.report {
        LayerReport::File(leaf) | LayerReport::Disk(leaf) => {
            if let Some(copies) = leaf.misaligned_copies {
                out.int(&LEAF_MISALIGNED, l(), copies);
            }
        }
        LayerReport::Memory(_) | LayerReport::Null(_) | LayerReport::Raid0(_) => {}
        LayerReport::Mirror(m) => mirror(out, m, node.size, layer, &children),
        LayerReport::Cache(c) => {
            out.int(&CACHE_HITS, l(), c.hits);
            out.int(&CACHE_MISSES, l(), c.misses);
            out.int(&CACHE_EVICTIONS, l(), c.evictions);
            out.int(&CACHE_WRITE_BACK_ERRORS, l(), c.write_back_errors);
            out.int(&CACHE_DIRTY, l(), c.dirty_bytes);
            out.int(&CACHE_CACHED, l(), c.cached_bytes);
            out.int(&CACHE_CAPACITY, l(), c.capacity_bytes);
            let modes = ["write-through", "write-back"];
            out.states(&CACHE_MODE, layer, "mode", &modes, Some(c.mode.as_str()));
        }
        LayerReport::Compress(c) => {
            out.int(&COMPRESS_LOGICAL, l(), c.logical_bytes);
            out.int(&COMPRESS_STORED, l(), c.stored_bytes);
            out.int(&COMPRESS_FREE, l(), c.free_bytes);
            out.int(&COMPRESS_DATA_AREA, l(), c.data_area_bytes);
            out.int(&COMPRESS_CORRUPT_READS, l(), c.corrupt_reads);
            out.int(&COMPRESS_NO_SPACE, l(), c.no_space);
            out.int(&COMPRESS_DAMAGED, l(), c.damaged_entries);
        }
        LayerReport::Crypt(c) => out.int(&CRYPT_AUTH_FAILURES, l(), c.auth_failures),
        LayerReport::Checksum(c) => out.int(&CHECKSUM_MISMATCHES, l(), c.mismatches),
        LayerReport::Fault(f) => {
            out.int(&FAULT_INJECTED, l(), f.injected_errors);
            out.float(&FAULT_READ_RATE, l(), f.read_error_rate);
            out.float(&FAULT_WRITE_RATE, l(), f.write_error_rate);
            out.float(&FAULT_DELAY, l(), f.delay_us as f64 / 1e6);
        }
        LayerReport::Nbd(n) => {
            out.int(&NBD_LEAF_CONNECTIONS, l(), n.connections);
            out.int(&NBD_LEAF_CONNECTED, l(), u64::from(n.connected));
        }
    }
}

fn mirror(out: &mut Families, m: &MirrorReport, size: u64, layer: &Labels, legs: &[&str]) {
    let states = [LegHealth::Ok, LegHealth::Failed, LegHealth::Rebuilding].map(LegHealth::as_str);
    for (i, leg) in m.legs.iter().enumerate() {
        let index = i.to_string();
        let name = legs.get(i).copied().unwrap_or("");
        let labels = with(layer, &[("leg", &index), ("leg_layer", name)]);
        out.states(
            &MIRROR_LEG_STATE,
            &labels,
            "state",
            &states,
            Some(leg.health.as_str()),
        );
        out.int(&MIRROR_LEG_READ_ERRORS, labels.clone(), leg.read_errors);
        out.int(&MIRROR_LEG_WRITE_ERRORS, labels.clone(), leg.write_errors);
        out.int(&MIRROR_LEG_REPAIRED, labels, leg.repaired);
    }
    let l = || layer.clone();
    out.int(&MIRROR_DIRTY_REGIONS, l(), m.dirty_regions);
    out.int(&MIRROR_REGIONS, l(), m.regions);
    let rebuilding = m.resync_position_bytes.is_some();
    out.int(
        &MIRROR_RESYNC_DONE,
        l(),
        m.resync_position_bytes.unwrap_or(0),
    );
    out.int(&MIRROR_RESYNC_TOTAL, l(), if rebuilding { size } else { 0 });
    out.int(&MIRROR_RESYNC_COPIED, l(), m.resync_bytes);
    out.int(&MIRROR_RESYNC_UNREADABLE, l(), m.resync_unreadable_blocks);
}
