//! The NBD fixed-newstyle handshake against a client that sends these bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = ublk_stack::nbd::fuzzing::handshake(data, 64 << 20, 512);
});
