//! Layer kinds: every `type = "…"` described in one file of this folder, and
//! the registry that lists them.
//!
//! A kind is its parameters struct with an implementation of [`Kind`]: its
//! type name, its keys (defaults, docs, live or structural), how it reads them
//! from a `[layers.NAME]` table, the size it exposes over its children, what
//! it asks of the machine, and how it opens. Config reading, `validate`,
//! sizing, reload diffs, the printed tree and [`crate::compile()`] are generic
//! over it. What a running layer reports is its [`Layer`] implementation's
//! business (`Layer::report`, a type of [`crate::report`]); a kind has no say
//! in it.
//!
//! Adding a layer type: one file here and one line in [`registry!`] below
//! (docs/writing-a-layer.md walks through it).

mod host;
mod keys;
mod opening;
mod sizing;
mod text;

pub mod cache;
pub mod checksum;
pub mod compress;
pub mod crypt;
pub mod disk;
pub mod fault;
pub mod file;
pub mod memory;
pub mod mirror;
pub mod nbd;
pub mod null;
pub mod raid0;

use std::any::Any;
use std::fmt;
use std::path::Path;

pub use host::{Host, Leaves};
pub use keys::{Item, Key, KeyReader, Shape};
pub use opening::Opening;
pub use sizing::{Problem, Sizing};
pub use text::{path_value, shown};

pub use crate::compile::Opened;
use crate::params::{LayerId, LiveChange};

/// One layer type. Implemented by the type's parameters struct, which is what
/// a [`LayerSpec`] holds for a layer of this type.
pub trait Kind: Clone + fmt::Debug + PartialEq + Send + Sync + Into<LayerSpec> + 'static {
    /// The `type = "…"` word.
    const NAME: &'static str;
    /// Every key but `type`, in the order the README lists them.
    const KEYS: &'static [Key];
    /// Words other storage tools use for this type (`raid1`, `luks`), for the
    /// "did you mean" of an unknown type.
    const SYNONYMS: &'static [&'static str] = &[];
    /// Whether it keeps per-block metadata below, turning one write into two;
    /// at most `MAX_METADATA_CHAIN` of those are stacked on one path.
    const KEEPS_METADATA: bool = false;
    /// Whether it writes a superblock (layers/src/superblock.rs) at byte 0 of
    /// each layer directly below: `up` formats a blank one and opens its own.
    const SUPERBLOCK: bool = false;
    /// Whether a running layer of this kind can grow ([`crate::AsyncLayer::grow`])
    /// when the layers below it grow or its own size key rises, so a reload may
    /// grow a device through it.
    const GROWS: bool = false;
    /// Whether a running layer of this kind takes in the space of a grown
    /// layer below while its own size stays (`compress` with a `size`: its
    /// data area runs to the end of the layer below), so a reload calls its
    /// `grow` with its unchanged size after the layer below grew.
    const TAKES_IN_GROWTH_BELOW: bool = false;

    /// The message for an unknown key `word` that means something to this
    /// kind (an inline key for `crypt`), instead of the usual "unknown key".
    /// Asked of every kind when the layer's type is unknown.
    fn unknown_key(_word: &str) -> Option<String> {
        None
    }

    /// Reads the layer's keys. Every problem is reported through `keys` (and
    /// reading goes on, so all are found); `None` if there was one.
    fn read(keys: &mut dyn KeyReader) -> Option<Self>;

    /// The layers directly below, in order.
    fn children(&self) -> Vec<LayerId> {
        Vec::new()
    }

    /// The file or device node whose byte 0 is this layer's byte 0 (a
    /// `file` or `disk` leaf), where the layer above keeps its superblock.
    fn leaf_path(&self) -> Option<&Path> {
        None
    }

    /// Every key's value as text, `None` when not set, in [`Kind::KEYS`]
    /// order. A reload compares them to find what changed (so equal text must
    /// mean equal value); live ones are shown in the tree and in reload
    /// messages. References show as the names `name` gives.
    fn values(&self, name: &dyn Fn(LayerId) -> String) -> Vec<(&'static str, Option<String>)>;

    /// The fixed part of this layer's line in the printed tree.
    fn summary(&self) -> String {
        String::new()
    }

    /// The size the layer exposes, given its children's (in
    /// `sizing.children`); reports why not if it cannot.
    fn size(&self, sizing: &mut Sizing<'_>) -> Option<u64>;

    /// What the layer asks of this machine (memory, files, keys), checked
    /// before anything is opened; problems go to `host.report`.
    fn check_host(&self, _host: &mut Host<'_>) {}

    /// The live changes from `self` (running) to `new`, each with the keys it
    /// stands for, in the order they are applied. Keys not listed in any are
    /// structural: a difference there refuses the reload.
    fn live_changes(&self, _new: &Self) -> Vec<(LiveChange, &'static [&'static str])> {
        Vec::new()
    }

    /// Applies a live change to the parameters (what the device runs after it).
    fn apply_live(&mut self, _change: &LiveChange) {}

    /// Work done for every layer before any layer is opened (reading a key),
    /// so that a plan that cannot start fails before a leaf is created; what
    /// it returns is handed to [`Kind::open`] through [`Opening::prepared`].
    fn prepare(&self) -> Result<Option<Box<dyn Any>>, String> {
        Ok(None)
    }

    /// Builds the running layer over `opening.children`.
    fn open(&self, opening: &mut Opening<'_>) -> Result<Opened, String>;
}

/// What the registry keeps of each kind, for code that picks a kind by name.
pub struct KindInfo {
    pub name: &'static str,
    pub keys: &'static [Key],
    pub synonyms: &'static [&'static str],
    pub read: fn(&mut dyn KeyReader) -> Option<LayerSpec>,
    pub unknown_key: fn(&str) -> Option<String>,
}

impl KindInfo {
    const fn of<K: Kind>() -> KindInfo {
        KindInfo {
            name: K::NAME,
            keys: K::KEYS,
            synonyms: K::SYNONYMS,
            read: read_as::<K>,
            unknown_key: K::unknown_key,
        }
    }

    /// The key named `name`, if this kind takes it (`type` is not listed).
    pub fn key(&self, name: &str) -> Option<&'static Key> {
        self.keys.iter().find(|key| key.name == name)
    }
}

