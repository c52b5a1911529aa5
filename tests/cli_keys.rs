//! `ublk-stack key …` through the command line: what each command writes and
//! prints (text and `--json`), and each way it refuses.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_ublk-stack");

fn is_root() -> bool {
    std::fs::metadata("/proc/self").expect("/proc/self").uid() == 0
}

fn key(args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("key")
        .args(args)
        .output()
        .expect("run")
}

fn ok(output: &Output) -> String {
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    String::from_utf8(output.stdout.clone()).unwrap()
}

/// The one-line error of a refused command (exit 1, nothing on stdout).
fn refused(output: &Output) -> String {
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(output.stdout.is_empty(), "{output:?}");
    String::from_utf8(output.stderr.clone()).unwrap()
}

fn path_arg(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A crypt layer over memory whose key is `key_lines`, as `validate` checks it.
fn validate_crypt(dir: &Path, key_lines: &str) -> Output {
    let config = dir.join("k0.toml");
    std::fs::write(
        &config,
        format!(
            "version = 1\n[device]\nname = \"k0\"\ntop = \"x\"\n\
             [layers.x]\ntype = \"crypt\"\nover = \"m\"\n{key_lines}\n\
             [layers.m]\ntype = \"memory\"\nsize = \"16MiB\"\n"
        ),
    )
    .unwrap();
    Command::new(BIN)
        .arg("validate")
        .arg(&config)
        .output()
        .unwrap()
}

#[test]
fn key_new_writes_a_random_key_the_crypt_layer_takes() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.key"), dir.path().join("b.key"));
    let text = ok(&key(&["new", path_arg(&a)]));
    assert_eq!(
        text,
        format!("{}: a new 32-byte key (mode 0600)\n", a.display())
    );
    let json: serde_json::Value =
        serde_json::from_str(&ok(&key(&["new", path_arg(&b), "--json"]))).unwrap();
    assert_eq!(json["path"], path_arg(&b));
    assert_eq!(json["bytes"], 32);
    assert_eq!(json["mode"], "0600");
    let (key_a, key_b) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    assert_eq!((key_a.len(), key_b.len()), (32, 32));
    assert_ne!(key_a, key_b, "two new keys are the same");
    for path in [&a, &b] {
        let meta = std::fs::metadata(path).unwrap();
        assert_eq!(
            meta.permissions().mode() & 0o777,
            0o600,
            "{}",
            path.display()
        );
        assert_eq!(meta.uid(), std::fs::metadata("/proc/self").unwrap().uid());
    }
    let output = validate_crypt(dir.path(), "key_file = \"a.key\"");
    assert_eq!(output.status.code(), Some(0), "{output:?}");
}

#[test]
fn key_new_never_overwrites_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.key");
    std::fs::write(&path, b"what was there").unwrap();
    let message = refused(&key(&["new", path_arg(&path)]));
    assert_eq!(
        message,
        format!(
            "ublk-stack key new: {} already exists; refusing to overwrite it (remove it first if it is really unused)\n",
            path.display()
        )
    );
    assert_eq!(std::fs::read(&path).unwrap(), b"what was there");
    // A symlink is not followed to create its target either.
    let link = dir.path().join("link.key");
    std::os::unix::fs::symlink(dir.path().join("target.key"), &link).unwrap();
    assert!(refused(&key(&["new", path_arg(&link), "--json"])).contains("already exists"));
    assert!(!dir.path().join("target.key").exists());
}

#[test]
fn key_new_names_a_missing_folder() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no-such-folder/disk.key");
    let message = refused(&key(&["new", path_arg(&path)]));
    assert_eq!(
        message,
        format!(
            "ublk-stack key new: {}: the folder {} does not exist\n",
            path.display(),
            dir.path().join("no-such-folder").display()
        )
    );
}

#[test]
fn key_new_says_permission_denied_in_a_folder_closed_to_the_user() {
    let dir = tempfile::tempdir().unwrap();
    let closed = dir.path().join("closed");
    std::fs::create_dir(&closed).unwrap();
    let path = closed.join("disk.key");
    // Root passes any mode: drop to nobody (the folder stays root's, 0755).
    let output = if is_root() {
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                BIN,
                "key",
                "new",
            ])
            .arg(&path)
            .output()
            .expect("setpriv")
    } else {
        std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o555)).unwrap();
        key(&["new", path_arg(&path)])
    };
    let message = refused(&output);
    assert_eq!(
        message,
        format!(
            "ublk-stack key new: {}: permission denied: this user may not create files in {}\n",
            path.display(),
            closed.display()
        )
    );
    assert!(!path.exists());
}

