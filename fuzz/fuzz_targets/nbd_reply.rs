//! What an NBD server sends to the `nbd` leaf: its side of the handshake,
//! then replies to requests in flight.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = layers::fuzzing::nbd_client(data);
});
