//! The words of schema v1: sections, keys, layer types, and which keys each type
//! takes. Everything else in `config` names keys through these enums, so a key is
//! spelt as a string in exactly one place.

/// A set of key names that can be listed and printed (for did-you-mean).
pub trait KeyName: Copy + PartialEq + 'static {
    const ALL: &'static [Self];
    fn as_str(self) -> &'static str;

    fn from_str(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|key| key.as_str() == name)
    }
}

macro_rules! key_enum {
    ($(#[$doc:meta])* $name:ident { $($variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum $name { $($variant),+ }

        impl KeyName for $name {
            const ALL: &'static [Self] = &[$($name::$variant),+];
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

key_enum!(
    /// Every key any `[layers.NAME]` table may hold; [`LayerType::keys`] says
    /// which ones a given type takes.
    LayerKey {
        Type = "type",
        Path = "path",
        Size = "size",
        Create = "create",
        Direct = "direct",
        Stripes = "stripes",
        Chunk = "chunk",
        Legs = "legs",
        ReadPolicy = "read_policy",
        Over = "over",
        Capacity = "capacity",
        Mode = "mode",
        Algorithm = "algorithm",
        Cipher = "cipher",
        KeyFile = "key_file",
        KeyEnv = "key_env",
        ReadErrorRate = "read_error_rate",
        WriteErrorRate = "write_error_rate",
        Delay = "delay",
        Range = "range",
    }
);

key_enum!(
    /// The `type = "…"` words.
    LayerType {
        File = "file",
        Disk = "disk",
        Memory = "memory",
        Null = "null",
        Raid0 = "raid0",
        Mirror = "mirror",
        Cache = "cache",
        Compress = "compress",
        Crypt = "crypt",
        Checksum = "checksum",
        Fault = "fault",
    }
);

impl LayerType {
    /// The keys a layer of this type takes, `type` first.
    pub fn keys(self) -> &'static [LayerKey] {
        use LayerKey as K;
        match self {
            LayerType::File => &[K::Type, K::Path, K::Size, K::Create, K::Direct],
            LayerType::Disk => &[K::Type, K::Path, K::Direct],
            LayerType::Memory | LayerType::Null => &[K::Type, K::Size],
            LayerType::Raid0 => &[K::Type, K::Stripes, K::Chunk],
            LayerType::Mirror => &[K::Type, K::Legs, K::ReadPolicy],
            LayerType::Cache => &[K::Type, K::Over, K::Capacity, K::Mode],
            LayerType::Compress => &[K::Type, K::Over, K::Algorithm, K::Size],
            LayerType::Crypt => &[K::Type, K::Over, K::Cipher, K::KeyFile, K::KeyEnv],
            LayerType::Checksum => &[K::Type, K::Over, K::Algorithm],
            LayerType::Fault => &[
                K::Type,
                K::Over,
                K::ReadErrorRate,
                K::WriteErrorRate,
                K::Delay,
                K::Range,
            ],
        }
    }

    /// The type a user probably means by a word from other storage tools
    /// (`raid1`, `ramdisk`, `luks`), for "did you mean" where spelling
    /// distance would mislead (`raid1` is one letter from `raid0`).
    pub fn synonym(word: &str) -> Option<LayerType> {
        Some(match word.to_ascii_lowercase().as_str() {
            "raid1" | "mirrored" | "mirroring" => LayerType::Mirror,
            "stripe" | "striped" | "striping" => LayerType::Raid0,
            "image" | "img" | "loop" | "regular" => LayerType::File,
            "block" | "blockdev" | "device" | "dev" | "raw" => LayerType::Disk,
            "ram" | "ramdisk" | "mem" | "tmpfs" => LayerType::Memory,
            "zero" | "zeros" | "blackhole" => LayerType::Null,
            "encrypt" | "encrypted" | "encryption" | "luks" | "dm-crypt" => LayerType::Crypt,
            "compression" | "compressed" | "lz4" => LayerType::Compress,
            "crc" | "crc32" | "integrity" | "checksums" => LayerType::Checksum,
            "error" | "errors" | "faults" | "flaky" | "delay" => LayerType::Fault,
            "caching" | "bcache" | "writeback" => LayerType::Cache,
            _ => return None,
        })
    }

    /// The types that take `key`, for "this key belongs to … layers" hints.
    pub fn types_taking(key: LayerKey) -> Vec<LayerType> {
        LayerType::ALL
            .iter()
            .copied()
            .filter(|layer_type| layer_type.keys().contains(&key))
            .collect()
    }
}

/// Names of `items`, for messages: `a, b, c`.
pub fn list<K: KeyName>(items: &[K]) -> String {
    items
        .iter()
        .map(|item| item.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}
