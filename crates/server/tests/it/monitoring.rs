//! Monitoring: `/metrics` and `/stats` count exactly the traffic a test made; `/readyz`,
//! `/posture`, and the admin token on every protected route.

use futures_util::StreamExt;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::support::{
    STEP, Server, Ws, connect, expect_close, expect_http_refusal, expect_text, http, metric,
    round_trip, send_text, wait_for_metrics,
};

/// Closes from the client side with 1000 and waits for the server's close and the end of the
/// stream.
async fn client_close(mut ws: Ws) {
    let frame = CloseFrame { code: CloseCode::Normal, reason: "bye".into() };
    timeout(STEP, ws.close(Some(frame))).await.expect("close timed out").expect("send close");
    timeout(STEP, async {
        while let Some(item) = ws.next().await {
            match item {
                Ok(Message::Close(Some(f))) => assert_eq!(u16::from(f.code), 1000, "close reply"),
                Ok(_) => {}
                Err(_) => break,
            }
        }
    })
    .await
    .expect("the server never finished the close handshake");
}

fn token_file(dir: &tempfile::TempDir, token: &str) -> String {
    let file = dir.path().join("admin.token");
    std::fs::write(&file, format!("{token}\n")).expect("write token");
    format!("admin.token_file = {:?}", file.display().to_string())
}

