//! [`RawConfig`] → [`Plan`]: the version, `[device]`, `[log]`, every layer, and
//! the shape of the tree. Every problem is reported; a `Plan` is produced only
//! when there are none.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::path::Path;

use layers::plan::{DeviceParams, LayerPlan, LogLevel, Plan};

use super::error::{Problems, Span};
use super::fields::Reader;
use super::graph::{self, Node, Reference};
use super::layer::{self, LayerContext, LayerSpans};
use super::raw::{Part, RawConfig, RawLayer, Section, UnknownKey, Value};
use super::schema::{list, DeviceKey, KeyName, LayerKey, LogKey, TopKey};
use super::suggest::{closest, did_you_mean};

const DEFAULT_QUEUE_DEPTH: u16 = 128;
const DEFAULT_BLOCK_SIZE: u32 = 4096;
/// Default queues: one per CPU, but no more than this.
const MAX_DEFAULT_QUEUES: usize = 4;
/// ublk_drv allocates device ids below 2^20 (its minor number space).
const MAX_DEVICE_ID: i64 = (1 << 20) - 1;
const MAX_NAME_CHARS: usize = 32;

/// What validation found. Besides the plan (if the file is valid) it keeps each
/// layer that is valid on its own, so the disk checks can run on those too and
/// a file's mistakes are all reported in one go.
#[derive(Clone, Debug)]
pub struct Validated {
    /// `Some` only if no problem was reported.
    pub plan: Option<Plan>,
    /// Every layer in file order (so indexed like `plan.layers`), `None` where
    /// the layer has mistakes of its own; with where its keys are in the file.
    pub layers: Vec<Option<(LayerPlan, LayerSpans)>>,
    /// The device's block size, or 512 (the weakest alignment) when it is
    /// itself invalid, so that mistake does not cause misalignment errors.
    pub block_size: u32,
}

pub fn validate(raw: &RawConfig, base_dir: &Path, problems: &mut Problems) -> Option<Validated> {
    if !check_version(raw, problems) {
        // Another schema version may mean anything; more errors would mislead.
        return None;
    }
    for unknown in &raw.unknown {
        problems.at(&unknown.span, top_level_unknown(unknown));
    }
    let device = device_part(raw, problems);
    let log_level = match &raw.log {
        Part::Found(section) => log(section, problems),
        Part::Missing | Part::Broken => Some(LogLevel::Info),
    };
    let raw_layers = layer_tables(raw, problems);
    let nodes: Vec<Node> = raw_layers
        .iter()
        .map(|raw_layer| Node {
            name: raw_layer.name.clone(),
            header: raw_layer.section.span.clone(),
            references: layer::references(raw_layer),
        })
        .collect();
    let top = device.as_ref().and_then(|device| device.top.clone());
    graph::check(&nodes, top.as_ref(), problems);

    let index: HashMap<&str, usize> = raw_layers
        .iter()
        .enumerate()
        .map(|(id, raw_layer)| (raw_layer.name.as_str(), id))
        .collect();
    let block_size = device
        .as_ref()
        .map_or(DEFAULT_BLOCK_SIZE, |device| device.block_size);
    let context = LayerContext {
        index: &index,
        block_size: u64::from(block_size),
        base_dir,
    };
    let layers: Vec<Option<(LayerPlan, LayerSpans)>> = raw_layers
        .iter()
        .map(|raw_layer| {
            let (spec, spans) = layer::validate_layer(raw_layer, &context, problems)?;
            let plan = LayerPlan {
                name: raw_layer.name.clone(),
                spec,
            };
            Some((plan, spans))
        })
        .collect();
    super::chain::check(&layers, problems);

    let plan = if problems.is_empty() {
        assemble(device, log_level, &layers, &index)
    } else {
        None
    };
    Some(Validated {
        plan,
        layers,
        block_size,
    })
}

fn device_part(raw: &RawConfig, problems: &mut Problems) -> Option<Device> {
    match &raw.device {
        Part::Found(section) => {
            let misplaced: Vec<DeviceKey> = raw
                .unknown
                .iter()
                .filter_map(|unknown| DeviceKey::from_str(&unknown.name))
                .collect();
            Some(device(section, &misplaced, problems))
        }
        Part::Missing => {
            problems.at(
                &(0..0),
                "missing [device] table: it names the device and its top layer, like \
                 [device] name = \"disk0\" top = \"…\"",
            );
            None
        }
        Part::Broken => None,
    }
}

