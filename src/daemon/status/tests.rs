use std::time::{Duration, SystemTime};

use serde_json::json;

use super::{format_seconds, render, StatusReply, UblkStatus};

#[test]
fn latencies_read_in_the_unit_that_fits() {
    assert_eq!(format_seconds(0.000_000_5), "500ns");
    assert_eq!(format_seconds(0.000_085), "85us");
    assert_eq!(format_seconds(0.001_2), "1.2ms");
    assert_eq!(format_seconds(2.0), "2.0s");
}

fn counters(reads: u64, read_p50_s: Option<f64>, read_p99_s: Option<f64>) -> serde_json::Value {
    json!({"reads": reads, "writes": 2, "flushes": 3, "discards": 0, "write_zeroes": 0,
           "read_bytes": 4096, "written_bytes": 8192, "errors": 0,
           "read_p50_s": read_p50_s, "read_p99_s": read_p99_s,
           "write_p50_s": null, "write_p99_s": null})
}

fn reply(last_reload: serde_json::Value) -> StatusReply {
    let reply = json!({
        "schema": 1, "name": "m", "path": "/dev/ublkb0", "size": 1u64 << 30, "block_size": 4096,
        "queues": 2, "state": "running", "pid": 7, "generation": 2,
        "last_reload": last_reload,
        "layers": [
            {"name": "mirror", "type": "mirror", "depth": 0, "size": 1u64 << 30,
             "stats": counters(1, Some(0.000_085), Some(0.001_2)),
             "details": {"read_policy": "first",
                         "legs": [{"health": "failed", "read_errors": 32, "write_errors": 0, "repaired": 0},
                                  {"health": "ok", "read_errors": 0, "write_errors": 0, "repaired": 1}],
                         "generation": 5, "dirty_regions": 3, "regions": 128, "region_bytes": 1048576,
                         "uuid": "00ff", "resync_percent": 37, "resync_unreadable_blocks": 0,
                         "resync_bytes": 0, "resync_done_bytes": 12u64 << 20,
                         "resync_total_bytes": 32u64 << 20}},
            {"name": "slow", "type": "fault", "depth": 1, "size": 1u64 << 30,
             "stats": counters(1, None, None),
             "details": {"read_error_rate": 0.5, "write_error_rate": 0.0, "delay_us": 20,
                         "injected_errors": 4, "range": {"start": 0, "end": 4096}}},
            {"name": "a", "type": "file", "depth": 2, "size": 1u64 << 30,
             "stats": counters(1, None, None), "details": {"io": "sync"}},
            {"name": "b", "type": "memory", "depth": 1, "size": 1u64 << 30,
             "stats": counters(1, None, None), "details": {}},
        ]
    });
    serde_json::from_value(reply).unwrap()
}

#[test]
fn status_renders_the_tree_indented_with_the_last_reload() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_012);
    let last_reload = json!({"result": "applied", "trigger": "SIGHUP", "time": 1_800_000_000u64,
        "took_s": 0.000_4, "generation": 2,
        "applied": ["layers.mirror.read_policy: round-robin -> first"], "refused": []});
    let text = render(&reply(last_reload), now);
    assert!(text.contains("generation 2\n"), "{text}");
    assert!(
        text.contains("last reload: applied 12 s ago (SIGHUP, took 400us)\n"),
        "{text}"
    );
    assert!(
        text.contains("  applied: layers.mirror.read_policy: round-robin -> first\n"),
        "{text}"
    );
    assert!(text.contains("\n    a "), "{text}");
    assert!(
        text.contains("         1          2        3       0"),
        "{text}"
    );
    assert!(text.contains("85us/1.2ms"), "{text}");
    assert!(text.contains("-/-"), "{text}");
    // Each layer's words in the order the table has always shown them.
    assert!(
        text.contains(
            "  dirty_regions=3/128  generation=5  \
             legs=0:failed(read_errors=32,write_errors=0,repaired=0) \
             1:ok(read_errors=0,write_errors=0,repaired=1)  read_policy=first  \
             region_bytes=1048576  resync=37%  uuid=00ff\n"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "  delay_us=20  injected_errors=4  range=0..4096  read_error_rate=0.5  \
             write_error_rate=0\n"
        ),
        "{text}"
    );
    assert!(text.contains("  io=sync  kind=file\n"), "{text}");
    assert!(
        text.contains("-/-\n"),
        "a memory layer has no words: {text}"
    );
}

#[test]
fn status_before_any_reload_says_so() {
    let text = render(&reply(serde_json::Value::Null), SystemTime::now());
    assert!(text.contains("last reload: none\n"), "{text}");
    // No ublk object (an NBD device, or an older daemon): no ublk line.
    assert!(!text.contains("ublk:"), "{text}");
}

#[test]
fn a_ublk_device_shows_its_data_path_and_features_on_one_line() {
    let mut status = reply(serde_json::Value::Null);
    status.ublk = Some(UblkStatus::new(0x1fe, 0x58, None));
    let text = render(&status, SystemTime::now());
    assert!(
        text.contains(
            "ublk: data path copy, features USER_RECOVERY USER_RECOVERY_REISSUE CMD_IOCTL_ENCODE, kernel offers 0x1fe\n"
        ),
        "{text}"
    );
    let json = serde_json::to_value(&status).unwrap();
    assert_eq!(json["ublk"]["kernel_features"], 0x1fe);
    assert_eq!(json["ublk"]["data_path"], "copy");
    let back: StatusReply = serde_json::from_value(json).unwrap();
    assert_eq!(back, status);
}

