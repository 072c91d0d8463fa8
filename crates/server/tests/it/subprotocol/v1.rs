//! Helpers for the `palisade.v1` tests: mint tokens, and speak envelopes with a WebSocket
//! client, checking each against docs/palisade.v1.schema.json. The server is `support::Server`.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use palisade_token::{Algorithm, Claims};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::support::{self, SECRET, STEP, Server, Ws, mint, now, read_head};

/// The subprotocol's name.
pub(crate) const V1: &str = "palisade.v1";

/// Seconds since the Unix epoch, with fractions.
pub(crate) fn now_f64() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_secs_f64()
}

/// A token for `user_id` expiring at `exp` (Unix seconds), signed with `secret`.
pub(crate) fn token_with(secret: &str, user_id: &str, exp: u64) -> String {
    let mut claims = Claims::new(user_id);
    claims.exp = Some(exp);
    claims.iat = Some(now().min(exp));
    mint(Algorithm::Hs256, secret, &claims)
}

/// A token for `user_id` that the test server accepts, expiring at `exp` (Unix seconds).
pub(crate) fn token_at(user_id: &str, exp: u64) -> String {
    token_with(SECRET, user_id, exp)
}

/// A token for `user_id` expiring `ttl_secs` from now.
pub(crate) fn token(user_id: &str, ttl_secs: u64) -> String {
    token_at(user_id, now() + ttl_secs)
}

// ---- the schema ----

fn schema() -> &'static Value {
    static SCHEMA: OnceLock<Value> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/palisade.v1.schema.json");
        let text = std::fs::read_to_string(path).expect("read docs/palisade.v1.schema.json");
        serde_json::from_str(&text).expect("the schema is JSON")
    })
}

/// A validator for one direction (`client` or `server`) of the documented schema.
fn validator(direction: &str) -> jsonschema::Validator {
    let mut s = schema().clone();
    s["anyOf"] = json!([{ "$ref": format!("#/$defs/{direction}") }]);
    jsonschema::validator_for(&s).expect("docs/palisade.v1.schema.json is a valid schema")
}

/// Fails unless `envelope` matches the schema for `direction`.
#[track_caller]
pub(crate) fn assert_schema(direction: &str, envelope: &Value) {
    static CLIENT: OnceLock<jsonschema::Validator> = OnceLock::new();
    static SERVER: OnceLock<jsonschema::Validator> = OnceLock::new();
    let v = match direction {
        "client" => CLIENT.get_or_init(|| validator("client")),
        "server" => SERVER.get_or_init(|| validator("server")),
        other => panic!("unknown direction {other}"),
    };
    let errors: Vec<String> = v.iter_errors(envelope).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{direction} envelope {envelope} breaks the schema: {errors:?}");
}

// ---- WebSocket client ----

/// Connects to the secure endpoint offering `palisade.v1` (plus extra headers); checks that the
/// server selected it.
pub(crate) async fn connect_v1(server: &Server, headers: &[(&str, &str)]) -> Ws {
    let mut req = format!("ws://{}/", server.secure).into_client_request().expect("request");
    req.headers_mut().insert("sec-websocket-protocol", V1.parse().expect("header value"));
    for (k, v) in headers {
        req.headers_mut().insert(
            http::HeaderName::from_bytes(k.as_bytes()).expect("header name"),
            http::HeaderValue::from_str(v).expect("header value"),
        );
    }
    let (ws, resp) = timeout(STEP, tokio_tungstenite::connect_async(req))
        .await
        .expect("handshake timed out")
        .expect("handshake");
    let selected = resp.headers().get("sec-websocket-protocol").map(|v| v.to_str().unwrap_or(""));
    assert_eq!(selected, Some(V1), "the server selects palisade.v1");
    ws
}

/// Connects and authenticates as `user_id` with a token expiring at `exp`; returns the
/// `authenticated` envelope too.
pub(crate) async fn authenticated_at(server: &Server, user_id: &str, exp: u64) -> (Ws, Value) {
    let mut ws = connect_v1(server, &[]).await;
    send(&mut ws, &json!({"type": "auth", "token": token_at(user_id, exp)})).await;
    let env = expect_type(&mut ws, "authenticated").await;
    assert_eq!(env["user_id"], user_id);
    (ws, env)
}

/// Connects and authenticates as `user_id` with a token valid for ten minutes (so no `expiring`
/// comes at the default warning of 60 s).
pub(crate) async fn authenticated(server: &Server, user_id: &str) -> Ws {
    authenticated_at(server, user_id, now() + 600).await.0
}

