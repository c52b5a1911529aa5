//! The `nbd` leaf against real NBD servers (nbdkit's memory and file plugins,
//! qemu-nbd on a file), over a unix socket and loopback TCP: the model check
//! with many requests in flight on every queue, then a reopen that reads back
//! what was written. The servers come from tests/nbd/setup.sh.

mod nbd_servers;

use layers::plan::{NbdParams, ReadPolicy};
use layers::report::LayerReport;
use layers::testing::{check_stack, rng::seeds, verify_image, ModelConfig, PlanBuilder};
use layers::{compile, Plan};
use nbd_servers::{params, Server};

const MIB: u64 = 1 << 20;

/// What each `nbd` leaf of `stack` reports (connected, and why not), for a
/// failure's message.
fn nbd_reports(stack: &layers::Stack) -> String {
    let reports: Vec<String> = stack
        .status()
        .iter()
        .filter_map(|node| match stack.layer(&node.name)?.report() {
            LayerReport::Nbd(report) => Some(format!("{}: {report:?}", node.name)),
            _ => None,
        })
        .collect();
    reports.join("; ")
}

fn run(name: &str, plan: Plan, base_seed: u64) {
    let cfg = ModelConfig {
        ops: 600,
        ..ModelConfig::default()
    };
    for seed in seeds(base_seed, 2) {
        let stack = compile(&plan).unwrap_or_else(|e| panic!("{name}: {e}"));
        let image = check_stack(&stack, seed, &cfg)
            .unwrap_or_else(|e| panic!("{name}: {e}; the leaves: {}", nbd_reports(&stack)));
        drop(stack);
        // A new connection sees what the last one wrote.
        let stack = compile(&plan).unwrap_or_else(|e| panic!("{name}: reopen: {e}"));
        verify_image(&stack, &image)
            .unwrap_or_else(|e| panic!("{name}: seed {seed}: after reopen: {e}"));
    }
}

fn single(name: &str, params: NbdParams, block: u32) -> Plan {
    let dir = tempfile::tempdir().unwrap();
    let mut b = PlanBuilder::new(dir.path(), block);
    let top = b.layer(name, params);
    b.build(top)
}

#[test]
#[ignore = "needs nbdkit (tests/nbd/setup.sh)"]
fn nbdkit_memory_over_a_unix_socket_matches_the_model() {
    let server = Server::nbdkit_memory(8 * MIB);
    for connections in [1, 2] {
        let mut p = params(&server.unix_uri(), Some(8 * MIB));
        p.connections = connections;
        let plan = single("n", p, 4096);
        run("nbdkit memory", plan.clone(), 300 + u64::from(connections));
        let stack = compile(&plan).unwrap();
        let LayerReport::Nbd(report) = stack.layer("n").unwrap().report() else {
            panic!("an nbd leaf reports as nbd")
        };
        assert_eq!(report.connections, u64::from(connections));
        assert!(report.connected);
        assert!(report.structured_replies);
    }
}

/// A server with simple replies only and no WRITE_ZEROES: reads come in
/// simple replies, and discards and write_zeroes are sent as writes of zeros.
#[test]
#[ignore = "needs nbdkit (tests/nbd/setup.sh)"]
fn nbdkit_without_structured_replies_or_write_zeroes_matches_the_model() {
    let server = Server::nbdkit_memory_with(8 * MIB, &["--no-sr", "--filter=nozero"]);
    let plan = single("n", params(&server.unix_uri(), Some(8 * MIB)), 4096);
    run("nbdkit --no-sr nozero", plan.clone(), 305);
    let stack = compile(&plan).unwrap();
    let LayerReport::Nbd(report) = stack.layer("n").unwrap().report() else {
        panic!("an nbd leaf reports as nbd")
    };
    assert!(!report.structured_replies);
    assert!(!stack.discard_frees_space());
}

#[test]
#[ignore = "needs nbdkit (tests/nbd/setup.sh)"]
fn nbdkit_file_over_loopback_tcp_matches_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::nbdkit_file_tcp(&dir.path().join("export.img"), 8 * MIB);
    let plan = single("n", params(&server.tcp_uri(), None), 512);
    run("nbdkit file over TCP", plan, 310);
}

#[test]
#[ignore = "needs qemu-nbd (tests/nbd/setup.sh)"]
fn qemu_nbd_on_a_file_matches_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::qemu_nbd(&dir.path().join("export.img"), 8 * MIB);
    let plan = single("n", params(&server.unix_uri(), Some(8 * MIB)), 4096);
    run("qemu-nbd", plan, 320);
}

/// A mirror of a local file and a remote export: what it writes, both legs
/// hold, and each reads back alone.
#[test]
#[ignore = "needs nbdkit (tests/nbd/setup.sh)"]
fn a_mirror_of_a_file_and_an_nbd_leg_reads_back_what_it_wrote() {
    let server = Server::nbdkit_memory(8 * MIB);
    let dir = tempfile::tempdir().unwrap();
    let mut b = PlanBuilder::new(dir.path(), 4096);
    let file = b.file("local", 8 * MIB);
    let remote = b.layer("remote", params(&server.unix_uri(), Some(8 * MIB)));
    let top = b.mirror("m", &[file, remote], ReadPolicy::RoundRobin);
    run("mirror(file, nbd)", b.build(top), 330);
}

#[test]
#[ignore = "needs nbdkit (tests/nbd/setup.sh)"]
fn up_refuses_a_wrong_size_and_an_unreachable_server() {
    let server = Server::nbdkit_memory(8 * MIB);
    let plan = single("n", params(&server.unix_uri(), Some(4 * MIB)), 4096);
    let error = compile(&plan)
        .err()
        .expect("a size mismatch is refused")
        .to_string();
    assert!(
        error.contains("the export is 8388608 bytes but the config says size = 4194304"),
        "{error}"
    );
    let dir = tempfile::tempdir().unwrap();
    let missing = format!(
        "nbd+unix:///?socket={}",
        dir.path().join("nobody.sock").display()
    );
    let error = compile(&single("n", params(&missing, None), 4096))
        .err()
        .expect("an unreachable server is refused")
        .to_string();
    assert!(error.contains("cannot connect"), "{error}");
    // A closed TCP port: connection refused, quickly.
    let closed = format!("nbd://127.0.0.1:{}/", nbd_servers::free_port());
    let error = compile(&single("n", params(&closed, None), 4096))
        .err()
        .expect("a closed port is refused")
        .to_string();
    assert!(error.contains("cannot connect"), "{error}");
}
