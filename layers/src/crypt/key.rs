//! The key of a crypt layer, read as the config names it: a raw key from a
//! file or an environment variable, or the data key from a key-slot file
//! opened with a passphrase or a key-encryption key. Every secret read from a
//! file must be the user's own and closed to others; key material is wiped
//! when dropped.

use std::path::Path;

use zeroize::Zeroizing;

use crate::key_slots::{KeySlots, Secret, KEY_BYTES};
use crate::plan::{KeySource, Unlock};

/// The longest passphrase read (cryptsetup's default limit is 512 characters).
pub const MAX_PASSPHRASE_BYTES: usize = 4096;

/// A secret as read, owned and wiped when dropped.
pub enum OwnedSecret {
    Passphrase(Zeroizing<Vec<u8>>),
    Key(Zeroizing<[u8; KEY_BYTES]>),
}

impl OwnedSecret {
    pub fn as_secret(&self) -> Secret<'_> {
        match self {
            OwnedSecret::Passphrase(passphrase) => Secret::Passphrase(passphrase),
            OwnedSecret::Key(key) => Secret::Key(key),
        }
    }
}

/// Read the 32-byte data key named by the config.
pub fn load_key(source: &KeySource) -> Result<Zeroizing<[u8; KEY_BYTES]>, String> {
    match source {
        KeySource::File(path) => key_from_file("key_file", path),
        KeySource::Env(name) => key_from_env("key_env", name),
        KeySource::Slots { path, unlock } => {
            let slots = read_slots("key_slots", path)?;
            let secret = read_unlock(unlock)?;
            let (_, key) = slots
                .open(secret.as_secret())
                .map_err(|e| format!("key_slots {}: {e}", path.display()))?;
            Ok(key)
        }
    }
}

/// The secret `unlock` names.
pub fn read_unlock(unlock: &Unlock) -> Result<OwnedSecret, String> {
    Ok(match unlock {
        Unlock::KeyFile(path) => OwnedSecret::Key(key_from_file("key_file", path)?),
        Unlock::KeyEnv(name) => OwnedSecret::Key(key_from_env("key_env", name)?),
        Unlock::PassphraseFile(path) => {
            OwnedSecret::Passphrase(passphrase_from_file("passphrase_file", path)?)
        }
        Unlock::PassphraseEnv(name) => {
            OwnedSecret::Passphrase(passphrase_from_env("passphrase_env", name)?)
        }
    })
}

/// A key-slot file, checked as a key file is (it allows guessing the
/// passphrases offline) and decoded; `what` names it in messages.
pub fn read_slots(what: &str, path: &Path) -> Result<KeySlots, String> {
    let bytes = read_secret_file(what, path, "the key slots")?;
    KeySlots::decode(&bytes).map_err(|e| format!("{what} {}: {e}", path.display()))
}

/// A raw key: 32 bytes, or 64 hex characters (with white space around them).
pub fn key_from_file(what: &str, path: &Path) -> Result<Zeroizing<[u8; KEY_BYTES]>, String> {
    let text = read_secret_file(what, path, "the key")?;
    parse_key(&text, true).ok_or_else(|| {
        format!(
            "{what} {}: must hold 32 raw bytes or 64 hex characters ({} bytes found)",
            path.display(),
            text.len()
        )
    })
}

pub fn key_from_env(what: &str, name: &str) -> Result<Zeroizing<[u8; KEY_BYTES]>, String> {
    let text = env_value(what, name)?;
    parse_key(&text, false).ok_or_else(|| format!("{what} {name}: must hold 64 hex characters"))
}

/// A passphrase file's contents, less one line end at its end.
pub fn passphrase_from_file(what: &str, path: &Path) -> Result<Zeroizing<Vec<u8>>, String> {
    let mut text = read_secret_file(what, path, "the passphrase")?;
    for end in [b'\n', b'\r'] {
        if text.last() == Some(&end) {
            text.pop();
        }
    }
    check_passphrase(text, &format!("{what} {}", path.display()))
}

pub fn passphrase_from_env(what: &str, name: &str) -> Result<Zeroizing<Vec<u8>>, String> {
    check_passphrase(env_value(what, name)?, &format!("{what} {name}"))
}

pub fn check_passphrase(
    passphrase: Zeroizing<Vec<u8>>,
    shown: &str,
) -> Result<Zeroizing<Vec<u8>>, String> {
    if passphrase.is_empty() {
        return Err(format!("{shown}: the passphrase is empty"));
    }
    if passphrase.len() > MAX_PASSPHRASE_BYTES {
        return Err(format!(
            "{shown}: the passphrase is longer than {MAX_PASSPHRASE_BYTES} bytes"
        ));
    }
    Ok(passphrase)
}

fn env_value(what: &str, name: &str) -> Result<Zeroizing<Vec<u8>>, String> {
    std::env::var_os(name)
        .map(|value| Zeroizing::new(std::os::unix::ffi::OsStringExt::into_vec(value)))
        .ok_or_else(|| format!("{what}: environment variable {name} is not set"))
}

