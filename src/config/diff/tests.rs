//! Each test edits one running config the way a user would and checks what a
//! reload makes of it.

use std::path::Path;

use layers::plan::{CacheMode, FaultKnobs, LiveChange, LogLevel, Plan, ReadPolicy};

use super::{diff, diff_sized, patch, Changes};

/// Every layer type but `disk` and `null` (see [`LEAVES`]), every key spelled out.
const RUNNING: &str = r#"version = 1
[device]
name = "d0"
top = "cache"
queues = 2
queue_depth = 64
block_size = 4096
id = 3

[log]
level = "info"

[layers.cache]
type = "cache"
over = "crypt"
capacity = "64MiB"
mode = "write-through"

[layers.crypt]
type = "crypt"
over = "sum"
key_env = "STACK_KEY"

[layers.sum]
type = "checksum"
over = "zip"

[layers.zip]
type = "compress"
over = "mirror"
size = "2GiB"

[layers.mirror]
type = "mirror"
legs = ["fault", "stripes"]
read_policy = "round-robin"

[layers.fault]
type = "fault"
over = "a"
read_error_rate = 0.0
write_error_rate = 0.0
delay = "0us"

[layers.a]
type = "file"
path = "data/a.img"
size = "1GiB"
create = true

[layers.stripes]
type = "raid0"
stripes = ["m1", "m2"]
chunk = "64KiB"

[layers.m1]
type = "memory"
size = "512MiB"

[layers.m2]
type = "memory"
size = "512MiB"
"#;

/// The leaf types `RUNNING` lacks.
const LEAVES: &str = r#"version = 1
[device]
name = "d1"
top = "r"
[layers.r]
type = "raid0"
stripes = ["d", "n"]
[layers.d]
type = "disk"
path = "/dev/sdz"
[layers.n]
type = "null"
size = "1GiB"
"#;

fn plan(text: &str) -> Plan {
    match crate::config::parse(text, Path::new("t.toml"), Path::new("/srv/stack")) {
        Ok(plan) => plan,
        Err(errors) => panic!("refused:\n{errors}\n---\n{text}"),
    }
}

/// `text` with `from` replaced by `to`, which must be there exactly once.
fn edited(text: &str, from: &str, to: &str) -> String {
    assert_eq!(text.matches(from).count(), 1, "{from:?} in the config");
    text.replacen(from, to, 1)
}

fn live(from: &str, to: &str) -> Changes {
    let (old, new) = (plan(RUNNING), plan(&edited(RUNNING, from, to)));
    diff(&old, &new).unwrap_or_else(|refusal| panic!("refused: {refusal}"))
}

fn refused_in(running: &str, from: &str, to: &str) -> Vec<String> {
    let (old, new) = (plan(running), plan(&edited(running, from, to)));
    match diff(&old, &new) {
        Ok(changes) => panic!("applied {changes:?}"),
        Err(refusal) => refusal.reasons,
    }
}

fn refused(from: &str, to: &str) -> Vec<String> {
    refused_in(RUNNING, from, to)
}

fn edits(changes: &Changes) -> Vec<String> {
    changes
        .edits()
        .iter()
        .map(|edit| edit.to_string())
        .collect()
}

#[test]
fn the_same_file_changes_nothing() {
    let changes = diff(&plan(RUNNING), &plan(RUNNING)).unwrap();
    assert!(changes.is_empty());
}

#[test]
fn moving_a_section_within_the_file_changes_nothing() {
    let section = "[layers.m2]\ntype = \"memory\"\nsize = \"512MiB\"\n";
    let moved = RUNNING.replace(section, "");
    let moved = moved.replace("[layers.cache]", &format!("{section}\n[layers.cache]"));
    let (old, new) = (plan(RUNNING), plan(&moved));
    assert_ne!(old.layers[1].name, new.layers[1].name, "indices moved");
    assert!(diff(&old, &new).unwrap().is_empty());
}

#[test]
fn mirror_read_policy_is_live() {
    let changes = live(
        "read_policy = \"round-robin\"",
        "read_policy = \"least-pending\"",
    );
    assert_eq!(changes.layers.len(), 1);
    assert_eq!(changes.layers[0].layer, "mirror");
    assert_eq!(
        changes.layers[0].change,
        LiveChange::ReadPolicy(ReadPolicy::LeastPending)
    );
    assert_eq!(
        edits(&changes),
        ["layers.mirror.read_policy: round-robin -> least-pending"]
    );
}

