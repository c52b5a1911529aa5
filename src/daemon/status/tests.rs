use std::time::{Duration, SystemTime};

use serde_json::json;

use super::{detail_value, format_seconds, render};

#[test]
fn numeric_details_become_json_numbers() {
    assert_eq!(detail_value("2000".into()), json!(2000));
    assert_eq!(detail_value("0.25".into()), json!(0.25));
    assert_eq!(detail_value("0".into()), json!(0));
    assert_eq!(detail_value("-3".into()), json!(-3));
    assert_eq!(detail_value("first".into()), json!("first"));
    assert_eq!(detail_value("0..4096".into()), json!("0..4096"));
    assert_eq!(detail_value("inf".into()), json!("inf"));
    assert_eq!(detail_value("NaN".into()), json!("NaN"));
    assert_eq!(detail_value("".into()), json!(""));
}

#[test]
fn latencies_read_in_the_unit_that_fits() {
    assert_eq!(format_seconds(0.000_000_5), "500ns");
    assert_eq!(format_seconds(0.000_085), "85us");
    assert_eq!(format_seconds(0.001_2), "1.2ms");
    assert_eq!(format_seconds(2.0), "2.0s");
}

#[test]
fn status_renders_the_tree_indented_with_the_last_reload() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_012);
    let reply = json!({
        "name": "m", "path": "/dev/ublkb0", "size": 1u64 << 30, "state": "running", "generation": 2,
        "last_reload": {"result": "applied", "trigger": "SIGHUP", "time": 1_800_000_000u64, "took_s": 0.000_4,
                        "applied": ["layers.mirror.read_policy: round-robin -> first"], "refused": []},
        "layers": [
            {"name": "mirror", "type": "mirror", "depth": 0, "size": 1u64 << 30,
             "stats": {"reads": 1, "writes": 2, "flushes": 3, "errors": 0,
                       "read_p50_s": 0.000_085, "read_p99_s": 0.001_2,
                       "write_p50_s": null, "write_p99_s": null},
             "details": {"read_policy": "first"}},
            {"name": "a", "type": "file", "depth": 1, "size": 1u64 << 30,
             "stats": {"reads": 1, "writes": 2, "flushes": 3, "errors": 0}, "details": {"health": "ok", "delay_us": 20}},
        ]
    });
    let text = render(&reply, now);
    assert!(text.contains("generation 2\n"), "{text}");
    assert!(
        text.contains("last reload: applied 12 s ago (SIGHUP, took 400us)\n"),
        "{text}"
    );
    assert!(
        text.contains("  applied: layers.mirror.read_policy: round-robin -> first\n"),
        "{text}"
    );
    assert!(text.contains("\n  a "), "{text}");
    assert!(
        text.contains("         1          2        3       0"),
        "{text}"
    );
    assert!(text.contains("85us/1.2ms"), "{text}");
    assert!(text.contains("-/-"), "{text}");
    assert!(text.contains("health=ok"), "{text}");
    assert!(text.contains("delay_us=20"), "{text}");
}

#[test]
fn status_before_any_reload_says_so() {
    let reply = json!({"name": "m", "generation": 1, "last_reload": null, "layers": []});
    assert!(render(&reply, SystemTime::now()).contains("last reload: none\n"));
}
