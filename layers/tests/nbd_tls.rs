//! The `nbd` leaf over TLS (`nbds://`, `nbds+unix://`) against nbdkit and
//! qemu-nbd with x509 certificates the test makes: the model check and a
//! reopen through TLS; a server certificate that does not verify (another
//! CA, another name), a server that wants a client certificate, a server
//! without TLS, and a plain uri to a TLS-only server are each refused at
//! `up` with a message that says which; a server that comes back is dialled
//! again through TLS. The servers and openssl come from tests/nbd/setup.sh.

mod nbd_servers;

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::time::Duration;

use layers::exec::{Executor, IoCtx};
use layers::nbd::wire::*;
use layers::plan::NbdParams;
use layers::report::LayerReport;
use layers::testing::{check_stack, rng::seeds, verify_image, ModelConfig, PlanBuilder};
use layers::{compile, Error, Plan, Stack};
use nbd_servers::certs::Certs;
use nbd_servers::{params, tls_params, Server};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

const MIB: u64 = 1 << 20;
const TLS_ONLY: &[&str] = &["--tls=require"];

fn plan(params: NbdParams) -> Plan {
    let dir = tempfile::tempdir().unwrap();
    let mut b = PlanBuilder::new(dir.path(), 4096);
    let top = b.layer("n", params);
    b.build(top)
}

/// The model check on `plan`, then a new stack that reads back what it
/// wrote.
fn run(name: &str, plan: &Plan, base_seed: u64) {
    let cfg = ModelConfig {
        ops: 400,
        ..ModelConfig::default()
    };
    for seed in seeds(base_seed, 2) {
        let stack = compile(plan).unwrap_or_else(|e| panic!("{name}: {e}"));
        let image = check_stack(&stack, seed, &cfg).unwrap_or_else(|e| panic!("{name}: {e}"));
        drop(stack);
        let stack = compile(plan).unwrap_or_else(|e| panic!("{name}: reopen: {e}"));
        verify_image(&stack, &image)
            .unwrap_or_else(|e| panic!("{name}: seed {seed}: after reopen: {e}"));
    }
}

fn refused(plan: &Plan) -> String {
    match compile(plan) {
        Ok(_) => panic!("the leaf opened"),
        Err(e) => e.to_string(),
    }
}

fn nbdkit_tls(certs: &Certs, extra: &[&str]) -> Server {
    let dir = format!("--tls-certificates={}", certs.server_dir().display());
    let mut options = vec![TLS_ONLY[0], dir.as_str()];
    options.extend_from_slice(extra);
    Server::nbdkit_memory_tcp(8 * MIB, &options)
}

fn report(stack: &Stack) -> layers::report::NbdReport {
    let LayerReport::Nbd(report) = stack.layer("n").unwrap().report() else {
        panic!("an nbd leaf reports as nbd")
    };
    report
}

#[test]
#[ignore = "needs nbdkit and openssl (tests/nbd/setup.sh)"]
fn nbdkit_over_tls_matches_the_model_by_address_and_by_name() {
    let certs = Certs::new();
    let server = nbdkit_tls(&certs, &[]);
    // The certificate names 127.0.0.1 (an IP SAN) and localhost.
    for (host, seed) in [("127.0.0.1", 400), ("localhost", 402)] {
        let uri = server.tls_uri(host);
        let plan = plan(tls_params(&uri, Some(8 * MIB), &certs.ca(), None));
        run(&uri, &plan, seed);
    }
    let mut two = tls_params(&server.tls_uri("127.0.0.1"), None, &certs.ca(), None);
    two.connections = 2;
    let stack = compile(&plan(two)).unwrap();
    let report = report(&stack);
    assert!(report.connected);
    assert!(report.structured_replies);
    assert_eq!(report.connections, 2, "nbdkit memory offers multi-conn");
}

