//! Channels in cluster mode: two nodes sharing one real Redis. Publications reach subscribers
//! on every node in offset order, history and recovery work across nodes, presence spans the
//! nodes and forgets a SIGKILLed one, the admin API acts on every node, and a Redis outage
//! refuses channel requests with `unavailable` and, when Redis comes back empty, makes the
//! subscribers resubscribe into a new epoch (docs/cluster.md#channels).

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{HEARTBEAT_SECS, TTL, cluster, wait_readyz};
use crate::subprotocol::bounded;
use crate::subprotocol::channels::{
    all_rights, ask, login, publication, publish, refused, subscribe,
};
use crate::subprotocol::v1::{connect_v1, expect_type, send};
use crate::support::{self, STEP, Ws};

/// The next two frames are the `insufficient_state` error and close 1012.
async fn expect_state_lost(ws: &mut Ws) {
    let error = expect_type(ws, "error").await;
    assert_eq!(error["reason"], "insufficient_state", "{error}");
    assert_eq!(error["reconnect"], "backoff", "{error}");
    support::expect_close(ws, 1012, Some("channel state lost")).await;
}

/// Publishes from a subscriber of the channel: its `ok`, then its own publication.
async fn publish_own(ws: &mut Ws, channel: &str, data: Value) -> u64 {
    let offset = publish(ws, channel, data).await;
    assert_eq!(publication(ws, channel).await["offset"], offset);
    offset
}

