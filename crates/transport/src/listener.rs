//! The accept loop: one task per connection, admission before any read (and before any TLS
//! work), the optional TLS handshake and the upgrade under one timeout, then the connection
//! loop; graceful shutdown through a cancellation token.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, timeout, timeout_at};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::handshake::{self, Accept, HandshakeError, HandshakeRequest, Rejection};
use crate::read_ahead::ReadAhead;
use crate::{Handler, TransportConfig, connection, tls};

/// A process-wide unique connection id, shown as `c42` in logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

impl ConnId {
    /// The next id.
    pub fn next() -> ConnId {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        ConnId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "c{}", self.0)
    }
}

/// Who a connection is: id, TCP peer and the endpoint's name.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    /// Unique id.
    pub id: ConnId,
    /// The TCP peer address.
    pub peer: SocketAddr,
    /// The endpoint's name, e.g. `echo` or `secure`.
    pub endpoint: Arc<str>,
}

/// A refusal at TCP accept.
#[derive(Debug)]
pub enum Refusal {
    /// Close the socket at once, reading nothing (denied or banned address).
    Drop,
    /// Read the request (bounded by the handshake timeout) and answer with this HTTP error
    /// (e.g. 503 when over capacity).
    Http(Rejection),
}

/// What an application plugs into [`serve`].
pub trait Endpoint: Send + Sync + 'static {
    /// Held for the life of an admitted connection (e.g. a connection-count permit).
    type Admission: Send + Sync + 'static;
    /// The per-connection logic created at the handshake.
    type Handler: Handler;

    /// Called at TCP accept, before anything is read.
    fn admit(&self, peer: SocketAddr) -> Result<Self::Admission, Refusal>;

    /// Called with a valid upgrade request; accept it (creating the handler) or refuse it.
    fn handshake(
        &self,
        info: &ConnInfo,
        admission: &Self::Admission,
        request: &HandshakeRequest,
    ) -> Result<(Accept, Self::Handler), Rejection>;

    /// Called when a handshake did not complete, for logging and metrics.
    fn handshake_failed(&self, info: &ConnInfo, error: &HandshakeError) {
        let _ = (info, error);
    }
}

