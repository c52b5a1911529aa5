//! One `[layers.NAME]` table → its typed [`LayerSpec`]: the type, which keys
//! that type takes, required keys, defaults, and each value's type and range.

use std::collections::HashMap;
use std::path::Path;

use layers::plan::{
    CacheMode, CacheParams, ChecksumParams, CompressParams, CryptParams, DiskParams, FaultKnobs,
    FaultParams, FileParams, KeySource, LayerId, LayerSpec, MirrorParams, Raid0Params, ReadPolicy,
};

use super::error::{Problems, Span};
use super::fields::Reader;
use super::graph::Reference;
use super::raw::{Item, RawLayer, Value};
use super::schema::{list, KeyName, LayerKey, LayerType};
use super::suggest::{closest, did_you_mean};

/// The default raid0 chunk.
const DEFAULT_CHUNK_BYTES: u64 = 64 << 10;
/// Unknown keys that are an attempt at an inline key, refused with advice.
const INLINE_KEY_WORDS: [&str; 5] = ["key", "password", "passphrase", "secret", "key_hex"];

/// Where a validated layer's keys are in the file, so later checks (sizes of
/// existing files) can point at the right line.
#[derive(Clone, Debug)]
pub struct LayerSpans {
    pub header: Span,
    pub keys: Vec<(LayerKey, Span)>,
}

impl LayerSpans {
    /// The value of `key`, or the layer's header if the key is absent.
    pub fn of(&self, key: Option<LayerKey>) -> Span {
        key.and_then(|key| {
            self.keys
                .iter()
                .find(|(known, _)| *known == key)
                .map(|(_, span)| span.clone())
        })
        .unwrap_or_else(|| self.header.clone())
    }
}

/// What every layer is validated against.
pub struct LayerContext<'a> {
    pub index: &'a HashMap<&'a str, LayerId>,
    pub block_size: u64,
    pub base_dir: &'a Path,
}

/// The layer names this layer refers to, for the graph checks. Lenient on
/// purpose: a wrongly shaped `over = ["a"]` still counts as using "a", so the
/// shape error is not followed by a misleading "a is not used".
///
/// Reference keys the type does not take count too (`legs` on a raid0): the
/// user clearly meant those layers to sit below this one.
pub fn references(raw: &RawLayer) -> Vec<Reference> {
    let mut references = Vec::new();
    for field in &raw.section.fields {
        let key = field.key;
        if !is_reference_key(key) {
            continue;
        }
        let items = match &field.item.value {
            Value::Array(items) => items.iter().collect(),
            _ => vec![&field.item],
        };
        for item in items {
            if let Value::String(name) = &item.value {
                references.push(Reference {
                    name: name.clone(),
                    span: item.span.clone(),
                    key: key.as_str(),
                });
            }
        }
    }
    references
}

fn is_reference_key(key: LayerKey) -> bool {
    matches!(key, LayerKey::Over | LayerKey::Legs | LayerKey::Stripes)
}

/// The keys of one layer that its type takes; records where each value is.
struct Keys<'a> {
    raw: &'a RawLayer,
    allowed: &'static [LayerKey],
    spans: Vec<(LayerKey, Span)>,
}

impl<'a> Keys<'a> {
    fn get(&mut self, key: LayerKey) -> Option<&'a Item> {
        if !self.allowed.contains(&key) {
            return None;
        }
        let item = &self.raw.section.get(key)?.item;
        self.spans.push((key, item.span.clone()));
        Some(item)
    }

    /// Reports a missing key, unless a misspelling of it is there: that one is
    /// reported as unknown with a did-you-mean, which says it all.
    fn require(&mut self, reader: &mut Reader<'_>, key: LayerKey, hint: &str) -> Option<&'a Item> {
        let item = self.get(key);
        let misspelt = self
            .raw
            .section
            .unknown
            .iter()
            .any(|unknown| closest(&unknown.name, [key.as_str()]).is_some());
        if item.is_none() && !misspelt {
            reader.report(
                &self.raw.section.span,
                format!("missing key \"{}\": {hint}", key.as_str()),
            );
        }
        item
    }
}

