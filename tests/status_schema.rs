//! docs/status.md cannot drift from what a daemon says: a daemon serving a
//! stack with a layer of every type but `disk` (over NBD on a Unix socket, so
//! no kernel module is needed; its `nbd` leaf is a second daemon's export)
//! answers `status --json`, and every field of
//! that reply must be listed on the page with its type, and every field the
//! page lists (for the types in the stack) must be in the reply.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;
use ublk_stack::daemon::status::UblkStatus;

const BIN: &str = env!("CARGO_BIN_EXE_ublk-stack");
const KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

/// Every type but `disk`, one layer each.
const CONFIG: &str = r#"version = 1
[device]
name = "every"
top = "cache"
queues = 1

[layers.cache]
type = "cache"
over = "compress"
capacity = "1MiB"

[layers.compress]
type = "compress"
over = "crypt"

[layers.crypt]
type = "crypt"
over = "checksum"
key_env = "STATUS_SCHEMA_KEY"

[layers.checksum]
type = "checksum"
over = "fault"

[layers.fault]
type = "fault"
over = "mirror"
range = [0, 4096]

[layers.mirror]
type = "mirror"
legs = ["stripes", "ram", "remote"]

[layers.stripes]
type = "raid0"
stripes = ["file", "zeros"]

[layers.file]
type = "file"
path = "leaf.img"
size = "16MiB"
create = true

[layers.zeros]
type = "null"
size = "16MiB"

[layers.ram]
type = "memory"
size = "32MiB"

[layers.remote]
type = "nbd"
uri = "nbd+unix:///?socket=@REMOTE@"
size = "32MiB"
"#;

/// The stack the `nbd` leaf of [`CONFIG`] reaches.
const REMOTE: &str = r#"version = 1
[device]
name = "remote"
top = "ram"
queues = 1

[layers.ram]
type = "memory"
size = "32MiB"
"#;

struct Daemon {
    child: Child,
    dir: tempfile::TempDir,
    socket: PathBuf,
}

impl Daemon {
    /// `up NAME.toml --nbd unix:…` over `config`, in a directory of its own.
    fn start(name: &str, config: &str) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join(format!("{name}.toml"));
        std::fs::write(&config_path, config).unwrap();
        let config = config_path;
        let socket = dir.path().join("nbd.sock");
        let mut child = Command::new(BIN)
            .args(["up", config.to_str().unwrap(), "--nbd"])
            .arg(format!("unix:{}", socket.display()))
            .env("UBLK_STACK_RUN_DIR", dir.path().join("run"))
            .env("STATUS_SCHEMA_KEY", KEY)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("ublk-stack starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            drop(BufReader::new(stdout).read_line(&mut line));
            drop(tx.send(line));
        });
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("ublk-stack up --nbd prints its ready line");
        assert!(line.contains(" ready ("), "unexpected first line: {line:?}");
        Daemon { child, dir, socket }
    }

    fn cli(&self, args: &[&str]) -> Output {
        let output = Command::new(BIN)
            .args(args)
            .env("UBLK_STACK_RUN_DIR", self.dir.path().join("run"))
            .output()
            .unwrap();
        assert!(output.status.success(), "{args:?}: {output:?}");
        output
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        drop(self.child.kill());
        drop(self.child.wait());
    }
}

/// Where a field sits: at the top (`None`, with its full path such as
/// `layers[].stats.reads`) or in the `details` of a type (its path there).
type Place = (Option<String>, String);