/// Flags that make argon2id cheap enough for tests (the bounds still hold).
const CHEAP: [&str; 4] = ["--argon2-memory", "64KiB", "--argon2-iterations", "1"];

fn key_with(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(BIN);
    command.arg("key").args(args);
    for (name, value) in env {
        command.env(name, value);
    }
    command.output().expect("run")
}

fn json_of(output: &Output) -> serde_json::Value {
    serde_json::from_str(&ok(output)).unwrap()
}

fn private_file(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// The data key `slots` holds, opened with passphrase `passphrase`.
fn data_key(slots: &Path, passphrase: &str) -> Result<[u8; 32], String> {
    use layers::plan::{KeySource, Unlock};
    std::env::set_var("CLI_KEYS_PASSPHRASE", passphrase);
    layers::crypt::load_key(&KeySource::Slots {
        path: slots.to_path_buf(),
        unlock: Unlock::PassphraseEnv("CLI_KEYS_PASSPHRASE".into()),
    })
    .map(|key| *key)
}

/// A slot file with a passphrase slot ("first") made by `key init`.
fn init_slots(dir: &Path) -> std::path::PathBuf {
    let slots = dir.join("d.slots");
    let mut args = vec!["init", path_arg(&slots), "--new-passphrase-env", "P"];
    args.extend(CHEAP);
    ok(&key_with(&args, &[("P", "first")]));
    slots
}

#[test]
fn slots_are_added_listed_and_removed_and_the_data_key_stays() {
    let dir = tempfile::tempdir().unwrap();
    let slots = dir.path().join("d.slots");
    let mut args = vec![
        "init",
        path_arg(&slots),
        "--new-passphrase-env",
        "P",
        "--json",
    ];
    args.extend(CHEAP);
    let made = json_of(&key_with(&args, &[("P", "first")]));
    assert_eq!(made["slot"], 0);
    assert_eq!(made["kind"], "passphrase");
    assert_eq!(made["slots_used"], 1);
    let meta = std::fs::metadata(&slots).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let data = data_key(&slots, "first").unwrap();

    // A key-encryption key from `key new`, then a second passphrase (from a file).
    let kek = dir.path().join("kek.key");
    ok(&key(&["new", path_arg(&kek)]));
    let mut args = vec![
        "add",
        path_arg(&slots),
        "--passphrase-env",
        "P",
        "--new-key-file",
    ];
    args.push(path_arg(&kek));
    args.push("--json");
    let added = json_of(&key_with(&args, &[("P", "first")]));
    assert_eq!(
        (added["slot"].clone(), added["kind"].clone()),
        (1.into(), "key".into())
    );
    assert_eq!(
        (added["opened_with"].clone(), added["slots_used"].clone()),
        (0.into(), 2.into())
    );
    let second = dir.path().join("second.pass");
    private_file(&second, b"second\n");
    let mut args = vec!["add", path_arg(&slots), "--key-file", path_arg(&kek)];
    args.extend(["--new-passphrase-file", path_arg(&second)]);
    args.extend(CHEAP);
    let text = ok(&key(&args));
    assert_eq!(
        text,
        format!(
            "{}: slot 2 added (passphrase), opened with slot 1; 3 slots used\n",
            slots.display()
        )
    );
    assert_eq!(data_key(&slots, "second"), Ok(data));

    let listed = json_of(&key(&["list", path_arg(&slots), "--json"]));
    assert_eq!(listed["version"], 1);
    let kinds: Vec<&str> = listed["slots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|slot| slot["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["passphrase", "key", "passphrase"]);
    assert_eq!(listed["slots"][0]["argon2"]["memory"], 65536);
    assert_eq!(listed["slots"][0]["argon2"]["iterations"], 1);
    assert_eq!(listed["slots"][1]["argon2"], serde_json::Value::Null);
    let text = ok(&key(&["list", path_arg(&slots)]));
    assert_eq!(
        text,
        "SLOT  KIND        ARGON2ID\n\
         0     passphrase  64 KiB, 1 iterations, 4 lanes\n\
         1     key         -\n\
         2     passphrase  64 KiB, 1 iterations, 4 lanes\n"
    );

    // Changing a passphrase: remove the old slot with another slot's secret.
    let removed = json_of(&key_with(
        &[
            "remove",
            path_arg(&slots),
            "0",
            "--passphrase-env",
            "P",
            "--json",
        ],
        &[("P", "second")],
    ));
    assert_eq!(removed["removed"], 0);
    assert_eq!(removed["opened_with"], 2);
    assert_eq!(removed["slots_used"], 2);
    assert!(data_key(&slots, "first")
        .unwrap_err()
        .contains("wrong passphrase"));
    assert_eq!(data_key(&slots, "second"), Ok(data));
    assert!(!dir.path().join("d.slots.new").exists());
}

#[test]
fn a_new_slot_takes_the_default_argon2id_cost() {
    let dir = tempfile::tempdir().unwrap();
    let slots = dir.path().join("d.slots");
    ok(&key_with(
        &["init", path_arg(&slots), "--new-passphrase-env", "P"],
        &[("P", "p")],
    ));
    let listed = json_of(&key(&["list", path_arg(&slots), "--json"]));
    let argon2 = &listed["slots"][0]["argon2"];
    assert_eq!(argon2["memory"], 64 * 1024 * 1024);
    assert_eq!(
        (argon2["iterations"].clone(), argon2["lanes"].clone()),
        (3.into(), 4.into())
    );
}

#[test]
fn a_wrong_secret_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let slots = init_slots(dir.path());
    let before = std::fs::read(&slots).unwrap();
    let mut args = vec!["add", path_arg(&slots), "--passphrase-env", "P"];
    args.extend(["--new-passphrase-env", "Q"]);
    args.extend(CHEAP);
    let message = refused(&key_with(&args, &[("P", "frist"), ("Q", "new")]));
    assert_eq!(
        message,
        "ublk-stack key add: wrong passphrase: it opens none of the 1 passphrase slots\n"
    );
    let kek = dir.path().join("kek.key");
    ok(&key(&["new", path_arg(&kek)]));
    args[2] = "--key-file";
    args[3] = path_arg(&kek);
    let message = refused(&key_with(&args, &[("Q", "new")]));
    assert_eq!(message, "ublk-stack key add: no key slot in this file\n");
    assert_eq!(std::fs::read(&slots).unwrap(), before);
    assert!(!dir.path().join("d.slots.new").exists());
}

