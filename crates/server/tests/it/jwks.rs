//! `[[auth.issuers]]` against real loopback identity providers (`palisade_jwks::testing::Idp`):
//! tokens minted with real RSA, EC and Ed25519 keys, on the first message, the Bearer header
//! and `palisade.v1` auth and refresh (docs/identity-providers.md).

use std::time::Duration;

use futures_util::SinkExt;
use palisade_jwks::testing::{Idp, Mode, TestKey, mint_hs256};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::support::{
    SECRET, STEP, Server, connect, connect_with, expect_close, expect_http_refusal, expect_text,
    http, metric, next_message, now, send_text,
};

fn claims(iss: &str, user: &str) -> Value {
    json!({"iss": iss, "aud": "palisade", "sub": user, "exp": now() + 600, "iat": now()})
}

/// One inline `[[auth.issuers]]` entry for `Server::start` overrides.
fn issuer(idp: &Idp, iss: &str, extra: &str) -> String {
    format!(
        "{{ issuer = \"{iss}\", jwks_url = \"{}\", audience = \"palisade\"{extra} }}",
        idp.jwks_url()
    )
}

fn issuers(entries: &[String]) -> String {
    format!("auth.issuers = [{}]", entries.join(", "))
}

async fn first_message(server: &Server, token: &str) -> String {
    let mut ws = connect(server.secure).await;
    send_text(&mut ws, token).await;
    match next_message(&mut ws).await {
        Message::Text(t) => t.to_string(),
        other => panic!("expected a text reply, got {other:?}"),
    }
}

async fn assert_accepted(server: &Server, token: &str) {
    assert_eq!(first_message(server, token).await, "Authenticated!");
}

async fn assert_refused(server: &Server, token: &str) {
    let mut ws = connect(server.secure).await;
    send_text(&mut ws, token).await;
    expect_text(&mut ws, "Invalid Token").await;
    expect_close(&mut ws, 1008, None).await;
}