/// Validates one layer; `None` if anything was reported.
pub fn validate_layer(
    raw: &RawLayer,
    context: &LayerContext<'_>,
    problems: &mut Problems,
) -> Option<(LayerSpec, LayerSpans)> {
    let mut reader = Reader {
        problems,
        layer: Some(&raw.name),
    };
    let layer_type = read_type(raw, &mut reader);
    report_foreign_keys(raw, layer_type, &mut reader);
    let layer_type = layer_type?;
    let mut keys = Keys {
        raw,
        allowed: layer_type.keys(),
        spans: Vec::new(),
    };
    let spec = match layer_type {
        LayerType::File => file(&mut keys, &mut reader, context),
        LayerType::Disk => disk(&mut keys, &mut reader, context),
        LayerType::Memory => leaf_size(&mut keys, &mut reader, context, "memory")
            .map(|size_bytes| LayerSpec::Memory { size_bytes }),
        LayerType::Null => leaf_size(&mut keys, &mut reader, context, "null")
            .map(|size_bytes| LayerSpec::Null { size_bytes }),
        LayerType::Raid0 => raid0(&mut keys, &mut reader, context),
        LayerType::Mirror => mirror(&mut keys, &mut reader, context),
        LayerType::Cache => cache(&mut keys, &mut reader, context),
        LayerType::Compress => compress(&mut keys, &mut reader, context),
        LayerType::Crypt => crypt(&mut keys, &mut reader, context),
        LayerType::Checksum => checksum(&mut keys, &mut reader, context),
        LayerType::Fault => fault(&mut keys, &mut reader, context),
    }?;
    let spans = LayerSpans {
        header: raw.section.span.clone(),
        keys: keys.spans,
    };
    Some((spec, spans))
}

fn read_type(raw: &RawLayer, reader: &mut Reader<'_>) -> Option<LayerType> {
    let types = || LayerType::ALL.iter().map(|t| t.as_str());
    let Some(field) = raw.section.get(LayerKey::Type) else {
        reader.report(
            &raw.section.span,
            format!("missing key \"type\": one of {}", list(LayerType::ALL)),
        );
        return None;
    };
    let word = reader.string("type", &field.item)?;
    let found = LayerType::from_str(word);
    if found.is_none() {
        let hint = did_you_mean(word, types());
        reader.report(
            &field.item.span,
            format!(
                "unknown type \"{word}\"{hint}; the types are: {}",
                list(LayerType::ALL)
            ),
        );
    }
    found
}

/// Keys the layer's type does not take, and keys no type takes.
fn report_foreign_keys(raw: &RawLayer, layer_type: Option<LayerType>, reader: &mut Reader<'_>) {
    // Without a known type, suggest among every layer key.
    let allowed: &[LayerKey] = layer_type.map_or(LayerKey::ALL, LayerType::keys);
    let allowed_names = || allowed.iter().map(|key| key.as_str());
    let type_name = layer_type.map(LayerType::as_str);
    for unknown in &raw.section.unknown {
        let name = unknown.name.as_str();
        let message = if INLINE_KEY_WORDS.contains(&name)
            && matches!(layer_type, Some(LayerType::Crypt) | None)
        {
            format!(
                "inline keys are not allowed (\"{name}\"): a key in the config ends up in git; \
                 put it in a file and set key_file, or in an environment variable and set key_env"
            )
        } else {
            unknown_key_message(name, type_name, allowed, allowed_names())
        };
        reader.report(&unknown.span, message);
    }
    let Some(layer_type) = layer_type else {
        return;
    };
    for field in &raw.section.fields {
        if allowed.contains(&field.key) {
            continue;
        }
        let owners: Vec<_> = LayerType::types_taking(field.key)
            .into_iter()
            .map(LayerType::as_str)
            .collect();
        let mut hint = did_you_mean(field.key.as_str(), allowed_names());
        // `legs` for a raid0 means its `stripes`, `over` for a mirror its `legs`:
        // suggest the key that names the layers below for this type.
        if hint.is_empty() && is_reference_key(field.key) {
            if let Some(own) = allowed.iter().find(|key| is_reference_key(**key)) {
                hint = format!(" (did you mean \"{}\"?)", own.as_str());
            }
        }
        reader.report(
            &field.key_span,
            format!(
                "a {} layer has no key \"{}\"{hint} (\"{}\" belongs to {} layers); {} layers take: {}",
                layer_type.as_str(),
                field.key.as_str(),
                field.key.as_str(),
                owners.join(", "),
                layer_type.as_str(),
                list(allowed),
            ),
        );
    }
}

