//! Test support: a stand-in for a daemon's control socket, answering one
//! request with a fixed reply.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::thread::JoinHandle;

/// Answer one request on `NAME.sock` in `run_dir` with `reply`; the handle
/// returns the request line.
pub fn daemon_answering(
    run_dir: &Path,
    name: &str,
    reply: impl Into<String>,
) -> JoinHandle<String> {
    let reply = reply.into();
    let listener = UnixListener::bind(run_dir.join(format!("{name}.sock"))).unwrap();
    std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut request = String::new();
        BufReader::new(&stream).read_line(&mut request).unwrap();
        stream.write_all(format!("{reply}\n").as_bytes()).unwrap();
        request
    })
}
