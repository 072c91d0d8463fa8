//! The `palisade.v1` subprotocol on the secure endpoint (issue 11), against the real `palisade`
//! binary on loopback: negotiation, authentication by envelope and by header, data, expiry
//! warnings, refresh and its refusals, bad envelopes, the error envelope before every close, and
//! the browser client of docs/subprotocol.md run in Node's standard `WebSocket`.

pub(crate) mod channels;
mod node;
pub(crate) mod v1;

use std::process::Stdio;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::time::{interval, timeout};
use tokio_tungstenite::tungstenite::Message;

use crate::support::{self, Server, now};
use v1::{
    Frame, authenticated, authenticated_at, connect_v1, expect_close, expect_error,
    expect_error_then_close, expect_type, frame_of, http, next_within, now_f64, round_trip, send,
    send_raw, token, token_at, token_with, upgrade_head,
};

/// Bounds a whole test.
/// The configuration of a server started in-process: the secure endpoint alone on a free
/// loopback port, with the tests' secret and no leeway.
fn in_process_config() -> palisade_server::config::Config {
    let mut config = palisade_server::config::Config::default();
    config.echo.enabled = false;
    config.admin.enabled = false;
    config.secure.listen = ([127, 0, 0, 1], 0).into();
    config.auth.leeway_secs = 0;
    config.auth.secret = Some(palisade_server::config::SecretString(support::SECRET.into()));
    config
}

pub(crate) async fn bounded<F: Future<Output = ()>>(limit_secs: u64, test: F) {
    timeout(Duration::from_secs(limit_secs), test)
        .await
        .unwrap_or_else(|_| panic!("test did not finish within {limit_secs} s"));
}

#[tokio::test]
async fn offered_subprotocol_is_selected_and_only_then() {
    let server = Server::start("");
    let head = upgrade_head(server.secure, "Sec-WebSocket-Protocol: chat, palisade.v1\r\n").await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("\r\nsec-websocket-protocol: palisade.v1\r\n"), "{head}");
    let head = upgrade_head(server.secure, "").await;
    assert!(!head.contains("sec-websocket-protocol"), "{head}");
    let head = upgrade_head(server.secure, "Sec-WebSocket-Protocol: palisade.v2\r\n").await;
    assert!(!head.contains("sec-websocket-protocol"), "{head}");

    let off = Server::start("subprotocol.enabled = false");
    let head = upgrade_head(off.secure, "Sec-WebSocket-Protocol: palisade.v1\r\n").await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(!head.contains("sec-websocket-protocol"), "{head}");
}