fn unknown_key_message<'a>(
    name: &str,
    type_name: Option<&str>,
    allowed: &[LayerKey],
    allowed_names: impl Iterator<Item = &'a str>,
) -> String {
    let hint = did_you_mean(name, allowed_names);
    if !hint.is_empty() {
        return format!("unknown key \"{name}\"{hint}");
    }
    match type_name {
        Some(type_name) => format!(
            "unknown key \"{name}\"; {type_name} layers take: {}",
            list(allowed)
        ),
        None => format!("unknown key \"{name}\""),
    }
}

/// Reads `over` and resolves it; dangling names were reported by the graph check.
fn over(
    keys: &mut Keys<'_>,
    reader: &mut Reader<'_>,
    context: &LayerContext<'_>,
) -> Option<LayerId> {
    let item = keys.require(
        reader,
        LayerKey::Over,
        "the name of the layer below this one",
    )?;
    let name = reader.string("over", item)?;
    context.index.get(name).copied()
}

/// Reads `legs` or `stripes`: at least two names, all resolvable.
fn children(
    keys: &mut Keys<'_>,
    reader: &mut Reader<'_>,
    context: &LayerContext<'_>,
    key: LayerKey,
    what: &str,
) -> Option<Vec<LayerId>> {
    let name = key.as_str();
    let hint = format!("the layers to {what}, like {name} = [\"a\", \"b\"]");
    let item = keys.require(reader, key, &hint)?;
    let names = reader.names(name, item)?;
    if names.len() < 2 {
        reader.report(
            &item.span,
            format!(
                "{name} needs at least 2 layers to {what}, not {}",
                names.len()
            ),
        );
        return None;
    }
    let ids: Vec<_> = names
        .iter()
        .filter_map(|(name, _)| context.index.get(name.as_str()).copied())
        .collect();
    (ids.len() == names.len()).then_some(ids)
}

fn optional_bool(
    keys: &mut Keys<'_>,
    reader: &mut Reader<'_>,
    key: LayerKey,
    default: bool,
) -> Option<bool> {
    match keys.get(key) {
        Some(item) => reader.boolean(key.as_str(), item),
        None => Some(default),
    }
}

/// An algorithm-like word with only one value in schema v1.
fn fixed_word(
    keys: &mut Keys<'_>,
    reader: &mut Reader<'_>,
    key: LayerKey,
    only: &'static str,
) -> Option<String> {
    match keys.get(key) {
        Some(item) => reader
            .choice(key.as_str(), item, &[only], |word| {
                (word == only).then_some(())
            })
            .map(|()| only.to_owned()),
        None => Some(only.to_owned()),
    }
}

fn file(
    keys: &mut Keys<'_>,
    reader: &mut Reader<'_>,
    context: &LayerContext<'_>,
) -> Option<LayerSpec> {
    let path = keys
        .require(
            reader,
            LayerKey::Path,
            "the image file, like path = \"data/disk0.img\"",
        )
        .and_then(|item| reader.path("path", item, context.base_dir));
    let create_item = keys.get(LayerKey::Create);
    let create = match create_item {
        Some(item) => reader.boolean("create", item),
        None => Some(false),
    };
    let direct = optional_bool(keys, reader, LayerKey::Direct, false);
    let size_bytes = match keys.get(LayerKey::Size) {
        Some(item) => reader.size("size", item, context.block_size).map(Some),
        None => {
            if let (Some(true), Some(item)) = (create, create_item) {
                reader.report(
                    &item.span,
                    "create = true needs a size for the file it creates, like size = \"1GiB\"",
                );
                None
            } else {
                Some(None)
            }
        }
    };
    Some(LayerSpec::File(FileParams {
        path: path?,
        size_bytes: size_bytes?,
        create: create?,
        direct: direct?,
    }))
}

