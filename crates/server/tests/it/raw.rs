//! Malformed input over raw TCP: each gets its close code and an ERROR line, and neither other
//! connections nor the server are affected.

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::support::{
    STEP, Server, assert_echo_serves, connect, frame, http, masked, raw_upgrade, read_close_code,
    round_trip,
};

const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CONTINUATION: u8 = 0x0;

/// Sends `bytes` after a good upgrade on the echo endpoint of a server with a 1 KiB message
/// limit, and expects close `code`, an ERROR line of `kind` with that `close_code`, a bystander
/// connection that still echoes, and a server that still accepts new connections.
async fn check_violation(bytes: &[u8], code: u16, kind: &str) {
    let server = Server::start("limits.max_message_bytes = 1024\nlimits.max_frame_bytes = 1024");
    let mut bystander = connect(server.echo).await;
    round_trip(&mut bystander, "before").await;

    let mut s = raw_upgrade(server.echo).await;
    s.write_all(bytes).await.expect("write frame");
    assert_eq!(read_close_code(&mut s).await, code);

    let line = server.expect_error_line(&[("kind", kind), ("endpoint", "echo")]);
    for field in ["conn", "peer", "endpoint", "kind", "close_code"] {
        assert!(line.get(field).is_some(), "error line lacks {field:?}: {line}");
    }
    assert_eq!(close_code_of(&line), Some(code), "close_code field of {line}");

    round_trip(&mut bystander, "after").await;
    assert_echo_serves(&server).await;
}

/// The `close_code` field, whether logged as a number or (see
/// `error_log_close_code_is_a_json_number`) as Debug text `Some(1002)`.
fn close_code_of(line: &serde_json::Value) -> Option<u16> {
    match &line["close_code"] {
        serde_json::Value::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
        serde_json::Value::String(s) => s.strip_prefix("Some(")?.strip_suffix(')')?.parse().ok(),
        _ => None,
    }
}

// Log consumers filter on `close_code`, so it must be the bare number, not Rust Debug text.
#[tokio::test]
async fn error_log_close_code_is_a_json_number() {
    let server = Server::start("");
    let mut s = raw_upgrade(server.echo).await;
    s.write_all(&frame(true, 0, TEXT, None, b"hi")).await.expect("write frame");
    assert_eq!(read_close_code(&mut s).await, 1002);
    let line = server.expect_error_line(&[("kind", "protocol")]);
    assert_eq!(line["close_code"], 1002, "close_code field of {line}");
}

#[tokio::test]
async fn unmasked_client_frame_gets_1002() {
    check_violation(&frame(true, 0, TEXT, None, b"hi"), 1002, "protocol").await;
}

#[tokio::test]
async fn rsv_bits_without_an_extension_get_1002() {
    let bad = frame(true, 0b100, TEXT, Some([1, 2, 3, 4]), b"hi");
    check_violation(&bad, 1002, "protocol").await;
}

#[tokio::test]
async fn reserved_opcode_gets_1002() {
    check_violation(&frame(true, 0, 0x3, Some([1, 2, 3, 4]), b"hi"), 1002, "protocol").await;
}

#[tokio::test]
async fn invalid_utf8_text_gets_1007() {
    check_violation(&masked(TEXT, true, &[b'o', b'k', 0xff, 0xfe]), 1007, "invalid_utf8").await;
}

#[tokio::test]
async fn frame_over_the_limit_gets_1009() {
    check_violation(&masked(BINARY, true, &[b'a'; 2000]), 1009, "message_too_big").await;
}

#[tokio::test]
async fn fragmented_message_over_the_limit_gets_1009() {
    let mut bytes = masked(TEXT, false, &[b'a'; 800]);
    bytes.extend(masked(CONTINUATION, true, &[b'b'; 800]));
    check_violation(&bytes, 1009, "message_too_big").await;
}

#[tokio::test]
async fn frame_cut_off_by_a_reset_is_logged_as_peer_vanished() {
    let server = Server::start("");
    let mut bystander = connect(server.echo).await;
    let mut s = raw_upgrade(server.echo).await;
    // Announce 100 bytes, send 10, then reset the connection.
    let whole = masked(TEXT, true, &[b'z'; 100]);
    s.write_all(&whole[..16]).await.expect("write partial frame");
    reset(s).await;
    let line = server.expect_error_line(&[("kind", "peer_vanished"), ("endpoint", "echo")]);
    for field in ["conn", "peer", "endpoint", "kind"] {
        assert!(line.get(field).is_some(), "error line lacks {field:?}: {line}");
    }
    round_trip(&mut bystander, "after the reset").await;
    assert_echo_serves(&server).await;
}

/// Closes with SO_LINGER 0 so the kernel sends RST instead of FIN.
async fn reset(s: TcpStream) {
    s.set_zero_linger().expect("set_zero_linger");
    drop(s);
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
}

#[tokio::test]
async fn plain_http_get_gets_426_not_a_hang() {
    let server = Server::start("");
    for addr in [server.echo, server.secure] {
        let resp =
            tokio::time::timeout(STEP, http(addr, "GET", "/", &[], "")).await.expect("no hang");
        assert_eq!(resp.status, 426, "{resp:?}");
        assert!(resp.head.to_ascii_lowercase().contains("upgrade: websocket"), "{resp:?}");
    }
    assert_echo_serves(&server).await;
}

#[tokio::test]
async fn garbage_request_gets_400() {
    let server = Server::start("");
    let mut s = TcpStream::connect(server.echo).await.expect("connect");
    s.write_all(b"\x00\x01\x02 nonsense\r\n\r\n").await.expect("write");
    let mut out = Vec::new();
    let read =
        tokio::time::timeout(STEP, tokio::io::AsyncReadExt::read_to_end(&mut s, &mut out)).await;
    read.expect("no hang").expect("read");
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert_echo_serves(&server).await;
}

#[tokio::test]
async fn client_vanishing_mid_session_does_not_affect_others() {
    let server = Server::start("");
    let mut bystander = crate::support::authenticated(&server, "7").await;
    for _ in 0..20 {
        let s = raw_upgrade(server.echo).await;
        reset(s).await;
    }
    round_trip(&mut bystander, "fine").await;
    assert_echo_serves(&server).await;
}
