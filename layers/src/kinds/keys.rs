//! A kind's keys: how each is documented ([`Key`]) and how a kind reads them
//! ([`KeyReader`], implemented by the config reader, which knows the file,
//! its positions and how to word a problem).

use std::path::PathBuf;

use crate::params::LayerId;

/// What a key's value is, for the reference checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// A plain value: a size, a word, a path, a number.
    Value,
    /// The name of the one layer below (`over`).
    Layer,
    /// A list of names of the layers below (`legs`, `stripes`).
    Layers,
}

/// One key a kind takes: what the README's configuration reference says of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Key {
    pub name: &'static str,
    pub shape: Shape,
    /// Whether a reload may change it on a running device.
    pub live: bool,
    /// The value when the key is left out, as the README writes it, or
    /// "required" (possibly with a condition).
    pub default: &'static str,
    /// What the key sets, in a few words.
    pub doc: &'static str,
}

impl Key {
    /// A key that must be given.
    pub const fn required(name: &'static str, doc: &'static str) -> Key {
        Key {
            name,
            shape: Shape::Value,
            live: false,
            default: "required",
            doc,
        }
    }

    /// A key with a default.
    pub const fn optional(name: &'static str, default: &'static str, doc: &'static str) -> Key {
        Key {
            name,
            shape: Shape::Value,
            live: false,
            default,
            doc,
        }
    }

    /// `over`: the layer below.
    pub const fn over() -> Key {
        Key {
            shape: Shape::Layer,
            ..Key::required("over", "the name of the layer below")
        }
    }

    /// A list of the layers below.
    pub const fn layers(name: &'static str, doc: &'static str) -> Key {
        Key {
            shape: Shape::Layers,
            ..Key::required(name, doc)
        }
    }

    /// This key, changeable by a reload on a running device.
    pub const fn live(self) -> Key {
        Key { live: true, ..self }
    }

    /// Whether it names layers below.
    pub fn is_reference(&self) -> bool {
        self.shape != Shape::Value
    }
}

/// A key's value in the file, handed out by [`KeyReader::get`] and read by
/// the reader's typed methods. Problems about it are reported at its position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Item {
    key: &'static str,
    index: usize,
}

impl Item {
    /// For the reader: `index` is whatever finds the value again.
    pub fn new(key: &'static str, index: usize) -> Item {
        Item { key, index }
    }

    pub fn key(self) -> &'static str {
        self.key
    }

    pub fn index(self) -> usize {
        self.index
    }
}

/// How a kind reads the keys of one `[layers.NAME]` table. Each typed read
/// returns the value, or reports one specific problem (naming the key) and
/// returns `None`, so reading goes on and every mistake in the file is found.
pub trait KeyReader {
    /// The device's block size: sizes must be multiples of it.
    fn block_size(&self) -> u64;

    /// The value of `key`, if given (and the kind takes it).
    fn get(&mut self, key: &'static str) -> Option<Item>;

    /// The value of `key`; if it is missing, reports so with `hint` (unless a
    /// misspelling of it was reported already).
    fn require(&mut self, key: &'static str, hint: &str) -> Option<Item>;

    /// A problem with `item`'s value.
    fn report(&mut self, item: Item, message: String);

    /// A problem with the layer as a whole (at its `[layers.NAME]` line).
    fn report_layer(&mut self, message: String);

    /// The keys of this table that no kind takes, as written.
    fn unknown_keys(&self) -> Vec<String>;

    /// Where `item` is in the file, to tell which of two came later.
    fn position(&self, item: Item) -> usize;

    fn string(&mut self, item: Item) -> Option<String>;
    fn boolean(&mut self, item: Item) -> Option<bool>;
    /// An integer from `min` to `max`.
    fn integer(&mut self, item: Item, min: i64, max: i64) -> Option<i64>;
    /// A size in bytes, above zero and a multiple of the block size.
    fn size(&mut self, item: Item) -> Option<u64>;
    /// One of `names` (with a did-you-mean for a misspelling).
    fn choice(&mut self, item: Item, names: &[&'static str]) -> Option<&'static str>;
    /// A list of layer names.
    fn names(&mut self, item: Item) -> Option<Vec<String>>;
    /// A probability from 0 to 1.
    fn rate(&mut self, item: Item) -> Option<f64>;
    /// A duration, in microseconds.
    fn duration_us(&mut self, item: Item) -> Option<u64>;
    /// `[start, end]`: block-aligned sizes, start below end.
    fn range(&mut self, item: Item) -> Option<(u64, u64)>;
    /// A path, relative ones taken from the config file's folder.
    fn path(&mut self, item: Item) -> Option<PathBuf>;

    /// The layer named `name`; dangling names are reported by the graph checks.
    fn layer_id(&self, name: &str) -> Option<LayerId>;
}

impl dyn KeyReader + '_ {
    /// `key` read with `read`, or `default` when it is left out.
    pub fn optional<T>(
        &mut self,
        key: &'static str,
        default: T,
        read: impl FnOnce(&mut dyn KeyReader, Item) -> Option<T>,
    ) -> Option<T> {
        match self.get(key) {
            Some(item) => read(self, item),
            None => Some(default),
        }
    }

    /// `over`, resolved.
    pub fn over(&mut self) -> Option<LayerId> {
        let item = self.require("over", "the name of the layer below this one")?;
        let name = self.string(item)?;
        self.layer_id(&name)
    }

    /// `legs` or `stripes`: at least two names, all resolvable.
    pub fn children(&mut self, key: &'static str, what: &str) -> Option<Vec<LayerId>> {
        let hint = format!("the layers to {what}, like {key} = [\"a\", \"b\"]");
        let item = self.require(key, &hint)?;
        let names = self.names(item)?;
        if names.len() < 2 {
            self.report(
                item,
                format!(
                    "{key} needs at least 2 layers to {what}, not {}",
                    names.len()
                ),
            );
            return None;
        }
        let ids: Vec<_> = names
            .iter()
            .filter_map(|name| self.layer_id(name))
            .collect();
        (ids.len() == names.len()).then_some(ids)
    }

    /// An algorithm-like word with only one value in schema v1.
    pub fn fixed_word(&mut self, key: &'static str, only: &'static str) -> Option<String> {
        self.optional(key, only, |keys, item| keys.choice(item, &[only]))
            .map(str::to_owned)
    }

    /// The required `size` of a leaf that has no other source of it.
    pub fn leaf_size(&mut self, type_name: &str) -> Option<u64> {
        let hint = format!("how large the {type_name} device is, like size = \"1GiB\"");
        let item = self.require("size", &hint)?;
        self.size(item)
    }
}