fn read_as<K: Kind>(keys: &mut dyn KeyReader) -> Option<LayerSpec> {
    K::read(keys).map(Into::into)
}

/// [`Kind`] without its associated items, so a [`LayerSpec`] can hand out
/// any kind as one trait object.
trait AnyKind: Send + Sync {
    fn name(&self) -> &'static str;
    fn keeps_metadata(&self) -> bool;
    fn superblock(&self) -> bool;
    fn grows(&self) -> bool;
    fn takes_in_growth_below(&self) -> bool;
    fn children(&self) -> Vec<LayerId>;
    fn leaf_path(&self) -> Option<&Path>;
    fn values(&self, name: &dyn Fn(LayerId) -> String) -> Vec<(&'static str, Option<String>)>;
    fn summary(&self) -> String;
    fn size(&self, sizing: &mut Sizing<'_>) -> Option<u64>;
    fn check_host(&self, host: &mut Host<'_>);
    fn live_changes(&self, new: &dyn Any) -> Vec<(LiveChange, &'static [&'static str])>;
    fn apply_live(&mut self, change: &LiveChange);
    fn prepare(&self) -> Result<Option<Box<dyn Any>>, String>;
    fn open(&self, opening: &mut Opening<'_>) -> Result<Opened, String>;
    fn as_any(&self) -> &dyn Any;
}

impl<K: Kind> AnyKind for K {
    fn name(&self) -> &'static str {
        K::NAME
    }
    fn keeps_metadata(&self) -> bool {
        K::KEEPS_METADATA
    }
    fn superblock(&self) -> bool {
        K::SUPERBLOCK
    }
    fn grows(&self) -> bool {
        K::GROWS
    }
    fn takes_in_growth_below(&self) -> bool {
        K::TAKES_IN_GROWTH_BELOW
    }
    fn children(&self) -> Vec<LayerId> {
        Kind::children(self)
    }
    fn leaf_path(&self) -> Option<&Path> {
        Kind::leaf_path(self)
    }
    fn values(&self, name: &dyn Fn(LayerId) -> String) -> Vec<(&'static str, Option<String>)> {
        Kind::values(self, name)
    }
    fn summary(&self) -> String {
        Kind::summary(self)
    }
    fn size(&self, sizing: &mut Sizing<'_>) -> Option<u64> {
        Kind::size(self, sizing)
    }
    fn check_host(&self, host: &mut Host<'_>) {
        Kind::check_host(self, host)
    }
    fn live_changes(&self, new: &dyn Any) -> Vec<(LiveChange, &'static [&'static str])> {
        new.downcast_ref::<K>()
            .map(|new| Kind::live_changes(self, new))
            .unwrap_or_default()
    }
    fn apply_live(&mut self, change: &LiveChange) {
        Kind::apply_live(self, change)
    }
    fn prepare(&self) -> Result<Option<Box<dyn Any>>, String> {
        Kind::prepare(self)
    }
    fn open(&self, opening: &mut Opening<'_>) -> Result<Opened, String> {
        Kind::open(self, opening)
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// The registry: one line per layer type, `Variant(module::Params)`, in the
/// order messages list the types. It defines [`LayerSpec`] (one variant per
/// kind) and [`KINDS`].
macro_rules! registry {
    ($($variant:ident($module:ident::$params:ident)),+ $(,)?) => {
        /// Typed parameters of one layer: one variant per registered kind.
        #[derive(Clone, Debug, PartialEq)]
        pub enum LayerSpec {
            $($variant($module::$params)),+
        }

        $(impl From<$module::$params> for LayerSpec {
            fn from(params: $module::$params) -> LayerSpec {
                LayerSpec::$variant(params)
            }
        })+

        /// Every layer type, in the order messages list them.
        pub static KINDS: &[KindInfo] = &[$(KindInfo::of::<$module::$params>()),+];

        impl LayerSpec {
            fn kind(&self) -> &dyn AnyKind {
                match self {
                    $(LayerSpec::$variant(params) => params),+
                }
            }

            fn kind_mut(&mut self) -> &mut dyn AnyKind {
                match self {
                    $(LayerSpec::$variant(params) => params),+
                }
            }
        }
    };
}

registry! {
    File(file::FileParams),
    Disk(disk::DiskParams),
    Memory(memory::MemoryParams),
    Null(null::NullParams),
    Raid0(raid0::Raid0Params),
    Mirror(mirror::MirrorParams),
    Cache(cache::CacheParams),
    Compress(compress::CompressParams),
    Crypt(crypt::CryptParams),
    Checksum(checksum::ChecksumParams),
    Fault(fault::FaultParams),
    Nbd(nbd::NbdParams),
}

/// The kind named `name`.
pub fn kind(name: &str) -> Option<&'static KindInfo> {
    KINDS.iter().find(|kind| kind.name == name)
}

impl LayerSpec {
    /// The `type = "…"` word of this layer.
    pub fn type_name(&self) -> &'static str {
        self.kind().name()
    }

    /// The registry's entry for this layer's type.
    pub fn info(&self) -> &'static KindInfo {
        kind(self.type_name()).expect("every LayerSpec variant is registered")
    }

