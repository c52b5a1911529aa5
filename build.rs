//! Puts the commit the binary is built from into `--version`
//! (UBLK_STACK_COMMIT; "unknown" outside a git checkout, unless the variable is
//! set by whoever builds, as a package build does).

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    println!("cargo:rerun-if-env-changed=UBLK_STACK_COMMIT");
    if let Ok(commit) = std::env::var("UBLK_STACK_COMMIT") {
        println!("cargo:rustc-env=UBLK_STACK_COMMIT={commit}");
        return;
    }
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).map(|commit| {
        let dirty =
            git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
        if dirty {
            format!("{commit}-modified")
        } else {
            commit
        }
    });
    if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        // A commit or checkout moves HEAD (or its log); an edit changes the index.
        println!("cargo:rerun-if-changed={dir}/HEAD");
        println!("cargo:rerun-if-changed={dir}/logs/HEAD");
        println!("cargo:rerun-if-changed={dir}/index");
    }
    println!(
        "cargo:rustc-env=UBLK_STACK_COMMIT={}",
        commit.as_deref().unwrap_or("unknown")
    );
}
