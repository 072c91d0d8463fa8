//! The secure endpoint: the seed's authentication exchange, header tokens, timeouts and expiry.

use palisade_token::{Algorithm, Claims};

use crate::support::{
    SECRET, Server, authenticated, connect, connect_with, expect_binary, expect_close,
    expect_http_refusal, expect_text, mint, now, round_trip, send_binary, send_text,
};

/// Sends `first` as the first message and expects `reply` then close 1008 with `reason`.
async fn check_rejected(first: &str, reply: &str, reason: &str) {
    let server = Server::start("");
    let mut ws = connect(server.secure).await;
    send_text(&mut ws, first).await;
    expect_text(&mut ws, reply).await;
    expect_close(&mut ws, 1008, Some(reason)).await;
}

#[tokio::test]
async fn valid_token_gets_authenticated_then_echo() {
    let server = Server::start("");
    let mut ws = authenticated(&server, "42").await;
    round_trip(&mut ws, "after auth").await;
    round_trip(&mut ws, "ünïcødé ✓").await;
}

#[tokio::test]
async fn authenticated_binary_gets_prefix_bytes_then_payload() {
    let server = Server::start("");
    let mut ws = authenticated(&server, "42").await;
    send_binary(&mut ws, &[9, 8, 7]).await;
    expect_binary(&mut ws, b"Server received: \x09\x08\x07").await;
}

#[tokio::test]
async fn string_user_id_is_accepted() {
    let server = Server::start("");
    let mut claims = Claims::new("alice");
    claims.exp = Some(now() + 60);
    let mut ws = connect(server.secure).await;
    send_text(&mut ws, &mint(Algorithm::Hs256, SECRET, &claims)).await;
    expect_text(&mut ws, "Authenticated!").await;
}

#[tokio::test]
async fn expired_token_gets_token_expired_then_1008() {
    let server = Server::start("");
    let token = server.token("42", -120);
    let mut ws = connect(server.secure).await;
    send_text(&mut ws, &token).await;
    expect_text(&mut ws, "Token Expired").await;
    expect_close(&mut ws, 1008, Some("token expired")).await;
}

#[tokio::test]
async fn token_signed_with_another_secret_gets_invalid_token_then_1008() {
    let mut claims = Claims::new("42");
    claims.exp = Some(now() + 60);
    let forged = mint(Algorithm::Hs256, "another-secret-that-is-also-long-enough-xyz", &claims);
    check_rejected(&forged, "Invalid Token", "invalid token").await;
}

#[tokio::test]
async fn token_with_another_algorithm_gets_invalid_token_then_1008() {
    let mut claims = Claims::new("42");
    claims.exp = Some(now() + 60);
    let hs512 = mint(Algorithm::Hs512, &SECRET.repeat(2), &claims);
    check_rejected(&hs512, "Invalid Token", "invalid token").await;
}

#[tokio::test]
async fn malformed_token_gets_invalid_token_then_1008() {
    check_rejected("not.a.jwt", "Invalid Token", "invalid token").await;
}

#[tokio::test]
async fn token_without_exp_gets_invalid_token_then_1008() {
    let token = mint(Algorithm::Hs256, SECRET, &Claims::new("42"));
    check_rejected(&token, "Invalid Token", "invalid token").await;
}

#[tokio::test]
async fn binary_first_message_gets_invalid_token_then_1008() {
    let server = Server::start("");
    let mut ws = connect(server.secure).await;
    send_binary(&mut ws, server.token("42", 60).as_bytes()).await;
    expect_text(&mut ws, "Invalid Token").await;
    expect_close(&mut ws, 1008, Some("invalid token")).await;
}

#[tokio::test]
async fn no_token_in_time_gets_1008_authentication_timeout() {
    let server = Server::start("secure.auth_timeout_secs = 1");
    let mut ws = connect(server.secure).await;
    let started = std::time::Instant::now();
    expect_close(&mut ws, 1008, Some("authentication timeout")).await;
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(900),
        "closed too early: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn token_expiring_during_the_session_gets_token_expired_then_1008() {
    let server = Server::start("");
    let token = server.token("42", 2);
    let mut ws = connect(server.secure).await;
    send_text(&mut ws, &token).await;
    expect_text(&mut ws, "Authenticated!").await;
    round_trip(&mut ws, "still valid").await;
    expect_text(&mut ws, "Token Expired").await;
    expect_close(&mut ws, 1008, Some("token expired")).await;
}

