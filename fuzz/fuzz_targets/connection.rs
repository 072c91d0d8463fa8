//! A whole connection: a valid upgrade, then arbitrary client bytes (raw, or masked frames built
//! from the input) through the transport's connection loop. It must end, without a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    palisade_transport::fuzzing::connection(data);
});