fn layer_tables<'r>(raw: &'r RawConfig, problems: &mut Problems) -> &'r [RawLayer] {
    match &raw.layers {
        Part::Found(layers) if !layers.is_empty() => layers,
        Part::Found(_) | Part::Missing if misplaced_layers(raw) => &[],
        Part::Found(_) | Part::Missing => {
            problems.at(
                &(0..0),
                "no layers: define at least one [layers.NAME] table, like \
                 [layers.disk0] type = \"memory\" size = \"1GiB\"",
            );
            &[]
        }
        Part::Broken => &[],
    }
}

/// Whether a top-level unknown key explains the missing layers: a table such
/// as `[cache]` or a misspelling such as `[layer.a]` (each already reported).
fn misplaced_layers(raw: &RawConfig) -> bool {
    raw.unknown.iter().any(|unknown| {
        unknown.is_table || closest(&unknown.name, [TopKey::Layers.as_str()]).is_some()
    })
}

/// The plan from parts that were each validated without a problem.
fn assemble(
    device: Option<Device>,
    log_level: Option<LogLevel>,
    layers: &[Option<(LayerPlan, LayerSpans)>],
    index: &HashMap<&str, usize>,
) -> Option<Plan> {
    let device = device?;
    let top = index.get(device.top?.name.as_str()).copied()?;
    let layers: Option<Vec<LayerPlan>> = layers
        .iter()
        .map(|layer| layer.as_ref().map(|(plan, _)| plan.clone()))
        .collect();
    Some(Plan {
        device: device.params?,
        log_level: log_level?,
        layers: layers?,
        top,
    })
}

/// `false` if the file declares a schema this build does not read.
fn check_version(raw: &RawConfig, problems: &mut Problems) -> bool {
    let Some(field) = &raw.version else {
        problems.at(
            &(0..0),
            "missing version = 1 (the schema version) at the top of the file",
        );
        return true;
    };
    match &field.item.value {
        Value::Integer(1) => true,
        Value::Integer(other) => {
            problems.at(
                &field.item.span,
                format!("unsupported schema version {other}: this ublk-stack reads version 1"),
            );
            false
        }
        _ => {
            let mut reader = Reader {
                problems,
                layer: None,
            };
            reader.wrong_type("version", "the integer 1", &field.item);
            true
        }
    }
}

fn top_level_unknown(unknown: &UnknownKey) -> String {
    let name = unknown.name.as_str();
    if DeviceKey::from_str(name).is_some() {
        return format!("\"{name}\" belongs in [device]: move it below the [device] line");
    }
    if LogKey::from_str(name).is_some() {
        return format!("\"{name}\" belongs in [log]: move it below a [log] line");
    }
    if LayerKey::from_str(name).is_some() {
        return format!(
            "\"{name}\" is a layer key: put it below the [layers.NAME] line of its layer"
        );
    }
    let names = TopKey::all().iter().map(|key| key.as_str());
    let hint = did_you_mean(name, names);
    if hint.is_empty() && unknown.is_table {
        format!("unknown table [{name}]; a layer is written [layers.{name}], the device [device]")
    } else if hint.is_empty() {
        format!(
            "unknown top-level key \"{name}\"; the file holds: version, [device], [log] and [layers.NAME] tables"
        )
    } else {
        format!("unknown top-level key \"{name}\"{hint}")
    }
}

/// What `[device]` yields: the parameters (if all valid) and, separately, the
/// top reference, so the tree can be checked even if another device key is wrong.
struct Device {
    params: Option<DeviceParams>,
    top: Option<Reference>,
    /// See [`Validated::block_size`].
    block_size: u32,
}

fn report_unknown<K: KeyName>(section: &Section<K>, table: &str, reader: &mut Reader<'_>) {
    for unknown in &section.unknown {
        let hint = did_you_mean(&unknown.name, K::all().iter().map(|key| key.as_str()));
        let message = if hint.is_empty() {
            format!(
                "unknown key \"{}\" in {table}; it takes: {}",
                unknown.name,
                list(K::all())
            )
        } else {
            format!("unknown key \"{}\" in {table}{hint}", unknown.name)
        };
        reader.report(&unknown.span, message);
    }
}

