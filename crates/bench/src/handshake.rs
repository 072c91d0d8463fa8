//! The client side of the HTTP/1.1 upgrade (RFC 6455 §4.1), by hand.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sha1::{Digest, Sha1};

/// RFC 6455 §1.3.
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Longest response head accepted.
pub const MAX_HEAD: usize = 16 * 1024;

/// Where to connect: a resolved `ws://` URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub addr: SocketAddr,
    /// `host[:port]` as written in the URL, for the Host header.
    pub authority: String,
    /// Path and query, at least `/`.
    pub path: String,
}

impl Target {
    /// Parses and resolves `ws://host[:port][/path]` (plain text only).
    pub fn parse(url: &str) -> Result<Target, String> {
        let rest = url
            .strip_prefix("ws://")
            .ok_or_else(|| format!("{url}: only ws:// URLs are supported"))?;
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) if rest[i..].starts_with('/') => (&rest[..i], rest[i..].to_string()),
            Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
            None => (rest, "/".to_string()),
        };
        if authority.is_empty() {
            return Err(format!("{url}: no host"));
        }
        let with_port = if authority.ends_with(']') || !authority.contains(':') {
            format!("{authority}:80")
        } else {
            authority.to_string()
        };
        let addrs: Vec<SocketAddr> = with_port
            .to_socket_addrs()
            .map_err(|e| format!("{url}: cannot resolve {authority}: {e}"))?
            .collect();
        let addr = addrs
            .iter()
            .find(|a| a.is_ipv4())
            .or_else(|| addrs.first())
            .copied()
            .ok_or_else(|| format!("{url}: {authority} resolves to no address"))?;
        Ok(Target { addr, authority: authority.to_string(), path })
    }
}

/// A fresh random `Sec-WebSocket-Key`.
pub fn new_key() -> String {
    STANDARD.encode(rand::random::<[u8; 16]>())
}

/// The `Sec-WebSocket-Accept` value a server must answer `key` with.
pub fn accept_for(key: &str) -> String {
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(GUID.as_bytes());
    STANDARD.encode(sha.finalize())
}

/// The upgrade request.
pub fn request(target: &Target, key: &str) -> String {
    request_with(target, key, None)
}

/// The upgrade request, offering `protocol` (`Sec-WebSocket-Protocol`) when given.
pub fn request_with(target: &Target, key: &str, protocol: Option<&str>) -> String {
    let offer = protocol.map(|p| format!("Sec-WebSocket-Protocol: {p}\r\n")).unwrap_or_default();
    format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n{offer}\r\n",
        target.path, target.authority
    )
}

/// The value of header `name` (case-insensitive) in a response head, trimmed.
pub fn header(head: &[u8], name: &str) -> Option<String> {
    let head = String::from_utf8_lossy(head);
    head.split("\r\n").skip(1).find_map(|line| {
        let (n, value) = line.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| value.trim().to_string())
    })
}

/// Why an upgrade response was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum HandshakeError {
    /// The head grew past [`MAX_HEAD`] without ending.
    TooLong,
    /// Not an HTTP/1.x status line.
    Malformed(String),
    /// A status other than 101 (the status line is kept).
    Status(String),
    /// Missing or wrong `Sec-WebSocket-Accept`.
    BadAccept(Option<String>),
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeError::TooLong => {
                write!(f, "upgrade response head longer than {MAX_HEAD} bytes")
            }
            HandshakeError::Malformed(line) => write!(f, "malformed upgrade response: {line:?}"),
            HandshakeError::Status(line) => write!(f, "upgrade refused: {line:?}"),
            HandshakeError::BadAccept(None) => {
                write!(f, "upgrade response without Sec-WebSocket-Accept")
            }
            HandshakeError::BadAccept(Some(v)) => write!(f, "wrong Sec-WebSocket-Accept {v:?}"),
        }
    }
}

