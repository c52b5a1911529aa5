//! The size each layer exposes, measured against the leaves as they are now.
//! Reads metadata only (stat, and a read-only open of block devices): it never
//! creates, truncates or writes a leaf, so `validate` is safe on live files.

use std::fs::{self, File};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use layers::plan::{FileParams, LayerId, LayerPlan, LayerSpec, Plan};

use super::error::{ConfigError, ConfigErrors};
use super::schema::{KeyName, LayerKey};
use super::shown;
use super::size::{format_exact, format_human};

/// A size problem in one layer, pointed at the key to fix.
#[derive(Clone, Debug)]
pub struct SizeProblem {
    pub layer: LayerId,
    pub key: Option<LayerKey>,
    pub message: String,
}

/// The exposed size in bytes of every layer of `plan` (indexed like
/// `plan.layers`). Errors name the layer but carry no file position; use
/// [`super::check_file`] to get positions.
pub fn exposed_sizes(plan: &Plan) -> Result<Vec<u64>, ConfigErrors> {
    measure(plan).map_err(|problems| {
        ConfigErrors(
            problems
                .into_iter()
                .map(|problem| ConfigError {
                    file: String::new(),
                    position: None,
                    layer: Some(plan.layers[problem.layer].name.clone()),
                    message: problem.message,
                })
                .collect(),
        )
    })
}

/// The size a layer exposes given the size of the layer below it.
///
/// Layers that keep metadata on their lower device expose less than it; the
/// layers crate owns those formats and says how much.
pub fn exposed_over(spec: &LayerSpec, lower_bytes: u64, block_size: u64) -> u64 {
    let block_size = block_size as u32;
    match spec {
        LayerSpec::Compress(params) => {
            layers::compress::exposed_size(lower_bytes, block_size, params.size_bytes)
        }
        LayerSpec::Checksum(_) => layers::checksum::exposed_size(lower_bytes, block_size),
        LayerSpec::Mirror(_) => layers::mirror::exposed_size(lower_bytes, block_size),
        LayerSpec::Crypt(_) => layers::crypt::exposed_size(lower_bytes, block_size),
        _ => lower_bytes,
    }
}

/// Sizes of every layer of a valid plan.
pub(crate) fn measure(plan: &Plan) -> Result<Vec<u64>, Vec<SizeProblem>> {
    let layers: Vec<Option<&LayerPlan>> = plan.layers.iter().map(Some).collect();
    let (sizes, problems) = measure_layers(&layers, u64::from(plan.device.block_size));
    if problems.is_empty() {
        // Every layer of a valid plan is measured once its leaves are fine.
        Ok(sizes.into_iter().map(|size| size.unwrap_or(0)).collect())
    } else {
        Err(problems)
    }
}

/// Measures every layer that could be measured, also in a file with other
/// mistakes: `None` entries are layers that failed validation, and references
/// may dangle or loop. Layers above an unmeasurable one stay `None` silently,
/// since the cause was reported already.
pub(crate) fn measure_layers(
    layers: &[Option<&LayerPlan>],
    block_size: u64,
) -> (Vec<Option<u64>>, Vec<SizeProblem>) {
    #[derive(Clone, Copy, PartialEq)]
    enum State {
        New,
        Open,
        Done,
    }
    let mut state = vec![State::New; layers.len()];
    let mut sizes: Vec<Option<u64>> = vec![None; layers.len()];
    let mut problems = Vec::new();
    // Post-order with an explicit stack: children are measured before their
    // parent, and a cycle (an `Open` child) just leaves the parent unmeasured.
    for root in 0..layers.len() {
        let mut stack = vec![(root, false)];
        while let Some((id, children_done)) = stack.pop() {
            if children_done {
                sizes[id] = layer_size(layers, id, &sizes, block_size, &mut problems);
                state[id] = State::Done;
                continue;
            }
            if state[id] != State::New {
                continue;
            }
            state[id] = State::Open;
            stack.push((id, true));
            let children = layers[id]
                .map(|layer| layer.spec.children())
                .unwrap_or_default();
            for child in children {
                if state.get(child) == Some(&State::New) {
                    stack.push((child, false));
                }
            }
        }
    }
    (sizes, problems)
}