fn disk(
    keys: &mut Keys<'_>,
    reader: &mut Reader<'_>,
    context: &LayerContext<'_>,
) -> Option<LayerSpec> {
    let path = keys
        .require(
            reader,
            LayerKey::Path,
            "the block device, like path = \"/dev/nvme0n1\"",
        )
        .and_then(|item| reader.path("path", item, context.base_dir));
    let direct = optional_bool(keys, reader, LayerKey::Direct, true);
    Some(LayerSpec::Disk(DiskParams {
        path: path?,
        direct: direct?,
    }))
}

fn leaf_size(
    keys: &mut Keys<'_>,
    reader: &mut Reader<'_>,
    context: &LayerContext<'_>,
    type_name: &str,
) -> Option<u64> {
    let hint = format!("how large the {type_name} device is, like size = \"1GiB\"");
    let item = keys.require(reader, LayerKey::Size, &hint)?;
    reader.size("size", item, context.block_size)
}

fn raid0(
    keys: &mut Keys<'_>,
    reader: &mut Reader<'_>,
    context: &LayerContext<'_>,
) -> Option<LayerSpec> {
    let stripes = children(keys, reader, context, LayerKey::Stripes, "stripe across");
    let chunk_bytes = match keys.get(LayerKey::Chunk) {
        Some(item) => reader.size("chunk", item, context.block_size).and_then(|chunk| {
            if chunk.is_power_of_two() {
                Some(chunk)
            } else {
                reader.report(
                    &item.span,
                    format!(
                        "chunk must be a power of two, like \"64KiB\" or \"1MiB\", not {chunk} bytes"
                    ),
                );
                None
            }
        }),
        None => Some(DEFAULT_CHUNK_BYTES.max(context.block_size)),
    };
    Some(LayerSpec::Raid0(Raid0Params {
        stripes: stripes?,
        chunk_bytes: chunk_bytes?,
    }))
}

fn mirror(
    keys: &mut Keys<'_>,
    reader: &mut Reader<'_>,
    context: &LayerContext<'_>,
) -> Option<LayerSpec> {
    let legs = children(keys, reader, context, LayerKey::Legs, "mirror");
    let read_policy = match keys.get(LayerKey::ReadPolicy) {
        Some(item) => reader.choice("read_policy", item, &ReadPolicy::NAMES, ReadPolicy::parse),
        None => Some(ReadPolicy::RoundRobin),
    };
    Some(LayerSpec::Mirror(MirrorParams {
        legs: legs?,
        read_policy: read_policy?,
    }))
}

fn cache(
    keys: &mut Keys<'_>,
    reader: &mut Reader<'_>,
    context: &LayerContext<'_>,
) -> Option<LayerSpec> {
    let over = over(keys, reader, context);
    let capacity_bytes = keys
        .require(
            reader,
            LayerKey::Capacity,
            "how much the cache holds, like capacity = \"256MiB\"",
        )
        .and_then(|item| reader.size("capacity", item, context.block_size));
    let mode = match keys.get(LayerKey::Mode) {
        Some(item) => reader.choice("mode", item, &CacheMode::NAMES, CacheMode::parse),
        None => Some(CacheMode::WriteThrough),
    };
    Some(LayerSpec::Cache(CacheParams {
        over: over?,
        capacity_bytes: capacity_bytes?,
        mode: mode?,
    }))
}

fn compress(
    keys: &mut Keys<'_>,
    reader: &mut Reader<'_>,
    context: &LayerContext<'_>,
) -> Option<LayerSpec> {
    let over = over(keys, reader, context);
    let algorithm = fixed_word(keys, reader, LayerKey::Algorithm, "lz4");
    let size_bytes = match keys.get(LayerKey::Size) {
        Some(item) => reader.size("size", item, context.block_size).map(Some),
        None => Some(None),
    };
    Some(LayerSpec::Compress(CompressParams {
        over: over?,
        algorithm: algorithm?,
        size_bytes: size_bytes?,
    }))
}