#[tokio::test]
async fn metrics_count_exactly_the_traffic_made() {
    const K: usize = 7;
    let server = Server::start("");

    // K echo messages on one connection.
    let mut echo = connect(server.echo).await;
    for i in 0..K {
        round_trip(&mut echo, &format!("message {i}")).await;
    }
    // One failed authentication (closed with 1008), one successful one (session stays open).
    let mut bad = connect(server.secure).await;
    send_text(&mut bad, "bad.token.here").await;
    expect_text(&mut bad, "Invalid Token").await;
    expect_close(&mut bad, 1008, Some("invalid token")).await;
    let mut good = connect(server.secure).await;
    send_text(&mut good, &server.token("42", 60)).await;
    expect_text(&mut good, "Authenticated!").await;
    // One Origin refusal.
    expect_http_refusal(server.echo, &[("origin", "https://evil.example")], 403).await;

    let k = K as f64;
    let open = wait_for_metrics(
        &server,
        &[],
        &[
            (r#"palisade_messages_received_total{endpoint="echo"}"#, k),
            (r#"palisade_messages_sent_total{endpoint="echo"}"#, k),
            (r#"palisade_message_handling_seconds_count{endpoint="echo"}"#, k),
            (r#"palisade_messages_received_total{endpoint="secure"}"#, 2.0),
            // Authentication messages are not application messages.
            (r#"palisade_message_handling_seconds_count{endpoint="secure"}"#, 0.0),
            (r#"palisade_auth_total{endpoint="secure",outcome="ok"}"#, 1.0),
            (r#"palisade_auth_total{endpoint="secure",outcome="invalid"}"#, 1.0),
            (
                r#"palisade_handshakes_refused_total{endpoint="echo",reason="origin_not_allowed"}"#,
                1.0,
            ),
            (r#"palisade_close_codes_total{endpoint="secure",code="1008"}"#, 1.0),
            (r#"palisade_connections_total{endpoint="echo"}"#, 1.0),
            (r#"palisade_connections_total{endpoint="secure"}"#, 2.0),
            (r#"palisade_connections_open{endpoint="echo"}"#, 1.0),
            (r#"palisade_connections_open{endpoint="secure"}"#, 1.0),
            ("palisade_sessions_active", 1.0),
        ],
    )
    .await;
    assert!(open.ends_with("# EOF\n"), "not OpenMetrics text:\n{open}");
    // Nothing was counted that the test did not do.
    for absent in [
        r#"palisade_auth_total{endpoint="secure",outcome="expired"}"#,
        r#"palisade_auth_total{endpoint="secure",outcome="timeout"}"#,
        r#"palisade_close_codes_total{endpoint="echo",code="1000"}"#,
        r#"palisade_close_codes_received_total{endpoint="echo",code="1000"}"#,
    ] {
        assert_eq!(metric(&open, absent), None, "{absent} is present:\n{open}");
    }

    // The client closes both open connections with 1000.
    client_close(echo).await;
    client_close(good).await;
    let closed = wait_for_metrics(
        &server,
        &[],
        &[
            (r#"palisade_close_codes_received_total{endpoint="echo",code="1000"}"#, 1.0),
            (r#"palisade_close_codes_received_total{endpoint="secure",code="1000"}"#, 1.0),
            (r#"palisade_close_codes_total{endpoint="echo",code="1000"}"#, 1.0),
            (r#"palisade_close_codes_total{endpoint="secure",code="1000"}"#, 1.0),
            (r#"palisade_close_codes_total{endpoint="secure",code="1008"}"#, 1.0),
            (r#"palisade_connections_open{endpoint="echo"}"#, 0.0),
            (r#"palisade_connections_open{endpoint="secure"}"#, 0.0),
            ("palisade_sessions_active", 0.0),
            (r#"palisade_messages_received_total{endpoint="echo"}"#, k),
            (r#"palisade_message_handling_seconds_count{endpoint="echo"}"#, k),
        ],
    )
    .await;

    // `/stats` agrees with `/metrics`.
    let resp = http(server.admin, "GET", "/stats", &[], "").await;
    assert_eq!(resp.status, 200, "{resp:?}");
    let stats: serde_json::Value = serde_json::from_str(&resp.body).expect("stats json");
    let echo = &stats["endpoints"]["echo"];
    assert_eq!(echo["messages_in_total"], K, "{stats:#}");
    assert_eq!(echo["messages_out_total"], K, "{stats:#}");
    assert_eq!(echo["messages_handled_total"], K, "{stats:#}");
    assert_eq!(echo["connections_total"], 1, "{stats:#}");
    assert_eq!(stats["endpoints"]["secure"]["messages_in_total"], 2, "{stats:#}");
    assert_eq!(stats["messages_in_total"], K + 2, "{stats:#}");
    assert_eq!(stats["connections_open"], 0, "{stats:#}");
    assert_eq!(stats["connections_total"], 3, "{stats:#}");
    assert_eq!(stats["sessions_active"], 0, "{stats:#}");
    assert_eq!(stats["auth_by_outcome"], serde_json::json!({"ok": 1, "invalid": 1}));
    assert_eq!(
        stats["handshakes_refused_by_reason"],
        serde_json::json!({"origin_not_allowed": 1}),
        "{stats:#}"
    );
    assert_eq!(stats["handshakes_refused_total"], 1, "{stats:#}");
    assert_eq!(stats["closes_by_code"], serde_json::json!({"1000": 2, "1008": 1}), "{stats:#}");
    assert_eq!(stats["closes_received_by_code"], serde_json::json!({"1000": 2}), "{stats:#}");
    let in_metrics = metric(&closed, r#"palisade_bytes_received_total{endpoint="echo"}"#);
    assert_eq!(in_metrics, echo["bytes_in_total"].as_f64(), "{stats:#}\n{closed}");
}

#[tokio::test]
async fn bans_active_gauge_follows_admin_bans() {
    let server = Server::start("");
    let resp = http(server.admin, "POST", "/bans", &[], r#"{"ip":"198.51.100.7"}"#).await;
    assert_eq!(resp.status, 201, "{resp:?}");
    wait_for_metrics(&server, &[], &[("palisade_bans_active", 1.0)]).await;
    let resp = http(server.admin, "DELETE", "/bans/198.51.100.7", &[], "").await;
    assert_eq!(resp.status, 204, "{resp:?}");
    wait_for_metrics(&server, &[], &[("palisade_bans_active", 0.0)]).await;
}

#[tokio::test]
async fn readyz_is_200_while_serving() {
    let server = Server::start("");
    let resp = http(server.admin, "GET", "/readyz", &[], "").await;
    assert_eq!(resp.status, 200, "{resp:?}");
}

#[tokio::test]
async fn posture_lists_the_missing_admin_token() {
    let server = Server::start("");
    let resp = http(server.admin, "GET", "/posture", &[], "").await;
    assert_eq!(resp.status, 200, "{resp:?}");
    let findings: serde_json::Value = serde_json::from_str(&resp.body).expect("posture json");
    let finding = findings
        .as_array()
        .expect("array of findings")
        .iter()
        .find(|f| f["key"] == "admin.token_file")
        .unwrap_or_else(|| panic!("no admin.token_file finding: {findings:#}"));
    assert!(finding["why"].as_str().is_some_and(|w| !w.is_empty()), "{finding}");
}

#[tokio::test]
async fn posture_omits_the_admin_token_once_configured() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&token_file(&dir, "posture-admin-token"));
    let resp = http(
        server.admin,
        "GET",
        "/posture",
        &[("Authorization", "Bearer posture-admin-token")],
        "",
    )
    .await;
    assert_eq!(resp.status, 200, "{resp:?}");
    let findings: serde_json::Value = serde_json::from_str(&resp.body).expect("posture json");
    assert!(
        findings.as_array().expect("array").iter().all(|f| f["key"] != "admin.token_file"),
        "{findings:#}"
    );
}

#[tokio::test]
async fn every_protected_admin_route_needs_the_token() {
    const TOKEN: &str = "monitoring-admin-token-0123";
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&token_file(&dir, TOKEN));
    let bearer = format!("Bearer {TOKEN}");
    let lower = format!("bearer {TOKEN}");
    let routes = [
        ("GET", "/metrics", ""),
        ("GET", "/stats", ""),
        ("GET", "/posture", ""),
        ("GET", "/sessions", ""),
        ("GET", "/bans", ""),
        ("DELETE", "/sessions/0123456789abcdef0123456789abcdef", ""),
        ("DELETE", "/users/42/sessions", ""),
        ("POST", "/bans", r#"{"ip":"198.51.100.7"}"#),
        ("DELETE", "/bans/198.51.100.7", ""),
    ];
    for (method, path, body) in routes {
        for headers in [
            vec![],
            vec![("Authorization", "Bearer wrong-token")],
            vec![("Authorization", "Basic bW9uaXRvcmluZzp4")],
            vec![("Authorization", TOKEN)],
        ] {
            let resp = http(server.admin, method, path, &headers, body).await;
            assert_eq!(resp.status, 401, "{method} {path} with {headers:?}: {resp:?}");
        }
    }
    // The token opens every route; the scheme is case-insensitive.
    for (method, path, body) in routes {
        for auth in [bearer.as_str(), lower.as_str()] {
            let resp = http(server.admin, method, path, &[("Authorization", auth)], body).await;
            assert!(
                resp.status != 401 && resp.status < 500,
                "{method} {path} with {auth:?}: {resp:?}"
            );
        }
    }
    let metrics =
        http(server.admin, "GET", "/metrics", &[("Authorization", lower.as_str())], "").await;
    assert_eq!(metrics.status, 200);
    assert!(metrics.body.contains("palisade_connections"), "{}", metrics.body);
    // Liveness and readiness stay open for orchestrators.
    assert_eq!(http(server.admin, "GET", "/healthz", &[], "").await.status, 200);
    assert_eq!(http(server.admin, "GET", "/readyz", &[], "").await.status, 200);
    server.assert_logs_never_contain(TOKEN);
}

#[tokio::test]
async fn admin_401_carries_a_www_authenticate_bearer_challenge() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&token_file(&dir, "challenge-admin-token"));
    for headers in [vec![], vec![("Authorization", "Bearer wrong-token")]] {
        let resp = http(server.admin, "GET", "/metrics", &headers, "").await;
        assert_eq!(resp.status, 401, "{resp:?}");
        let challenge = resp.head.lines().find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.trim().eq_ignore_ascii_case("www-authenticate").then(|| value.trim().to_owned())
        });
        assert!(
            challenge.as_deref().is_some_and(|c| c.to_ascii_lowercase().starts_with("bearer")),
            "401 without a `WWW-Authenticate: Bearer` challenge (RFC 7235 section 3.1, RFC 6750 \
             section 3), headers {headers:?}:\n{}",
            resp.head
        );
    }
}

#[tokio::test]
async fn metrics_are_open_without_a_configured_admin_token() {
    let server = Server::start("");
    let resp = http(server.admin, "GET", "/metrics", &[], "").await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert!(
        resp.head.to_ascii_lowercase().contains("application/openmetrics-text"),
        "{}",
        resp.head
    );
    // A stray Authorization header is harmless when no token is configured.
    let resp =
        http(server.admin, "GET", "/metrics", &[("Authorization", "Bearer anything")], "").await;
    assert_eq!(resp.status, 200, "{resp:?}");
}