    /// The layers directly below this one, in order.
    pub fn children(&self) -> Vec<LayerId> {
        self.kind().children()
    }

    /// See [`Kind::KEEPS_METADATA`].
    pub fn keeps_metadata(&self) -> bool {
        self.kind().keeps_metadata()
    }

    /// See [`Kind::SUPERBLOCK`].
    pub fn superblock(&self) -> bool {
        self.kind().superblock()
    }

    /// See [`Kind::leaf_path`].
    pub fn leaf_path(&self) -> Option<&Path> {
        self.kind().leaf_path()
    }

    /// See [`Kind::GROWS`].
    pub fn grows(&self) -> bool {
        self.kind().grows()
    }

    /// See [`Kind::TAKES_IN_GROWTH_BELOW`].
    pub fn takes_in_growth_below(&self) -> bool {
        self.kind().takes_in_growth_below()
    }

    /// See [`Kind::values`].
    pub fn values(&self, name: &dyn Fn(LayerId) -> String) -> Vec<(&'static str, Option<String>)> {
        self.kind().values(name)
    }

    /// See [`Kind::summary`].
    pub fn summary(&self) -> String {
        self.kind().summary()
    }

    /// See [`Kind::size`].
    pub fn size(&self, sizing: &mut Sizing<'_>) -> Option<u64> {
        self.kind().size(sizing)
    }

    /// See [`Kind::check_host`].
    pub fn check_host(&self, host: &mut Host<'_>) {
        self.kind().check_host(host)
    }

    /// See [`Kind::live_changes`]; nothing when `new` is of another type.
    pub fn live_changes(&self, new: &LayerSpec) -> Vec<(LiveChange, &'static [&'static str])> {
        self.kind().live_changes(new.kind().as_any())
    }

    /// See [`Kind::apply_live`].
    pub fn apply_live(&mut self, change: &LiveChange) {
        self.kind_mut().apply_live(change)
    }

    /// See [`Kind::prepare`].
    pub fn prepare(&self) -> Result<Option<Box<dyn Any>>, String> {
        self.kind().prepare()
    }

    /// See [`Kind::open`].
    pub fn open(&self, opening: &mut Opening<'_>) -> Result<Opened, String> {
        self.kind().open(opening)
    }

    /// The keys a reload may change on a running device.
    pub fn live_keys(&self) -> Vec<&'static str> {
        self.info()
            .keys
            .iter()
            .filter(|key| key.live)
            .map(|key| key.name)
            .collect()
    }
}

#[cfg(test)]
mod tests;
