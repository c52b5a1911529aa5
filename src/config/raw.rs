//! The TOML text as written, with the position of every key and value.
//!
//! This is the only module that sees TOML types or looks keys up by string:
//! it turns the document into sections whose keys are the enums of
//! [`super::schema`], and keeps keys it does not know (with their spans) so
//! `validate` can report them with a suggestion that fits the layer's type.

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::error::{Problems, Span};
use super::schema::{DeviceKey, KeyName, LayerKey, LogKey, TopKey};

/// A TOML value reduced to what validation needs.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    String(String),
    Integer(i64),
    Float(f64),
    Boolean(bool),
    Array(Vec<Item>),
    /// An inline table or sub-table; its contents are never a valid value here.
    Table,
    Datetime,
    /// A value TOML accepts but that cannot be held (an integer beyond 64
    /// bits), with the reason; reported when validation reads the key, so the
    /// message names the layer.
    Invalid(String),
}

impl Value {
    /// "a string", "an integer", … for "must be X, not Y" messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::String(_) => "a string",
            Value::Integer(_) => "an integer",
            Value::Float(_) => "a decimal number",
            Value::Boolean(_) => "a boolean",
            Value::Array(_) => "a list",
            Value::Table => "a table",
            Value::Datetime => "a date",
            Value::Invalid(_) => "an invalid value",
        }
    }
}

/// A value and where it is.
#[derive(Clone, Debug, PartialEq)]
pub struct Item {
    pub span: Span,
    pub value: Value,
}

/// One `key = value` of a section.
#[derive(Clone, Debug, PartialEq)]
pub struct Field<K> {
    pub key: K,
    pub key_span: Span,
    pub item: Item,
}

/// A key the schema does not know anywhere in this section.
#[derive(Clone, Debug, PartialEq)]
pub struct UnknownKey {
    pub name: String,
    pub span: Span,
    /// Whether its value is a table: `[cache]` written for `[layers.cache]`.
    pub is_table: bool,
}

/// A table such as `[device]` or `[layers.a]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Section<K> {
    /// The table header (`[layers.a]`), or the inline table, for errors about
    /// the section as a whole such as a missing key.
    pub span: Span,
    /// Known keys, in file order.
    pub fields: Vec<Field<K>>,
    pub unknown: Vec<UnknownKey>,
}

impl<K: KeyName> Section<K> {
    pub fn get(&self, key: K) -> Option<&Field<K>> {
        self.fields.iter().find(|field| field.key == key)
    }
}

/// One `[layers.NAME]`.
#[derive(Clone, Debug, PartialEq)]
pub struct RawLayer {
    pub name: String,
    pub name_span: Span,
    pub section: Section<LayerKey>,
}

/// A top-level table that may be missing, present but not a table (already
/// reported here), or present.
#[derive(Clone, Debug, PartialEq)]
pub enum Part<T> {
    Missing,
    Broken,
    Found(T),
}

#[derive(Clone, Debug, PartialEq)]
pub struct RawConfig {
    pub version: Option<Field<TopKey>>,
    pub device: Part<Section<DeviceKey>>,
    pub log: Part<Section<LogKey>>,
    /// Every layer in file order; `Missing` when there is no `layers` table.
    pub layers: Part<Vec<RawLayer>>,
    pub unknown: Vec<UnknownKey>,
}

/// Parses `text`; on a TOML syntax error reports it and returns `None`.
pub fn parse(text: &str, problems: &mut Problems) -> Option<RawConfig> {
    let document = match DeTable::parse(text) {
        Ok(document) => document,
        Err(error) => {
            let span = error.span().unwrap_or(0..0);
            let message = syntax_message(error.message(), text.get(span.clone()));
            problems.at(&span, message);
            return None;
        }
    };
    let mut raw = RawConfig {
        version: None,
        device: Part::Missing,
        log: Part::Missing,
        layers: Part::Missing,
        unknown: Vec::new(),
    };
    for (key, value) in sorted(document.get_ref()) {
        let Some(top_key) = TopKey::from_str(key.get_ref()) else {
            raw.unknown.push(unknown(key, value));
            continue;
        };
        match top_key {
            TopKey::Version => {
                raw.version = Some(Field {
                    key: top_key,
                    key_span: key.span(),
                    item: item(value),
                });
            }
            TopKey::Device => raw.device = table_part(key, value, "[device]", problems),
            TopKey::Log => raw.log = table_part(key, value, "[log]", problems),
            TopKey::Layers => raw.layers = layers(key, value, problems),
        }
    }
    Some(raw)
}

