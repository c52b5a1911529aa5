//! A compiled in-memory stack, its config file edited on disk, and what a
//! reload does to each.

use std::sync::{Arc, Mutex};

use layers::plan::LogLevel;

use super::{Reloader, Trigger, Verdict};

const CONFIG: &str = r#"version = 1
[device]
name = "r0"
top = "mirror"
queues = 1

[log]
level = "info"

[layers.mirror]
type = "mirror"
legs = ["slow", "b"]
read_policy = "round-robin"

[layers.slow]
type = "fault"
over = "a"
delay = "0us"

[layers.a]
type = "memory"
size = "1MiB"

[layers.b]
type = "memory"
size = "1MiB"
"#;

struct Running {
    dir: tempfile::TempDir,
    reloader: Reloader,
    stack: Arc<layers::Stack>,
    levels: Arc<Mutex<Vec<LogLevel>>>,
}

impl Running {
    fn up() -> Running {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r0.toml");
        std::fs::write(&path, CONFIG).unwrap();
        let plan = crate::config::load(&path).unwrap();
        let stack = Arc::new(layers::compile(&plan).unwrap());
        let levels = Arc::new(Mutex::new(Vec::new()));
        let seen = levels.clone();
        let set_log_level = Box::new(move |level| {
            seen.lock().unwrap().push(level);
            Ok(())
        });
        let reloader = Reloader::new(path, plan, stack.clone(), set_log_level);
        Running {
            dir,
            reloader,
            stack,
            levels,
        }
    }

    fn write(&self, text: &str) {
        std::fs::write(self.dir.path().join("r0.toml"), text).unwrap();
    }