/// Sends an envelope (checked against the client schema).
pub(crate) async fn send(ws: &mut Ws, envelope: &Value) {
    assert_schema("client", envelope);
    send_raw(ws, Message::text(envelope.to_string())).await;
}

/// Sends any frame, envelope or not.
pub(crate) async fn send_raw(ws: &mut Ws, msg: Message) {
    timeout(STEP, ws.send(msg)).await.expect("send timed out").expect("send");
}

/// What the server sent next: an envelope (checked against the server schema) or a close.
#[derive(Debug)]
pub(crate) enum Frame {
    Envelope(Value),
    Close(u16, String),
}

/// Turns a client read into a [`Frame`]; `None` for pings and pongs.
pub(crate) fn frame_of(item: Option<Result<Message, tungstenite::Error>>) -> Option<Frame> {
    match item {
        Some(Ok(Message::Text(t))) => {
            let v: Value = serde_json::from_str(t.as_str())
                .unwrap_or_else(|e| panic!("server frame is not JSON ({e}): {t}"));
            assert_schema("server", &v);
            Some(Frame::Envelope(v))
        }
        Some(Ok(Message::Close(Some(f)))) => {
            Some(Frame::Close(u16::from(f.code), f.reason.to_string()))
        }
        Some(Ok(Message::Close(None))) => Some(Frame::Close(1005, String::new())),
        Some(Ok(Message::Ping(_) | Message::Pong(_))) => None,
        Some(Ok(other)) => panic!("unexpected frame {other:?}"),
        Some(Err(e)) => panic!("client read error: {e}"),
        None => panic!("the connection ended without a close frame"),
    }
}

/// The next envelope or close, within `limit`.
pub(crate) async fn next_within(ws: &mut Ws, limit: Duration) -> Frame {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let item = tokio::time::timeout_at(deadline, ws.next())
            .await
            .unwrap_or_else(|_| panic!("nothing from the server within {limit:?}"));
        if let Some(frame) = frame_of(item) {
            return frame;
        }
    }
}

/// The next envelope, which must have this `type`.
pub(crate) async fn expect_type(ws: &mut Ws, kind: &str) -> Value {
    match next_within(ws, STEP).await {
        Frame::Envelope(v) if v["type"] == kind => v,
        other => panic!("expected a {kind:?} envelope, got {other:?}"),
    }
}

/// The next envelope is an error with this reason; returns its detail.
pub(crate) async fn expect_error(ws: &mut Ws, reason: &str) -> String {
    let v = expect_type(ws, "error").await;
    assert_eq!(v["reason"], reason, "error envelope {v}");
    v["detail"].as_str().expect("detail").to_owned()
}

/// The next frame is a close with this code and reason.
pub(crate) async fn expect_close(ws: &mut Ws, code: u16, reason: &str) {
    match next_within(ws, STEP).await {
        Frame::Close(c, r) => assert_eq!((c, r.as_str()), (code, reason), "close frame"),
        other => panic!("expected close {code} {reason:?}, got {other:?}"),
    }
}

/// An error envelope with `reason`, then a close with `code` and `close_reason`.
pub(crate) async fn expect_error_then_close(
    ws: &mut Ws,
    reason: &str,
    code: u16,
    close_reason: &str,
) {
    expect_error(ws, reason).await;
    expect_close(ws, code, close_reason).await;
}

/// Sends `data` in a message envelope and returns the `data` of the reply.
pub(crate) async fn round_trip(ws: &mut Ws, data: Value) -> Value {
    send(ws, &json!({"type": "message", "data": data})).await;
    expect_type(ws, "message").await["data"].clone()
}

// ---- raw HTTP ----

/// Sends an upgrade request with `extra` header lines and returns the response head, lowercase.
pub(crate) async fn upgrade_head(addr: SocketAddr, extra: &str) -> String {
    let mut s =
        timeout(STEP, TcpStream::connect(addr)).await.expect("connect timed out").expect("connect");
    let req = format!(
        "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    );
    s.write_all(req.as_bytes()).await.expect("write upgrade");
    read_head(&mut s).await.to_ascii_lowercase()
}

/// Sends one HTTP/1.1 request (with a JSON `body` unless empty); returns the status and body.
pub(crate) async fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let resp = support::http(addr, method, path, &[], body).await;
    (resp.status, resp.body)
}
