//! Integration tests of `palisade`: the real binary on 127.0.0.1, a real WebSocket client, raw
//! TCP for malformed frames and raw HTTP/1.1 for the admin API. One test binary, a module per
//! area; every module starts its servers through `support::Server`.

mod admin;
mod audit;
mod clients;
mod cluster;
mod dashboard;
mod deploy;
mod echo;
mod firewall;
mod hostile;
mod jwks;
mod lifecycle;
mod monitoring;
mod per_ip;
mod raw;
mod secure;
pub(crate) mod subprotocol;
mod support;
mod tls;
