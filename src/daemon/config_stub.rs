//! TEMPORARY stand-in for `crate::config::load` until the config branch lands:
//! enough of schema v1 (device, file, disk, memory, null, raid0, mirror) to run the
//! ublk front end in its VM tests. No spans, no suggestions, first error only.
//! Delete this file and call `crate::config::load` from `lifecycle::load_plan`.

use std::path::Path;

use layers::plan::*;

pub fn load(path: &Path) -> Result<Plan, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    parse(&table, base).map_err(|e| format!("{}: {e}", path.display()))
}

fn size(value: Option<&toml::Value>) -> Result<Option<u64>, String> {
    let Some(value) = value else { return Ok(None) };
    if let Some(n) = value.as_integer() {
        return u64::try_from(n)
            .map(Some)
            .map_err(|_| "negative size".to_string());
    }
    let text = value
        .as_str()
        .ok_or("size must be an integer or a string")?;
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let number: u64 = text[..digits_end]
        .parse()
        .map_err(|_| format!("bad size {text:?}"))?;
    let shift = match text[digits_end..].trim() {
        "" | "B" => 0,
        "K" | "KiB" => 10,
        "M" | "MiB" => 20,
        "G" | "GiB" => 30,
        "T" | "TiB" => 40,
        unit => return Err(format!("unknown size unit {unit:?}")),
    };
    number
        .checked_shl(shift)
        .map(Some)
        .ok_or_else(|| format!("size {text:?} too large"))
}

fn parse(table: &toml::Table, base: &Path) -> Result<Plan, String> {
    let device = table
        .get("device")
        .and_then(|v| v.as_table())
        .ok_or("missing [device]")?;
    let name = device
        .get("name")
        .and_then(|v| v.as_str())
        .ok_or("missing device.name")?
        .to_string();
    let top_name = device
        .get("top")
        .and_then(|v| v.as_str())
        .ok_or("missing device.top")?;
    let int = |key: &str, default: i64| {
        device
            .get(key)
            .and_then(|v| v.as_integer())
            .unwrap_or(default)
    };
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(4) as i64;
    let params = DeviceParams {
        name,
        queues: int("queues", cpus) as u16,
        queue_depth: int("queue_depth", 128) as u16,
        block_size: int("block_size", 4096) as u32,
        id: device
            .get("id")
            .and_then(|v| v.as_integer())
            .map(|id| id as u32),
    };
    let layers_table = table
        .get("layers")
        .and_then(|v| v.as_table())
        .ok_or("missing [layers]")?;
    let names: Vec<&String> = layers_table.keys().collect();
    let index = |n: &str| {
        names
            .iter()
            .position(|m| *m == n)
            .ok_or(format!("unknown layer {n:?}"))
    };
    let refs = |t: &toml::Table, key: &str| -> Result<Vec<LayerId>, String> {
        t.get(key)
            .and_then(|v| v.as_array())
            .ok_or(format!("missing {key}"))?
            .iter()
            .map(|v| index(v.as_str().unwrap_or("")))
            .collect()
    };
    let mut layers = Vec::new();
    for (layer_name, value) in layers_table {
        let t = value.as_table().ok_or("layer is not a table")?;
        let kind = t
            .get("type")
            .and_then(|v| v.as_str())
            .ok_or(format!("layer {layer_name:?}: missing type"))?;
        let path = || {
            t.get("path")
                .and_then(|v| v.as_str())
                .map(|p| base.join(p))
                .ok_or("missing path")
        };
        let flag =
            |key: &str, default: bool| t.get(key).and_then(|v| v.as_bool()).unwrap_or(default);
        let spec = match kind {
            "file" => LayerSpec::File(FileParams {
                path: path()?,
                size_bytes: size(t.get("size"))?,
                create: flag("create", false),
                direct: flag("direct", false),
            }),
            "disk" => LayerSpec::Disk(DiskParams {
                path: path()?,
                direct: flag("direct", true),
            }),
            "memory" => LayerSpec::Memory {
                size_bytes: size(t.get("size"))?.ok_or("missing size")?,
            },
            "null" => LayerSpec::Null {
                size_bytes: size(t.get("size"))?.ok_or("missing size")?,
            },
            "raid0" => LayerSpec::Raid0(Raid0Params {
                stripes: refs(t, "stripes")?,
                chunk_bytes: size(t.get("chunk"))?.unwrap_or(64 << 10),
            }),
            "mirror" => LayerSpec::Mirror(MirrorParams {
                legs: refs(t, "legs")?,
                read_policy: ReadPolicy::parse(
                    t.get("read_policy")
                        .and_then(|v| v.as_str())
                        .unwrap_or("round-robin"),
                )
                .ok_or("bad read_policy")?,
            }),
            other => {
                return Err(format!(
                    "layer {layer_name:?}: type {other:?} is not supported by this build"
                ))
            }
        };
        layers.push(LayerPlan {
            name: layer_name.clone(),
            spec,
        });
    }
    let top = index(top_name)?;
    Ok(Plan {
        device: params,
        log_level: LogLevel::Info,
        layers,
        top,
    })
}
