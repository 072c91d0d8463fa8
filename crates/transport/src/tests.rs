//! Unit tests for the handshake checks and the error classification.

use crate::handshake::{HandshakeError, check_upgrade, rejection_for};
use crate::{ConnError, close_code};

fn request(headers: &[(&str, &str)]) -> http::Request<()> {
    let mut b = http::Request::builder().method("GET").uri("/");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).unwrap()
}

const GOOD: [(&str, &str); 4] = [
    ("Upgrade", "websocket"),
    ("Connection", "keep-alive, Upgrade"),
    ("Sec-WebSocket-Version", "13"),
    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
];

#[track_caller]
fn check_refused(headers: &[(&str, &str)], why: &str) {
    match check_upgrade(&request(headers)) {
        Err(HandshakeError::NotWebSocket(w)) => assert!(w.contains(why), "{w}"),
        other => panic!("expected refusal mentioning {why}, got {other:?}"),
    }
}

#[test]
fn valid_upgrade_is_accepted() {
    assert!(check_upgrade(&request(&GOOD)).is_ok());
}

#[test]
fn plain_http_request_is_refused_with_426() {
    check_refused(&[], "Upgrade");
    let rejection = rejection_for(&HandshakeError::NotWebSocket("x")).unwrap();
    assert_eq!(rejection.status.as_u16(), 426);
}

#[test]
fn missing_connection_upgrade_is_refused() {
    check_refused(&GOOD[..1], "Connection");
}

#[test]
fn wrong_version_is_refused() {
    check_refused(&[GOOD[0], GOOD[1], ("Sec-WebSocket-Version", "8"), GOOD[3]], "Version");
}

#[test]
fn malformed_key_is_refused() {
    check_refused(&[GOOD[0], GOOD[1], GOOD[2], ("Sec-WebSocket-Key", "short")], "Key");
}

#[test]
fn errors_map_to_rfc_close_codes() {
    let cases = [
        (ConnError::Protocol("x".into()), close_code::PROTOCOL_ERROR),
        (ConnError::InvalidUtf8, close_code::INVALID_PAYLOAD),
        (ConnError::MessageTooBig("x".into()), close_code::MESSAGE_TOO_BIG),
        (ConnError::SlowConsumer(crate::SlowConsumer::QueueFull), close_code::POLICY_VIOLATION),
        (ConnError::IdleTimeout, close_code::GOING_AWAY),
    ];
    for (err, code) in cases {
        assert_eq!(err.close().code, code, "{err}");
    }
}

#[test]
fn reset_and_eof_are_peer_vanished() {
    for kind in [std::io::ErrorKind::ConnectionReset, std::io::ErrorKind::UnexpectedEof] {
        let e = ConnError::from_io(std::io::Error::from(kind));
        assert_eq!(e.kind(), "peer_vanished");
    }
}
