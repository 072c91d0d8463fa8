//! Shared helpers: run the real `palisade` binary on loopback, talk to it with a WebSocket
//! client, with raw TCP for malformed input, and with raw HTTP/1.1 for the admin API.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant, SystemTime};

use futures_util::{SinkExt, StreamExt};
use palisade_testkit::Palisade;
use palisade_token::{Algorithm, Claims, Key, TokenCodec, TokenConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long any single client read or step may take before the test fails.
pub(crate) const STEP: Duration = Duration::from_secs(5);

/// The HS256 secret every test server uses (at least 32 bytes).
pub(crate) const SECRET: &str = "integration-test-secret-that-is-long-enough-0123456789";

/// A WebSocket client connection.
pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A running `palisade` process with its addresses and folder (configuration, console, `log/`);
/// killed on drop. Started by [`Server::start`] or, for more than overrides, [`Server::builder`].
pub(crate) struct Server {
    process: Palisade,
    pub(crate) echo: SocketAddr,
    pub(crate) secure: SocketAddr,
    pub(crate) admin: SocketAddr,
    dir: tempfile::TempDir,
}

/// A server to start: the base test configuration (all three listeners on `127.0.0.1:0`,
/// `auth.leeway_secs = 0`, `log.level = "info"`, `log.dir` in its folder) plus what is set here.
pub(crate) struct Builder {
    dir: tempfile::TempDir,
    keys: BTreeMap<String, String>,
    env: Vec<(OsString, OsString)>,
    name: String,
}

impl Builder {
    /// The server's folder, for files that go with its configuration.
    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `contents` to `name` (parent folders included) in the server's folder; returns
    /// its path.
    pub(crate) fn write_file(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("create folder");
        }
        std::fs::write(&path, contents).unwrap_or_else(|e| panic!("write {name}: {e}"));
        path
    }

    /// Sets the dotted key `key` (such as `cluster.node_id`) to the TOML value `value`.
    pub(crate) fn set(mut self, key: &str, value: impl Into<String>) -> Builder {
        self.keys.insert(key.to_owned(), value.into());
        self
    }

    /// Lines of TOML dotted keys such as `secure.auth_timeout_secs = 1`, which replace keys of
    /// the same name.
    pub(crate) fn overrides(mut self, lines: &str) -> Builder {
        for line in lines.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let (k, v) = line
                .split_once('=')
                .unwrap_or_else(|| panic!("override {line:?}: expected key = value"));
            self.keys.insert(k.trim().to_owned(), v.trim().to_owned());
        }
        self
    }

    /// An environment variable for the process (e.g. a service manager's `NOTIFY_SOCKET`).
    pub(crate) fn env(mut self, key: &str, value: impl AsRef<OsStr>) -> Builder {
        self.env.push((key.into(), value.as_ref().to_owned()));
        self
    }

    /// What failure messages call the server (`palisade` unless told, e.g. `node node-a`).
    pub(crate) fn name(mut self, name: &str) -> Builder {
        self.name = name.to_owned();
        self
    }

    /// Writes the configuration, starts the binary with the test secret in
    /// `PALISADE_JWT_SECRET` (and no `PALISADE_REDIS_URL`), and waits (bounded) for its three
    /// addresses.
    pub(crate) fn start(self) -> Server {
        let text: String = self.keys.iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
        let config = self.dir.path().join("palisade.toml");
        std::fs::write(&config, &text).expect("write config");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_palisade"));
        cmd.env("PALISADE_JWT_SECRET", SECRET).env_remove("PALISADE_REDIS_URL").envs(self.env);
        let console = self.dir.path().join("stderr.log");
        let listeners = ["echo", "secure", "admin"];
        let process = Palisade::start(cmd, &config, &console, &listeners, Duration::from_secs(15))
            .unwrap_or_else(|e| panic!("{}: {e}\nconfig:\n{text}", self.name));
        let addr = |name| process.addr(name).expect("waited for");
        let (echo, secure, admin) = (addr("echo"), addr("secure"), addr("admin"));
        Server { process, echo, secure, admin, dir: self.dir }
    }
}

