//! One `[layers.NAME]` table → its typed [`LayerSpec`]: the type, which keys
//! that type takes, required keys, defaults, and each value's type and range.
//!
//! This file holds what all types share; the per-type readers are grouped by
//! shape: [`leaf`] (file, disk, memory, null), [`branch`] (raid0 and mirror,
//! over several layers) and [`filter`] (one layer over another).

mod branch;
mod filter;
mod leaf;

use std::collections::HashMap;
use std::path::Path;

use layers::plan::{LayerId, LayerSpec};

use super::error::{Problems, Span};
use super::fields::Reader;
use super::graph::Reference;
use super::raw::{Item, RawLayer, Value};
use super::schema::{list, KeyName, LayerKey, LayerType};
use super::suggest::{closest, did_you_mean};

/// Unknown keys that are an attempt at an inline key, refused with advice.
pub(super) const INLINE_KEY_WORDS: [&str; 5] =
    ["key", "password", "passphrase", "secret", "key_hex"];

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
        let (items, in_list) = match &field.item.value {
            Value::Array(items) => (items.iter().collect(), true),
            _ => (vec![&field.item], false),
        };
        for item in items {
            let Value::String(text) = &item.value else {
                continue;
            };
            // `legs = "a, b"` is reported as not a list; the names in it still
            // count as used. Inside a list each string is one name, as written.
            let names: Vec<&str> = if in_list || key == LayerKey::Over {
                vec![text.as_str()]
            } else {
                text.split([',', ' '])
                    .filter(|name| !name.is_empty())
                    .collect()
            };
            for name in names {
                references.push(Reference {
                    name: name.to_owned(),
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
pub(super) struct Keys<'a> {
    pub(super) raw: &'a RawLayer,
    allowed: &'static [LayerKey],
    spans: Vec<(LayerKey, Span)>,
}

impl<'a> Keys<'a> {
    pub(super) fn get(&mut self, key: LayerKey) -> Option<&'a Item> {
        if !self.allowed.contains(&key) {
            return None;
        }
        let item = &self.raw.section.get(key)?.item;
        self.spans.push((key, item.span.clone()));
        Some(item)
    }

    /// Reports a missing key, unless a misspelling of it is there: that one is
    /// reported as unknown with a did-you-mean, which says it all.
    pub(super) fn require(
        &mut self,
        reader: &mut Reader<'_>,
        key: LayerKey,
        hint: &str,
    ) -> Option<&'a Item> {
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
        LayerType::File => leaf::file(&mut keys, &mut reader, context),
        LayerType::Disk => leaf::disk(&mut keys, &mut reader, context),
        LayerType::Memory => leaf::leaf_size(&mut keys, &mut reader, context, "memory")
            .map(|size_bytes| LayerSpec::Memory { size_bytes }),
        LayerType::Null => leaf::leaf_size(&mut keys, &mut reader, context, "null")
            .map(|size_bytes| LayerSpec::Null { size_bytes }),
        LayerType::Raid0 => branch::raid0(&mut keys, &mut reader, context),
        LayerType::Mirror => branch::mirror(&mut keys, &mut reader, context),
        LayerType::Cache => filter::cache(&mut keys, &mut reader, context),
        LayerType::Compress => filter::compress(&mut keys, &mut reader, context),
        LayerType::Crypt => filter::crypt(&mut keys, &mut reader, context),
        LayerType::Checksum => filter::checksum(&mut keys, &mut reader, context),
        LayerType::Fault => filter::fault(&mut keys, &mut reader, context),
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
        let hint = match LayerType::synonym(word) {
            Some(meant) => format!(" (did you mean \"{}\"?)", meant.as_str()),
            None => did_you_mean(word, types()),
        };
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
pub(super) fn over(
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
pub(super) fn children(
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

pub(super) fn optional_bool(
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
pub(super) fn fixed_word(
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