/// Entries in file order: the map itself is ordered by key.
fn sorted<'t, 'i>(
    table: &'t DeTable<'i>,
) -> Vec<(
    &'t Spanned<std::borrow::Cow<'i, str>>,
    &'t Spanned<DeValue<'i>>,
)> {
    let mut entries: Vec<_> = table.iter().collect();
    entries.sort_by_key(|(key, _)| key.span().start);
    entries
}

fn unknown(key: &Spanned<std::borrow::Cow<'_, str>>, value: &Spanned<DeValue<'_>>) -> UnknownKey {
    UnknownKey {
        name: key.get_ref().to_string(),
        span: key.span(),
        is_table: matches!(value.get_ref(), DeValue::Table(_)),
    }
}

fn table_part<K: KeyName>(
    key: &Spanned<std::borrow::Cow<'_, str>>,
    value: &Spanned<DeValue<'_>>,
    header: &str,
    problems: &mut Problems,
) -> Part<Section<K>> {
    match value.get_ref() {
        DeValue::Table(table) => Part::Found(section(value.span(), table)),
        other => {
            problems.at(
                &key.span(),
                format!(
                    "\"{}\" must be a table: write {header} on its own line, with its keys below it (found {})",
                    key.get_ref(),
                    de_kind(other)
                ),
            );
            Part::Broken
        }
    }
}

fn section<K: KeyName>(span: Span, table: &DeTable<'_>) -> Section<K> {
    let mut section = Section {
        span,
        fields: Vec::new(),
        unknown: Vec::new(),
    };
    for (key, value) in sorted(table) {
        match K::from_str(key.get_ref()) {
            Some(known) => section.fields.push(Field {
                key: known,
                key_span: key.span(),
                item: item(value),
            }),
            None => section.unknown.push(unknown(key, value)),
        }
    }
    section
}

fn layers(
    key: &Spanned<std::borrow::Cow<'_, str>>,
    value: &Spanned<DeValue<'_>>,
    problems: &mut Problems,
) -> Part<Vec<RawLayer>> {
    let table = match value.get_ref() {
        DeValue::Table(table) => table,
        DeValue::Array(_) => {
            problems.at(
                &key.span(),
                "layers must be named tables: write [layers.NAME] for each layer, not [[layers]]",
            );
            return Part::Broken;
        }
        other => {
            problems.at(
                &key.span(),
                format!(
                    "layers must be a table of layers: write [layers.NAME] for each layer (found {})",
                    de_kind(other)
                ),
            );
            return Part::Broken;
        }
    };
    let mut layers = Vec::new();
    for (name, value) in sorted(table) {
        match value.get_ref() {
            DeValue::Table(layer) => layers.push(RawLayer {
                name: name.get_ref().to_string(),
                name_span: name.span(),
                section: section(value.span(), layer),
            }),
            other => problems.at_layer(
                &name.span(),
                name.get_ref(),
                format!(
                    "a layer must be a table: write [layers.{}] with its keys below it (found {})",
                    name.get_ref(),
                    de_kind(other)
                ),
            ),
        }
    }
    if layers.is_empty() && !table.is_empty() {
        // Every entry was reported as not a table; "no layers" would repeat it.
        return Part::Broken;
    }
    Part::Found(layers)
}

