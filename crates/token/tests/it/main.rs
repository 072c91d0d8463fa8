//! Integration tests of palisade-token through its public API only.

mod pyjwt;
mod round_trip;
