//! Cluster mode with a real Redis and real nodes: every test starts its own `redis-server` on a
//! free loopback port (no persistence) and two or three `palisade` processes sharing it, and
//! stops them all at the end. See docs/cluster.md.
//!
//! `redis-server` must be installed (`.ci/run` installs it); without it these tests fail,
//! unless `PALISADE_SKIP_REDIS_TESTS=1` says to skip them.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream as StdTcpStream};
use std::ops::Deref;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use palisade_token::{Algorithm, Claims};
use serde_json::Value;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::support::{
    self, HttpResponse, SECRET, STEP, Server, Ws, connect, connect_with, expect_text, mint,
    next_message, now, round_trip, send_text, toml_str,
};

/// Session heartbeat of the test nodes; entries live three of them.
const HEARTBEAT_SECS: u64 = 1;
const TTL: Duration = Duration::from_secs(3 * HEARTBEAT_SECS);

// ---- redis-server ----

/// A `redis-server` of this test on a free loopback port; killed on drop.
struct Redis {
    port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Redis {
    /// Starts one, or returns `None` when `PALISADE_SKIP_REDIS_TESTS=1` and it is not installed.
    fn start() -> Option<Redis> {
        let installed = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !installed {
            if std::env::var("PALISADE_SKIP_REDIS_TESTS").is_ok_and(|v| v == "1") {
                eprintln!("SKIPPED: redis-server is not installed and PALISADE_SKIP_REDIS_TESTS=1");
                return None;
            }
            panic!(
                "redis-server is not installed: the cluster tests need it \
                 (`apt-get install redis-server`; .ci/run does this), \
                 or set PALISADE_SKIP_REDIS_TESTS=1 to skip them"
            );
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let mut redis = Redis { port, child: None, dir: tempfile::tempdir().expect("tempdir") };
        redis.run();
        Some(redis)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Starts the server process (again) on the same port and waits until it answers.
    fn run(&mut self) {
        let log = File::create(self.dir.path().join("redis.log")).expect("redis log");
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + STEP;
        while !self.answers() {
            assert!(Instant::now() < deadline, "redis-server did not answer on port {}", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn answers(&self) -> bool {
        let Ok(mut s) = StdTcpStream::connect(("127.0.0.1", self.port)) else { return false };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }

    /// Stops the server (its data is gone: there is no persistence).
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        assert!(!self.answers(), "redis-server still answers after being stopped");
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// ---- palisade nodes ----

/// A running `palisade` node; killed on drop.
struct Node {
    server: Server,
    id: String,
}

impl Node {
    /// Starts node `id` sharing `redis`, with the base test config plus `overrides` (lines of
    /// dotted keys such as `secure.max_sessions_per_user = 2`).
    fn start(redis: &Redis, id: &str, overrides: &str) -> Node {
        let server = Server::builder()
            .name(&format!("node {id}"))
            .set("firewall.trusted_proxies", "[\"127.0.0.1\"]")
            .set("cluster.redis_url", toml_str(&redis.url()))
            .set("cluster.node_id", toml_str(id))
            .set("cluster.key_prefix", toml_str("test:"))
            .set("cluster.heartbeat_secs", HEARTBEAT_SECS.to_string())
            .set("cluster.command_timeout_ms", "300")
            .overrides(overrides)
            .start();
        Node { server, id: id.to_owned() }
    }

    /// SIGKILL: no chance to clean up its Redis entries.
    fn kill(&mut self) {
        self.server.kill();
    }

    async fn get(&self, path: &str) -> HttpResponse {
        support::http(self.admin, "GET", path, &[], "").await
    }

    async fn post(&self, path: &str, body: &str) -> HttpResponse {
        support::http(self.admin, "POST", path, &[], body).await
    }

    async fn delete(&self, path: &str) -> HttpResponse {
        support::http(self.admin, "DELETE", path, &[], "").await
    }

    /// `GET /sessions` as (node, user, session id) rows.
    async fn cluster_sessions(&self) -> Vec<(String, String, String)> {
        let resp = self.get("/sessions").await;
        assert_eq!(resp.status, 200, "GET /sessions: {}", resp.body);
        let rows: Vec<Value> = serde_json::from_str(&resp.body).expect("sessions json");
        let mut out: Vec<_> = rows
            .iter()
            .map(|r| {
                let s = |k: &str| r[k].as_str().unwrap_or_else(|| panic!("row without {k}: {r}"));
                (s("node").to_owned(), s("user_id").to_owned(), s("id").to_owned())
            })
            .collect();
        out.sort();
        out
    }

    /// Waits until `GET /sessions` (the cluster view) satisfies `pred`; returns the rows.
    async fn wait_sessions(
        &self,
        within: Duration,
        what: &str,
        pred: impl Fn(&[(String, String, String)]) -> bool,
    ) -> Vec<(String, String, String)> {
        let deadline = Instant::now() + within;
        loop {
            let rows = self.cluster_sessions().await;
            if pred(&rows) {
                return rows;
            }
            assert!(
                Instant::now() < deadline,
                "node {}: sessions never showed {what} within {within:?}; last: {rows:?}",
                self.id
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Connects to the secure endpoint and authenticates with `token`.
    async fn session(&self, token: &str) -> Ws {
        let mut ws = connect(self.secure).await;
        send_text(&mut ws, token).await;
        expect_text(&mut ws, "Authenticated!").await;
        ws
    }
}

impl Deref for Node {
    type Target = Server;

    fn deref(&self) -> &Server {
        &self.server
    }
}

/// Starts Redis and `n` nodes (`node-a`, `node-b`, ...) with the same overrides.
fn cluster(n: usize, overrides: &str) -> Option<(Redis, Vec<Node>)> {
    let redis = Redis::start()?;
    let nodes = ["node-a", "node-b", "node-c"][..n]
        .iter()
        .map(|id| Node::start(&redis, id, overrides))
        .collect();
    Some((redis, nodes))
}

// ---- tokens ----

/// A token for `user_id`, valid for a minute, with `jti` when given, issued `age` seconds ago.
fn token(user_id: &str, jti: Option<&str>, age: u64) -> (String, u64) {
    let mut claims = Claims::new(user_id);
    claims.iat = Some(now() - age);
    claims.exp = Some(now() + 60);
    claims.jti = jti.map(str::to_owned);
    (mint(Algorithm::Hs256, SECRET, &claims), claims.exp.unwrap_or(0))
}

// ---- WebSocket client ----

/// The HTTP status of a refused handshake, or `None` when the upgrade succeeded.
async fn handshake_status(addr: SocketAddr, client_ip: &str) -> Option<u16> {
    match connect_with(addr, &[("x-forwarded-for", client_ip)]).await {
        Ok(mut ws) => {
            let _ = ws.close(None).await;
            None
        }
        Err(tungstenite::Error::Http(resp)) => Some(resp.status().as_u16()),
        Err(e) => panic!("handshake from {client_ip} failed with {e}"),
    }
}

/// Waits until handshakes from `client_ip` at `addr` get `want` (`Some(403)`: refused;
/// `None`: accepted); returns how long it took.
async fn wait_handshake(
    addr: SocketAddr,
    client_ip: &str,
    want: Option<u16>,
    within: Duration,
) -> Duration {
    let started = Instant::now();
    loop {
        let got = handshake_status(addr, client_ip).await;
        if got == want {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "handshake from {client_ip} at {addr}: {got:?} after {within:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn expect_close(ws: &mut Ws, code: u16, reason: &str) {
    support::expect_close(ws, code, Some(reason)).await;
}

// ---- admin HTTP ----

/// Waits until `GET /readyz` on `node` contains `text`; returns the body.
async fn wait_readyz(node: &Node, text: &str, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let resp = node.get("/readyz").await;
        assert_eq!(
            resp.status, 200,
            "/readyz must stay 200 (the node still serves): {}",
            resp.body
        );
        if resp.body.contains(text) {
            return resp.body;
        }
        assert!(
            Instant::now() < deadline,
            "node {}: /readyz never said {text:?} within {within:?}; it says {:?}\nconsole:\n{}",
            node.id,
            resp.body,
            node.console()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---- tests ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ban_through_one_node_is_refused_at_another_and_lifted_everywhere() {
    let Some((_redis, nodes)) = cluster(2, "firewall.ban_after_auth_failures = 2") else { return };
    let (a, b) = (&nodes[0], &nodes[1]);
    assert_eq!(handshake_status(b.secure, "203.0.113.7").await, None, "not banned yet");

    // An admin ban on A refuses the client at B within a second.
    let resp = a.post("/bans", r#"{"ip": "203.0.113.7", "secs": 60}"#).await;
    assert_eq!(resp.status, 201, "{}", resp.body);
    let took = wait_handshake(b.secure, "203.0.113.7", Some(403), Duration::from_secs(1)).await;
    eprintln!("ban propagated to node-b in {took:?}");
    let bans = b.get("/bans").await.json();
    assert_eq!(bans[0]["ip"], "203.0.113.7", "B lists the ban: {bans}");
    // Another client is not affected.
    assert_eq!(handshake_status(b.secure, "203.0.113.99").await, None);

    // Lifting it on B lifts it on A.
    assert_eq!(b.delete("/bans/203.0.113.7").await.status, 204);
    wait_handshake(a.secure, "203.0.113.7", None, Duration::from_secs(1)).await;
    assert_eq!(handshake_status(b.secure, "203.0.113.7").await, None);

    // A short ban expires on both nodes at the same time (Redis key TTL).
    let resp = a.post("/bans", r#"{"ip": "203.0.113.8", "secs": 2}"#).await;
    assert_eq!(resp.status, 201);
    let banned_at = Instant::now();
    wait_handshake(b.secure, "203.0.113.8", Some(403), Duration::from_secs(1)).await;
    let left_a = wait_handshake(a.secure, "203.0.113.8", None, Duration::from_secs(4)).await;
    let left_b = wait_handshake(b.secure, "203.0.113.8", None, Duration::from_secs(1)).await;
    let elapsed = banned_at.elapsed();
    assert!(elapsed >= Duration::from_millis(1800), "ban ended early: {elapsed:?}");
    assert!(
        left_b < Duration::from_millis(500),
        "B lifted the ban {left_b:?} after A ({left_a:?})"
    );

    // Automatic bans (repeated authentication failures at B) are refused at A too.
    for _ in 0..2 {
        let mut ws =
            connect_with(b.secure, &[("x-forwarded-for", "203.0.113.9")]).await.expect("connect");
        send_text(&mut ws, "not-a-token").await;
        expect_text(&mut ws, "Invalid Token").await;
        expect_close(&mut ws, 1008, "invalid token").await;
    }
    wait_handshake(a.secure, "203.0.113.9", Some(403), Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocations_through_one_node_close_sessions_on_another() {
    let Some((_redis, nodes)) = cluster(2, "") else { return };
    let (a, b) = (&nodes[0], &nodes[1]);

    // Session revocation: alice on A, revoked through B.
    let (alice, _) = token("alice", None, 0);
    let mut on_a = a.session(&alice).await;
    let mut on_b = b.session(&alice).await;
    let rows = b
        .wait_sessions(STEP, "alice on both nodes", |r| {
            r.iter().filter(|r| r.1 == "alice").count() == 2
        })
        .await;
    assert_eq!(rows.iter().map(|r| r.0.as_str()).collect::<Vec<_>>(), ["node-a", "node-b"]);
    let id_on_a = rows.iter().find(|r| r.0 == "node-a").map(|r| r.2.clone()).expect("row");
    let resp = b.delete(&format!("/sessions/{id_on_a}")).await;
    assert_eq!(resp.status, 200, "{}", resp.body);
    assert_eq!(resp.json()["node"], "node-a");
    expect_close(&mut on_a, 1008, "session revoked").await;
    round_trip(&mut on_b, "B's session is untouched").await;
    assert_eq!(b.delete("/sessions/0123456789abcdef0123456789abcdef").await.status, 404);

    // User revocation through A closes alice's session on B.
    b.wait_sessions(STEP, "alice only on B", |r| r.iter().filter(|r| r.1 == "alice").count() == 1)
        .await;
    let resp = a.delete("/users/alice/sessions").await;
    assert_eq!(resp.json()["revoked"], 1, "{}", resp.body);
    expect_close(&mut on_b, 1008, "session revoked").await;

    // Token revocation by jti through A: the session on B closes, and the token is refused on
    // both nodes for as long as it would have lived.
    let (bob, bob_exp) = token("bob", Some("jti-bob-1"), 0);
    let mut bob_on_b = b.session(&bob).await;
    let body = format!(r#"{{"jti": "jti-bob-1", "expires": {bob_exp}}}"#);
    let resp = a.post("/revocations", &body).await;
    assert_eq!(resp.status, 201, "{}", resp.body);
    expect_close(&mut bob_on_b, 1008, "session revoked").await;
    for node in [a, b] {
        let mut ws = connect(node.secure).await;
        send_text(&mut ws, &bob).await;
        expect_text(&mut ws, "Invalid Token").await;
        expect_close(&mut ws, 1008, "token revoked").await;
    }
    let listed = b.get("/revocations").await.json();
    assert_eq!(listed[0]["jti"], "jti-bob-1", "{listed}");
    assert_eq!(listed[0]["until"], bob_exp, "kept until the token's exp (leeway 0)");

    // Every token of carol issued before a time, through B: refused on A; newer ones work.
    let (old, _) = token("carol", None, 60);
    let mut carol_on_a = a.session(&old).await;
    let body = format!(r#"{{"user_id": "carol", "issued_before": {}}}"#, now() - 30);
    assert_eq!(b.post("/revocations", &body).await.status, 201);
    expect_close(&mut carol_on_a, 1008, "session revoked").await;
    let mut ws = connect(a.secure).await;
    send_text(&mut ws, &old).await;
    expect_text(&mut ws, "Invalid Token").await;
    let (fresh, _) = token("carol", None, 0);
    let mut ws = a.session(&fresh).await;
    round_trip(&mut ws, "a newer token works").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_user_session_cap_counts_sessions_on_every_node() {
    let Some((_redis, nodes)) = cluster(2, "secure.max_sessions_per_user = 2") else { return };
    let (a, b) = (&nodes[0], &nodes[1]);
    let (dave, _) = token("dave", None, 0);
    let _first = a.session(&dave).await;
    let mut second = b.session(&dave).await;

    // A third session, on either node, exceeds the cap counted across both.
    for node in [a, b] {
        let mut ws = connect(node.secure).await;
        send_text(&mut ws, &dave).await;
        expect_close(&mut ws, 1008, "too many sessions for this user").await;
    }
    // Another user is not affected.
    let (erin, _) = token("erin", None, 0);
    let _erin = a.session(&erin).await;

    // When one session ends, there is room again.
    second.close(None).await.expect("close");
    a.wait_sessions(STEP, "one session of dave", |r| {
        r.iter().filter(|r| r.1 == "dave").count() == 1
    })
    .await;
    let mut third = a.session(&dave).await;
    round_trip(&mut third, "admitted again").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_reaches_the_users_sessions_on_every_node() {
    let Some((_redis, nodes)) = cluster(3, "") else { return };
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let (frank, _) = token("frank", None, 0);
    let mut on_a = a.session(&frank).await;
    let mut on_b1 = b.session(&frank).await;
    let mut on_b2 = b.session(&frank).await;
    let (grace, _) = token("grace", None, 0);
    let mut grace_on_c = c.session(&grace).await;

    let resp = a.post("/publish", r#"{"user_id": "frank", "data": "hello frank"}"#).await;
    assert_eq!(resp.status, 200, "{}", resp.body);
    let answer = resp.json();
    assert_eq!(answer["delivered"], 3, "{answer}");
    assert_eq!(answer["nodes"], 2, "{answer}");
    assert_eq!(answer["nodes_answered"], 3, "{answer}");
    assert_eq!(answer["complete"], true, "{answer}");
    for ws in [&mut on_a, &mut on_b1, &mut on_b2] {
        expect_text(ws, "hello frank").await;
    }
    // Nobody else got it: grace's next message is her own echo.
    round_trip(&mut grace_on_c, "only mine").await;

    // A user with no session is not an error.
    let answer = b.post("/publish", r#"{"user_id": "nobody", "data": "x"}"#).await.json();
    assert_eq!(
        (answer["delivered"].clone(), answer["nodes"].clone()),
        (0.into(), 0.into()),
        "{answer}"
    );

    // Bad requests say what is expected.
    let resp = a.post("/publish", r#"{"user": "frank"}"#).await;
    assert_eq!(resp.status, 400);
    assert!(resp.body.contains("user_id"), "{}", resp.body);

    let metrics = a.get("/metrics").await.body;
    assert!(metrics.contains("palisade_cluster_publishes_total 1"), "{metrics}");
    assert!(metrics.contains("palisade_cluster_publish_sessions_total 3"), "{metrics}");
    assert!(metrics.contains("palisade_cluster_redis_up 1"), "{metrics}");
    assert!(metrics.trim_end().ends_with("# EOF"), "one exposition, one # EOF");
    assert_eq!(metrics.matches("# EOF").count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_node_leaves_the_cluster_view_within_the_heartbeat_ttl() {
    let Some((_redis, mut nodes)) = cluster(2, "secure.max_sessions_per_user = 1") else { return };
    let (heidi, _) = token("heidi", None, 0);
    let _on_b = nodes[1].session(&heidi).await;
    nodes[0].wait_sessions(STEP, "heidi on node-b", |r| r.iter().any(|r| r.0 == "node-b")).await;
    // The cap holds while B lives.
    let mut ws = connect(nodes[0].secure).await;
    send_text(&mut ws, &heidi).await;
    expect_close(&mut ws, 1008, "too many sessions for this user").await;

    nodes[1].kill();
    let killed = Instant::now();
    let a = &nodes[0];
    a.wait_sessions(TTL + Duration::from_secs(1), "node-b's sessions gone", |r| {
        r.iter().all(|r| r.0 != "node-b")
    })
    .await;
    let gone = killed.elapsed();
    eprintln!("node-b's sessions left the cluster view {gone:?} after SIGKILL (TTL {TTL:?})");
    // No phantom session counts against the cap any more.
    let mut ws = a.session(&heidi).await;
    round_trip(&mut ws, "no phantom").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_keeps_nodes_serving_and_they_catch_up() {
    let Some((mut redis, nodes)) = cluster(2, "") else { return };
    let (a, b) = (&nodes[0], &nodes[1]);
    wait_readyz(a, "cluster: ok", STEP).await;
    let (ivan, _) = token("ivan", None, 0);
    let (judy, _) = token("judy", None, 0);
    let mut ivan_on_a = a.session(&ivan).await;
    let mut judy_on_b = b.session(&judy).await;

    redis.stop();
    let stopped = Instant::now();
    for node in [a, b] {
        let body = wait_readyz(node, "redis unreachable", STEP).await;
        assert!(body.starts_with("ready\n"), "{body}");
    }
    eprintln!("outage reported by both nodes within {:?}", stopped.elapsed());
    assert_eq!(a.get("/cluster").await.json()["connected"], false);
    let metrics = a.get("/metrics").await.body;
    assert!(metrics.contains("palisade_cluster_redis_up 0"), "{metrics}");
    assert!(metrics.contains("palisade_cluster_redis_outages_total 1"), "{metrics}");

    // Established sessions keep working, and new connections (and sessions) are accepted.
    round_trip(&mut ivan_on_a, "still here").await;
    round_trip(&mut judy_on_b, "me too").await;
    let mut kens = Vec::new();
    for node in [a, b] {
        let started = Instant::now();
        let mut ws = node.session(&token("ken", None, 0).0).await;
        round_trip(&mut ws, "new during the outage").await;
        assert!(started.elapsed() < Duration::from_secs(2), "a new session waited on redis");
        kens.push(ws);
    }
    // The node serves with what it knows: a ban made now applies here, a publish reaches the
    // local sessions.
    assert_eq!(a.post("/bans", r#"{"ip": "198.51.100.1", "secs": 60}"#).await.status, 201);
    assert_eq!(handshake_status(a.secure, "198.51.100.1").await, Some(403));
    let answer = a.post("/publish", r#"{"user_id": "ivan", "data": "local only"}"#).await.json();
    assert_eq!((answer["delivered"].clone(), answer["complete"].clone()), (1.into(), false.into()));
    expect_text(&mut ivan_on_a, "local only").await;
    assert_eq!(a.get("/sessions").await.status, 200, "the local view stays available");

    // The outage is logged once per node, at ERROR.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for node in [a, b] {
        let lines = node.error_log().lines().filter(|l| l.contains("\"cluster_outage\"")).count();
        assert_eq!(lines, 1, "node {}: error log:\n{}", node.id, node.error_log());
    }

    // Redis returns (empty: no persistence); the nodes catch up without a restart.
    redis.run();
    for node in [a, b] {
        wait_readyz(node, "cluster: ok", Duration::from_secs(10)).await;
        assert!(node.console().contains("redis reachable again"), "node {}", node.id);
    }
    // The ban made during the outage now holds at B too.
    wait_handshake(b.secure, "198.51.100.1", Some(403), Duration::from_secs(3)).await;
    // New bans and publishes work again.
    assert_eq!(b.post("/bans", r#"{"ip": "198.51.100.2", "secs": 60}"#).await.status, 201);
    wait_handshake(a.secure, "198.51.100.2", Some(403), Duration::from_secs(1)).await;
    let resp = a.post("/publish", r#"{"user_id": "judy", "data": "welcome back"}"#).await;
    let answer = resp.json();
    assert_eq!(answer["delivered"], 1, "{answer}");
    assert_eq!(answer["complete"], true, "{answer}");
    expect_text(&mut judy_on_b, "welcome back").await;
    // Every session is back in the cluster view.
    a.wait_sessions(STEP, "ivan, judy and both kens", |r| r.len() == 4).await;
}

/// A "Redis" that accepts connections and never answers: the node starts, reports the outage,
/// and connections and sessions are never held up by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unresponsive_redis_never_delays_connections() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for socket in listener.incoming() {
            // Keep every connection open and silent until the test process ends.
            held.push(socket);
        }
    });
    // Only the URL matters here; `Redis` is not started.
    let fake = Redis { port, child: None, dir: tempfile::tempdir().expect("tempdir") };
    let started = Instant::now();
    let node = Node::start(&fake, "node-a", "");
    eprintln!("node started against a silent redis in {:?}", started.elapsed());
    wait_readyz(&node, "redis unreachable", STEP).await;

    let started = Instant::now();
    let (lena, _) = token("lena", None, 0);
    let mut ws = node.session(&lena).await;
    round_trip(&mut ws, "not waiting on redis").await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(300),
        "a new session took {took:?} (command timeout 300 ms)"
    );
    let rows = node.cluster_sessions().await;
    assert_eq!(rows, [("node-a".to_owned(), "lena".to_owned(), rows[0].2.clone())]);
}

/// Pushes to a session that does not read fill its bounded queue; then it is closed as a slow
/// consumer instead of buffering without end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_who_does_not_read_pushes_is_closed_not_buffered() {
    let Some((_redis, nodes)) = cluster(2, "limits.outbound_queue = 4") else { return };
    let (a, b) = (&nodes[0], &nodes[1]);
    let (mallory, _) = token("mallory", None, 0);
    let mut slow = b.session(&mallory).await;
    let data = "x".repeat(60_000);
    let body = serde_json::json!({ "user_id": "mallory", "data": data }).to_string();
    let mut accepted = 0;
    loop {
        let answer = a.post("/publish", &body).await.json();
        if answer["delivered"] == 0 {
            break;
        }
        accepted += 1;
        assert!(accepted < 2_000, "{accepted} pushes queued to a client that reads nothing");
    }
    eprintln!("slow reader closed after {accepted} pushes of 60 kB (socket buffers included)");
    // The client finally reads: the queued pushes, then the close.
    let mut read = 0;
    loop {
        match next_message(&mut slow).await {
            Message::Text(t) => {
                assert_eq!(t.len(), 60_000);
                read += 1;
            }
            Message::Close(Some(frame)) => {
                assert_eq!(u16::from(frame.code), 1008);
                assert_eq!(frame.reason.as_str(), "slow consumer");
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(read <= accepted, "read {read}, accepted {accepted}");
}

mod channels;