#[test]
fn cache_capacity_is_live() {
    let changes = live("capacity = \"64MiB\"", "capacity = \"512MiB\"");
    assert_eq!(
        changes.layers[0].change,
        LiveChange::CacheCapacity(512 << 20)
    );
    assert_eq!(edits(&changes), ["layers.cache.capacity: 64MiB -> 512MiB"]);
}

#[test]
fn cache_mode_is_live() {
    let changes = live("mode = \"write-through\"", "mode = \"write-back\"");
    assert_eq!(
        changes.layers[0].change,
        LiveChange::CacheMode(CacheMode::WriteBack)
    );
    assert_eq!(
        edits(&changes),
        ["layers.cache.mode: write-through -> write-back"]
    );
}

#[test]
fn cache_mode_changes_before_capacity() {
    let text = edited(RUNNING, "capacity = \"64MiB\"", "capacity = \"16MiB\"");
    let text = edited(&text, "mode = \"write-through\"", "mode = \"write-back\"");
    let changes = diff(&plan(RUNNING), &plan(&text)).unwrap();
    let kinds: Vec<&LiveChange> = changes.layers.iter().map(|c| &c.change).collect();
    assert_eq!(
        kinds,
        [
            &LiveChange::CacheMode(CacheMode::WriteBack),
            &LiveChange::CacheCapacity(16 << 20)
        ]
    );
}