#[test]
fn the_last_slot_and_the_only_opener_stay() {
    let dir = tempfile::tempdir().unwrap();
    let slots = init_slots(dir.path());
    let remove = |slot: &str, pass: &str| {
        key_with(
            &["remove", path_arg(&slots), slot, "--passphrase-env", "P"],
            &[("P", pass)],
        )
    };
    assert_eq!(
        refused(&remove("0", "first")),
        "ublk-stack key remove: slot 0 is the last one: removing it would lose the key for good\n"
    );
    let mut args = vec!["add", path_arg(&slots), "--passphrase-env", "P"];
    args.extend(["--new-passphrase-env", "Q"]);
    args.extend(CHEAP);
    ok(&key_with(&args, &[("P", "first"), ("Q", "other")]));
    assert_eq!(
        refused(&remove("0", "first")),
        "ublk-stack key remove: wrong passphrase: it opens none of the 1 passphrase slots \
         once slot 0 is gone: give the secret of a slot that stays\n"
    );
    assert_eq!(
        refused(&remove("5", "first")),
        "ublk-stack key remove: slot 5 is empty\n"
    );
    assert_eq!(
        refused(&remove("9", "first")),
        "ublk-stack key remove: no slot 9: slots are 0..=7\n"
    );
    assert_eq!(data_key(&slots, "first").map(drop), Ok(()));
}

#[test]
fn slot_files_that_are_not_ours_to_use_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let slots = init_slots(dir.path());
    let shown = slots.display().to_string();
    let list = || key(&["list", path_arg(&slots)]);
    // Someone else's file, a foreign file, a newer format, a damaged one.
    std::fs::set_permissions(&slots, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert_eq!(
        refused(&list()),
        format!("ublk-stack key list: key slots {shown}: mode 0644 lets others read the key slots; chmod 600 it\n")
    );
    let good = std::fs::read(&slots).unwrap();
    let mut newer = good.clone();
    newer[8] = 2;
    for (bytes, says) in [
        (
            b"#!/bin/sh\n".to_vec(),
            "not a ublk-stack key-slot file (no UBLKKEYS magic)",
        ),
        (
            newer,
            "key-slot format version 2; this build reads version 1",
        ),
        (
            [&good[..1000], &[1u8], &good[1001..]].concat(),
            "the key-slot file is damaged (crc mismatch)",
        ),
    ] {
        private_file(&slots, &bytes);
        assert_eq!(
            refused(&list()),
            format!("ublk-stack key list: key slots {shown}: {says}\n")
        );
    }
    let missing = dir.path().join("none.slots");
    assert_eq!(
        refused(&key(&["list", path_arg(&missing)])),
        format!(
            "ublk-stack key list: {} does not exist (`ublk-stack key init` or `key migrate` makes one)\n",
            missing.display()
        )
    );
}

