//! Sizes: integers are bytes; strings are a whole number and a binary unit
//! (`B`, `KiB`, `MiB`, `GiB`, `TiB`, or `K`, `M`, `G`, `T` for the same).

use std::fmt;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const TIB: u64 = 1 << 40;

/// Unit words and their value, the preferred spelling first for each value.
const UNITS: [(&str, u64); 10] = [
    ("B", 1),
    ("", 1),
    ("KiB", KIB),
    ("K", KIB),
    ("MiB", MIB),
    ("M", MIB),
    ("GiB", GIB),
    ("G", GIB),
    ("TiB", TIB),
    ("T", TIB),
];

/// Why a size string was refused. `Display` gives the reason; the caller adds
/// which key it was.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SizeError {
    Empty,
    Negative,
    /// No digits before the unit, or garbage in the number.
    NotANumber,
    /// `1.5GiB`: fractions are refused; carries the exact equivalent if there is one.
    Fraction {
        exact: Option<String>,
    },
    UnknownUnit {
        unit: String,
        suggestion: Option<&'static str>,
    },
    /// More than 2^64 - 1 bytes.
    Overflow,
}

impl fmt::Display for SizeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SizeError::Empty => write!(f, "is empty; write a size like \"1GiB\""),
            SizeError::Negative => write!(f, "cannot be negative"),
            SizeError::NotANumber => write!(
                f,
                "is not a size; write a whole number and a unit, like \"512MiB\" or \"4GiB\""
            ),
            SizeError::Fraction { exact: Some(exact) } => write!(
                f,
                "must be a whole number of a unit; write \"{exact}\" instead"
            ),
            SizeError::Fraction { exact: None } => write!(
                f,
                "must be a whole number of a unit (no fractions), like \"1536MiB\""
            ),
            SizeError::UnknownUnit {
                unit,
                suggestion: Some(suggestion),
            } => write!(
                f,
                "has unknown unit \"{unit}\" (did you mean \"{suggestion}\"? sizes are binary: \
                 1KiB = 1024 bytes)"
            ),
            SizeError::UnknownUnit {
                unit,
                suggestion: None,
            } => write!(
                f,
                "has unknown unit \"{unit}\"; the units are B, KiB, MiB, GiB, TiB (or K, M, G, T)"
            ),
            SizeError::Overflow => write!(f, "is too large (more than 2^64 bytes)"),
        }
    }
}

/// Parses a size string such as `"4GiB"`, `"64 KiB"`, `"512"` (bytes).
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(SizeError::Empty);
    }
    if text.starts_with('-') {
        return Err(SizeError::Negative);
    }
    let number_end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '_'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(number_end);
    let number = number.replace('_', "");
    let unit = unit.trim_start();
    if number.is_empty() || number.starts_with('.') || number.matches('.').count() > 1 {
        return Err(SizeError::NotANumber);
    }
    let multiplier = unit_value(unit)?;
    if let Some((whole, fraction)) = number.split_once('.') {
        return Err(SizeError::Fraction {
            exact: exact_fraction(whole, fraction, multiplier),
        });
    }
    let count: u64 = number.parse().map_err(|_| SizeError::Overflow)?;
    count.checked_mul(multiplier).ok_or(SizeError::Overflow)
}

fn unit_value(unit: &str) -> Result<u64, SizeError> {
    if let Some((_, value)) = UNITS.iter().find(|(word, _)| *word == unit) {
        return Ok(*value);
    }
    // Decimal and lower-case spellings are common; point at the binary unit
    // rather than guess that "GB" means 10^9.
    let suggestion = match unit.to_ascii_lowercase().as_str() {
        "b" | "byte" | "bytes" => Some("B"),
        "k" | "kb" | "kib" => Some("KiB"),
        "m" | "mb" | "mib" => Some("MiB"),
        "g" | "gb" | "gib" => Some("GiB"),
        "t" | "tb" | "tib" => Some("TiB"),
        _ => None,
    };
    if !unit.chars().next().is_some_and(char::is_alphabetic) {
        return Err(SizeError::NotANumber);
    }
    Err(SizeError::UnknownUnit {
        unit: unit.to_owned(),
        suggestion,
    })
}

