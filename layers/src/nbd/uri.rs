//! NBD URIs (the NBD project's doc/uri.md): `nbd://host[:port]/export`,
//! `nbd+unix:///export?socket=PATH`, and `nbds://`, `nbds+unix://` for TLS.
//!
//! The export name is the path after the first `/`, percent-decoded; empty
//! means the server's default export. `tls-hostname=NAME` names the server
//! for certificate checks where the host does not (always for `nbds+unix`).
//! What this client cannot honour (vsock, TLS user names and PSK, turning
//! verification off, query parameters it does not know) is refused, not
//! ignored.

use std::fmt;
use std::path::PathBuf;

/// The port of `nbd://host/…` when none is given (IANA's for NBD).
pub const DEFAULT_PORT: u16 = 10809;
/// The protocol's limit on an export name.
const MAX_EXPORT_BYTES: usize = 4096;

/// Where the server listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Address {
    Tcp { host: String, port: u16 },
    Unix(PathBuf),
}

/// A parsed NBD URI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NbdUri {
    /// The URI as written, for messages and reload comparisons.
    pub text: String,
    /// `nbds`: the connection must be TLS.
    pub tls: bool,
    pub address: Address,
    pub export: String,
    /// `tls-hostname`: the name the server's certificate must carry, in
    /// place of the host.
    pub tls_hostname: Option<String>,
}

impl fmt::Display for NbdUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl NbdUri {
    pub fn parse(text: &str) -> Result<NbdUri, String> {
        let (scheme, rest) = text.split_once("://").ok_or_else(|| {
            format!("{text:?} is not an NBD URI: expected nbd://host[:port]/export or nbd+unix:///export?socket=PATH")
        })?;
        let (tls, unix) = match scheme.to_ascii_lowercase().as_str() {
            "nbd" => (false, false),
            "nbds" => (true, false),
            "nbd+unix" => (false, true),
            "nbds+unix" => (true, true),
            "nbd+vsock" | "nbds+vsock" => {
                return Err(format!(
                    "{scheme}:// (vsock) is not supported; use nbd:// or nbd+unix://"
                ))
            }
            _ => {
                return Err(format!(
                    "unknown URI scheme {scheme:?}: expected nbd, nbds, nbd+unix or nbds+unix"
                ))
            }
        };
        if rest.contains('#') {
            return Err("an NBD URI has no #fragment".into());
        }
        let (before_query, query) = match rest.split_once('?') {
            Some((before, query)) => (before, Some(query)),
            None => (rest, None),
        };
        let (authority, path) = match before_query.find('/') {
            Some(at) => before_query.split_at(at),
            None => (before_query, ""),
        };
        let export = decode(path.strip_prefix('/').unwrap_or(path))?;
        if export.len() > MAX_EXPORT_BYTES {
            return Err(format!(
                "the export name is {} bytes; NBD allows at most {MAX_EXPORT_BYTES}",
                export.len()
            ));
        }
        let mut socket = None;
        let mut tls_hostname = None;
        for pair in query.into_iter().flat_map(|q| q.split('&')) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match decode(key)?.as_str() {
                "socket" if unix => socket = Some(decode(value)?),
                "socket" => {
                    return Err(format!(
                        "socket= is for nbd+unix:// URIs, not {scheme}://"
                    ))
                }
                "tls-hostname" if tls => {
                    let name = decode(value)?;
                    if name.is_empty() {
                        return Err("tls-hostname= is empty".into());
                    }
                    tls_hostname = Some(name);
                }
                "tls-hostname" => {
                    return Err(format!(
                        "tls-hostname= is for TLS: write nbds:// or nbds+unix://, not {scheme}://"
                    ))
                }
                "tls-type" if tls && value == "x509" => {}
                other if other.starts_with("tls-") => {
                    return Err(format!(
                        "the URI parameter {other} is not supported: TLS uses x509 certificates, always verified; give them with tls_ca, tls_cert and tls_key"
                    ))
                }
                other => return Err(format!("unknown URI parameter {other:?}")),
            }
        }
        let address = if unix {
            if !authority.is_empty() {
                return Err(format!(
                    "{scheme}:// takes no host ({authority:?}): write {scheme}:///export?socket=PATH"
                ));
            }
            let socket = socket.filter(|s| !s.is_empty()).ok_or_else(|| {
                format!("{scheme}:// needs the socket's path: {scheme}:///export?socket=PATH")
            })?;
            let socket = PathBuf::from(socket);
            if !socket.is_absolute() {
                return Err(format!(
                    "the socket path {} is relative; give an absolute path",
                    socket.display()
                ));
            }
            if tls && tls_hostname.is_none() {
                return Err(format!(
                    "{scheme}:// needs the name in the server's certificate: add &tls-hostname=NAME"
                ));
            }
            Address::Unix(socket)
        } else {
            tcp_address(authority)?
        };
        Ok(NbdUri {
            text: text.to_string(),
            tls,
            address,
            export,
            tls_hostname,
        })
    }

    /// The name the server's certificate must be for: `tls-hostname`, or
    /// the host (a name or an IP address).
    pub fn server_name(&self) -> Option<&str> {
        match (&self.tls_hostname, &self.address) {
            (Some(name), _) => Some(name),
            (None, Address::Tcp { host, .. }) => Some(host),
            (None, Address::Unix(_)) => None,
        }
    }
}

