//! Integration tests: the real accept loop on 127.0.0.1:0 driven by a real WebSocket client.

mod tls;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use palisade_transport::{
    Accept, Close, ConnHandle, ConnInfo, Context, Endpoint, Handler, HandshakeError,
    HandshakeRequest, Message, Outcome, PushKind, Refusal, Rejection, TransportConfig,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Echoes data, remembers handles and outcomes, and closes on the text `bye`.
#[derive(Default)]
struct Recorder {
    handles: Mutex<Vec<ConnHandle>>,
    outcomes: Mutex<Vec<String>>,
    /// `handshake_failed` kinds, in order.
    failures: Mutex<Vec<String>>,
    /// Connections admitted so far.
    admitted: AtomicUsize,
    /// Refuse every connection at admission (drop it).
    deny: AtomicBool,
}

struct EchoConn(Arc<Recorder>);

impl Handler for EchoConn {
    async fn on_open(&mut self, ctx: &mut Context) -> Result<(), Close> {
        self.0.handles.lock().unwrap().push(ctx.handle());
        Ok(())
    }

    async fn on_message(&mut self, msg: Message, ctx: &mut Context) -> Result<(), Close> {
        if msg == Message::Text("bye".into()) {
            return Err(Close::new(4000, "bye"));
        }
        ctx.send(msg)
    }

    fn on_close(&mut self, _info: &ConnInfo, outcome: &Outcome) {
        let line = match outcome {
            Outcome::PeerClosed { code, .. } => format!("peer {code:?}"),
            Outcome::ServerClosed(c) => format!("server {}", c.code),
            Outcome::Failed { error, close } => {
                format!("failed {} {:?}", error.kind(), close.as_ref().map(|c| c.code))
            }
        };
        self.0.outcomes.lock().unwrap().push(line);
    }
}

struct Ep(Arc<Recorder>);

impl Endpoint for Ep {
    type Admission = ();
    type Handler = EchoConn;

