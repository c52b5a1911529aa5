//! `fault`: injects errors and latency, for testing what is above it.

use super::{Key, KeyReader, Kind, Opened, Opening, Sizing};
use crate::fault::Fault;
use crate::params::{FaultKnobs, LayerId, LiveChange};
use crate::units::duration::format_duration_us;
use crate::units::size::{format_exact, format_human};

#[derive(Clone, Debug, PartialEq)]
pub struct FaultParams {
    pub over: LayerId,
    pub knobs: FaultKnobs,
}

const KNOBS: &[&str] = &["read_error_rate", "write_error_rate", "delay", "range"];

impl Kind for FaultParams {
    const NAME: &'static str = "fault";
    const KEYS: &'static [Key] = &[
        Key::over(),
        Key::optional(
            "read_error_rate",
            "0",
            "the chance (0 to 1) that a read fails",
        )
        .live(),
        Key::optional(
            "write_error_rate",
            "0",
            "the chance (0 to 1) that a write fails",
        )
        .live(),
        Key::optional("delay", "0", "latency added to each request").live(),
        Key::optional("range", "all", "the bytes [start, end] the faults apply to").live(),
    ];
    const SYNONYMS: &'static [&'static str] = &["error", "errors", "faults", "flaky", "delay"];
    const GROWS: bool = true;

    fn read(keys: &mut dyn KeyReader) -> Option<FaultParams> {
        let over = keys.over();
        let defaults = FaultKnobs::default();
        let read_error_rate = keys.optional("read_error_rate", defaults.read_error_rate, |k, i| {
            k.rate(i)
        });
        let write_error_rate =
            keys.optional("write_error_rate", defaults.write_error_rate, |k, i| {
                k.rate(i)
            });
        let delay_us = keys.optional("delay", defaults.delay_us, |k, i| k.duration_us(i));
        let range = keys.optional("range", defaults.range, |k, i| k.range(i).map(Some));
        Some(FaultParams {
            over: over?,
            knobs: FaultKnobs {
                read_error_rate: read_error_rate?,
                write_error_rate: write_error_rate?,
                delay_us: delay_us?,
                range: range?,
            },
        })
    }

    fn children(&self) -> Vec<LayerId> {
        vec![self.over]
    }

    fn values(&self, name: &dyn Fn(LayerId) -> String) -> Vec<(&'static str, Option<String>)> {
        let knobs = &self.knobs;
        let range = match knobs.range {
            Some((start, end)) => format!("[{}, {}]", format_exact(start), format_exact(end)),
            None => "all".to_string(),
        };
        vec![
            ("over", Some(name(self.over))),
            ("read_error_rate", Some(knobs.read_error_rate.to_string())),
            ("write_error_rate", Some(knobs.write_error_rate.to_string())),
            ("delay", Some(format_duration_us(knobs.delay_us))),
            ("range", Some(range)),
        ]
    }

    fn size(&self, sizing: &mut Sizing<'_>) -> Option<u64> {
        let lower = sizing.lower()?;
        match self.knobs.range {
            Some((_, end)) if end > lower => {
                sizing.report(
                    Some("range"),
                    format!(
                        "range ends at {} but the layer below is only {} ({lower} bytes)",
                        format_exact(end),
                        format_human(lower)
                    ),
                );
                None
            }
            _ => Some(lower),
        }
    }

    fn live_changes(&self, new: &Self) -> Vec<(LiveChange, &'static [&'static str])> {
        // Rates compare as bits: the same text parses to the same f64, and a
        // NaN (refused by validation anyway) must not look like a change.
        let (a, b) = (&self.knobs, &new.knobs);
        let same = a.read_error_rate.to_bits() == b.read_error_rate.to_bits()
            && a.write_error_rate.to_bits() == b.write_error_rate.to_bits()
            && a.delay_us == b.delay_us
            && a.range == b.range;
        if same {
            return Vec::new();
        }
        // The knobs travel together: one change for all four keys.
        vec![(LiveChange::Fault(b.clone()), KNOBS)]
    }

    fn apply_live(&mut self, change: &LiveChange) {
        if let LiveChange::Fault(knobs) = change {
            self.knobs = knobs.clone();
        }
    }

    fn open(&self, opening: &mut Opening<'_>) -> Result<Opened, String> {
        Ok(Opened::of(Fault::new(opening.child()?, self.knobs.clone())))
    }
}
