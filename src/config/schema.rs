//! The words of schema v1: sections and their keys. The layer types and the
//! keys each takes come from the kinds registered in [`layers::kinds`]; a
//! layer key is spelt as a string only in its kind's file.

use std::sync::OnceLock;

use layers::kinds::{KindInfo, KINDS};

/// A set of key names that can be listed and printed (for did-you-mean).
pub trait KeyName: Copy + PartialEq + 'static {
    fn all() -> &'static [Self];
    fn as_str(self) -> &'static str;

    fn from_str(name: &str) -> Option<Self> {
        Self::all().iter().copied().find(|key| key.as_str() == name)
    }
}

macro_rules! key_enum {
    ($(#[$doc:meta])* $name:ident { $($variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum $name { $($variant),+ }

        impl KeyName for $name {
            fn all() -> &'static [Self] {
                &[$($name::$variant),+]
            }
            fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }
    };
}

key_enum!(
    /// Keys and tables at the top of the file.
    TopKey { Version = "version", Device = "device", Log = "log", Layers = "layers" }
);

key_enum!(
    /// Keys of `[device]`.
    DeviceKey {
        Name = "name",
        Top = "top",
        Queues = "queues",
        QueueDepth = "queue_depth",
        BlockSize = "block_size",
        Id = "id",
    }
);

key_enum!(
    /// Keys of `[log]`.
    LogKey { Level = "level" }
);

/// A key of a `[layers.NAME]` table: `type`, or a key some registered kind
/// takes (see [`layers::kinds`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayerKey(pub &'static str);

impl LayerKey {
    pub const TYPE: LayerKey = LayerKey("type");
}

impl KeyName for LayerKey {
    /// `type`, then every kind's keys in registry order, each once.
    fn all() -> &'static [Self] {
        static ALL: OnceLock<Vec<LayerKey>> = OnceLock::new();
        ALL.get_or_init(|| {
            let mut keys = vec![LayerKey::TYPE];
            for key in KINDS.iter().flat_map(|kind| kind.keys) {
                if !keys.iter().any(|known| known.0 == key.name) {
                    keys.push(LayerKey(key.name));
                }
            }
            keys
        })
    }

    fn as_str(self) -> &'static str {
        self.0
    }
}

/// The keys a layer of type `kind` takes, `type` first.
pub fn keys_of(kind: &KindInfo) -> Vec<LayerKey> {
    std::iter::once(LayerKey::TYPE)
        .chain(kind.keys.iter().map(|key| LayerKey(key.name)))
        .collect()
}

/// The kind a user probably means by a word from other storage tools
/// (`raid1`, `ramdisk`, `luks`), for "did you mean" where spelling distance
/// would mislead (`raid1` is one letter from `raid0`).
pub fn synonym(word: &str) -> Option<&'static KindInfo> {
    let word = word.to_ascii_lowercase();
    KINDS
        .iter()
        .find(|kind| kind.synonyms.contains(&word.as_str()))
}

/// The kinds that take `key`, for "this key belongs to … layers" hints.
pub fn kinds_taking(key: LayerKey) -> Vec<&'static str> {
    KINDS
        .iter()
        .filter(|kind| kind.key(key.0).is_some())
        .map(|kind| kind.name)
        .collect()
}

/// The type names, for messages: `file, disk, …`.
pub fn type_list() -> String {
    KINDS
        .iter()
        .map(|kind| kind.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Names of `items`, for messages: `a, b, c`.
pub fn list<K: KeyName>(items: &[K]) -> String {
    items
        .iter()
        .map(|item| item.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}