/// Accepts connections until `shutdown` is cancelled; each runs in a task of `tracker`, so the
/// caller can wait for them to drain (`tracker.close(); tracker.wait().await`).
/// On shutdown, open connections are sent 1001.
pub async fn serve<E: Endpoint>(
    listener: TcpListener,
    name: &str,
    endpoint: Arc<E>,
    config: Arc<TransportConfig>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let name: Arc<str> = name.into();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let info = ConnInfo { id: ConnId::next(), peer, endpoint: name.clone() };
                let task =
                    connection(stream, info, endpoint.clone(), config.clone(), shutdown.clone());
                tracker.spawn(task);
            }
            Err(e) => {
                // Out of file descriptors and similar: back off instead of spinning.
                tracing::warn!(endpoint = %name, error = %e, "accept failed; backing off");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

// The task of a connection holds its future for the connection's whole life, sized for the
// largest state it can be in; so every stage that is done with (refusal, TLS accept, upgrade)
// and the connection loop itself sit in their own boxes, and an idle connection keeps only
// what it uses.
async fn connection<E: Endpoint>(
    stream: TcpStream,
    info: ConnInfo,
    endpoint: Arc<E>,
    config: Arc<TransportConfig>,
    shutdown: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let admission = match endpoint.admit(info.peer) {
        Ok(a) => a,
        Err(Refusal::Drop) => return,
        Err(Refusal::Http(rejection)) => {
            return Box::pin(refuse(stream, rejection, &info, &*endpoint, &config)).await;
        }
    };
    // One deadline covers the TLS handshake (when there is one) and the upgrade.
    let deadline = Instant::now() + config.handshake_timeout;
    match config.tls.clone() {
        None => {
            Box::pin(established(stream, deadline, info, admission, endpoint, config, shutdown))
                .await
        }
        Some(tls) => {
            Box::pin(secured(stream, tls, deadline, info, admission, endpoint, config, shutdown))
                .await
        }
    }
}

/// Turns away a connection the endpoint did not admit.
async fn refuse<E: Endpoint>(
    mut stream: TcpStream,
    rejection: Rejection,
    info: &ConnInfo,
    endpoint: &E,
    config: &TransportConfig,
) {
    if config.tls.is_none() {
        // Answer politely but cheaply: a bounded read, then the error. On a TLS port an HTTP
        // answer would cost a TLS handshake: spend no crypto on a client that is being turned
        // away (e.g. over capacity), just close.
        let _ = timeout(config.handshake_timeout.min(Duration::from_secs(2)), async {
            let _ = handshake::read_request(&mut stream, config.max_request_head_bytes).await;
            handshake::write_rejection(&mut stream, &rejection).await
        })
        .await;
    }
    endpoint.handshake_failed(info, &HandshakeError::NotAdmitted(rejection));
}

/// The TLS handshake (by `deadline`), then the upgrade and the connection loop.
#[allow(clippy::too_many_arguments)]
async fn secured<E: Endpoint>(
    stream: TcpStream,
    tls: Arc<rustls::ServerConfig>,
    deadline: Instant,
    info: ConnInfo,
    admission: E::Admission,
    endpoint: Arc<E>,
    config: Arc<TransportConfig>,
    shutdown: CancellationToken,
) {
    let accepted = timeout_at(deadline, tls::accept(stream, tls, config.max_request_head_bytes));
    match accepted.await {
        Ok(Ok(stream)) => {
            Box::pin(established(stream, deadline, info, admission, endpoint, config, shutdown))
                .await
        }
        Ok(Err(e)) => endpoint.handshake_failed(&info, &e),
        Err(_) => endpoint.handshake_failed(&info, &HandshakeError::Timeout),
    }
}

/// The upgrade (by `deadline`) and then the connection loop, over plain TCP or TLS.
async fn established<E: Endpoint, S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    deadline: Instant,
    info: ConnInfo,
    admission: E::Admission,
    endpoint: Arc<E>,
    config: Arc<TransportConfig>,
    shutdown: CancellationToken,
) {
    // Boxed: the upgrade's state is freed once it is done instead of sizing the task for good.
    // The upgraded stream and handler live in a block that ends before the connection runs:
    // locals still in scope at an `.await` keep their room in this future for its whole life,
    // even once moved out (about 1 KiB per connection here).
    let running = {
        let upgrade = Box::pin(upgrade(stream, &info, &admission, &*endpoint, &config));
        match timeout_at(deadline, upgrade).await {
            Ok(Ok((ws, handler))) => {
                Box::pin(connection::run(ws, info, &config, handler, shutdown))
            }
            Ok(Err(e)) => return endpoint.handshake_failed(&info, &e),
            Err(_) => return endpoint.handshake_failed(&info, &HandshakeError::Timeout),
        }
    };
    running.await;
    drop(admission);
}

/// Reads the upgrade request, asks the endpoint and answers it. Generic over the stream so the
/// fuzz targets drive this same code over an in-memory pipe.
pub(crate) async fn upgrade<E: Endpoint, S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    info: &ConnInfo,
    admission: &E::Admission,
    endpoint: &E,
    config: &TransportConfig,
) -> Result<(WebSocketStream<ReadAhead<S>>, E::Handler), HandshakeError> {
    let checked = async {
        let raw = handshake::read_request(&mut stream, config.max_request_head_bytes).await?;
        let key = handshake::check_upgrade(&raw.request)?.clone();
        match endpoint.handshake(info, admission, &raw.request) {
            Ok((accept, handler)) => Ok((raw, key, accept, handler)),
            Err(rejection) => Err(HandshakeError::Refused(rejection)),
        }
    }
    .await;
    let (raw, key, mut accept, handler) = match checked {
        Ok(v) => v,
        Err(e) => {
            if let Some(rejection) = handshake::rejection_for(&e) {
                let _ = handshake::write_rejection(&mut stream, &rejection).await;
            }
            return Err(e);
        }
    };
    if let Some(p) = &accept.subprotocol {
        // Never select a subprotocol the client did not offer (RFC 6455 section 4.2.2).
        if !handshake::offered_subprotocols(&raw.request).any(|o| o == p) {
            accept.subprotocol = None;
        }
    }
    handshake::write_accept(&mut stream, &key, &accept).await?;
    let ws_config = WebSocketConfig::default()
        .max_message_size(Some(config.max_message_bytes))
        .max_frame_size(Some(config.max_frame_bytes))
        .read_buffer_size(config.read_buffer_bytes)
        .write_buffer_size(config.write_buffer_bytes);
    let stream = ReadAhead::new(stream);
    let ws =
        WebSocketStream::from_partially_read(stream, raw.rest, Role::Server, Some(ws_config)).await;
    Ok((ws, handler))
}
