//! The cost and the refusals of `validate` and `up` follow the config, never
//! the device size: huge devices are measured at once, impossible ones are
//! refused with one line before anything is created, and deep stacks are
//! refused or opened in bounded time. Every run of the binary is bounded.

use std::ffi::OsStr;
use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Runs the binary with `args` and `env`, killing it after `limit`.
fn run(args: &[&OsStr], env: &[(&str, &OsStr)], limit: Duration) -> (Output, Duration) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ublk-stack"));
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (key, value) in env {
        command.env(key, value);
    }
    let start = Instant::now();
    let mut child = command.spawn().expect("run ublk-stack");
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if start.elapsed() > limit {
            kill(&mut child);
            panic!("ublk-stack {args:?} still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let took = start.elapsed();
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    child
        .stdout
        .take()
        .map(|mut out| out.read_to_end(&mut stdout));
    child
        .stderr
        .take()
        .map(|mut err| err.read_to_end(&mut stderr));
    (
        Output {
            status,
            stdout,
            stderr,
        },
        took,
    )
}

fn kill(child: &mut Child) {
    drop(child.kill());
    drop(child.wait());
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write config");
    path
}

/// `count` checksum layers stacked over a memory leaf, the top one `c{count}`.
fn stacked_checksums(count: usize) -> String {
    let mut text = format!(
        "version = 1\n[device]\nname = \"deep\"\ntop = \"c{count}\"\n[layers.m]\ntype = \"memory\"\nsize = \"64MiB\"\n"
    );
    let mut below = "m".to_string();
    for i in 1..=count {
        text.push_str(&format!(
            "[layers.c{i}]\ntype = \"checksum\"\nover = \"{below}\"\n"
        ));
        below = format!("c{i}");
    }
    text
}

/// Sizing a crypt layer over 4096 TiB is arithmetic, not a count down one
/// block at a time: well under 2 s (it took over 30 s).
#[test]
fn validate_of_crypt_over_4096_tib_takes_no_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = "ab".repeat(32);
    let config = write(
        dir.path(),
        "huge.toml",
        "version = 1\n[device]\nname = \"huge\"\ntop = \"x\"\n[layers.x]\ntype = \"crypt\"\nover = \"n\"\n\
         key_env = \"HUGE_KEY\"\n[layers.n]\ntype = \"null\"\nsize = \"4096TiB\"\n",
    );
    let (output, took) = run(
        &["validate".as_ref(), config.as_os_str()],
        &[("HUGE_KEY", key.as_ref())],
        Duration::from_secs(60),
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(took < Duration::from_secs(2), "validate took {took:?}");
    // Its table (1/64 of the device) is more than any machine's memory.
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with(&format!(
            "{}:5:1: layer \"x\": its table of about 63.0 TiB",
            config.display()
        )),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 2, "{stderr}");
}

/// Opening a stack of 8 checksums (the most allowed on one path) is quick;
/// 9 and 40 are refused by `validate` and by `up`, at once.
#[test]
fn stacked_checksums_open_in_bounded_time_or_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run_dir = dir.path().join("run");
    let socket = dir.path().join("deep.sock");
    let env = [("UBLK_STACK_RUN_DIR", run_dir.as_os_str())];
    let config = write(dir.path(), "c8.toml", &stacked_checksums(8));
    let nbd = format!("unix:{}", socket.display());
    let start = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ublk-stack"))
        .args([
            "up".as_ref(),
            config.as_os_str(),
            "--nbd".as_ref(),
            nbd.as_ref() as &OsStr,
        ])
        .env("UBLK_STACK_RUN_DIR", &run_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("up");
    let mut line = [0u8; 1];
    let mut ready = Vec::new();
    let mut stdout = child.stdout.take().expect("stdout");
    // A reader thread, so a hung open cannot hang the test.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        while stdout.read(&mut line).is_ok_and(|n| n == 1) && line[0] != b'\n' {
            ready.push(line[0]);
        }
        drop(tx.send(String::from_utf8_lossy(&ready).into_owned()));
    });
    let ready = rx.recv_timeout(Duration::from_secs(10));
    let took = start.elapsed();
    kill(&mut child);
    let ready = ready.expect("8 stacked checksums not ready within 10 s");
    assert!(ready.contains("ready"), "{ready:?} after {took:?}");

    for count in [9, 40] {
        let config = write(
            dir.path(),
            &format!("c{count}.toml"),
            &stacked_checksums(count),
        );
        for args in [
            vec!["validate".as_ref(), config.as_os_str()],
            vec![
                "up".as_ref(),
                config.as_os_str(),
                "--nbd".as_ref(),
                nbd.as_ref(),
            ],
        ] {
            let (output, took) = run(&args, &env, Duration::from_secs(30));
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
            assert!(took < Duration::from_secs(2), "{args:?} took {took:?}");
            assert!(
                stderr.contains("layer \"c9\": this is the 9th layer keeping per-block metadata"),
                "{stderr}"
            );
        }
    }
}