#[test]
fn init_and_migrate_never_overwrite_and_need_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let slots = init_slots(dir.path());
    let before = std::fs::read(&slots).unwrap();
    let message = refused(&key_with(
        &["init", path_arg(&slots), "--new-passphrase-env", "P"],
        &[("P", "x")],
    ));
    assert!(
        message.contains("already exists; refusing to overwrite it"),
        "{message}"
    );
    let raw = dir.path().join("raw.key");
    ok(&key(&["new", path_arg(&raw)]));
    let message = refused(&key_with(
        &[
            "migrate",
            path_arg(&slots),
            "--from-key-file",
            path_arg(&raw),
            "--new-passphrase-env",
            "P",
        ],
        &[("P", "x")],
    ));
    assert!(
        message.contains("already exists; refusing to overwrite it"),
        "{message}"
    );
    assert_eq!(std::fs::read(&slots).unwrap(), before);
    // No secret given and no terminal to ask on (standard input is not one here).
    let fresh = dir.path().join("fresh.slots");
    let output = Command::new(BIN)
        .args(["key", "init", path_arg(&fresh)])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        refused(&output),
        "ublk-stack key init: no new secret: give --new-passphrase-file, --new-passphrase-env, \
         --new-key-file or --new-key-env (or run on a terminal to be asked for a passphrase)\n"
    );
    let message = refused(&key_with(
        &["init", path_arg(&fresh), "--new-passphrase-env", "P"],
        &[("P", "")],
    ));
    assert_eq!(
        message,
        "ublk-stack key init: --new-passphrase-env P: the passphrase is empty\n"
    );
    let message = refused(&key(&[
        "init",
        path_arg(&fresh),
        "--new-passphrase-env",
        "UNSET_CLI_KEYS_VAR",
    ]));
    assert_eq!(
        message,
        "ublk-stack key init: --new-passphrase-env: environment variable UNSET_CLI_KEYS_VAR is not set\n"
    );
    let message = refused(&key_with(
        &[
            "init",
            path_arg(&fresh),
            "--new-passphrase-env",
            "P",
            "--argon2-memory",
            "8GiB",
        ],
        &[("P", "x")],
    ));
    assert_eq!(
        message,
        "ublk-stack key init: --argon2-memory / --argon2-iterations: argon2 memory 8388608 KiB not in 32..=4194304 KiB\n"
    );
    assert!(!fresh.exists());
    // Two ways of giving a secret at once is a usage error.
    let output = key(&[
        "init",
        path_arg(&fresh),
        "--new-passphrase-env",
        "P",
        "--new-key-env",
        "K",
    ]);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
}

#[test]
fn a_full_file_and_an_interrupted_change_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let slots = init_slots(dir.path());
    let mut args = vec!["add", path_arg(&slots), "--passphrase-env", "P"];
    args.extend(["--new-passphrase-env", "P"]);
    args.extend(CHEAP);
    for _ in 1..8 {
        ok(&key_with(&args, &[("P", "first")]));
    }
    assert_eq!(
        refused(&key_with(&args, &[("P", "first")])),
        "ublk-stack key add: all 8 slots are in use; remove one first\n"
    );
    let staged = dir.path().join("d.slots.new");
    std::fs::write(&staged, b"").unwrap();
    let message = refused(&key_with(
        &["remove", path_arg(&slots), "3", "--passphrase-env", "P"],
        &[("P", "first")],
    ));
    assert!(
        message.contains("another key command is changing") && message.contains("then remove"),
        "{message}"
    );
    assert_eq!(
        json_of(&key(&["list", path_arg(&slots), "--json"]))["slots"]
            .as_array()
            .unwrap()
            .len(),
        8
    );
}

