//! `palisade-load`: cheap WebSocket load generator for benchmarks (see the
//! crate documentation). Prints one JSON line on stdout per event (echo and
//! handshake: `measure_start`, `measure_end`, `result`; idle and reconnect: `ready`,
//! `result`; fanout: `ready`, `measure_start`, `measure_end`, `result`); exit
//! status 0 even when the run counted errors, 2 on a usage error.
#![allow(clippy::print_stdout)]

use std::io::Write;
use std::net::ToSocketAddrs;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use palisade_bench::cli::{Cli, Command, Common};
use palisade_bench::conn::Open;
use palisade_bench::frame::Kind;
use palisade_bench::handshake::Target;
use palisade_bench::run;
use serde::Serialize;

fn main() -> ExitCode {
    // clap exits with status 2 on its own usage errors.
    let cli = Cli::parse();
    match execute(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("palisade-load: {e}");
            ExitCode::from(2)
        }
    }
}

fn emit(line: &impl Serialize) {
    let mut out = std::io::stdout().lock();
    let json = serde_json::to_string(line).expect("results serialise");
    // A closed stdout leaves nothing to report to.
    let _ = writeln!(out, "{json}").and_then(|()| out.flush());
}

fn open(common: &Common, read_spare: usize) -> Result<Open, String> {
    if common.sources.is_empty() {
        return Err("--sources: at least one address".into());
    }
    Ok(Open {
        target: Target::parse(&common.url)?,
        token: common.token.clone(),
        protocol: None,
        read_spare,
    })
}

fn positive(name: &str, n: usize) -> Result<(), String> {
    if n == 0 { Err(format!("{name} must be at least 1")) } else { Ok(()) }
}

fn execute(cli: Cli) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    let local = tokio::task::LocalSet::new();
    match cli.command {
        Command::Echo(a) => {
            positive("--connections", a.connections)?;
            positive("--inflight", a.inflight)?;
            positive("--connect-concurrency", a.connect_concurrency)?;
            let cfg = run::EchoConfig {
                open: open(&a.common, (16 * 1024).max(a.size.min(1 << 20)))?,
                prefix: a.common.prefix,
                sources: a.common.sources,
                connections: a.connections,
                inflight: a.inflight,
                size: a.size,
                kind: if a.binary { Kind::Binary } else { Kind::Text },
                duration: a.duration,
                warmup: a.warmup,
                connect_concurrency: a.connect_concurrency,
            };
            emit(&local.block_on(&rt, run::echo(cfg, |e| emit(&e))));
        }
        Command::Handshake(a) => {
            positive("--concurrency", a.concurrency)?;
            let cfg = run::HandshakeConfig {
                open: open(&a.common, 1024)?,
                prefix: a.common.prefix,
                sources: a.common.sources,
                duration: a.duration,
                warmup: a.warmup,
                concurrency: a.concurrency,
            };
            emit(&local.block_on(&rt, run::handshake(cfg, |e| emit(&e))));
        }
        Command::Idle(a) => {
            positive("--connect-concurrency", a.connect_concurrency)?;
            let cfg = run::IdleConfig {
                open: open(&a.common, 512)?,
                prefix: a.common.prefix,
                sources: a.common.sources,
                connections: a.connections,
                hold: a.hold,
                trickle_ms: a.trickle_ms,
                connect_concurrency: a.connect_concurrency,
            };
            emit(&local.block_on(&rt, run::idle(cfg, |ready| emit(&ready))));
        }
        Command::Reconnect(a) => {
            positive("--clients", a.clients)?;
            positive("--connect-concurrency", a.connect_concurrency)?;
            let cfg = palisade_bench::reconnect::ReconnectConfig {
                open: open(&a.common, 512)?,
                prefix: a.common.prefix,
                sources: a.common.sources,
                clients: a.clients,
                new_per_sec: a.new_per_sec,
                duration: a.duration,
                backoff_base: Duration::from_millis(a.backoff_base_ms),
                backoff_cap: Duration::from_millis(a.backoff_cap_ms),
                connect_concurrency: a.connect_concurrency,
            };
            let run = palisade_bench::reconnect::reconnect(cfg, |ready| emit(&ready));
            emit(&local.block_on(&rt, run));
        }
        Command::Fanout(a) => {
            positive("--subscribers", a.subscribers)?;
            positive("--connect-concurrency", a.connect_concurrency)?;
            positive("--rate", a.rate as usize)?;
            if a.sources.is_empty() {
                return Err("--sources: at least one address".into());
            }
            let opens = a
                .urls
                .iter()
                .map(|url| {
                    Ok(Open {
                        target: Target::parse(url)?,
                        token: None,
                        protocol: Some(palisade_bench::fanout::PROTOCOL.into()),
                        read_spare: 8 * 1024,
                    })
                })
                .collect::<Result<Vec<_>, String>>()?;
            let admin = a
                .admin
                .to_socket_addrs()
                .map_err(|e| format!("--admin {}: {e}", a.admin))?
                .next()
                .ok_or_else(|| format!("--admin {}: no address", a.admin))?;
            let cfg = palisade_bench::fanout::FanoutConfig {
                opens,
                urls: a.urls,
                token: a.token,
                admin,
                admin_token: a.admin_token,
                channel: a.channel,
                sources: a.sources,
                subscribers: a.subscribers,
                rate: a.rate,
                duration: a.duration,
                drain: a.drain,
                connect_concurrency: a.connect_concurrency,
            };
            let run = palisade_bench::fanout::fanout(cfg, |ready| emit(&ready), |e| emit(&e));
            emit(&local.block_on(&rt, run));
        }
    }
    Ok(())
}
