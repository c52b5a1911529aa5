//! x509 certificates for the TLS tests, made with the openssl command
//! (tests/nbd/setup.sh installs it): a CA, a server certificate for
//! `localhost` and 127.0.0.1 signed by it, a client certificate signed by
//! it, and a second CA that signed nothing of these.
//!
//! The server files are laid out as nbdkit's `--tls-certificates` and
//! qemu's `tls-creds-x509` `dir=` expect them: ca-cert.pem,
//! server-cert.pem, server-key.pem.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Certs {
    dir: tempfile::TempDir,
}

const CA_CONFIG: &str = "[req]
distinguished_name = dn
[dn]
[v3_ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
";

fn leaf_extensions(usage: &str, names: &str) -> String {
    format!(
        "basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = {usage}
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
{names}"
    )
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("openssl does not run ({e}): run tests/nbd/setup.sh"));
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Certs {
    pub fn new() -> Certs {
        let dir = tempfile::tempdir().unwrap();
        let certs = Certs { dir };
        let server = certs.server_dir();
        std::fs::create_dir(&server).unwrap();
        let d = certs.dir.path();
        std::fs::write(d.join("ca.cnf"), CA_CONFIG).unwrap();
        for ca in ["ca", "other-ca"] {
            openssl(
                d,
                &[
                    "req",
                    "-x509",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-days",
                    "3650",
                    "-config",
                    "ca.cnf",
                    "-extensions",
                    "v3_ca",
                    "-subj",
                    &format!("/CN=ublk-stack test {ca}"),
                    "-keyout",
                    &format!("{ca}-key.pem"),
                    "-out",
                    &format!("{ca}-cert.pem"),
                ],
            );
        }
        certs.sign(
            "server",
            "/CN=localhost",
            "serverAuth",
            "subjectAltName = DNS:localhost,IP:127.0.0.1",
        );
        certs.sign("client", "/CN=ublk-stack test client", "clientAuth", "");
        for (from, to) in [
            ("ca-cert.pem", "ca-cert.pem"),
            ("server-cert.pem", "server-cert.pem"),
            ("server-key.pem", "server-key.pem"),
        ] {
            std::fs::copy(d.join(from), server.join(to)).unwrap();
        }
        certs
    }

    fn sign(&self, name: &str, subject: &str, usage: &str, names: &str) {
        let d = self.dir.path();
        let ext = format!("{name}.ext");
        std::fs::write(d.join(&ext), leaf_extensions(usage, names)).unwrap();
        openssl(
            d,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                subject,
                "-keyout",
                &format!("{name}-key.pem"),
                "-out",
                &format!("{name}.csr"),
            ],
        );
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-days",
                "3650",
                "-CA",
                "ca-cert.pem",
                "-CAkey",
                "ca-key.pem",
                "-set_serial",
                &format!("{}", 1000 + name.len()),
                "-extfile",
                &ext,
                "-out",
                &format!("{name}-cert.pem"),
            ],
        );
    }

    /// The folder a server is given (ca-cert.pem, server-cert.pem,
    /// server-key.pem).
    pub fn server_dir(&self) -> PathBuf {
        self.dir.path().join("server")
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn ca(&self) -> PathBuf {
        self.path("ca-cert.pem")
    }

    /// A CA that signed none of these certificates.
    pub fn other_ca(&self) -> PathBuf {
        self.path("other-ca-cert.pem")
    }

    /// The client certificate and its key.
    pub fn client(&self) -> (PathBuf, PathBuf) {
        (self.path("client-cert.pem"), self.path("client-key.pem"))
    }
}
