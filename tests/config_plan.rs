//! Valid configs and the `Plan` and sizes they compile to: defaults, file order,
//! resolved references and paths.

use std::path::{Path, PathBuf};

use layers::nbd::uri::Address;
use layers::plan::{
    CacheMode, CacheParams, CompressParams, CryptParams, DiskParams, FaultKnobs, FaultParams,
    FileParams, KeySource, LayerSpec, LogLevel, MirrorParams, NullParams, Raid0Params, ReadPolicy,
};
use ublk_stack::config;

fn parse(text: &str) -> layers::plan::Plan {
    match config::parse(text, Path::new("t.toml"), Path::new("/srv/stack")) {
        Ok(plan) => plan,
        Err(errors) => panic!("refused:\n{errors}"),
    }
}

fn spec(plan: &layers::plan::Plan, name: &str) -> LayerSpec {
    plan.layers
        .iter()
        .find(|layer| layer.name == name)
        .map(|layer| layer.spec.clone())
        .unwrap_or_else(|| panic!("no layer {name}"))
}

#[test]
fn design_example_compiles_to_the_plan_it_describes() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/mirror.toml");
    let plan = match config::load(&path) {
        Ok(plan) => plan,
        Err(errors) => panic!("{errors}"),
    };
    assert_eq!(plan.device.name, "mirror0");
    assert_eq!(plan.device.queues, 2);
    assert_eq!(plan.device.queue_depth, 128);
    assert_eq!(plan.device.block_size, 4096);
    assert_eq!(plan.device.id, Some(7));
    assert_eq!(plan.log_level, LogLevel::Info);
    let names: Vec<&str> = plan
        .layers
        .iter()
        .map(|layer| layer.name.as_str())
        .collect();
    assert_eq!(names, ["cache", "mirror", "a", "b"], "file order");
    assert_eq!(plan.top, 0);
    assert_eq!(
        plan.layers[0].spec,
        LayerSpec::Cache(CacheParams {
            over: 1,
            capacity_bytes: 256 << 20,
            mode: CacheMode::WriteThrough,
        })
    );
    assert_eq!(
        plan.layers[1].spec,
        LayerSpec::Mirror(MirrorParams {
            legs: vec![2, 3],
            read_policy: ReadPolicy::RoundRobin,
        })
    );
    let folder = path.parent().expect("configs/");
    assert_eq!(
        plan.layers[2].spec,
        LayerSpec::File(FileParams {
            path: folder.join("data/mirror0-a.img"),
            size_bytes: Some(4 << 30),
            create: true,
            direct: false,
        })
    );
    assert_eq!(plan.walk(), [0, 1, 2, 3]);
}

#[test]
fn omitted_keys_take_their_documented_defaults() {
    let plan = parse(
        r#"version = 1
[device]
name = "d0"
top = "r"
[layers.r]
type = "raid0"
stripes = ["f", "d"]
[layers.f]
type = "fault"
over = "m"
[layers.m]
type = "memory"
size = "1GiB"
[layers.d]
type = "disk"
path = "/dev/sdz"
"#,
    );
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(usize::from(plan.device.queues), cpus.min(4));
    assert_eq!(plan.device.queue_depth, 128);
    assert_eq!(plan.device.block_size, 4096);
    assert_eq!(plan.device.id, None);
    assert_eq!(plan.log_level, LogLevel::Info);
    assert_eq!(
        spec(&plan, "r"),
        LayerSpec::Raid0(Raid0Params {
            stripes: vec![1, 3],
            chunk_bytes: 64 << 10,
        })
    );
    assert_eq!(
        spec(&plan, "f"),
        LayerSpec::Fault(FaultParams {
            over: 2,
            knobs: FaultKnobs::default(),
        })
    );
    assert_eq!(
        spec(&plan, "d"),
        LayerSpec::Disk(DiskParams {
            path: PathBuf::from("/dev/sdz"),
            direct: true,
        })
    );
}

