//! `ublk-stack scrub NAME` and `ublk-stack readd NAME MIRROR LEG`: ask the
//! daemon, show the progress it sends (`display.rs`), print a summary. With
//! `--json`: the progress lines, then one `{"event": "done", ...}` line, or
//! `{"event": "error", "error": ...}` when the run fails.

use std::time::Duration;

use layers::escape::escape_controls;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use super::display::{print_json, Display};
use super::progress::{Event, ResyncCounts, ScrubCounts};
use crate::daemon::control;

/// How often the daemon sends a progress line.
const PROGRESS_MS: u64 = 500;
/// How long a scrub or rebuild may go without a line (a stuck leg).
const LINE_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// `ublk-stack scrub NAME [--json]`: exit 0 when clean or repaired, 1 when
/// anything was unrepairable or the scrub failed.
pub fn scrub_command(name: &str, json: bool) -> u8 {
    let display = Display::new(json, &format!("scrub {name}"));
    let request = json!({"cmd": "scrub", "progress_ms": PROGRESS_MS});
    let reply = ask::<ScrubCounts>(name, &request, LINE_TIMEOUT, &display, |counts| {
        match counts.repaired + counts.mismatched + counts.unrepairable {
            0 => String::new(),
            found => format!(", {found} bad copies"),
        }
    });
    let done = match reply.and_then(|reply| event::<ScrubCounts>(name, reply)) {
        Ok(done) => done,
        Err(e) => return fail(json, name, &e),
    };
    if json {
        print_json(&done);
    } else {
        println!(
            "{name}: scrubbed {}: {}",
            done.progress.describe_done(),
            done.counts.describe()
        );
    }
    u8::from(done.counts.unrepairable != 0)
}

/// `ublk-stack readd NAME MIRROR LEG [--json] [--no-wait]`: exit 0 once the
/// leg is rebuilt (at once with `--no-wait`), 1 when the re-add or the
/// rebuild failed or left blocks that no leg could read.
pub fn readd_command(name: &str, mirror: &str, leg: usize, json: bool, no_wait: bool) -> u8 {
    let mut request = json!({"cmd": "readd", "layer": mirror, "leg": leg, "wait": !no_wait});
    if !no_wait {
        request["progress_ms"] = json!(PROGRESS_MS);
    }
    let display = if no_wait {
        Display::Quiet
    } else {
        Display::new(json, &format!("rebuild {name}/{mirror}/{leg}"))
    };
    let reply = ask::<ResyncCounts>(name, &request, LINE_TIMEOUT, &display, |_| String::new());
    // A daemon of an older version answers at once, with no "event".
    let started = |reply: &Value| no_wait || reply.get("event").is_none();
    let done = match reply {
        Ok(reply) if started(&reply) => {
            if json {
                print_json(&json!({"event": "started", "mirror": mirror, "leg": leg}));
            } else {
                println!(
                    "{name}: leg {leg} of mirror \"{}\" re-added; rebuilding (see `status`)",
                    escape_controls(mirror)
                );
            }
            return 0;
        }
        Ok(reply) => event::<ResyncCounts>(name, reply),
        Err(e) => Err(e),
    };
    let done = match done {
        Ok(done) => done,
        Err(e) => return fail(json, name, &e),
    };
    let unreadable = done.counts.unreadable_blocks;
    if json {
        print_json(&done);
    } else {
        println!(
            "{name}: leg {leg} of mirror \"{}\" rebuilt: copied {}, {unreadable} unreadable blocks",
            escape_controls(mirror),
            done.progress.describe_done()
        );
    }
    u8::from(unreadable != 0)
}

/// Send `request` to device `name`, showing each progress line on `display`
/// (with `note` beside a bar), and return the reply, or its error.
fn ask<C: DeserializeOwned + serde::Serialize>(
    name: &str,
    request: &Value,
    timeout: Duration,
    display: &Display,
    note: impl Fn(&C) -> String,
) -> Result<Value, String> {
    let socket = control::find(name)?;
    let mut show = |line: &Value| {
        if let Ok(event) = serde_json::from_value::<Event<C>>(line.clone()) {
            display.progress(&event, note(&event.counts));
        }
    };
    let reply = control::request_with_progress(&socket, request, timeout, &mut show);
    display.finish();
    let reply = reply.map_err(|e| control::unreachable(name, &socket, &e))?;
    if reply["ok"] == true {
        Ok(reply)
    } else {
        Err(reply["error"].as_str().unwrap_or("failed").to_string())
    }
}

/// The final line of a reply.
fn event<C: DeserializeOwned>(name: &str, reply: Value) -> Result<Event<C>, String> {
    serde_json::from_value(reply)
        .map_err(|e| format!("{name}: a reply of another version of ublk-stack: {e}"))
}

fn fail(json: bool, name: &str, error: &str) -> u8 {
    if json {
        print_json(&json!({"event": "error", "error": error}));
    }
    eprintln!("ublk-stack: {name}: {}", escape_controls(error));
    1
}
