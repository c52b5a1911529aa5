//! What the command line says about itself: the version with its commit, shell
//! completions and the man page, all generated from the one clap definition.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_ublk-stack");
const SUBCOMMANDS: [&str; 15] = [
    "up",
    "down",
    "features",
    "list",
    "status",
    "validate",
    "reload",
    "upgrade",
    "scrub",
    "readd",
    "bench",
    "key",
    "completions",
    "manpage",
    "help",
];

fn run(args: &[&str]) -> String {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert!(out.status.success(), "{args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn version_names_the_commit() {
    let version = run(&["--version"]);
    let commit = version
        .split("(commit ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .unwrap_or_else(|| panic!("no commit in {version:?}"));
    // Built from a git checkout here, so a real hash, possibly marked modified.
    let hash = commit.trim_end_matches("-modified");
    assert!(
        hash.len() == 12 && hash.chars().all(|c| c.is_ascii_hexdigit()),
        "{version:?}"
    );
}

#[test]
fn bash_completion_is_valid_bash_and_knows_every_subcommand() {
    let script = run(&["completions", "bash"]);
    for sub in SUBCOMMANDS {
        assert!(script.contains(sub), "{sub} missing from the completion");
    }
    assert!(script.contains("--json") && script.contains("--nbd") && script.contains("--force"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ublk-stack.bash");
    std::fs::write(&path, &script).unwrap();
    let check = Command::new("bash").arg("-n").arg(&path).output().unwrap();
    assert!(check.status.success(), "{check:?}");
    for shell in ["zsh", "fish"] {
        assert!(
            run(&["completions", shell]).contains("ublk-stack"),
            "{shell}"
        );
    }
    let out = Command::new(BIN)
        .args(["completions", "cmd"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "an unknown shell is a usage error"
    );
}

#[test]
fn the_man_page_is_roff_and_lists_every_subcommand() {
    let page = run(&["manpage"]);
    assert!(page.contains(".TH ublk-stack 1"), "{page}");
    for sub in SUBCOMMANDS {
        assert!(page.contains(sub), "{sub} missing from the man page");
    }
}

/// Run `args` with stdout a pipe whose reader is already gone (as in `| head
/// -0`): the command ends quietly with status 141, as a tool killed by SIGPIPE
/// does, and says nothing on stderr (no "failed printing to stdout" panic).
fn run_into_closed_pipe(args: &[&str]) -> std::process::Output {
    let (reader, writer) = nix::unistd::pipe().unwrap();
    drop(reader);
    let run_dir = tempfile::tempdir().unwrap();
    Command::new(BIN)
        .args(args)
        .env("UBLK_STACK_RUN_DIR", run_dir.path())
        .stdout(std::process::Stdio::from(writer))
        .output()
        .unwrap()
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    for args in [
        &["list"][..],
        &["list", "--json"],
        &["completions", "bash"],
        &["manpage"],
        &["--help"],
    ] {
        let out = run_into_closed_pipe(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        // clap prints `--help` itself, and exits 0 or quietly on a closed pipe.
        if args != ["--help"] {
            assert_eq!(out.status.code(), Some(141), "{args:?}: {out:?}");
        }
        assert!(
            !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
            "{args:?}: {stderr}"
        );
        assert!(stderr.is_empty(), "{args:?}: {stderr}");
    }
}