#[test]
fn a_zero_copy_device_says_so() {
    let mut status = reply(serde_json::Value::Null);
    // CMD_IOCTL_ENCODE and AUTO_BUF_REG.
    status.ublk = Some(UblkStatus::new(0x1f_ffff, 0x840, None));
    let text = render(&status, SystemTime::now());
    assert!(
        text.contains("ublk: data path zero-copy, features CMD_IOCTL_ENCODE AUTO_BUF_REG,"),
        "{text}"
    );
    let json = serde_json::to_value(&status).unwrap();
    assert_eq!(json["ublk"]["data_path"], "zero-copy");
}

#[test]
fn the_dma_alignment_asked_for_is_shown() {
    let mut status = reply(serde_json::Value::Null);
    status.ublk = Some(UblkStatus::new(0x1f_ffff, 0x840, Some(4095)));
    let text = render(&status, SystemTime::now());
    assert!(
        text.contains("kernel offers 0x1fffff, DMA alignment 4096 bytes\n"),
        "{text}"
    );
    let json = serde_json::to_value(&status).unwrap();
    assert_eq!(json["ublk"]["dma_alignment"], 4095);
    let back: StatusReply = serde_json::from_value(json).unwrap();
    assert_eq!(back, status);
    // None: null in JSON, nothing in the text.
    status.ublk = Some(UblkStatus::new(0x1f_ffff, 0x840, None));
    let json = serde_json::to_value(&status).unwrap();
    assert!(json["ublk"]["dma_alignment"].is_null(), "{json}");
    assert!(!render(&status, SystemTime::now()).contains("DMA"));
}

#[test]
fn a_reply_without_dma_alignment_reads_as_none() {
    // From a daemon that predates the field (the old one during an upgrade).
    let mut status = reply(serde_json::Value::Null);
    status.ublk = Some(UblkStatus::new(0x1fe, 0x58, None));
    let mut json = serde_json::to_value(&status).unwrap();
    json["ublk"]
        .as_object_mut()
        .unwrap()
        .remove("dma_alignment");
    let back: StatusReply = serde_json::from_value(json).unwrap();
    assert_eq!(back, status);
}

fn scrub(state: &str, done: u64, elapsed_s: f64, error: Option<&str>) -> serde_json::Value {
    let rate = done as f64 / elapsed_s;
    json!({"state": state, "started": 1_800_000_000u64, "done": done, "total": 64u64 << 20,
           "elapsed_s": elapsed_s, "rate_bytes_per_s": rate,
           "eta_s": ((64u64 << 20) - done) as f64 / rate,
           "repaired": 1, "mismatched": 0, "unrepairable": 0, "error": error})
}

#[test]
fn status_shows_the_scrub_and_each_rebuild_on_a_line_of_their_own() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_045);
    let mut status = reply(serde_json::Value::Null);
    let text = render(&status, now);
    assert!(!text.contains("scrub"), "no scrub ran: {text}");
    assert!(
        text.contains("\nrebuild of mirror \"mirror\": 37% (12 MiB of 32 MiB copied)\n"),
        "{text}"
    );

    status.scrub = Some(serde_json::from_value(scrub("running", 24 << 20, 2.0, None)).unwrap());
    let text = render(&status, now);
    assert!(
        text.contains(
            "\nscrub: running, 37% (24 MiB of 64 MiB, 12 MiB/s, 3.3 s left): \
             1 repaired, 0 mismatched copies rewritten, 0 unrepairable\n"
        ),
        "{text}"
    );

    status.scrub = Some(serde_json::from_value(scrub("done", 64 << 20, 5.0, None)).unwrap());
    let text = render(&status, now);
    assert!(
        text.contains(
            "\nlast scrub: done 40 s ago, 64 MiB in 5.0 s (12.8 MiB/s): \
             1 repaired, 0 mismatched copies rewritten, 0 unrepairable\n"
        ),
        "{text}"
    );

    let failed = scrub("failed", 1 << 20, 5.0, Some("mirror \"m\": no leg is ok"));
    status.scrub = Some(serde_json::from_value(failed).unwrap());
    let text = render(&status, now);
    assert!(
        text.contains(
            "\nlast scrub: failed 40 s ago after 1 MiB in 5.0 s (204.8 KiB/s): \
             mirror \"m\": no leg is ok\n"
        ),
        "{text}"
    );
}

#[test]
fn status_names_the_metrics_endpoint_when_there_is_one() {
    let mut status = reply(serde_json::Value::Null);
    assert!(!render(&status, SystemTime::now()).contains("metrics:"));
    status.metrics = Some("http://127.0.0.1:9474/metrics".into());
    let text = render(&status, SystemTime::now());
    assert!(
        text.contains("\nmetrics: http://127.0.0.1:9474/metrics\n"),
        "{text}"
    );
}
