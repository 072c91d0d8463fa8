//! The admin HTTP API, called with raw HTTP/1.1.

use crate::support::{
    HttpResponse, Server, authenticated, expect_close, expect_dropped, http, round_trip,
};

async fn get(server: &Server, path: &str) -> HttpResponse {
    http(server.admin, "GET", path, &[], "").await
}

#[tokio::test]
async fn healthz_answers_200_ok() {
    let server = Server::start("");
    let resp = get(&server, "/healthz").await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body.trim(), "ok");
}

#[tokio::test]
async fn metrics_expose_palisade_connections() {
    let server = Server::start("");
    let mut ws = authenticated(&server, "42").await;
    round_trip(&mut ws, "count me").await;
    let resp = get(&server, "/metrics").await;
    assert_eq!(resp.status, 200);
    assert!(resp.body.contains("palisade_connections"), "metrics:\n{}", resp.body);
    let open =
        crate::support::metric(&resp.body, r#"palisade_connections_open{endpoint="secure"}"#);
    assert_eq!(open, Some(1.0), "metrics:\n{}", resp.body);
}

#[tokio::test]
async fn sessions_list_an_authenticated_session() {
    let server = Server::start("");
    let _ws = authenticated(&server, "42").await;
    let resp = get(&server, "/sessions").await;
    assert_eq!(resp.status, 200);
    let list: serde_json::Value = serde_json::from_str(&resp.body).expect("json");
    let list = list.as_array().expect("array");
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["user_id"], "42");
    assert_eq!(list[0]["endpoint"], "secure");
    assert!(list[0]["id"].as_str().is_some_and(|id| id.len() == 32), "{list:?}");
}

#[tokio::test]
async fn deleting_a_session_closes_it_with_1008_session_revoked() {
    let server = Server::start("");
    let mut ws = authenticated(&server, "42").await;
    let mut other = authenticated(&server, "43").await;
    let list: serde_json::Value =
        serde_json::from_str(&get(&server, "/sessions").await.body).expect("json");
    let id = list
        .as_array()
        .expect("array")
        .iter()
        .find(|s| s["user_id"] == "42")
        .and_then(|s| s["id"].as_str())
        .expect("session of user 42")
        .to_owned();
    let resp = http(server.admin, "DELETE", &format!("/sessions/{id}"), &[], "").await;
    assert_eq!(resp.status, 200, "{resp:?}");
    expect_close(&mut ws, 1008, Some("session revoked")).await;
    round_trip(&mut other, "not revoked").await;
    // The revoked session leaves the registry.
    let deadline = std::time::Instant::now() + crate::support::STEP;
    loop {
        let body = get(&server, "/sessions").await.body;
        if !body.contains(&id) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "revoked session still listed: {body}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn deleting_an_unknown_session_is_404() {
    let server = Server::start("");
    let resp =
        http(server.admin, "DELETE", "/sessions/0123456789abcdef0123456789abcdef", &[], "").await;
    assert_eq!(resp.status, 404);
}

#[tokio::test]
async fn admin_token_is_required_when_configured() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("admin.token");
    std::fs::write(&file, "s3cret-admin-token\n").expect("write token");
    let server = Server::start(&format!("admin.token_file = {:?}", file.display().to_string()));
    assert_eq!(get(&server, "/healthz").await.status, 200, "healthz stays open");
    assert_eq!(get(&server, "/metrics").await.status, 401);
    assert_eq!(get(&server, "/sessions").await.status, 401);
    let wrong =
        http(server.admin, "GET", "/metrics", &[("Authorization", "Bearer wrong")], "").await;
    assert_eq!(wrong.status, 401);
    let right = http(
        server.admin,
        "GET",
        "/metrics",
        &[("Authorization", "Bearer s3cret-admin-token")],
        "",
    )
    .await;
    assert_eq!(right.status, 200);
    assert!(right.body.contains("palisade_connections"));
    server.assert_logs_never_contain("s3cret-admin-token");
}

#[tokio::test]
async fn admin_ban_drops_connections_until_lifted() {
    let server = Server::start("");
    let resp = http(server.admin, "POST", "/bans", &[], r#"{"ip": "127.0.0.1", "secs": 60}"#).await;
    assert_eq!(resp.status, 201, "{resp:?}");
    let bans = get(&server, "/bans").await;
    assert!(bans.body.contains("127.0.0.1"), "{bans:?}");
    expect_dropped(server.echo).await;
    let lifted = http(server.admin, "DELETE", "/bans/127.0.0.1", &[], "").await;
    assert_eq!(lifted.status, 204, "{lifted:?}");
    crate::support::assert_echo_serves(&server).await;
}
