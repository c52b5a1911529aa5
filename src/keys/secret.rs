//! The secrets the key commands take: what opens a slot (`--passphrase-file`,
//! `--passphrase-env`, `--key-file`, `--key-env`) and what protects a new one
//! (the same with `--new-`), or, with none given and a terminal on standard
//! input, a passphrase typed at a prompt that does not echo it.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

use layers::crypt::key::{
    check_passphrase, key_from_env, key_from_file, passphrase_from_env, passphrase_from_file,
    OwnedSecret,
};
use zeroize::Zeroizing;

/// What opens an existing slot.
#[derive(clap::Args, Debug)]
#[group(id = "open", multiple = false)]
pub struct OpenArgs {
    /// A file holding a passphrase that opens a slot (a line end at its end is not part of it).
    #[arg(long, value_name = "PATH")]
    passphrase_file: Option<PathBuf>,
    /// An environment variable holding a passphrase that opens a slot.
    #[arg(long, value_name = "NAME")]
    passphrase_env: Option<String>,
    /// A key file (32 bytes or 64 hex characters) that opens a key slot.
    #[arg(long, value_name = "PATH")]
    key_file: Option<PathBuf>,
    /// An environment variable holding a key (64 hex characters) that opens a key slot.
    #[arg(long, value_name = "NAME")]
    key_env: Option<String>,
}

/// What protects a new slot.
#[derive(clap::Args, Debug)]
#[group(id = "new", multiple = false)]
pub struct NewArgs {
    /// A file holding the new slot's passphrase.
    #[arg(long, value_name = "PATH")]
    new_passphrase_file: Option<PathBuf>,
    /// An environment variable holding the new slot's passphrase.
    #[arg(long, value_name = "NAME")]
    new_passphrase_env: Option<String>,
    /// A key file (as `key new` writes) that opens the new slot.
    #[arg(long, value_name = "PATH")]
    new_key_file: Option<PathBuf>,
    /// An environment variable holding the key (64 hex characters) that opens the new slot.
    #[arg(long, value_name = "NAME")]
    new_key_env: Option<String>,
}

impl OpenArgs {
    pub fn read(&self, slots: &Path) -> Result<OwnedSecret, String> {
        read(
            (
                &self.passphrase_file,
                &self.passphrase_env,
                &self.key_file,
                &self.key_env,
            ),
            "--",
            || {
                let question = format!("Passphrase for {}: ", slots.display());
                prompt(&question)
            },
        )
    }
}

impl NewArgs {
    pub fn read(&self, slots: &Path) -> Result<OwnedSecret, String> {
        read(
            (
                &self.new_passphrase_file,
                &self.new_passphrase_env,
                &self.new_key_file,
                &self.new_key_env,
            ),
            "--new-",
            || {
                let first = prompt(&format!("New passphrase for {}: ", slots.display()))?;
                let again = prompt("The same again: ")?;
                if first != again {
                    return Err("the two passphrases differ; nothing was changed".into());
                }
                Ok(first)
            },
        )
    }
}

type Given<'a> = (
    &'a Option<PathBuf>,
    &'a Option<String>,
    &'a Option<PathBuf>,
    &'a Option<String>,
);

fn read(
    given: Given<'_>,
    prefix: &str,
    ask: impl FnOnce() -> Result<Zeroizing<Vec<u8>>, String>,
) -> Result<OwnedSecret, String> {
    let flag = |name: &str| format!("{prefix}{name}");
    Ok(match given {
        (Some(path), ..) => {
            OwnedSecret::Passphrase(passphrase_from_file(&flag("passphrase-file"), path)?)
        }
        (_, Some(name), ..) => {
            OwnedSecret::Passphrase(passphrase_from_env(&flag("passphrase-env"), name)?)
        }
        (_, _, Some(path), _) => OwnedSecret::Key(key_from_file(&flag("key-file"), path)?),
        (_, _, _, Some(name)) => OwnedSecret::Key(key_from_env(&flag("key-env"), name)?),
        (None, None, None, None) if std::io::stdin().is_terminal() => {
            OwnedSecret::Passphrase(check_passphrase(ask()?, "the passphrase typed")?)
        }
        (None, None, None, None) => {
            return Err(format!(
                "no {} secret: give {}, {}, {} or {} (or run on a terminal to be asked for a passphrase)",
                if prefix == "--" { "opening" } else { "new" },
                flag("passphrase-file"),
                flag("passphrase-env"),
                flag("key-file"),
                flag("key-env"),
            ))
        }
    })
}

/// Ask on the terminal with echo off; the line end is not part of the answer.
fn prompt(question: &str) -> Result<Zeroizing<Vec<u8>>, String> {
    use nix::sys::termios::{tcgetattr, tcsetattr, LocalFlags, SetArg};
    let fail = |e: &dyn std::fmt::Display| format!("asking for the passphrase: {e}");
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .map_err(|e| fail(&e))?;
    let saved = tcgetattr(&tty).map_err(|e| fail(&e))?;
    let mut quiet = saved.clone();
    quiet.local_flags.remove(LocalFlags::ECHO);
    quiet.local_flags.insert(LocalFlags::ECHONL);
    (&tty)
        .write_all(question.as_bytes())
        .map_err(|e| fail(&e))?;
    tcsetattr(&tty, SetArg::TCSANOW, &quiet).map_err(|e| fail(&e))?;
    let mut line = Zeroizing::new(Vec::new());
    let read = std::io::BufReader::new(&tty).read_until(b'\n', &mut line);
    let restored = tcsetattr(&tty, SetArg::TCSANOW, &saved);
    read.map_err(|e| fail(&e))?;
    restored.map_err(|e| fail(&e))?;
    if line.last() == Some(&b'\n') {
        line.pop();
    }
    Ok(line)
}

/// The raw key a crypt layer was given, for `migrate`.
#[derive(clap::Args, Debug)]
#[group(id = "from", multiple = false, required = true)]
pub struct FromArgs {
    /// The key file the crypt layer's key_file names.
    #[arg(long, value_name = "PATH")]
    from_key_file: Option<PathBuf>,
    /// The environment variable the crypt layer's key_env names.
    #[arg(long, value_name = "NAME")]
    from_key_env: Option<String>,
}

impl FromArgs {
    /// The key, and where it came from as the user named it.
    pub fn read(&self) -> Result<(Zeroizing<[u8; 32]>, String), String> {
        match (&self.from_key_file, &self.from_key_env) {
            (Some(path), _) => Ok((
                key_from_file("--from-key-file", path)?,
                path.display().to_string(),
            )),
            (_, Some(name)) => Ok((key_from_env("--from-key-env", name)?, format!("${name}"))),
            (None, None) => Err("give --from-key-file or --from-key-env".into()),
        }
    }
}