fn layer_size(
    layers: &[Option<&LayerPlan>],
    id: LayerId,
    sizes: &[Option<u64>],
    block_size: u64,
    problems: &mut Vec<SizeProblem>,
) -> Option<u64> {
    let spec = &layers[id]?.spec;
    let mut report = |key: Option<LayerKey>, message: String| {
        problems.push(SizeProblem {
            layer: id,
            key,
            message,
        });
    };
    // Leaves are checked even when the rest of the file is broken.
    let children: Option<Vec<u64>> = spec
        .children()
        .iter()
        .map(|&child| sizes.get(child).copied().flatten())
        .collect();
    match spec {
        LayerSpec::File(params) => file_size(params, block_size, &mut report),
        LayerSpec::Disk(params) => disk_size(&params.path, block_size, &mut report),
        LayerSpec::Memory { size_bytes } | LayerSpec::Null { size_bytes } => Some(*size_bytes),
        LayerSpec::Raid0(params) => {
            let children = children?;
            let names = child_names(layers, &params.stripes);
            equal_sizes(&names, &children, LayerKey::Stripes, "raid0", &mut report).and_then(
                |stripe| raid0_size(stripe, params.chunk_bytes, children.len(), &mut report),
            )
        }
        LayerSpec::Mirror(params) => {
            let children = children?;
            let names = child_names(layers, &params.legs);
            equal_sizes(&names, &children, LayerKey::Legs, "mirror", &mut report)
                .and_then(|leg| not_empty(spec, leg, block_size, &mut report))
        }
        LayerSpec::Fault(params) => {
            let lower = children?.first().copied()?;
            match params.knobs.range {
                Some((_, end)) if end > lower => {
                    report(
                        Some(LayerKey::Range),
                        format!(
                            "range ends at {} but the layer below is only {} ({lower} bytes)",
                            format_exact(end),
                            format_human(lower)
                        ),
                    );
                    None
                }
                _ => Some(exposed_over(spec, lower, block_size)),
            }
        }
        LayerSpec::Compress(params) => {
            let lower = children?.first().copied()?;
            let fits =
                layers::compress::open_footprint(lower, block_size as u32, params.size_bytes);
            if let Err(reason) = fits {
                let key = params.size_bytes.map(|_| LayerKey::Size);
                report(key, reason);
                return None;
            }
            not_empty(spec, lower, block_size, &mut report)
        }
        LayerSpec::Crypt(_) | LayerSpec::Checksum(_) => {
            let lower = children?.first().copied()?;
            not_empty(spec, lower, block_size, &mut report)
        }
        LayerSpec::Cache(_) => children?.first().copied(),
    }
}

/// The size of a layer that keeps metadata below; a layer below too small for
/// that metadata and one block would expose nothing, which `up` refuses.
fn not_empty(
    spec: &LayerSpec,
    lower: u64,
    block_size: u64,
    report: &mut impl FnMut(Option<LayerKey>, String),
) -> Option<u64> {
    let size = exposed_over(spec, lower, block_size);
    if size == 0 {
        report(
            Some(LayerKey::Over),
            format!(
                "the layer below ({}, {lower} bytes) is too small to hold this {} layer's \
                 metadata and one block: it would expose 0 bytes",
                format_human(lower),
                spec.type_name()
            ),
        );
        return None;
    }
    Some(size)
}

fn child_names<'p>(layers: &[Option<&'p LayerPlan>], ids: &[LayerId]) -> Vec<&'p str> {
    ids.iter()
        .map(|&id| {
            layers
                .get(id)
                .copied()
                .flatten()
                .map_or("?", |layer| layer.name.as_str())
        })
        .collect()
}

fn file_size(
    params: &FileParams,
    block_size: u64,
    report: &mut impl FnMut(Option<LayerKey>, String),
) -> Option<u64> {
    let path = shown(&params.path);
    let metadata = match fs::metadata(&params.path) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            if params.create {
                // Created at `up`; validate itself never creates it.
                return params.size_bytes;
            }
            report(
                Some(LayerKey::Path),
                format!(
                    "file {path} does not exist; to have it created at up, set create = true and a size"
                ),
            );
            return None;
        }
        Err(error) => {
            report(
                Some(LayerKey::Path),
                format!("cannot look at file {path}: {error}"),
            );
            return None;
        }
    };
    let file_type = metadata.file_type();
    if file_type.is_block_device() {
        report(
            Some(LayerKey::Path),
            format!("{path} is a block device; use type = \"disk\" for block devices"),
        );
        return None;
    }
    if !file_type.is_file() {
        report(
            Some(LayerKey::Path),
            format!("{path} is not a regular file"),
        );
        return None;
    }
    let actual = metadata.len();
    if let Some(wanted) = params.size_bytes {
        if wanted != actual {
            report(
                Some(LayerKey::Size),
                format!(
                    "size is {} but the existing file {path} is {} ({actual} bytes); \
                     fix size, or move the file away to have a new one created",
                    format_exact(wanted),
                    format_human(actual)
                ),
            );
            return None;
        }
    }
    if actual == 0 {
        report(
            Some(LayerKey::Path),
            format!("file {path} is empty; give it a size (with create = true for a new file)"),
        );
        return None;
    }
    if actual % block_size != 0 {
        report(
            Some(LayerKey::Path),
            format!(
                "file {path} is {actual} bytes, not a multiple of the block size ({block_size} bytes)"
            ),
        );
        return None;
    }
    Some(actual)
}