/// Write (`Some`) or read back (`None`) 16 blocks of `pattern` through a
/// crypt layer over `leaf.img` in `dir`, with its key from `key`.
fn through_crypt(
    dir: &Path,
    key: layers::plan::KeySource,
    write: bool,
) -> Result<Vec<Vec<u8>>, String> {
    use layers::exec::{Executor, IoCtx};
    use layers::testing::PlanBuilder;
    let mut b = PlanBuilder::new(dir, 4096);
    let leaf = b.file("leaf", 1024 * 1024);
    let top = b.crypt_with("x", leaf, key);
    let plan = b.build(top);
    let stack = layers::compile(&plan).map_err(|e| e.to_string())?;
    let (ctx, exec) = (IoCtx::new(0, 16).unwrap(), Executor::new().unwrap());
    let top = stack.top();
    let mut blocks = Vec::new();
    for i in 0..16u64 {
        let mut block = format!("block {i} of a device written with its raw key; ")
            .into_bytes()
            .into_iter()
            .cycle()
            .take(4096)
            .collect::<Vec<u8>>();
        if write {
            exec.block_on(&ctx, top.write_bytes(&ctx, i * 4096, &block))
                .unwrap();
        } else {
            exec.block_on(&ctx, top.read_bytes(&ctx, i * 4096, &mut block))
                .unwrap();
        }
        blocks.push(block);
    }
    exec.block_on(&ctx, stack.flush(&ctx)).unwrap();
    Ok(blocks)
}

#[test]
fn a_device_written_with_its_raw_key_reads_back_the_same_through_slots() {
    use layers::plan::{KeySource, Unlock};
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("raw.key");
    ok(&key(&["new", path_arg(&raw)]));
    let written = through_crypt(dir.path(), KeySource::File(raw.clone()), true).unwrap();

    let slots = dir.path().join("d.slots");
    let mut args = vec![
        "migrate",
        path_arg(&slots),
        "--from-key-file",
        path_arg(&raw),
    ];
    args.extend(["--new-passphrase-env", "P", "--json"]);
    args.extend(CHEAP);
    let migrated = json_of(&key_with(&args, &[("P", "right")]));
    assert_eq!(migrated["from"], path_arg(&raw));
    assert_eq!(migrated["slot"], 0);
    let through_slots = KeySource::Slots {
        path: slots.clone(),
        unlock: Unlock::PassphraseEnv("CLI_KEYS_UNLOCK".into()),
    };
    std::env::set_var("CLI_KEYS_UNLOCK", "right");
    let read = through_crypt(dir.path(), through_slots.clone(), false).unwrap();
    assert!(
        read == written,
        "the device reads otherwise through its slots"
    );

    // A wrong passphrase, or slots holding another data key, are refused
    // before anything is written.
    let leaf = dir.path().join("leaf.img");
    let before = std::fs::read(&leaf).unwrap();
    std::env::set_var("CLI_KEYS_UNLOCK", "wrong");
    let error = through_crypt(dir.path(), through_slots, false).unwrap_err();
    assert!(
        error.contains("wrong passphrase: it opens none of the 1 passphrase slots"),
        "{error}"
    );
    let other = dir.path().join("other.slots");
    let mut args = vec!["init", path_arg(&other), "--new-passphrase-env", "P"];
    args.extend(CHEAP);
    ok(&key_with(&args, &[("P", "right")]));
    std::env::set_var("CLI_KEYS_UNLOCK", "right");
    let other_key = KeySource::Slots {
        path: other,
        unlock: Unlock::PassphraseEnv("CLI_KEYS_UNLOCK".into()),
    };
    let error = through_crypt(dir.path(), other_key, false).unwrap_err();
    assert!(
        error.contains("wrong key: it does not open this device's key check"),
        "{error}"
    );
    assert!(
        std::fs::read(&leaf).unwrap() == before,
        "a refused open wrote to the leaf"
    );
}

#[test]
fn validate_opens_the_slots_a_config_names() {
    let dir = tempfile::tempdir().unwrap();
    init_slots(dir.path());
    private_file(&dir.path().join("right.pass"), b"first\n");
    private_file(&dir.path().join("wrong.pass"), b"last\n");
    let config = dir.path().join("k0.toml");
    let output = validate_crypt(
        dir.path(),
        "key_slots = \"d.slots\"\npassphrase_file = \"right.pass\"",
    );
    let tree = ok(&output);
    assert!(tree.contains("key_slots="), "{tree}");
    let output = validate_crypt(
        dir.path(),
        "key_slots = \"d.slots\"\npassphrase_file = \"wrong.pass\"",
    );
    let message = String::from_utf8(output.stderr.clone()).unwrap();
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(
        message.starts_with(&format!("{}:8:", config.display()))
            && message.contains(&format!(
                "layer \"x\": key_slots {}: wrong passphrase",
                dir.path().join("d.slots").display()
            )),
        "{message}"
    );
    for (lines, says) in [
        (
            "passphrase_env = \"P\"",
            "passphrase_env opens a key slot: give key_slots too",
        ),
        (
            "key_slots = \"d.slots\"",
            "key_slots needs what opens a slot",
        ),
        (
            "key_slots = \"d.slots\"\npassphrase_env = \"P\"\nkey_file = \"k.key\"",
            "give only one of key_file and passphrase_env, not both",
        ),
        (
            "key_slots = \"none.slots\"\npassphrase_env = \"P\"",
            "none.slots does not exist",
        ),
    ] {
        let output = validate_crypt(dir.path(), lines);
        let message = String::from_utf8(output.stderr.clone()).unwrap();
        assert_eq!(output.status.code(), Some(1), "{lines}: {message}");
        assert!(message.contains(says), "{lines}: {message}");
    }
}

