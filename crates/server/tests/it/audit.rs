//! The audit trail end to end: the real `palisade` binary on 127.0.0.1, real WebSocket and HTTP
//! clients, then the file read back and checked with `palisade audit verify | tail`.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{ChildStdout, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use palisade_digest::{Fingerprint, sha256};
use palisade_token::{Algorithm, Claims};
use serde_json::Value;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::support::{
    self, SECRET, STEP, Server, Ws, connect, expect_close, expect_text, mint, now, send_text,
    toml_path,
};

/// The admin bearer token.
const ADMIN_TOKEN: &str = "admin-token-for-the-audit-test-0123456789";

/// Starts the server with an admin token, a 1 s auth timeout and the audit trail in
/// `audit/audit.log`, plus `overrides` (dotted keys).
fn start(overrides: &str) -> Server {
    let server = Server::builder();
    let token_file = server.write_file("admin.token", ADMIN_TOKEN);
    let audit_file = server.dir().join("audit").join("audit.log");
    server
        .set("secure.auth_timeout_secs", "1")
        .set("admin.token_file", toml_path(&token_file))
        .set("audit.file", toml_path(&audit_file))
        .overrides(overrides)
        .start()
}

fn audit_file(server: &Server) -> PathBuf {
    server.dir().join("audit").join("audit.log")
}

/// Lines of a child's stdout, read on a thread so waits can be bounded.
fn read_lines(stdout: ChildStdout) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            // Keep draining even when nobody listens any more, so the child never blocks.
            let _ = tx.send(line);
        }
    });
    rx
}

fn token(user_id: &str, ttl_secs: i64, email: Option<&str>, secret: &str) -> String {
    let mut claims = Claims::new(user_id);
    claims.exp = Some(now().saturating_add_signed(ttl_secs));
    claims.email = email.map(|e| palisade_email::Email::parse(e).unwrap());
    mint(Algorithm::Hs256, secret, &claims)
}

/// Closes with 1000 and waits for the server's close frame.
async fn close(ws: &mut Ws) {
    let frame = CloseFrame { code: CloseCode::Normal, reason: "".into() };
    timeout(STEP, ws.close(Some(frame))).await.unwrap().unwrap();
    expect_close(ws, 1000, None).await;
}

/// Authenticates with `token`; expects `reply`.
async fn auth(server: &Server, token: &str, reply: &str) -> Ws {
    let mut ws = connect(server.secure).await;
    send_text(&mut ws, token).await;
    expect_text(&mut ws, reply).await;
    ws
}

/// One HTTP/1.1 request to the admin API with `bearer`; returns status and body.
async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    bearer: &str,
    body: &str,
) -> (u16, String) {
    let auth = format!("Bearer {bearer}");
    let resp = support::http(addr, method, path, &[("Authorization", &auth)], body).await;
    (resp.status, resp.body)
}

/// Every record of the audit files, oldest first.
fn records(files: &[PathBuf]) -> Vec<Value> {
    files
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f).unwrap().lines().map(str::to_owned).collect::<Vec<_>>()
        })
        .map(|l| serde_json::from_str(&l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// The one record of `event` whose fields include all of `fields`.
#[track_caller]
fn find<'a>(records: &'a [Value], event: &str, fields: &[(&str, Value)]) -> &'a Value {
    records
        .iter()
        .find(|r| r["event"] == event && fields.iter().all(|(k, v)| r[k] == *v))
        .unwrap_or_else(|| {
            let all: Vec<String> = records.iter().map(Value::to_string).collect();
            panic!("no {event} record with {fields:?} in:\n{}", all.join("\n"))
        })
}

