//! ublk-stack as the NBD server of another stack's `nbd` leaf: the model
//! check through the leaf against `up --nbd`, and a daemon whose mirror has
//! a local file leg and a remote leg on another daemon, written and read
//! over its own NBD export, with the remote daemon holding the same bytes.

#[path = "support/nbd.rs"]
mod support;

use layers::nbd::uri::NbdUri;
use layers::plan::{NbdParams, ReadPolicy};
use layers::testing::{check_stack, rng::seeds, verify_image, ModelConfig, PlanBuilder};
use layers::{compile, Plan};
use support::{handshake, read_block, write_block, Daemon};

const MIB: u64 = 1 << 20;

fn remote(name: &str) -> Daemon {
    Daemon::start_temp(
        &format!(
            "version = 1\n[device]\nname = \"{name}\"\ntop = \"ram\"\nqueues = 2\n\
             [layers.ram]\ntype = \"memory\"\nsize = \"8MiB\"\n"
        ),
        &[],
    )
}

fn uri(daemon: &Daemon) -> String {
    format!("nbd+unix:///?socket={}", daemon.socket.display())
}

fn nbd(daemon: &Daemon, connections: u32) -> NbdParams {
    NbdParams {
        uri: NbdUri::parse(&uri(daemon)).unwrap(),
        size_bytes: Some(8 * MIB),
        connections,
        timeout_us: 5_000_000,
        tls_ca: None,
        tls_cert: None,
        tls_key: None,
    }
}

fn run(name: &str, plan: Plan, base_seed: u64) {
    let cfg = ModelConfig {
        ops: 600,
        ..ModelConfig::default()
    };
    for seed in seeds(base_seed, 2) {
        let stack = compile(&plan).unwrap_or_else(|e| panic!("{name}: {e}"));
        let image = check_stack(&stack, seed, &cfg).unwrap_or_else(|e| panic!("{name}: {e}"));
        drop(stack);
        let stack = compile(&plan).unwrap_or_else(|e| panic!("{name}: reopen: {e}"));
        verify_image(&stack, &image)
            .unwrap_or_else(|e| panic!("{name}: seed {seed}: after reopen: {e}"));
    }
}

#[test]
fn an_nbd_leaf_on_an_up_nbd_export_matches_the_model() {
    let server = remote("remote0");
    for connections in [1, 3] {
        let dir = tempfile::tempdir().unwrap();
        let mut b = PlanBuilder::new(dir.path(), 4096);
        let top = b.layer("n", nbd(&server, connections));
        run(
            "nbd on up --nbd",
            b.build(top),
            400 + u64::from(connections),
        );
    }
}

#[test]
fn a_mirror_of_a_file_and_an_up_nbd_export_matches_the_model() {
    let server = remote("remote1");
    let dir = tempfile::tempdir().unwrap();
    let mut b = PlanBuilder::new(dir.path(), 4096);
    let file = b.file("local", 8 * MIB);
    let leg = b.layer("remote", nbd(&server, 2));
    let top = b.mirror("m", &[file, leg], ReadPolicy::RoundRobin);
    run("mirror(file, nbd)", b.build(top), 410);
}

/// Two daemons: the front one mirrors a local file and the back one's
/// export. What a client writes to the front, it reads back, and the back
/// holds it too (at the same offset past the mirror's metadata area is not
/// assumed: the block is searched for in the back's export).
#[test]
fn a_daemon_mirrors_onto_another_daemon() {
    let back = remote("back");
    let front = Daemon::start_temp(
        &format!(
            r#"version = 1
[device]
name = "front"
top = "m"
queues = 2
[layers.m]
type = "mirror"
legs = ["local", "remote"]
[layers.local]
type = "file"
path = "local.img"
size = "8MiB"
create = true
[layers.remote]
type = "nbd"
uri = "{}"
connections = 2
"#,
            uri(&back)
        ),
        &[],
    );
    let mut client = handshake(&front.socket).unwrap();
    let pattern: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
    for block in 0..16u64 {
        let mut data = pattern.clone();
        data[0] = block as u8;
        write_block(&mut client, block, block * 4096, &data).unwrap();
    }
    for block in 0..16u64 {
        let got = read_block(&mut client, 100 + block, block * 4096).unwrap();
        assert_eq!(got[0], block as u8);
        assert_eq!(got[1..], pattern[1..], "block {block}");
    }
    // The back daemon's export holds each block (the mirror keeps its
    // metadata first, so the data sits further in).
    let mut direct = handshake(&back.socket).unwrap();
    let mut found = 0;
    for block in 0..(8 * MIB / 4096) {
        let got = read_block(&mut direct, 1000 + block, block * 4096).unwrap();
        if got[1..] == pattern[1..] {
            found += 1;
        }
    }
    assert_eq!(found, 16, "the remote leg holds every block written");
}
