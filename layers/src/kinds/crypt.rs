//! `crypt`: AES-256-GCM per block, the tags kept below the data.

use std::any::Any;
use std::fs;
use std::sync::Arc;

use zeroize::Zeroizing;

use super::{path_value, shown, Host, Key, KeyReader, Kind, Opening, Sizing};
use crate::crypt::Crypt;
use crate::params::{KeySource, LayerId};
use crate::Layer;

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
            "the file holding the 32-byte key",
        ),
        Key::optional(
            "key_env",
            "required unless key_file",
            "the environment variable holding the key",
        ),
    ];
    const SYNONYMS: &'static [&'static str] =
        &["encrypt", "encrypted", "encryption", "luks", "dm-crypt"];
    const KEEPS_METADATA: bool = true;

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
        let key_file = keys.get("key_file");
        let key_env = keys.get("key_env");
        let key = match (key_file, key_env) {
            (Some(file), Some(env)) => {
                let later = if keys.position(file) > keys.position(env) {
                    file
                } else {
                    env
                };
                keys.report(
                    later,
                    "give only one of key_file and key_env, not both".into(),
                );
                None
            }
            (Some(file), None) => keys.path(file).map(KeySource::File),
            (None, Some(env)) => env_name(keys, env).map(KeySource::Env),
            // An inline key was already refused with advice on key_file and key_env.
            (None, None) if has_inline_key(keys) => None,
            (None, None) => {
                keys.report_layer(
                    "missing key_file or key_env: the file holding the key (key_file = \"keys/disk.key\"), \
                     or the environment variable holding it (key_env = \"DISK_KEY\")"
                        .into(),
                );
                None
            }
        };
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
        let (file, env) = match &self.key {
            KeySource::File(path) => (Some(path_value(path)), None),
            KeySource::Env(name) => (None, Some(name.clone())),
        };
        vec![
            ("over", Some(name(self.over))),
            ("cipher", Some(self.cipher.clone())),
            ("key_file", file),
            ("key_env", env),
        ]
    }

    fn summary(&self) -> String {
        let key = match &self.key {
            KeySource::File(path) => format!("key_file={}", shown(path)),
            KeySource::Env(name) => format!("key_env={name}"),
        };
        format!("cipher={} {key}", self.cipher)
    }

    fn size(&self, sizing: &mut Sizing<'_>) -> Option<u64> {
        let lower = sizing.lower()?;
        let exposed = crate::crypt::exposed_size(lower, sizing.block_size as u32);
        sizing.not_empty(Self::NAME, lower, exposed)
    }

    /// The key is read exactly as `up` reads it, so a key that `up` would
    /// refuse (missing, unreadable, the wrong length, readable by others,
    /// owned by another user, an unset variable) is refused here, and the key
    /// is dropped (and wiped) at once.
    fn check_host(&self, host: &mut Host<'_>) {
        host.table_memory();
        let key = match &self.key {
            KeySource::File(_) => "key_file",
            KeySource::Env(_) => "key_env",
        };
        if let KeySource::File(path) = &self.key {
            if fs::symlink_metadata(path).is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound) {
                host.report(
                    Some(key),
                    format!("key_file {} does not exist", shown(path)),
                );
                return;
            }
        }
        if let Err(message) = crate::crypt::load_key(&self.key) {
            host.report(Some(key), message);
        }
    }

    /// Keys are read before any layer is opened, so that a missing, short or
    /// exposed key refuses the plan before a leaf is created or a layer
    /// formatted.
    fn prepare(&self) -> Result<Option<Box<dyn Any>>, String> {
        let key: Zeroizing<[u8; 32]> = crate::crypt::load_key(&self.key)?;
        Ok(Some(Box::new(key)))
    }

    fn open(&self, opening: &mut Opening<'_>) -> Result<Arc<dyn Layer>, String> {
        let key: Zeroizing<[u8; 32]> = opening
            .prepared()
            .ok_or_else(|| "its key was not loaded".to_string())?;
        let open = Crypt::open(opening.io(), opening.child()?, opening.block_size, &key);
        Ok(Arc::new(opening.block_on(open)?))
    }
}

fn has_inline_key(keys: &dyn KeyReader) -> bool {
    keys.unknown_keys()
        .iter()
        .any(|unknown| INLINE_KEY_WORDS.contains(&unknown.as_str()))
}

fn env_name(keys: &mut dyn KeyReader, item: super::Item) -> Option<String> {
    let name = keys.string(item)?;
    let valid = !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if valid {
        return Some(name);
    }
    let hint = match name.strip_prefix('$') {
        Some(bare) => format!("; write the name without \"$\": key_env = \"{bare}\""),
        None => String::new(),
    };
    keys.report(
        item,
        format!(
            "key_env \"{name}\" is not an environment variable name (letters, digits and _){hint}"
        ),
    );
    None
}
