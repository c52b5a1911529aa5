//! Crash replay under concurrency for every stack in `configs/` and `benches/`:
//! each file is compiled into a plan by the real config code, its leaves are
//! replaced by small simulated disks (crypt gets a test key), and the stack
//! runs with several queues and many operations in flight while the power is
//! cut at random instants (see `layers::testing::sim_crash`). A failure names
//! the seed, which replays with `UBLK_STACK_SEED=N`.

use std::path::Path;

use layers::plan::{KeySource, LayerSpec, MemoryParams, Plan};
use layers::testing::rng::seeds;
use layers::testing::sim_crash::{sim_crash_replay, SimCrashConfig, SimCrashReport};
use ublk_stack::config;

const KIB: u64 = 1024;
/// Seeds per stack.
const RUNS: usize = 3;

/// The plan of `dir/name` with every leaf a small `memory` leaf (served by a
/// simulated disk), a compressed size of a third of a leaf and crypt keys taken from a test variable.
fn small_plan(dir: &str, name: &str) -> Plan {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir).join(name);
    let mut plan = config::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let chunk = plan
        .layers
        .iter()
        .filter_map(|l| match &l.spec {
            LayerSpec::Raid0(p) => Some(p.chunk_bytes),
            _ => None,
        })
        .max()
        .unwrap_or(0);
    let leaf = (256 * KIB).max(3 * chunk + 64 * KIB);
    std::env::set_var("SIM_CONFIG_KEY", "7e".repeat(32));
    for layer in &mut plan.layers {
        match &mut layer.spec {
            LayerSpec::File(_) | LayerSpec::Disk(_) | LayerSpec::Null { .. } => {
                layer.spec = LayerSpec::Memory(MemoryParams { size_bytes: leaf })
            }
            LayerSpec::Memory(p) => p.size_bytes = leaf,
            // A third of the disk: incompressible writes and the map must fit.
            LayerSpec::Compress(p) => p.size_bytes = Some(leaf / 3 / 4096 * 4096),
            LayerSpec::Crypt(p) => p.key = KeySource::Env("SIM_CONFIG_KEY".into()),
            _ => {}
        }
    }
    plan
}

fn replay(dir: &str, name: &str, base_seed: u64) {
    let start = std::time::Instant::now();
    let cfg = SimCrashConfig::default();
    let plan = small_plan(dir, name);
    let mut one = SimCrashReport::default();
    {
        for seed in seeds(base_seed, RUNS) {
            let report = sim_crash_replay(&plan, seed, &cfg, &|_| Ok(()))
                .unwrap_or_else(|e| panic!("{dir}/{name}: {e}"));
            one.add(&report);
        }
    }
    println!(
        "sim-crash {dir}/{name}: {} crash points, 0 violations ({} blocks checked, {} torn \
         EIO, {} reads checked, up to {} leaf ops in flight) in {:.1?}",
        one.crash_points,
        one.blocks_checked,
        one.torn_eio,
        one.reads_checked,
        one.sim.max_in_flight,
        start.elapsed()
    );
    assert!(
        one.crash_points > 0 && one.sim.out_of_order > 0,
        "{dir}/{name}: {one:?}"
    );
}

/// The stacks below, by folder: a file added to `configs/` or `benches/` fails
/// this test until it gets its crash test.
const STACKS: [(&str, &[&str]); 2] = [
    (
        "configs",
        &[
            "compressed.toml",
            "mirror.toml",
            "raid0-of-mirrors.toml",
            "raid0.toml",
            "secure.toml",
        ],
    ),
    (
        "benches",
        &[
            "cache.toml",
            "checksum-null.toml",
            "checksum.toml",
            "compress.toml",
            "crypt.toml",
            "file-tmpfs.toml",
            "null.toml",
        ],
    ),
];

#[test]
fn every_stack_file_has_a_crash_test() {
    for (dir, listed) in STACKS {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
        let mut names: Vec<String> = std::fs::read_dir(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.ends_with(".toml"))
            .collect();
        names.sort();
        assert_eq!(names, listed, "{dir}: add a crash test for each stack");
    }
}

macro_rules! stack_tests {
    ($($(#[$attr:meta])* $test:ident: $dir:literal / $file:literal, $seed:literal;)*) => {$(
        #[test]
        $(#[$attr])*
        fn $test() {
            replay($dir, $file, $seed);
        }
    )*};
}

stack_tests! {
        config_compressed: "configs" / "compressed.toml", 501;
    config_mirror: "configs" / "mirror.toml", 502;
    config_raid0_of_mirrors: "configs" / "raid0-of-mirrors.toml", 503;
    config_raid0: "configs" / "raid0.toml", 504;
    config_secure: "configs" / "secure.toml", 505;
    bench_cache: "benches" / "cache.toml", 601;
    bench_checksum_null: "benches" / "checksum-null.toml", 602;
    bench_checksum: "benches" / "checksum.toml", 603;
        bench_compress: "benches" / "compress.toml", 604;
    bench_crypt: "benches" / "crypt.toml", 605;
    bench_file_tmpfs: "benches" / "file-tmpfs.toml", 606;
    bench_null: "benches" / "null.toml", 607;
}
