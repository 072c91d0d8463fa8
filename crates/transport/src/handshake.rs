//! The HTTP upgrade: read a bounded request head, check it is a WebSocket upgrade, ask the
//! endpoint, and answer with 101 or an HTTP error (never a hang).

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// The parsed upgrade request the endpoint decides on: method, path, query and headers.
pub type HandshakeRequest = http::Request<()>;

/// The endpoint's acceptance of an upgrade.
#[derive(Clone, Debug, Default)]
pub struct Accept {
    /// The subprotocol to select; it must be one the client offered.
    pub subprotocol: Option<String>,
    /// Extra response headers.
    pub headers: HeaderMap,
}

/// The endpoint's refusal of an upgrade: an HTTP status and a short plain-text body.
#[derive(Clone, Debug)]
pub struct Rejection {
    /// The HTTP status, e.g. 401, 403, 429 or 503.
    pub status: StatusCode,
    /// One line for the client: what was wrong and what to do.
    pub body: String,
    /// Extra response headers (e.g. `Retry-After`).
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl Rejection {
    /// A rejection with this status and body and no extra headers.
    pub fn new(status: StatusCode, body: impl Into<String>) -> Rejection {
        Rejection { status, body: body.into(), headers: Vec::new() }
    }

    /// Adds a response header.
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Rejection {
        self.headers.push((name, value));
        self
    }
}

/// Why a handshake did not complete.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The client sent no complete request head in time.
    #[error("handshake timed out")]
    Timeout,
    /// The client closed the connection before finishing its request.
    #[error("peer closed the connection during the handshake")]
    PeerVanished,
    /// The request head is larger than the limit.
    #[error("request head larger than {max} bytes")]
    HeadTooLarge {
        /// The limit.
        max: usize,
    },
    /// The bytes are not an HTTP/1.1 request.
    #[error("malformed http request: {0}")]
    Malformed(String),
    /// A valid HTTP request, but not a WebSocket upgrade (answered with 4xx).
    #[error("not a websocket upgrade: {0}")]
    NotWebSocket(&'static str),
    /// The endpoint refused the request (answered with its status).
    #[error("refused with http {}", .0.status.as_u16())]
    Refused(Rejection),
    /// The server refused the connection before reading it (e.g. over capacity).
    #[error("refused at admission with http {}", .0.status.as_u16())]
    NotAdmitted(Rejection),
    /// The TLS handshake failed: plain text on a TLS port, no common protocol version or
    /// cipher suite, a client that does not trust the certificate, a corrupt record.
    #[error("tls handshake failed: {0}")]
    Tls(String),
    /// Reading or writing the socket failed.
    #[error("i/o error during the handshake")]
    Io(#[from] std::io::Error),
}

impl HandshakeError {
    /// A short stable name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            HandshakeError::Timeout => "timeout",
            HandshakeError::PeerVanished => "peer_vanished",
            HandshakeError::HeadTooLarge { .. } => "head_too_large",
            HandshakeError::Malformed(_) => "malformed_http",
            HandshakeError::NotWebSocket(_) => "not_websocket",
            HandshakeError::Refused(_) => "refused",
            HandshakeError::NotAdmitted(_) => "not_admitted",
            HandshakeError::Tls(_) => "tls",
            HandshakeError::Io(_) => "io",
        }
    }
}

/// A request head read from the socket, plus any bytes the client sent after it.
pub(crate) struct RawRequest {
    pub(crate) request: HandshakeRequest,
    pub(crate) rest: Vec<u8>,
}

/// Reads one request head (up to `max` bytes). The caller applies the timeout.
pub(crate) async fn read_request<S: AsyncRead + Unpin>(
    stream: &mut S,
    max: usize,
) -> Result<RawRequest, HandshakeError> {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        // Read into the vector's spare room (no buffer on the stack, which would live in every
        // connection's task).
        buf.reserve(2048);
        let n = stream.read_buf(&mut buf).await?;
        if n == 0 {
            return Err(HandshakeError::PeerVanished);
        }
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(head_len)) => {
                let request = to_http_request(&req)?;
                let rest = buf.split_off(head_len);
                return Ok(RawRequest { request, rest });
            }
            Ok(httparse::Status::Partial) => {
                if buf.len() > max {
                    return Err(HandshakeError::HeadTooLarge { max });
                }
            }
            Err(httparse::Error::TooManyHeaders) => {
                return Err(HandshakeError::HeadTooLarge { max });
            }
            Err(e) => return Err(HandshakeError::Malformed(e.to_string())),
        }
    }
}

fn to_http_request(req: &httparse::Request<'_, '_>) -> Result<HandshakeRequest, HandshakeError> {
    let method = req.method.unwrap_or("GET");
    let path = req.path.unwrap_or("/");
    let mut builder = http::Request::builder().method(method).uri(path);
    if req.version == Some(0) {
        builder = builder.version(http::Version::HTTP_10);
    }
    for h in req.headers.iter() {
        builder = builder.header(h.name, h.value);
    }
    builder.body(()).map_err(|e| HandshakeError::Malformed(e.to_string()))
}

