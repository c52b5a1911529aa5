//! `ublk-stack list [--json]`: the running devices, found by their control
//! sockets in the run dir and asked for their path, size and state.

use std::io;
use std::time::Duration;

use layers::escape::escape_controls;
use serde_json::{json, Value};

use super::control;
use super::lifecycle::fail;
use crate::config::size::format_human;

/// One running device, as `list` shows it.
struct Device {
    name: String,
    /// `None`: the daemon did not answer.
    info: Option<Value>,
}

/// A table with a header, or "no devices running"; with `json`, an array of
/// `{"name", "path", "size", "state"}` (path and size null and state
/// "not responding" for a daemon that did not answer). Exit 1 when a device
/// could not be asked for lack of permission (its socket is 0600): an empty or
/// partial list must not pass for the truth.
pub fn list(as_json: bool) -> u8 {
    let run_dir = control::run_dir();
    let sockets = match control::sockets() {
        Ok(sockets) => sockets,
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            return fail(format!(
            "permission denied: cannot read {}; run as root or as the user that runs the devices",
            run_dir.display()
        ))
        }
        Err(e) => return fail(format!("{}: {e}", run_dir.display())),
    };
    let mut devices = Vec::new();
    let mut denied = Vec::new();
    for (name, socket) in sockets {
        match control::request(&socket, "info", Duration::from_secs(5)) {
            Ok(info) => devices.push(Device {
                name,
                info: Some(info),
            }),
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => denied.push(name),
            Err(_) => devices.push(Device { name, info: None }),
        }
    }
    if !denied.is_empty() {
        return fail(format!(
            "permission denied: cannot reach the control socket of {} in {}; run as root or as the user that runs the devices",
            denied
                .iter()
                .map(|name| format!("\"{}\"", escape_controls(name)))
                .collect::<Vec<_>>()
                .join(", "),
            run_dir.display()
        ));
    }
    if as_json {
        let list: Vec<Value> = devices.iter().map(Device::json).collect();
        println!("{}", Value::Array(list));
    } else if devices.is_empty() {
        println!("no devices running");
    } else {
        print!("{}", table(&devices));
    }
    0
}

impl Device {
    fn json(&self) -> Value {
        match &self.info {
            Some(info) => json!({
                "name": self.name,
                "path": info["path"],
                "size": info["size"],
                "state": info["state"].as_str().unwrap_or("unknown"),
            }),
            None => json!({
                "name": self.name,
                "path": null,
                "size": null,
                "state": "not responding",
            }),
        }
    }

    /// NAME, DEVICE, SIZE, STATE; names and paths escaped (a name comes from
    /// a socket file name anyone with access to the run dir could create).
    fn row(&self) -> [String; 4] {
        let name = escape_controls(&self.name).into_owned();
        match &self.info {
            Some(info) => [
                name,
                escape_controls(info["path"].as_str().unwrap_or("-")).into_owned(),
                format_human(info["size"].as_u64().unwrap_or(0)),
                escape_controls(info["state"].as_str().unwrap_or("unknown")).into_owned(),
            ],
            None => [name, "-".into(), "-".into(), "not responding".into()],
        }
    }
}

fn table(devices: &[Device]) -> String {
    let header = ["NAME", "DEVICE", "SIZE", "STATE"].map(String::from);
    let rows: Vec<[String; 4]> = std::iter::once(header)
        .chain(devices.iter().map(Device::row))
        .collect();
    let widths: Vec<usize> = (0..4)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_has_a_header_and_aligned_columns() {
        let devices = [
            Device {
                name: "mirror0".into(),
                info: Some(json!({"path": "/dev/ublkb0", "size": 4u64 << 30, "state": "live"})),
            },
            Device {
                name: "x".into(),
                info: None,
            },
        ];
        assert_eq!(
            table(&devices),
            "NAME     DEVICE       SIZE   STATE\n\
             mirror0  /dev/ublkb0  4 GiB  live\n\
             x        -            -      not responding\n"
        );
        assert_eq!(devices[1].json()["state"], "not responding");
        assert_eq!(devices[0].json()["size"], 4u64 << 30);
    }
}
