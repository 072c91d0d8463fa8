//! Per-address firewall behaviour, seen from distinct loopback source addresses (127.0.0.2,
//! 127.0.0.3, ...): what one address does never limits another.

use std::time::{Duration, Instant};

use crate::support::{
    STEP, Server, assert_echo_serves_from, connect_from, connect_from_with, expect_close,
    expect_dropped_from, expect_http_refusal_from, expect_text, http, lo, round_trip, send_text,
};

/// Sends a bad token from `from` on the secure endpoint and expects `Invalid Token` then 1008.
async fn fail_auth_from(server: &Server, from: std::net::Ipv4Addr, headers: &[(&str, &str)]) {
    let mut ws = connect_from_with(from, server.secure, headers)
        .await
        .unwrap_or_else(|e| panic!("connect from {from} ({headers:?}): {e}"));
    send_text(&mut ws, "bad.token.here").await;
    expect_text(&mut ws, "Invalid Token").await;
    expect_close(&mut ws, 1008, Some("invalid token")).await;
}

/// The IP addresses of `GET /bans`.
async fn banned_ips(server: &Server) -> Vec<String> {
    let resp = http(server.admin, "GET", "/bans", &[], "").await;
    assert_eq!(resp.status, 200, "{resp:?}");
    let bans: serde_json::Value = serde_json::from_str(&resp.body).expect("bans json");
    bans.as_array()
        .expect("bans array")
        .iter()
        .map(|b| b["ip"].as_str().expect("ip").to_owned())
        .collect()
}

