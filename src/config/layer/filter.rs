//! Filters: one layer over another (`cache`, `compress`, `crypt`,
//! `checksum`, `fault`), each named by its `over` key.

use layers::plan::{
    CacheMode, CacheParams, ChecksumParams, CompressParams, CryptParams, FaultKnobs, FaultParams,
    KeySource, LayerSpec,
};

use super::{fixed_word, over, INLINE_KEY_WORDS};
use super::{Keys, LayerContext};
use crate::config::fields::Reader;
use crate::config::raw::{Item, RawLayer};
use crate::config::schema::{KeyName, LayerKey};

pub(super) fn cache(
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

pub(super) fn compress(
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

pub(super) fn crypt(
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

pub(super) fn has_inline_key(raw: &RawLayer) -> bool {
    raw.section
        .unknown
        .iter()
        .any(|unknown| INLINE_KEY_WORDS.contains(&unknown.name.as_str()))
}

pub(super) fn env_name(reader: &mut Reader<'_>, item: &Item) -> Option<String> {
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

pub(super) fn checksum(
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

pub(super) fn fault(
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