#[test]
#[ignore = "needs qemu-nbd and openssl (tests/nbd/setup.sh)"]
fn qemu_nbd_wants_a_client_certificate_and_serves_the_one_it_trusts() {
    let certs = Certs::new();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::qemu_nbd_tls(
        &dir.path().join("export.img"),
        8 * MIB,
        &certs.server_dir(),
        true,
    );
    let uri = server.tls_unix_uri("localhost");
    let error = refused(&plan(tls_params(&uri, Some(8 * MIB), &certs.ca(), None)));
    assert!(error.contains("tls_cert and tls_key"), "{error}");
    let plan = plan(tls_params(
        &uri,
        Some(8 * MIB),
        &certs.ca(),
        Some(certs.client()),
    ));
    run("qemu-nbd with a client certificate", &plan, 410);
}

#[test]
#[ignore = "needs nbdkit and openssl (tests/nbd/setup.sh)"]
fn nbdkit_verifying_peers_refuses_a_client_without_a_certificate() {
    let certs = Certs::new();
    let server = nbdkit_tls(&certs, &["--tls-verify-peer"]);
    let uri = server.tls_uri("localhost");
    let error = refused(&plan(tls_params(&uri, None, &certs.ca(), None)));
    assert!(error.contains("tls_cert and tls_key"), "{error}");
    // A certificate the server's CA did not sign is no better.
    let error = refused(&plan(tls_params(
        &uri,
        None,
        &certs.ca(),
        Some((
            certs.path("other-ca-cert.pem"),
            certs.path("other-ca-key.pem"),
        )),
    )));
    assert!(
        error.contains("may not accept the client certificate"),
        "{error}"
    );
    let plan = plan(tls_params(
        &uri,
        Some(8 * MIB),
        &certs.ca(),
        Some(certs.client()),
    ));
    run("nbdkit --tls-verify-peer", &plan, 420);
}

#[test]
#[ignore = "needs nbdkit and openssl (tests/nbd/setup.sh)"]
fn a_server_certificate_that_does_not_verify_is_refused() {
    let certs = Certs::new();
    let server = nbdkit_tls(&certs, &[]);
    let by_other_ca = tls_params(
        &server.tls_uri("127.0.0.1"),
        Some(8 * MIB),
        &certs.other_ca(),
        None,
    );
    let error = refused(&plan(by_other_ca));
    assert!(
        error.contains("the server's certificate is not signed by the CA in tls_ca"),
        "{error}"
    );
    let uri = format!("{}?tls-hostname=disk.example", server.tls_uri("127.0.0.1"));
    let error = refused(&plan(tls_params(&uri, Some(8 * MIB), &certs.ca(), None)));
    assert!(
        error.contains("the server's certificate is not for disk.example"),
        "{error}"
    );
}

#[test]
#[ignore = "needs nbdkit and openssl (tests/nbd/setup.sh)"]
fn tls_and_plain_do_not_mix() {
    let certs = Certs::new();
    let plain = Server::nbdkit_memory_tcp(8 * MIB, &[]);
    let error = refused(&plan(tls_params(
        &plain.tls_uri("127.0.0.1"),
        None,
        &certs.ca(),
        None,
    )));
    assert!(error.contains("the server does not offer TLS"), "{error}");
    let secure = nbdkit_tls(&certs, &[]);
    let port = secure.port();
    let error = refused(&plan(params(&format!("nbd://127.0.0.1:{port}/"), None)));
    assert!(error.contains("the server requires TLS"), "{error}");
}

