//! `ublk-stack status NAME [--json]`: the layer tree with counters, latency
//! percentiles and details, the config generation and the last reload.
//!
//! The daemon builds the JSON ([`layers_json`], [`reload_json`]); the client
//! prints it as it is (`--json`) or as a table. In JSON, numbers are numbers and
//! times are seconds, so scripts never parse units.

use std::time::{Duration, SystemTime};

use layers::escape::escape_controls;
use layers::Stack;
use serde_json::{json, Map, Value};

use super::control;
use super::reload::Record;
use crate::config::size::format_human;

/// Every layer from the top down, as `status` shows it.
pub fn layers_json(stack: &Stack) -> Value {
    let layers = stack.status().into_iter().map(|node| {
        let details: Map<String, Value> = node
            .details
            .into_iter()
            .map(|(key, value)| (key.to_string(), detail_value(value)))
            .collect();
        let s = node.stats;
        let (read, write) = (node.latency.read, node.latency.write);
        json!({
            "name": node.name,
            "type": node.type_name,
            "depth": node.depth,
            "size": node.size,
            "stats": {
                "reads": s.reads, "writes": s.writes, "flushes": s.flushes,
                "discards": s.discards, "write_zeroes": s.write_zeroes,
                "read_bytes": s.read_bytes, "written_bytes": s.written_bytes,
                "errors": s.errors,
                "read_p50_s": seconds(read.p50_ns), "read_p99_s": seconds(read.p99_ns),
                "write_p50_s": seconds(write.p50_ns), "write_p99_s": seconds(write.p99_ns),
            },
            "details": details,
        })
    });
    Value::Array(layers.collect())
}

/// `generation` and `last_reload` (null before the first reload).
pub fn reload_json(record: &Record) -> (Value, Value) {
    let last = record.last.as_ref().map_or(Value::Null, |o| o.to_json());
    (json!(record.generation), last)
}

fn seconds(nanos: Option<u64>) -> Value {
    nanos.map_or(Value::Null, |ns| json!(ns as f64 / 1e9))
}

/// Layers report details as text; a value that reads as a number is one.
fn detail_value(text: String) -> Value {
    if let Ok(integer) = text.parse::<u64>() {
        return json!(integer);
    }
    if let Ok(integer) = text.parse::<i64>() {
        return json!(integer);
    }
    match text.parse::<f64>() {
        // "inf" and "nan" parse too, but JSON has no such numbers.
        Ok(float) if float.is_finite() && text.starts_with(|c: char| c.is_ascii_digit()) => {
            json!(float)
        }
        _ => Value::String(text),
    }
}

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
    if as_json {
        println!("{reply}");
    } else {
        print!("{}", render(&reply, SystemTime::now()));
    }
    0
}

fn fail(message: String) -> u8 {
    eprintln!("ublk-stack: {}", escape_controls(&message));
    1
}

/// A string of the reply for a terminal: names, paths and messages may come
/// from a config file, so control characters in them are escaped.
fn text(value: &Value) -> String {
    escape_controls(value.as_str().unwrap_or("?")).into_owned()
}

fn render(reply: &Value, now: SystemTime) -> String {
    let mut out = format!(
        "{}  {}  {}  {}  generation {}\n",
        text(&reply["name"]),
        text(&reply["path"]),
        format_human(reply["size"].as_u64().unwrap_or(0)),
        reply["state"].as_str().unwrap_or("?"),
        reply["generation"],
    );
    out.push_str(&render_last_reload(&reply["last_reload"], now));
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
    for layer in reply["layers"].as_array().into_iter().flatten() {
        let depth = layer["depth"].as_u64().unwrap_or(0) as usize;
        let stats = &layer["stats"];
        let name = format!("{}{}", "  ".repeat(depth), text(&layer["name"]));
        out.push_str(&format!(
            "{:<24} {:<8} {:>10} {:>10} {:>10} {:>8} {:>7} {:>15} {:>15}",
            name,
            layer["type"].as_str().unwrap_or("?"),
            format_human(layer["size"].as_u64().unwrap_or(0)),
            stats["reads"].as_u64().unwrap_or(0),
            stats["writes"].as_u64().unwrap_or(0),
            stats["flushes"].as_u64().unwrap_or(0),
            stats["errors"].as_u64().unwrap_or(0),
            latency_pair(&stats["read_p50_s"], &stats["read_p99_s"]),
            latency_pair(&stats["write_p50_s"], &stats["write_p99_s"]),
        ));
        if let Some(details) = layer["details"].as_object() {
            for (key, value) in details {
                let key = escape_controls(key);
                match value.as_str() {
                    Some(_) => out.push_str(&format!("  {key}={}", text(value))),
                    None => out.push_str(&format!("  {key}={value}")),
                }
            }
        }
        out.push('\n');
    }
    out
}

/// `last reload: applied 12 s ago (SIGHUP)` and one line per key or reason.
fn render_last_reload(last: &Value, now: SystemTime) -> String {
    if last.is_null() {
        return "last reload: none\n".to_string();
    }
    let time = SystemTime::UNIX_EPOCH + Duration::from_secs(last["time"].as_u64().unwrap_or(0));
    let ago = now.duration_since(time).unwrap_or_default().as_secs();
    let took = last["took_s"].as_f64().map_or("?".into(), format_seconds);
    let mut out = format!(
        "last reload: {} {ago} s ago ({}, took {took})\n",
        last["result"].as_str().unwrap_or("?"),
        last["trigger"].as_str().unwrap_or("?"),
    );
    for (list, word) in [("applied", "applied"), ("refused", "refused")] {
        for item in last[list].as_array().into_iter().flatten() {
            out.push_str(&format!("  {word}: {}\n", text(item)));
        }
    }
    out
}

/// `85us/1.2ms`, or `-` before the first request.
fn latency_pair(p50: &Value, p99: &Value) -> String {
    let text = |value: &Value| value.as_f64().map_or("-".to_string(), format_seconds);
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