impl Server {
    /// Starts the server with the base test configuration plus `overrides`: lines of TOML dotted
    /// keys such as `secure.auth_timeout_secs = 1`, which replace base keys of the same name.
    pub(crate) fn start(overrides: &str) -> Server {
        Server::builder().overrides(overrides).start()
    }

    /// [`Server::start`] with extra environment variables (e.g. a service manager's
    /// `NOTIFY_SOCKET`).
    pub(crate) fn start_with_env(overrides: &str, env: &[(&str, &OsStr)]) -> Server {
        env.iter().fold(Server::builder(), |b, (k, v)| b.env(k, v)).overrides(overrides).start()
    }

    /// A server to configure further (files, keys, environment) before [`Builder::start`].
    pub(crate) fn builder() -> Builder {
        let dir = tempfile::tempdir().expect("tempdir");
        let log_dir = toml_path(&dir.path().join("log"));
        let keys = [
            ("echo.listen", "\"127.0.0.1:0\"".to_owned()),
            ("secure.listen", "\"127.0.0.1:0\"".to_owned()),
            ("admin.listen", "\"127.0.0.1:0\"".to_owned()),
            ("auth.leeway_secs", "0".to_owned()),
            ("log.dir", log_dir),
            ("log.level", "\"info\"".to_owned()),
        ];
        let keys = keys.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        Builder { dir, keys, env: Vec::new(), name: "palisade".to_owned() }
    }

    /// The server's folder (configuration, console, `log/`).
    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The configuration file the server was started with (tests rewrite it to reload).
    pub(crate) fn config_path(&self) -> PathBuf {
        self.dir.path().join("palisade.toml")
    }

    /// The process id, for signals.
    pub(crate) fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Sends SIGTERM to the process.
    #[track_caller]
    pub(crate) fn terminate(&self) {
        self.process.terminate().unwrap_or_else(|e| panic!("{e}"));
    }

    /// SIGTERM, then waits (bounded) for a clean exit (status 0).
    #[track_caller]
    pub(crate) fn stop(&mut self) {
        self.terminate();
        let status = self.wait_exit(Duration::from_secs(10));
        assert!(status.success(), "exit status after SIGTERM: {status}");
    }

    /// SIGKILL: no chance to clean up (e.g. its Redis entries).
    pub(crate) fn kill(&mut self) {
        self.process.kill();
    }

    /// True once the process has exited (and is reaped: a zombie still answers `kill -0`).
    pub(crate) fn exited(&mut self) -> bool {
        self.process.child.try_wait().expect("try_wait").is_some()
    }

    /// Waits (bounded) for the process to exit.
    #[track_caller]
    pub(crate) fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.process.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "palisade did not exit within {limit:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The error log file, `log/websocket_errors.log`.
    pub(crate) fn error_log_path(&self) -> PathBuf {
        self.dir.path().join("log").join("websocket_errors.log")
    }

    /// The error log (`websocket_errors.log`) as it is now.
    pub(crate) fn error_log(&self) -> String {
        std::fs::read_to_string(self.error_log_path()).unwrap_or_default()
    }

    /// The console output (stderr) as it is now.
    pub(crate) fn console(&self) -> String {
        self.process.console()
    }

