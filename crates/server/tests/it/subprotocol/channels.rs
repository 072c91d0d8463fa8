//! Channels over `palisade.v1` (docs/subprotocol.md#channels), against the real binary: grants
//! from the token, public channels, revocation at refresh, history and recovery, epochs across
//! restarts, presence, fan-out to many subscribers, typed refusals, the admin API (publish,
//! ending a user's subscriptions, closing a channel), the history TTL sweep, and the
//! application's `authorize_*` hooks in a server started in-process.

use std::time::Duration;

use palisade_token::{Algorithm, Claims};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use super::bounded;
use super::v1::{
    self, Frame, connect_v1, expect_type, http, next_within, round_trip, send, send_raw,
};
use crate::support::{SECRET, STEP, Server, Ws, metric, mint, now, toml_path};

/// A token for `user_id` with `grants` as its `channels` claim (none when null).
pub(crate) fn grant_token(user_id: &str, grants: &Value, ttl: u64) -> String {
    let mut claims = Claims::new(user_id);
    claims.exp = Some(now() + ttl);
    claims.iat = Some(now());
    if !grants.is_null() {
        claims.extra.insert("channels".into(), grants.clone());
    }
    mint(Algorithm::Hs256, SECRET, &claims)
}

/// Connects and authenticates as `user_id` with these grants.
pub(crate) async fn login(server: &Server, user_id: &str, grants: Value) -> Ws {
    let mut ws = connect_v1(server, &[]).await;
    send(&mut ws, &json!({"type": "auth", "token": grant_token(user_id, &grants, 600)})).await;
    expect_type(&mut ws, "authenticated").await;
    ws
}

pub(crate) fn all_rights() -> Value {
    json!(["subscribe", "publish", "presence", "history"])
}

/// Sends a request and returns the next envelope, which must have `kind`.
pub(crate) async fn ask(ws: &mut Ws, request: Value, kind: &str) -> Value {
    send(ws, &request).await;
    let reply = expect_type(ws, kind).await;
    if let Some(id) = request.get("id") {
        assert_eq!(&reply["id"], id, "the reply carries the request's id: {reply}");
    }
    reply
}

/// Sends a request and expects an `error` with `reason` and the request's id.
pub(crate) async fn refused(ws: &mut Ws, request: Value, reason: &str) -> String {
    let reply = ask(ws, request, "error").await;
    assert_eq!(reply["reason"], reason, "{reply}");
    reply["detail"].as_str().expect("detail").to_owned()
}

pub(crate) async fn subscribe(ws: &mut Ws, channel: &str) -> Value {
    let reply =
        ask(ws, json!({"type": "subscribe", "channel": channel, "id": 1}), "subscribed").await;
    assert_eq!(reply["channel"], channel);
    reply
}

pub(crate) async fn publish(ws: &mut Ws, channel: &str, data: Value) -> u64 {
    let reply =
        ask(ws, json!({"type": "publish", "channel": channel, "data": data, "id": 2}), "ok").await;
    reply["offset"].as_u64().expect("offset")
}

/// The next envelope is a publication on `channel`.
pub(crate) async fn publication(ws: &mut Ws, channel: &str) -> Value {
    let p = expect_type(ws, "publication").await;
    assert_eq!(p["channel"], channel, "{p}");
    p
}

/// Proves nothing else is queued for `ws`: an echo round trip comes back first.
async fn nothing_pending(ws: &mut Ws) {
    assert_eq!(round_trip(ws, json!(0)).await, json!("Server received: 0"));
}

#[tokio::test]
async fn subscribe_publish_unsubscribe_between_two_sessions() {
    bounded(20, async {
        let server = Server::start("");
        let grants = json!({"chat:*": all_rights()});
        let mut a = login(&server, "alice", grants.clone()).await;
        let mut b = login(&server, "42", grants).await;
        let sub = subscribe(&mut a, "chat:room1").await;
        assert_eq!((sub["offset"].as_u64(), &sub["recovered"]), (Some(0), &json!(false)));
        assert_eq!(sub["publications"], json!([]));
        assert_eq!(publish(&mut b, "chat:room1", json!({"text": "hi"})).await, 1);
        assert_eq!(publish(&mut b, "chat:room1", json!([1, "two"])).await, 2);
        let p1 = publication(&mut a, "chat:room1").await;
        assert_eq!((p1["offset"].as_u64(), &p1["data"]), (Some(1), &json!({"text": "hi"})));
        assert_eq!(p1["info"], json!({"user_id": "42"}));
        let p2 = publication(&mut a, "chat:room1").await;
        assert_eq!((p2["offset"].as_u64(), &p2["data"]), (Some(2), &json!([1, "two"])));
        // The publisher is not subscribed: it got only its `ok`s.
        nothing_pending(&mut b).await;
        let un = ask(
            &mut a,
            json!({"type": "unsubscribe", "channel": "chat:room1", "id": 8}),
            "unsubscribed",
        )
        .await;
        assert_eq!(un["reason"], "client");
        publish(&mut b, "chat:room1", json!("after")).await;
        nothing_pending(&mut a).await;
    })
    .await;
}