/// `host[:port]` or `[v6]:port`.
fn tcp_address(authority: &str) -> Result<Address, String> {
    if authority.contains('@') {
        return Err("user names in NBD URIs (TLS PSK) are not supported".into());
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("unclosed [ in host {authority:?}"))?;
        let port =
            match after {
                "" => None,
                _ => Some(after.strip_prefix(':').ok_or_else(|| {
                    format!("unexpected {after:?} after the IPv6 address [{host}]")
                })?),
            };
        (host, port)
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err("the URI has no host: write nbd://host[:port]/export".into());
    }
    let port = match port {
        None => DEFAULT_PORT,
        Some(text) => match text.parse::<u16>() {
            Ok(port) if port > 0 => port,
            _ => return Err(format!("port {text:?} is not a number from 1 to 65535")),
        },
    };
    Ok(Address::Tcp {
        host: host.to_string(),
        port,
    })
}

/// Percent-decoding; the result must be UTF-8.
fn decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad percent escape in {text:?}"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("{text:?} decodes to bytes that are not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(host: &str, port: u16) -> Address {
        Address::Tcp {
            host: host.into(),
            port,
        }
    }

    #[test]
    fn tcp_uris() {
        let uri = NbdUri::parse("nbd://example.com/disk%201").unwrap();
        assert_eq!(uri.address, tcp("example.com", DEFAULT_PORT));
        assert_eq!(uri.export, "disk 1");
        assert!(!uri.tls);
        let uri = NbdUri::parse("nbd://127.0.0.1:10900").unwrap();
        assert_eq!(uri.address, tcp("127.0.0.1", 10900));
        assert_eq!(uri.export, "");
        let uri = NbdUri::parse("nbds://[::1]:99/a/b").unwrap();
        assert_eq!(uri.address, tcp("::1", 99));
        assert_eq!(uri.export, "a/b");
        assert!(uri.tls);
    }

    #[test]
    fn unix_uris() {
        let uri = NbdUri::parse("nbd+unix:///exp?socket=/run/n%20bd.sock").unwrap();
        assert_eq!(uri.address, Address::Unix("/run/n bd.sock".into()));
        assert_eq!(uri.export, "exp");
        let uri = NbdUri::parse("nbd+unix://?socket=/s").unwrap();
        assert_eq!(uri.export, "");
    }

    #[test]
    fn tls_names() {
        let uri = NbdUri::parse("nbds://10.0.0.7/e").unwrap();
        assert_eq!(uri.server_name(), Some("10.0.0.7"));
        let uri =
            NbdUri::parse("nbds://10.0.0.7/e?tls-hostname=disk.example&tls-type=x509").unwrap();
        assert_eq!(uri.server_name(), Some("disk.example"));
        let uri = NbdUri::parse("nbds+unix:///e?socket=/s&tls-hostname=localhost").unwrap();
        assert_eq!(uri.address, Address::Unix("/s".into()));
        assert_eq!(uri.server_name(), Some("localhost"));
        assert_eq!(NbdUri::parse("nbd://h/").unwrap().server_name(), Some("h"));
    }

    #[test]
    fn mistakes_are_named() {
        let cases = [
            ("/dev/nbd0", "not an NBD URI"),
            ("http://x/", "unknown URI scheme"),
            ("nbd+vsock://2:10809/", "vsock"),
            ("nbd+unix:///e", "needs the socket's path"),
            ("nbd+unix://host/e?socket=/s", "takes no host"),
            ("nbd+unix:///e?socket=rel.sock", "relative"),
            ("nbd://h/e?socket=/s", "socket= is for nbd+unix"),
            ("nbd:///e", "no host"),
            ("nbd://h:0/", "port"),
            ("nbd://h:99999/", "port"),
            ("nbd://h:x/", "port"),
            ("nbd://u@h/", "user names"),
            ("nbd://h/e?tls-certificates=/c", "tls_ca"),
            ("nbds://h/e?tls-verify-peer=0", "always verified"),
            ("nbds://h/e?tls-type=psk", "x509"),
            ("nbd://h/e?tls-hostname=h", "tls-hostname= is for TLS"),
            ("nbds://h/e?tls-hostname=", "empty"),
            ("nbds+unix:///e?socket=/s", "tls-hostname=NAME"),
            ("nbd://h/e?x=1", "unknown URI parameter"),
            ("nbd://h/%zz", "percent"),
            ("nbd://h/e#f", "fragment"),
            ("nbd://[::1/", "unclosed"),
        ];
        for (text, expected) in cases {
            let error = NbdUri::parse(text).unwrap_err();
            assert!(error.contains(expected), "{text}: {error}");
        }
        let long = format!("nbd://h/{}", "e".repeat(4097));
        assert!(NbdUri::parse(&long).unwrap_err().contains("at most 4096"));
    }
}
