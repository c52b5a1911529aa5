use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use layers::compile::NodeStatus;
use layers::plan::{CacheMode, FaultKnobs, KeySource, ReadPolicy};
use layers::report::{LeafIo, LeafReport, NbdReport};
use layers::testing::plans::PlanBuilder;
use layers::LayerReport;

use super::families::{collect, Snapshot};
use super::render::{render, Format, Kind};
use super::*;
use crate::daemon::front_end::ConnectionCounts;

#[test]
fn a_port_alone_is_loopback() {
    assert_eq!(parse("9474"), Ok(vec!["127.0.0.1:9474".parse().unwrap()]));
    assert_eq!(parse("0"), Ok(vec!["127.0.0.1:0".parse().unwrap()]));
}

#[test]
fn explicit_addresses_are_taken_as_given() {
    assert_eq!(parse("[::1]:9474"), Ok(vec!["[::1]:9474".parse().unwrap()]));
    assert_eq!(
        parse("0.0.0.0:9474"),
        Ok(vec!["0.0.0.0:9474".parse().unwrap()])
    );
    let local = parse("localhost:9474").unwrap();
    assert!(
        local
            .iter()
            .all(|a| a.ip().is_loopback() && a.port() == 9474),
        "{local:?}"
    );
}

#[test]
fn every_interface_needs_an_explicit_host() {
    let error = parse(":9474").unwrap_err();
    assert!(error.contains("no host"), "{error}");
    assert!(error.contains("0.0.0.0:9474"), "{error}");
}

#[test]
fn bad_addresses_are_refused_with_the_forms_that_work() {
    for bad in [
        "",
        "metrics",
        "1.2.3.4",
        "127.0.0.1:99999",
        "127.0.0.1:port",
        "a b:1",
        "-1",
    ] {
        let error = parse(bad).unwrap_err();
        assert!(error.starts_with(&format!("--metrics {bad}: ")), "{error}");
        assert!(error.contains("HOST:PORT"), "{bad}: {error}");
    }
}

#[test]
fn a_port_in_use_is_an_error_naming_it() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let error = Endpoint::bind(&port.to_string()).err().expect("refused");
    assert!(error.contains(&format!("127.0.0.1:{port}")), "{error}");
    assert!(error.contains("in use"), "{error}");
    let free = Endpoint::bind("127.0.0.1:0").unwrap();
    assert!(
        free.url().starts_with("http://127.0.0.1:"),
        "{}",
        free.url()
    );
    assert!(free.url().ends_with("/metrics") && !free.url().contains(":0/"));
}

/// A stack with a layer of every type that needs no server or block device,
/// plus an `nbd` leaf and a direct `file` leaf as reports, compiled and
/// collected with connection counts: every metric of the catalog has samples.
fn every_family() -> Vec<render::Family> {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    std::fs::write(&key, [7u8; 32]).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut b = PlanBuilder::new(dir.path(), 4096);
    let file = b.file("file", 16 << 20);
    let zeros = b.layer(
        "zeros",
        layers::plan::NullParams {
            size_bytes: 16 << 20,
        },
    );
    let stripes = b.raid0("stripes", &[file, zeros], 64 << 10);
    let ram = b.memory("ram", 32 << 20);
    let mirror = b.mirror("mirror", &[stripes, ram], ReadPolicy::First);
    let fault = b.fault("fault", mirror, FaultKnobs::default());
    let sum = b.checksum("sum", fault);
    let crypt = b.crypt_with("crypt", sum, KeySource::File(key));
    let compress = b.compress("compress", crypt, None);
    let top = b.cache("cache", compress, 1 << 20, CacheMode::WriteBack);
    let stack = layers::compile(&b.build(top)).unwrap();
    let mut nodes = stack.status();
    let leaf = |name: &str, report: LayerReport| NodeStatus {
        name: name.into(),
        report,
        ..nodes[nodes.len() - 1].clone()
    };
    let remote = leaf(
        "remote \"x\"",
        LayerReport::Nbd(NbdReport {
            uri: "nbd://x/".into(),
            connections: 1,
            structured_replies: true,
            connected: true,
            failure: None,
        }),
    );
    let direct = leaf(
        "direct",
        LayerReport::File(LeafReport {
            io: LeafIo::IoUring,
            misaligned_copies: Some(3),
        }),
    );
    nodes.extend([remote, direct]);
    collect(&Snapshot {
        device: "every".into(),
        path: "nbd+unix:///?socket=/x".into(),
        size: stack.size(),
        block_size: 4096,
        queues: 1,
        layers: nodes,
        generation: 1,
        last_reload: None,
        connections: Some(ConnectionCounts {
            open: 1,
            accepted: 2,
            refused: 0,
        }),
    })
}

