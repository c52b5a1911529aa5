//! Durations for `fault.delay`: an integer is microseconds; a string is a whole
//! number and a unit `us` (or `µs`), `ms` or `s`.

/// The longest delay accepted. Longer delays would only trip the kernel's I/O
/// timeout (30 s by default) and look like a hung device, not a slow one.
pub const MAX_DELAY_US: u64 = 60_000_000;

/// Parses `"10ms"`, `"500us"`, `"1s"`, `"0"` into microseconds; the error is the
/// reason, for the caller to prefix with the key.
pub fn parse_duration_us(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let number_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(number_end);
    let unit = unit.trim_start();
    let format_hint = "write a whole number and a unit: \"500us\", \"10ms\" or \"1s\" \
                       (a bare integer is microseconds)";
    if text.starts_with('-') {
        return Err("cannot be negative".into());
    }
    if number.is_empty() {
        return Err(format!("is not a duration; {format_hint}"));
    }
    let multiplier: u64 = match unit {
        "" | "us" | "µs" => 1,
        "ms" => 1_000,
        "s" => 1_000_000,
        _ if unit.starts_with('.') => {
            return Err(format!("must be a whole number; {format_hint}"));
        }
        _ => return Err(format!("has unknown unit \"{unit}\"; {format_hint}")),
    };
    let count: u64 = number.parse().map_err(|_| "is far too long".to_string())?;
    count
        .checked_mul(multiplier)
        .ok_or_else(|| "is far too long".to_string())
}

/// The largest whole unit that fits, as a file would say it: `10ms`, `1s`, `250us`.
pub fn format_duration_us(micros: u64) -> String {
    if micros != 0 && micros % 1_000_000 == 0 {
        format!("{}s", micros / 1_000_000)
    } else if micros != 0 && micros % 1_000 == 0 {
        format!("{}ms", micros / 1_000)
    } else {
        format!("{micros}us")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_convert_to_microseconds() {
        assert_eq!(parse_duration_us("500us"), Ok(500));
        assert_eq!(parse_duration_us("500µs"), Ok(500));
        assert_eq!(parse_duration_us("10ms"), Ok(10_000));
        assert_eq!(parse_duration_us("1s"), Ok(1_000_000));
        assert_eq!(parse_duration_us("0"), Ok(0));
        assert_eq!(parse_duration_us("250"), Ok(250));
    }

    #[test]
    fn malformed_durations_are_refused() {
        assert!(parse_duration_us("ms").is_err());
        assert!(parse_duration_us("-5ms").is_err());
        assert!(parse_duration_us("1.5s").is_err());
        assert!(parse_duration_us("10 minutes")
            .unwrap_err()
            .contains("unknown unit \"minutes\""));
        assert!(parse_duration_us("99999999999999999999s").is_err());
    }
}
