//! Entry points for the cargo-fuzz targets in `fuzz/` (feature `fuzzing`, not an API): the
//! upgrade and a whole connection, over an in-memory pipe through the same code a TCP
//! connection runs ([`crate::listener`]'s upgrade, then the connection loop).
//!
//! Both run on a current-thread runtime with a paused clock, so timeouts fire as soon as nothing
//! else can happen and every input ends quickly. A hang is a bug and panics.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::runtime::Runtime;
use tokio_util::sync::CancellationToken;

use crate::handshake::{Accept, HandshakeRequest, Rejection};
use crate::listener::{self, ConnId, ConnInfo, Endpoint, Refusal};
use crate::{Close, Context, Handler, Message, TransportConfig, close_code};

/// A valid upgrade request, sent before the bytes of [`connection`].
pub const UPGRADE_REQUEST: &[u8] = b"GET /chat HTTP/1.1\r\nHost: fuzz\r\nUpgrade: websocket\r\n\
Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// Sends `request` as the client's bytes (then EOF) and runs the upgrade on them. Panics if the
/// server hangs, or answers with something that is not one well-formed HTTP/1.1 response head
/// (101 when it accepted, an error status otherwise).
pub fn handshake(request: &[u8]) {
    runtime().block_on(async {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let cfg = config();
        let info = info();
        let client_side = async move {
            let _ = client.write_all(request).await;
            let _ = client.shutdown().await;
            let mut out = Vec::new();
            let _ = client.read_to_end(&mut out).await;
            out
        };
        let server_side = async {
            let result = listener::upgrade(server, &info, &(), &FuzzEndpoint, &cfg).await;
            result.map(drop)
        };
        let run = async { tokio::join!(client_side, server_side) };
        let (response, result) = tokio::time::timeout(Duration::from_secs(60), run)
            .await
            .unwrap_or_else(|_| panic!("the upgrade hung on a closed input"));
        check_response(&response, result.is_ok());
    });
}

/// Completes a valid upgrade, then sends `input` as the client's frames and EOF, while reading
/// everything the server writes. The first byte picks the encoding: odd means `input[1..]` is a
/// list of frames (header byte, length byte, payload) that are masked and framed here, so the
/// fuzzer reaches fragmentation, control frames and close codes; even means raw bytes.
/// Panics if the connection does not end.
pub fn connection(input: &[u8]) {
    let bytes = match input.split_first() {
        Some((mode, rest)) if mode & 1 == 1 => frames(rest),
        Some((_, rest)) => rest.to_vec(),
        None => Vec::new(),
    };
    runtime().block_on(async {
        let (client, server) = tokio::io::duplex(16 * 1024);
        let (mut rd, mut wr) = tokio::io::split(client);
        let cfg = config();
        let info = info();
        let writer = async move {
            if wr.write_all(UPGRADE_REQUEST).await.is_ok() && wr.write_all(&bytes).await.is_ok() {
                let _ = wr.shutdown().await;
            }
        };
        let reader = async move {
            let _ = tokio::io::copy(&mut rd, &mut tokio::io::sink()).await;
        };
        let server_side = async {
            let (ws, handler) = listener::upgrade(server, &info, &(), &FuzzEndpoint, &cfg)
                .await
                .unwrap_or_else(|e| panic!("a valid upgrade request was refused: {e}"));
            crate::connection::run(ws, info.clone(), &cfg, handler, CancellationToken::new()).await
        };
        let run = async { tokio::join!(writer, reader, server_side) };
        if tokio::time::timeout(Duration::from_secs(600), run).await.is_err() {
            panic!("the connection did not end after the client's EOF");
        }
    });
}

/// Masked client frames from `data`: per frame a header byte (FIN bit, three RSV bits, opcode),
/// a length byte and that many payload bytes (fewer at the end of the input).
pub fn frames(mut data: &[u8]) -> Vec<u8> {
    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
    let mut out = Vec::with_capacity(data.len() * 2);
    while let [head, len, rest @ ..] = data {
        let n = usize::from(*len).min(rest.len());
        let (payload, tail) = rest.split_at(n);
        out.push(*head);
        // A length byte of 126 or more takes the 16-bit extended form, as real clients may.
        if n < 126 {
            out.push(0x80 | n as u8);
        } else {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        out.extend_from_slice(&MASK);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
        data = tail;
    }
    out
}

fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap_or_else(|e| panic!("cannot build the fuzzing runtime: {e}"))
    })
}

/// Small limits, so the fuzzer reaches them with short inputs.
fn config() -> TransportConfig {
    let mut cfg = TransportConfig::secure_defaults();
    cfg.max_message_bytes = 4096;
    cfg.max_frame_bytes = 2048;
    cfg.max_request_head_bytes = 2048;
    cfg.write_buffer_bytes = 1024;
    cfg.outbound_queue = 4;
    cfg
}

fn info() -> ConnInfo {
    ConnInfo {
        id: ConnId(0),
        peer: SocketAddr::from(([127, 0, 0, 1], 9)),
        endpoint: Arc::from("fuzz"),
    }
}

/// The server's bytes must be empty (peer gone) or one HTTP/1.1 response head.
fn check_response(response: &[u8], accepted: bool) {
    if response.is_empty() {
        assert!(!accepted, "the upgrade succeeded without a 101 response");
        return;
    }
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut parsed = httparse::Response::new(&mut headers);
    match parsed.parse(response) {
        Ok(httparse::Status::Complete(_)) => {}
        other => {
            panic!("the server's answer is not an http response head ({other:?}): {response:?}")
        }
    }
    let code = parsed.code.unwrap_or(0);
    if accepted {
        assert_eq!(code, 101, "accepted upgrade answered with {code}");
    } else {
        assert!((400..600).contains(&code), "refused upgrade answered with {code}");
    }
}

/// Accepts every upgrade except paths containing `refuse`; selects the last subprotocol offered.
struct FuzzEndpoint;

impl Endpoint for FuzzEndpoint {
    type Admission = ();
    type Handler = FuzzHandler;

    fn admit(&self, _peer: SocketAddr) -> Result<(), Refusal> {
        Ok(())
    }

    fn handshake(
        &self,
        _info: &ConnInfo,
        _admission: &(),
        request: &HandshakeRequest,
    ) -> Result<(Accept, FuzzHandler), Rejection> {
        if request.uri().path().contains("refuse") {
            return Err(Rejection::new(http::StatusCode::FORBIDDEN, "refused"));
        }
        let subprotocol = crate::handshake::offered_subprotocols(request).last().map(str::to_owned);
        Ok((Accept { subprotocol, ..Accept::default() }, FuzzHandler))
    }
}

/// Echoes; a few text commands reach the other handler paths.
struct FuzzHandler;

impl Handler for FuzzHandler {
    async fn on_message(&mut self, msg: Message, ctx: &mut Context) -> Result<(), Close> {
        if let Message::Text(t) = &msg {
            match t.as_str() {
                "close" => return Err(Close::new(close_code::NORMAL, "bye")),
                "deadline" => ctx.set_deadline(Some(std::time::Instant::now())),
                "push" => {
                    let handle = ctx.handle();
                    for _ in 0..8 {
                        let _ = handle.send(Message::Binary(vec![0; 512].into()));
                    }
                }
                _ => {}
            }
        }
        ctx.send(msg)
    }

    async fn on_deadline(&mut self, _ctx: &mut Context) -> Result<(), Close> {
        Err(Close::policy("deadline"))
    }
}