#[tokio::test]
async fn header_token_authenticates_at_once() {
    let server = Server::start("");
    let bearer = format!("Bearer {}", server.token("42", 60));
    let mut ws =
        connect_with(server.secure, &[("authorization", &bearer)]).await.expect("handshake");
    expect_text(&mut ws, "Authenticated!").await;
    round_trip(&mut ws, "no token message needed").await;
}

#[tokio::test]
async fn bad_header_token_gets_http_401() {
    let server = Server::start("");
    expect_http_refusal(server.secure, &[("authorization", "Bearer not.a.jwt")], 401).await;
    let expired = format!("Bearer {}", server.token("42", -120));
    expect_http_refusal(server.secure, &[("authorization", &expired)], 401).await;
    // The server keeps serving.
    let _ws = authenticated(&server, "42").await;
}

#[tokio::test]
async fn tokens_never_reach_the_logs() {
    let server = Server::start("");
    let good = server.token("42", 60);
    let expired = server.token("43", -120);
    let mut ws = connect(server.secure).await;
    send_text(&mut ws, &good).await;
    expect_text(&mut ws, "Authenticated!").await;
    let mut ws2 = connect(server.secure).await;
    send_text(&mut ws2, &expired).await;
    expect_text(&mut ws2, "Token Expired").await;
    expect_close(&mut ws2, 1008, None).await;
    let bearer = format!("Bearer {}", server.token("44", 60).replace('.', ".x"));
    expect_http_refusal(server.secure, &[("authorization", &bearer)], 401).await;
    // Let the logs settle, then make sure some logging happened and no token is in it.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(server.console().contains("authentication failed"), "console:\n{}", server.console());
    for t in [&good, &expired] {
        server.assert_logs_never_contain(t);
        // Nor the signature alone.
        server.assert_logs_never_contain(t.rsplit('.').next().expect("signature"));
    }
}

#[tokio::test]
async fn sessions_over_the_per_user_cap_get_1008() {
    let server = Server::start("secure.max_sessions_per_user = 1");
    let mut first = authenticated(&server, "42").await;
    let mut second = connect(server.secure).await;
    send_text(&mut second, &server.token("42", 60)).await;
    expect_close(&mut second, 1008, Some("too many sessions for this user")).await;
    round_trip(&mut first, "first still works").await;
    let _other_user = authenticated(&server, "43").await;
}

#[tokio::test]
async fn message_flood_gets_1008_rate_limit_exceeded() {
    let server = Server::start("firewall.messages_per_sec = 1\nfirewall.message_burst = 2");
    let mut ws = connect(server.echo).await;
    for i in 0..5 {
        send_text(&mut ws, &format!("m{i}")).await;
    }
    expect_text(&mut ws, "Server received: m0").await;
    expect_text(&mut ws, "Server received: m1").await;
    expect_close(&mut ws, 1008, Some("rate limit exceeded")).await;
}

#[tokio::test]
async fn error_in_a_session_is_logged_with_the_user_id() {
    use tokio::io::AsyncWriteExt;
    let server = Server::start("");
    let mut s = crate::support::raw_upgrade(server.secure).await;
    let token = server.token("42", 60);
    s.write_all(&crate::support::masked(0x1, true, token.as_bytes())).await.expect("write token");
    // Then an unmasked frame.
    s.write_all(&crate::support::frame(true, 0, 0x1, None, b"x")).await.expect("write frame");
    assert_eq!(crate::support::read_close_code(&mut s).await, 1002);
    let line = server.expect_error_line(&[("kind", "protocol"), ("endpoint", "secure")]);
    assert_eq!(line["user_id"], "42", "{line}");
    server.assert_logs_never_contain(&token);
}
