//! `tungstenite-echo`: the benchmark baseline.
//!
//! A plain tokio-tungstenite echo server, written like the library's own
//! `examples/echo-server.rs` (multi-thread runtime, one task per
//! connection, default `accept_async` configuration, text and binary
//! messages forwarded back unchanged). It must stay as close as possible to
//! that example: do not optimise it, or the comparison with Palisade means
//! nothing. The only departures: the listen address comes from `--listen`,
//! the address actually bound is printed on stdout (one line, flushed) for
//! the orchestrator, and failures end the connection's task quietly instead
//! of panicking (a panic per closed connection would slow the baseline).
//!
//! ```text
//! tungstenite-echo [--listen 127.0.0.1:0]
//! ```
#![allow(clippy::print_stdout)]

use std::io::Write;
use std::net::SocketAddr;

use clap::Parser;
use futures_util::{StreamExt, TryStreamExt, future};
use tokio::net::{TcpListener, TcpStream};

/// Plain tokio-tungstenite echo server (benchmark baseline).
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// Address to listen on (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
}

#[tokio::main]
async fn main() -> Result<(), std::io::Error> {
    let args = Args::parse();

    // Create the event loop and TCP listener we'll accept connections on.
    let listener = TcpListener::bind(args.listen).await?;
    println!("tungstenite-echo listening on {}", listener.local_addr()?);
    std::io::stdout().flush()?;

    while let Ok((stream, _)) = listener.accept().await {
        tokio::spawn(accept_connection(stream));
    }

    Ok(())
}

async fn accept_connection(stream: TcpStream) {
    let Ok(ws_stream) = tokio_tungstenite::accept_async(stream).await else {
        return;
    };

    let (write, read) = ws_stream.split();
    // We should not forward messages other than text or binary.
    let _ =
        read.try_filter(|msg| future::ready(msg.is_text() || msg.is_binary())).forward(write).await;
}