    fn edit(&self, from: &str, to: &str) {
        let path = self.dir.path().join("r0.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(from), "{from}");
        self.write(&text.replacen(from, to, 1));
    }

    /// A `key=value` word of `layer` in the `status` table.
    fn detail(&self, layer: &str, key: &str) -> String {
        let node = self.stack.status().into_iter().find(|n| n.name == layer);
        let words = node.unwrap().report.words();
        words.into_iter().find(|(k, _)| *k == key).unwrap().1
    }
}

#[test]
fn a_live_edit_is_applied_and_counted() {
    let running = Running::up();
    running.edit("read_policy = \"round-robin\"", "read_policy = \"first\"");
    let outcome = running.reloader.reload(Trigger::Command);
    assert_eq!(outcome.verdict, Verdict::Applied, "{outcome:?}");
    assert_eq!(
        outcome.applied,
        ["layers.mirror.read_policy: round-robin -> first"]
    );
    assert_eq!(outcome.generation, 2);
    assert_eq!(running.detail("mirror", "read_policy"), "first");
    let record = running.reloader.record();
    assert_eq!(record.generation, 2);
    assert_eq!(record.last.unwrap().verdict, Verdict::Applied);
}

#[test]
fn fault_knobs_and_log_level_apply_together() {
    let running = Running::up();
    running.edit("delay = \"0us\"", "delay = \"2ms\"");
    running.edit("level = \"info\"", "level = \"debug\"");
    let outcome = running.reloader.reload(Trigger::Sighup);
    assert_eq!(outcome.verdict, Verdict::Applied, "{outcome:?}");
    assert_eq!(outcome.applied.len(), 2);
    assert_eq!(running.detail("slow", "delay_us"), "2000");
    assert_eq!(*running.levels.lock().unwrap(), [LogLevel::Debug]);
}

#[test]
fn a_structural_edit_touches_nothing() {
    let running = Running::up();
    running.edit("read_policy = \"round-robin\"", "read_policy = \"first\"");
    running.edit("size = \"1MiB\"", "size = \"2MiB\"");
    let outcome = running.reloader.reload(Trigger::FileChanged);
    assert_eq!(outcome.verdict, Verdict::Refused);
    assert!(
        outcome.refused.iter().any(|r| r.contains("differ in size")),
        "one leg grown alone: {:?}",
        outcome.refused
    );
    assert!(outcome.applied.is_empty());
    assert_eq!(outcome.generation, 1);
    assert_eq!(running.detail("mirror", "read_policy"), "round-robin");
}

#[test]
fn a_syntax_error_is_refused_with_its_position() {
    let running = Running::up();
    running.edit("read_policy = \"round-robin\"", "read_policy = \"first");
    let outcome = running.reloader.reload(Trigger::FileChanged);
    assert_eq!(outcome.verdict, Verdict::Refused);
    assert!(
        outcome.refused.iter().any(|r| r.contains("r0.toml:13:")),
        "{:?}",
        outcome.refused
    );
    assert_eq!(running.detail("mirror", "read_policy"), "round-robin");
    assert_eq!(running.reloader.record().generation, 1);
}

#[test]
fn a_missing_file_is_refused() {
    let running = Running::up();
    std::fs::remove_file(running.dir.path().join("r0.toml")).unwrap();
    let outcome = running.reloader.reload(Trigger::Command);
    assert_eq!(outcome.verdict, Verdict::Refused);
    assert!(outcome.refused[0].contains("cannot read"), "{outcome:?}");
}

#[test]
fn an_unchanged_file_changes_nothing() {
    let running = Running::up();
    let outcome = running.reloader.reload(Trigger::Command);
    assert_eq!(outcome.verdict, Verdict::Unchanged);
    assert_eq!(outcome.generation, 1);
}

#[test]
fn later_reloads_diff_against_what_runs_now() {
    let running = Running::up();
    running.edit("read_policy = \"round-robin\"", "read_policy = \"first\"");
    assert_eq!(
        running.reloader.reload(Trigger::Command).verdict,
        Verdict::Applied
    );
    // A refused edit in between does not move the baseline.
    running.edit("size = \"1MiB\"", "size = \"4MiB\"");
    assert_eq!(
        running.reloader.reload(Trigger::Command).verdict,
        Verdict::Refused
    );
    running.edit("size = \"4MiB\"", "size = \"1MiB\"");
    running.edit("read_policy = \"first\"", "read_policy = \"least-pending\"");
    let outcome = running.reloader.reload(Trigger::Command);
    assert_eq!(
        outcome.applied,
        ["layers.mirror.read_policy: first -> least-pending"]
    );
    assert_eq!(outcome.generation, 3);
}

#[test]
fn outcome_json_gives_time_in_seconds_and_every_list() {
    let running = Running::up();
    running.edit("read_policy = \"round-robin\"", "read_policy = \"first\"");
    let json = running.reloader.reload(Trigger::Command).to_json();
    assert_eq!(json["result"], "applied");
    assert_eq!(json["trigger"], "reload command");
    assert_eq!(json["generation"], 2);
    assert!(json["time"].as_u64().unwrap() > 1_700_000_000);
    assert_eq!(json["refused"].as_array().unwrap().len(), 0);
    assert!(json["took_s"].as_f64().unwrap() < 5.0);
}

#[test]
fn the_reload_command_prints_each_key_and_reason() {
    let reply = serde_json::json!({
        "result": "refused", "generation": 1, "applied": [],
        "refused": ["layers.a.path: structural, needs down/up"],
    });
    assert_eq!(
        super::render("d0", &reply),
        "d0: refused (generation 1): the running device is unchanged\n\
         refused: layers.a.path: structural, needs down/up\n"
    );
    let reply = serde_json::json!({
        "result": "applied", "generation": 2, "refused": [],
        "applied": ["layers.m.read_policy: round-robin -> first"],
    });
    assert_eq!(
        super::render("d0", &reply),
        "d0: applied (generation 2)\napplied: layers.m.read_policy: round-robin -> first\n"
    );
}

#[test]
fn a_file_event_without_a_change_keeps_the_last_outcome() {
    let running = Running::up();
    running.edit("read_policy = \"round-robin\"", "read_policy = \"first\"");
    running.reloader.reload(Trigger::Command);
    let unchanged = running.reloader.reload(Trigger::FileChanged);
    assert_eq!(unchanged.verdict, Verdict::Unchanged);
    let last = running.reloader.record().last.unwrap();
    assert_eq!(last.verdict, Verdict::Applied);
}

/// A front end that records resizes; `refuse` says why it cannot, `fail`
/// makes the resize itself fail.
#[derive(Default)]
struct FakeResize {
    refuse: Option<String>,
    fail: bool,
    sizes: Mutex<Vec<u64>>,
}

impl super::Resize for FakeResize {
    fn refusal(&self) -> Option<String> {
        self.refuse.clone()
    }
    fn resize(&self, bytes: u64) -> Result<(), String> {
        if self.fail {
            return Err("UPDATE_SIZE failed: EIO".into());
        }
        self.sizes.lock().unwrap().push(bytes);
        Ok(())
    }
}

fn grow_both_legs(running: &Running) {
    let path = running.dir.path().join("r0.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    running.write(&text.replace("size = \"1MiB\"", "size = \"2MiB\""));
}

