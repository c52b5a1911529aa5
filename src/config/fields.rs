//! Typed readers for single values: each returns the value or reports one
//! specific problem (wrong type, out of range, misaligned) and returns `None`,
//! so validation goes on and every mistake in the file is found.

use std::path::{Path, PathBuf};

use super::duration::{parse_duration_us, MAX_DELAY_US};
use super::error::{Problems, Span};
use super::raw::{Item, Value};
use super::size::{format_exact, parse_size};
use super::suggest::did_you_mean;

/// Reports problems about one section: the device, the log, or one layer.
pub struct Reader<'p> {
    pub problems: &'p mut Problems,
    /// The layer being read, for the `layer "x":` prefix.
    pub layer: Option<&'p str>,
}

impl Reader<'_> {
    pub fn report(&mut self, span: &Span, message: impl Into<String>) {
        match self.layer {
            Some(layer) => self.problems.at_layer(span, layer, message),
            None => self.problems.at(span, message),
        }
    }

    pub fn wrong_type(&mut self, name: &str, expected: &str, item: &Item) {
        if let Value::Invalid(reason) = &item.value {
            self.report(&item.span, format!("{name}: {reason}"));
            return;
        }
        let mut message = format!("{name} must be {expected}, not {}", item.value.kind());
        if let Some(hint) = literal_hint(name, expected, &item.value) {
            message.push_str(&hint);
        }
        self.report(&item.span, message);
    }

    pub fn string<'a>(&mut self, name: &str, item: &'a Item) -> Option<&'a str> {
        match &item.value {
            Value::String(text) => Some(text),
            _ => {
                self.wrong_type(name, "a string in quotes", item);
                None
            }
        }
    }

    pub fn boolean(&mut self, name: &str, item: &Item) -> Option<bool> {
        match &item.value {
            Value::Boolean(flag) => Some(*flag),
            _ => {
                self.wrong_type(name, "true or false", item);
                None
            }
        }
    }

    pub fn integer(&mut self, name: &str, item: &Item, min: i64, max: i64) -> Option<i64> {
        let number = match &item.value {
            Value::Integer(number) => *number,
            _ => {
                self.wrong_type(name, "an integer", item);
                return None;
            }
        };
        if number < min || number > max {
            self.report(
                &item.span,
                format!("{name} must be between {min} and {max}, not {number}"),
            );
            return None;
        }
        Some(number)
    }

    /// A size in bytes: a non-negative integer, or a string with a unit. It must
    /// be above zero and a multiple of `block_size`.
    pub fn size(&mut self, name: &str, item: &Item, block_size: u64) -> Option<u64> {
        let bytes = self.size_value(name, item)?;
        if bytes == 0 {
            self.report(&item.span, format!("{name} must be greater than zero"));
            return None;
        }
        self.aligned(name, item, bytes, block_size)
    }

    /// Like [`Reader::size`] but zero is allowed (range starts).
    pub fn offset(&mut self, name: &str, item: &Item, block_size: u64) -> Option<u64> {
        let bytes = self.size_value(name, item)?;
        self.aligned(name, item, bytes, block_size)
    }

    fn size_value(&mut self, name: &str, item: &Item) -> Option<u64> {
        match &item.value {
            Value::Integer(number) => match u64::try_from(*number) {
                Ok(bytes) => Some(bytes),
                Err(_) => {
                    self.report(&item.span, format!("{name} cannot be negative ({number})"));
                    None
                }
            },
            Value::String(text) => match parse_size(text) {
                Ok(bytes) => Some(bytes),
                Err(reason) => {
                    self.report(&item.span, format!("{name} \"{text}\" {reason}"));
                    None
                }
            },
            _ => {
                self.wrong_type(
                    name,
                    "a size: bytes as an integer, or a string like \"4GiB\"",
                    item,
                );
                None
            }
        }
    }

    fn aligned(&mut self, name: &str, item: &Item, bytes: u64, block_size: u64) -> Option<u64> {
        if bytes % block_size == 0 {
            return Some(bytes);
        }
        let below = bytes - bytes % block_size;
        let above = below.checked_add(block_size);
        let mut message = format!(
            "{name} = {} is not a multiple of the block size ({block_size} bytes); ",
            format_exact(bytes)
        );
        match (below, above) {
            (0, Some(above)) => message.push_str(&format!("try {}", format_exact(above))),
            (below, Some(above)) => message.push_str(&format!(
                "try {} or {}",
                format_exact(below),
                format_exact(above)
            )),
            (below, None) => message.push_str(&format!("try {}", format_exact(below))),
        }
        self.report(&item.span, message);
        None
    }

    /// One of a fixed set of words, with a did-you-mean for a misspelling.
    pub fn choice<T>(
        &mut self,
        name: &str,
        item: &Item,
        names: &[&'static str],
        parse: impl Fn(&str) -> Option<T>,
    ) -> Option<T> {
        let text = self.string(name, item)?;
        if let Some(choice) = parse(text) {
            return Some(choice);
        }
        let message = match names {
            [only] => format!(
                "{name} \"{text}\" is not supported; this version knows only \"{only}\" \
                 (or leave {name} out)"
            ),
            _ => format!(
                "{name} \"{text}\" is not one of: {}{}",
                names.join(", "),
                did_you_mean(text, names.iter().copied())
            ),
        };
        self.report(&item.span, message);
        None
    }

    /// A list of layer names, with each name's span for reference errors.
    pub fn names(&mut self, name: &str, item: &Item) -> Option<Vec<(String, Span)>> {
        let Value::Array(elements) = &item.value else {
            self.wrong_type(name, "a list of layer names, like [\"a\", \"b\"]", item);
            return None;
        };
        let mut names = Vec::with_capacity(elements.len());
        let mut ok = true;
        for element in elements {
            match &element.value {
                Value::String(text) => names.push((text.clone(), element.span.clone())),
                _ => {
                    self.wrong_type(
                        &format!("each entry of {name}"),
                        "a layer name in quotes",
                        element,
                    );
                    ok = false;
                }
            }
        }
        ok.then_some(names)
    }

    /// A probability: a number from 0 to 1 (integers 0 and 1 included).
    pub fn rate(&mut self, name: &str, item: &Item) -> Option<f64> {
        let rate = match &item.value {
            Value::Float(rate) => *rate,
            Value::Integer(0) => 0.0,
            Value::Integer(1) => 1.0,
            Value::Integer(number) => {
                self.report(
                    &item.span,
                    format!(
                        "{name} is a probability from 0.0 to 1.0, not {number} (for 1% write 0.01)"
                    ),
                );
                return None;
            }
            _ => {
                self.wrong_type(name, "a number from 0.0 to 1.0", item);
                return None;
            }
        };
        if !(0.0..=1.0).contains(&rate) {
            self.report(
                &item.span,
                format!("{name} is a probability from 0.0 to 1.0, not {rate} (for 1% write 0.01)"),
            );
            return None;
        }
        Some(rate)
    }

    pub fn duration_us(&mut self, name: &str, item: &Item) -> Option<u64> {
        let micros = match &item.value {
            Value::Integer(number) => match u64::try_from(*number) {
                Ok(micros) => micros,
                Err(_) => {
                    self.report(&item.span, format!("{name} cannot be negative"));
                    return None;
                }
            },
            Value::String(text) => match parse_duration_us(text) {
                Ok(micros) => micros,
                Err(reason) => {
                    self.report(&item.span, format!("{name} \"{text}\" {reason}"));
                    return None;
                }
            },
            _ => {
                self.wrong_type(
                    name,
                    "a duration like \"10ms\", \"500us\" or \"1s\", or an integer of microseconds",
                    item,
                );
                return None;
            }
        };
        if micros > MAX_DELAY_US {
            self.report(
                &item.span,
                format!("{name} must be at most 60s; longer delays trip the kernel's I/O timeout"),
            );
            return None;
        }
        Some(micros)
    }

    /// `[start, end]` as sizes, start before end, both block-aligned.
    pub fn range(&mut self, name: &str, item: &Item, block_size: u64) -> Option<(u64, u64)> {
        let expected = "a list of two sizes [start, end], like [0, \"1GiB\"]";
        let Value::Array(bounds) = &item.value else {
            self.wrong_type(name, expected, item);
            return None;
        };
        let [start, end] = bounds.as_slice() else {
            self.report(
                &item.span,
                format!("{name} must be {expected}, not a list of {}", bounds.len()),
            );
            return None;
        };
        let start_bytes = self.offset(&format!("{name} start"), start, block_size);
        let end_bytes = self.offset(&format!("{name} end"), end, block_size);
        let (start_bytes, end_bytes) = (start_bytes?, end_bytes?);
        if start_bytes >= end_bytes {
            self.report(
                &item.span,
                format!(
                    "{name} must have start below end, not [{}, {}]",
                    format_exact(start_bytes),
                    format_exact(end_bytes)
                ),
            );
            return None;
        }
        Some((start_bytes, end_bytes))
    }

    /// A path; relative paths are taken from the config file's folder.
    pub fn path(&mut self, name: &str, item: &Item, base_dir: &Path) -> Option<PathBuf> {
        let text = self.string(name, item)?;
        if text.trim().is_empty() {
            self.report(&item.span, format!("{name} is empty"));
            return None;
        }
        if text.starts_with('~') {
            self.report(
                &item.span,
                format!(
                    "{name} \"{text}\": \"~\" is not expanded; write an absolute path or one relative to the config file"
                ),
            );
            return None;
        }
        Some(base_dir.join(text))
    }
}

/// ` (write queues = 2, without quotes)` when the value the user meant is
/// obvious: a quoted number or boolean, or 0/1 for a boolean.
fn literal_hint(name: &str, expected: &str, value: &Value) -> Option<String> {
    // The key as written inside its table: `queues`, not `device.queues`.
    let key = name.rsplit('.').next().unwrap_or(name);
    let wants_boolean = expected == "true or false";
    match value {
        Value::String(text) if wants_boolean => {
            let flag = match text.trim().to_ascii_lowercase().as_str() {
                "true" | "yes" | "on" => "true",
                "false" | "no" | "off" => "false",
                _ => return None,
            };
            Some(format!(" (write {key} = {flag}, without quotes)"))
        }
        Value::String(text) => {
            let bare = text.trim();
            let numeric = bare.parse::<i64>().is_ok() || bare.parse::<f64>().is_ok();
            (numeric && !expected.contains("string"))
                .then(|| format!(" (write {key} = {bare}, without quotes)"))
        }
        Value::Integer(number @ (0 | 1)) if wants_boolean => {
            Some(format!(" (write {key} = {})", *number == 1))
        }
        _ => None,
    }
}
