//! `ublk-stack status NAME [--json]`: the layer tree with counters, latency
//! percentiles and what each layer reports, the config generation and the
//! last reload.
//!
//! The daemon answers with a typed [`StatusReply`] (schema 1, documented in
//! docs/status.md); the client prints it as JSON (`--json`) or renders the
//! table from it. In JSON, numbers are numbers and times are seconds, so
//! scripts never parse units.

mod reply;

use std::time::{Duration, SystemTime};

use layers::escape::escape_controls;
use layers::LayerReport;
pub use reply::{Counters, Device, LayerStatus, StatusReply, UblkStatus, SCHEMA};

use super::control;
use super::reload::ReloadSummary;
use super::repair::progress::{percent, ScrubState};
use crate::config::size::format_human;

/// `ublk-stack status NAME [--json]`.
pub fn show(name: &str, as_json: bool) -> u8 {
    let socket = control::socket_path(name);
    let reply = match control::request(&socket, "status", Duration::from_secs(5)) {
        Ok(reply) => reply,
        Err(error) => return fail(control::unreachable(name, &socket, &error)),
    };
    if reply["ok"] != true {
        let error = reply["error"].as_str().unwrap_or("status failed");
        return fail(format!("{name}: {error}"));
    }
    let status: StatusReply = match serde_json::from_value(reply) {
        Ok(status) => status,
        Err(error) => return fail(format!("{name}: a status reply of another schema: {error}")),
    };
    if as_json {
        match serde_json::to_string(&status) {
            Ok(json) => println!("{json}"),
            Err(error) => return fail(format!("{name}: {error}")),
        }
    } else {
        print!("{}", render(&status, SystemTime::now()));
    }
    0
}

fn fail(message: String) -> u8 {
    eprintln!("ublk-stack: {}", escape_controls(&message));
    1
}

/// Names, paths and messages may come from a config file, so control
/// characters in them are escaped on a terminal.
fn text(value: &str) -> String {
    escape_controls(value).into_owned()
}

fn render(status: &StatusReply, now: SystemTime) -> String {
    let mut out = format!(
        "{}  {}  {}  {}  generation {}\n",
        text(&status.name),
        text(&status.path),
        format_human(status.size),
        status.state,
        status.generation,
    );
    if let Some(ublk) = &status.ublk {
        out.push_str(&render_ublk(ublk));
    }
    out.push_str(&render_last_reload(status.last_reload.as_ref(), now));
    out.push_str(&render_repairs(status, now));
    if let Some(url) = &status.metrics {
        out.push_str(&format!("metrics: {}\n", text(url)));
    }
    out.push_str(&format!(
        "{:<24} {:<8} {:>10} {:>10} {:>10} {:>8} {:>7} {:>15} {:>15}\n",
        "LAYER",
        "TYPE",
        "SIZE",
        "READS",
        "WRITES",
        "FLUSHES",
        "ERRORS",
        "READ p50/p99",
        "WRITE p50/p99"
    ));
    for layer in &status.layers {
        let stats = &layer.stats;
        let name = format!("{}{}", "  ".repeat(layer.depth), text(&layer.name));
        out.push_str(&format!(
            "{:<24} {:<8} {:>10} {:>10} {:>10} {:>8} {:>7} {:>15} {:>15}",
            name,
            layer.report.type_name(),
            format_human(layer.size),
            stats.reads,
            stats.writes,
            stats.flushes,
            stats.errors,
            latency_pair(stats.read_p50_s, stats.read_p99_s),
            latency_pair(stats.write_p50_s, stats.write_p99_s),
        ));
        let mut words = layer.report.words();
        // In the order the table has always listed them.
        words.sort_by_key(|&(key, _)| key);
        for (key, value) in words {
            out.push_str(&format!("  {key}={}", text(&value)));
        }
        out.push('\n');
    }
    out
}

/// `ublk: data path copy, features CMD_IOCTL_ENCODE …, kernel offers 0x1fe`,
/// and `, DMA alignment 4096 bytes` when the device asks for one.
fn render_ublk(ublk: &UblkStatus) -> String {
    let features = if ublk.features.is_empty() {
        "none".to_string()
    } else {
        ublk.features.join(" ")
    };
    let dma = match ublk.dma_alignment {
        Some(mask) => format!(", DMA alignment {} bytes", u64::from(mask) + 1),
        None => String::new(),
    };
    format!(
        "ublk: data path {}, features {}, kernel offers {:#x}{dma}\n",
        text(&ublk.data_path),
        text(&features),
        ublk.kernel_features
    )
}

/// `last reload: applied 12 s ago (SIGHUP)` and one line per key or reason.
fn render_last_reload(last: Option<&ReloadSummary>, now: SystemTime) -> String {
    let Some(last) = last else {
        return "last reload: none\n".to_string();
    };
    let time = SystemTime::UNIX_EPOCH + Duration::from_secs(last.time);
    let ago = now.duration_since(time).unwrap_or_default().as_secs();
    let mut out = format!(
        "last reload: {} {ago} s ago ({}, took {})\n",
        last.result.as_str(),
        last.trigger.as_str(),
        format_seconds(last.took_s),
    );
    for (list, word) in [(&last.applied, "applied"), (&last.refused, "refused")] {
        for item in list {
            out.push_str(&format!("  {word}: {}\n", text(item)));
        }
    }
    out
}

/// The running or last scrub, and each rebuild going on: one line each.
fn render_repairs(status: &StatusReply, now: SystemTime) -> String {
    let mut out = String::new();
    if let Some(scrub) = &status.scrub {
        let (p, found) = (&scrub.progress, scrub.counts.describe());
        let took = Duration::try_from_secs_f64(p.elapsed_s).unwrap_or_default();
        let ended = SystemTime::UNIX_EPOCH + Duration::from_secs(scrub.started) + took;
        let ago = now.duration_since(ended).unwrap_or_default().as_secs();
        out.push_str(&match (scrub.state, &scrub.error) {
            (ScrubState::Running, _) => format!("scrub: running, {}: {found}\n", p.describe()),
            (ScrubState::Failed, error) => format!(
                "last scrub: failed {ago} s ago after {}: {}\n",
                p.describe_done(),
                text(error.as_deref().unwrap_or("unknown error"))
            ),
            (ScrubState::Done, _) => format!(
                "last scrub: done {ago} s ago, {}: {found}\n",
                p.describe_done()
            ),
        });
    }
    for layer in &status.layers {
        let LayerReport::Mirror(mirror) = &layer.report else {
            continue;
        };
        if let (Some(done), Some(total)) = (mirror.resync_done_bytes, mirror.resync_total_bytes) {
            out.push_str(&format!(
                "rebuild of mirror \"{}\": {}% ({} of {} copied)\n",
                text(&layer.name),
                percent(done, total),
                format_human(done),
                format_human(total)
            ));
        }
    }
    out
}

/// `85us/1.2ms`, or `-` before the first request.
fn latency_pair(p50: Option<f64>, p99: Option<f64>) -> String {
    let text = |seconds: Option<f64>| seconds.map_or("-".to_string(), format_seconds);
    format!("{}/{}", text(p50), text(p99))
}

fn format_seconds(seconds: f64) -> String {
    let (value, unit) = if seconds < 1e-6 {
        (seconds * 1e9, "ns")
    } else if seconds < 1e-3 {
        (seconds * 1e6, "us")
    } else if seconds < 1.0 {
        (seconds * 1e3, "ms")
    } else {
        (seconds, "s")
    };
    if value < 10.0 {
        format!("{value:.1}{unit}")
    } else {
        format!("{value:.0}{unit}")
    }
}

#[cfg(test)]
mod tests;