#[tokio::test]
async fn denied_address_is_dropped_while_another_is_served() {
    let server = Server::start(r#"firewall.deny = ["127.0.0.2/32"]"#);
    expect_dropped_from(lo(2), server.echo).await;
    expect_dropped_from(lo(2), server.secure).await;
    assert_echo_serves_from(lo(3), server.echo).await;
    assert_echo_serves_from(lo(1), server.echo).await;
}

#[tokio::test]
async fn allow_list_serves_only_the_listed_address() {
    let server = Server::start(r#"firewall.allow = ["127.0.0.3/32"]"#);
    assert_echo_serves_from(lo(3), server.echo).await;
    expect_dropped_from(lo(2), server.echo).await;
    expect_dropped_from(lo(1), server.echo).await;
    expect_dropped_from(lo(2), server.secure).await;
}

#[tokio::test]
async fn deny_wins_over_allow() {
    let server =
        Server::start("firewall.allow = [\"127.0.0.0/24\"]\nfirewall.deny = [\"127.0.0.2/32\"]");
    expect_dropped_from(lo(2), server.echo).await;
    assert_echo_serves_from(lo(3), server.echo).await;
}

#[tokio::test]
async fn per_ip_cap_counts_each_address_separately() {
    let server = Server::start("firewall.max_connections_per_ip = 1");
    let mut held = connect_from(lo(2), server.echo).await;
    expect_http_refusal_from(lo(2), server.echo, &[], 503).await;
    // Another address has its own slot, on either endpoint.
    let mut other = connect_from(lo(3), server.echo).await;
    round_trip(&mut other, "from .3").await;
    round_trip(&mut held, "from .2, still open").await;
    // Closing the held connection frees the slot of .2.
    let _ = held.close(None).await;
    drop(held);
    let deadline = Instant::now() + STEP;
    loop {
        match connect_from_with(lo(2), server.echo, &[]).await {
            Ok(mut ws) => {
                round_trip(&mut ws, "slot freed").await;
                break;
            }
            Err(e) => {
                assert!(Instant::now() < deadline, "the slot of .2 was never freed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[tokio::test]
async fn handshake_rate_limit_is_per_address() {
    let server =
        Server::start("firewall.handshakes_per_sec_per_ip = 1\nfirewall.handshake_burst = 1");
    let _first = connect_from(lo(2), server.echo).await;
    expect_http_refusal_from(lo(2), server.echo, &[], 429).await;
    expect_http_refusal_from(lo(2), server.secure, &[], 429).await;
    // .2 exhausted its bucket; .3 has a full one.
    let mut other = connect_from(lo(3), server.echo).await;
    round_trip(&mut other, "not limited").await;
}

#[tokio::test]
async fn handshake_429_carries_retry_after() {
    let server =
        Server::start("firewall.handshakes_per_sec_per_ip = 1\nfirewall.handshake_burst = 1");
    let _first = connect_from(lo(2), server.echo).await;
    match connect_from_with(lo(2), server.echo, &[]).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 429);
            let retry = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            assert!(retry.is_some_and(|s| (1..=2).contains(&s)), "retry-after {retry:?}");
        }
        Ok(_) => panic!("second handshake within the second was accepted"),
        Err(e) => panic!("expected HTTP 429, got {e}"),
    }
}

#[tokio::test]
async fn message_flood_is_closed_with_1008_rate_limit_exceeded() {
    let server = Server::start("firewall.messages_per_sec = 1\nfirewall.message_burst = 2");
    let mut flooder = connect_from(lo(2), server.echo).await;
    let mut calm = connect_from(lo(2), server.echo).await;
    // The burst (2) is served, the third message within the second is one too many.
    for i in 0..3 {
        send_text(&mut flooder, &format!("m{i}")).await;
    }
    expect_text(&mut flooder, "Server received: m0").await;
    expect_text(&mut flooder, "Server received: m1").await;
    expect_close(&mut flooder, 1008, Some("rate limit exceeded")).await;
    // The limit is per connection: another connection from the same address is unaffected.
    round_trip(&mut calm, "calm").await;
    assert_echo_serves_from(lo(3), server.echo).await;
}

#[tokio::test]
async fn failed_authentications_ban_one_address_and_not_another() {
    let server = Server::start("firewall.ban_after_auth_failures = 2");
    fail_auth_from(&server, lo(2), &[]).await;
    // One failure is below the threshold.
    assert_echo_serves_from(lo(2), server.echo).await;
    fail_auth_from(&server, lo(2), &[]).await;
    expect_dropped_from(lo(2), server.secure).await;
    expect_dropped_from(lo(2), server.echo).await;
    assert_eq!(banned_ips(&server).await, ["127.0.0.2"]);
    // .3 is not banned and can still authenticate.
    assert_echo_serves_from(lo(3), server.echo).await;
    let mut ws = connect_from(lo(3), server.secure).await;
    send_text(&mut ws, &server.token("42", 60)).await;
    expect_text(&mut ws, "Authenticated!").await;
    round_trip(&mut ws, "authenticated from .3").await;
}

#[tokio::test]
async fn failures_from_different_addresses_do_not_add_up() {
    let server = Server::start("firewall.ban_after_auth_failures = 2");
    fail_auth_from(&server, lo(2), &[]).await;
    fail_auth_from(&server, lo(3), &[]).await;
    assert_echo_serves_from(lo(2), server.echo).await;
    assert_echo_serves_from(lo(3), server.echo).await;
    assert!(banned_ips(&server).await.is_empty());
}

#[tokio::test]
async fn ban_expires_after_ban_secs() {
    let server = Server::start("firewall.ban_after_auth_failures = 1\nfirewall.ban_secs = 1");
    fail_auth_from(&server, lo(2), &[]).await;
    // The ban is in place before the `Invalid Token` reply is sent.
    let banned_at = Instant::now();
    expect_dropped_from(lo(2), server.echo).await;
    assert!(
        banned_at.elapsed() < Duration::from_secs(1),
        "the drop check took too long to prove the ban"
    );
    tokio::time::sleep(Duration::from_millis(1200).saturating_sub(banned_at.elapsed())).await;
    assert_echo_serves_from(lo(2), server.echo).await;
}

#[tokio::test]
async fn origin_check_refuses_foreign_origins_and_allows_local_dev_origins() {
    let server = Server::start("");
    for origin in ["https://evil.example", "http://localhost.evil.com", "null"] {
        expect_http_refusal_from(lo(2), server.echo, &[("origin", origin)], 403).await;
    }
    for origin in ["http://127.0.0.1:5173", "http://localhost:8080"] {
        let mut ws = connect_from_with(lo(2), server.echo, &[("origin", origin)])
            .await
            .unwrap_or_else(|e| panic!("origin {origin} should be allowed: {e}"));
        round_trip(&mut ws, origin).await;
    }
    // No Origin header (a non-browser client) is allowed by default.
    assert_echo_serves_from(lo(2), server.echo).await;
}

#[tokio::test]
async fn origin_pattern_allows_subdomains_only() {
    let server = Server::start(r#"firewall.allowed_origins = ["https://*.example.com"]"#);
    let mut ws = connect_from_with(lo(2), server.echo, &[("origin", "https://app.example.com")])
        .await
        .expect("https://app.example.com is allowed");
    round_trip(&mut ws, "subdomain").await;
    for origin in [
        "https://example.com.evil.com",
        "https://example.com",
        "http://app.example.com",
        "https://evilexample.com",
        "http://localhost:8080",
    ] {
        expect_http_refusal_from(lo(2), server.echo, &[("origin", origin)], 403).await;
        expect_http_refusal_from(lo(2), server.secure, &[("origin", origin)], 403).await;
    }
}

#[tokio::test]
async fn trusted_proxy_forwards_the_client_address_for_bans() {
    let server = Server::start(r#"firewall.trusted_proxies = ["127.0.0.2/32"]"#);
    let resp = http(server.admin, "POST", "/bans", &[], r#"{"ip":"198.51.100.7"}"#).await;
    assert_eq!(resp.status, 201, "{resp:?}");
    // Through the proxy at .2, the banned client is refused; both forwarding headers count.
    expect_http_refusal_from(lo(2), server.echo, &[("x-forwarded-for", "198.51.100.7")], 403).await;
    expect_http_refusal_from(lo(2), server.secure, &[("x-forwarded-for", "198.51.100.7")], 403)
        .await;
    expect_http_refusal_from(lo(2), server.echo, &[("forwarded", "for=198.51.100.7")], 403).await;
    // A client spoofing a left-most hop is judged by the hop the proxy appended.
    expect_http_refusal_from(
        lo(2),
        server.echo,
        &[("x-forwarded-for", "203.0.113.9, 198.51.100.7")],
        403,
    )
    .await;
    // The proxy itself and other forwarded clients are not banned.
    assert_echo_serves_from(lo(2), server.echo).await;
    let mut other = connect_from_with(lo(2), server.echo, &[("x-forwarded-for", "198.51.100.8")])
        .await
        .expect("another forwarded client");
    round_trip(&mut other, "forwarded, not banned").await;
}

#[tokio::test]
async fn forwarding_header_from_an_untrusted_peer_is_ignored() {
    let server = Server::start(r#"firewall.trusted_proxies = ["127.0.0.2/32"]"#);
    let resp = http(server.admin, "POST", "/bans", &[], r#"{"ip":"198.51.100.7"}"#).await;
    assert_eq!(resp.status, 201, "{resp:?}");
    // .3 is not a trusted proxy: its header is ignored, so it is judged as 127.0.0.3.
    let mut ws = connect_from_with(lo(3), server.echo, &[("x-forwarded-for", "198.51.100.7")])
        .await
        .expect(".3 is not banned; its spoofed header must not make it so");
    round_trip(&mut ws, "spoofed header ignored").await;

    // Nor can an untrusted, banned peer escape its ban by claiming another address.
    let resp = http(server.admin, "POST", "/bans", &[], r#"{"ip":"127.0.0.4"}"#).await;
    assert_eq!(resp.status, 201, "{resp:?}");
    expect_dropped_from(lo(4), server.echo).await;
    let escaped =
        connect_from_with(lo(4), server.echo, &[("x-forwarded-for", "198.51.100.8")]).await;
    assert!(escaped.is_err(), "a banned peer got in with a forged X-Forwarded-For");
}

#[tokio::test]
async fn auth_failures_through_a_trusted_proxy_ban_the_forwarded_client() {
    let server = Server::start(
        "firewall.trusted_proxies = [\"127.0.0.2/32\"]\nfirewall.ban_after_auth_failures = 1",
    );
    fail_auth_from(&server, lo(2), &[("x-forwarded-for", "198.51.100.7")]).await;
    assert_eq!(banned_ips(&server).await, ["198.51.100.7"]);
    expect_http_refusal_from(lo(2), server.secure, &[("x-forwarded-for", "198.51.100.7")], 403)
        .await;
    // The proxy's own address is not banned: its other clients still get through.
    assert_echo_serves_from(lo(2), server.echo).await;
    let mut ws = connect_from_with(lo(2), server.secure, &[("x-forwarded-for", "198.51.100.8")])
        .await
        .expect("another client behind the proxy");
    send_text(&mut ws, &server.token("42", 60)).await;
    expect_text(&mut ws, "Authenticated!").await;
}

#[tokio::test]
async fn untrusted_peer_cannot_pin_its_auth_failures_on_another_address() {
    let server = Server::start(
        "firewall.trusted_proxies = [\"127.0.0.2/32\"]\nfirewall.ban_after_auth_failures = 1",
    );
    fail_auth_from(&server, lo(3), &[("x-forwarded-for", "198.51.100.7")]).await;
    // The failure counts against .3, the real peer, not the address it claimed.
    assert_eq!(banned_ips(&server).await, ["127.0.0.3"]);
    expect_dropped_from(lo(3), server.echo).await;
    let mut ws = connect_from_with(lo(2), server.echo, &[("x-forwarded-for", "198.51.100.7")])
        .await
        .expect("198.51.100.7 was not banned");
    round_trip(&mut ws, "innocent").await;
}
