//! `ublk-stack plan CONFIG [--json]`: what applying CONFIG would do, applying
//! nothing. Against the running device of that name, what a reload would apply
//! and what it would refuse (the daemon diffs the text it is sent against what
//! it runs). For a device that is not running, what `up` would do: the tree
//! with its sizes, and for each leaf and each layer that keeps metadata,
//! whether it would be created, formatted or opened.
//!
//! Exit 0: nothing to do; 2: changes to apply (or a device to bring up); 1:
//! refused, or the file is invalid.

use std::path::Path;
use std::time::Duration;

use layers::plan::LayerSpec;
use layers::superblock::{self, Superblock, SUPERBLOCK_BYTES};
use layers::Plan;
use serde_json::{json, Value};

use super::control;
use super::lifecycle::fail;

const NOTHING: u8 = 0;
const REFUSED: u8 = 1;
const CHANGES: u8 = 2;

pub fn command(config: &Path, as_json: bool) -> u8 {
    let text = match std::fs::read_to_string(config) {
        Ok(text) => text,
        Err(e) => return fail(format!("{}: {e}", config.display())),
    };
    let plan = match crate::config::load(config) {
        Ok(plan) => plan,
        Err(errors) => {
            eprintln!("{errors}");
            return REFUSED;
        }
    };
    let name = plan.device.name.clone();
    let socket = control::socket_path(&name);
    let path = std::path::absolute(config).unwrap_or_else(|_| config.to_path_buf());
    let asked = json!({"cmd": "plan", "text": text, "path": path});
    match control::request_value(&socket, &asked, Duration::from_secs(30)) {
        Ok(reply) if reply["ok"] == true => running(&name, &reply, as_json),
        Ok(reply) => fail(format!(
            "{name}: {}",
            reply["error"].as_str().unwrap_or("plan failed")
        )),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            not_running(config, as_json)
        }
        Err(e) => fail(control::unreachable(&name, &socket, &e)),
    }
}

/// The daemon's answer: `result` is `unchanged`, `changes` or `refused`.
fn running(name: &str, reply: &Value, as_json: bool) -> u8 {
    let result = reply["result"].as_str().unwrap_or("refused");
    if as_json {
        let mut out = reply.clone();
        if let Some(map) = out.as_object_mut() {
            map.remove("ok");
            map.insert("name".into(), json!(name));
            map.insert("running".into(), json!(true));
        }
        println!("{out}");
    } else {
        let generation = &reply["generation"];
        match result {
            "unchanged" => println!(
                "{name} (running, generation {generation}): nothing to do: the file says what the device runs"
            ),
            "changes" => println!(
                "{name} (running, generation {generation}): a reload would apply:"
            ),
            _ => println!(
                "{name} (running, generation {generation}): a reload would refuse this file and change nothing:"
            ),
        }
        for (list, word) in [("apply", "apply"), ("refused", "refuse")] {
            for item in reply[list].as_array().into_iter().flatten() {
                println!("  {word}: {}", item.as_str().unwrap_or("?"));
            }
        }
    }
    match result {
        "unchanged" => NOTHING,
        "changes" => CHANGES,
        _ => REFUSED,
    }
}

/// Every check `validate` makes, then what `up` would do to each leaf.
fn not_running(config: &Path, as_json: bool) -> u8 {
    let checked = match crate::config::check_file(config) {
        Ok(checked) => checked,
        Err(errors) => {
            eprintln!("{errors}");
            return REFUSED;
        }
    };
    let actions = actions(&checked.plan);
    let refused = actions.iter().any(|a| a.verb == Verb::Refuse);
    let name = &checked.plan.device.name;
    if as_json {
        let layers: Vec<Value> = actions.iter().map(Action::json).collect();
        println!(
            "{}",
            json!({
                "name": name,
                "running": false,
                "result": if refused { "refused" } else { "up" },
                "size": checked.sizes[checked.plan.top],
                "layers": layers,
            })
        );
    } else {
        println!("{name} is not running; `up` would serve:");
        print!(
            "{}",
            crate::config::tree::render(&config.display().to_string(), &checked)
        );
        println!("and on the way:");
        for action in &actions {
            println!("  {}", action.line());
        }
    }
    if refused {
        REFUSED
    } else {
        CHANGES
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verb {
    Create,
    Open,
    Format,
    /// Format or open, as the layers below say once they are open.
    Decided,
    Allocate,
    Refuse,
}

impl Verb {
    fn as_str(self) -> &'static str {
        match self {
            Verb::Create => "create",
            Verb::Open => "open",
            Verb::Format => "format",
            Verb::Decided => "format or open",
            Verb::Allocate => "allocate",
            Verb::Refuse => "refuse",
        }
    }
}

struct Action {
    layer: String,
    verb: Verb,
    why: String,
}

impl Action {
    fn line(&self) -> String {
        format!("{}: {} ({})", self.layer, self.verb.as_str(), self.why)
    }

    fn json(&self) -> Value {
        json!({"layer": self.layer, "action": self.verb.as_str(), "detail": self.why})
    }
}

/// What `up` does to each leaf and each metadata-keeping layer, top down.
fn actions(plan: &Plan) -> Vec<Action> {
    let mut out = Vec::new();
    for id in plan.walk() {
        let layer = &plan.layers[id];
        let action = |verb, why: String| Action {
            layer: layer.name.clone(),
            verb,
            why,
        };
        match &layer.spec {
            LayerSpec::File(p) if !p.path.exists() => out.push(action(
                Verb::Create,
                format!("a sparse file {}", p.path.display()),
            )),
            LayerSpec::File(p) => out.push(action(Verb::Open, p.path.display().to_string())),
            LayerSpec::Disk(p) => out.push(action(Verb::Open, p.path.display().to_string())),
            LayerSpec::Memory(_) => {
                out.push(action(Verb::Allocate, "RAM, empty at every start".into()))
            }
            spec if spec.superblock() => {
                for child in spec.children() {
                    let (verb, why) = probe(plan, spec.type_name(), child);
                    let below = &plan.layers[child].name;
                    out.push(action(verb, format!("on {below}: {why}")));
                }
            }
            _ => {}
        }
    }
    out
}

/// What a `kind` layer finds at byte 0 of layer `child`, read without opening
/// anything: known only when the child is a leaf, whose byte 0 is the file's.
fn probe(plan: &Plan, kind: &str, child: usize) -> (Verb, String) {
    let path = match &plan.layers[child].spec {
        LayerSpec::File(p) => &p.path,
        LayerSpec::Disk(p) => &p.path,
        LayerSpec::Memory(_) => return (Verb::Format, "blank RAM".into()),
        _ => {
            return (
                Verb::Decided,
                "decided by what the layers below hold once open".into(),
            )
        }
    };
    if !path.exists() {
        return (Verb::Format, "a file created blank".into());
    }
    let block = match superblock::read_head(path, SUPERBLOCK_BYTES) {
        Ok(block) => block,
        Err(e) => return (Verb::Refuse, format!("{}: {e}", path.display())),
    };
    match Superblock::decode(&block) {
        Ok(None) => (Verb::Format, "blank".into()),
        Ok(Some(sb)) if sb.layer_type == kind => (
            Verb::Open,
            format!(
                "formatted: version {}, {}-byte blocks, {} bytes",
                sb.version, sb.block_size, sb.size
            ),
        ),
        Ok(Some(sb)) => (
            Verb::Refuse,
            format!("it holds a {} layer's superblock", sb.layer_type),
        ),
        Err(e) => (Verb::Refuse, e),
    }
}
