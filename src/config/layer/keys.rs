//! The config reader's side of [`KeyReader`]: a kind reads its keys through
//! this, and each problem is reported at its place in the file.

use std::path::PathBuf;

use layers::kinds::{Item, KeyReader};
use layers::plan::LayerId;

use super::LayerContext;
use crate::config::error::Span;
use crate::config::fields::Reader;
use crate::config::raw::{self, RawLayer};
use crate::config::schema::{KeyName, LayerKey};
use crate::config::suggest::closest;

/// The keys of one layer that its type takes; records where each value is.
pub(super) struct LayerKeys<'a, 'p> {
    pub(super) raw: &'a RawLayer,
    pub(super) allowed: Vec<LayerKey>,
    pub(super) spans: Vec<(&'static str, Span)>,
    pub(super) reader: Reader<'p>,
    pub(super) context: &'a LayerContext<'a>,
}

impl<'a> LayerKeys<'a, '_> {
    fn item(&self, item: Item) -> &'a raw::Item {
        &self.raw.section.fields[item.index()].item
    }
}

impl KeyReader for LayerKeys<'_, '_> {
    fn block_size(&self) -> u64 {
        self.context.block_size
    }

    fn get(&mut self, key: &'static str) -> Option<Item> {
        if !self.allowed.contains(&LayerKey(key)) {
            return None;
        }
        let fields = &self.raw.section.fields;
        let index = fields.iter().position(|field| field.key.as_str() == key)?;
        self.spans.push((key, fields[index].item.span.clone()));
        Some(Item::new(key, index))
    }

    /// Reports a missing key, unless a misspelling of it is there: that one is
    /// reported as unknown with a did-you-mean, which says it all.
    fn require(&mut self, key: &'static str, hint: &str) -> Option<Item> {
        let item = self.get(key);
        let misspelt = self
            .raw
            .section
            .unknown
            .iter()
            .any(|unknown| closest(&unknown.name, [key]).is_some());
        if item.is_none() && !misspelt {
            self.reader.report(
                &self.raw.section.span,
                format!("missing key \"{key}\": {hint}"),
            );
        }
        item
    }

    fn report(&mut self, item: Item, message: String) {
        let span = &self.item(item).span;
        self.reader.report(span, message);
    }

    fn report_layer(&mut self, message: String) {
        self.reader.report(&self.raw.section.span, message);
    }

    fn unknown_keys(&self) -> Vec<String> {
        let unknown = &self.raw.section.unknown;
        unknown.iter().map(|unknown| unknown.name.clone()).collect()
    }

    fn position(&self, item: Item) -> usize {
        self.item(item).span.start
    }

    fn string(&mut self, item: Item) -> Option<String> {
        let value = self.item(item);
        self.reader.string(item.key(), value).map(str::to_owned)
    }

    fn boolean(&mut self, item: Item) -> Option<bool> {
        let value = self.item(item);
        self.reader.boolean(item.key(), value)
    }

    fn integer(&mut self, item: Item, min: i64, max: i64) -> Option<i64> {
        let value = self.item(item);
        self.reader.integer(item.key(), value, min, max)
    }

    fn size(&mut self, item: Item) -> Option<u64> {
        let value = self.item(item);
        self.reader.size(item.key(), value, self.context.block_size)
    }

    fn choice(&mut self, item: Item, names: &[&'static str]) -> Option<&'static str> {
        let value = self.item(item);
        self.reader.choice(item.key(), value, names, |word| {
            names.iter().copied().find(|name| *name == word)
        })
    }

    fn names(&mut self, item: Item) -> Option<Vec<String>> {
        let value = self.item(item);
        let names = self.reader.names(item.key(), value)?;
        Some(names.into_iter().map(|(name, _)| name).collect())
    }

    fn rate(&mut self, item: Item) -> Option<f64> {
        let value = self.item(item);
        self.reader.rate(item.key(), value)
    }

    fn duration_us(&mut self, item: Item) -> Option<u64> {
        let value = self.item(item);
        self.reader.duration_us(item.key(), value)
    }

    fn range(&mut self, item: Item) -> Option<(u64, u64)> {
        let value = self.item(item);
        self.reader
            .range(item.key(), value, self.context.block_size)
    }

    fn path(&mut self, item: Item) -> Option<PathBuf> {
        let value = self.item(item);
        self.reader.path(item.key(), value, self.context.base_dir)
    }

    fn layer_id(&self, name: &str) -> Option<LayerId> {
        self.context.index.get(name).copied()
    }
}
