//! `fastwebsockets-echo`: a benchmark baseline.
//!
//! A plain fastwebsockets echo server, written like the library's own
//! `examples/echo_server.rs` (hyper 1 HTTP/1.1 connection with upgrades,
//! `fastwebsockets::upgrade::upgrade`, a `FragmentCollector` per
//! connection run `unconstrained` on a current-thread runtime, text and
//! binary frames written back unchanged). It must stay as close as possible
//! to that example: do not optimise it, or the comparison with Palisade
//! means nothing. The only departures: the listen address comes from
//! `--listen`, the address actually bound is printed on stdout (one line,
//! flushed) for the orchestrator, and the example's per-connection
//! `Client connected` line and error prints are left out (a print per
//! connection would slow the baseline in the handshake scenario; the
//! tungstenite baseline ends failed connections quietly too).
//!
//! ```text
//! fastwebsockets-echo [--listen 127.0.0.1:0]
//! ```
#![allow(clippy::print_stdout)]

use std::io::Write;
use std::net::SocketAddr;

use clap::Parser;
use fastwebsockets::{OpCode, WebSocketError, upgrade};
use http_body_util::Empty;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use tokio::net::TcpListener;

/// Plain fastwebsockets echo server (benchmark baseline).
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// Address to listen on (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
}

async fn handle_client(fut: upgrade::UpgradeFut) -> Result<(), WebSocketError> {
    let mut ws = fastwebsockets::FragmentCollector::new(fut.await?);

    loop {
        let frame = ws.read_frame().await?;
        match frame.opcode {
            OpCode::Close => break,
            OpCode::Text | OpCode::Binary => {
                ws.write_frame(frame).await?;
            }
            _ => {}
        }
    }

    Ok(())
}

async fn server_upgrade(
    mut req: Request<Incoming>,
) -> Result<Response<Empty<Bytes>>, WebSocketError> {
    let (response, fut) = upgrade::upgrade(&mut req)?;

    tokio::task::spawn(async move {
        let _ = tokio::task::unconstrained(handle_client(fut)).await;
    });

    Ok(response)
}

fn main() -> Result<(), WebSocketError> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_current_thread().enable_io().build()?;

    rt.block_on(async move {
        let listener = TcpListener::bind(args.listen).await?;
        println!("fastwebsockets-echo listening on {}", listener.local_addr()?);
        std::io::stdout().flush()?;
        loop {
            let (stream, _) = listener.accept().await?;
            tokio::spawn(async move {
                let io = hyper_util::rt::TokioIo::new(stream);
                let conn_fut = http1::Builder::new()
                    .serve_connection(io, service_fn(server_upgrade))
                    .with_upgrades();
                let _ = conn_fut.await;
            });
        }
    })
}