/// `1.5` GiB is exactly 1536MiB: offer that spelling if the bytes are whole.
fn exact_fraction(whole: &str, fraction: &str, multiplier: u64) -> Option<String> {
    let scale = 10u128.checked_pow(u32::try_from(fraction.len()).ok()?)?;
    let digits: u128 = format!("{whole}{fraction}").parse().ok()?;
    let scaled = digits.checked_mul(u128::from(multiplier))?;
    if scaled % scale != 0 {
        return None;
    }
    let bytes = u64::try_from(scaled / scale).ok()?;
    Some(format_exact(bytes))
}

/// The shortest exact spelling: `256MiB`, `4GiB`, or plain bytes `1000`.
pub fn format_exact(bytes: u64) -> String {
    for (word, value) in [("TiB", TIB), ("GiB", GIB), ("MiB", MIB), ("KiB", KIB)] {
        if bytes != 0 && bytes % value == 0 {
            return format!("{}{word}", bytes / value);
        }
    }
    bytes.to_string()
}

/// For people: `4 GiB`, `1.5 GiB`, `512 B`.
pub fn format_human(bytes: u64) -> String {
    for (word, value) in [("TiB", TIB), ("GiB", GIB), ("MiB", MIB), ("KiB", KIB)] {
        if bytes >= value {
            return if bytes % value == 0 {
                format!("{} {word}", bytes / value)
            } else {
                // Precision loss is fine: this is only for display.
                let amount = bytes as f64 / value as f64;
                format!("{amount:.1} {word}")
            };
        }
    }
    format!("{bytes} B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_units_and_their_short_forms_parse() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("512B"), Ok(512));
        assert_eq!(parse_size("64KiB"), Ok(64 * 1024));
        assert_eq!(parse_size("64K"), Ok(64 * 1024));
        assert_eq!(parse_size("256MiB"), Ok(256 << 20));
        assert_eq!(parse_size("4GiB"), Ok(4 << 30));
        assert_eq!(parse_size("4 G"), Ok(4 << 30));
        assert_eq!(parse_size("2TiB"), Ok(2 << 40));
        assert_eq!(parse_size("1_024MiB"), Ok(1 << 30));
    }

    #[test]
    fn decimal_and_lowercase_units_are_refused_with_the_binary_spelling() {
        assert_eq!(
            parse_size("4GB"),
            Err(SizeError::UnknownUnit {
                unit: "GB".into(),
                suggestion: Some("GiB")
            })
        );
        assert_eq!(
            parse_size("4gib"),
            Err(SizeError::UnknownUnit {
                unit: "gib".into(),
                suggestion: Some("GiB")
            })
        );
        assert!(matches!(
            parse_size("4PiB"),
            Err(SizeError::UnknownUnit {
                suggestion: None,
                ..
            })
        ));
    }

    #[test]
    fn fractions_are_refused_with_an_exact_equivalent() {
        assert_eq!(
            parse_size("1.5GiB"),
            Err(SizeError::Fraction {
                exact: Some("1536MiB".into())
            })
        );
        assert_eq!(
            parse_size("0.3KiB"),
            Err(SizeError::Fraction { exact: None })
        );
    }

    #[test]
    fn malformed_sizes_are_refused() {
        assert_eq!(parse_size(""), Err(SizeError::Empty));
        assert_eq!(parse_size("-1GiB"), Err(SizeError::Negative));
        assert_eq!(parse_size("GiB"), Err(SizeError::NotANumber));
        assert_eq!(parse_size("four"), Err(SizeError::NotANumber));
        assert_eq!(parse_size("1.2.3M"), Err(SizeError::NotANumber));
        assert_eq!(
            parse_size("4GiB!"),
            Err(SizeError::UnknownUnit {
                unit: "GiB!".into(),
                suggestion: None
            })
        );
    }

    #[test]
    fn overflow_is_refused_not_wrapped() {
        assert_eq!(parse_size("16777216TiB"), Err(SizeError::Overflow));
        assert_eq!(parse_size("99999999999999999999"), Err(SizeError::Overflow));
        assert_eq!(parse_size("16777215TiB"), Ok(16_777_215 << 40));
    }

    #[test]
    fn formats_round_trip_and_read_well() {
        assert_eq!(format_exact(256 << 20), "256MiB");
        assert_eq!(format_exact(4097), "4097");
        assert_eq!(format_exact(0), "0");
        assert_eq!(parse_size(&format_exact(3 << 40)), Ok(3 << 40));
        assert_eq!(format_human(4 << 30), "4 GiB");
        assert_eq!(format_human(3 << 29), "1.5 GiB");
        assert_eq!(format_human(512), "512 B");
    }
}