fn crypt(
    keys: &mut Keys<'_>,
    reader: &mut Reader<'_>,
    context: &LayerContext<'_>,
) -> Option<LayerSpec> {
    let over = over(keys, reader, context);
    let cipher = fixed_word(keys, reader, LayerKey::Cipher, "aes-256-gcm");
    let key_file = keys.get(LayerKey::KeyFile);
    let key_env = keys.get(LayerKey::KeyEnv);
    let key = match (key_file, key_env) {
        (Some(file), Some(env)) => {
            let later = if file.span.start > env.span.start {
                file
            } else {
                env
            };
            reader.report(
                &later.span,
                "give only one of key_file and key_env, not both",
            );
            None
        }
        (Some(file), None) => reader
            .path("key_file", file, context.base_dir)
            .map(KeySource::File),
        (None, Some(env)) => env_name(reader, env).map(KeySource::Env),
        // An inline key was already refused with advice on key_file and key_env.
        (None, None) if has_inline_key(keys.raw) => None,
        (None, None) => {
            reader.report(
                &keys.raw.section.span,
                "missing key_file or key_env: the file holding the key (key_file = \"keys/disk.key\"), \
                 or the environment variable holding it (key_env = \"DISK_KEY\")",
            );
            None
        }
    };
    Some(LayerSpec::Crypt(CryptParams {
        over: over?,
        cipher: cipher?,
        key: key?,
    }))
}

fn has_inline_key(raw: &RawLayer) -> bool {
    raw.section
        .unknown
        .iter()
        .any(|unknown| INLINE_KEY_WORDS.contains(&unknown.name.as_str()))
}

fn env_name(reader: &mut Reader<'_>, item: &Item) -> Option<String> {
    let name = reader.string("key_env", item)?;
    let valid = !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if valid {
        return Some(name.to_owned());
    }
    let hint = match name.strip_prefix('$') {
        Some(bare) => format!("; write the name without \"$\": key_env = \"{bare}\""),
        None => String::new(),
    };
    reader.report(
        &item.span,
        format!(
            "key_env \"{name}\" is not an environment variable name (letters, digits and _){hint}"
        ),
    );
    None
}

fn checksum(
    keys: &mut Keys<'_>,
    reader: &mut Reader<'_>,
    context: &LayerContext<'_>,
) -> Option<LayerSpec> {
    let over = over(keys, reader, context);
    let algorithm = fixed_word(keys, reader, LayerKey::Algorithm, "crc32");
    Some(LayerSpec::Checksum(ChecksumParams {
        over: over?,
        algorithm: algorithm?,
    }))
}

fn fault(
    keys: &mut Keys<'_>,
    reader: &mut Reader<'_>,
    context: &LayerContext<'_>,
) -> Option<LayerSpec> {
    let over = over(keys, reader, context);
    let defaults = FaultKnobs::default();
    let mut rate = |keys: &mut Keys<'_>, key: LayerKey, default: f64| match keys.get(key) {
        Some(item) => reader.rate(key.as_str(), item),
        None => Some(default),
    };
    let read_error_rate = rate(keys, LayerKey::ReadErrorRate, defaults.read_error_rate);
    let write_error_rate = rate(keys, LayerKey::WriteErrorRate, defaults.write_error_rate);
    let delay_us = match keys.get(LayerKey::Delay) {
        Some(item) => reader.duration_us("delay", item),
        None => Some(defaults.delay_us),
    };
    let range = match keys.get(LayerKey::Range) {
        Some(item) => reader.range("range", item, context.block_size).map(Some),
        None => Some(defaults.range),
    };
    Some(LayerSpec::Fault(FaultParams {
        over: over?,
        knobs: FaultKnobs {
            read_error_rate: read_error_rate?,
            write_error_rate: write_error_rate?,
            delay_us: delay_us?,
            range: range?,
        },
    }))
}
