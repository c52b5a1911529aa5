//! `crypt`: AES-256-GCM per block, the tags kept below the data.

use std::any::Any;
use std::fs;
use std::path::Path;

use zeroize::Zeroizing;

use super::{path_value, shown, Host, Item, Key, KeyReader, Kind, Opened, Opening, Sizing};
use crate::crypt::Crypt;
use crate::params::{KeySource, LayerId, Unlock};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CryptParams {
    pub over: LayerId,
    /// Only "aes-256-gcm" in schema v1.
    pub cipher: String,
    pub key: KeySource,
}

/// Unknown keys that are an attempt at an inline key, refused with advice.
const INLINE_KEY_WORDS: [&str; 5] = ["key", "password", "passphrase", "secret", "key_hex"];

impl Kind for CryptParams {
    const NAME: &'static str = "crypt";
    const KEYS: &'static [Key] = &[
        Key::over(),
        Key::optional("cipher", "\"aes-256-gcm\"", "the cipher; only aes-256-gcm"),
        Key::optional(
            "key_file",
            "required unless key_env",
            "the file holding the 32-byte key (with key_slots: a key that opens a slot)",
        ),
        Key::optional(
            "key_env",
            "required unless key_file",
            "the environment variable holding the key",
        ),
        Key::optional(
            "key_slots",
            "none",
            "the key-slot file holding the data key, wrapped; key_file, key_env, \
             passphrase_file or passphrase_env then opens a slot",
        ),
        Key::optional(
            "passphrase_file",
            "none",
            "with key_slots: the file holding a passphrase",
        ),
        Key::optional(
            "passphrase_env",
            "none",
            "with key_slots: the environment variable holding a passphrase",
        ),
    ];
    const SYNONYMS: &'static [&'static str] =
        &["encrypt", "encrypted", "encryption", "luks", "dm-crypt"];
    const KEEPS_METADATA: bool = true;
    const SUPERBLOCK: bool = true;
    const GROWS: bool = true;

    fn unknown_key(word: &str) -> Option<String> {
        INLINE_KEY_WORDS.contains(&word).then(|| {
            format!(
                "inline keys are not allowed (\"{word}\"): a key in the config ends up in git; \
                 put it in a file and set key_file, or in an environment variable and set key_env"
            )
        })
    }

    fn read(keys: &mut dyn KeyReader) -> Option<CryptParams> {
        let over = keys.over();
        let cipher = keys.fixed_word("cipher", "aes-256-gcm");
        let slots = keys.get("key_slots");
        let secrets: Vec<Item> = SECRET_KEYS.iter().filter_map(|key| keys.get(key)).collect();
        let key = read_key(keys, slots, &secrets);
        Some(CryptParams {
            over: over?,
            cipher: cipher?,
            key: key?,
        })
    }

    fn children(&self) -> Vec<LayerId> {
        vec![self.over]
    }

    fn values(&self, name: &dyn Fn(LayerId) -> String) -> Vec<(&'static str, Option<String>)> {
        let mut values = vec![
            ("over", Some(name(self.over))),
            ("cipher", Some(self.cipher.clone())),
        ];
        let given = self.key_values(path_value);
        for key in [
            "key_file",
            "key_env",
            "key_slots",
            "passphrase_file",
            "passphrase_env",
        ] {
            let value = given
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.clone());
            values.push((key, value));
        }
        values
    }

    fn summary(&self) -> String {
        let keys: Vec<String> = self
            .key_values(shown)
            .into_iter()
            .map(|(key, value)| format!("{key}={value}"))
            .collect();
        format!("cipher={} {}", self.cipher, keys.join(" "))
    }

    fn size(&self, sizing: &mut Sizing<'_>) -> Option<u64> {
        let lower = sizing.lower()?;
        let exposed = crate::crypt::exposed_size(lower, sizing.block_size as u32);
        sizing.not_empty(Self::NAME, lower, exposed)
    }

    /// The key is read exactly as `up` reads it, so a key that `up` would
    /// refuse (missing, unreadable, the wrong length, readable by others,
    /// owned by another user, an unset variable, a passphrase that opens no
    /// slot) is refused here, and the key is dropped (and wiped) at once.
    fn check_host(&self, host: &mut Host<'_>) {
        host.table_memory();
        for (key, path) in self.key_paths() {
            if fs::symlink_metadata(path).is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound) {
                host.report(Some(key), format!("{key} {} does not exist", shown(path)));
                return;
            }
        }
        if let Err(message) = crate::crypt::load_key(&self.key) {
            let keys: Vec<&str> = self
                .key_values(shown)
                .into_iter()
                .map(|(key, _)| key)
                .collect();
            let blamed = keys
                .iter()
                .find(|key| message.starts_with(**key))
                .or(keys.first())
                .copied();
            host.report(blamed, message);
        }
    }

    /// Keys are read before any layer is opened, so that a missing, short or
    /// exposed key refuses the plan before a leaf is created or a layer
    /// formatted.
    fn prepare(&self) -> Result<Option<Box<dyn Any>>, String> {
        let key: Zeroizing<[u8; 32]> = crate::crypt::load_key(&self.key)?;
        Ok(Some(Box::new(key)))
    }

    fn open(&self, opening: &mut Opening<'_>) -> Result<Opened, String> {
        let key: Zeroizing<[u8; 32]> = opening
            .prepared()
            .ok_or_else(|| "its key was not loaded".to_string())?;
        let open = Crypt::open(opening.io(), opening.child()?, opening.block_size, &key);
        Ok(Opened::of(opening.block_on(open)?))
    }
}