fn parse_key(text: &[u8], raw_allowed: bool) -> Option<Zeroizing<[u8; KEY_BYTES]>> {
    let mut key = Zeroizing::new([0u8; KEY_BYTES]);
    let trimmed: &[u8] = text.trim_ascii();
    if trimmed.len() == 2 * KEY_BYTES && trimmed.iter().all(u8::is_ascii_hexdigit) {
        for (i, pair) in trimmed.chunks(2).enumerate() {
            let hex = |c: u8| (c as char).to_digit(16).expect("checked hex") as u8;
            key[i] = hex(pair[0]) << 4 | hex(pair[1]);
        }
    } else if raw_allowed && text.len() == KEY_BYTES {
        key.copy_from_slice(text);
    } else {
        return None;
    }
    Some(key)
}

/// A file holding a secret: a regular file of this user's, mode 0600 or
/// stricter. `what` names it in messages, `holds` says what others could read.
pub fn read_secret_file(
    what: &str,
    path: &Path,
    holds: &str,
) -> Result<Zeroizing<Vec<u8>>, String> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| format!("{what} {shown}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("{what} {shown}: not a regular file"));
    }
    check_owner(what, path, meta.uid(), crate::os::effective_uid())?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "{what} {shown}: mode {mode:04o} lets others read {holds}; chmod 600 it"
        ));
    }
    std::fs::read(path)
        .map(Zeroizing::new)
        .map_err(|e| format!("{what} {shown}: {e}"))
}

/// A secret file owned by another user could be replaced by them with one of
/// their choosing: only the daemon's own user may own it.
fn check_owner(what: &str, path: &Path, owner: u32, me: u32) -> Result<(), String> {
    if owner == me {
        return Ok(());
    }
    Err(format!(
        "{what} {}: owned by uid {owner}, not by this user (uid {me}); chown it",
        path.display()
    ))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::key_slots::Argon2Cost;

    fn private_file(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    }

    #[test]
    fn a_key_file_of_another_user_is_refused() {
        let path = Path::new("k.key");
        assert!(check_owner("key_file", path, 1000, 1000).is_ok());
        let error = check_owner("key_file", path, 0, 1000).unwrap_err();
        assert_eq!(
            error,
            "key_file k.key: owned by uid 0, not by this user (uid 1000); chown it"
        );
    }

    #[test]
    fn keys_parse_from_hex_and_raw_files_with_strict_modes() {
        let dir = tempfile::tempdir().unwrap();
        let hex = private_file(
            dir.path(),
            "hex.key",
            format!("{}\n", "ab".repeat(32)).as_bytes(),
        );
        assert_eq!(
            *load_key(&KeySource::File(hex.clone())).unwrap(),
            [0xab; 32]
        );
        std::fs::set_permissions(&hex, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(load_key(&KeySource::File(hex))
            .unwrap_err()
            .contains("chmod 600"));
        let raw = private_file(dir.path(), "raw.key", &[7u8; 32]);
        std::fs::set_permissions(&raw, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert_eq!(*load_key(&KeySource::File(raw)).unwrap(), [7; 32]);
        let short = private_file(dir.path(), "short.key", b"secret");
        assert!(load_key(&KeySource::File(short))
            .unwrap_err()
            .contains("32 raw bytes"));
    }

    #[test]
    fn slots_give_the_data_key_to_the_right_passphrase_only() {
        let dir = tempfile::tempdir().unwrap();
        let mut slots = KeySlots::new();
        let cheap = Argon2Cost {
            memory_kib: 64,
            iterations: 1,
            lanes: 1,
        };
        slots
            .add(&[3; 32], Secret::Passphrase(b"open sesame"), cheap)
            .unwrap();
        let path = private_file(dir.path(), "d.slots", &slots.encode());
        let right = private_file(dir.path(), "right.pass", b"open sesame\n");
        let wrong = private_file(dir.path(), "wrong.pass", b"open sesame!\n");
        let source = |pass: &Path| KeySource::Slots {
            path: path.clone(),
            unlock: Unlock::PassphraseFile(pass.to_path_buf()),
        };
        assert_eq!(*load_key(&source(&right)).unwrap(), [3; 32]);
        assert_eq!(
            load_key(&source(&wrong)).unwrap_err(),
            format!(
                "key_slots {}: wrong passphrase: it opens none of the 1 passphrase slots",
                path.display()
            )
        );
        let empty = private_file(dir.path(), "empty.pass", b"\n");
        assert!(load_key(&source(&empty))
            .unwrap_err()
            .ends_with("the passphrase is empty"));
        let foreign = private_file(dir.path(), "foreign.slots", &[1; 1092]);
        let error = load_key(&KeySource::Slots {
            path: foreign,
            unlock: Unlock::PassphraseFile(right),
        })
        .unwrap_err();
        assert!(error.contains("not a ublk-stack key-slot file"), "{error}");
    }
}
