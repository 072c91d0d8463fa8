//! Many connections at once, and graceful shutdown on SIGTERM.

use std::time::{Duration, Instant};

use futures_util::future::join_all;

use crate::support::{
    Server, authenticated, connect, expect_close, expect_text, metric, round_trip, send_text,
};

const CONNECTIONS: usize = 1000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_connections_at_once_all_echo() {
    // Each connection takes one descriptor here and one in the server process.
    let limit = fd_limit();
    assert!(
        limit > CONNECTIONS as u64 + 100,
        "ulimit -n is {limit}: too low for {CONNECTIONS} connections"
    );
    let server = Server::start(
        "firewall.max_connections_per_ip = 5000\n\
         firewall.handshakes_per_sec_per_ip = 100000\n\
         firewall.handshake_burst = 100000",
    );
    let started = Instant::now();
    let addr = server.echo;
    let opened =
        join_all((0..CONNECTIONS).map(|_| tokio::spawn(async move { connect(addr).await }))).await;
    let mut all: Vec<_> = opened.into_iter().map(|r| r.expect("connect task")).collect();
    // Every one is open at the same time; now each talks.
    let talks = all.iter_mut().enumerate().map(|(i, ws)| async move {
        send_text(ws, &format!("n{i}")).await;
        expect_text(ws, &format!("Server received: n{i}")).await;
    });
    tokio::time::timeout(Duration::from_secs(60), join_all(talks))
        .await
        .expect("all round trips in time");
    eprintln!("{CONNECTIONS} connections opened and echoed in {:?}", started.elapsed());
    let resp = crate::support::http(server.admin, "GET", "/metrics", &[], "").await;
    assert_eq!(resp.status, 200);
    let open = metric(&resp.body, r#"palisade_connections_open{endpoint="echo"}"#);
    assert_eq!(open, Some(CONNECTIONS as f64), "metrics:\n{}", resp.body);
    drop(all);
}

fn fd_limit() -> u64 {
    let out =
        std::process::Command::new("sh").args(["-c", "ulimit -n"]).output().expect("run ulimit");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(u64::MAX)
}

#[tokio::test]
async fn sigterm_sends_1001_and_exits_0() {
    let mut server = Server::start("");
    let mut echo = connect(server.echo).await;
    round_trip(&mut echo, "before shutdown").await;
    let mut session = authenticated(&server, "42").await;
    server.terminate();
    expect_close(&mut echo, 1001, Some("server shutting down")).await;
    expect_close(&mut session, 1001, Some("server shutting down")).await;
    drop((echo, session));
    let status = server.wait_exit(Duration::from_secs(8));
    assert!(status.success(), "exit status after SIGTERM: {status}");
}

#[tokio::test]
async fn sigterm_with_no_connections_exits_0_promptly() {
    let mut server = Server::start("");
    server.terminate();
    let status = server.wait_exit(Duration::from_secs(5));
    assert_eq!(status.code(), Some(0), "exit status after SIGTERM: {status}");
}

#[tokio::test]
async fn idle_connection_is_closed_with_1001() {
    let server = Server::start("limits.idle_timeout_secs = 1\nlimits.ping_interval_secs = 0");
    let mut ws = connect(server.echo).await;
    expect_close(&mut ws, 1001, Some("idle timeout")).await;
    crate::support::assert_echo_serves(&server).await;
}