    /// Waits (bounded) for an error-log line whose JSON fields match all of `fields`, and returns
    /// it. Each value must equal the line's field as a string or a number.
    #[track_caller]
    pub(crate) fn expect_error_line(&self, fields: &[(&str, &str)]) -> serde_json::Value {
        let deadline = Instant::now() + STEP;
        loop {
            let log = self.error_log();
            for line in log.lines() {
                let v: serde_json::Value = serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("error log line is not JSON ({e}): {line}"));
                if fields.iter().all(|(k, want)| field_is(&v, k, want)) {
                    assert_eq!(v["level"], "ERROR", "error log holds a non-ERROR line: {line}");
                    return v;
                }
            }
            if Instant::now() >= deadline {
                panic!(
                    "no error-log line with {fields:?}; the error log is:\n{log}\nconsole:\n{}",
                    self.console()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Fails if `secret` appears in the error log or on the console.
    #[track_caller]
    pub(crate) fn assert_logs_never_contain(&self, secret: &str) {
        assert!(!self.error_log().contains(secret), "the error log contains {secret:?}");
        assert!(!self.console().contains(secret), "the console log contains {secret:?}");
    }

    /// A token for `user_id` signed with the server's secret, expiring `ttl_secs` from now
    /// (negative: already expired).
    pub(crate) fn token(&self, user_id: &str, ttl_secs: i64) -> String {
        let mut claims = Claims::new(user_id);
        claims.exp = Some(now().saturating_add_signed(ttl_secs));
        claims.iat = Some(now());
        mint(Algorithm::Hs256, SECRET, &claims)
    }
}

/// `path` as a TOML string.
pub(crate) fn toml_path(path: &Path) -> String {
    toml_str(&path.display().to_string())
}

fn field_is(v: &serde_json::Value, key: &str, want: &str) -> bool {
    match &v[key] {
        serde_json::Value::String(s) => s == want,
        serde_json::Value::Number(n) => n.to_string() == want,
        _ => false,
    }
}

/// `s` as a TOML string (quoted and escaped), e.g. a path in an override.
pub(crate) fn toml_str(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

/// Seconds since the Unix epoch.
pub(crate) fn now() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).expect("clock after 1970").as_secs()
}

/// Signs `claims` with `alg` and `secret`.
pub(crate) fn mint(alg: Algorithm, secret: &str, claims: &Claims) -> String {
    let codec = TokenCodec::new(TokenConfig::new(alg, vec![Key::secret(secret)])).expect("codec");
    codec.encode(claims).expect("encode")
}

// ---- WebSocket client ----

/// Connects a WebSocket client to `addr`.
pub(crate) async fn connect(addr: SocketAddr) -> Ws {
    connect_with(addr, &[]).await.unwrap_or_else(|e| panic!("connect to {addr}: {e}"))
}

/// Connects with extra request headers; returns the handshake error (e.g. an HTTP refusal).
pub(crate) async fn connect_with(
    addr: SocketAddr,
    headers: &[(&str, &str)],
) -> Result<Ws, tungstenite::Error> {
    let req = ws_request(addr, headers)?;
    match timeout(STEP, tokio_tungstenite::connect_async(req)).await {
        Ok(r) => r.map(|(ws, _)| ws),
        Err(_) => panic!("websocket handshake with {addr} timed out"),
    }
}

/// A WebSocket upgrade request for `ws://ADDR/` with extra headers.
fn ws_request(
    addr: SocketAddr,
    headers: &[(&str, &str)],
) -> Result<http::Request<()>, tungstenite::Error> {
    let mut req = format!("ws://{addr}/").into_client_request()?;
    for (k, v) in headers {
        req.headers_mut().insert(
            http::HeaderName::from_bytes(k.as_bytes()).expect("header name"),
            http::HeaderValue::from_str(v).expect("header value"),
        );
    }
    Ok(req)
}

/// Expects the handshake to be refused with this HTTP status.
pub(crate) async fn expect_http_refusal(addr: SocketAddr, headers: &[(&str, &str)], status: u16) {
    match connect_with(addr, headers).await {
        Ok(_) => panic!("handshake with {headers:?} was accepted; expected HTTP {status}"),
        Err(tungstenite::Error::Http(resp)) => {
            assert_eq!(
                resp.status().as_u16(),
                status,
                "handshake refusal status (headers {headers:?})"
            )
        }
        Err(e) => panic!("handshake failed with {e}; expected HTTP {status}"),
    }
}

/// Sends a text message.
pub(crate) async fn send_text(ws: &mut Ws, text: &str) {
    timeout(STEP, ws.send(Message::text(text))).await.expect("send timed out").expect("send text");
}

/// Sends a binary message.
pub(crate) async fn send_binary(ws: &mut Ws, data: &[u8]) {
    timeout(STEP, ws.send(Message::binary(data.to_vec())))
        .await
        .expect("send timed out")
        .expect("send binary");
}

/// The next data or close message (pings and pongs skipped), within [`STEP`].
pub(crate) async fn next_message(ws: &mut Ws) -> Message {
    loop {
        let item = timeout(STEP, ws.next()).await.expect("no message from the server in time");
        match item {
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(m)) => return m,
            Some(Err(e)) => panic!("client read error: {e}"),
            None => panic!("the connection ended without a close frame"),
        }
    }
}

/// Expects the next message to be this text.
pub(crate) async fn expect_text(ws: &mut Ws, expected: &str) {
    match next_message(ws).await {
        Message::Text(t) => assert_eq!(t.as_str(), expected),
        other => panic!("expected text {expected:?}, got {other:?}"),
    }
}

/// Expects the next message to be these bytes.
pub(crate) async fn expect_binary(ws: &mut Ws, expected: &[u8]) {
    match next_message(ws).await {
        Message::Binary(b) => assert_eq!(&b[..], expected),
        other => panic!("expected binary {expected:?}, got {other:?}"),
    }
}

/// Expects the next message to be a close frame with this code (and reason, when given).
pub(crate) async fn expect_close(ws: &mut Ws, code: u16, reason: Option<&str>) {
    match next_message(ws).await {
        Message::Close(Some(frame)) => {
            assert_eq!(
                u16::from(frame.code),
                code,
                "close code (reason {:?})",
                frame.reason.as_str()
            );
            if let Some(r) = reason {
                assert_eq!(frame.reason.as_str(), r, "close reason");
            }
        }
        other => panic!("expected close {code}, got {other:?}"),
    }
}

/// Sends `text` and expects the echo `Server received: text` back.
pub(crate) async fn round_trip(ws: &mut Ws, text: &str) {
    send_text(ws, text).await;
    expect_text(ws, &format!("Server received: {text}")).await;
}

/// A fresh connection to the echo endpoint still gets its echo.
pub(crate) async fn assert_echo_serves(server: &Server) {
    let mut ws = connect(server.echo).await;
    round_trip(&mut ws, "still there?").await;
    let _ = ws.close(None).await;
}

/// Connects to the secure endpoint and authenticates as `user_id`.
pub(crate) async fn authenticated(server: &Server, user_id: &str) -> Ws {
    let mut ws = connect(server.secure).await;
    send_text(&mut ws, &server.token(user_id, 60)).await;
    expect_text(&mut ws, "Authenticated!").await;
    ws
}

// ---- raw TCP ----

/// Opens a TCP connection and completes the WebSocket upgrade by hand.
pub(crate) async fn raw_upgrade(addr: SocketAddr) -> TcpStream {
    let mut s =
        timeout(STEP, TcpStream::connect(addr)).await.expect("connect timed out").expect("connect");
    let req = format!(
        "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.expect("write upgrade");
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 101"), "expected 101, got:\n{head}");
    s
}

/// Reads an HTTP response head byte by byte (so no frame bytes are consumed).
pub(crate) async fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = timeout(STEP, s.read(&mut byte))
            .await
            .expect("response head timed out")
            .expect("read head");
        assert!(
            n == 1,
            "connection closed during the response head: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    String::from_utf8(head).expect("ascii head")
}

/// One client frame. `mask: None` sends it unmasked (a protocol violation from a client).
pub(crate) fn frame(
    fin: bool,
    rsv: u8,
    opcode: u8,
    mask: Option<[u8; 4]>,
    payload: &[u8],
) -> Vec<u8> {
    let mut out = vec![(u8::from(fin) << 7) | ((rsv & 0b111) << 4) | (opcode & 0x0f)];
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n @ 0..=125 => out.push(mask_bit | n as u8),
        n @ 126..=0xffff => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(m) => {
            out.extend_from_slice(&m);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ m[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// A well-formed masked client frame.
pub(crate) fn masked(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
    frame(fin, 0, opcode, Some([0x12, 0x34, 0x56, 0x78]), payload)
}

/// The next server frame, within `limit`: its opcode and payload.
pub(crate) async fn read_frame(s: &mut TcpStream, limit: Duration) -> (u8, Vec<u8>) {
    let frame = async {
        let mut h = [0u8; 2];
        s.read_exact(&mut h).await.expect("server frame header");
        assert_eq!(h[1] & 0x80, 0, "server frames must not be masked");
        let len = match h[1] & 0x7f {
            126 => {
                let mut b = [0u8; 2];
                s.read_exact(&mut b).await.expect("len16");
                u64::from(u16::from_be_bytes(b))
            }
            127 => {
                let mut b = [0u8; 8];
                s.read_exact(&mut b).await.expect("len64");
                u64::from_be_bytes(b)
            }
            n => u64::from(n),
        };
        let mut payload = vec![0u8; usize::try_from(len).expect("frame length")];
        s.read_exact(&mut payload).await.expect("server frame payload");
        (h[0] & 0x0f, payload)
    };
    timeout(limit, frame).await.expect("no frame from the server in time")
}

/// Reads server frames until a close frame; returns its code.
pub(crate) async fn read_close_code(s: &mut TcpStream) -> u16 {
    timeout(STEP, async {
        loop {
            let (opcode, payload) = read_frame(s, STEP).await;
            if opcode == 0x8 {
                assert!(payload.len() >= 2, "close frame without a code");
                return u16::from_be_bytes([payload[0], payload[1]]);
            }
        }
    })
    .await
    .expect("no close frame from the server in time")
}

/// Expects the server to close the socket without answering anything.
pub(crate) async fn expect_dropped(addr: SocketAddr) {
    let Ok(s) = TcpStream::connect(addr).await else { return };
    expect_no_answer(s, "the connection").await;
}

/// Sends an upgrade request on `s` and expects the server to close it without an answer.
async fn expect_no_answer(mut s: TcpStream, what: &str) {
    let _ = s
        .write_all(
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        )
        .await;
    let mut buf = [0u8; 256];
    match timeout(STEP, s.read(&mut buf)).await.expect("the server neither answered nor closed") {
        Ok(0) | Err(_) => {}
        Ok(n) => {
            panic!("expected {what} to be dropped, got {:?}", String::from_utf8_lossy(&buf[..n]))
        }
    }
}

// ---- raw HTTP ----

/// An HTTP response: status and body.
#[derive(Debug)]
pub(crate) struct HttpResponse {
    pub(crate) status: u16,
    pub(crate) head: String,
    pub(crate) body: String,
}

impl HttpResponse {
    /// The body as JSON.
    #[track_caller]
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not json ({e}): {}", self.body))
    }
}

/// Sends one HTTP/1.1 request (`Connection: close`) and reads the whole response.
pub(crate) async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> HttpResponse {
    let mut s =
        timeout(STEP, TcpStream::connect(addr)).await.expect("connect timed out").expect("connect");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).await.expect("write request");
    let mut raw = Vec::new();
    timeout(STEP, s.read_to_end(&mut raw))
        .await
        .expect("http response timed out")
        .expect("read response");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an http response: {text:?}"));
    HttpResponse { status, head: head.to_owned(), body: dechunk(head, body) }
}

/// The value of one sample (`name{labels}`) in a Prometheus exposition.
pub(crate) fn metric(exposition: &str, sample: &str) -> Option<f64> {
    exposition.lines().find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Undoes `Transfer-Encoding: chunked` when the head says so.
fn dechunk(head: &str, body: &str) -> String {
    if !head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        return body.to_owned();
    }
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

// ---- distinct loopback source addresses ----

/// `127.0.0.n`: a loopback source address (Linux routes all of 127.0.0.0/8 to `lo`).
pub(crate) fn lo(n: u8) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::new(127, 0, 0, n)
}

/// A TCP connection to `addr` from the source address `from`.
pub(crate) async fn tcp_from(
    from: std::net::Ipv4Addr,
    addr: SocketAddr,
) -> std::io::Result<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((from, 0)))?;
    timeout(STEP, socket.connect(addr))
        .await
        .unwrap_or_else(|_| panic!("connect from {from} to {addr} timed out"))
}

/// Connects a WebSocket client from the source address `from`, with extra request headers;
/// returns the handshake error (e.g. an HTTP refusal).
pub(crate) async fn connect_from_with(
    from: std::net::Ipv4Addr,
    addr: SocketAddr,
    headers: &[(&str, &str)],
) -> Result<Ws, tungstenite::Error> {
    let req = ws_request(addr, headers)?;
    let stream = tcp_from(from, addr).await?;
    match timeout(STEP, tokio_tungstenite::client_async(req, MaybeTlsStream::Plain(stream))).await {
        Ok(r) => r.map(|(ws, _)| ws),
        Err(_) => panic!("websocket handshake from {from} with {addr} timed out"),
    }
}

/// Connects a WebSocket client from the source address `from`.
pub(crate) async fn connect_from(from: std::net::Ipv4Addr, addr: SocketAddr) -> Ws {
    connect_from_with(from, addr, &[])
        .await
        .unwrap_or_else(|e| panic!("connect from {from} to {addr}: {e}"))
}

/// Expects a handshake from `from` to be refused with this HTTP status.
pub(crate) async fn expect_http_refusal_from(
    from: std::net::Ipv4Addr,
    addr: SocketAddr,
    headers: &[(&str, &str)],
    status: u16,
) {
    match connect_from_with(from, addr, headers).await {
        Ok(_) => {
            panic!("handshake from {from} with {headers:?} was accepted; expected HTTP {status}")
        }
        Err(tungstenite::Error::Http(resp)) => assert_eq!(
            resp.status().as_u16(),
            status,
            "handshake refusal status (from {from}, headers {headers:?})"
        ),
        Err(e) => panic!("handshake from {from} failed with {e}; expected HTTP {status}"),
    }
}

/// Expects the server to close a connection from `from` without answering anything.
pub(crate) async fn expect_dropped_from(from: std::net::Ipv4Addr, addr: SocketAddr) {
    let Ok(s) = tcp_from(from, addr).await else { return };
    expect_no_answer(s, &format!("the connection from {from}")).await;
}

/// A fresh connection from `from` to `addr` (an echo listener) gets its echo.
pub(crate) async fn assert_echo_serves_from(from: std::net::Ipv4Addr, addr: SocketAddr) {
    let mut ws = connect_from(from, addr).await;
    round_trip(&mut ws, &format!("hello from {from}")).await;
    let _ = ws.close(None).await;
}

/// Polls `GET /metrics` (with `headers`) until every `(sample, value)` holds, within [`STEP`];
/// returns the exposition.
pub(crate) async fn wait_for_metrics(
    server: &Server,
    headers: &[(&str, &str)],
    want: &[(&str, f64)],
) -> String {
    let deadline = Instant::now() + STEP;
    loop {
        let resp = http(server.admin, "GET", "/metrics", headers, "").await;
        assert_eq!(resp.status, 200, "GET /metrics: {resp:?}");
        let wrong: Vec<_> = want
            .iter()
            .filter(|(sample, value)| metric(&resp.body, sample) != Some(*value))
            .map(|(sample, value)| {
                format!("{sample}: want {value}, have {:?}", metric(&resp.body, sample))
            })
            .collect();
        if wrong.is_empty() {
            return resp.body;
        }
        if Instant::now() >= deadline {
            panic!("metrics never matched:\n{}\nexposition:\n{}", wrong.join("\n"), resp.body);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