/// nbdkit is killed and started again on the same port: the leaf dials it
/// again, through a new TLS session, and goes on.
#[test]
#[ignore = "needs nbdkit and openssl (tests/nbd/setup.sh)"]
fn a_reconnect_starts_tls_again() {
    let certs = Certs::new();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("export.img");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(8 * MIB)
        .unwrap();
    let tls_dir = format!("--tls-certificates={}", certs.server_dir().display());
    let options = [TLS_ONLY[0], tls_dir.as_str()];
    let server = Server::nbdkit_file_on(&path, nbd_servers::free_port(), &options);
    let port = server.port();
    let mut p = tls_params(
        &server.tls_uri("localhost"),
        Some(8 * MIB),
        &certs.ca(),
        None,
    );
    p.timeout_us = Duration::from_secs(20).as_micros() as u64;
    let stack = compile(&plan(p)).unwrap();
    let ctx = IoCtx::new(0, 64).unwrap();
    let exec = Executor::new().unwrap();
    let top = stack.top();
    let data: Vec<u8> = (0..64 * 1024u32).map(|i| (i % 251) as u8).collect();
    exec.block_on(&ctx, async {
        top.write_bytes(&ctx, 0, &data).await.unwrap();
        top.flush(&ctx).await.unwrap();
    });
    drop(server);
    let _server = Server::nbdkit_file_on(&path, port, &options);
    let mut back = vec![0u8; data.len()];
    exec.block_on(&ctx, top.read_bytes(&ctx, 0, &mut back))
        .unwrap();
    assert_eq!(back, data);
    let report = report(&stack);
    assert!(report.connected, "{:?}", report.failure);
}

/// A hand-written server on a unix socket that answers NBD_OPT_STARTTLS with
/// an acknowledgement, then runs `after` on the socket.
fn starttls_then(after: impl FnOnce(UnixStream) + Send + 'static) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("hostile.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut greeting = INIT_MAGIC.to_be_bytes().to_vec();
        greeting.extend_from_slice(&OPTS_MAGIC.to_be_bytes());
        greeting.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
        s.write_all(&greeting).unwrap();
        let mut flags = [0u8; 4];
        s.read_exact(&mut flags).unwrap();
        let (option, _) = read_option(&mut s);
        assert_eq!(option, OPT_STARTTLS, "TLS is asked for first");
        s.write_all(&option_reply(OPT_STARTTLS, REP_ACK, &[]))
            .unwrap();
        after(s);
    });
    let uri = format!(
        "nbds+unix:///?socket={}&tls-hostname=localhost",
        socket.display()
    );
    (dir, uri)
}

fn read_option(s: &mut impl Read) -> (u32, Vec<u8>) {
    let mut header = [0u8; OPTION_HEADER_BYTES];
    s.read_exact(&mut header).unwrap();
    assert_eq!(u64::from_be_bytes(take(&header, 0)), OPTS_MAGIC);
    let option = u32::from_be_bytes(take(&header, 8));
    let mut data = vec![0u8; u32::from_be_bytes(take(&header, 12)) as usize];
    s.read_exact(&mut data).unwrap();
    (option, data)
}

fn option_reply(option: u32, kind: u32, data: &[u8]) -> Vec<u8> {
    let mut out = REP_MAGIC.to_be_bytes().to_vec();
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
    out
}

/// Bytes that are no TLS record.
fn garbage() -> Vec<u8> {
    (0..4096u32).map(|i| (i * 7 + 3) as u8).collect()
}

#[test]
#[ignore = "needs openssl (tests/nbd/setup.sh)"]
fn garbage_after_starttls_fails_the_handshake_cleanly() {
    let certs = Certs::new();
    let (_dir, uri) = starttls_then(|mut s| {
        drop(s.write_all(&garbage()));
        // Read whatever the client sends until it gives up.
        drop(std::io::copy(&mut s, &mut std::io::sink()));
    });
    let error = refused(&plan(tls_params(&uri, Some(MIB), &certs.ca(), None)));
    assert!(error.contains("TLS handshake"), "{error}");

    let (_dir, uri) = starttls_then(drop);
    let error = refused(&plan(tls_params(&uri, Some(MIB), &certs.ca(), None)));
    assert!(error.contains(&uri), "{error}");
}