/// The soft limit on open files of this process.
fn open_files_limit() -> usize {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|n| n.parse().ok())
        .unwrap_or(1024)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publications_history_and_recovery_span_the_nodes() {
    bounded(60, async {
        let Some((_redis, nodes)) = cluster(2, "channels.history_size = 100") else { return };
        let (a, b) = (&nodes[0], &nodes[1]);
        let grants = json!({"chat:*": all_rights()});
        let mut alice = login(a, "alice", grants.clone()).await;
        let mut bob = login(b, "bob", grants.clone()).await;
        let first = subscribe(&mut alice, "chat:room").await;
        let epoch = first["epoch"].as_str().expect("epoch").to_owned();
        let on_b = subscribe(&mut bob, "chat:room").await;
        assert_eq!(on_b["epoch"], epoch.as_str(), "one epoch for the channel on every node");
        assert_eq!(on_b["offset"], 0);

        // Publications from a client on A reach both nodes, in order, with the publisher named.
        for n in 1..=5u64 {
            assert_eq!(publish_own(&mut alice, "chat:room", json!({"n": n})).await, n);
        }
        for n in 1..=5u64 {
            let p = publication(&mut bob, "chat:room").await;
            assert_eq!((&p["offset"], &p["data"]), (&json!(n), &json!({"n": n})), "{p}");
            assert_eq!(p["info"]["user_id"], "alice");
        }
        // A server-side publish through B's admin API takes the next offset.
        let resp = b.post("/channels/chat:room/publish", r#"{"n": 6}"#).await;
        assert_eq!(resp.status, 200, "{}", resp.body);
        assert_eq!(resp.json()["offset"], 6);
        for ws in [&mut alice, &mut bob] {
            let p = publication(ws, "chat:room").await;
            assert_eq!(p["offset"], 6);
            assert!(p.get("info").is_none(), "server-side: no publisher: {p}");
        }

        // Presence and history answer for the whole cluster, from either node.
        let presence = ask(
            &mut alice,
            json!({"type": "presence", "channel": "chat:room", "id": 3}),
            "presence",
        )
        .await;
        assert_eq!(
            presence["users"],
            json!([{"user_id": "alice", "sessions": 1}, {"user_id": "bob", "sessions": 1}])
        );
        let history = ask(
            &mut bob,
            json!({"type": "history", "channel": "chat:room", "limit": 10, "id": 4}),
            "history",
        )
        .await;
        assert_eq!(history["epoch"], epoch.as_str());
        let offsets: Vec<u64> = history["publications"]
            .as_array()
            .expect("publications")
            .iter()
            .map(|p| p["offset"].as_u64().expect("offset"))
            .collect();
        assert_eq!(offsets, [1, 2, 3, 4, 5, 6]);

        // Bob leaves B, misses two publications, and recovers them on A.
        drop(bob);
        for n in 7..=8u64 {
            assert_eq!(publish_own(&mut alice, "chat:room", json!({"n": n})).await, n);
        }
        let mut bob = login(a, "bob", grants.clone()).await;
        let since = json!({"epoch": epoch, "offset": 6});
        let request = json!({"type": "subscribe", "channel": "chat:room", "id": 5, "since": since});
        let back = ask(&mut bob, request, "subscribed").await;
        assert_eq!((&back["recovered"], &back["offset"]), (&json!(true), &json!(8)), "{back}");
        let missed: Vec<&Value> = back["publications"]
            .as_array()
            .expect("publications")
            .iter()
            .map(|p| &p["data"])
            .collect();
        assert_eq!(missed, [&json!({"n": 7}), &json!({"n": 8})]);
        // And the live stream goes on after the recovered part.
        assert_eq!(publish_own(&mut alice, "chat:room", json!({"n": 9})).await, 9);
        assert_eq!(publication(&mut bob, "chat:room").await["offset"], 9);

        // The admin API of one node ends subscriptions held by the other.
        let mut carol = login(b, "carol", grants.clone()).await;
        subscribe(&mut carol, "chat:room").await;
        let resp = a.delete("/channels/chat:room/subscribers/carol").await;
        assert_eq!(resp.status, 200, "{}", resp.body);
        let ended = expect_type(&mut carol, "unsubscribed").await;
        assert_eq!(ended["reason"], "permission_revoked", "{ended}");
        let resp = b.delete("/channels/chat:room").await;
        assert_eq!(resp.status, 200, "{}", resp.body);
        for ws in [&mut alice, &mut bob] {
            let ended = expect_type(ws, "unsubscribed").await;
            assert_eq!(ended["reason"], "channel_closed", "{ended}");
        }
        let again = subscribe(&mut alice, "chat:room").await;
        assert_ne!(again["epoch"], epoch.as_str(), "a closed channel starts a new epoch");
        assert_eq!(again["offset"], 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_subscribers_on_two_nodes_get_every_publication_in_order() {
    bounded(120, async {
        // Each subscriber is a socket here and one on its node.
        let limit = open_files_limit();
        let n = 1000.min(limit.saturating_sub(200));
        if n < 1000 {
            eprintln!("open-file limit {limit}: {n} subscribers instead of 1000");
        }
        let caps = "channels.public = [\"fan\"]\nfirewall.handshakes_per_sec_per_ip = 0\nfirewall.max_connections_per_ip = 2000";
        let Some((_redis, nodes)) = cluster(2, caps) else { return };
        let mut subscribers = Vec::new();
        for i in 0..n {
            let node = &nodes[i % 2];
            let mut ws = login(node, &format!("u{i}"), Value::Null).await;
            subscribe(&mut ws, "fan").await;
            subscribers.push(ws);
        }
        let mut publisher = login(&nodes[0], "pub", json!({"fan": ["publish"]})).await;
        const N: u64 = 20;
        for k in 1..=N {
            assert_eq!(publish(&mut publisher, "fan", json!({"k": k})).await, k);
        }
        let readers = subscribers.into_iter().map(|mut ws| {
            tokio::spawn(async move {
                for k in 1..=N {
                    let p = publication(&mut ws, "fan").await;
                    assert_eq!((&p["offset"], &p["data"]), (&json!(k), &json!({"k": k})));
                }
            })
        });
        for r in readers.collect::<Vec<_>>() {
            r.await.expect("every subscriber saw every publication in order");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_spans_the_nodes_and_forgets_a_sigkilled_one() {
    bounded(60, async {
        let Some((_redis, mut nodes)) = cluster(2, "channels.presence_events = true") else {
            return;
        };
        let grants = json!({"room:*": all_rights()});
        let mut dave = login(&nodes[1], "dave", grants.clone()).await;
        subscribe(&mut dave, "room:x").await;
        let mut erin = login(&nodes[0], "erin", grants.clone()).await;
        subscribe(&mut erin, "room:x").await;
        let own = publication(&mut erin, "room:x").await;
        assert_eq!(own["data"], json!({"presence": "join", "user_id": "erin"}), "{own}");
        // Erin's join reaches Dave on the other node, after his own.
        let own = publication(&mut dave, "room:x").await;
        assert_eq!(own["data"], json!({"presence": "join", "user_id": "dave"}), "{own}");
        let join = publication(&mut dave, "room:x").await;
        assert_eq!(join["data"], json!({"presence": "join", "user_id": "erin"}), "{join}");
        let resp = nodes[0].get("/channels/room:x/presence").await;
        assert_eq!(resp.status, 200, "{}", resp.body);
        assert_eq!(
            resp.json()["users"],
            json!([{"user_id": "dave", "sessions": 1}, {"user_id": "erin", "sessions": 1}])
        );

        nodes[1].kill();
        let killed = Instant::now();
        // Dave's entry outlives his node by at most the TTL plus a heartbeat.
        let within = TTL + Duration::from_secs(HEARTBEAT_SECS + 1);
        loop {
            let reply = ask(
                &mut erin,
                json!({"type": "presence", "channel": "room:x", "id": 7}),
                "presence",
            )
            .await;
            if reply["users"] == json!([{"user_id": "erin", "sessions": 1}]) {
                break;
            }
            assert!(
                killed.elapsed() < within,
                "dave still present {within:?} after SIGKILL: {reply}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        eprintln!(
            "the SIGKILLed node's subscriber left presence after {:?} (TTL {TTL:?})",
            killed.elapsed()
        );
        // Erin refreshes hers: still present two TTLs later.
        tokio::time::sleep(TTL * 2).await;
        let reply =
            ask(&mut erin, json!({"type": "presence", "channel": "room:x", "id": 8}), "presence")
                .await;
        assert_eq!(reply["users"], json!([{"user_id": "erin", "sessions": 1}]));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_refuses_channel_requests_and_lost_history_means_a_new_epoch() {
    bounded(60, async {
        let Some((mut redis, nodes)) = cluster(2, "channels.history_size = 10") else { return };
        let (a, b) = (&nodes[0], &nodes[1]);
        let grants = json!({"chat:*": all_rights()});
        let mut gina = login(a, "gina", grants.clone()).await;
        let mut hank = login(b, "hank", grants.clone()).await;
        let epoch = subscribe(&mut gina, "chat:o").await["epoch"].as_str().expect("epoch").to_owned();
        subscribe(&mut hank, "chat:o").await;
        assert_eq!(publish_own(&mut gina, "chat:o", json!("before")).await, 1);
        assert_eq!(publication(&mut hank, "chat:o").await["offset"], 1);

        redis.stop();
        for node in [a, b] {
            wait_readyz(node, "redis unreachable", STEP).await;
        }
        // Nothing is published that other nodes would not see: typed refusals, and the
        // connection stays.
        let detail = refused(&mut gina, json!({"type": "publish", "channel": "chat:o", "data": 2, "id": 9}), "unavailable").await;
        assert!(detail.contains("unavailable"), "{detail}");
        refused(&mut gina, json!({"type": "subscribe", "channel": "chat:other", "id": 10}), "unavailable").await;
        refused(&mut hank, json!({"type": "presence", "channel": "chat:o", "id": 11}), "unavailable").await;
        refused(&mut hank, json!({"type": "history", "channel": "chat:o", "id": 12}), "unavailable").await;
        assert_eq!(b.get("/channels/chat:o/presence").await.status, 503);
        assert_eq!(b.delete("/channels/chat:o").await.status, 503);
        let resp = a.post("/channels/chat:o/publish", "3").await;
        assert_eq!(resp.status, 503, "{}", resp.body);
        assert!(resp.body.contains("retry when redis is reachable"), "{}", resp.body);

        // Redis comes back empty (no persistence): the channel's history is gone, so its
        // subscribers are sent to resubscribe, and a recovery says recovered: false in a new
        // epoch.
        redis.run();
        for ws in [&mut gina, &mut hank] {
            expect_state_lost(ws).await;
        }
        wait_readyz(a, "cluster: ok", STEP).await;
        let mut gina = connect_v1(a, &[]).await;
        let token = crate::subprotocol::channels::grant_token("gina", &grants, 600);
        send(&mut gina, &json!({"type": "auth", "token": token})).await;
        expect_type(&mut gina, "authenticated").await;
        let request = json!({"type": "subscribe", "channel": "chat:o", "id": 12, "since": {"epoch": epoch, "offset": 1}});
        let back = ask(&mut gina, request, "subscribed").await;
        assert_eq!(back["recovered"], false, "{back}");
        assert_ne!(back["epoch"], epoch.as_str(), "{back}");
        assert_eq!(publish_own(&mut gina, "chat:o", json!("after")).await, 1);
        let metrics = a.get("/metrics").await.body;
        assert!(metrics.contains("palisade_channel_state_lost_total 1"), "{metrics}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_joining_during_a_stream_get_everything_after_their_position_once() {
    bounded(90, async {
        let caps = "channels.public = [\"live\"]\nfirewall.handshakes_per_sec_per_ip = 0\nfirewall.messages_per_sec = 100000";
        let Some((_redis, nodes)) = cluster(2, caps) else { return };
        let mut publisher = login(&nodes[0], "pub", json!({"live": ["publish"]})).await;
        // Some subscribers before the stream starts.
        let mut subscribers = Vec::new();
        for i in 0..4 {
            let mut ws = login(&nodes[i % 2], &format!("early{i}"), Value::Null).await;
            let at = subscribe(&mut ws, "live").await["offset"].as_u64().expect("offset");
            subscribers.push((ws, at));
        }
        const K: u64 = 600;
        let stream = tokio::spawn(async move {
            for k in 1..=K {
                assert_eq!(publish(&mut publisher, "live", json!(k)).await, k);
            }
        });
        // More join on both nodes while publications flow.
        for i in 0..30 {
            let mut ws = login(&nodes[i % 2], &format!("late{i}"), Value::Null).await;
            let at = subscribe(&mut ws, "live").await["offset"].as_u64().expect("offset");
            subscribers.push((ws, at));
            tokio::time::sleep(Duration::from_millis(7)).await;
        }
        stream.await.expect("the publisher got every ok");
        let positions: Vec<u64> = subscribers.iter().map(|(_, at)| *at).collect();
        assert!(positions.iter().any(|&at| at > 0 && at < K), "nobody joined mid-stream: {positions:?}");
        let readers = subscribers.into_iter().map(|(mut ws, at)| {
            tokio::spawn(async move {
                for k in at + 1..=K {
                    let p = publication(&mut ws, "live").await;
                    assert_eq!(p["offset"], k, "joined at {at}: {p}");
                }
            })
        });
        for r in readers.collect::<Vec<_>>() {
            r.await.expect("each subscriber saw every publication after its position, once, in order");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publication_in_a_new_epoch_sends_the_subscribers_to_resubscribe() {
    bounded(60, async {
        let Some((redis, nodes)) = cluster(2, "channels.history_size = 10") else { return };
        let grants = json!({"chat:*": all_rights()});
        let mut ivy = login(&nodes[0], "ivy", grants.clone()).await;
        let mut jon = login(&nodes[1], "jon", grants.clone()).await;
        let epoch = subscribe(&mut ivy, "chat:f").await["epoch"].as_str().expect("epoch").to_owned();
        subscribe(&mut jon, "chat:f").await;
        assert_eq!(publish_own(&mut ivy, "chat:f", json!(1)).await, 1);
        assert_eq!(publication(&mut jon, "chat:f").await["offset"], 1);

        // Redis loses everything while the nodes stay connected (no outage to notice): the
        // next publication opens a new epoch, and every node sees the change in the stream.
        let mut con = std::net::TcpStream::connect(("127.0.0.1", redis.port)).expect("redis");
        std::io::Write::write_all(&mut con, b"*1\r\n$8\r\nFLUSHALL\r\n").expect("FLUSHALL");
        let mut ok = [0u8; 5];
        std::io::Read::read_exact(&mut con, &mut ok).expect("FLUSHALL answer");
        assert_eq!(&ok, b"+OK\r\n");
        let mut kim = login(&nodes[0], "kim", grants.clone()).await;
        assert_eq!(publish(&mut kim, "chat:f", json!("new")).await, 1);
        for ws in [&mut ivy, &mut jon] {
            expect_state_lost(ws).await;
        }
        // Resubscribing from the old position says what happened.
        let request = json!({"type": "subscribe", "channel": "chat:f", "id": 3, "since": {"epoch": epoch, "offset": 1}});
        let back = ask(&mut kim, request, "subscribed").await;
        assert_eq!((&back["recovered"], &back["offset"]), (&json!(false), &json!(1)), "{back}");
        assert_ne!(back["epoch"], epoch.as_str());
        let metrics = nodes[1].get("/metrics").await.body;
        assert!(metrics.contains("palisade_channel_state_lost_total 1"), "{metrics}");
    })
    .await;
}