#[test]
fn every_layer_type_and_key_is_read() {
    let plan = parse(
        r#"version = 1
[device]
name = "all-types_1"
top = "cache"
queues = 3
queue_depth = 64
block_size = 512
id = 12
[log]
level = "debug"
[layers.cache]
type = "cache"
over = "crypt"
capacity = 1048576
mode = "write-back"
[layers.crypt]
type = "crypt"
over = "sum"
cipher = "aes-256-gcm"
key_file = "keys/k.key"
[layers.sum]
type = "checksum"
over = "zip"
algorithm = "crc32"
[layers.zip]
type = "compress"
over = "faulty"
algorithm = "lz4"
size = "2 GiB"
[layers.faulty]
type = "fault"
over = "m"
read_error_rate = 0.25
write_error_rate = 1
delay = "10ms"
range = ["1MiB", 4194304]
[layers.m]
type = "mirror"
legs = ["f", "n"]
read_policy = "least-pending"
[layers.f]
type = "file"
path = "img/f.img"
size = "1G"
create = true
direct = true
[layers.n]
type = "null"
size = "1024M"
"#,
    );
    assert_eq!(plan.device.queues, 3);
    assert_eq!(plan.device.queue_depth, 64);
    assert_eq!(plan.device.block_size, 512);
    assert_eq!(plan.device.id, Some(12));
    assert_eq!(plan.log_level, LogLevel::Debug);
    assert_eq!(
        spec(&plan, "cache"),
        LayerSpec::Cache(CacheParams {
            over: 1,
            capacity_bytes: 1 << 20,
            mode: CacheMode::WriteBack,
        })
    );
    assert_eq!(
        spec(&plan, "crypt"),
        LayerSpec::Crypt(CryptParams {
            over: 2,
            cipher: "aes-256-gcm".into(),
            key: KeySource::File(PathBuf::from("/srv/stack/keys/k.key")),
        })
    );
    assert_eq!(
        spec(&plan, "zip"),
        LayerSpec::Compress(CompressParams {
            over: 4,
            algorithm: "lz4".into(),
            size_bytes: Some(2 << 30),
        })
    );
    assert_eq!(
        spec(&plan, "faulty"),
        LayerSpec::Fault(FaultParams {
            over: 5,
            knobs: FaultKnobs {
                read_error_rate: 0.25,
                write_error_rate: 1.0,
                delay_us: 10_000,
                range: Some((1 << 20, 4 << 20)),
            },
        })
    );
    assert_eq!(
        spec(&plan, "m"),
        LayerSpec::Mirror(MirrorParams {
            legs: vec![6, 7],
            read_policy: ReadPolicy::LeastPending,
        })
    );
    assert_eq!(
        spec(&plan, "f"),
        LayerSpec::File(FileParams {
            path: PathBuf::from("/srv/stack/img/f.img"),
            size_bytes: Some(1 << 30),
            create: true,
            direct: true,
        })
    );
    assert_eq!(
        spec(&plan, "n"),
        LayerSpec::Null(NullParams {
            size_bytes: 1 << 30
        })
    );
}

#[test]
fn crypt_key_can_come_from_the_environment_and_delay_from_microseconds() {
    let plan = parse(
        r#"version = 1
[device]
name = "d0"
top = "x"
[layers.x]
type = "crypt"
over = "f"
key_env = "DISK_KEY"
[layers.f]
type = "fault"
over = "m"
delay = 250
[layers.m]
type = "memory"
size = "64MiB"
"#,
    );
    let LayerSpec::Crypt(crypt) = spec(&plan, "x") else {
        panic!("not crypt")
    };
    assert_eq!(crypt.key, KeySource::Env("DISK_KEY".into()));
    let LayerSpec::Fault(fault) = spec(&plan, "f") else {
        panic!("not fault")
    };
    assert_eq!(fault.knobs.delay_us, 250);
}

#[test]
fn an_nbd_leaf_reads_its_uri_and_defaults() {
    let plan = parse(
        r#"version = 1
[device]
name = "d0"
top = "m"
[layers.m]
type = "mirror"
legs = ["tcp", "unix"]
[layers.tcp]
type = "nbd"
uri = "nbd://[fd00::1]:10900/disk%201"
size = "64MiB"
connections = 4
timeout = "5s"
[layers.unix]
type = "nbd"
uri = "nbd+unix:///?socket=/run/nbd.sock"
size = "64MiB"
"#,
    );
    let LayerSpec::Nbd(tcp) = spec(&plan, "tcp") else {
        panic!("not nbd")
    };
    assert_eq!(
        tcp.uri.address,
        Address::Tcp {
            host: "fd00::1".into(),
            port: 10900
        }
    );
    assert_eq!(tcp.uri.export, "disk 1");
    assert_eq!(tcp.size_bytes, Some(64 << 20));
    assert_eq!((tcp.connections, tcp.timeout_us), (4, 5_000_000));
    let LayerSpec::Nbd(unix) = spec(&plan, "unix") else {
        panic!("not nbd")
    };
    assert_eq!(unix.uri.address, Address::Unix("/run/nbd.sock".into()));
    assert_eq!(unix.uri.export, "");
    assert_eq!((unix.connections, unix.timeout_us), (1, 30_000_000));
    assert_eq!(unix.tls_ca, None);
}

