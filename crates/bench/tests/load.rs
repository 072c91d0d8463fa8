//! Runs `palisade-load` against the `tungstenite-echo` baseline, each mode
//! with tiny parameters, over loopback.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use serde_json::Value;

/// The baseline server, killed on drop.
struct Server {
    child: Child,
    url: String,
}

impl Server {
    fn start() -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tungstenite-echo"))
            .stdout(Stdio::piped())
            .spawn()
            .expect("start tungstenite-echo");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("listening line");
        let addr = line
            .trim()
            .strip_prefix("tungstenite-echo listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        Server { child, url: format!("ws://{addr}/") }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs palisade-load; returns its stdout lines parsed as JSON.
fn load(args: &[&str]) -> Vec<Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_palisade-load"))
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .expect("run palisade-load");
    assert!(out.status.success(), "palisade-load {args:?}: {}", out.status);
    String::from_utf8(out.stdout)
        .expect("utf-8 stdout")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

/// Echo and handshake runs print `measure_start`, `measure_end`, `result`.
fn timed_result(lines: Vec<Value>, mode: &str) -> Value {
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_eq!(lines[0], serde_json::json!({"event": "measure_start"}));
    assert_eq!(lines[1], serde_json::json!({"event": "measure_end"}));
    only_result(lines[2..].to_vec(), mode)
}

fn only_result(lines: Vec<Value>, mode: &str) -> Value {
    assert_eq!(lines.len(), 1, "{lines:?}");
    let result = lines.into_iter().next().unwrap_or_default();
    assert_eq!(result["event"], "result");
    assert_eq!(result["mode"], mode);
    result
}

#[test]
fn echo_mode_text_and_binary() {
    let server = Server::start();
    let url = server.url.as_str();
    for binary in [false, true] {
        let mut args = vec![
            "echo",
            "--url",
            url,
            "--connections",
            "4",
            "--inflight",
            "4",
            "--size",
            "200",
            "--duration",
            "0.5",
            "--warmup",
            "0",
            "--sources",
            "127.0.0.1,127.0.0.2",
        ];
        if binary {
            args.push("--binary");
        }
        let r = timed_result(load(&args), "echo");
        assert_eq!(r["errors"], 0, "{r}");
        assert_eq!(r["first_error"], Value::Null);
        assert_eq!(r["connections"], 4);
        assert_eq!(r["binary"], binary);
        assert_eq!(r["secs"], 0.5);
        let messages = r["messages"].as_u64().unwrap_or_default();
        assert!(messages > 0, "{r}");
        assert_eq!(r["bytes"].as_u64(), Some(messages * 200));
        assert!(r["p50_us"].as_u64() <= r["max_us"].as_u64());
        for key in ["msgs_per_sec", "mb_per_sec", "p99_us", "p999_us", "inflight", "size"] {
            assert!(r.get(key).is_some(), "{key} missing: {r}");
        }
    }
}

#[test]
fn handshake_mode() {
    let server = Server::start();
    let r = timed_result(
        load(&[
            "handshake",
            "--url",
            &server.url,
            "--duration",
            "0.5",
            "--warmup",
            "0.1",
            "--concurrency",
            "4",
        ]),
        "handshake",
    );
    assert_eq!(r["errors"], 0, "{r}");
    assert!(r["handshakes"].as_u64().unwrap_or_default() > 0, "{r}");
    assert!(r["handshakes_per_sec"].as_f64().unwrap_or_default() > 0.0, "{r}");
}

#[test]
fn idle_mode_prints_ready_then_result() {
    let server = Server::start();
    let lines = load(&[
        "idle",
        "--url",
        &server.url,
        "--connections",
        "20",
        "--hold",
        "0.5",
        "--trickle-ms",
        "100",
    ]);
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[0]["event"], "ready");
    assert_eq!(lines[0]["connections"], 20);
    assert_eq!(lines[0]["errors"], 0);
    let r = only_result(lines[1..].to_vec(), "idle");
    assert_eq!(r["errors"], 0, "{r}");
    assert_eq!(r["connections"], 20);
    assert!(r["messages"].as_u64().unwrap_or_default() > 0, "{r}");

    // Without traffic: no messages, no errors.
    let lines = load(&["idle", "--url", &server.url, "--connections", "5", "--hold", "0.2"]);
    let r = only_result(lines[1..].to_vec(), "idle");
    assert_eq!((r["errors"].as_u64(), r["messages"].as_u64()), (Some(0), Some(0)), "{r}");
}

#[test]
fn wrong_prefix_is_reported_as_errors() {
    let server = Server::start();
    let r = timed_result(
        load(&[
            "echo",
            "--url",
            &server.url,
            "--connections",
            "2",
            "--inflight",
            "2",
            "--size",
            "32",
            "--duration",
            "0.3",
            "--warmup",
            "0",
            "--prefix",
            "Server received: ",
        ]),
        "echo",
    );
    assert!(r["errors"].as_u64().unwrap_or_default() > 0, "{r}");
    let first = r["first_error"].as_str().unwrap_or_default();
    assert!(first.contains("reply did not match"), "{r}");
}

#[test]
fn refused_connections_are_errors_not_failures() {
    // Take a free port, then close it again so nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port");
    let url = format!("ws://127.0.0.1:{port}/");
    let r = timed_result(
        load(&[
            "handshake",
            "--url",
            &url,
            "--duration",
            "0.1",
            "--warmup",
            "0",
            "--concurrency",
            "1",
        ]),
        "handshake",
    );
    assert!(r["errors"].as_u64().unwrap_or_default() > 0, "{r}");
    assert_eq!(r["handshakes"], 0);
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &[
            "echo",
            "--url",
            "http://127.0.0.1:1/",
            "--connections",
            "1",
            "--inflight",
            "1",
            "--size",
            "1",
            "--duration",
            "1",
        ][..],
        &["echo", "--url", "ws://127.0.0.1:1/"][..],
        &["idle", "--url", "ws://127.0.0.1:1/", "--connections", "1", "--hold", "-1"][..],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_palisade-load"))
            .args(args)
            .output()
            .expect("run palisade-load");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}
