//! One `[layers.NAME]` table → its typed [`LayerSpec`]: the type, which keys
//! that type takes, and the kind's own reading of them (required keys,
//! defaults, each value's type and range), all from the kinds registered in
//! [`layers::kinds`]. This file holds only what all types share.

mod keys;

use std::collections::HashMap;
use std::path::Path;

use layers::kinds::{self, KindInfo, Shape, KINDS};
use layers::plan::{LayerId, LayerSpec};

use super::error::{Problems, Span};
use super::fields::Reader;
use super::graph::Reference;
use super::raw::{RawLayer, Value};
use super::schema::{keys_of, kinds_taking, list, synonym, type_list, KeyName, LayerKey};
use super::suggest::did_you_mean;
use keys::LayerKeys;

/// Where a validated layer's keys are in the file, so later checks (sizes of
/// existing files) can point at the right line.
#[derive(Clone, Debug)]
pub struct LayerSpans {
    pub header: Span,
    pub keys: Vec<(&'static str, Span)>,
}

impl LayerSpans {
    /// The value of `key`, or the layer's header if the key is absent.
    pub fn of(&self, key: Option<&str>) -> Span {
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

/// What the kinds that take `key` say its value is (`None`: no kind takes it).
fn shape(key: LayerKey) -> Option<Shape> {
    KINDS
        .iter()
        .find_map(|kind| kind.key(key.as_str()))
        .map(|key| key.shape)
}

fn is_reference_key(key: LayerKey) -> bool {
    shape(key).is_some_and(|shape| shape != Shape::Value)
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
            let names: Vec<&str> = if in_list || shape(key) == Some(Shape::Layer) {
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
    let kind = read_type(raw, &mut reader);
    report_foreign_keys(raw, kind, &mut reader);
    let kind = kind?;
    let mut keys = LayerKeys {
        raw,
        allowed: keys_of(kind),
        spans: Vec::new(),
        reader,
        context,
    };
    let spec = (kind.read)(&mut keys)?;
    let spans = LayerSpans {
        header: raw.section.span.clone(),
        keys: keys.spans,
    };
    Some((spec, spans))
}

fn read_type(raw: &RawLayer, reader: &mut Reader<'_>) -> Option<&'static KindInfo> {
    let Some(field) = raw.section.get(LayerKey::TYPE) else {
        reader.report(
            &raw.section.span,
            format!("missing key \"type\": one of {}", type_list()),
        );
        return None;
    };
    let word = reader.string("type", &field.item)?;
    let found = kinds::kind(word);
    if found.is_none() {
        let hint = match synonym(word) {
            Some(meant) => format!(" (did you mean \"{}\"?)", meant.name),
            None => did_you_mean(word, KINDS.iter().map(|kind| kind.name)),
        };
        reader.report(
            &field.item.span,
            format!(
                "unknown type \"{word}\"{hint}; the types are: {}",
                type_list()
            ),
        );
    }
    found
}

/// Keys the layer's type does not take, and keys no type takes.
fn report_foreign_keys(raw: &RawLayer, kind: Option<&'static KindInfo>, reader: &mut Reader<'_>) {
    // Without a known type, suggest among every layer key.
    let allowed: Vec<LayerKey> = kind.map_or_else(|| LayerKey::all().to_vec(), keys_of);
    let allowed_names = || allowed.iter().map(|key| key.as_str());
    let type_name = kind.map(|kind| kind.name);
    for unknown in &raw.section.unknown {
        let name = unknown.name.as_str();
        // A word that means something to the kind (or, with the type unknown,
        // to any kind: an inline key) gets that kind's own message.
        let special = match kind {
            Some(kind) => (kind.unknown_key)(name),
            None => KINDS.iter().find_map(|kind| (kind.unknown_key)(name)),
        };
        let message = special
            .unwrap_or_else(|| unknown_key_message(name, type_name, &allowed, allowed_names()));
        reader.report(&unknown.span, message);
    }
    let Some(kind) = kind else {
        return;
    };
    for field in &raw.section.fields {
        if allowed.contains(&field.key) {
            continue;
        }
        let owners = kinds_taking(field.key);
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
                kind.name,
                field.key.as_str(),
                field.key.as_str(),
                owners.join(", "),
                kind.name,
                list(&allowed),
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
