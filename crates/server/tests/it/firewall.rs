//! Firewall decisions as a client sees them: 403, dropped connections, bans, 429 and 503.

use crate::support::{
    Server, assert_echo_serves, connect, connect_with, expect_close, expect_dropped,
    expect_http_refusal, expect_text, round_trip, send_text,
};

#[tokio::test]
async fn foreign_origin_gets_http_403() {
    let server = Server::start("");
    expect_http_refusal(server.echo, &[("origin", "https://evil.example")], 403).await;
    expect_http_refusal(server.secure, &[("origin", "https://evil.example")], 403).await;
    let mut ws = connect_with(server.echo, &[("origin", "http://localhost:3000")])
        .await
        .expect("allowed origin");
    round_trip(&mut ws, "from localhost").await;
}

#[tokio::test]
async fn denied_address_is_dropped_at_accept() {
    let server = Server::start(r#"firewall.deny = ["127.0.0.1/32"]"#);
    expect_dropped(server.echo).await;
    expect_dropped(server.secure).await;
    // The admin listener is not behind the WebSocket firewall.
    assert_eq!(crate::support::http(server.admin, "GET", "/healthz", &[], "").await.status, 200);
}

#[tokio::test]
async fn repeated_bad_tokens_ban_the_address() {
    let server = Server::start("firewall.ban_after_auth_failures = 2");
    for _ in 0..2 {
        let mut ws = connect(server.secure).await;
        send_text(&mut ws, "bad.token.here").await;
        expect_text(&mut ws, "Invalid Token").await;
        expect_close(&mut ws, 1008, None).await;
    }
    expect_dropped(server.secure).await;
    expect_dropped(server.echo).await;
}

#[tokio::test]
async fn one_bad_token_below_the_ban_threshold_is_not_banned() {
    let server = Server::start("firewall.ban_after_auth_failures = 2");
    let mut ws = connect(server.secure).await;
    send_text(&mut ws, "bad.token.here").await;
    expect_text(&mut ws, "Invalid Token").await;
    assert_echo_serves(&server).await;
}

#[tokio::test]
async fn handshake_flood_gets_http_429() {
    let server =
        Server::start("firewall.handshakes_per_sec_per_ip = 1\nfirewall.handshake_burst = 1");
    let _first = connect(server.echo).await;
    expect_http_refusal(server.echo, &[], 429).await;
}

#[tokio::test]
async fn connections_over_the_per_ip_cap_get_http_503() {
    let server = Server::start("firewall.max_connections_per_ip = 2");
    let mut a = connect(server.echo).await;
    let _b = connect(server.echo).await;
    expect_http_refusal(server.echo, &[], 503).await;
    round_trip(&mut a, "still open").await;
}