fn disk_size(
    path: &Path,
    block_size: u64,
    report: &mut impl FnMut(Option<LayerKey>, String),
) -> Option<u64> {
    let shown = super::shown(path);
    let metadata = match fs::metadata(path) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            report(
                Some(LayerKey::Path),
                format!("block device {shown} does not exist"),
            );
            return None;
        }
        Err(error) => {
            report(
                Some(LayerKey::Path),
                format!("cannot look at {shown}: {error}"),
            );
            return None;
        }
    };
    if !metadata.file_type().is_block_device() {
        let what = if metadata.is_file() {
            "a regular file; use type = \"file\" for image files"
        } else {
            "not a block device"
        };
        report(Some(LayerKey::Path), format!("{shown} is {what}"));
        return None;
    }
    let bytes = match block_device_bytes(path) {
        Ok(bytes) => bytes,
        Err(error) => {
            report(
                Some(LayerKey::Path),
                format!("cannot open {shown} read-only to measure it: {error}"),
            );
            return None;
        }
    };
    if bytes == 0 {
        report(
            Some(LayerKey::Path),
            format!(
                "block device {shown} is empty (0 bytes); is its medium or backing file attached?"
            ),
        );
        return None;
    }
    // A partial last block cannot be addressed by the device above.
    let usable = bytes - bytes % block_size;
    if usable == 0 {
        report(
            Some(LayerKey::Path),
            format!("block device {shown} is smaller than one block ({bytes} bytes)"),
        );
        return None;
    }
    Some(usable)
}

/// The size of a block device. Seeking to the end of a block device reports
/// its size (the same value BLKGETSIZE64 gives), which keeps this crate free of
/// `unsafe`; the file is opened read-only and nothing is read or written.
fn block_device_bytes(path: &Path) -> io::Result<u64> {
    let mut device = File::open(path)?;
    device.seek(SeekFrom::End(0))
}

/// Legs or stripes must all be one size; returns it.
fn equal_sizes(
    names: &[&str],
    sizes: &[u64],
    key: LayerKey,
    type_name: &str,
    report: &mut impl FnMut(Option<LayerKey>, String),
) -> Option<u64> {
    let first = *sizes.first()?;
    if sizes.iter().all(|&size| size == first) {
        return Some(first);
    }
    let each: Vec<String> = names
        .iter()
        .zip(sizes)
        .map(|(name, &size)| format!("\"{name}\" is {} ({size} bytes)", format_human(size)))
        .collect();
    report(
        Some(key),
        format!(
            "{} differ in size: {}; a {type_name} needs {} of one size",
            key.as_str(),
            each.join(", "),
            key.as_str()
        ),
    );
    None
}

fn raid0_size(
    stripe_bytes: u64,
    chunk_bytes: u64,
    stripes: usize,
    report: &mut impl FnMut(Option<LayerKey>, String),
) -> Option<u64> {
    let chunks = stripe_bytes / chunk_bytes;
    if chunks == 0 {
        report(
            Some(LayerKey::Chunk),
            format!(
                "each stripe ({}) is smaller than one chunk ({}); use a smaller chunk or larger stripes",
                format_human(stripe_bytes),
                format_exact(chunk_bytes)
            ),
        );
        return None;
    }
    let total = u64::try_from(stripes)
        .ok()
        .and_then(|stripes| chunks.checked_mul(chunk_bytes)?.checked_mul(stripes));
    if total.is_none() {
        report(
            Some(LayerKey::Stripes),
            "the striped size is larger than 2^64 bytes".into(),
        );
    }
    total
}