    fn admit(&self, _peer: std::net::SocketAddr) -> Result<(), Refusal> {
        if self.0.deny.load(Ordering::Relaxed) {
            return Err(Refusal::Drop);
        }
        self.0.admitted.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn handshake(
        &self,
        _info: &ConnInfo,
        _admission: &(),
        req: &HandshakeRequest,
    ) -> Result<(Accept, EchoConn), Rejection> {
        if req.uri().path() == "/forbidden" {
            return Err(Rejection::new(http::StatusCode::FORBIDDEN, "no"));
        }
        let accept = Accept { subprotocol: Some("chat.v1".into()), ..Accept::default() };
        Ok((accept, EchoConn(self.0.clone())))
    }

    fn handshake_failed(&self, _info: &ConnInfo, error: &HandshakeError) {
        self.0.failures.lock().unwrap().push(error.kind().to_owned());
    }
}

struct Running {
    addr: std::net::SocketAddr,
    rec: Arc<Recorder>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

async fn start(tweak: impl FnOnce(&mut TransportConfig)) -> Running {
    let mut config = TransportConfig::secure_defaults();
    config.close_timeout = Duration::from_millis(500);
    tweak(&mut config);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let rec = Arc::new(Recorder::default());
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let serve = palisade_transport::serve(
        listener,
        "test",
        Arc::new(Ep(rec.clone())),
        Arc::new(config),
        shutdown.clone(),
        tracker.clone(),
    );
    tracker.spawn(serve);
    Running { addr, rec, shutdown, tracker }
}

type Client = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

async fn connect(addr: std::net::SocketAddr) -> Client {
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/")).await.unwrap();
    ws
}

/// Reads until a close frame and returns its code (None if the stream ended without one).
async fn close_code(ws: &mut Client) -> Option<u16> {
    let wait = async {
        while let Some(Ok(m)) = ws.next().await {
            if let WsMessage::Close(f) = m {
                return f.map(|f| u16::from(f.code));
            }
        }
        None
    };
    tokio::time::timeout(Duration::from_secs(5), wait).await.expect("no close within 5 s")
}

async fn wait_outcome(rec: &Recorder) -> String {
    for _ in 0..100 {
        if let Some(o) = rec.outcomes.lock().unwrap().first() {
            return o.clone();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no outcome recorded");
}

#[tokio::test]
async fn echoes_text_and_binary() {
    let s = start(|_| {}).await;
    let mut ws = connect(s.addr).await;
    ws.send(WsMessage::text("héllo")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), WsMessage::text("héllo"));
    ws.send(WsMessage::binary(vec![0u8, 255])).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), WsMessage::binary(vec![0u8, 255]));
    ws.close(None).await.unwrap();
    assert_eq!(wait_outcome(&s.rec).await, "peer None");
}

/// Messages past the write buffer's size go to the socket directly (header and payload in one
/// vectored write), small ones through tungstenite's buffer: pipelined, they still arrive whole
/// and in order.
#[tokio::test]
async fn large_and_small_replies_arrive_whole_and_in_order() {
    let s = start(|c| {
        c.max_message_bytes = 1 << 20;
        c.max_frame_bytes = 1 << 20;
    })
    .await;
    let mut ws = connect(s.addr).await;
    let big_text: String = (0..40_000).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
    let sent = vec![
        WsMessage::text("small"),
        WsMessage::binary((0..200_000u32).map(|i| (i % 251) as u8).collect::<Vec<_>>()),
        WsMessage::text(big_text),
        WsMessage::binary(vec![9u8; 17 * 1024]),
        WsMessage::text("last"),
    ];
    for m in &sent {
        ws.feed(m.clone()).await.unwrap();
    }
    ws.flush().await.unwrap();
    for m in &sent {
        assert_eq!(&ws.next().await.unwrap().unwrap(), m);
    }
    ws.close(None).await.unwrap();
    assert_eq!(wait_outcome(&s.rec).await, "peer None");
}

#[tokio::test]
async fn handler_close_sends_its_code() {
    let s = start(|_| {}).await;
    let mut ws = connect(s.addr).await;
    ws.send(WsMessage::text("bye")).await.unwrap();
    assert_eq!(close_code(&mut ws).await, Some(4000));
    assert_eq!(wait_outcome(&s.rec).await, "server 4000");
}

#[tokio::test]
async fn idle_connection_is_closed_with_1001() {
    let s = start(|c| {
        c.idle_timeout = Duration::from_millis(300);
        c.ping_interval = Duration::ZERO;
    })
    .await;
    let mut ws = connect(s.addr).await;
    assert_eq!(close_code(&mut ws).await, Some(1001));
    assert_eq!(wait_outcome(&s.rec).await, "failed idle_timeout Some(1001)");
}

#[tokio::test]
async fn pings_keep_a_responsive_client_alive() {
    let s = start(|c| {
        c.idle_timeout = Duration::from_millis(400);
        c.ping_interval = Duration::from_millis(100);
    })
    .await;
    let mut ws = connect(s.addr).await;
    // The client library answers pings while we read; stay connected well past the idle timeout.
    let mut pings = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(1200);
    while let Ok(Some(Ok(m))) = tokio::time::timeout_at(deadline, ws.next()).await {
        if matches!(m, WsMessage::Ping(_)) {
            pings += 1;
        }
    }
    assert!(pings >= 5, "only {pings} pings");
    ws.send(WsMessage::text("still here")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), WsMessage::text("still here"));
}

#[tokio::test]
async fn handle_can_push_and_close() {
    let s = start(|_| {}).await;
    let mut ws = connect(s.addr).await;
    ws.send(WsMessage::text("x")).await.unwrap();
    ws.next().await.unwrap().unwrap();
    let handle = s.rec.handles.lock().unwrap()[0].clone();
    handle.send(Message::Text("pushed".into())).unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), WsMessage::text("pushed"));
    handle.close(Close::policy("session revoked"));
    assert_eq!(close_code(&mut ws).await, Some(1008));
    assert_eq!(wait_outcome(&s.rec).await, "server 1008");
    assert!(handle.send(Message::Text("late".into())).is_err());
}

#[tokio::test]
async fn shutdown_sends_1001_and_drains() {
    let s = start(|_| {}).await;
    let mut a = connect(s.addr).await;
    let mut b = connect(s.addr).await;
    s.shutdown.cancel();
    assert_eq!(close_code(&mut a).await, Some(1001));
    assert_eq!(close_code(&mut b).await, Some(1001));
    s.tracker.close();
    tokio::time::timeout(Duration::from_secs(5), s.tracker.wait()).await.unwrap();
    assert!(TcpStream::connect(s.addr).await.is_err(), "listener still accepting");
}

#[tokio::test]
async fn rejection_is_an_http_answer() {
    let s = start(|_| {}).await;
    let err =
        tokio_tungstenite::connect_async(format!("ws://{}/forbidden", s.addr)).await.unwrap_err();
    let tokio_tungstenite::tungstenite::Error::Http(resp) = err else { panic!("{err}") };
    assert_eq!(resp.status(), 403);
}

#[tokio::test]
async fn plain_http_gets_426_not_a_hang() {
    let s = start(|_| {}).await;
    let mut tcp = TcpStream::connect(s.addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    assert!(out.starts_with("HTTP/1.1 426"), "{out}");
}

#[tokio::test]
async fn slow_handshake_is_dropped_after_the_timeout() {
    let s = start(|c| c.handshake_timeout = Duration::from_millis(300)).await;
    let mut tcp = TcpStream::connect(s.addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    let mut buf = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut buf)).await.unwrap();
    assert_eq!(n.unwrap_or(0), 0, "expected the server to hang up");
}