impl CryptParams {
    /// The key-related keys given, with their values as the config shows them.
    /// `path` shows a path.
    fn key_values(&self, path_text: impl Fn(&Path) -> String) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        let unlock = match &self.key {
            KeySource::File(path) => return vec![("key_file", path_text(path))],
            KeySource::Env(name) => return vec![("key_env", name.clone())],
            KeySource::Slots { path, unlock } => {
                out.push(("key_slots", path_text(path)));
                unlock
            }
        };
        out.push(match unlock {
            Unlock::KeyFile(path) => ("key_file", path_text(path)),
            Unlock::KeyEnv(name) => ("key_env", name.clone()),
            Unlock::PassphraseFile(path) => ("passphrase_file", path_text(path)),
            Unlock::PassphraseEnv(name) => ("passphrase_env", name.clone()),
        });
        out
    }

    /// The files the key is read from, by key.
    fn key_paths(&self) -> Vec<(&'static str, &Path)> {
        let mut out = Vec::new();
        let unlock = match &self.key {
            KeySource::File(path) => return vec![("key_file", path.as_path())],
            KeySource::Env(_) => return out,
            KeySource::Slots { path, unlock } => {
                out.push(("key_slots", path.as_path()));
                unlock
            }
        };
        match unlock {
            Unlock::KeyFile(path) => out.push(("key_file", path.as_path())),
            Unlock::PassphraseFile(path) => out.push(("passphrase_file", path.as_path())),
            Unlock::KeyEnv(_) | Unlock::PassphraseEnv(_) => {}
        }
        out
    }
}

/// The keys that give a key or what opens a key slot: one of them is used.
const SECRET_KEYS: [&str; 4] = ["key_file", "key_env", "passphrase_file", "passphrase_env"];

/// The key source from `key_slots` and the secret keys given, each mistake
/// reported at its key.
fn read_key(keys: &mut dyn KeyReader, slots: Option<Item>, given: &[Item]) -> Option<KeySource> {
    if given.len() > 1 {
        let later = *given
            .iter()
            .max_by_key(|item| keys.position(**item))
            .expect("two items");
        let names: Vec<&str> = given.iter().map(|item| item.key()).collect();
        let (last, rest) = names.split_last().expect("two names");
        keys.report(
            later,
            format!("give only one of {} and {last}, not both", rest.join(", ")),
        );
        return None;
    }
    match (slots, given.first().copied()) {
        // An inline key was already refused with advice on key_file and key_env.
        (None, None) if has_inline_key(keys) => None,
        (None, None) => {
            keys.report_layer(
                "missing key_file or key_env: the file holding the key (key_file = \"keys/disk.key\"), \
                 or the environment variable holding it (key_env = \"DISK_KEY\"); or key_slots with \
                 what opens a slot"
                    .into(),
            );
            None
        }
        (Some(_), None) => {
            keys.report_layer(
                "key_slots needs what opens a slot: passphrase_file, passphrase_env, key_file or key_env"
                    .into(),
            );
            None
        }
        (None, Some(item)) => match item.key() {
            "key_file" => keys.path(item).map(KeySource::File),
            "key_env" => env_name(keys, item).map(KeySource::Env),
            passphrase => {
                keys.report(
                    item,
                    format!(
                        "{passphrase} opens a key slot: give key_slots too (the file \
                         `ublk-stack key init` or `key migrate` writes); a raw key is key_file or key_env"
                    ),
                );
                None
            }
        },
        (Some(slots), Some(item)) => {
            let path = keys.path(slots);
            let unlock = match item.key() {
                "key_file" => keys.path(item).map(Unlock::KeyFile),
                "key_env" => env_name(keys, item).map(Unlock::KeyEnv),
                "passphrase_file" => keys.path(item).map(Unlock::PassphraseFile),
                _ => env_name(keys, item).map(Unlock::PassphraseEnv),
            };
            Some(KeySource::Slots {
                path: path?,
                unlock: unlock?,
            })
        }
    }
}

fn has_inline_key(keys: &dyn KeyReader) -> bool {
    keys.unknown_keys()
        .iter()
        .any(|unknown| INLINE_KEY_WORDS.contains(&unknown.as_str()))
}

fn env_name(keys: &mut dyn KeyReader, item: Item) -> Option<String> {
    let name = keys.string(item)?;
    let valid = !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if valid {
        return Some(name);
    }
    let hint = match name.strip_prefix('$') {
        Some(bare) => format!(
            "; write the name without \"$\": {} = \"{bare}\"",
            item.key()
        ),
        None => String::new(),
    };
    keys.report(
        item,
        format!(
            "{} \"{name}\" is not an environment variable name (letters, digits and _){hint}",
            item.key()
        ),
    );
    None
}
