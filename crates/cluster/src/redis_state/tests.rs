//! The Redis backend against a Redis that never answers, and against a real `redis-server`
//! (started here on a free loopback port; the test fails without it unless
//! `PALISADE_SKIP_REDIS_TESTS=1`).

use std::net::TcpListener as StdListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::{RedisConfig, RedisState};
use crate::{Admission, Event, SessionEntry, SharedState, TokenFacts};

const TIMEOUT: Duration = Duration::from_millis(200);

fn config(port: u16, node_id: &str) -> RedisConfig {
    RedisConfig {
        url: format!("redis://127.0.0.1:{port}/0"),
        node_id: node_id.into(),
        key_prefix: "unit:".into(),
        command_timeout: TIMEOUT,
        heartbeat: Duration::from_secs(1),
    }
}

fn entry(id: &str, user_id: &str) -> SessionEntry {
    SessionEntry {
        id: id.into(),
        user_id: user_id.into(),
        node: String::new(),
        conn: "1".into(),
        peer: "127.0.0.1:40000".parse().unwrap(),
        endpoint: "secure".into(),
        started: 1,
        expires: None,
    }
}

/// A "Redis" that accepts connections and never answers: every call must still return within
/// the command timeout.
#[tokio::test]
async fn unresponsive_redis_never_holds_a_caller_beyond_the_timeout() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });

    let started = Instant::now();
    let (state, _events) = RedisState::start(config(port, "n1")).await.unwrap();
    assert!(started.elapsed() < TIMEOUT * 3, "start took {:?}", started.elapsed());
    let status = state.status();
    assert!(!status.connected, "{status:?}");
    assert!(status.outage_secs.is_some());

    let started = Instant::now();
    let admission = state.open_session(entry("s1", "42"), TokenFacts::default(), 1).await;
    assert_eq!(admission, Admission::AdmittedUnchecked);
    assert!(started.elapsed() < TIMEOUT, "open_session waited {:?}", started.elapsed());
    assert!(state.sessions().await.is_err());
    assert!(state.publish("42".into(), "x".into(), 0).await.is_err());

    // Writes are cached and queued, never awaited.
    let ip = "192.0.2.5".parse().unwrap();
    state.ban(ip, Duration::from_secs(60));
    assert!(state.is_banned(ip));
    assert_eq!(state.status().pending_writes, 1);
    let metrics = state.encode_metrics();
    assert!(metrics.contains("palisade_cluster_redis_up 0"), "{metrics}");
    assert!(metrics.contains("palisade_cluster_redis_outages_total 1"), "{metrics}");

    let started = Instant::now();
    state.shutdown().await;
    assert!(started.elapsed() < TIMEOUT * 5, "shutdown took {:?}", started.elapsed());
    hold.abort();
}

struct RedisServer {
    child: Child,
    port: u16,
}

