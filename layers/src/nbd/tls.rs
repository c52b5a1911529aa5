//! TLS for `nbds://`: x509 certificates checked by rustls (ring as its
//! crypto provider), the server verified against `tls_ca` and the name the
//! URI gives, and an optional client certificate (`tls_cert`, `tls_key`).
//!
//! rustls is used without I/O of its own: during the handshake it runs over
//! the blocking socket ([`super::handshake`]); afterwards the connection's
//! ciphertext goes through the queues' rings (`conn/tls.rs`).

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{AlertDescription, CertificateError, ClientConfig, ClientConnection, RootCertStore};

use super::uri::NbdUri;

/// The certificate files of an `nbd` leaf.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca: PathBuf,
    /// The client certificate and its key, when the server asks for one.
    pub client: Option<(PathBuf, PathBuf)>,
}

/// A problem with one of the TLS keys, for `validate` to point at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFileError {
    pub key: &'static str,
    pub message: String,
}

impl fmt::Display for TlsFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// What each connection needs to start TLS: the checked configuration and
/// the name the server's certificate must carry.
#[derive(Clone)]
pub struct TlsClient {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
    ca: PathBuf,
    client_cert: bool,
}

impl fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsClient")
            .field("name", &self.name)
            .field("ca", &self.ca)
            .field("client_cert", &self.client_cert)
            .finish()
    }
}

impl TlsClient {
    /// Reads and checks the files, as `validate` and `up` both do.
    pub fn new(uri: &NbdUri, files: &TlsFiles) -> Result<TlsClient, TlsFileError> {
        let name = uri.server_name().ok_or_else(|| TlsFileError {
            key: "uri",
            message: format!("{uri}: no name to check the server's certificate against"),
        })?;
        let name = ServerName::try_from(name.to_string()).map_err(|_| TlsFileError {
            key: "uri",
            message: format!("{name:?} is neither a host name nor an IP address"),
        })?;
        let mut roots = RootCertStore::empty();
        for cert in certificates("tls_ca", &files.ca)? {
            roots.add(cert).map_err(|e| TlsFileError {
                key: "tls_ca",
                message: format!("tls_ca {}: {e}", files.ca.display()),
            })?;
        }
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsFileError {
                key: "tls_ca",
                message: format!("TLS: {e}"),
            })?
            .with_root_certificates(roots);
        let config = match &files.client {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let chain = certificates("tls_cert", cert)?;
                let key_der = private_key(key)?;
                builder
                    .with_client_auth_cert(chain, key_der)
                    .map_err(|e| TlsFileError {
                        key: "tls_key",
                        message: format!(
                            "tls_key {} does not go with tls_cert {}: {e}",
                            key.display(),
                            cert.display()
                        ),
                    })?
            }
        };
        Ok(TlsClient {
            config: Arc::new(config),
            name,
            ca: files.ca.clone(),
            client_cert: files.client.is_some(),
        })
    }

    /// A client that trusts no CA, for tests of what happens before any
    /// certificate is looked at.
    #[cfg(test)]
    pub(super) fn trusting_nothing() -> TlsClient {
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("ring offers the default versions")
            .with_root_certificates(RootCertStore::empty())
            .with_no_client_auth();
        TlsClient {
            config: Arc::new(config),
            name: ServerName::try_from("localhost").expect("a valid name"),
            ca: PathBuf::from("/nowhere/ca.pem"),
            client_cert: false,
        }
    }

    /// A new client session, to run right after the server accepted
    /// NBD_OPT_STARTTLS.
    pub(super) fn session(&self) -> io::Result<ClientConnection> {
        let mut session = ClientConnection::new(self.config.clone(), self.name.clone())
            .map_err(|e| io::Error::other(format!("TLS: {e}")))?;
        // Plaintext is handed over in bounded pieces and its records are
        // written out at once (conn/tls.rs): no limit is needed on top.
        session.set_buffer_limit(None);
        Ok(session)
    }

    /// `error` from the TLS part of the handshake, worded for the user.
    pub(super) fn explain(&self, error: io::Error) -> io::Error {
        let Some(tls) = error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        else {
            // A server that does not accept the client (no certificate, or
            // one it does not trust) often just closes the connection.
            let closed = matches!(
                error.kind(),
                io::ErrorKind::UnexpectedEof
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::BrokenPipe
            ) || error.to_string().contains("closed the connection");
            if !closed {
                return error;
            }
            let hint = if self.client_cert {
                "the server may not accept the client certificate in tls_cert"
            } else {
                "if the server requires a client certificate, set tls_cert and tls_key"
            };
            return io::Error::new(error.kind(), format!("{error} ({hint})"));
        };
        let message = match tls {
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => format!(
                "the server's certificate is not signed by the CA in tls_ca ({})",
                self.ca.display()
            ),
            rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            ) => format!(
                "the server's certificate is not for {} ({tls})",
                show_name(&self.name)
            ),
            rustls::Error::InvalidCertificate(
                CertificateError::Expired
                | CertificateError::ExpiredContext { .. }
                | CertificateError::NotValidYet
                | CertificateError::NotValidYetContext { .. },
            ) => format!("the server's certificate is out of its validity period ({tls})"),
            rustls::Error::AlertReceived(
                AlertDescription::CertificateRequired | AlertDescription::HandshakeFailure,
            ) if !self.client_cert => format!(
                "the server refused the TLS handshake ({tls}): it may require a client certificate; set tls_cert and tls_key"
            ),
            rustls::Error::AlertReceived(_) => {
                format!("the server refused the TLS handshake ({tls})")
            }
            other => format!("TLS handshake: {other}"),
        };
        io::Error::new(io::ErrorKind::InvalidData, message)
    }
}

/// ring's algorithms. rustls deprecates this provider for lacking
/// post-quantum key exchange, which aws-lc-rs has at the price of a much
/// larger C build; the NBD servers met here (nbdkit, qemu-nbd through
/// GnuTLS) offer only the classical exchanges anyway.
#[allow(deprecated)]
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn show_name(name: &ServerName<'_>) -> String {
    match name {
        ServerName::DnsName(dns) => dns.as_ref().to_string(),
        ServerName::IpAddress(ip) => std::net::IpAddr::from(*ip).to_string(),
        other => format!("{other:?}"),
    }
}

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsFileError> {
    std::fs::read(path).map_err(|e| TlsFileError {
        key,
        message: if e.kind() == io::ErrorKind::NotFound {
            format!("{key} {} does not exist", path.display())
        } else {
            format!("{key} {}: {e}", path.display())
        },
    })
}

/// Every certificate in the PEM file at `path`; at least one.
fn certificates(
    key: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsFileError> {
    let bytes = read(key, path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsFileError {
            key,
            message: format!("{key} {}: not a PEM certificate file: {e}", path.display()),
        })?;
    if certs.is_empty() {
        return Err(TlsFileError {
            key,
            message: format!(
                "{key} {} holds no certificate (no PEM \"BEGIN CERTIFICATE\" block)",
                path.display()
            ),
        });
    }
    Ok(certs)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsFileError> {
    let bytes = read("tls_key", path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| TlsFileError {
        key: "tls_key",
        message: format!(
            "tls_key {} holds no private key in PEM (PKCS#8, PKCS#1 or SEC1): {e}",
            path.display()
        ),
    })
}