/// Checks an upgrade response. `Ok(None)`: the head is not complete yet;
/// `Ok(Some(n))`: the head is `buf[..n]` and `buf[n..]` is frame data.
pub fn parse_response(buf: &[u8], key: &str) -> Result<Option<usize>, HandshakeError> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if buf.len() > MAX_HEAD { Err(HandshakeError::TooLong) } else { Ok(None) };
    };
    let head = String::from_utf8_lossy(&buf[..end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let (version, code) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    if !version.starts_with("HTTP/1.") || code.len() != 3 {
        return Err(HandshakeError::Malformed(status_line.to_string()));
    }
    if code != "101" {
        return Err(HandshakeError::Status(status_line.to_string()));
    }
    let accept = lines.find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim().eq_ignore_ascii_case("sec-websocket-accept").then(|| value.trim().to_string())
    });
    match accept {
        Some(v) if v == accept_for(key) => Ok(Some(end + 4)),
        other => Err(HandshakeError::BadAccept(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{Decoder, Encoder, Kind, Message, OpCode, encode_frame};

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    fn response(status: &str, accept: Option<&str>) -> Vec<u8> {
        let mut s = format!("HTTP/1.1 {status}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n");
        if let Some(a) = accept {
            s.push_str(&format!("sec-websocket-ACCEPT:  {a}\r\n"));
        }
        s.push_str("\r\n");
        s.into_bytes()
    }

    #[test]
    fn rfc_6455_accept_example() {
        assert_eq!(accept_for(KEY), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(new_key().len(), 24);
    }

    #[test]
    fn good_response_keeps_following_bytes() {
        let mut buf = response("101 Switching Protocols", Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
        let head_len = buf.len();
        encode_frame(&mut buf, true, OpCode::Text, None, b"first");
        for cut in 0..head_len {
            assert_eq!(parse_response(&buf[..cut], KEY), Ok(None));
        }
        assert_eq!(parse_response(&buf, KEY), Ok(Some(head_len)));
        let mut dec = Decoder::new(64);
        dec.buf = buf;
        dec.pos = head_len;
        assert_eq!(
            dec.next_message(&mut Encoder::new(1)).unwrap(),
            Some(Message::Data(Kind::Text, &b"first"[..]))
        );
    }

    #[test]
    fn refused_and_bad_responses() {
        let buf = response("403 Forbidden", None);
        assert_eq!(
            parse_response(&buf, KEY),
            Err(HandshakeError::Status("HTTP/1.1 403 Forbidden".into()))
        );
        let buf = response("101 Switching Protocols", Some("AAAAAAAAAAAAAAAAAAAAAAAAAAA="));
        assert!(matches!(parse_response(&buf, KEY), Err(HandshakeError::BadAccept(Some(_)))));
        let buf = response("101 Switching Protocols", None);
        assert_eq!(parse_response(&buf, KEY), Err(HandshakeError::BadAccept(None)));
        assert!(matches!(
            parse_response(b"SSH-2.0-x\r\n\r\n", KEY),
            Err(HandshakeError::Malformed(_))
        ));
        assert_eq!(parse_response(&vec![b'a'; MAX_HEAD + 1], KEY), Err(HandshakeError::TooLong));
    }

    #[test]
    fn targets() {
        let t = Target::parse("ws://127.0.0.1:9001/ws/secure?x=1").unwrap();
        assert_eq!(t.addr, "127.0.0.1:9001".parse().unwrap());
        assert_eq!((t.authority.as_str(), t.path.as_str()), ("127.0.0.1:9001", "/ws/secure?x=1"));
        let t = Target::parse("ws://127.0.0.1:9001").unwrap();
        assert_eq!(t.path, "/");
        let t = Target::parse("ws://127.0.0.2?q").unwrap();
        assert_eq!((t.addr.port(), t.path.as_str()), (80, "/?q"));
        assert!(Target::parse("wss://127.0.0.1/").is_err());
        assert!(Target::parse("ws:///x").is_err());
        let req = request(&Target::parse("ws://127.0.0.1:1/a").unwrap(), KEY);
        assert!(req.starts_with("GET /a HTTP/1.1\r\nHost: 127.0.0.1:1\r\n"));
        assert!(req.ends_with(&format!("Sec-WebSocket-Key: {KEY}\r\n\r\n")));
        let req = request_with(&Target::parse("ws://127.0.0.1:1/").unwrap(), KEY, Some("p.v1"));
        assert!(req.ends_with(&format!(
            "Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Protocol: p.v1\r\n\r\n"
        )));
    }

    #[test]
    fn headers_are_found_case_insensitively() {
        let head =
            b"HTTP/1.1 101 Switching Protocols\r\nsec-websocket-protocol:  palisade.v1 \r\nX: y";
        assert_eq!(header(head, "Sec-WebSocket-Protocol").as_deref(), Some("palisade.v1"));
        assert_eq!(header(head, "x").as_deref(), Some("y"));
        assert_eq!(header(head, "HTTP/1.1 101 Switching Protocols"), None);
        assert_eq!(header(head, "missing"), None);
    }
}