impl RedisServer {
    fn start() -> Option<RedisServer> {
        let port = StdListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let spawned = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let child = match spawned {
            Ok(child) => child,
            Err(_) if std::env::var("PALISADE_SKIP_REDIS_TESTS").is_ok_and(|v| v == "1") => {
                eprintln!("SKIPPED: redis-server is not installed and PALISADE_SKIP_REDIS_TESTS=1");
                return None;
            }
            Err(e) => panic!(
                "cannot run redis-server ({e}): install it (`apt-get install redis-server`; \
                 .ci/run does this) or set PALISADE_SKIP_REDIS_TESTS=1 to skip these tests"
            ),
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not listen on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(RedisServer { child, port })
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn next_event(events: &mut mpsc::Receiver<Event>) -> Event {
    tokio::time::timeout(Duration::from_secs(3), events.recv())
        .await
        .expect("no event in time")
        .expect("event channel open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_bans_sessions_and_pushes() {
    let Some(redis) = RedisServer::start() else { return };
    let (a, mut a_events) = RedisState::start(config(redis.port, "a")).await.unwrap();
    let (b, mut b_events) = RedisState::start(config(redis.port, "b")).await.unwrap();
    assert!(a.status().connected && b.status().connected);

    // A ban on A reaches B as an event, and B's cache.
    let ip = "192.0.2.7".parse().unwrap();
    a.ban(ip, Duration::from_secs(30));
    match next_event(&mut b_events).await {
        Event::Ban { ip: got, remaining } => {
            assert_eq!(got, ip);
            assert!(remaining > Duration::from_secs(28) && remaining <= Duration::from_secs(30));
        }
        other => panic!("expected a ban, got {other:?}"),
    }
    assert!(b.is_banned(ip));

    // The session cap counts both nodes.
    let t = TokenFacts::default();
    assert_eq!(a.open_session(entry("s1", "42"), t.clone(), 2).await, Admission::Admitted);
    assert_eq!(b.open_session(entry("s2", "42"), t.clone(), 2).await, Admission::Admitted);
    assert_eq!(
        a.open_session(entry("s3", "42"), t.clone(), 2).await,
        Admission::TooManySessions { max: 2 }
    );
    let all = b.sessions().await.unwrap();
    let nodes: Vec<&str> = all.iter().map(|s| s.node.as_str()).collect();
    assert_eq!(nodes.len(), 2);
    assert!(nodes.contains(&"a") && nodes.contains(&"b"), "{nodes:?}");

    // A publish through A is delivered by B, which answers with its count.
    let publish = tokio::spawn(async move {
        let report = a.publish("42".into(), "hello".into(), 1).await.unwrap();
        (a, report)
    });
    match next_event(&mut b_events).await {
        Event::Publish { user_id, data, reply } => {
            assert_eq!((user_id.as_str(), data.as_str()), ("42", "hello"));
            reply.delivered(1);
        }
        other => panic!("expected a publish, got {other:?}"),
    }
    let (a, report) = publish.await.unwrap();
    assert_eq!((report.nodes_listening, report.nodes_answered), (1, 1));
    assert_eq!((report.sessions, report.nodes_delivered), (1, 1));

    // A node's own events do not come back to it.
    assert!(a_events.try_recv().is_err());
    a.shutdown().await;
    b.shutdown().await;
}

fn settings(history_size: usize) -> crate::channels::ChannelSettings {
    crate::channels::ChannelSettings { history_size, history_ttl: None }
}

fn envelope(channel: &str, data: &str) -> crate::channels::Envelope {
    crate::channels::Envelope {
        prefix: format!("{{\"type\":\"publication\",\"channel\":\"{channel}\",\"offset\":"),
        suffix: format!(",\"data\":{data}}}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_share_offsets_history_and_presence_across_nodes() {
    use crate::channels::Remote;
    let Some(redis) = RedisServer::start() else { return };
    let (a, _a_events) = RedisState::start(config(redis.port, "a")).await.unwrap();
    let (b, _b_events) = RedisState::start(config(redis.port, "b")).await.unwrap();
    let ca = a.channel_store(settings(3)).expect("redis has channels");
    let cb = b.channel_store(settings(3)).expect("redis has channels");
    let (tx, mut rx) = mpsc::unbounded_channel();
    cb.set_sink(std::sync::Arc::new(move |r| {
        let _ = tx.send(r);
    }));

    // A fresh channel: a new epoch at offset 0; nothing to recover from another epoch.
    let s = cb.stream("chat:a", Some(("nope".into(), 0))).await.unwrap();
    assert_eq!((s.offset, s.recovered.clone()), (0, None));
    let epoch = s.epoch;

    // Publications from A get consecutive offsets in that epoch and reach B in order.
    for i in 1..=4u64 {
        let p = ca.publish("chat:a", envelope("chat:a", &i.to_string())).await.unwrap();
        assert_eq!((p.epoch.as_str(), p.offset), (epoch.as_str(), i));
    }
    for i in 1..=4u64 {
        let got = tokio::time::timeout(Duration::from_secs(3), rx.recv()).await.unwrap().unwrap();
        let want = format!(
            "{{\"type\":\"publication\",\"channel\":\"chat:a\",\"offset\":{i},\"data\":{i}}}"
        );
        assert_eq!(
            got,
            Remote::Publication {
                channel: "chat:a".into(),
                epoch: epoch.clone(),
                offset: i,
                json: want
            }
        );
    }

    // Recovery from B: within the 3 held, everything after the position; beyond, not recovered.
    let s = cb.stream("chat:a", Some((epoch.clone(), 2))).await.unwrap();
    assert_eq!(s.offset, 4);
    let items = s.recovered.expect("recovered");
    assert_eq!(items.len(), 2);
    assert!(items[0].contains("\"offset\":3") && items[1].contains("\"offset\":4"));
    assert_eq!(
        cb.stream("chat:a", Some((epoch.clone(), 4))).await.unwrap().recovered,
        Some(vec![])
    );
    assert_eq!(cb.stream("chat:a", Some((epoch.clone(), 0))).await.unwrap().recovered, None);
    assert_eq!(cb.stream("chat:a", Some((epoch.clone(), 9))).await.unwrap().recovered, None);
    let (e, items) = cb.history("chat:a", 2).await.unwrap();
    assert_eq!((e.as_str(), items.len()), (epoch.as_str(), 2));
    assert!(items[1].contains("\"offset\":4"));

    // Presence across both nodes: one user on two nodes, another on one.
    assert!(ca.join("chat:a", "u1", "a|1").await.unwrap());
    assert!(!cb.join("chat:a", "u1", "b|7").await.unwrap());
    assert!(cb.join("chat:a", "u2", "b|8").await.unwrap());
    let mut users = ca.presence("chat:a").await.unwrap();
    users.sort();
    assert_eq!(users, [("u1".to_string(), 2), ("u2".to_string(), 1)]);
    assert!(!ca.leave("chat:a", "u1", "a|1").await.unwrap());
    assert!(cb.leave("chat:a", "u1", "b|7").await.unwrap());
    assert_eq!(ca.presence("chat:a").await.unwrap(), [("u2".to_string(), 1)]);
    ca.touch(vec![("chat:a".into(), "u3".into(), "a|9".into())]).await.unwrap();
    assert_eq!(ca.presence("chat:a").await.unwrap().len(), 2);

    // Closing drops the position: the next use starts a new epoch, and nodes are told.
    ca.close("chat:a").await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(3), rx.recv()).await.unwrap().unwrap();
    assert_eq!(got, Remote::Closed { channel: "chat:a".into() });
    let p = ca.publish("chat:a", envelope("chat:a", "5")).await.unwrap();
    assert_eq!(p.offset, 1);
    assert_ne!(p.epoch, epoch);
    ca.unsubscribe_user("chat:a", "u2").await.unwrap();
    loop {
        let got = tokio::time::timeout(Duration::from_secs(3), rx.recv()).await.unwrap().unwrap();
        if let Remote::Unsubscribed { channel, user_id } = got {
            assert_eq!((channel.as_str(), user_id.as_str()), ("chat:a", "u2"));
            break;
        }
    }

    // A flushed Redis has lost the history: a new epoch, nothing recovered.
    let mut con = redis::Client::open(format!("redis://127.0.0.1:{}/0", redis.port))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    redis::cmd("FLUSHALL").query_async::<()>(&mut con).await.unwrap();
    let s = cb.stream("chat:a", Some((p.epoch.clone(), 1))).await.unwrap();
    assert_ne!(s.epoch, p.epoch);
    assert_eq!((s.offset, s.recovered), (0, None));
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn channels_fail_fast_while_redis_is_unreachable() {
    let port = StdListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (state, _events) = RedisState::start(config(port, "n1")).await.unwrap();
    let store = state.channel_store(settings(10)).unwrap();
    let started = Instant::now();
    let err = store.publish("c", envelope("c", "1")).await.unwrap_err();
    assert!(matches!(err, crate::ClusterError::Unavailable(_)), "{err:?}");
    assert!(store.stream("c", None).await.is_err());
    assert!(store.presence("c").await.is_err());
    assert!(started.elapsed() < TIMEOUT * 2, "took {:?}", started.elapsed());
    state.shutdown().await;
}
