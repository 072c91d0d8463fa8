//! Benchmark tools for Palisade. Benchmarks only: nothing here is part of
//! the server, and `cargo xtask bench` drives both binaries.
//!
//! * `tungstenite-echo` is the baseline: a plain tokio-tungstenite echo
//!   server written like the library's own `examples/echo-server.rs`, to
//!   compare Palisade's echo endpoint against.
//! * `palisade-load` is a deliberately cheap load generator (one thread,
//!   hand-written WebSocket client over `tokio::net::TcpStream`, reused
//!   buffers, no tungstenite), so that the server rather than the client is
//!   what gets measured. It verifies every reply byte for byte and prints one
//!   JSON result line on stdout (diagnostics go to stderr); the echo and
//!   handshake modes first print `measure_start` and `measure_end` marker
//!   lines when the measured window opens and closes. Modes:
//!   `echo` (throughput and latency with K messages in flight per
//!   connection), `handshake` (connect/upgrade/close rate) and `idle` (many
//!   held connections, for memory; prints a `ready` line first) and
//!   `reconnect` (clients that reconnect on close, with the documented
//!   full-jitter backoff, plus new connections per second, while the server
//!   restarts: `cargo xtask bench --restart`) and `fanout` (N `palisade.v1` subscribers of
//!   one channel, spread over one or more nodes, and a publication every 1/R s through the
//!   admin API; delivered publications, gaps and delivery latency: F1 and F10 of
//!   `cargo xtask bench`).
//!
//! ```text
//! $ tungstenite-echo --listen 127.0.0.1:9001
//! tungstenite-echo listening on 127.0.0.1:9001
//! $ palisade-load echo --url ws://127.0.0.1:9001/ --connections 64 --inflight 16 \
//!       --size 32 --duration 10 --warmup 1
//! {"event":"measure_start"}
//! {"event":"measure_end"}
//! {"event":"result","mode":"echo","connections":64,"inflight":16,"size":32,"binary":false,"secs":10.0,"messages":...}
//! $ palisade-load handshake --url ws://127.0.0.1:9001/ --duration 5 --warmup 1 --concurrency 32
//! $ palisade-load idle --url ws://127.0.0.1:9001/ --connections 10000 --hold 10 \
//!       --trickle-ms 1000 --sources 127.0.0.1,127.0.0.2
//! {"event":"ready","connections":10000,"errors":0}
//! {"event":"result","mode":"idle","connections":10000,...}
//! $ palisade-load fanout --url ws://127.0.0.1:8888/ --token JWT --admin 127.0.0.1:9100 \
//!       --admin-token TOKEN --subscribers 1000 --rate 1000 --duration 10
//! {"event":"ready","subscribers":1000,"errors":0,"secs":0.4}
//! {"event":"measure_start"}
//! {"event":"measure_end"}
//! {"event":"result","mode":"fanout","subscribers":1000,...,"delivered":10000000,"missing":0,...}
//! ```
//!
//! Against Palisade's echo endpoint pass `--prefix "Server received: "`;
//! against its secure endpoint pass `--token JWT`.
#![allow(
    missing_docs,
    reason = "an internal benchmark tool (publish = false): its wire structs and CLI fields are documented by docs/benchmarks.md and `palisade-load --help`"
)]

pub mod cli;
pub mod conn;
pub mod fanout;
pub mod frame;
pub mod handshake;
pub mod reconnect;
pub mod run;
pub mod stats;