#[test]
fn layers_may_be_written_as_inline_tables() {
    let plan = parse(
        r#"version = 1
[device]
name = "d0"
top = "m"
[layers]
m = { type = "mirror", legs = ["a", "b"] }
a = { type = "memory", size = "1GiB" }
b = { type = "memory", size = "1GiB" }
"#,
    );
    let names: Vec<&str> = plan
        .layers
        .iter()
        .map(|layer| layer.name.as_str())
        .collect();
    assert_eq!(names, ["m", "a", "b"]);
}

#[test]
fn sizes_follow_the_tree() {
    let text = r#"version = 1
[device]
name = "d0"
top = "c"
[layers.c]
type = "cache"
over = "z"
capacity = "1MiB"
[layers.z]
type = "compress"
over = "r"
size = "1MiB"
[layers.r]
type = "raid0"
stripes = ["m", "n"]
[layers.m]
type = "mirror"
legs = ["a", "b"]
[layers.a]
type = "memory"
size = "100KiB"
[layers.b]
type = "memory"
size = "100KiB"
[layers.n]
type = "null"
size = "88KiB"
"#;
    let checked = match config::check(text, Path::new("t.toml"), Path::new("/")) {
        Ok(checked) => checked,
        Err(errors) => panic!("{errors}"),
    };
    // The mirror keeps 12 KiB of its legs for its metadata; each stripe holds
    // one whole 64 KiB chunk of its 88 KiB; two stripes. The compress layer
    // is thin: 1 MiB over 128 KiB (its map of 32 units fits below).
    let raid0 = 2 * (64 << 10);
    assert_eq!(
        checked.sizes,
        [
            1 << 20,
            1 << 20,
            raid0,
            88 << 10,
            100 << 10,
            100 << 10,
            88 << 10
        ]
    );
    assert_eq!(
        config::exposed_sizes(&checked.plan),
        Ok(checked.sizes.clone())
    );
}

#[test]
fn existing_file_without_size_is_measured() {
    let folder = tempfile::tempdir().expect("tempdir");
    std::fs::write(folder.path().join("f.img"), vec![0u8; 3 * 4096]).expect("write");
    let config_path = folder.path().join("c.toml");
    std::fs::write(
        &config_path,
        "version = 1\n[device]\nname = \"d0\"\ntop = \"f\"\n[layers.f]\ntype = \"file\"\npath = \"f.img\"\n",
    )
    .expect("write");
    let checked = match config::check_file(&config_path) {
        Ok(checked) => checked,
        Err(errors) => panic!("{errors}"),
    };
    assert_eq!(checked.sizes, [3 * 4096]);
    let LayerSpec::File(file) = &checked.plan.layers[0].spec else {
        panic!("not a file")
    };
    assert_eq!(file.path, folder.path().join("f.img"));
}

#[test]
fn tree_shows_types_sizes_and_live_keys() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/mirror.toml");
    let checked = match config::check_file(&path) {
        Ok(checked) => checked,
        Err(errors) => panic!("{errors}"),
    };
    let tree = config::tree::render("configs/mirror.toml", &checked);
    let lines: Vec<&str> = tree.lines().collect();
    assert_eq!(
        lines[0],
        "configs/mirror.toml: ok: device \"mirror0\", 4.0 GiB, 2 queues x 128, block 4096, id 7 (/dev/ublkb7)"
    );
    assert_eq!(lines[1], "  live: log.level=info");
    assert_eq!(
        lines[2],
        "  cache      cache   4.0 GiB  live: capacity=256MiB mode=write-through"
    );
    assert_eq!(
        lines[3],
        "  └─ mirror  mirror  4.0 GiB  live: read_policy=round-robin"
    );
    assert!(
        lines[4].starts_with("     ├─ a    file      4 GiB  "),
        "{tree}"
    );
    assert!(
        lines[5].starts_with("     └─ b    file      4 GiB  "),
        "{tree}"
    );
}

