//! `ublk-stack plan CONFIG`: what applying the file would do, applying
//! nothing; exit 0 nothing to do, 2 changes, 1 refused.

use std::path::Path;
use std::process::{Command, Output};

#[path = "support/nbd.rs"]
mod support;
use support::{Daemon, BIN};

fn plan(dir: &Path, config: &Path, json: bool) -> Output {
    let mut command = Command::new(BIN);
    command
        .arg("plan")
        .arg(config)
        .env("UBLK_STACK_RUN_DIR", dir.join("run"));
    if json {
        command.arg("--json");
    }
    command.output().unwrap()
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

const CHECKSUM: &str = "version = 1\n[device]\nname = \"planned\"\ntop = \"sum\"\n\
    [layers.sum]\ntype = \"checksum\"\nover = \"leaf\"\n\
    [layers.leaf]\ntype = \"file\"\npath = \"leaf.img\"\nsize = \"16MiB\"\ncreate = true\n";

#[test]
fn for_a_device_not_running_it_says_what_up_would_create_format_or_open() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("device.toml");
    std::fs::write(&config, CHECKSUM).unwrap();

    let fresh = plan(dir.path(), &config, false);
    let out = text(&fresh);
    assert_eq!(fresh.status.code(), Some(2), "{out}");
    assert!(out.contains("planned is not running"), "{out}");
    assert!(out.contains("leaf: create (a sparse file"), "{out}");
    assert!(
        out.contains("sum: format (on leaf: a file created blank)"),
        "{out}"
    );
    assert!(
        !dir.path().join("leaf.img").exists(),
        "plan created the leaf"
    );

    // Bring it up once (formats), stop, and plan again: open.
    let daemon = Daemon::start(dir.path(), CHECKSUM, &[]);
    drop(daemon);
    let again = plan(dir.path(), &config, true);
    assert_eq!(again.status.code(), Some(2), "{}", text(&again));
    let json: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(json["running"], false);
    assert_eq!(json["result"], "up");
    let actions: Vec<(String, String)> = json["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["layer"].as_str().unwrap().to_string(),
                a["action"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        actions,
        [
            ("sum".into(), "open".into()),
            ("leaf".into(), "open".into())
        ],
        "{json}"
    );

    // The same leaf under another metadata layer: up would refuse, so plan
    // does (the config's checks read that superblock, naming the layer).
    let other = CHECKSUM.replace("type = \"checksum\"", "type = \"compress\"");
    std::fs::write(&config, other).unwrap();
    let refused = plan(dir.path(), &config, false);
    let out = text(&refused);
    assert_eq!(refused.status.code(), Some(1), "{out}");
    assert!(
        out.contains("layer \"sum\": ")
            && out.contains("(layer \"leaf\"): the device below holds a \"checksum\" superblock, not \"compress\""),
        "{out}"
    );

    // A damaged superblock is left to the layer opening it: plan says refuse.
    let mut leaf = std::fs::read(dir.path().join("leaf.img")).unwrap();
    leaf[100] ^= 1;
    std::fs::write(dir.path().join("leaf.img"), &leaf).unwrap();
    std::fs::write(&config, CHECKSUM).unwrap();
    let refused = plan(dir.path(), &config, false);
    let out = text(&refused);
    assert_eq!(refused.status.code(), Some(1), "{out}");
    assert!(
        out.contains("sum: refuse (on leaf: the superblock is damaged (crc mismatch))"),
        "{out}"
    );
}

const CACHE: &str = "version = 1\n[device]\nname = \"live\"\ntop = \"cache\"\n\
    [layers.cache]\ntype = \"cache\"\nover = \"ram\"\ncapacity = \"4MiB\"\n\
    [layers.ram]\ntype = \"memory\"\nsize = \"16MiB\"\n";

#[test]
fn against_a_running_device_it_shows_the_reload_without_applying_it() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), CACHE, &[]);
    // A copy kept elsewhere (in git, say): the device is found by its name.
    let edited = dir.path().join("in-git.toml");
    std::fs::write(&edited, CACHE).unwrap();

    let same = plan(dir.path(), &edited, false);
    assert_eq!(same.status.code(), Some(0), "{}", text(&same));
    assert!(text(&same).contains("nothing to do"), "{}", text(&same));

    std::fs::write(&edited, CACHE.replace("4MiB", "8MiB")).unwrap();
    let live = plan(dir.path(), &edited, false);
    let out = text(&live);
    assert_eq!(live.status.code(), Some(2), "{out}");
    assert!(out.contains("a reload would apply:"), "{out}");
    assert!(out.contains("capacity"), "{out}");

    // A shrink (a rise would be a live growth).
    std::fs::write(&edited, CACHE.replace("16MiB", "8MiB")).unwrap();
    let structural = plan(dir.path(), &edited, true);
    assert_eq!(structural.status.code(), Some(1), "{}", text(&structural));
    let json: serde_json::Value = serde_json::from_slice(&structural.stdout).unwrap();
    assert_eq!(json["result"], "refused", "{json}");
    assert_eq!(json["running"], true, "{json}");
    assert!(!json["refused"].as_array().unwrap().is_empty(), "{json}");

    // Nothing was applied: the running device still says generation 1 and 4 MiB.
    let status = Command::new(BIN)
        .args(["status", "live", "--json"])
        .env("UBLK_STACK_RUN_DIR", dir.path().join("run"))
        .output()
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["generation"], 1, "{status}");
    drop(daemon);
}

#[test]
fn an_invalid_file_is_refused_with_its_errors() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "version = 1\n[device\n").unwrap();
    let out = plan(dir.path(), &config, false);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("bad.toml"), "{}", text(&out));
}

#[test]
fn a_mirror_formats_each_blank_leg() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("device.toml");
    std::fs::write(
        &config,
        "version = 1\n[device]\nname = \"twolegs\"\ntop = \"m\"\n\
         [layers.m]\ntype = \"mirror\"\nlegs = [\"a\", \"b\"]\n\
         [layers.a]\ntype = \"file\"\npath = \"a.img\"\nsize = \"16MiB\"\ncreate = true\n\
         [layers.b]\ntype = \"memory\"\nsize = \"16MiB\"\n",
    )
    .unwrap();
    let out = plan(dir.path(), &config, false);
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(2), "{shown}");
    assert!(
        shown.contains("m: format (on a: a file created blank)"),
        "{shown}"
    );
    assert!(shown.contains("m: format (on b: blank RAM)"), "{shown}");
    assert!(shown.contains("b: allocate"), "{shown}");
}