fn fault_knobs(changes: &Changes) -> FaultKnobs {
    assert_eq!(changes.layers.len(), 1, "{changes:?}");
    assert_eq!(changes.layers[0].layer, "fault");
    match &changes.layers[0].change {
        LiveChange::Fault(knobs) => knobs.clone(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn fault_read_error_rate_is_live() {
    let changes = live("read_error_rate = 0.0", "read_error_rate = 0.25");
    assert_eq!(fault_knobs(&changes).read_error_rate, 0.25);
    assert_eq!(edits(&changes), ["layers.fault.read_error_rate: 0 -> 0.25"]);
}

#[test]
fn fault_write_error_rate_is_live() {
    let changes = live("write_error_rate = 0.0", "write_error_rate = 1.0");
    assert_eq!(fault_knobs(&changes).write_error_rate, 1.0);
}

#[test]
fn fault_delay_is_live() {
    let changes = live("delay = \"0us\"", "delay = \"5ms\"");
    assert_eq!(fault_knobs(&changes).delay_us, 5_000);
    assert_eq!(edits(&changes), ["layers.fault.delay: 0us -> 5ms"]);
}

#[test]
fn fault_range_is_live() {
    let changes = live("delay = \"0us\"", "delay = \"0us\"\nrange = [0, \"1MiB\"]");
    assert_eq!(fault_knobs(&changes).range, Some((0, 1 << 20)));
    assert_eq!(edits(&changes), ["layers.fault.range: all -> [0, 1MiB]"]);
}

#[test]
fn fault_knobs_edited_together_are_one_change_with_every_key() {
    let text = edited(RUNNING, "read_error_rate = 0.0", "read_error_rate = 0.5");
    let text = edited(&text, "delay = \"0us\"", "delay = \"1ms\"");
    let changes = diff(&plan(RUNNING), &plan(&text)).unwrap();
    let knobs = fault_knobs(&changes);
    assert_eq!((knobs.read_error_rate, knobs.delay_us), (0.5, 1_000));
    assert_eq!(
        edits(&changes),
        [
            "layers.fault.read_error_rate: 0 -> 0.5",
            "layers.fault.delay: 0us -> 1ms"
        ]
    );
}

#[test]
fn log_level_is_live() {
    let changes = live("level = \"info\"", "level = \"debug\"");
    assert!(changes.layers.is_empty());
    assert_eq!(changes.log_level.as_ref().unwrap().0, LogLevel::Debug);
    assert_eq!(edits(&changes), ["log.level: info -> debug"]);
}

#[test]
fn every_live_key_at_once() {
    let text = edited(RUNNING, "level = \"info\"", "level = \"warn\"");
    let text = edited(&text, "capacity = \"64MiB\"", "capacity = \"1GiB\"");
    let text = edited(
        &text,
        "read_policy = \"round-robin\"",
        "read_policy = \"first\"",
    );
    let text = edited(&text, "write_error_rate = 0.0", "write_error_rate = 0.1");
    let changes = diff(&plan(RUNNING), &plan(&text)).unwrap();
    assert_eq!(changes.layers.len(), 3);
    assert_eq!(changes.edits().len(), 4);
}

#[test]
fn leaf_path_is_structural() {
    assert_eq!(
        refused("path = \"data/a.img\"", "path = \"data/c.img\""),
        ["layers.a.path: structural, needs down/up"]
    );
}

#[test]
fn file_size_create_and_direct_are_structural() {
    let text = edited(RUNNING, "size = \"1GiB\"", "size = \"2GiB\"");
    let text = edited(&text, "create = true", "create = false\ndirect = true");
    assert_eq!(
        diff(&plan(RUNNING), &plan(&text)).unwrap_err().reasons,
        [
            "layers.a.size: structural, needs down/up",
            "layers.a.create: structural, needs down/up",
            "layers.a.direct: structural, needs down/up",
        ]
    );
}

#[test]
fn memory_size_is_structural() {
    assert_eq!(
        refused(
            "[layers.m2]\ntype = \"memory\"\nsize = \"512MiB\"",
            "[layers.m2]\ntype = \"memory\"\nsize = \"256MiB\""
        ),
        ["layers.m2.size: structural, needs down/up"]
    );
}

#[test]
fn disk_path_and_null_size_are_structural() {
    assert_eq!(
        refused_in(LEAVES, "path = \"/dev/sdz\"", "path = \"/dev/sdy\""),
        ["layers.d.path: structural, needs down/up"]
    );
    assert_eq!(
        refused_in(
            LEAVES,
            "path = \"/dev/sdz\"",
            "path = \"/dev/sdz\"\ndirect = false"
        ),
        ["layers.d.direct: structural, needs down/up"]
    );
    assert_eq!(
        refused_in(LEAVES, "size = \"1GiB\"", "size = \"2GiB\""),
        ["layers.n.size: structural, needs down/up"]
    );
}

#[test]
fn type_change_is_structural() {
    assert_eq!(
        refused(
            "[layers.m2]\ntype = \"memory\"",
            "[layers.m2]\ntype = \"null\""
        ),
        ["layers.m2.type: structural, needs down/up"]
    );
}

#[test]
fn mirror_legs_are_structural_even_reordered() {
    assert_eq!(
        refused(
            "legs = [\"fault\", \"stripes\"]",
            "legs = [\"stripes\", \"fault\"]"
        ),
        ["layers.mirror.legs: structural, needs down/up"]
    );
}

#[test]
fn raid0_stripes_and_chunk_are_structural() {
    let text = edited(
        RUNNING,
        "stripes = [\"m1\", \"m2\"]",
        "stripes = [\"m2\", \"m1\"]",
    );
    let text = edited(&text, "chunk = \"64KiB\"", "chunk = \"128KiB\"");
    assert_eq!(
        diff(&plan(RUNNING), &plan(&text)).unwrap_err().reasons,
        [
            "layers.stripes.stripes: structural, needs down/up",
            "layers.stripes.chunk: structural, needs down/up",
        ]
    );
}

#[test]
fn over_is_structural() {
    // cache and crypt swap places: both `over`s change, and so does the top.
    let text = edited(RUNNING, "top = \"cache\"", "top = \"crypt\"");
    let text = edited(&text, "over = \"crypt\"", "over = \"sum\"");
    let text = edited(
        &text,
        "over = \"sum\"\nkey_env",
        "over = \"cache\"\nkey_env",
    );
    assert_eq!(
        diff(&plan(RUNNING), &plan(&text)).unwrap_err().reasons,
        [
            "device.top: structural, needs down/up",
            "layers.cache.over: structural, needs down/up",
            "layers.crypt.over: structural, needs down/up",
        ]
    );
}

#[test]
fn key_source_is_structural() {
    assert_eq!(
        refused("key_env = \"STACK_KEY\"", "key_env = \"OTHER_KEY\""),
        ["layers.crypt.key_env: structural, needs down/up"]
    );
    assert_eq!(
        refused("key_env = \"STACK_KEY\"", "key_file = \"keys/d0.key\""),
        [
            "layers.crypt.key_file: structural, needs down/up",
            "layers.crypt.key_env: structural, needs down/up",
        ]
    );
}

#[test]
fn compress_size_is_structural() {
    assert_eq!(
        refused("size = \"2GiB\"", "size = \"1GiB\""),
        ["layers.zip.size: structural, needs down/up"]
    );
}

#[test]
fn device_keys_are_structural() {
    for (from, to, key) in [
        ("name = \"d0\"", "name = \"d9\"", "device.name"),
        ("queues = 2", "queues = 4", "device.queues"),
        (
            "queue_depth = 64",
            "queue_depth = 128",
            "device.queue_depth",
        ),
        ("block_size = 4096", "block_size = 512", "device.block_size"),
        ("id = 3", "id = 4", "device.id"),
    ] {
        assert_eq!(
            refused(from, to),
            [format!("{key}: structural, needs down/up")],
            "{key}"
        );
    }
}

#[test]
fn removing_a_fixed_id_is_structural() {
    assert_eq!(
        refused("id = 3\n", ""),
        ["device.id: structural, needs down/up"]
    );
}

#[test]
fn renaming_a_layer_is_a_removal_and_an_addition() {
    let text = RUNNING
        .replace("[layers.m2]", "[layers.m3]")
        .replace("\"m1\", \"m2\"", "\"m1\", \"m3\"");
    assert_eq!(
        diff(&plan(RUNNING), &plan(&text)).unwrap_err().reasons,
        [
            "layers.stripes.stripes: structural, needs down/up",
            "layers.m2: removed, structural, needs down/up",
            "layers.m3: added, structural, needs down/up",
        ]
    );
}

#[test]
fn inserting_a_layer_is_structural() {
    let text = edited(RUNNING, "over = \"a\"", "over = \"slow\"");
    let text = format!("{text}\n[layers.slow]\ntype = \"fault\"\nover = \"a\"\n");
    assert_eq!(
        diff(&plan(RUNNING), &plan(&text)).unwrap_err().reasons,
        [
            "layers.fault.over: structural, needs down/up",
            "layers.slow: added, structural, needs down/up",
        ]
    );
}

#[test]
fn a_structural_key_refuses_the_live_ones_beside_it() {
    let text = edited(
        RUNNING,
        "read_policy = \"round-robin\"",
        "read_policy = \"first\"",
    );
    let text = edited(&text, "path = \"data/a.img\"", "path = \"data/c.img\"");
    assert_eq!(
        diff(&plan(RUNNING), &plan(&text)).unwrap_err().reasons,
        ["layers.a.path: structural, needs down/up"]
    );
}

#[test]
fn patch_gives_the_plan_a_change_leads_to() {
    for (from, to) in [
        ("read_policy = \"round-robin\"", "read_policy = \"first\""),
        ("capacity = \"64MiB\"", "capacity = \"8MiB\""),
        ("mode = \"write-through\"", "mode = \"write-back\""),
        ("delay = \"0us\"", "delay = \"3ms\""),
    ] {
        let mut running = plan(RUNNING);
        let target = plan(&edited(RUNNING, from, to));
        let changes = diff(&running, &target).unwrap();
        for change in &changes.layers {
            patch(&mut running, &change.layer, &change.change);
        }
        assert_eq!(running, target, "{to}");
    }
}

/// Growth, with sizes given by hand: `LEAVES` is raid0 `r` over disk `d`
/// and null `n`, in that order.
fn sized(
    running: &str,
    from: &str,
    to: &str,
    old: &[u64],
    new: &[u64],
) -> Result<Changes, Vec<String>> {
    let (a, b) = (plan(running), plan(&edited(running, from, to)));
    diff_sized(&a, old, &b, new).map_err(|refusal| refusal.reasons)
}

const GROWING: &str = r#"version = 1
[device]
name = "g"
top = "r"
[layers.r]
type = "raid0"
stripes = ["m", "n"]
[layers.m]
type = "memory"
size = "1GiB"
[layers.n]
type = "null"
size = "1GiB"
"#;

const G: u64 = 1 << 30;

#[test]
fn rising_leaf_sizes_grow_every_layer_bottom_up() {
    let text = GROWING.replace("size = \"1GiB\"", "size = \"2GiB\"");
    let (a, b) = (plan(GROWING), plan(&text));
    let changes = diff_sized(&a, &[2 * G, G, G], &b, &[4 * G, 2 * G, 2 * G]).unwrap();
    let grown: Vec<&str> = changes.grow.iter().map(|g| g.layer.as_str()).collect();
    assert_eq!(grown, ["n", "m", "r"]);
    assert_eq!(changes.device_size.as_ref().map(|(s, _)| *s), Some(4 * G));
    assert_eq!(
        edits(&changes),
        [
            "layers.n size: 1 GiB -> 2 GiB",
            "layers.m size: 1 GiB -> 2 GiB",
            "layers.r size: 2 GiB -> 4 GiB",
            "device size: 2 GiB -> 4 GiB"
        ]
    );
}

#[test]
fn shrinking_is_refused_with_a_reason() {
    let reasons = sized(
        GROWING,
        "size = \"1GiB\"\n[layers.n]",
        "size = \"512MiB\"\n[layers.n]",
        &[2 * G, G, G],
        &[2 * G, G / 2, G],
    )
    .unwrap_err();
    assert_eq!(
        reasons,
        ["layers.m: shrinking from 1 GiB to 512 MiB is not supported: a running device only grows (restore the size)"]
    );
}

#[test]
fn a_layer_that_does_not_grow_is_named() {
    // The disk below `r` grew (a bigger block device).
    let reasons = sized(
        LEAVES,
        "size = \"1GiB\"",
        "size = \"2GiB\"",
        &[2 * G, G, G],
        &[4 * G, 2 * G, 2 * G],
    )
    .unwrap_err();
    assert!(
        reasons.iter().any(|r| r
            .starts_with("layers.d: grows from 1 GiB to 2 GiB, but a disk layer does not grow")),
        "{reasons:?}"
    );
}

#[test]
fn growth_and_live_keys_go_together_but_not_with_structural_ones() {
    let text = RUNNING.replace("size = \"512MiB\"", "size = \"1GiB\"");
    let text = edited(
        &text,
        "read_policy = \"round-robin\"",
        "read_policy = \"first\"",
    );
    let (a, b) = (plan(RUNNING), plan(&text));
    let n = a.layers.len();
    let mut old = vec![G; n];
    let mut new = vec![G; n];
    for (id, layer) in a.layers.iter().enumerate() {
        if ["m1", "m2"].contains(&layer.name.as_str()) {
            old[id] = G / 2;
        }
    }
    let changes = diff_sized(&a, &old, &b, &new).unwrap();
    assert_eq!(changes.layers.len(), 1, "the read policy");
    let grown: Vec<&str> = changes.grow.iter().map(|g| g.layer.as_str()).collect();
    assert_eq!(grown, ["m2", "m1"]);
    // With a structural key too, nothing goes.
    let text = edited(&text, "chunk = \"64KiB\"", "chunk = \"128KiB\"");
    let b = plan(&text);
    new[0] = G;
    let reasons = diff_sized(&a, &old, &b, &new).unwrap_err().reasons;
    assert_eq!(reasons, ["layers.stripes.chunk: structural, needs down/up"]);
}

const THIN: &str = r#"version = 1
[device]
name = "t"
top = "c"
[layers.c]
type = "compress"
over = "f"
size = "8GiB"
[layers.f]
type = "memory"
size = "1GiB"
"#;

#[test]
fn a_compress_of_fixed_size_takes_in_the_growth_below_and_the_device_keeps_its_size() {
    let text = THIN.replace("size = \"1GiB\"", "size = \"2GiB\"");
    let (a, b) = (plan(THIN), plan(&text));
    let changes = diff_sized(&a, &[8 * G, G], &b, &[8 * G, 2 * G]).unwrap();
    assert_eq!(
        edits(&changes),
        [
            "layers.f size: 1 GiB -> 2 GiB",
            "layers.c space below: 1 GiB -> 2 GiB"
        ]
    );
    assert_eq!(changes.device_size, None);
    // Nothing grew below: nothing to take in.
    let changes = diff_sized(&a, &[8 * G, G], &a, &[8 * G, G]).unwrap();
    assert!(changes.is_empty());
    // Its own size rising is growth too (checked at reload by
    // `Compress::grow_refusal`).
    let text = THIN.replace("\"8GiB\"", "\"16GiB\"");
    let changes = diff_sized(&a, &[8 * G, G], &plan(&text), &[16 * G, G]).unwrap();
    assert_eq!(
        edits(&changes),
        [
            "layers.c size: 8 GiB -> 16 GiB",
            "device size: 8 GiB -> 16 GiB"
        ]
    );
}