#[test]
fn a_stack_of_every_type_fills_every_metric() {
    let families = every_family();
    assert_eq!(families.len(), CATALOG.len());
    let empty: Vec<String> = families
        .iter()
        .filter(|f| f.is_empty())
        .map(render::Family::sample_name)
        .collect();
    assert!(empty.is_empty(), "no samples: {empty:?}");
    let text = render(&families, Format::Prometheus);
    // A mirror's legs are named by their layers, the tree by parents.
    assert!(text.contains(
        "ublk_stack_mirror_leg_state{device=\"every\",layer=\"mirror\",leg=\"1\",leg_layer=\"ram\",state=\"ok\"} 1\n"
    ));
    assert!(text.contains(
        "ublk_stack_mirror_leg_state{device=\"every\",layer=\"mirror\",leg=\"1\",leg_layer=\"ram\",state=\"failed\"} 0\n"
    ));
    assert!(text.contains(
        "ublk_stack_layer_info{device=\"every\",layer=\"stripes\",type=\"raid0\",parent=\"mirror\"} 1\n"
    ));
    assert!(text.contains(
        "ublk_stack_layer_info{device=\"every\",layer=\"cache\",type=\"cache\",parent=\"\"} 1\n"
    ));
    assert!(text.contains(
        "ublk_stack_cache_mode{device=\"every\",layer=\"cache\",mode=\"write-back\"} 1\n"
    ));
    assert!(
        text.contains("layer=\"remote \\\"x\\\"\""),
        "label values are escaped"
    );
    assert!(text.contains("ublk_stack_reload_last_result{device=\"every\",result=\"applied\"} 0\n"));
    // 24 bounds and +Inf per layer and op.
    let buckets = text
        .matches("ublk_stack_layer_latency_seconds_bucket{device=\"every\",layer=\"cache\",")
        .count();
    assert_eq!(buckets, 5 * 25);
    // Nothing above the top layer did I/O yet.
    assert!(text.contains(",layer=\"cache\",type=\"cache\",op=\"flush\",le=\"0.000001024\"} 0\n"));
    assert!(text.contains(",layer=\"cache\",type=\"cache\",op=\"flush\",le=\"+Inf\"} 0\n"));
    assert!(text.contains("ublk_stack_layer_latency_seconds_count{device=\"every\",layer=\"cache\",type=\"cache\",op=\"read\"} 0\n"));
    check_syntax(&text);
    let open = render(&families, Format::OpenMetrics);
    assert!(open.ends_with("# EOF\n"));
    assert!(open.contains("# TYPE ublk_stack_layer_ops counter\n"));
    assert!(open.contains("# TYPE ublk_stack_layer info\n"));
}

/// Every line is a comment or `name{k="v",…} value`, and every family is
/// introduced once.
fn check_syntax(text: &str) {
    let mut typed = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let name = rest.split(' ').next().unwrap();
            assert!(typed.insert(name.to_string()), "{name} typed twice");
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap();
        assert!(
            value == "+Inf" || value == "NaN" || value.parse::<f64>().is_ok(),
            "{line}"
        );
        let name = series.split('{').next().unwrap();
        assert!(
            name.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
            "{line}"
        );
        if let Some(labels) = series.strip_prefix(name) {
            assert!(
                labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')),
                "{line}"
            );
        }
    }
}