/// Checks the request is a version-13 WebSocket upgrade; returns the client's key.
pub(crate) fn check_upgrade(req: &HandshakeRequest) -> Result<&HeaderValue, HandshakeError> {
    if req.method() != http::Method::GET {
        return Err(HandshakeError::NotWebSocket("method is not GET"));
    }
    if req.version() < http::Version::HTTP_11 {
        return Err(HandshakeError::NotWebSocket("http version below 1.1"));
    }
    let headers = req.headers();
    if !header_has_token(headers, http::header::UPGRADE, "websocket") {
        return Err(HandshakeError::NotWebSocket("missing `Upgrade: websocket`"));
    }
    if !header_has_token(headers, http::header::CONNECTION, "upgrade") {
        return Err(HandshakeError::NotWebSocket("missing `Connection: Upgrade`"));
    }
    if headers.get(http::header::SEC_WEBSOCKET_VERSION).map(|v| v.as_bytes()) != Some(b"13") {
        return Err(HandshakeError::NotWebSocket("unsupported `Sec-WebSocket-Version` (need 13)"));
    }
    match headers.get(http::header::SEC_WEBSOCKET_KEY) {
        Some(key) if key.len() == 24 => Ok(key),
        _ => Err(HandshakeError::NotWebSocket("missing or malformed `Sec-WebSocket-Key`")),
    }
}

fn header_has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .map(|s| s.split(',').any(|part| part.trim().eq_ignore_ascii_case(token)))
            .unwrap_or(false)
    })
}

/// The subprotocols the client offered, in order.
pub(crate) fn offered_subprotocols(req: &HandshakeRequest) -> impl Iterator<Item = &str> {
    req.headers()
        .get_all(http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// Writes the 101 response.
pub(crate) async fn write_accept<S: AsyncWrite + Unpin>(
    stream: &mut S,
    key: &HeaderValue,
    accept: &Accept,
) -> std::io::Result<()> {
    let mut out = String::with_capacity(256);
    out.push_str(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n",
    );
    out.push_str("Sec-WebSocket-Accept: ");
    out.push_str(&derive_accept_key(key.as_bytes()));
    out.push_str("\r\n");
    if let Some(p) = &accept.subprotocol {
        out.push_str("Sec-WebSocket-Protocol: ");
        out.push_str(p);
        out.push_str("\r\n");
    }
    push_headers(&mut out, accept.headers.iter());
    out.push_str("\r\n");
    stream.write_all(out.as_bytes()).await?;
    stream.flush().await
}

/// Writes an HTTP error response and shuts the write side down.
pub(crate) async fn write_rejection<S: AsyncWrite + Unpin>(
    stream: &mut S,
    rejection: &Rejection,
) -> std::io::Result<()> {
    let body = format!("{}\n", rejection.body);
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n",
        rejection.status.as_u16(),
        rejection.status.canonical_reason().unwrap_or(""),
        body.len()
    );
    push_headers(&mut out, rejection.headers.iter().map(|(k, v)| (k, v)));
    out.push_str("\r\n");
    out.push_str(&body);
    stream.write_all(out.as_bytes()).await?;
    stream.flush().await?;
    stream.shutdown().await
}

fn push_headers<'a>(
    out: &mut String,
    headers: impl Iterator<Item = (&'a HeaderName, &'a HeaderValue)>,
) {
    for (name, value) in headers {
        if let Ok(v) = value.to_str() {
            out.push_str(name.as_str());
            out.push_str(": ");
            out.push_str(v);
            out.push_str("\r\n");
        }
    }
}

/// The HTTP answer for a request that is not a usable upgrade.
pub(crate) fn rejection_for(err: &HandshakeError) -> Option<Rejection> {
    match err {
        HandshakeError::HeadTooLarge { max } => Some(Rejection::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            format!("request head larger than {max} bytes"),
        )),
        HandshakeError::Malformed(_) => {
            Some(Rejection::new(StatusCode::BAD_REQUEST, "malformed http request"))
        }
        HandshakeError::NotWebSocket(why) => {
            let r = Rejection::new(
                StatusCode::UPGRADE_REQUIRED,
                format!("this is a websocket endpoint: {why}; connect with a websocket client"),
            )
            .with_header(http::header::UPGRADE, HeaderValue::from_static("websocket"))
            .with_header(http::header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
            Some(r)
        }
        HandshakeError::Refused(r) | HandshakeError::NotAdmitted(r) => Some(r.clone()),
        HandshakeError::Timeout
        | HandshakeError::PeerVanished
        | HandshakeError::Tls(_)
        | HandshakeError::Io(_) => None,
    }
}