fn with_resize(resize: &Arc<FakeResize>) -> Running {
    let mut running = Running::up();
    let dir = running.dir.path().to_path_buf();
    let plan = crate::config::load(&dir.join("r0.toml")).unwrap();
    running.reloader = Reloader::new(
        dir.join("r0.toml"),
        plan,
        running.stack.clone(),
        Box::new(|_| Ok(())),
    )
    .with_resize(Some(resize.clone() as Arc<dyn super::Resize>));
    running
}

#[test]
fn growing_the_legs_grows_every_layer_then_the_device() {
    let resize = Arc::new(FakeResize::default());
    let running = with_resize(&resize);
    let before = running.stack.size();
    grow_both_legs(&running);
    let outcome = running.reloader.reload(Trigger::Command);
    assert_eq!(outcome.verdict, Verdict::Applied, "{outcome:?}");
    let grown = (2 << 20) - layers::mirror::DATA_START;
    assert_eq!(running.stack.size(), grown);
    assert!(grown > before);
    assert_eq!(*resize.sizes.lock().unwrap(), [grown]);
    // Bottom-up: leaves, the fault over one, the mirror, then the device.
    let order: Vec<&str> = outcome
        .applied
        .iter()
        .map(|a| a.split(' ').next().unwrap())
        .collect();
    assert_eq!(
        order,
        [
            "layers.b",
            "layers.a",
            "layers.slow",
            "layers.mirror",
            "device"
        ],
        "{:?}",
        outcome.applied
    );
    // The new space is served.
    let ctx = layers::IoCtx::new(0, 8).unwrap();
    let exec = layers::Executor::new().unwrap();
    let data = layers::IoBuf::copy_from(&[7u8; 4096]);
    exec.block_on(&ctx, running.stack.top().write(&ctx, grown - 4096, &data))
        .unwrap();
    // And a second reload of the same file changes nothing.
    let again = running.reloader.reload(Trigger::Command);
    assert_eq!(again.verdict, Verdict::Unchanged, "{again:?}");
}

#[test]
fn a_front_end_that_cannot_resize_refuses_before_anything_grows() {
    let resize = Arc::new(FakeResize {
        refuse: Some("needs Linux 6.14".into()),
        ..FakeResize::default()
    });
    let running = with_resize(&resize);
    let before = running.stack.size();
    grow_both_legs(&running);
    let outcome = running.reloader.reload(Trigger::Command);
    assert_eq!(outcome.verdict, Verdict::Refused, "{outcome:?}");
    assert_eq!(outcome.refused, ["needs Linux 6.14"]);
    assert_eq!(running.stack.size(), before);
    let leaf = running.stack.layer("a").unwrap().size();
    assert_eq!(leaf, 1 << 20, "a leaf grew before the refusal");
}