fn item(value: &Spanned<DeValue<'_>>) -> Item {
    let span = value.span();
    let value = match value.get_ref() {
        DeValue::String(text) => Value::String(text.to_string()),
        DeValue::Integer(integer) => {
            let digits = integer.as_str().replace('_', "");
            match i64::from_str_radix(&digits, integer.radix()) {
                Ok(number) => Value::Integer(number),
                Err(_) => Value::Invalid(
                    "this integer does not fit in 64 bits; TOML integers range from \
                     -2^63 to 2^63-1 (for large sizes write a string like \"4TiB\")"
                        .into(),
                ),
            }
        }
        DeValue::Float(float) => match float.as_str().replace('_', "").parse::<f64>() {
            Ok(number) => Value::Float(number),
            Err(_) => Value::Invalid("this number cannot be read as a decimal number".into()),
        },
        DeValue::Boolean(flag) => Value::Boolean(*flag),
        DeValue::Datetime(_) => Value::Datetime,
        DeValue::Array(array) => Value::Array(array.iter().map(item).collect()),
        DeValue::Table(_) => Value::Table,
    };
    Item { span, value }
}

fn de_kind(value: &DeValue<'_>) -> &'static str {
    match value {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a decimal number",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date",
        DeValue::Array(_) => "a list",
        DeValue::Table(_) => "a table",
    }
}

/// The parser's message, reworded where a new user would not recognise the
/// mistake: an unquoted word is reported as "invalid boolean" when it starts
/// with `t` or `f`, and a second key on a line as "expected newline".
fn syntax_message(message: &str, unexpected: Option<&str>) -> String {
    let message = message.trim_end_matches(", expected nothing");
    let unexpected = unexpected.unwrap_or_default().trim();
    let bare_word = !unexpected.is_empty()
        && unexpected
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | '.' | '/' | ' '));
    let reworded = if message.starts_with("invalid boolean")
        && (unexpected.eq_ignore_ascii_case("true") || unexpected.eq_ignore_ascii_case("false"))
    {
        format!(
            "booleans are lower case: write {}",
            unexpected.to_ascii_lowercase()
        )
    } else if bare_word
        && (message.starts_with("string values must be quoted")
            || message.starts_with("invalid boolean"))
    {
        format!(
            "{unexpected} must be in quotes: write \"{unexpected}\" (text values are quoted in TOML)"
        )
    } else if message.starts_with("invalid boolean") {
        "booleans are written true or false, in lower case".into()
    } else if message == "duplicate key" {
        format!("\"{unexpected}\" is defined twice; each key and each [table] may appear only once")
    } else if message.starts_with("invalid basic string")
        || message.starts_with("invalid literal string")
    {
        "unterminated string: the closing quote is missing".into()
    } else if message.starts_with("unexpected key or value, expected newline") {
        "unexpected text after the value: put each key = value, and each [table], on a line \
         of its own, without commas between them"
            .into()
    } else if message.starts_with("key with no value") {
        "key with no value: write key = value".into()
    } else {
        message.to_owned()
    };
    format!("TOML syntax error: {reworded}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_ok(text: &str) -> RawConfig {
        let mut problems = Problems::default();
        let raw = parse(text, &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        raw.expect("parses")
    }

    #[test]
    fn layers_come_in_file_order_with_known_and_unknown_keys() {
        let raw = parse_ok(
            "version = 1\n[layers.z]\ntype = \"memory\"\nsise = 1\n[layers.a]\ntype = \"null\"\n",
        );
        let Part::Found(layers) = raw.layers else {
            panic!("layers missing")
        };
        let names: Vec<_> = layers.iter().map(|layer| layer.name.as_str()).collect();
        assert_eq!(names, ["z", "a"]);
        assert_eq!(layers[0].section.unknown[0].name, "sise");
        assert_eq!(
            layers[0].section.get(LayerKey::TYPE).map(|f| &f.item.value),
            Some(&Value::String("memory".into()))
        );
    }

    #[test]
    fn unquoted_word_is_reported_as_needing_quotes() {
        let mut problems = Problems::default();
        assert!(parse("type = file\n", &mut problems).is_none());
        let errors = problems.into_errors("x.toml", "type = file\n");
        assert_eq!(
            errors.to_string(),
            "x.toml:1:8: TOML syntax error: file must be in quotes: write \"file\" (text values are quoted in TOML)"
        );
    }

    #[test]
    fn integer_beyond_64_bits_is_kept_as_invalid_with_its_reason() {
        let raw = parse_ok("version = 99999999999999999999\n");
        let version = raw.version.expect("version");
        assert!(
            matches!(&version.item.value, Value::Invalid(reason) if reason.contains("64 bits"))
        );
    }
}
