//! The optional TLS step between admission and the upgrade: a clear answer to plain text on a
//! TLS port, then the rustls handshake, with its failures classified for the endpoint.

use std::io;
use std::sync::Arc;

use http::StatusCode;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::handshake::{self, HandshakeError, Rejection};

/// The first byte of a TLS record carrying a handshake message (RFC 8446 section 5.1).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Runs the server side of a TLS handshake. The caller applies the handshake timeout.
pub(crate) async fn accept(
    mut stream: TcpStream,
    config: Arc<rustls::ServerConfig>,
    max_request_head_bytes: usize,
) -> Result<TlsStream<TcpStream>, HandshakeError> {
    let mut first = [0u8; 1];
    if stream.peek(&mut first).await? == 0 {
        return Err(HandshakeError::PeerVanished);
    }
    if first[0] != TLS_HANDSHAKE_RECORD {
        if first[0].is_ascii_uppercase() {
            // Looks like an HTTP method: a `ws://` or `http://` client on a TLS port. Tell it in
            // words it can read, as web servers do, rather than with a TLS alert it cannot.
            let _ = handshake::read_request(&mut stream, max_request_head_bytes).await;
            let rejection = Rejection::new(
                StatusCode::BAD_REQUEST,
                "this port speaks tls: connect with wss:// (or https://), not ws:// or http://",
            );
            let _ = handshake::write_rejection(&mut stream, &rejection).await;
        }
        return Err(HandshakeError::Tls(
            "the client sent plain text, not a tls handshake (ws:// or http:// on a tls port?)"
                .into(),
        ));
    }
    TlsAcceptor::from(config).accept(stream).await.map_err(classify)
}

/// Sorts a failed handshake into the peer leaving, a TLS refusal, or another I/O error.
fn classify(e: io::Error) -> HandshakeError {
    match e.kind() {
        io::ErrorKind::UnexpectedEof
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe => HandshakeError::PeerVanished,
        _ => match e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
            Some(tls) => HandshakeError::Tls(tls.to_string()),
            None => HandshakeError::Io(e),
        },
    }
}