#[test]
fn a_failed_resize_keeps_the_old_size_served_and_is_retried() {
    let failing = Arc::new(FakeResize {
        fail: true,
        ..FakeResize::default()
    });
    let mut running = with_resize(&failing);
    grow_both_legs(&running);
    let outcome = running.reloader.reload(Trigger::Command);
    assert_eq!(outcome.verdict, Verdict::Failed, "{outcome:?}");
    assert!(
        outcome.refused[0].contains("keeps serving its old size"),
        "{:?}",
        outcome.refused
    );
    // The same reloader with a working front end: the resize is retried.
    let working = Arc::new(FakeResize::default());
    running.reloader.resize = Some(working.clone() as Arc<dyn super::Resize>);
    let again = running.reloader.reload(Trigger::Command);
    assert_eq!(again.verdict, Verdict::Applied, "{again:?}");
    assert_eq!(
        *working.sizes.lock().unwrap(),
        [(2 << 20) - layers::mirror::DATA_START]
    );
}

#[test]
fn shrinking_is_refused() {
    let resize = Arc::new(FakeResize::default());
    let running = with_resize(&resize);
    let path = running.dir.path().join("r0.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    running.write(&text.replace("size = \"1MiB\"", "size = \"512KiB\""));
    let outcome = running.reloader.reload(Trigger::Command);
    assert_eq!(outcome.verdict, Verdict::Refused, "{outcome:?}");
    assert!(
        outcome.refused.iter().any(|r| r.contains("shrinking")),
        "{:?}",
        outcome.refused
    );
}

const COMPRESS: &str = r#"version = 1
[device]
name = "c0"
top = "c"
queues = 1

[layers.c]
type = "compress"
over = "m"
size = "4MiB"

[layers.m]
type = "memory"
size = "1MiB"
"#;

fn data_area(stack: &layers::Stack) -> u64 {
    match stack.layer("c").unwrap().report() {
        layers::LayerReport::Compress(report) => report.data_area_bytes,
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_compress_takes_in_the_grown_layer_below_and_raises_its_size() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c0.toml");
    std::fs::write(&path, COMPRESS).unwrap();
    let plan = crate::config::load(&path).unwrap();
    let stack = Arc::new(layers::compile(&plan).unwrap());
    let resize = Arc::new(FakeResize::default());
    let reloader = Reloader::new(path.clone(), plan, stack.clone(), Box::new(|_| Ok(())))
        .with_resize(Some(resize.clone() as Arc<dyn super::Resize>));
    let area = data_area(&stack);
    std::fs::write(&path, COMPRESS.replace("\"1MiB\"", "\"2MiB\"")).unwrap();
    let outcome = reloader.reload(Trigger::Command);
    assert_eq!(outcome.verdict, Verdict::Applied, "{outcome:?}");
    assert_eq!(
        outcome.applied,
        [
            "layers.m size: 1 MiB -> 2 MiB",
            "layers.c space below: 1 MiB -> 2 MiB"
        ]
    );
    assert_eq!(stack.size(), 4 << 20, "the exposed size stays");
    assert_eq!(data_area(&stack), area + (1 << 20));
    // A larger exposed size: the layer below grows, then the compress
    // map gains pages and the device follows.
    let text = COMPRESS
        .replace("\"1MiB\"", "\"3MiB\"")
        .replace("\"4MiB\"", "\"8MiB\"");
    std::fs::write(&path, text).unwrap();
    let outcome = reloader.reload(Trigger::Command);
    assert_eq!(outcome.verdict, Verdict::Applied, "{outcome:?}");
    assert!(
        outcome
            .applied
            .iter()
            .any(|a| a == "layers.c size: 4 MiB -> 8 MiB"),
        "{outcome:?}"
    );
    assert_eq!(stack.layer("m").unwrap().size(), 3 << 20);
    assert_eq!(stack.size(), 8 << 20, "the exposed size rose");
    assert_eq!(*resize.sizes.lock().unwrap(), [8 << 20]);
    // Smaller again: refused as a shrink, before anything changes.
    std::fs::write(&path, COMPRESS.replace("\"1MiB\"", "\"3MiB\"")).unwrap();
    let outcome = reloader.reload(Trigger::Command);
    assert_eq!(outcome.verdict, Verdict::Refused, "{outcome:?}");
    assert_eq!(stack.size(), 8 << 20);
}
