//! For tests of a batch device's handover: `UBLK_STACK_TEST_DRAIN_HOLD_MS=N`
//! makes a draining queue keep its FETCHes armed N ms longer before it lets
//! go of the device. Requests the kernel hands out meanwhile are left
//! unstarted, so a test sees them requeued (`requeued = N` in the log), which
//! otherwise only happens when a request arrives in the few microseconds
//! between the drain signal and the ring's close.

use std::time::Duration;

pub const ENV: &str = "UBLK_STACK_TEST_DRAIN_HOLD_MS";

/// The longest hold: the handover waits for it, with the device's I/O held.
const MAX_MS: u64 = 10_000;

/// From the environment; zero when unset.
pub fn from_env() -> Result<Duration, String> {
    parse(std::env::var(ENV).ok().as_deref())
}

fn parse(value: Option<&str>) -> Result<Duration, String> {
    match value {
        None | Some("") => Ok(Duration::ZERO),
        Some(text) => text
            .parse::<u64>()
            .ok()
            .filter(|&ms| ms <= MAX_MS)
            .map(Duration::from_millis)
            .ok_or_else(|| format!("{ENV}={text:?}: expected milliseconds from 0 to {MAX_MS}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_is_no_hold_and_a_number_is_milliseconds() {
        assert_eq!(parse(None), Ok(Duration::ZERO));
        assert_eq!(parse(Some("")), Ok(Duration::ZERO));
        assert_eq!(parse(Some("500")), Ok(Duration::from_millis(500)));
    }

    #[test]
    fn bad_values_are_named() {
        for bad in ["-1", "soon", "10001", "1.5"] {
            let why = parse(Some(bad)).unwrap_err();
            assert!(why.contains(ENV) && why.contains(bad), "{why}");
        }
    }
}