#[tokio::test]
async fn grants_with_wildcards_and_user_id_decide_and_refusals_keep_the_connection() {
    bounded(20, async {
        let server = Server::start("");
        let grants = json!({"chat:*": ["subscribe"], "user:{user_id}": ["subscribe"], "ro:*:log": ["history"]});
        let mut ws = login(&server, "42", grants).await;
        subscribe(&mut ws, "chat:room1").await;
        subscribe(&mut ws, "chat:room1:thread").await;
        subscribe(&mut ws, "user:42").await;
        for channel in ["user:43", "user:42:x", "chat", "news", "other:room1"] {
            let req = json!({"type": "subscribe", "channel": channel, "id": 5});
            let detail = refused(&mut ws, req, "permission_denied").await;
            assert!(detail.contains("subscribe"), "{detail}");
        }
        let req = json!({"type": "publish", "channel": "chat:room1", "data": 1, "id": 6});
        refused(&mut ws, req, "permission_denied").await;
        let req = json!({"type": "presence", "channel": "chat:room1", "id": 7});
        refused(&mut ws, req, "permission_denied").await;
        let req = json!({"type": "history", "channel": "ro:x:log", "id": 9});
        // Granted, but this server keeps no history.
        refused(&mut ws, req, "unavailable").await;
        // A token without the claim grants nothing.
        let mut none = login(&server, "7", Value::Null).await;
        refused(&mut none, json!({"type": "subscribe", "channel": "chat:a", "id": 1}), "permission_denied")
            .await;
        nothing_pending(&mut ws).await;
        nothing_pending(&mut none).await;
        let (status, metrics) = http(server.admin, "GET", "/metrics", "").await;
        assert_eq!(status, 200);
        assert!(metrics.contains("palisade_channel_denials_total{reason=\"permission_denied\"} 8"), "{metrics}");
        assert!(metrics.contains("palisade_channel_subscriptions_total 3"), "{metrics}");
        assert!(metrics.ends_with("# EOF\n"), "one exposition");
    })
    .await;
}