/// A server that does the TLS handshake and the NBD options properly, then
/// answers the first request with bytes that are not a TLS record: that
/// request and every later one fail with EIO, and the leaf reports why.
#[test]
#[ignore = "needs openssl (tests/nbd/setup.sh)"]
fn garbage_in_place_of_a_record_fails_the_leaf() {
    let certs = Certs::new();
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(certs.path("server-cert.pem"))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
    let key = PrivateKeyDer::from_pem_file(certs.path("server-key.pem")).unwrap();
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(layers::nbd::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap(),
    );
    let (_dir, uri) = starttls_then(move |socket| {
        let session = rustls::ServerConnection::new(config).unwrap();
        let mut tls = rustls::StreamOwned::new(session, socket);
        loop {
            let (option, _) = read_option(&mut tls);
            if option != OPT_GO {
                tls.write_all(&option_reply(option, REP_ERR_UNSUP, &[]))
                    .unwrap();
                continue;
            }
            let mut info = INFO_EXPORT.to_be_bytes().to_vec();
            info.extend_from_slice(&MIB.to_be_bytes());
            info.extend_from_slice(&(TX_HAS_FLAGS | TX_SEND_FLUSH).to_be_bytes());
            tls.write_all(&option_reply(OPT_GO, REP_INFO, &info))
                .unwrap();
            tls.write_all(&option_reply(OPT_GO, REP_ACK, &[])).unwrap();
            break;
        }
        let mut request = [0u8; REQUEST_BYTES];
        tls.read_exact(&mut request).unwrap();
        drop(tls.sock.write_all(&garbage()));
        drop(std::io::copy(&mut tls.sock, &mut std::io::sink()));
    });
    let stack = compile(&plan(tls_params(&uri, Some(MIB), &certs.ca(), None))).unwrap();
    let ctx = IoCtx::new(0, 64).unwrap();
    let exec = Executor::new().unwrap();
    let top = stack.top();
    let mut buf = vec![0u8; 4096];
    assert_eq!(
        exec.block_on(&ctx, top.read_bytes(&ctx, 0, &mut buf)),
        Err(Error::Io(libc::EIO))
    );
    assert_eq!(
        exec.block_on(&ctx, top.read_bytes(&ctx, 0, &mut buf)),
        Err(Error::Io(libc::EIO)),
        "the leaf stays failed"
    );
    let report = report(&stack);
    assert!(!report.connected);
    let failure = report.failure.unwrap();
    assert!(failure.contains("TLS receiving"), "{failure}");
}

/// The files are read and checked before any connection, as `validate`
/// and `up` read them: each problem names its key.
#[test]
#[ignore = "needs openssl (tests/nbd/setup.sh)"]
fn the_certificate_files_are_checked_before_connecting() {
    let certs = Certs::new();
    let uri = "nbds://127.0.0.1:9/";
    let good = tls_params(uri, None, &certs.ca(), Some(certs.client()));
    assert!(good.tls_client().unwrap().is_some());
    let cases = [
        (
            tls_params(uri, None, &certs.path("client-key.pem"), None),
            "tls_ca",
            "holds no certificate",
        ),
        (
            tls_params(uri, None, &certs.path("nothing.pem"), None),
            "tls_ca",
            "does not exist",
        ),
        (
            tls_params(
                uri,
                None,
                &certs.ca(),
                Some((certs.path("client-cert.pem"), certs.path("ca-cert.pem"))),
            ),
            "tls_key",
            "holds no private key",
        ),
        (
            tls_params(
                uri,
                None,
                &certs.ca(),
                Some((certs.path("client-cert.pem"), certs.path("server-key.pem"))),
            ),
            "tls_key",
            "does not go with tls_cert",
        ),
    ];
    for (params, key, says) in cases {
        let error = params.tls_client().unwrap_err();
        assert_eq!(error.key, key, "{error}");
        assert!(error.message.contains(says), "{error}");
    }
}