#[tokio::test]
async fn clients_without_the_subprotocol_keep_the_seed_exchange() {
    let server = Server::start("");
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/", server.secure))
        .await
        .expect("connect");
    ws.send(Message::text(token("42", 600))).await.expect("send token");
    assert_eq!(next_text(&mut ws).await, "Authenticated!");
    ws.send(Message::text("hi")).await.expect("send");
    assert_eq!(next_text(&mut ws).await, "Server received: hi");
    ws.send(Message::text(r#"{"type":"message","data":1}"#)).await.expect("send");
    assert_eq!(next_text(&mut ws).await, r#"Server received: {"type":"message","data":1}"#);
}

async fn next_text(ws: &mut support::Ws) -> String {
    loop {
        match timeout(support::STEP, ws.next()).await.expect("reply in time") {
            Some(Ok(Message::Text(t))) => return t.to_string(),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("expected text, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn auth_by_envelope_then_messages_get_message_envelopes() {
    bounded(20, async {
        let server = Server::start("");
        let exp = now() + 600;
        let (mut ws, env) = authenticated_at(&server, "42", exp).await;
        assert_eq!(env["exp"], exp);
        assert_eq!(env["session_id"].as_str().map(str::len), Some(32));
        // The default echo handler gets the JSON text of `data` and prefixes it.
        assert_eq!(round_trip(&mut ws, json!("hi")).await, json!("Server received: \"hi\""));
        assert_eq!(round_trip(&mut ws, json!({"n": 1})).await, json!("Server received: {\"n\":1}"));
        // The session is the one the admin API lists.
        let (status, body) = http(server.admin, "GET", "/sessions", "").await;
        assert_eq!(status, 200);
        assert!(body.contains(env["session_id"].as_str().unwrap_or("?")), "{body}");
    })
    .await;
}

#[tokio::test]
async fn data_reaches_the_handler_unchanged_and_json_replies_are_embedded() {
    bounded(20, async {
        // With an empty prefix the echo handler replies with exactly what it got.
        let server = Server::start("echo.prefix = \"\"");
        let mut ws = authenticated(&server, "42").await;
        for data in [
            r#"{"b":[1,2.50,"é",true],"a":null}"#,
            "123456789012345678901234567890",
            r#""plain text""#,
            "null",
            "[]",
        ] {
            let sent = format!(r#"{{"type":"message","data":{data}}}"#);
            send_raw(&mut ws, Message::text(sent.clone())).await;
            match timeout(support::STEP, ws.next()).await.expect("reply in time") {
                Some(Ok(Message::Text(t))) => assert_eq!(t.as_str(), sent, "byte-exact round trip"),
                other => panic!("expected the echoed envelope, got {other:?}"),
            }
        }
    })
    .await;
}

#[tokio::test]
async fn auth_by_header_starts_the_session_at_once() {
    bounded(20, async {
        let server = Server::start("");
        let bearer = format!("Bearer {}", token("7", 600));
        let mut ws = connect_v1(&server, &[("authorization", &bearer)]).await;
        let env = expect_type(&mut ws, "authenticated").await;
        assert_eq!(env["user_id"], "7");
        assert_eq!(round_trip(&mut ws, json!(1)).await, json!("Server received: 1"));
        // An `auth` after that is a bad envelope, not a second session.
        send(&mut ws, &json!({"type": "auth", "token": token("8", 600)})).await;
        let detail = expect_error(&mut ws, "bad_envelope").await;
        assert!(detail.contains("already authenticated"), "{detail}");
    })
    .await;
}

#[tokio::test]
async fn failed_authentication_gets_a_typed_error_then_1008() {
    bounded(30, async {
        let server = Server::start("");
        let other_key = "another-secret-that-is-also-long-enough-0123456789";
        for (first, reason, close) in [
            (
                json!({"type": "auth", "token": token_at("42", now() - 120)}),
                "token_expired",
                "token expired",
            ),
            (
                json!({"type": "auth", "token": token_with(other_key, "42", now() + 60)}),
                "invalid_token",
                "invalid token",
            ),
            (json!({"type": "auth", "token": "not.a.jwt"}), "invalid_token", "invalid token"),
            (
                json!({"type": "message", "data": "hi"}),
                "not_authenticated",
                "authentication required",
            ),
            (
                json!({"type": "refresh", "token": token("42", 60)}),
                "not_authenticated",
                "authentication required",
            ),
        ] {
            let mut ws = connect_v1(&server, &[]).await;
            send(&mut ws, &first).await;
            expect_error_then_close(&mut ws, reason, 1008, close).await;
        }
        let slow = Server::start("secure.auth_timeout_secs = 1");
        let mut ws = connect_v1(&slow, &[]).await;
        expect_error_then_close(&mut ws, "auth_timeout", 1008, "authentication timeout").await;
    })
    .await;
}

#[tokio::test]
async fn expiring_arrives_on_time_and_the_session_ends_at_exp() {
    bounded(20, async {
        let server = Server::start("auth.expiry_warning_secs = 2");
        let exp = now() + 4;
        let (mut ws, _) = authenticated_at(&server, "42", exp).await;
        let due = exp as f64 - 2.0;
        match next_within(&mut ws, Duration::from_secs(6)).await {
            Frame::Envelope(v) if v["type"] == "expiring" => {
                let at = now_f64();
                eprintln!("expiring arrived {:.3} s after its due time", at - due);
                assert!(at >= due - 0.01 && at <= due + 0.75, "expiring at {at}, due {due}");
                let in_secs = v["in_secs"].as_u64().expect("in_secs");
                assert!((1..=2).contains(&in_secs), "in_secs {in_secs}");
            }
            other => panic!("expected expiring, got {other:?}"),
        }
        // No refresh: the token expires (leeway 0) and the session ends with a typed error.
        match next_within(&mut ws, Duration::from_secs(4)).await {
            Frame::Envelope(v) if v["type"] == "error" => {
                let at = now_f64();
                eprintln!("token_expired arrived {:.3} s after exp", at - exp as f64);
                assert_eq!(v["reason"], "token_expired");
                assert!(
                    at >= exp as f64 - 0.01 && at <= exp as f64 + 0.75,
                    "ended at {at}, exp {exp}"
                );
            }
            other => panic!("expected the token_expired error, got {other:?}"),
        }
        expect_close(&mut ws, 1008, "token expired").await;
    })
    .await;
}

#[tokio::test]
async fn refresh_keeps_the_session_past_the_first_exp_with_no_message_lost() {
    bounded(30, async {
        let server = Server::start("auth.expiry_warning_secs = 2\necho.prefix = \"\"");
        let exp1 = now() + 3;
        let (ws, _) = authenticated_at(&server, "42", exp1).await;
        let (mut sink, mut stream) = ws.split();
        let mut tick = interval(Duration::from_millis(40));
        let until = exp1 as f64 + 1.5;
        let (mut sent, mut received) = (0u64, Vec::new());
        let (mut expiring, mut refreshed) = (0, None);
        let mut replies_after_exp1 = 0;
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if now_f64() >= until {
                        break;
                    }
                    sent += 1;
                    let env = json!({"type": "message", "data": sent});
                    sink.send(Message::text(env.to_string())).await.expect("send");
                }
                item = stream.next() => match frame_of(item) {
                    Some(Frame::Envelope(v)) => match v["type"].as_str() {
                        Some("message") => {
                            received.push(v["data"].as_u64().expect("numeric data"));
                            if now_f64() > exp1 as f64 + 0.2 {
                                replies_after_exp1 += 1;
                            }
                        }
                        Some("expiring") => {
                            expiring += 1;
                            let refresh = json!({"type": "refresh", "token": token("42", 60)});
                            v1::assert_schema("client", &refresh);
                            sink.send(Message::text(refresh.to_string())).await.expect("send");
                        }
                        Some("refreshed") => refreshed = Some(v["exp"].clone()),
                        _ => panic!("unexpected envelope {v}"),
                    },
                    Some(Frame::Close(code, reason)) => panic!("closed {code} {reason:?}"),
                    None => {}
                },
            }
        }
        while (received.len() as u64) < sent {
            match frame_of(timeout(support::STEP, stream.next()).await.expect("reply in time")) {
                Some(Frame::Envelope(v)) if v["type"] == "message" => {
                    received.push(v["data"].as_u64().expect("numeric data"));
                }
                None => {}
                other => panic!("expected a reply, got {other:?}"),
            }
        }
        assert_eq!(expiring, 1, "one expiring for the first token");
        assert!(
            refreshed.as_ref().and_then(Value::as_u64).is_some_and(|e| e > exp1),
            "{refreshed:?}"
        );
        assert_eq!(received, (1..=sent).collect::<Vec<_>>(), "every message answered, in order");
        assert!(replies_after_exp1 > 5, "only {replies_after_exp1} replies after the first exp");
    })
    .await;
}

#[tokio::test]
async fn refused_refreshes_keep_the_session_until_its_token_expires() {
    bounded(20, async {
        let server = Server::start("auth.expiry_warning_secs = 0");
        let exp = now() + 3;
        let (mut ws, _) = authenticated_at(&server, "42", exp).await;
        send(&mut ws, &json!({"type": "refresh", "token": token("bob", 60)})).await;
        expect_error(&mut ws, "user_mismatch").await;
        assert_eq!(round_trip(&mut ws, json!("a")).await, json!("Server received: \"a\""));
        send(&mut ws, &json!({"type": "refresh", "token": token_at("42", now() - 10)})).await;
        expect_error(&mut ws, "token_expired").await;
        assert_eq!(round_trip(&mut ws, json!("b")).await, json!("Server received: \"b\""));
        // The session still ends when the first token does.
        match next_within(&mut ws, Duration::from_secs(5)).await {
            Frame::Envelope(v) if v["reason"] == "token_expired" => {
                assert!(now_f64() >= exp as f64 - 0.01, "ended before exp");
            }
            other => panic!("expected token_expired at exp, got {other:?}"),
        }
        expect_close(&mut ws, 1008, "token expired").await;
    })
    .await;
}

#[tokio::test]
async fn the_third_refused_refresh_closes_the_session() {
    bounded(20, async {
        let server = Server::start("");
        let mut ws = authenticated(&server, "42").await;
        let forged =
            token_with("another-secret-that-is-also-long-enough-0123456789", "42", now() + 60);
        send(&mut ws, &json!({"type": "refresh", "token": forged})).await;
        expect_error(&mut ws, "invalid_token").await;
        send(&mut ws, &json!({"type": "refresh", "token": token("someone-else", 60)})).await;
        expect_error(&mut ws, "user_mismatch").await;
        send(&mut ws, &json!({"type": "refresh", "token": forged})).await;
        let detail = expect_error(&mut ws, "too_many_failed_refreshes").await;
        assert!(detail.contains("3 refreshes failed"), "{detail}");
        expect_close(&mut ws, 1008, "too many failed refreshes").await;
    })
    .await;
}

#[tokio::test]
async fn a_refresh_past_max_session_secs_closes_with_session_too_long() {
    bounded(20, async {
        let server = Server::start("auth.max_session_secs = 30\nauth.expiry_warning_secs = 0");
        let (mut ws, _) = authenticated_at(&server, "42", now() + 10).await;
        // Within the limit: accepted.
        let exp = now() + 25;
        send(&mut ws, &json!({"type": "refresh", "token": token_at("42", exp)})).await;
        assert_eq!(expect_type(&mut ws, "refreshed").await["exp"], exp);
        // The admin API lists the new expiry.
        let (_, body) = http(server.admin, "GET", "/sessions", "").await;
        let sessions: Value = serde_json::from_str(&body).expect("session list is JSON");
        assert_eq!(sessions[0]["expires"], exp, "{body}");
        // Past it: refused, and the session closes.
        send(&mut ws, &json!({"type": "refresh", "token": token("42", 120)})).await;
        let detail = expect_error(&mut ws, "session_too_long").await;
        assert!(detail.contains("30 s"), "{detail}");
        expect_close(&mut ws, 1008, "session too long").await;
    })
    .await;
}

#[tokio::test]
async fn a_session_ends_at_max_session_secs_even_with_a_longer_token() {
    bounded(20, async {
        // The token outlives the limit, so no `expiring` comes although it is within 60 s.
        let server = Server::start("auth.max_session_secs = 2");
        let (mut ws, env) = authenticated_at(&server, "42", now() + 50).await;
        assert!(env["exp"].as_u64().is_some());
        let started = now_f64();
        match next_within(&mut ws, Duration::from_secs(5)).await {
            Frame::Envelope(v) if v["reason"] == "session_too_long" => {
                let after = now_f64() - started;
                assert!((0.9..=3.2).contains(&after), "closed after {after} s");
            }
            other => panic!("expected session_too_long, got {other:?}"),
        }
        expect_close(&mut ws, 1008, "session too long").await;
    })
    .await;
}

#[tokio::test]
async fn malformed_envelopes_get_bad_envelope_until_the_limit() {
    bounded(20, async {
        let server = Server::start("subprotocol.close_after_bad_envelopes = 4");
        let mut ws = connect_v1(&server, &[]).await;
        send_raw(&mut ws, Message::text("hello")).await;
        assert!(expect_error(&mut ws, "bad_envelope").await.contains("JSON object"));
        send(&mut ws, &json!({"type": "auth", "token": token("42", 600)})).await;
        expect_type(&mut ws, "authenticated").await;
        send_raw(&mut ws, Message::text(r#"{"type":"watch","topic":"x"}"#)).await;
        assert!(expect_error(&mut ws, "bad_envelope").await.contains("unknown type \"watch\""));
        send_raw(&mut ws, Message::text(r#"{"type":"message"}"#)).await;
        assert!(expect_error(&mut ws, "bad_envelope").await.contains("needs `data`"));
        // Still serving between bad envelopes.
        assert_eq!(round_trip(&mut ws, json!(2)).await, json!("Server received: 2"));
        send_raw(&mut ws, Message::binary(vec![1, 2, 3])).await;
        let detail = expect_error(&mut ws, "bad_envelope").await;
        assert!(detail.contains("binary") && detail.contains("closing after 4"), "{detail}");
        expect_close(&mut ws, 1008, "too many bad envelopes").await;
    })
    .await;
}

#[tokio::test]
async fn every_close_from_the_server_is_preceded_by_an_error_envelope() {
    bounded(30, async {
        let server = Server::start(
            "firewall.messages_per_sec = 1\nfirewall.message_burst = 4\n\
             limits.max_message_bytes = 1024\nlimits.max_frame_bytes = 1024",
        );
        // Rate limit.
        let mut ws = authenticated(&server, "1").await;
        for i in 0..8 {
            send(&mut ws, &json!({"type": "message", "data": i})).await;
        }
        loop {
            match next_within(&mut ws, support::STEP).await {
                Frame::Envelope(v) if v["type"] == "message" => continue,
                Frame::Envelope(v) if v["type"] == "error" => {
                    assert_eq!(v["reason"], "rate_limited");
                    // The advice, and the firewall's delay (1 message/s: at most a second).
                    assert_eq!(v["reconnect"], "backoff", "{v}");
                    let after = v["retry_after_ms"].as_u64().expect("retry_after_ms");
                    assert!((1..=1000).contains(&after), "{v}");
                    break;
                }
                other => panic!("expected replies then rate_limited, got {other:?}"),
            }
        }
        expect_close(&mut ws, 1008, "rate limit exceeded").await;

        // Message over the size limit.
        let mut ws = authenticated(&server, "2").await;
        send(&mut ws, &json!({"type": "message", "data": "x".repeat(2000)})).await;
        let v = expect_type(&mut ws, "error").await;
        assert_eq!((&v["reason"], &v["reconnect"]), (&json!("message_too_big"), &json!("never")));
        assert!(v.get("retry_after_ms").is_none(), "{v}");
        expect_close(&mut ws, 1009, "message too big").await;

        // Revocation through the admin API.
        let (mut ws, env) = authenticated_at(&server, "3", now() + 600).await;
        let id = env["session_id"].as_str().expect("session_id").to_owned();
        let (status, _) = http(server.admin, "DELETE", &format!("/sessions/{id}"), "").await;
        assert!((200..300).contains(&status), "revoke answered {status}");
        let v = expect_type(&mut ws, "error").await;
        assert_eq!((&v["reason"], &v["reconnect"]), (&json!("revoked"), &json!("never")));
        expect_close(&mut ws, 1008, "session revoked").await;

        // Shutdown.
        let mut ws = authenticated(&server, "4").await;
        server.terminate();
        let v = expect_type(&mut ws, "error").await;
        assert_eq!((&v["reason"], &v["reconnect"]), (&json!("shutting_down"), &json!("backoff")));
        expect_close(&mut ws, 1001, "server shutting down").await;
    })
    .await;
}

#[tokio::test]
async fn pushes_to_a_v1_session_are_wrapped_and_plain_sessions_get_them_raw() {
    use palisade_server::app::Echo;
    use palisade_server::server::Server as InProcess;
    use palisade_transport::Message as AppMessage;

    bounded(20, async {
        let config = in_process_config();
        let server = InProcess::start(&config, Echo).await.expect("start");
        let addr = server.secure_addr.expect("secure address");

        let mut plain =
            tokio_tungstenite::connect_async(format!("ws://{addr}/")).await.expect("connect").0;
        plain.send(Message::text(token("9", 600))).await.expect("send");
        assert_eq!(next_text(&mut plain).await, "Authenticated!");
        let mut req =
            tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
                format!("ws://{addr}/"),
            )
            .expect("request");
        req.headers_mut().insert("sec-websocket-protocol", v1::V1.parse().expect("value"));
        let mut v1 = tokio_tungstenite::connect_async(req).await.expect("connect").0;
        send(&mut v1, &json!({"type": "auth", "token": token("9", 600)})).await;
        expect_type(&mut v1, "authenticated").await;

        let queued =
            server.sessions.send_to_user("9", &AppMessage::Text(r#"{"alert":"hi"}"#.into()));
        assert_eq!(queued, 2);
        assert_eq!(expect_type(&mut v1, "message").await["data"], json!({"alert": "hi"}));
        assert_eq!(next_text(&mut plain).await, r#"{"alert":"hi"}"#);
        server.sessions.broadcast(&AppMessage::Text("plain words".into()), None);
        assert_eq!(expect_type(&mut v1, "message").await["data"], json!("plain words"));
        assert_eq!(next_text(&mut plain).await, "plain words");
        assert!(server.shutdown().await, "drained");
    })
    .await;
}

/// The browser client of docs/subprotocol.md, run verbatim in Node's standard `WebSocket` (the
/// WHATWG API browsers have) against the real server: it authenticates, refreshes on
/// `expiring`, is closed with `session_too_long` by a refresh past the limit, and reconnects.
#[tokio::test]
async fn the_documented_browser_client_authenticates_refreshes_and_reconnects() {
    let Some(node) = node::find() else { return };
    bounded(60, async {
        let server = Server::start(
            "auth.expiry_warning_secs = 2\nauth.max_session_secs = 6\necho.prefix = \"\"",
        );
        let t0 = now();
        let tokens = [
            token_at("42", t0 + 3),  // First session: expiring comes after about 1 s.
            token_at("42", t0 + 6), // First refresh, within the 6 s limit; expiring again at t0 + 4.
            token_at("42", t0 + 60), // Second refresh: past the limit, so 1008 session too long.
            token_at("42", t0 + 60), // The reconnect.
        ];
        let dir = tempfile::tempdir().expect("tempdir");
        let script = dir.path().join("client.mjs");
        std::fs::write(&script, node::script()).expect("write the client script");
        let mut cmd = tokio::process::Command::new(&node.program);
        cmd.args(&node.flags)
            .arg(&script)
            .arg(format!("ws://{}/", server.secure))
            .args(&tokens)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let out = timeout(Duration::from_secs(40), cmd.output())
            .await
            .expect("the node client finished in time")
            .expect("run node");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "node failed: {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
            out.status
        );
        let events: Vec<Value> = stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line {l:?}: {e}")))
            .collect();
        node::check_run(&events, t0 + 3);
    })
    .await;
}

#[tokio::test]
async fn the_documented_snippet_is_about_twenty_lines() {
    let snippet = node::snippet();
    let lines = snippet.lines().count();
    assert!((15..=22).contains(&lines), "the browser client is {lines} lines");
    assert!(snippet.contains("new WebSocket(url, \"palisade.v1\")"));
}