/// Waits (bounded) until the console has a line holding every one of `parts`.
fn expect_console(server: &Server, parts: &[&str]) {
    let deadline = std::time::Instant::now() + STEP;
    loop {
        if server.console().lines().any(|l| parts.iter().all(|p| l.contains(p))) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no console line with {parts:?}:\n{}",
            server.console()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_issuers_with_the_same_kid_never_share_keys() {
    let (a_key, b_key) = (TestKey::rsa(), TestKey::ec());
    let idp_a = Idp::start(vec![a_key.jwk("shared")]).await;
    let idp_b = Idp::start(vec![b_key.jwk("shared")]).await;
    let server = Server::start(&issuers(&[
        issuer(&idp_a, "https://a.example", ""),
        issuer(&idp_b, "https://b.example", ""),
    ]));
    assert_accepted(
        &server,
        &a_key.mint(Some("shared"), &claims("https://a.example", "alice"), &[]),
    )
    .await;
    assert_accepted(&server, &b_key.mint(Some("shared"), &claims("https://b.example", "bob"), &[]))
        .await;
    // B's key and kid, A's issuer: A's `shared` key does not verify it.
    assert_refused(&server, &b_key.mint(Some("shared"), &claims("https://a.example", "eve"), &[]))
        .await;
    // An Ed25519 token of A's issuer: A publishes no Ed25519 key.
    let ed = TestKey::ed25519().mint(Some("shared"), &claims("https://a.example", "eve"), &[]);
    assert_refused(&server, &ed).await;
    // Tokens of no configured issuer go to the static HS256 key.
    assert_accepted(&server, &server.token("carol", 600)).await;
    // The Bearer header path follows the same rules.
    let bearer =
        format!("Bearer {}", a_key.mint(Some("shared"), &claims("https://a.example", "al"), &[]));
    let mut ws = connect_with(server.secure, &[("authorization", &bearer)]).await.expect("bearer");
    expect_text(&mut ws, "Authenticated!").await;
    let bad =
        format!("Bearer {}", b_key.mint(Some("shared"), &claims("https://a.example", "e"), &[]));
    expect_http_refusal(server.secure, &[("authorization", &bad)], 401).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_static_key_other_issuers_are_unknown() {
    let key = TestKey::ed25519();
    let idp = Idp::start(vec![key.jwk("k1")]).await;
    // RS256 without auth.public_key_file: no static key, only the issuer.
    let server = Server::start(&format!(
        "auth.algorithm = \"RS256\"\n{}",
        issuers(&[issuer(&idp, "https://a.example", ", algorithms = [\"EdDSA\"]")])
    ));
    assert_accepted(&server, &key.mint(Some("k1"), &claims("https://a.example", "u"), &[])).await;
    assert_refused(&server, &key.mint(Some("k1"), &claims("https://other.example", "u"), &[]))
        .await;
    expect_console(&server, &["authentication failed", "unknown_issuer"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_new_kid_within_one_refetch_removed_key_after_cache_secs() {
    let (old, new) = (TestKey::rsa(), TestKey::rsa2());
    let idp = Idp::start(vec![old.jwk("old")]).await;
    let server = Server::start(&issuers(&[issuer(
        &idp,
        "https://a.example",
        ", cache_secs = 2, min_refetch_secs = 1",
    )]));
    let old_token = old.mint(Some("old"), &claims("https://a.example", "u"), &[]);
    assert_accepted(&server, &old_token).await;
    // The provider publishes the new key next to the old one; past min_refetch_secs, the first
    // token with the new kid fetches once and is accepted.
    idp.set_keys(vec![old.jwk("old"), new.jwk("new")]);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let before = idp.requests("/jwks");
    assert_accepted(&server, &new.mint(Some("new"), &claims("https://a.example", "u"), &[])).await;
    assert!(idp.requests("/jwks") - before <= 1);
    // The old key is withdrawn: after cache_secs the refresh drops it.
    idp.set_keys(vec![new.jwk("new")]);
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_refused(&server, &old_token).await;
    assert_accepted(&server, &new.mint(Some("new"), &claims("https://a.example", "u"), &[])).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_unknown_kids_in_a_second_cause_at_most_two_fetches() {
    let key = TestKey::rsa();
    let idp = Idp::start(vec![key.jwk("k1")]).await;
    let server = Server::start(&format!(
        "{}\nfirewall.ban_after_auth_failures = 100000\nfirewall.handshakes_per_sec_per_ip = 10000\nfirewall.handshake_burst = 10000",
        issuers(&[issuer(&idp, "https://a.example", ", min_refetch_secs = 2")])
    ));
    // Past min_refetch_secs since the start's fetch: the flood may cause one refetch.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let before = idp.requests("/jwks");
    let addr = server.secure;
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let token = key.mint(
                Some(&format!("random-{i}-{}", now())),
                &claims("https://a.example", "u"),
                &[],
            );
            tokio::spawn(async move {
                let mut ws = connect(addr).await;
                send_text(&mut ws, &token).await;
                let reply = next_message(&mut ws).await;
                let _ = ws.close(None).await;
                reply
            })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.expect("client task"), Message::Text("Invalid Token".into()));
    }
    let fetches = idp.requests("/jwks") - before;
    assert!((1..=2).contains(&fetches), "{fetches} fetches for 200 unknown kids");
    // The known key still verifies.
    assert_accepted(&server, &key.mint(Some("k1"), &claims("https://a.example", "u"), &[])).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idp_down_longer_than_cache_secs_keeps_verifying_within_max_stale() {
    let key = TestKey::ec();
    let idp = Idp::start(vec![key.jwk("k1")]).await;
    let iss = "https://a.example";
    let server = Server::start(&issuers(&[issuer(
        &idp,
        iss,
        ", cache_secs = 1, min_refetch_secs = 1, max_stale_secs = 3600",
    )]));
    let token = key.mint(Some("k1"), &claims(iss, "u"), &[]);
    assert_accepted(&server, &token).await;
    idp.set_mode(Mode::Down);
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_accepted(&server, &token).await;
    // Several failed refreshes, one ERROR line naming the issuer and the URL, never a token.
    let line = server.expect_error_line(&[("kind", "jwks_fetch_failed"), ("issuer", iss)]);
    assert_eq!(line["url"], idp.jwks_url());
    let failures = server.error_log().lines().filter(|l| l.contains("jwks_fetch_failed")).count();
    assert_eq!(failures, 1, "{}", server.error_log());
    server.assert_logs_never_contain(&token);

    let listed = http(server.admin, "GET", "/issuers", &[], "").await;
    assert_eq!(listed.status, 200, "{listed:?}");
    let list: Value = serde_json::from_str(&listed.body).expect("issuers json");
    assert_eq!(list[0]["issuer"], iss);
    assert_eq!(list[0]["keys"], json!(["k1 (ES256)"]));
    assert_eq!(list[0]["usable"], true);
    assert_eq!(list[0]["last_fetch"]["outcome"], "io");
    let body = http(server.admin, "GET", "/metrics", &[], "").await.body;
    let label = format!("{{issuer=\"{iss}\"}}");
    assert_eq!(metric(&body, &format!("palisade_jwks_keys{label}")), Some(1.0));
    let ok = format!("palisade_jwks_fetches_total{{issuer=\"{iss}\",outcome=\"ok\"}}");
    assert_eq!(metric(&body, &ok), Some(1.0), "{body}");
    let age = metric(&body, &format!("palisade_jwks_seconds_since_last_good_fetch{label}"));
    assert!(age.is_some_and(|a| a >= 3.0), "{body}");
    assert!(body.ends_with("# EOF\n") && body.matches("# EOF").count() == 1);

    // Back up: a forced refresh fetches (rate-limited to one per min_refetch_secs).
    idp.set_mode(Mode::Serve);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let refreshed = http(server.admin, "POST", "/issuers/refresh", &[], "").await;
    let list: Value = serde_json::from_str(&refreshed.body).expect("refresh json");
    assert_eq!(list[0]["last_fetch"]["outcome"], "ok", "{list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_idp_still_starts_and_refuses_with_keys_unavailable() {
    let key = TestKey::rsa();
    let idp = Idp::start(vec![key.jwk("k1")]).await;
    idp.set_mode(Mode::Status(503));
    let server = Server::start(&issuers(&[issuer(
        &idp,
        "https://a.example",
        ", min_refetch_secs = 1, cache_secs = 1",
    )]));
    assert_refused(&server, &key.mint(Some("k1"), &claims("https://a.example", "u"), &[])).await;
    expect_console(&server, &["authentication failed", "keys_unavailable"]);
    assert_accepted(&server, &server.token("static-user", 600)).await;
    // The provider comes back: within a refetch its tokens verify.
    idp.set_mode(Mode::Serve);
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert_accepted(&server, &key.mint(Some("k1"), &claims("https://a.example", "u"), &[])).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jku_pointing_at_a_second_server_is_refused_and_never_fetched() {
    let key = TestKey::rsa();
    let idp = Idp::start(vec![key.jwk("k1")]).await;
    let attacker = Idp::start(vec![key.jwk("evil")]).await;
    let server = Server::start(&issuers(&[issuer(&idp, "https://a.example", "")]));
    for header in ["jku", "x5u"] {
        let token = key.mint(
            Some("evil"),
            &claims("https://a.example", "u"),
            &[(header, &attacker.jwks_url())],
        );
        assert_refused(&server, &token).await;
    }
    expect_console(&server, &["authentication failed", "forbidden_header"]);
    assert_eq!(attacker.total_requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hs256_token_naming_a_jwks_issuer_is_refused() {
    let key = TestKey::rsa();
    let idp = Idp::start(vec![key.jwk("k1")]).await;
    let server = Server::start(&issuers(&[issuer(&idp, "https://a.example", "")]));
    // Signed with the server's own static HS256 secret, but naming the JWKS issuer: only that
    // issuer's keys and algorithms apply.
    let token = mint_hs256(SECRET.as_bytes(), Some("k1"), &claims("https://a.example", "u"));
    assert_refused(&server, &token).await;
    expect_console(&server, &["authentication failed", "algorithm_not_allowed"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_with_a_mismatching_issuer_is_refused_at_start() {
    let idp = Idp::start(vec![TestKey::rsa().jwk("k1")]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("palisade.toml");
    let text = format!(
        "echo.listen = \"127.0.0.1:0\"\nsecure.listen = \"127.0.0.1:0\"\nadmin.enabled = false\n\
         log.dir = \"{}\"\n[[auth.issuers]]\nissuer = \"https://not-the-idp.example\"\n\
         discovery_url = \"{}\"\naudience = \"palisade\"\n",
        dir.path().display(),
        idp.discovery_url()
    );
    std::fs::write(&config, text).expect("write config");
    for args in [&["--config"][..], &["check", "--config"][..]] {
        let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_palisade"))
            .args(args)
            .arg(&config)
            .env("PALISADE_JWT_SECRET", SECRET)
            .kill_on_drop(true)
            .output();
        let out =
            tokio::time::timeout(Duration::from_secs(20), run).await.expect("exits").expect("runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} started: {stderr}");
        assert!(stderr.contains("names issuer \"") && stderr.contains("not-the-idp"), "{stderr}");
    }
    // With the right issuer, `palisade check` reports the keys it fetched.
    idp.set_discovery_issuer("https://not-the-idp.example");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(["check", "--config"])
        .arg(&config)
        .env("PALISADE_JWT_SECRET", SECRET)
        .output();
    let out =
        tokio::time::timeout(Duration::from_secs(20), out).await.expect("exits").expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        stdout.contains("issuer https://not-the-idp.example: 1 key(s) [k1 (RS256)]"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_refresh_with_another_issuers_token_follows_the_same_rules() {
    let (a_key, b_key) = (TestKey::rsa(), TestKey::ed25519());
    let idp_a = Idp::start(vec![a_key.jwk("a1")]).await;
    let idp_b = Idp::start(vec![b_key.jwk("b1")]).await;
    let server = Server::start(&issuers(&[
        issuer(&idp_a, "https://a.example", ""),
        issuer(&idp_b, "https://b.example", ""),
    ]));
    let mut ws = connect_with(server.secure, &[("sec-websocket-protocol", "palisade.v1")])
        .await
        .expect("v1 connect");
    let send = |token: String, kind: &str| json!({"type": kind, "token": token}).to_string();
    let envelope = |m: Message| -> Value {
        serde_json::from_str(m.to_text().expect("text envelope")).expect("json envelope")
    };
    ws.send(Message::text(send(
        a_key.mint(Some("a1"), &claims("https://a.example", "u1"), &[]),
        "auth",
    )))
    .await
    .expect("send auth");
    assert_eq!(envelope(next_message(&mut ws).await)["type"], "authenticated");
    // Same user, the other issuer: accepted with that issuer's keys.
    let b_token = b_key.mint(Some("b1"), &claims("https://b.example", "u1"), &[]);
    ws.send(Message::text(send(b_token, "refresh"))).await.expect("send refresh");
    assert_eq!(envelope(next_message(&mut ws).await)["type"], "refreshed");
    // B's kid on a token claiming A, and an HS256 token naming B: refused like at auth.
    for bad in [
        b_key.mint(Some("b1"), &claims("https://a.example", "u1"), &[]),
        mint_hs256(SECRET.as_bytes(), Some("b1"), &claims("https://b.example", "u1")),
    ] {
        ws.send(Message::text(send(bad, "refresh"))).await.expect("send refresh");
        let reply = envelope(next_message(&mut ws).await);
        assert_eq!(
            (reply["type"].as_str(), reply["reason"].as_str()),
            (Some("error"), Some("invalid_token")),
            "{reply}"
        );
    }
    // Another user from the other issuer: refused as a user mismatch.
    let other = b_key.mint(Some("b1"), &claims("https://b.example", "u2"), &[]);
    ws.send(Message::text(send(other, "refresh"))).await.expect("send refresh");
    assert_eq!(envelope(next_message(&mut ws).await)["type"], "error");
}

/// `palisade token` (`server::mint`) puts `[auth] issuer`/`audience` in `iss`/`aud`, so its RS256
/// tokens pass both a static key requiring them and a JWKS issuer publishing the same key (what
/// `cargo xtask bench --only S4j` compares).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minted_rs256_tokens_carry_iss_and_aud_for_the_static_key_and_an_issuer() {
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../token/tests/fixtures");
    let (public, private) = (fixtures.join("rsa-public.pem"), fixtures.join("rsa-private.pem"));
    let mut config = palisade_server::config::Config::default();
    config.auth.algorithm = "RS256".into();
    config.auth.public_key_file = Some(public.clone());
    config.auth.private_key_file = Some(private);
    config.auth.issuer = Some("https://a.example".into());
    config.auth.audience = Some("palisade".into());
    let token =
        palisade_server::server::mint(&config, "u", Duration::from_secs(600), None).expect("mint");

    let static_key = Server::start(&format!(
        "auth.algorithm = \"RS256\"\nauth.public_key_file = {:?}\n\
         auth.issuer = \"https://a.example\"\nauth.audience = \"palisade\"",
        public.display().to_string()
    ));
    assert_accepted(&static_key, &token).await;

    let idp = Idp::start(vec![TestKey::rsa().jwk("k1")]).await;
    let jwks = Server::start(&format!(
        "auth.algorithm = \"RS256\"\n{}",
        issuers(&[issuer(&idp, "https://a.example", ", algorithms = [\"RS256\"]")])
    ));
    assert_accepted(&jwks, &token).await;

    // Without `issuer`/`audience` in the configuration, neither claim is set.
    config.auth.issuer = None;
    config.auth.audience = None;
    let plain =
        palisade_server::server::mint(&config, "u", Duration::from_secs(600), None).expect("mint");
    assert_refused(&jwks, &plain).await;
}
