//! `nbd`: an NBD server holds the data.

use std::path::PathBuf;
use std::time::Duration;

use super::{path_value, shown, Host, Item, Key, KeyReader, Kind, Opened, Opening, Sizing};
use crate::nbd::tls::{TlsClient, TlsFileError, TlsFiles};
use crate::nbd::uri::NbdUri;
use crate::nbd::NbdOptions;
use crate::units::duration::format_duration_us;
use crate::units::size::{format_exact, format_human};

/// Most connections to one server (each is a socket and a share of the
/// server's threads).
pub const MAX_CONNECTIONS: i64 = 16;
const DEFAULT_TIMEOUT_US: u64 = 30_000_000;

#[derive(Clone, Debug, PartialEq)]
pub struct NbdParams {
    pub uri: NbdUri,
    /// The size the export must have; `None`: the server's.
    pub size_bytes: Option<u64>,
    pub connections: u32,
    pub timeout_us: u64,
    pub tls_ca: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

impl NbdParams {
    fn timeout(&self) -> Duration {
        Duration::from_micros(self.timeout_us)
    }

    /// The certificates of an nbds:// uri, read and checked as `up` reads
    /// them; `None` for a plain uri.
    pub fn tls_client(&self) -> Result<Option<TlsClient>, TlsFileError> {
        if !self.uri.tls {
            return Ok(None);
        }
        let ca = self.tls_ca.clone().ok_or_else(|| TlsFileError {
            key: "uri",
            message: NEEDS_CA.into(),
        })?;
        let client = self.tls_cert.clone().zip(self.tls_key.clone());
        TlsClient::new(&self.uri, &TlsFiles { ca, client }).map(Some)
    }
}

const NEEDS_CA: &str =
    "an nbds:// uri needs tls_ca: the CA certificate that signed the server's certificate";

impl Kind for NbdParams {
    const NAME: &'static str = "nbd";
    const KEYS: &'static [Key] = &[
        Key::required(
            "uri",
            "the server and export: nbd://host[:port]/export or nbd+unix:///export?socket=PATH; nbds:// and nbds+unix:// for TLS",
        ),
        Key::optional(
            "size",
            "the server's",
            "the export's size; up refuses a server that reports another",
        ),
        Key::optional(
            "connections",
            "1",
            "connections to open when the server offers multi-conn",
        ),
        Key::optional(
            "timeout",
            "30s",
            "how long the server may stay unreachable before the leaf's requests fail",
        ),
        Key::optional(
            "tls_ca",
            "required with nbds://",
            "the CA certificate (PEM) the server's certificate must be signed by",
        ),
        Key::optional(
            "tls_cert",
            "none",
            "the client certificate (PEM) for a server that asks for one; needs tls_key",
        ),
        Key::optional(
            "tls_key",
            "none",
            "the client certificate's private key (PEM); needs tls_cert",
        ),
    ];
    const SYNONYMS: &'static [&'static str] = &["network", "remote", "nbdkit", "qemu-nbd"];

    fn read(keys: &mut dyn KeyReader) -> Option<NbdParams> {
        let (uri_item, uri) = match read_uri(keys) {
            Some((item, uri)) => (Some(item), uri),
            None => (None, None),
        };
        let size_bytes = keys.optional("size", None, |keys, item| keys.size(item).map(Some));
        let connections = keys.optional("connections", 1, |keys, item| {
            keys.integer(item, 1, MAX_CONNECTIONS).map(|n| n as u32)
        });
        let timeout_us = keys.optional("timeout", DEFAULT_TIMEOUT_US, |keys, item| {
            let micros = keys.duration_us(item)?;
            if micros == 0 {
                keys.report(
                    item,
                    "timeout must be above zero, like timeout = \"5s\"".into(),
                );
                return None;
            }
            Some(micros)
        });
        let tls = uri.as_ref().map(|uri| uri.tls);
        let tls_ca = tls_file(keys, "tls_ca", tls);
        let tls_cert = tls_file(keys, "tls_cert", tls);
        let tls_key = tls_file(keys, "tls_key", tls);
        let mut complete = Some(());
        if tls == Some(true) {
            if let (Some(item), Some(None)) = (uri_item, &tls_ca) {
                keys.report(item, NEEDS_CA.into());
                complete = None;
            }
            for (have, missing, what) in [
                (
                    "tls_cert",
                    "tls_key",
                    "the client certificate's private key",
                ),
                ("tls_key", "tls_cert", "the client certificate"),
            ] {
                if let (Some(item), None) = (keys.get(have), keys.get(missing)) {
                    keys.report(item, format!("{have} needs {missing}: {what}"));
                    complete = None;
                }
            }
        }
        complete?;
        Some(NbdParams {
            uri: uri?,
            size_bytes: size_bytes?,
            connections: connections?,
            timeout_us: timeout_us?,
            tls_ca: tls_ca?,
            tls_cert: tls_cert?,
            tls_key: tls_key?,
        })
    }

    fn values(&self, _: &dyn Fn(usize) -> String) -> Vec<(&'static str, Option<String>)> {
        let path = |p: &Option<PathBuf>| p.as_deref().map(path_value);
        vec![
            ("uri", Some(self.uri.text.clone())),
            ("size", self.size_bytes.map(format_exact)),
            ("connections", Some(self.connections.to_string())),
            ("timeout", Some(format_duration_us(self.timeout_us))),
            ("tls_ca", path(&self.tls_ca)),
            ("tls_cert", path(&self.tls_cert)),
            ("tls_key", path(&self.tls_key)),
        ]
    }

    fn summary(&self) -> String {
        format!("NBD server {}", self.uri)
    }

    /// With `size`, the server is asked at `up`; without it, now (bounded by
    /// `timeout`), as a file leaf's size is read from its file.
    fn size(&self, sizing: &mut Sizing<'_>) -> Option<u64> {
        let size = match self.size_bytes {
            Some(size) => return Some(size),
            None => match self.probe(sizing)? {
                Ok(size) => size,
                Err(error) => {
                    sizing.report(
                        Some("uri"),
                        format!(
                            "cannot learn the export's size: {error}; give size = … to check the config without the server"
                        ),
                    );
                    return None;
                }
            },
        };
        let block_size = sizing.block_size;
        if size == 0 || size % block_size != 0 {
            sizing.report(
                Some("uri"),
                format!(
                    "the export {} is {} ({size} bytes), not a non-zero multiple of the block size ({block_size} bytes)",
                    self.uri,
                    format_human(size)
                ),
            );
            return None;
        }
        Some(size)
    }

    /// The certificates are checked here when `size` is given; without it,
    /// [`Kind::size`] checked them to ask the server.
    fn check_host(&self, host: &mut Host<'_>) {
        if self.size_bytes.is_some() {
            if let Err(error) = self.tls_client() {
                host.report(Some(error.key), error.message);
            }
        }
    }

    /// The certificates are read before any layer is opened.
    fn prepare(&self) -> Result<Option<Box<dyn std::any::Any>>, String> {
        let tls = self.tls_client().map_err(|e| e.message)?;
        Ok(tls.map(|tls| Box::new(tls) as Box<dyn std::any::Any>))
    }

    fn open(&self, opening: &mut Opening<'_>) -> Result<Opened, String> {
        let tls = opening.prepared::<TlsClient>();
        if self.uri.tls && tls.is_none() {
            return Err("its TLS certificates were not loaded".into());
        }
        let options = NbdOptions {
            uri: self.uri.clone(),
            size_bytes: self.size_bytes,
            connections: self.connections,
            timeout: self.timeout(),
            tls,
        };
        Ok(Opened::of(crate::nbd::open(&options, opening.block_size)?))
    }
}

