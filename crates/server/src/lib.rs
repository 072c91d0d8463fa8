//! Palisade's server: the thin composition of the leaf crates into the guide's two WebSocket
//! endpoints (echo and secure), the session registry and the admin listener; binary `palisade`.
//!
//! - [`config::Config`]: the TOML configuration (docs/configuration.md), secure by default.
//! - [`server::Server`]: binds and runs everything; [`server::Server::shutdown`] closes with 1001.
//! - [`app::Handler`]: your logic for data messages; [`app::Echo`] is the default.
//! - [`sessions::SessionRegistry`]: authenticated sessions; push to users, revoke sessions.
//! - [`tls::CertStore`]: the TLS certificate, reloaded with [`server::Server::reload_tls`].
//! - [`audit`]: the tamper-evident audit trail (`[audit]`) and `palisade audit verify | tail`.
//!
//! Logic that belongs to a leaf crate (token checks, firewall decisions, counting, framing)
//! lives there; this crate wires them together and decides what to log.
//!
//! ```no_run
//! use palisade_server::{app::Echo, config::Config, server::Server};
//!
//! # async fn run() -> anyhow::Result<()> {
//! let mut config = Config::default();
//! config.auth.secret = Some(palisade_server::config::SecretString("x".repeat(32)));
//! let server = Server::start(&config, Echo).await?;
//! println!("echo on {:?}", server.echo_addr);
//! server.shutdown().await;
//! # Ok(())
//! # }
//! ```

pub mod app;
pub mod audit;
pub mod config;
pub mod issuers;
pub mod posture;
pub mod reload;
pub mod server;
pub mod sessions;
pub mod tls;
pub mod upgrade;

mod admin;
mod channels;
mod close_cause;
mod cluster;
mod dashboard;
mod endpoints;
mod examples;
mod http_auth;

pub use endpoints::replies;