#[tokio::test]
async fn public_channels_and_admin_publish_reach_subscribers() {
    bounded(20, async {
        let server = Server::start("channels.public = [\"news\", \"status:*\"]");
        let mut a = login(&server, "a", Value::Null).await;
        let mut b = login(&server, "b", Value::Null).await;
        subscribe(&mut a, "news").await;
        subscribe(&mut b, "news").await;
        subscribe(&mut b, "status:eu").await;
        // Public means subscribe only.
        refused(
            &mut a,
            json!({"type": "publish", "channel": "news", "data": 1, "id": 3}),
            "permission_denied",
        )
        .await;
        let (status, body) =
            http(server.admin, "POST", "/channels/news/publish", r#"{"headline":"up"}"#).await;
        assert_eq!(status, 200, "{body}");
        let answer: Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!((answer["offset"].as_u64(), answer["delivered"].as_u64()), (Some(1), Some(2)));
        for ws in [&mut a, &mut b] {
            let p = publication(ws, "news").await;
            assert_eq!(p["data"], json!({"headline": "up"}));
            assert!(p.get("info").is_none(), "server-side publications name no publisher: {p}");
        }
        let (status, body) = http(server.admin, "GET", "/channels", "").await;
        assert_eq!(status, 200);
        let list: Value = serde_json::from_str(&body).expect("JSON");
        let rows = list.as_array().expect("array");
        assert_eq!(rows.len(), 2, "{list}");
        assert_eq!((&rows[0]["channel"], &rows[0]["subscribers"]), (&json!("news"), &json!(2)));
        assert_eq!(
            (&rows[1]["channel"], &rows[1]["subscribers"]),
            (&json!("status:eu"), &json!(1))
        );
        let (status, body) = http(server.admin, "GET", "/channels/news/presence", "").await;
        assert_eq!(status, 200);
        let presence: Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(
            presence["users"],
            json!([{"user_id": "a", "sessions": 1}, {"user_id": "b", "sessions": 1}])
        );
        let (status, _) = http(server.admin, "POST", "/channels/news/publish", "{not json").await;
        assert_eq!(status, 400);
        let (status, _) = http(server.admin, "POST", "/channels/a%20b/publish", "1").await;
        assert_eq!(status, 400);
        // Data larger than `limits.max_message_bytes` (64 KiB, as `channels.max_data_bytes` is
        // 0) is refused and names the keys.
        let big = format!("\"{}\"", "x".repeat(70 * 1024));
        let (status, body) = http(server.admin, "POST", "/channels/news/publish", &big).await;
        assert_eq!(status, 413, "{body}");
        assert!(body.contains("channels.max_data_bytes"), "{body}");
        assert!(body.contains("limits.max_message_bytes"), "{body}");
        nothing_pending(&mut a).await;
    })
    .await;
}

#[tokio::test]
async fn a_grant_removed_by_refresh_ends_the_subscription() {
    bounded(20, async {
        let server = Server::start("");
        let mut ws = login(&server, "42", json!({"chat:*": ["subscribe"]})).await;
        subscribe(&mut ws, "chat:a").await;
        subscribe(&mut ws, "chat:b").await;
        let token = grant_token("42", &json!({"chat:b": ["subscribe"]}), 600);
        send(&mut ws, &json!({"type": "refresh", "token": token})).await;
        expect_type(&mut ws, "refreshed").await;
        let un = expect_type(&mut ws, "unsubscribed").await;
        assert_eq!(
            (&un["channel"], &un["reason"]),
            (&json!("chat:a"), &json!("permission_revoked"))
        );
        for channel in ["chat:a", "chat:b"] {
            let path = format!("/channels/{channel}/publish");
            let (status, _) = http(server.admin, "POST", &path, "\"ping\"").await;
            assert_eq!(status, 200);
        }
        let p = publication(&mut ws, "chat:b").await;
        assert_eq!(p["data"], "ping");
        nothing_pending(&mut ws).await;
    })
    .await;
}

#[tokio::test]
async fn recovery_after_a_reconnect_with_and_without_a_gap() {
    bounded(30, async {
        let server = Server::start("channels.history_size = 3");
        let grants = json!({"chat:*": all_rights()});
        let mut publisher = login(&server, "p", grants.clone()).await;
        let mut reader = login(&server, "r", grants.clone()).await;
        let sub = subscribe(&mut reader, "chat:r").await;
        let epoch = sub["epoch"].as_str().expect("epoch").to_owned();
        for n in 1..=2 {
            publish(&mut publisher, "chat:r", json!(n)).await;
            assert_eq!(publication(&mut reader, "chat:r").await["offset"], n);
        }
        drop(reader);
        for n in 3..=4 {
            publish(&mut publisher, "chat:r", json!(n)).await;
        }
        // Back within the history: both missed publications, in order, in one reply.
        let mut reader = login(&server, "r", grants.clone()).await;
        let since = json!({"epoch": epoch, "offset": 2});
        let req = json!({"type": "subscribe", "channel": "chat:r", "id": 7, "since": since});
        let sub = ask(&mut reader, req, "subscribed").await;
        assert_eq!((&sub["recovered"], &sub["epoch"], &sub["offset"]), (&json!(true), &json!(epoch), &json!(4)));
        let got: Vec<(Value, Value)> = sub["publications"]
            .as_array()
            .expect("publications")
            .iter()
            .map(|p| (p["offset"].clone(), p["data"].clone()))
            .collect();
        assert_eq!(got, vec![(json!(3), json!(3)), (json!(4), json!(4))]);
        // Live publications follow the recovered ones.
        publish(&mut publisher, "chat:r", json!(5)).await;
        assert_eq!(publication(&mut reader, "chat:r").await["offset"], 5);
        // Up to date: recovered, nothing to send.
        let mut again = login(&server, "r", grants.clone()).await;
        let req = json!({"type": "subscribe", "channel": "chat:r", "id": 8, "since": {"epoch": epoch, "offset": 5}});
        let sub = ask(&mut again, req, "subscribed").await;
        assert_eq!((&sub["recovered"], &sub["publications"]), (&json!(true), &json!([])));
        drop(reader);
        drop(again);
        // Away longer than the history holds: not recovered, and the current position.
        for n in 6..=10 {
            publish(&mut publisher, "chat:r", json!(n)).await;
        }
        let mut reader = login(&server, "r", grants.clone()).await;
        let req = json!({"type": "subscribe", "channel": "chat:r", "id": 9, "since": {"epoch": epoch, "offset": 5}});
        let sub = ask(&mut reader, req, "subscribed").await;
        assert_eq!((&sub["recovered"], &sub["offset"], &sub["publications"]), (&json!(false), &json!(10), &json!([])));
        // A wrong epoch is never recovered.
        let req = json!({"type": "subscribe", "channel": "chat:r", "id": 10, "since": {"epoch": "0000", "offset": 9}});
        assert_eq!(ask(&mut reader, req, "subscribed").await["recovered"], false);
        // History: the last three, oldest first; `limit` takes fewer.
        let req = json!({"type": "history", "channel": "chat:r", "id": 11, "limit": 50});
        let h = ask(&mut reader, req, "history").await;
        let offsets: Vec<&Value> = h["publications"].as_array().expect("list").iter().map(|p| &p["offset"]).collect();
        assert_eq!(offsets, [&json!(8), &json!(9), &json!(10)]);
        assert_eq!(h["epoch"], json!(epoch));
        let req = json!({"type": "history", "channel": "chat:r", "id": 12, "limit": 1});
        assert_eq!(ask(&mut reader, req, "history").await["publications"][0]["offset"], 10);
        let (_, metrics) = http(server.admin, "GET", "/metrics", "").await;
        assert!(metrics.contains("palisade_channel_recoveries_total{outcome=\"recovered\"} 2"), "{metrics}");
        assert!(metrics.contains("palisade_channel_recoveries_total{outcome=\"not_recovered\"} 2"), "{metrics}");
    })
    .await;
}

#[tokio::test]
async fn a_restart_changes_the_epoch_so_nothing_is_silently_skipped() {
    bounded(30, async {
        let grants = json!({"chat:*": all_rights()});
        let config = "channels.history_size = 10";
        let (epoch, offset) = {
            let server = Server::start(config);
            let mut ws = login(&server, "42", grants.clone()).await;
            let epoch = subscribe(&mut ws, "chat:e").await["epoch"].clone();
            publish(&mut ws, "chat:e", json!("x")).await;
            (epoch, publication(&mut ws, "chat:e").await["offset"].clone())
        };
        let server = Server::start(config);
        let mut ws = login(&server, "42", grants).await;
        let req = json!({"type": "subscribe", "channel": "chat:e", "id": 1, "since": {"epoch": epoch, "offset": offset}});
        let sub = ask(&mut ws, req, "subscribed").await;
        assert_eq!(sub["recovered"], false);
        assert_ne!(sub["epoch"], epoch, "a new process starts a new epoch");
        assert_eq!(sub["offset"], 0);
    })
    .await;
}

#[tokio::test]
async fn presence_lists_users_with_session_counts_and_can_publish_joins() {
    bounded(30, async {
        let server = Server::start("");
        let grants = json!({"room:*": all_rights()});
        let mut a1 = login(&server, "a", grants.clone()).await;
        let mut a2 = login(&server, "a", grants.clone()).await;
        let mut b = login(&server, "b", grants.clone()).await;
        for ws in [&mut a1, &mut a2, &mut b] {
            subscribe(ws, "room:1").await;
        }
        let req = json!({"type": "presence", "channel": "room:1", "id": 10});
        let p = ask(&mut b, req.clone(), "presence").await;
        assert_eq!(
            p["users"],
            json!([{"user_id": "a", "sessions": 2}, {"user_id": "b", "sessions": 1}])
        );
        drop(a2);
        // The closed session leaves its channels (its close is processed asynchronously).
        let mut users = Value::Null;
        for _ in 0..100 {
            users = ask(&mut b, req.clone(), "presence").await["users"].clone();
            if users[0]["sessions"] == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            users,
            json!([{"user_id": "a", "sessions": 1}, {"user_id": "b", "sessions": 1}])
        );

        let events = Server::start("channels.presence_events = true");
        let mut a = login(&events, "a", grants.clone()).await;
        let mut b = login(&events, "b", grants.clone()).await;
        subscribe(&mut a, "room:2").await;
        assert_eq!(
            publication(&mut a, "room:2").await["data"],
            json!({"presence": "join", "user_id": "a"})
        );
        subscribe(&mut b, "room:2").await;
        let join = publication(&mut a, "room:2").await;
        assert_eq!(
            (&join["data"], &join["info"]["user_id"]),
            (&json!({"presence": "join", "user_id": "b"}), &json!("b"))
        );
        assert_eq!(publication(&mut b, "room:2").await["data"]["presence"], "join");
        ask(&mut b, json!({"type": "unsubscribe", "channel": "room:2", "id": 3}), "unsubscribed")
            .await;
        assert_eq!(
            publication(&mut a, "room:2").await["data"],
            json!({"presence": "leave", "user_id": "b"})
        );
    })
    .await;
}

#[tokio::test]
async fn two_hundred_subscribers_get_every_publication_in_order() {
    bounded(60, async {
        let server = Server::start(
            "channels.public = [\"fan\"]\nfirewall.handshakes_per_sec_per_ip = 0\nfirewall.max_connections_per_ip = 1000",
        );
        let mut subscribers = Vec::new();
        for i in 0..200 {
            let mut ws = login(&server, &format!("u{i}"), Value::Null).await;
            subscribe(&mut ws, "fan").await;
            subscribers.push(ws);
        }
        let mut publisher = login(&server, "pub", json!({"fan": ["publish"]})).await;
        const N: u64 = 20;
        for n in 1..=N {
            assert_eq!(publish(&mut publisher, "fan", json!({"n": n})).await, n);
        }
        let readers = subscribers.into_iter().map(|mut ws| {
            tokio::spawn(async move {
                for n in 1..=N {
                    let p = publication(&mut ws, "fan").await;
                    assert_eq!((&p["offset"], &p["data"]), (&json!(n), &json!({"n": n})));
                }
            })
        });
        for r in readers.collect::<Vec<_>>() {
            r.await.expect("subscriber saw every publication in order");
        }
    })
    .await;
}

#[tokio::test]
async fn bad_channel_envelopes_get_typed_errors_and_the_connection_stays() {
    bounded(20, async {
        let server = Server::start("channels.max_subscriptions_per_session = 2");
        let mut ws = login(&server, "42", json!({"*": all_rights()})).await;
        let bad: [(&str, &str); 14] = [
            (r#"{"type":"subscribe","id":1}"#, "bad_channel"),
            (r#"{"type":"subscribe","channel":"a b","id":2}"#, "bad_channel"),
            (r#"{"type":"subscribe","channel":"x","id":3,"since":{"epoch":"e"}}"#, "bad_envelope"),
            (r#"{"type":"subscribe","channel":"x","id":{"n":1}}"#, "bad_envelope"),
            (r#"{"type":"unsubscribe","channel":7,"id":4}"#, "bad_channel"),
            (r#"{"type":"unsubscribe","channel":"","id":5}"#, "bad_channel"),
            (r#"{"type":"publish","channel":"x","id":6}"#, "bad_envelope"),
            (r#"{"type":"publish","channel":"caf\u00e9","data":1,"id":7}"#, "bad_channel"),
            (r#"{"type":"presence","id":8}"#, "bad_channel"),
            (r#"{"type":"presence","channel":"tab\there","id":9}"#, "bad_channel"),
            (r#"{"type":"history","channel":"x","limit":-1,"id":10}"#, "bad_envelope"),
            (r#"{"type":"history","channel":"x","limit":"all","id":11}"#, "bad_envelope"),
            (r#"{"type":"history","id":12}"#, "bad_channel"),
            (r#"{"type":"publish","channel":"x","data":1,"id":-3}"#, "bad_envelope"),
        ];
        for (text, reason) in bad {
            send_raw(&mut ws, Message::text(text)).await;
            match next_within(&mut ws, STEP).await {
                Frame::Envelope(v) if v["type"] == "error" => {
                    assert_eq!(v["reason"], reason, "{text} -> {v}");
                    let id: Value =
                        serde_json::from_str::<Value>(text).expect("json")["id"].clone();
                    if id.is_u64() {
                        assert_eq!(v["id"], id, "{text} -> {v}");
                    }
                    assert!(v.get("reconnect").is_none(), "not a close: {v}");
                }
                other => panic!("{text}: expected an error, got {other:?}"),
            }
        }
        let long = "x".repeat(256);
        let req = json!({"type": "subscribe", "channel": long, "id": 13});
        send_raw(&mut ws, Message::text(req.to_string())).await;
        assert_eq!(expect_type(&mut ws, "error").await["reason"], "bad_channel");
        subscribe(&mut ws, "one").await;
        subscribe(&mut ws, "two").await;
        // Subscribing again is answered again, and does not count twice.
        subscribe(&mut ws, "two").await;
        let detail = refused(
            &mut ws,
            json!({"type": "subscribe", "channel": "three", "id": 14}),
            "too_many_subscriptions",
        )
        .await;
        assert!(detail.contains("max_subscriptions_per_session"), "{detail}");
        // Far more than `close_after_bad_envelopes` refusals, and the session still serves.
        nothing_pending(&mut ws).await;
        // Before authentication a channel envelope is refused like any other.
        let mut anon = connect_v1(&server, &[]).await;
        send(&mut anon, &json!({"type": "subscribe", "channel": "one", "id": 1})).await;
        v1::expect_error_then_close(
            &mut anon,
            "not_authenticated",
            1008,
            "authentication required",
        )
        .await;
    })
    .await;
}

/// The next envelope is `unsubscribed` from `channel` with `reason`, without an `id`.
async fn ended(ws: &mut Ws, channel: &str, reason: &str) {
    let un = expect_type(ws, "unsubscribed").await;
    assert_eq!((&un["channel"], &un["reason"]), (&json!(channel), &json!(reason)), "{un}");
    assert!(un.get("id").is_none(), "not the answer to a request: {un}");
}

/// An admin call answering JSON with `status`.
async fn admin_json(server: &Server, method: &str, path: &str, status: u16) -> Value {
    let (got, body) = http(server.admin, method, path, "").await;
    assert_eq!(got, status, "{method} {path}: {body}");
    serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {body}"))
}

#[tokio::test]
async fn the_admin_api_ends_a_users_subscriptions_with_permission_revoked() {
    bounded(30, async {
        let builder = Server::builder();
        let audit_file = builder.dir().join("audit.log");
        let mut server = builder
            .set("audit.file", toml_path(&audit_file))
            .overrides("channels.max_subscriptions_per_session = 2\nlimits.drain_timeout_secs = 2")
            .start();
        let grants = json!({"chat:*": all_rights()});
        let mut a1 = login(&server, "alice", grants.clone()).await;
        let mut a2 = login(&server, "alice", grants.clone()).await;
        let mut b = login(&server, "bob", grants.clone()).await;
        for ws in [&mut a1, &mut a2, &mut b] {
            subscribe(ws, "chat:x").await;
        }
        subscribe(&mut a1, "chat:y").await;

        let answer = admin_json(&server, "DELETE", "/channels/chat:x/subscribers/alice", 200).await;
        assert_eq!(answer, json!({"channel": "chat:x", "user_id": "alice", "unsubscribed": 2}));
        for ws in [&mut a1, &mut a2] {
            ended(ws, "chat:x", "permission_revoked").await;
        }
        let (status, body) = http(server.admin, "POST", "/channels/chat:x/publish", "1").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(serde_json::from_str::<Value>(&body).expect("JSON")["delivered"], 1);
        assert_eq!(publication(&mut b, "chat:x").await["data"], 1);
        // Alice's other subscription goes on.
        http(server.admin, "POST", "/channels/chat:y/publish", "2").await;
        assert_eq!(publication(&mut a1, "chat:y").await["data"], 2);
        nothing_pending(&mut a1).await;
        nothing_pending(&mut a2).await;
        let presence = admin_json(&server, "GET", "/channels/chat:x/presence", 200).await;
        assert_eq!(presence["users"], json!([{"user_id": "bob", "sessions": 1}]));
        // Nothing left to end: 404.
        let (status, _) =
            http(server.admin, "DELETE", "/channels/chat:x/subscribers/alice", "").await;
        assert_eq!(status, 404);
        let (status, _) =
            http(server.admin, "DELETE", "/channels/a%20b/subscribers/alice", "").await;
        assert_eq!(status, 400);
        // The connection forgot the subscription: with a limit of 2 it can take another channel,
        // and the token (unchanged) still lets it subscribe again.
        subscribe(&mut a1, "chat:z").await;
        let detail = refused(
            &mut a1,
            json!({"type": "subscribe", "channel": "chat:x", "id": 3}),
            "too_many_subscriptions",
        )
        .await;
        assert!(detail.contains("2"), "{detail}");
        subscribe(&mut a2, "chat:x").await;
        http(server.admin, "POST", "/channels/chat:x/publish", "3").await;
        assert_eq!(publication(&mut a2, "chat:x").await["data"], 3);
        assert_eq!(publication(&mut b, "chat:x").await["data"], 3);
        let (_, metrics) = http(server.admin, "GET", "/metrics", "").await;
        assert_eq!(
            metric(&metrics, "palisade_channel_denials_total{reason=\"permission_revoked\"}"),
            Some(2.0),
            "{metrics}"
        );
        // Audited like every admin call (the file is complete once the server has exited).
        drop((a1, a2, b));
        server.terminate();
        assert!(server.wait_exit(STEP).success());
        let audit = std::fs::read_to_string(&audit_file).expect("audit file");
        let call = audit
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).expect("audit JSON"))
            .find(|r| {
                r["event"] == "admin_call" && r["path"] == "/channels/chat:x/subscribers/alice"
            })
            .unwrap_or_else(|| panic!("no admin_call record in:\n{audit}"));
        assert_eq!((&call["method"], &call["status"]), (&json!("DELETE"), &json!(200)));
    })
    .await;
}

#[tokio::test]
async fn closing_a_channel_ends_every_subscription_and_starts_a_new_epoch() {
    bounded(30, async {
        let server =
            Server::start("channels.history_size = 10\nchannels.max_subscriptions_per_session = 1");
        let grants = json!({"chat:*": all_rights()});
        let mut a = login(&server, "a", grants.clone()).await;
        let mut b = login(&server, "b", grants.clone()).await;
        let epoch = subscribe(&mut a, "chat:c").await["epoch"].clone();
        subscribe(&mut b, "chat:c").await;
        for n in 1..=2 {
            publish(&mut a, "chat:c", json!(n)).await;
            for ws in [&mut a, &mut b] {
                assert_eq!(publication(ws, "chat:c").await["offset"], n);
            }
        }
        let answer = admin_json(&server, "DELETE", "/channels/chat:c", 200).await;
        assert_eq!(
            answer,
            json!({"channel": "chat:c", "unsubscribed": 2, "history_dropped": 2})
        );
        for ws in [&mut a, &mut b] {
            ended(ws, "chat:c", "channel_closed").await;
        }
        assert_eq!(admin_json(&server, "GET", "/channels", 200).await, json!([]));
        let (_, metrics) = http(server.admin, "GET", "/metrics", "").await;
        assert_eq!(metric(&metrics, "palisade_channel_history_bytes"), Some(0.0), "{metrics}");
        // The history is gone with the epoch: a recovery is not possible.
        let req = json!({"type": "subscribe", "channel": "chat:c", "id": 4, "since": {"epoch": epoch, "offset": 2}});
        let sub = ask(&mut a, req, "subscribed").await;
        assert_eq!((&sub["recovered"], &sub["offset"]), (&json!(false), &json!(0)));
        assert_ne!(sub["epoch"], epoch);
        // b's connection forgot the closed subscription (its limit is 1).
        subscribe(&mut b, "chat:d").await;
        publish(&mut b, "chat:c", json!("new")).await;
        assert_eq!(publication(&mut a, "chat:c").await["offset"], 1);
        nothing_pending(&mut b).await;
        let (status, _) = http(server.admin, "DELETE", "/channels/chat:none", "").await;
        assert_eq!(status, 404);
    })
    .await;
}

#[tokio::test]
async fn history_past_its_ttl_is_swept_from_idle_channels() {
    bounded(30, async {
        let server = Server::start("channels.history_size = 10\nchannels.history_ttl_secs = 1");
        for n in 1..=3 {
            let (status, _) =
                http(server.admin, "POST", "/channels/idle/publish", &n.to_string()).await;
            assert_eq!(status, 200);
        }
        let rows = admin_json(&server, "GET", "/channels", 200).await;
        assert_eq!(rows[0]["history"], 3, "{rows}");
        // Nobody uses the channel again; the sweep alone returns its memory.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let rows = admin_json(&server, "GET", "/channels", 200).await;
            let (_, metrics) = http(server.admin, "GET", "/metrics", "").await;
            if rows == json!([]) {
                assert_eq!(metric(&metrics, "palisade_channel_history_bytes"), Some(0.0));
                assert_eq!(metric(&metrics, "palisade_channels_active"), Some(0.0));
                break;
            }
            assert!(std::time::Instant::now() < deadline, "history not swept: {rows}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
}

/// An application that refuses what the grants allow and allows what they do not.
struct ReadOnlyRooms;

impl palisade_server::app::Handler for ReadOnlyRooms {
    fn authorize_subscribe(
        &self,
        session: &palisade_server::sessions::SessionInfo,
        channel: &str,
        grant: palisade_server::app::Authorization,
    ) -> palisade_server::app::Authorization {
        match channel {
            "lobby" => Ok(()),
            "chat:vip" if session.user_id != "vip" => {
                Err(palisade_server::app::Denied::new("chat:vip is for vip only"))
            }
            _ => grant,
        }
    }

    fn authorize_publish(
        &self,
        _session: &palisade_server::sessions::SessionInfo,
        channel: &str,
        grant: palisade_server::app::Authorization,
    ) -> palisade_server::app::Authorization {
        match channel {
            "chat:readonly" => Err(palisade_server::app::Denied::new("chat:readonly is read-only")),
            _ => grant,
        }
    }
}

#[tokio::test]
async fn the_applications_hooks_refuse_and_allow_in_a_server_started_in_process() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    bounded(20, async {
        let config = super::in_process_config();
        let server =
            palisade_server::server::Server::start(&config, ReadOnlyRooms).await.expect("start");
        let addr = server.secure_addr.expect("secure address");
        let connect = |user_id: &'static str| async move {
            let mut req = format!("ws://{addr}/").into_client_request().expect("request");
            req.headers_mut().insert("sec-websocket-protocol", v1::V1.parse().expect("value"));
            let (mut ws, _) = tokio::time::timeout(STEP, tokio_tungstenite::connect_async(req))
                .await
                .expect("handshake in time")
                .expect("handshake");
            let grants = json!({"chat:*": all_rights()});
            send(&mut ws, &json!({"type": "auth", "token": grant_token(user_id, &grants, 600)}))
                .await;
            expect_type(&mut ws, "authenticated").await;
            ws
        };
        let mut ws = connect("42").await;
        subscribe(&mut ws, "chat:readonly").await;
        let req = json!({"type": "publish", "channel": "chat:readonly", "data": 1, "id": 5});
        assert_eq!(refused(&mut ws, req, "permission_denied").await, "chat:readonly is read-only");
        let req = json!({"type": "subscribe", "channel": "chat:vip", "id": 6});
        assert_eq!(refused(&mut ws, req, "permission_denied").await, "chat:vip is for vip only");
        // Not granted by the token, allowed by the application.
        subscribe(&mut ws, "lobby").await;
        // The grants' own refusal still stands where the application returns it.
        let req = json!({"type": "publish", "channel": "lobby", "data": 1, "id": 7});
        let detail = refused(&mut ws, req, "permission_denied").await;
        assert!(detail.contains("publish"), "{detail}");
        // Granted and not refused: served.
        let mut vip = connect("vip").await;
        subscribe(&mut vip, "chat:vip").await;
        publish(&mut ws, "chat:vip", json!("hello")).await;
        assert_eq!(publication(&mut vip, "chat:vip").await["data"], "hello");
        nothing_pending(&mut ws).await;
        assert!(server.shutdown().await, "drained");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_subscriber_is_closed_alone_and_the_others_get_everything() {
    bounded(60, async {
        let server = Server::start(
            "channels.public = [\"feed\"]\nlimits.outbound_queue = 32\nfirewall.messages_per_sec = 100000",
        );
        // Never reads: its socket buffers fill, then its queue of 32.
        let mut slow = login(&server, "slow", Value::Null).await;
        subscribe(&mut slow, "feed").await;
        let mut readers = Vec::new();
        for i in 0..4 {
            let mut ws = login(&server, &format!("fast{i}"), Value::Null).await;
            subscribe(&mut ws, "feed").await;
            readers.push(ws);
        }
        const N: u64 = 1500;
        let readers: Vec<_> = readers
            .into_iter()
            .map(|mut ws| {
                tokio::spawn(async move {
                    for n in 1..=N {
                        let p = publication(&mut ws, "feed").await;
                        assert_eq!(p["offset"], n, "{}", p["offset"]);
                    }
                })
            })
            .collect();
        let mut publisher = login(&server, "pub", json!({"feed": ["publish"]})).await;
        let filler = "x".repeat(4096);
        for n in 1..=N {
            assert_eq!(publish(&mut publisher, "feed", json!({"n": n, "pad": filler})).await, n);
        }
        for r in readers {
            r.await.expect("every fast subscriber got every publication in order");
        }
        // The slow one got a prefix, then its close.
        let mut got = 0u64;
        loop {
            match next_within(&mut slow, STEP).await {
                Frame::Envelope(p) if p["type"] == "publication" => {
                    got += 1;
                    assert_eq!(p["offset"], got);
                }
                Frame::Envelope(e) if e["type"] == "error" => {
                    assert_eq!(e["reason"], "slow_consumer", "{e}");
                }
                Frame::Close(code, reason) => {
                    assert_eq!((code, reason.as_str()), (1008, "slow consumer"));
                    break;
                }
                other => panic!("slow subscriber: unexpected {other:?}"),
            }
        }
        assert!(got < N, "the slow subscriber was closed before the end ({got} of {N})");
    })
    .await;
}

#[tokio::test]
async fn publications_over_channels_max_data_bytes_are_refused_and_the_connection_stays() {
    bounded(20, async {
        let server = Server::start("channels.max_data_bytes = 100");
        let mut ws = login(&server, "a", json!({"chat:*": all_rights()})).await;
        let big = json!({"type": "publish", "channel": "chat:a", "data": "x".repeat(200), "id": 5});
        let detail = refused(&mut ws, big, "message_too_big").await;
        assert!(detail.contains("channels.max_data_bytes"), "{detail}");
        assert_eq!(publish(&mut ws, "chat:a", json!("small")).await, 1);
        // A limit no publish could reach is a configuration error naming both keys.
        let err = palisade_server::config::Config::from_toml(
            "[channels]\nmax_data_bytes = 70000\n[limits]\nmax_message_bytes = 65536",
        )
        .expect_err("over the message limit");
        assert!(err.to_string().contains("channels.max_data_bytes"), "{err}");
    })
    .await;
}