/// `validate` reads the size a `compress` was formatted with (its superblock
/// on a leaf right below), not what a raise recorded later: a `size` under
/// the formatted one is refused by `validate`; one under a raised size
/// passes, and `up` refuses it saying so, with the size to set.
#[test]
fn a_compress_size_under_the_recorded_one_is_refused_naming_the_size() {
    let folder = tempfile::tempdir().expect("tempdir");
    let config_path = folder.path().join("c.toml");
    let write = |size: &str| {
        let text = format!(
            "version = 1\n[device]\nname = \"d0\"\ntop = \"z\"\n[layers.z]\ntype = \
             \"compress\"\nover = \"f\"\nsize = \"{size}\"\n[layers.f]\ntype = \"file\"\npath = \
             \"f.img\"\nsize = \"1MiB\"\ncreate = true\n"
        );
        std::fs::write(&config_path, text).expect("write");
    };
    write("8MiB");
    let checked = config::check_file(&config_path).unwrap_or_else(|e| panic!("{e}"));
    drop(layers::compile(&checked.plan).unwrap_or_else(|e| panic!("{e}")));
    write("4MiB");
    let Err(err) = config::check_file(&config_path).map(drop) else {
        panic!("validated smaller");
    };
    let err = err.to_string();
    assert!(
        err.contains("c.toml:5:1: layer \"z\":")
            && err.contains("holds this layer formatted to expose 8 MiB (8388608 bytes), but the config gives it 4 MiB (4194304 bytes)"),
        "{err}"
    );
    write("12MiB");
    let checked = config::check_file(&config_path).unwrap_or_else(|e| panic!("{e}"));
    drop(layers::compile(&checked.plan).unwrap_or_else(|e| panic!("{e}")));
    // The raise is recorded in the map header, not the superblock.
    write("10MiB");
    let Err(err) = config::check_file(&config_path).map(drop) else {
        panic!("validated under the raised size");
    };
    let err = err.to_string();
    assert!(
        err.contains("holds this layer raised to expose 12 MiB (12582912 bytes), but the config gives it 10 MiB (10485760 bytes)"),
        "{err}"
    );
    write("12MiB");
    let checked = config::check_file(&config_path).unwrap_or_else(|e| panic!("{e}"));
    drop(layers::compile(&checked.plan).unwrap_or_else(|e| panic!("{e}")));
}

/// `validate` reads the superblock each metadata layer finds on an existing
/// `file` leaf right below it, and refuses what `up` would: another layer's
/// superblock (layers stacked in another order), another block size, data
/// that is no superblock. A blank file and one not created yet pass.
#[test]
fn validate_reads_the_superblock_on_a_leaf_below() {
    let folder = tempfile::tempdir().expect("tempdir");
    let config_path = folder.path().join("s.toml");
    let write = |top: &str, block_size: u32, path: &str| {
        // The second leg, `g`, only under a mirror.
        let g = if top.contains("legs") {
            "[layers.g]\ntype = \"file\"\npath = \"g.img\"\nsize = \"4MiB\"\ncreate = true\n"
        } else {
            ""
        };
        let text = format!(
            "version = 1\n[device]\nname = \"d0\"\ntop = \"t\"\nblock_size = {block_size}\n\
             [layers.t]\n{top}\n[layers.f]\ntype = \"file\"\npath = \"{path}\"\n\
             size = \"4MiB\"\ncreate = true\n{g}"
        );
        std::fs::write(&config_path, text).expect("write");
    };
    let checksum = "type = \"checksum\"\nover = \"f\"";
    let compress = "type = \"compress\"\nover = \"f\"";
    let mirror = "type = \"mirror\"\nlegs = [\"f\", \"g\"]";
    // Not created yet, then blank: accepted; opening formats f.img.
    write(checksum, 4096, "f.img");
    let checked = config::check_file(&config_path).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(folder.path().join("f.img"), vec![0u8; 4 << 20]).expect("write");
    config::check_file(&config_path).unwrap_or_else(|e| panic!("blank: {e}"));
    drop(layers::compile(&checked.plan).unwrap_or_else(|e| panic!("{e}")));
    let refused = |top: &str, block_size: u32, path: &str| {
        write(top, block_size, path);
        config::check_file(&config_path)
            .err()
            .unwrap_or_else(|| panic!("accepted: {top} over {path}"))
            .to_string()
    };
    let err = refused(compress, 4096, "f.img");
    assert!(
        err.contains("layer \"t\": ")
            && err.contains("f.img (layer \"f\"): the device below holds a \"checksum\" superblock, not \"compress\""),
        "{err}"
    );
    let err = refused(mirror, 4096, "f.img");
    assert!(
        err.contains("holds a \"checksum\" superblock, not \"mirror\""),
        "{err}"
    );
    let err = refused(checksum, 512, "f.img");
    assert!(
        err.contains("formatted with block_size 4096 but the config says 512"),
        "{err}"
    );
    let mut data = vec![0u8; 4 << 20];
    data[..11].copy_from_slice(b"not a layer");
    std::fs::write(folder.path().join("h.img"), &data).expect("write");
    let err = refused(checksum, 4096, "h.img");
    assert!(
        err.contains("h.img (layer \"f\"): the device holds data but no ublk-stack superblock"),
        "{err}"
    );
}
