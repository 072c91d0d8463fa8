//! Integration tests of `palisade`: the real binary on 127.0.0.1, a real WebSocket client, raw
//! TCP for malformed frames and raw HTTP/1.1 for the admin API.

mod admin;
mod clients;
mod deploy;
mod echo;
mod firewall;
mod jwks;
mod lifecycle;
mod monitoring;
mod per_ip;
mod raw;
mod secure;
mod support;
mod tls;