/// Runs `palisade audit ARGS`.
fn palisade_audit(args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .arg("audit")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "palisade audit {args:?} did not finish");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_events_are_recorded_without_secrets_and_verify() {
    let mut server = start("firewall.ban_after_auth_failures = 3");
    let good = token("alice", 60, Some("alice@example.com"), SECRET);
    let forged_user = "mallory\n{\"seq\":0,\"event\":\"unban\"}";
    let mallory = token(forged_user, 60, None, SECRET);
    let expired = token("bob", -10, None, SECRET);
    let wrong_key = token("eve", 60, None, "some-other-secret-that-is-long-enough-000000");

    // A session that the client ends normally.
    let mut ws = auth(&server, &good, "Authenticated!").await;
    send_text(&mut ws, "hi").await;
    expect_text(&mut ws, "Server received: hi").await;
    close(&mut ws).await;
    // A session the admin will revoke; its user id holds a newline.
    let mut revoked = auth(&server, &mallory, "Authenticated!").await;
    // An auth timeout, then three failed tokens: the third bans 127.0.0.1.
    let mut slow = connect(server.secure).await;
    expect_close(&mut slow, 1008, None).await;
    let _ = auth(&server, &expired, "Token Expired").await;
    let _ = auth(&server, &wrong_key, "Invalid Token").await;
    let _ = auth(&server, "not-a-token", "Invalid Token").await;
    // Banned: the next connections are dropped at accept.
    for _ in 0..3 {
        assert!(tokio_tungstenite::connect_async(format!("ws://{}/", server.echo)).await.is_err());
    }

    // Admin calls: one refused, then a revocation, an unban and a ban.
    assert_eq!(http(server.admin, "GET", "/sessions", "wrong-admin-token", "").await.0, 401);
    let (status, body) = http(server.admin, "GET", "/sessions", ADMIN_TOKEN, "").await;
    assert_eq!(status, 200);
    let sessions: Value = serde_json::from_str(&body).unwrap();
    let session = sessions.as_array().unwrap()[0]["id"].as_str().unwrap().to_owned();
    let path = format!("/sessions/{session}");
    assert_eq!(http(server.admin, "DELETE", &path, ADMIN_TOKEN, "").await.0, 200);
    expect_close(&mut revoked, 1008, None).await;
    assert_eq!(http(server.admin, "DELETE", "/bans/127.0.0.1", ADMIN_TOKEN, "").await.0, 204);
    let ban = r#"{"ip": "192.0.2.7", "secs": 60}"#;
    assert_eq!(http(server.admin, "POST", "/bans", ADMIN_TOKEN, ban).await.0, 201);
    assert_eq!(http(server.admin, "DELETE", "/users/alice/sessions", ADMIN_TOKEN, "").await.0, 200);
    server.stop();

    let file = audit_file(&server);
    let recs = records(std::slice::from_ref(&file));
    let ip = Value::from("127.0.0.1");
    let ok = find(&recs, "auth_ok", &[("user_id", "alice".into())]);
    assert_eq!(ok["token"], Fingerprint::of(&good).to_string());
    assert_eq!(ok["email"], Fingerprint::of("alice@example.com").to_string());
    assert_eq!(ok["ip"], ip);
    assert_eq!(ok["endpoint"], "secure");
    let start = find(&recs, "session_start", &[("user_id", "alice".into())]);
    let end = find(&recs, "session_end", &[("session", start["session"].clone())]);
    assert_eq!((&end["by"], &end["close_code"]), (&"client".into(), &1000.into()));
    find(&recs, "auth_ok", &[("user_id", forged_user.into())]);
    find(
        &recs,
        "session_end",
        &[("user_id", forged_user.into()), ("by", "server".into()), ("close_code", 1008.into())],
    );
    find(&recs, "auth_failed", &[("reason", "timeout".into()), ("token", Value::Null)]);
    find(
        &recs,
        "auth_failed",
        &[("reason", "expired".into()), ("token", Fingerprint::of(&expired).to_string().into())],
    );
    find(&recs, "auth_failed", &[("reason", "bad_signature".into())]);
    find(&recs, "auth_failed", &[("reason", "malformed".into())]);
    find(
        &recs,
        "ban",
        &[("ip", ip.clone()), ("cause", "auth_failures".into()), ("secs", 900.into())],
    );
    let refused = find(&recs, "firewall_refused", &[("ip", ip.clone())]);
    assert_eq!(refused["reasons"]["banned"], refused["count"]);
    assert!(refused["count"].as_u64().unwrap() >= 3, "{refused}");
    let admin = Value::from(Fingerprint::of(ADMIN_TOKEN).to_string());
    let wrong = Value::from(Fingerprint::of("wrong-admin-token").to_string());
    find(
        &recs,
        "admin_call",
        &[
            ("admin", wrong),
            ("method", "GET".into()),
            ("path", "/sessions".into()),
            ("status", 401.into()),
        ],
    );
    find(
        &recs,
        "admin_call",
        &[
            ("admin", admin.clone()),
            ("method", "DELETE".into()),
            ("path", path.into()),
            ("status", 200.into()),
        ],
    );
    find(&recs, "revoked", &[("session", session.into()), ("sessions", 1.into())]);
    find(&recs, "revoked", &[("user_id", "alice".into()), ("sessions", 0.into())]);
    find(&recs, "unban", &[("ip", ip), ("cause", "admin".into())]);
    find(
        &recs,
        "ban",
        &[("ip", "192.0.2.7".into()), ("secs", 60.into()), ("cause", "admin".into())],
    );
    find(
        &recs,
        "admin_call",
        &[
            ("admin", admin),
            ("method", "POST".into()),
            ("path", "/bans".into()),
            ("status", 201.into()),
        ],
    );

    // No secret and no e-mail address in the file; the newline stayed inside its record.
    let text = std::fs::read_to_string(&file).unwrap();
    for secret in [
        good.as_str(),
        &mallory,
        &expired,
        &wrong_key,
        "alice@example.com",
        ADMIN_TOKEN,
        "wrong-admin-token",
    ] {
        assert!(!text.contains(secret), "audit file holds {secret:?}");
    }
    assert_eq!(text.lines().count(), recs.len());

    // The head at shutdown is in the error log (which otherwise holds errors only) ...
    let head = sha256(text.lines().last().unwrap()).to_hex();
    let errors = std::fs::read_to_string(server.error_log_path()).unwrap();
    let anchor = errors
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|v| v["message"] == "audit chain head" && v["at"] == "shutdown")
        .unwrap_or_else(|| panic!("no shutdown head in the error log:\n{errors}"));
    assert_eq!(anchor["audit_head"], head);
    assert_eq!(anchor["level"], "INFO");
    assert_eq!(anchor["audit_seq"], recs.len() as u64 - 1);

    // ... and verify checks the chain against it.
    let (f, e) = (file.to_str().unwrap(), server.error_log_path());
    let e = e.to_str().unwrap();
    let out = palisade_audit(&["verify", "--anchors", e, f]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(
        stdout(&out).contains(&format!("audit chain intact: {} records", recs.len())),
        "{}",
        stdout(&out)
    );
    assert!(stdout(&out).contains("anchors: 1 checked"), "the shutdown head: {}", stdout(&out));

    // tail prints the last records readably, the forged newline escaped.
    let out = palisade_audit(&["tail", "-n", "100", f]);
    assert_eq!(out.status.code(), Some(0));
    let shown = stdout(&out);
    assert_eq!(shown.lines().count(), recs.len());
    assert!(shown.contains(r#"user_id="mallory\n{\"seq\":0,"#), "{shown}");
    assert!(
        shown.lines().all(|l| l.starts_with(recs[0]["ts"].as_str().unwrap().get(..4).unwrap()))
    );

    // One edited byte: exit 1, with the line.
    let lines: Vec<&str> = text.lines().collect();
    let tampered = server.dir().join("tampered.log");
    let mut edited: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    let at = lines.iter().position(|l| l.contains(r#""ip":"127.0.0.1""#)).unwrap();
    edited[at] = edited[at].replacen("127.0.0.1", "127.0.0.2", 1);
    std::fs::write(&tampered, edited.join("\n") + "\n").unwrap();
    let out = palisade_audit(&["verify", tampered.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let expected = format!("tampered.log:{}: record edited", at + 1);
    assert!(stdout(&out).contains(&expected), "{}", stdout(&out));

    // The tail cut off: only the anchored head shows it.
    std::fs::write(&tampered, lines[..lines.len() - 2].join("\n") + "\n").unwrap();
    let out = palisade_audit(&["verify", tampered.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "without an anchor: {}", stdout(&out));
    assert!(stdout(&out).contains("warning: no anchor given"));
    let out = palisade_audit(&["verify", "--anchors", e, tampered.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(stdout(&out).contains("chain truncated: 2 record(s) missing"), "{}", stdout(&out));

    // A file that cannot be read is not a verdict.
    let out = palisade_audit(&["verify", "/nonexistent/audit.log"]);
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_keeps_one_chain_that_tail_follows() {
    let mut server = start("audit.max_file_bytes = 2048\naudit.max_files = 100");
    let file = audit_file(&server);
    // Follow the active file from its end, across the rotations to come.
    let mut tail = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(["audit", "tail", "-f", "-n", "0"])
        .arg(&file)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let followed = read_lines(tail.stdout.take().unwrap());
    std::thread::sleep(Duration::from_millis(300));
    for i in 0..20 {
        let mut ws =
            auth(&server, &token(&format!("user{i}"), 60, None, SECRET), "Authenticated!").await;
        close(&mut ws).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    while !seen
        .iter()
        .any(|l: &String| l.contains("session_end") && l.contains("user_id=\"user19\""))
    {
        let left = deadline.saturating_duration_since(Instant::now());
        match followed.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(_) => panic!(
                "tail -f did not show user19's session end; it printed:\n{}",
                seen.join("\n")
            ),
        }
    }
    let _ = tail.kill();
    let _ = tail.wait();
    assert!(
        seen.iter().any(|l| l.contains("auth_ok") && l.contains("user_id=\"user0\"")),
        "{}",
        seen.join("\n")
    );
    server.stop();

    // The rotated files in the order a shell glob gives; verify puts them in chain order.
    let dir = file.parent().unwrap();
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert!(files.len() >= 4, "{files:?}");
    let recs = records(&{
        let mut ordered = files.clone();
        palisade_audit::chain_order(&mut ordered);
        ordered
    });
    assert_eq!(recs.len(), 60, "auth_ok, session_start and session_end for 20 users");
    for (i, r) in recs.iter().enumerate() {
        assert_eq!(r["seq"], i as u64);
    }
    let errors = std::fs::read_to_string(server.error_log_path()).unwrap();
    let rotations = errors.lines().filter(|l| l.contains(r#""at":"rotation""#)).count();
    assert_eq!(rotations, files.len() - 1, "one anchor per rotation:\n{errors}");
    let error_log = server.error_log_path();
    let mut args = vec!["verify", "--anchors", error_log.to_str().unwrap()];
    let names: Vec<String> = files.iter().map(|f| f.to_str().unwrap().to_owned()).collect();
    args.extend(names.iter().map(String::as_str));
    let out = palisade_audit(&args);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(
        stdout(&out).contains(&format!("60 records in {} file(s), seq 0..=59", files.len())),
        "{}",
        stdout(&out)
    );

    // Without one of the middle files the chain breaks at the start of the next.
    let missing = names.iter().position(|n| n.ends_with(".2")).unwrap();
    let mut without = args.clone();
    without.remove(3 + missing);
    let out = palisade_audit(&without);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(stdout(&out).contains("audit.log.1:1: "), "{}", stdout(&out));
}