/// `up` refuses what `validate` refuses, with the same one line, before it
/// creates anything: a key that cannot be read leaves no leaf file behind,
/// and a memory device larger than the machine exits 1 instead of aborting.
#[test]
fn up_refuses_before_creating_a_leaf_and_never_aborts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run_dir = dir.path().join("run");
    let env = [("UBLK_STACK_RUN_DIR", run_dir.as_os_str())];
    let socket = format!("unix:{}", dir.path().join("x.sock").display());
    let leaf = dir.path().join("leaf.img");
    let key = dir.path().join("k.key");
    std::fs::write(&key, "ab".repeat(32)).expect("key");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let cases = [
        ("key_file = \"missing.key\"", "missing.key"),
        ("key_file = \"k.key\"", "mode 0644 lets others read the key"),
        ("key_env = \"UBLK_STACK_TEST_KEY_NEVER_SET\"", "is not set"),
    ];
    for (key_line, says) in cases {
        let config = write(
            dir.path(),
            "x.toml",
            &format!(
                "version = 1\n[device]\nname = \"x\"\ntop = \"x\"\n[layers.x]\ntype = \"crypt\"\nover = \"f\"\n\
                 {key_line}\n[layers.f]\ntype = \"file\"\npath = \"leaf.img\"\nsize = \"16MiB\"\ncreate = true\n"
            ),
        );
        let (output, _) = run(
            &[
                "up".as_ref(),
                config.as_os_str(),
                "--nbd".as_ref(),
                socket.as_ref(),
            ],
            &env,
            Duration::from_secs(30),
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{key_line}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.starts_with(&format!("{}:8:", config.display())),
            "{stderr}"
        );
        assert!(stderr.contains(says), "{stderr}");
        assert!(!leaf.exists(), "{key_line}: up created the leaf");
    }

    let config = write(
        dir.path(),
        "m.toml",
        "version = 1\n[device]\nname = \"m\"\ntop = \"m\"\n[layers.m]\ntype = \"memory\"\nsize = \"16777215TiB\"\n",
    );
    let (output, _) = run(
        &[
            "up".as_ref(),
            config.as_os_str(),
            "--nbd".as_ref(),
            socket.as_ref(),
        ],
        &env,
        Duration::from_secs(30),
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("does not fit in memory"), "{stderr}");
}

/// Detaches the loop device when the test ends, however it ends.
struct Loop(String);

impl Drop for Loop {
    fn drop(&mut self) {
        drop(Command::new("losetup").args(["-d", &self.0]).status());
    }
}

/// O_DIRECT to a disk needs requests of at least its logical sector size: a
/// 4096-byte-sector disk under block_size = 512 is refused at `direct`. Needs
/// root and a loop device to make such a disk.
#[test]
#[ignore = "needs root and losetup, to attach a loop device with 4096-byte sectors"]
fn disk_with_sectors_larger_than_the_block_size_is_refused_for_o_direct() {
    use std::os::unix::fs::MetadataExt;
    let root = std::fs::metadata("/proc/self").expect("/proc/self").uid() == 0;
    assert!(
        root,
        "run as root: the test attaches a loop device (losetup)"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let image = dir.path().join("disk.img");
    std::fs::write(&image, vec![0u8; 1 << 20]).expect("image");
    let attached = Command::new("losetup")
        .args(["-f", "--show", "--sector-size", "4096"])
        .arg(&image)
        .output()
        .expect("losetup");
    assert!(attached.status.success(), "losetup: {attached:?}");
    let device = Loop(String::from_utf8_lossy(&attached.stdout).trim().to_string());
    for (block_size, direct, refused) in [
        (512, "true", true),
        (4096, "true", false),
        (512, "false", false),
    ] {
        let config = write(
            dir.path(),
            "disk.toml",
            &format!(
                "version = 1\n[device]\nname = \"d0\"\ntop = \"d\"\nblock_size = {block_size}\n[layers.d]\n\
                 type = \"disk\"\npath = \"{}\"\ndirect = {direct}\n",
                device.0
            ),
        );
        let (output, _) = run(
            &["validate".as_ref(), config.as_os_str()],
            &[],
            Duration::from_secs(30),
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        if refused {
            assert_eq!(output.status.code(), Some(1), "{stderr}");
            assert!(
                stderr.starts_with(&format!(
                    "{}:9:10: layer \"d\": {} has 4096-byte logical sectors, more than device.block_size (512)",
                    config.display(),
                    device.0
                )),
                "{stderr}"
            );
        } else {
            assert_eq!(
                output.status.code(),
                Some(0),
                "{block_size} {direct}: {stderr}"
            );
        }
    }
}