/// `misplaced`: device keys written at the top of the file, already reported
/// as belonging in `[device]`; they are not reported missing as well.
fn device(
    section: &Section<DeviceKey>,
    misplaced: &[DeviceKey],
    problems: &mut Problems,
) -> Device {
    let mut reader = Reader {
        problems,
        layer: None,
    };
    report_unknown(section, "[device]", &mut reader);
    let get = |key| section.get(key).map(|field| &field.item);

    let name = match get(DeviceKey::Name) {
        Some(item) => reader
            .string("device.name", item)
            .and_then(|name| device_name(name, &item.span, &mut reader)),
        None if misspelt(section, DeviceKey::Name) || misplaced.contains(&DeviceKey::Name) => None,
        None => {
            reader.report(
                &section.span,
                "missing key \"name\" in [device]: the device's name, like name = \"disk0\"",
            );
            None
        }
    };
    let top = match get(DeviceKey::Top) {
        Some(item) => reader.string("device.top", item).map(|top| Reference {
            name: top.to_owned(),
            span: item.span.clone(),
            key: "device.top",
        }),
        None if misspelt(section, DeviceKey::Top) || misplaced.contains(&DeviceKey::Top) => None,
        None => {
            reader.report(
                &section.span,
                "missing key \"top\" in [device]: the name of the layer the device exposes",
            );
            None
        }
    };
    let queues = match get(DeviceKey::Queues) {
        Some(item) => reader.integer("device.queues", item, 1, 64),
        None => Some(default_queues()),
    };
    let queue_depth = match get(DeviceKey::QueueDepth) {
        Some(item) => reader.integer("device.queue_depth", item, 1, 4096),
        None => Some(i64::from(DEFAULT_QUEUE_DEPTH)),
    };
    let block_size = match get(DeviceKey::BlockSize) {
        Some(item) => block_size(item, &mut reader),
        None => Some(DEFAULT_BLOCK_SIZE),
    };
    let id = match get(DeviceKey::Id) {
        Some(item) => reader
            .integer("device.id", item, 0, MAX_DEVICE_ID)
            .map(Some),
        None => Some(None),
    };
    let params = (|| {
        Some(DeviceParams {
            name: name?,
            queues: u16::try_from(queues?).ok()?,
            queue_depth: u16::try_from(queue_depth?).ok()?,
            block_size: block_size?,
            id: match id? {
                Some(id) => Some(u32::try_from(id).ok()?),
                None => None,
            },
        })
    })();
    Device {
        params,
        top,
        block_size: block_size.unwrap_or(512),
    }
}

/// Whether an unknown key in `section` is a misspelling of `key`; the
/// did-you-mean on it then stands for the "missing key" error too.
fn misspelt<K: KeyName>(section: &Section<K>, key: K) -> bool {
    section
        .unknown
        .iter()
        .any(|unknown| closest(&unknown.name, [key.as_str()]).is_some())
}

fn default_queues() -> i64 {
    let cpus = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
    i64::try_from(cpus.min(MAX_DEFAULT_QUEUES)).unwrap_or(1)
}

fn block_size(item: &super::raw::Item, reader: &mut Reader<'_>) -> Option<u32> {
    match &item.value {
        Value::Integer(512) => Some(512),
        Value::Integer(4096) => Some(4096),
        Value::Integer(other) => {
            reader.report(
                &item.span,
                format!("device.block_size must be 512 or 4096, not {other}"),
            );
            None
        }
        Value::String(text) if matches!(text.trim(), "512" | "4096" | "4KiB" | "4K" | "512B") => {
            reader.report(
                &item.span,
                "device.block_size must be written as a bare integer: 512 or 4096",
            );
            None
        }
        _ => {
            reader.wrong_type("device.block_size", "512 or 4096", item);
            None
        }
    }
}

fn device_name(name: &str, span: &Span, reader: &mut Reader<'_>) -> Option<String> {
    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-';
    let length = name.chars().count();
    if (1..=MAX_NAME_CHARS).contains(&length) && name.chars().all(allowed) {
        return Some(name.to_owned());
    }
    let mut message = if length == 0 {
        "device.name is empty".to_string()
    } else if length > MAX_NAME_CHARS {
        format!("device.name \"{name}\" is {length} characters long")
    } else {
        format!("device.name \"{name}\" has characters other than a-z, 0-9, _ and -")
    };
    message.push_str(&format!(
        "; a name is 1 to {MAX_NAME_CHARS} of a-z, 0-9, _ and -"
    ));
    let lowered = name.to_ascii_lowercase();
    if lowered != name && lowered.chars().all(allowed) && length <= MAX_NAME_CHARS {
        message.push_str(&format!(" (did you mean \"{lowered}\"?)"));
    }
    reader.report(span, message);
    None
}

fn log(section: &Section<LogKey>, problems: &mut Problems) -> Option<LogLevel> {
    let mut reader = Reader {
        problems,
        layer: None,
    };
    report_unknown(section, "[log]", &mut reader);
    match section.get(LogKey::Level) {
        Some(field) => reader.choice("log.level", &field.item, &LogLevel::NAMES, LogLevel::parse),
        None => Some(LogLevel::Info),
    }
}