/// The rows of docs/metrics.md: name → (type, labels).
fn documented() -> BTreeMap<String, (String, String)> {
    let page = std::fs::read_to_string(repo().join("docs/metrics.md")).unwrap();
    let mut out = BTreeMap::new();
    for line in page.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let [_, name, kind, labels, ..] = cells[..] else {
            continue;
        };
        let Some(name) = name
            .strip_prefix("`ublk_stack_")
            .and_then(|n| n.strip_suffix('`'))
        else {
            continue;
        };
        let before = out.insert(
            format!("ublk_stack_{name}"),
            (kind.to_string(), labels.to_string()),
        );
        assert!(before.is_none(), "{name} is listed twice");
    }
    out
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn kind_word(kind: Kind) -> &'static str {
    match kind {
        Kind::Counter => "counter",
        Kind::Gauge => "gauge",
        Kind::Histogram => "histogram",
        Kind::Info => "info",
    }
}

/// The name a scraper sees for a family's plain samples.
fn shown_name(def: &Def) -> String {
    let suffix = match def.kind {
        Kind::Counter => "_total",
        Kind::Info => "_info",
        Kind::Gauge | Kind::Histogram => "",
    };
    format!("{}{suffix}", def.name)
}

#[test]
fn docs_list_every_metric_with_its_type_and_labels_and_no_other() {
    let documented = documented();
    let mut wrong = Vec::new();
    for def in CATALOG {
        let name = shown_name(def);
        let expected = (kind_word(def.kind).to_string(), def.labels.join(", "));
        match documented.get(&name) {
            None => wrong.push(format!("{name}: exported, not on the page")),
            Some(row) if *row != expected => wrong.push(format!(
                "{name}: the page says {row:?}, the code {expected:?}"
            )),
            Some(_) => {}
        }
    }
    let exported: BTreeSet<String> = CATALOG.iter().map(|d| shown_name(d)).collect();
    for name in documented.keys() {
        if !exported.contains(name) {
            wrong.push(format!("{name}: on the page, not exported"));
        }
    }
    assert!(
        wrong.is_empty(),
        "docs/metrics.md and the code differ:\n{}",
        wrong.join("\n")
    );
}

/// Every metric a query of the sample dashboard names is one the daemon
/// exports (and so, by the test above, one docs/metrics.md lists).
#[test]
fn the_grafana_dashboard_queries_only_real_metrics() {
    let text = std::fs::read_to_string(repo().join("docs/grafana/ublk-stack.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    let mut exprs = Vec::new();
    find_exprs(&dashboard, &mut exprs);
    assert!(exprs.len() >= 10, "{exprs:?}");
    let mut names = BTreeSet::new();
    for def in CATALOG {
        match def.kind {
            Kind::Histogram => {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{}{suffix}", def.name));
                }
            }
            _ => {
                names.insert(shown_name(def));
            }
        }
    }
    let mut unknown = Vec::new();
    let mut used = 0;
    for expr in &exprs {
        for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("ublk_stack_") {
                used += 1;
                if !names.contains(word) {
                    unknown.push(format!("{word} in {expr}"));
                }
            }
        }
    }
    assert!(used >= exprs.len(), "queries without a metric: {exprs:?}");
    assert!(
        unknown.is_empty(),
        "unknown metrics:\n{}",
        unknown.join("\n")
    );
}

fn find_exprs(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, child) in map {
                match (key.as_str(), child) {
                    ("expr", serde_json::Value::String(expr)) => out.push(expr.clone()),
                    ("definition", serde_json::Value::String(expr)) => out.push(expr.clone()),
                    _ => find_exprs(child, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|item| find_exprs(item, out)),
        _ => {}
    }
}