#[tokio::test]
async fn oversized_request_head_gets_431() {
    let s = start(|c| c.max_request_head_bytes = 1024).await;
    let mut tcp = TcpStream::connect(s.addr).await.unwrap();
    let big = format!("GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(4096));
    let _ = tcp.write_all(big.as_bytes()).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut out)).await;
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 431"));
}

#[tokio::test]
async fn subprotocol_is_selected_only_when_offered() {
    let s = start(|_| {}).await;
    let mut req = format!("ws://{}/", s.addr).into_client_request().unwrap();
    req.headers_mut().insert("Sec-WebSocket-Protocol", "other, chat.v1".parse().unwrap());
    let (_ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(resp.headers().get("sec-websocket-protocol").unwrap(), "chat.v1");
    let (_ws, resp) = tokio_tungstenite::connect_async(format!("ws://{}/", s.addr)).await.unwrap();
    assert!(resp.headers().get("sec-websocket-protocol").is_none());
}

#[tokio::test]
async fn message_over_the_limit_is_closed_with_1009() {
    let s = start(|c| {
        c.max_message_bytes = 1024;
        c.max_frame_bytes = 1024;
    })
    .await;
    let mut ws = connect(s.addr).await;
    ws.send(WsMessage::binary(vec![7u8; 4096])).await.unwrap();
    assert_eq!(close_code(&mut ws).await, Some(1009));
    assert!(wait_outcome(&s.rec).await.starts_with("failed message_too_big Some(1009)"));
}

#[tokio::test]
async fn client_that_stops_reading_is_closed_as_slow_consumer() {
    let s = start(|c| {
        c.outbound_queue = 4;
        c.write_timeout = Duration::from_millis(300);
    })
    .await;
    let ws = connect(s.addr).await;
    let handle = s.rec.handles.lock().unwrap()[0].clone();
    // The client never reads: pushes pile up until the queue or the write timeout gives.
    let big = Message::Binary(vec![1u8; 60 * 1024].into());
    let mut refused = false;
    for _ in 0..2000 {
        if handle.send(big.clone()).is_err() {
            refused = true;
            break;
        }
        tokio::task::yield_now().await;
    }
    let outcome = wait_outcome(&s.rec).await;
    assert!(refused || outcome.contains("slow_consumer"), "{outcome}");
    assert!(outcome.contains("slow_consumer") || outcome == "server 1008", "{outcome}");
    drop(ws);
}

/// Uses the hooks a subprotocol needs: rewrites what it queued after a mark, rewrites pushes,
/// and says why before every close.
struct Hooked;

impl Handler for Hooked {
    async fn on_message(&mut self, msg: Message, ctx: &mut Context) -> Result<(), Close> {
        match msg {
            Message::Text(t) if t == "bye" => Err(Close::new(4000, "bye")),
            Message::Text(t) if t == "push" => {
                ctx.handle().send(Message::Text("pushed".into())).expect("push");
                ctx.handle().send_as(PushKind(7), Message::Text("tagged".into())).expect("push");
                Ok(())
            }
            Message::Text(t) => {
                ctx.send(Message::Text("before".into()))?;
                let mark = ctx.queued();
                ctx.send(Message::Text(t))?;
                ctx.map_queued(mark, |m| match m {
                    Message::Text(t) => Message::Text(t.to_uppercase().into()),
                    other => other,
                });
                Ok(())
            }
            Message::Binary(_) => Ok(()),
        }
    }

    fn on_push(&mut self, msg: Message, kind: PushKind) -> Message {
        match msg {
            Message::Text(t) if kind == PushKind::DEFAULT => {
                Message::Text(format!("push:{t}").into())
            }
            Message::Text(t) => Message::Text(format!("push{}:{t}", kind.0).into()),
            other => other,
        }
    }

    fn on_closing(&mut self, close: &Close) -> Option<Message> {
        Some(Message::Text(format!("closing {} {}", close.code, close.reason).into()))
    }
}

struct HookedEp;

impl Endpoint for HookedEp {
    type Admission = ();
    type Handler = Hooked;

    fn admit(&self, _peer: std::net::SocketAddr) -> Result<(), Refusal> {
        Ok(())
    }

    fn handshake(
        &self,
        _info: &ConnInfo,
        _admission: &(),
        _req: &HandshakeRequest,
    ) -> Result<(Accept, Hooked), Rejection> {
        Ok((Accept::default(), Hooked))
    }
}

async fn start_hooked(
    tweak: impl FnOnce(&mut TransportConfig),
) -> (std::net::SocketAddr, CancellationToken) {
    let mut config = TransportConfig::secure_defaults();
    config.close_timeout = Duration::from_millis(500);
    tweak(&mut config);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let serve = palisade_transport::serve(
        listener,
        "hooked",
        Arc::new(HookedEp),
        Arc::new(config),
        shutdown.clone(),
        TaskTracker::new(),
    );
    tokio::spawn(serve);
    (addr, shutdown)
}

async fn next_text(ws: &mut Client) -> String {
    loop {
        let next = tokio::time::timeout(Duration::from_secs(5), ws.next()).await;
        match next.expect("a message within 5 s") {
            Some(Ok(WsMessage::Text(t))) => return t.to_string(),
            Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => continue,
            other => panic!("expected text, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn hooks_rewrite_queued_replies_and_pushes() {
    let (addr, _shutdown) = start_hooked(|_| {}).await;
    let mut ws = connect(addr).await;
    ws.send(WsMessage::text("abc")).await.unwrap();
    assert_eq!(next_text(&mut ws).await, "before");
    assert_eq!(next_text(&mut ws).await, "ABC");
    ws.send(WsMessage::text("push")).await.unwrap();
    assert_eq!(next_text(&mut ws).await, "push:pushed");
    // The kind a sender gives reaches on_push with the message.
    assert_eq!(next_text(&mut ws).await, "push7:tagged");
}

#[tokio::test]
async fn on_closing_message_precedes_every_server_close() {
    // The handler's own close.
    let (addr, shutdown) = start_hooked(|c| {
        c.idle_timeout = Duration::from_millis(400);
        c.ping_interval = Duration::ZERO;
    })
    .await;
    let mut ws = connect(addr).await;
    ws.send(WsMessage::text("bye")).await.unwrap();
    assert_eq!(next_text(&mut ws).await, "closing 4000 bye");
    assert_eq!(close_code(&mut ws).await, Some(4000));
    // A transport failure (idle timeout).
    let mut ws = connect(addr).await;
    assert_eq!(next_text(&mut ws).await, "closing 1001 idle timeout");
    assert_eq!(close_code(&mut ws).await, Some(1001));
    // Shutdown.
    let mut ws = connect(addr).await;
    ws.send(WsMessage::text("x")).await.unwrap();
    assert_eq!(next_text(&mut ws).await, "before");
    assert_eq!(next_text(&mut ws).await, "X");
    shutdown.cancel();
    assert_eq!(next_text(&mut ws).await, "closing 1001 server shutting down");
    assert_eq!(close_code(&mut ws).await, Some(1001));
}

#[tokio::test]
async fn pipelined_messages_then_a_close_get_every_reply_before_the_close() {
    let s = start(|_| {}).await;
    let mut ws = connect(s.addr).await;
    // One write: 300 messages and the close frame, so the server reads them in batches and
    // meets the close frame after replies it has not flushed yet.
    for i in 0..300 {
        ws.feed(WsMessage::text(format!("m{i}"))).await.unwrap();
    }
    ws.close(None).await.unwrap();
    let mut replies = Vec::new();
    let read = async {
        while let Some(Ok(m)) = ws.next().await {
            match m {
                WsMessage::Text(t) => replies.push(t.to_string()),
                WsMessage::Close(_) => break,
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read).await.expect("no close within 5 s");
    let expected: Vec<String> = (0..300).map(|i| format!("m{i}")).collect();
    assert_eq!(replies, expected);
    assert_eq!(wait_outcome(&s.rec).await, "peer None");
}

/// A masked client frame (FIN set) with a payload under 126 bytes.
fn masked_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    let mut out = vec![0x80 | opcode, 0x80 | payload.len() as u8];
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

#[tokio::test]
async fn replies_handled_before_a_protocol_error_go_out_before_its_1007() {
    let s = start(|_| {}).await;
    let mut tcp = TcpStream::connect(s.addr).await.unwrap();
    tcp.write_all(
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .unwrap();
    // Two good messages and invalid UTF-8 in one write: read and handled as one batch.
    let mut frames = masked_frame(0x1, b"one");
    frames.extend(masked_frame(0x1, b"two"));
    frames.extend(masked_frame(0x1, &[0xff, 0xfe]));
    tcp.write_all(&frames).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut out)).await;
    let head_end = out.windows(4).position(|w| w == b"\r\n\r\n").expect("upgrade answer") + 4;
    assert!(out.starts_with(b"HTTP/1.1 101"));
    let body = &out[head_end..];
    // Server frames are unmasked: text "one", text "two", then close 1007.
    assert!(body.starts_with(b"\x81\x03one\x81\x03two\x88"), "{body:?}");
    assert_eq!(&body[12..14], &1007u16.to_be_bytes(), "close code after the 0x88 header");
    assert!(wait_outcome(&s.rec).await.starts_with("failed invalid_utf8 Some(1007)"));
}