impl NbdParams {
    /// Asks the server for the export's size (over TLS for nbds://);
    /// `None` when the certificates are wrong (reported).
    fn probe(&self, sizing: &mut Sizing<'_>) -> Option<Result<u64, String>> {
        let tls = match self.tls_client() {
            Ok(tls) => tls,
            Err(error) => {
                sizing.report(Some(error.key), error.message);
                return None;
            }
        };
        Some(crate::nbd::probe_size(
            &self.uri,
            tls.as_ref(),
            self.timeout(),
        ))
    }
}

fn read_uri(keys: &mut dyn KeyReader) -> Option<(Item, Option<NbdUri>)> {
    let item = keys.require(
        "uri",
        "the server, like uri = \"nbd://host:10809/export\" or \"nbd+unix:///export?socket=/run/nbd.sock\"",
    )?;
    let Some(text) = keys.string(item) else {
        return Some((item, None));
    };
    match NbdUri::parse(&text) {
        Ok(uri) => Some((item, Some(uri))),
        Err(error) => {
            keys.report(item, format!("uri: {error}"));
            Some((item, None))
        }
    }
}

/// A TLS file key: only meaningful with an nbds:// `uri` (`tls`: whether it
/// is one, when the uri could be read).
fn tls_file(
    keys: &mut dyn KeyReader,
    key: &'static str,
    tls: Option<bool>,
) -> Option<Option<PathBuf>> {
    let Some(item) = keys.get(key) else {
        return Some(None);
    };
    let path = keys.path(item)?;
    if tls == Some(false) {
        report_plain(keys, item, key, &path);
        return None;
    }
    Some(Some(path))
}

fn report_plain(keys: &mut dyn KeyReader, item: Item, key: &str, path: &std::path::Path) {
    keys.report(
        item,
        format!(
            "{key} ({}) is for TLS, which needs an nbds:// uri",
            shown(path)
        ),
    );
}