#[test]
fn status_json_of_a_running_daemon_has_exactly_the_documented_fields() {
    let remote = Daemon::start("remote", REMOTE);
    let every = CONFIG.replace("@REMOTE@", &remote.socket.display().to_string());
    let daemon = Daemon::start("every", &every);
    // A live change, so that `last_reload` is an object with an applied
    // change, not null.
    let config = daemon.dir.path().join("every.toml");
    std::fs::write(&config, every.replace("\"1MiB\"", "\"2MiB\"")).unwrap();
    daemon.cli(&["reload", "every"]);
    // A scrub, so that `scrub` is an object, not null.
    daemon.cli(&["scrub", "every"]);
    let output = daemon.cli(&["status", "every", "--json"]);
    let mut reply: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(reply["schema"], 1, "{reply}");
    // Served over NBD: no ublk object. Its fields are checked on the one a
    // ublk device reports, built by the daemon's own code.
    assert!(reply.get("ublk").is_some_and(Value::is_null), "{reply}");
    reply["ublk"] = serde_json::to_value(UblkStatus::new(0x1fe, 0x58, Some(4095))).unwrap();

    let mut seen = BTreeMap::new();
    fields(&reply, None, "", &mut seen);
    let documented = documented_fields(&doc_path());

    let mut wrong = Vec::new();
    for (place, kind) in &seen {
        match documented
            .get(place)
            .map(String::as_str)
            .or_else(|| item_of_documented_array(&documented, place))
        {
            None => wrong.push(format!("{place:?}: in the reply, not on the page")),
            Some(types) if !allows(types, kind) => wrong.push(format!(
                "{place:?}: the page says {types}, the reply has {kind}"
            )),
            Some(_) => {}
        }
    }
    let types_seen: BTreeSet<&str> = reply["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|layer| layer["type"].as_str().unwrap())
        .collect();
    for place in documented.keys() {
        let in_stack = match &place.0 {
            Some(kind) => types_seen.contains(kind.as_str()),
            None => true,
        };
        if in_stack && !seen.contains_key(place) {
            wrong.push(format!("{place:?}: on the page, not in the reply"));
        }
    }
    // `disk` needs a block device, so only its section is checked for.
    let sections = doc_sections(&doc_path());
    for kind in layers::kinds::KINDS {
        if !sections.contains(kind.name) {
            wrong.push(format!("type {}: no section on the page", kind.name));
        }
        if kind.name != "disk" && !types_seen.contains(kind.name) {
            wrong.push(format!("type {}: not in the test's stack", kind.name));
        }
    }
    assert!(
        wrong.is_empty(),
        "docs/status.md and the reply differ:\n{}\n{reply}",
        wrong.join("\n")
    );
}

fn doc_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/status.md")
}

/// Every field of `value` with its JSON type; a layer's `details` are kept by
/// the layer's `type`.
fn fields(value: &Value, scope: Option<&str>, path: &str, out: &mut BTreeMap<Place, &'static str>) {
    let join = |key: &str| match path {
        "" => key.to_string(),
        _ => format!("{path}.{key}"),
    };
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                if scope.is_none() && path == "layers[]" && key == "details" {
                    out.insert((None, join(key)), json_type(child));
                    let kind = map["type"].as_str().unwrap();
                    fields(child, Some(kind), "", out);
                    continue;
                }
                out.insert((scope.map(String::from), join(key)), json_type(child));
                fields(child, scope, &join(key), out);
            }
        }
        Value::Array(items) => {
            let path = format!("{path}[]");
            for item in items {
                let before = out.insert((scope.map(String::from), path.clone()), json_type(item));
                if let Some(before) = before {
                    assert_eq!(before, json_type(item), "{path}: items of two types");
                }
                fields(item, scope, &path, out);
            }
        }
        _ => {}
    }
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// The items of an array the page lists as `array of strings`: `string`.
fn item_of_documented_array(
    documented: &BTreeMap<Place, String>,
    place: &Place,
) -> Option<&'static str> {
    let array = place.1.strip_suffix("[]")?;
    let kind = documented.get(&(place.0.clone(), array.to_string()))?;
    match kind.as_str() {
        "array of strings" => Some("string"),
        _ => None,
    }
}

/// Whether the page's type (`integer`, `number or null`, …) admits `kind`;
/// an integer is a number too.
fn allows(documented: &str, kind: &str) -> bool {
    documented
        .split(" or ")
        .map(|t| {
            if t.starts_with("array of ") {
                "array"
            } else {
                t
            }
        })
        .any(|t| t == kind || (t == "number" && kind == "integer"))
}

/// The page's tables: `| \`PATH\` | TYPE | meaning |` rows; under a
/// `### \`TYPE\`` heading, the fields of that type's `details`.
fn documented_fields(path: &Path) -> BTreeMap<Place, String> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut scope: Option<String> = None;
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if line.starts_with("## ") {
            scope = None;
        }
        if let Some(heading) = line.strip_prefix("### ") {
            scope = Some(heading.trim_matches('`').to_string());
        }
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let [_, field, kind, ..] = cells[..] else {
            continue;
        };
        let Some(field) = field.strip_prefix('`').and_then(|f| f.strip_suffix('`')) else {
            continue;
        };
        let before = out.insert((scope.clone(), field.to_string()), kind.to_string());
        assert!(before.is_none(), "{field} is listed twice");
    }
    out
}

fn doc_sections(path: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .filter_map(|line| line.strip_prefix("### "))
        .map(|heading| heading.trim_matches('`').to_string())
        .collect()
}