/// On a terminal with no secret given, `init` asks twice without echo, and
/// `add` asks for the opening passphrase (run under `script`, which gives the
/// command a terminal and types what the test writes).
#[test]
fn a_passphrase_is_asked_for_on_a_terminal() {
    use std::io::Write;
    use std::process::Stdio;
    let dir = tempfile::tempdir().unwrap();
    let slots = dir.path().join("d.slots");
    let on_terminal = |args: &str, typed: &str| {
        let mut child = Command::new("script")
            .args(["-qec", &format!("{BIN} key {args}"), "/dev/null"])
            .env("K", "ab".repeat(32))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("script (util-linux)");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(typed.as_bytes())
            .unwrap();
        let start = std::time::Instant::now();
        while child.try_wait().unwrap().is_none() {
            if start.elapsed() > std::time::Duration::from_secs(30) {
                drop(child.kill());
                panic!("key {args} still waiting after 30 s");
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let output = child.wait_with_output().unwrap();
        assert_eq!(output.status.code(), Some(0), "{args}: {output:?}");
        String::from_utf8(output.stdout).unwrap()
    };
    let shown = slots.display();
    let screen = on_terminal(
        &format!("init {shown} --argon2-memory 64KiB --argon2-iterations 1"),
        "typed secret\ntyped secret\n",
    );
    assert!(
        screen.contains(&format!("New passphrase for {shown}: ")),
        "{screen}"
    );
    assert!(screen.contains("The same again: "), "{screen}");
    assert_eq!(data_key(&slots, "typed secret").map(drop), Ok(()));
    let screen = on_terminal(
        &format!("add {shown} --new-key-env K --argon2-memory 64KiB --argon2-iterations 1"),
        "typed secret\n",
    );
    assert!(
        screen.contains(&format!("Passphrase for {shown}: ")),
        "{screen}"
    );
    assert!(
        screen.contains("slot 1 added (key), opened with slot 0"),
        "{screen}"
    );
}

#[test]
fn migrate_refuses_a_raw_key_the_crypt_layer_would_refuse() {
    let dir = tempfile::tempdir().unwrap();
    let slots = dir.path().join("d.slots");
    let short = dir.path().join("short.key");
    private_file(&short, b"not a key");
    let migrate = |from: &[&str]| {
        let mut args = vec!["migrate", path_arg(&slots)];
        args.extend(from);
        args.extend(["--new-passphrase-env", "P"]);
        args.extend(CHEAP);
        refused(&key_with(&args, &[("P", "p"), ("HALF_KEY", "abcd")]))
    };
    assert_eq!(
        migrate(&["--from-key-file", path_arg(&short)]),
        format!(
            "ublk-stack key migrate: --from-key-file {}: must hold 32 raw bytes or 64 hex characters (9 bytes found)\n",
            short.display()
        )
    );
    std::fs::set_permissions(&short, std::fs::Permissions::from_mode(0o640)).unwrap();
    assert!(migrate(&["--from-key-file", path_arg(&short)])
        .contains("mode 0640 lets others read the key"));
    assert_eq!(
        migrate(&["--from-key-env", "HALF_KEY"]),
        "ublk-stack key migrate: --from-key-env HALF_KEY: must hold 64 hex characters\n"
    );
    assert!(!slots.exists(), "a refused migrate left a slot file");
    // Without a raw key to take, migrate is a usage error.
    let output = key_with(
        &["migrate", path_arg(&slots), "--new-passphrase-env", "P"],
        &[("P", "p")],
    );
    assert_eq!(output.status.code(), Some(2), "{output:?}");
}
