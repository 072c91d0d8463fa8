//! The upgrade request: arbitrary bytes as the client's request, through the transport's real
//! upgrade code over an in-memory pipe. The answer must be one well-formed HTTP response head.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    palisade_transport::fuzzing::handshake(data);
});
