//! The record format, the chain across rotations, each kind of tampering, the bounded queue and
//! the per-minute refusal counts.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use palisade_digest::{Fingerprint, sha256};
use proptest::prelude::*;
use serde_json::Value;

use crate::refusals::{MAX_IPS_PER_MINUTE, Refusals};
use crate::time::rfc3339_millis;
use crate::{
    AuditConfig, AuditLog, Break, BreakKind, Event, GENESIS, Head, Notice, OpenError, Summary,
    VerifyError, chain_order, verify,
};

fn config(dir: &Path, max_file_bytes: u64, max_files: usize, queue: usize) -> AuditConfig {
    AuditConfig { file: dir.join("audit.log"), max_file_bytes, max_files, queue }
}

fn open(config: &AuditConfig) -> AuditLog {
    AuditLog::open(config, |_| {}).expect("open audit log")
}

fn ip(last: u8) -> IpAddr {
    [192, 0, 2, last].into()
}

/// One event of every kind.
fn every_event() -> Vec<Event> {
    vec![
        Event::AuthOk {
            conn: 1,
            endpoint: "secure".into(),
            ip: ip(1),
            user_id: "42".into(),
            token: Fingerprint::of("token"),
            email: Some(Fingerprint::of("a@example.com")),
        },
        Event::AuthFailed {
            conn: 2,
            endpoint: "secure".into(),
            ip: ip(2),
            reason: "expired".into(),
            token: Some(Fingerprint::of("old token")),
        },
        Event::SessionStart {
            session: "s1".into(),
            conn: 1,
            endpoint: "secure".into(),
            ip: ip(1),
            user_id: "42".into(),
        },
        Event::SessionEnd {
            session: "s1".into(),
            conn: 1,
            user_id: "42".into(),
            by: "client".into(),
            close_code: Some(1000),
        },
        Event::Ban { ip: ip(3), secs: 900, cause: "auth_failures".into() },
        Event::Unban { ip: ip(3), cause: "admin".into() },
        Event::Revoked {
            session: None,
            user_id: Some("42".into()),
            sessions: 2,
            cause: "admin".into(),
        },
        Event::AdminCall {
            admin: Some(Fingerprint::of("admin token")),
            method: "DELETE".into(),
            path: "/bans/192.0.2.3".into(),
            status: 204,
        },
        Event::FirewallRefused {
            ip: Some(ip(4)),
            minute: "2026-01-01T00:00:00.000Z".into(),
            count: 3,
            reasons: BTreeMap::from([("banned".to_owned(), 3)]),
        },
        Event::ConfigReload { ok: true, detail: "firewall.deny".into() },
        Event::CertReload { ok: false, detail: "no such file".into() },
        Event::Dropped { count: 7 },
    ]
}

/// Writes `events` to a fresh log and returns the directory, the file and the final head.
fn write(events: Vec<Event>) -> (tempfile::TempDir, PathBuf, Head) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path(), 1 << 20, 3, 1024);
    let log = open(&config);
    for event in events {
        log.record(event);
    }
    let head = log.close().expect("records were written");
    (dir, config.file, head)
}

/// The lines of a file, without their newlines.
fn lines(path: &Path) -> Vec<Vec<u8>> {
    let bytes = std::fs::read(path).expect("read audit file");
    let mut lines: Vec<Vec<u8>> = bytes.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect();
    assert_eq!(lines.pop(), Some(Vec::new()), "the file ends with a newline");
    lines
}

fn json(line: &[u8]) -> Value {
    serde_json::from_slice(line).expect("a record is JSON")
}

/// The active file and its rotated siblings, oldest first.
fn chain_files(file: &Path) -> Vec<PathBuf> {
    let dir = file.parent().expect("file in a folder");
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.to_string_lossy().starts_with(&*file.to_string_lossy()))
        .collect();
    chain_order(&mut files);
    files
}

fn auth_ok(user_id: &str) -> Event {
    Event::AuthOk {
        conn: 9,
        endpoint: "secure".into(),
        ip: ip(9),
        user_id: user_id.into(),
        token: Fingerprint::of(user_id),
        email: None,
    }
}

// ---- format ----

#[test]
fn record_has_seq_ts_event_fields_prev_in_that_order() {
    let (_dir, file, _) = write(vec![auth_ok("42")]);
    let lines = lines(&file);
    assert_eq!(lines.len(), 1);
    let text = String::from_utf8(lines[0].clone()).unwrap();
    let ts_end = text.find(r#"","event""#).expect("ts before event");
    let ts = &text[r#"{"seq":0,"ts":""#.len()..ts_end];
    assert_eq!(ts.len(), "2026-01-01T00:00:00.000Z".len(), "ts {ts:?}");
    assert!(ts.ends_with('Z') && ts.as_bytes()[10] == b'T', "ts {ts:?}");
    assert_eq!(
        text.replace(ts, "TS"),
        format!(
            r#"{{"seq":0,"ts":"TS","event":"auth_ok","conn":9,"endpoint":"secure","ip":"192.0.2.9","user_id":"42","token":"{}","prev":"{}"}}"#,
            Fingerprint::of("42"),
            GENESIS
        )
    );
}

#[test]
fn every_event_is_named_and_keeps_clear_of_the_chain_fields() {
    let events = every_event();
    let (_dir, file, _) = write(events.clone());
    let lines = lines(&file);
    assert_eq!(lines.len(), events.len());
    for (line, event) in lines.iter().zip(&events) {
        let v = json(line);
        assert_eq!(v["event"], event.name(), "{v}");
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys.iter().filter(|k| ["seq", "ts", "event", "prev"].contains(k)).count(), 4);
    }
    let dropped = json(&lines[11]);
    assert_eq!(dropped["count"], 7);
    assert_eq!(json(&lines[0])["email"], Fingerprint::of("a@example.com").to_string());
    assert_eq!(json(&lines[8])["reasons"]["banned"], 3);
}

#[test]
fn secrets_appear_only_as_fingerprints() {
    let (_dir, file, _) = write(every_event());
    let text = std::fs::read_to_string(&file).unwrap();
    // The raw value "token" would appear as `:"token"`; the key `"token":` is expected.
    for secret in ["a@example.com", "old token", "admin token", ":\"token\""] {
        assert!(!text.contains(secret), "{secret:?} in the audit file");
    }
    assert!(text.contains(&Fingerprint::of("admin token").to_string()));
}

#[test]
fn newline_in_a_claim_cannot_forge_a_record() {
    let forged = format!(
        "42\n{{\"seq\":1,\"ts\":\"x\",\"event\":\"unban\",\"ip\":\"192.0.2.1\",\"prev\":\"{GENESIS}\"}}\r\n\u{2028}"
    );
    let (_dir, file, head) = write(vec![auth_ok(&forged)]);
    let lines = lines(&file);
    assert_eq!(lines.len(), 1, "one event, one line");
    assert!(!lines[0].contains(&b'\r'));
    assert_eq!(json(&lines[0])["user_id"], forged.as_str());
    assert_eq!(verify(&[&file], &[head]).unwrap().records, 1);
}

#[test]
fn each_record_links_to_the_exact_bytes_of_the_one_before() {
    let (_dir, file, head) = write(every_event());
    let lines = lines(&file);
    assert_eq!(json(&lines[0])["prev"], GENESIS.to_hex());
    for (i, pair) in lines.windows(2).enumerate() {
        let next = json(&pair[1]);
        assert_eq!(next["prev"], sha256(&pair[0]).to_hex());
        assert_eq!(next["seq"], i as u64 + 1);
    }
    assert_eq!(head, Head { seq: 11, hash: sha256(lines.last().unwrap()) });
}

#[test]
fn timestamps_are_rfc3339_utc_with_milliseconds() {
    let at = |secs: u64, ms: u64| {
        rfc3339_millis(UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(ms))
    };
    assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
    assert_eq!(at(951_782_400, 5), "2000-02-29T00:00:00.005Z");
    assert_eq!(at(1_700_000_000, 123), "2023-11-14T22:13:20.123Z");
    assert_eq!(at(4_107_542_399, 999), "2100-02-28T23:59:59.999Z");
    assert_eq!(at(4_107_542_400, 0), "2100-03-01T00:00:00.000Z");
}

#[test]
fn head_prints_and_parses_as_seq_colon_hex() {
    let head = Head { seq: 41, hash: sha256("x") };
    assert_eq!(head.to_string(), format!("41:{}", sha256("x")));
    assert_eq!(head.to_string().parse::<Head>(), Ok(head));
    for bad in ["", "41", "x:00", &format!("41:{}", &sha256("x").to_hex()[2..])] {
        assert!(bad.parse::<Head>().is_err(), "{bad:?}");
    }
}

// ---- chain across runs and rotations ----

#[test]
fn reopening_continues_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), 1 << 20, 3, 16);
    let first = open(&config);
    first.record(auth_ok("a"));
    let head = first.close().unwrap();
    let second = open(&config);
    assert_eq!(second.head(), Some(head));
    second.record(auth_ok("b"));
    let head = second.close().unwrap();
    assert_eq!(head.seq, 1);
    assert_eq!(verify(&[&config.file], &[head]).unwrap().records, 2);
}

#[test]
fn a_torn_last_line_stops_the_log_from_continuing() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), 1 << 20, 3, 16);
    std::fs::write(&config.file, b"{\"seq\":0,").unwrap();
    let err = AuditLog::open(&config, |_| {}).unwrap_err();
    assert!(matches!(err, OpenError::BadTail { .. }), "{err:?}");
    assert!(err.to_string().contains("its last line is incomplete"), "{err}");
}

#[test]
fn zero_sizes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let open_with = |c: AuditConfig| AuditLog::open(&c, |_| {}).unwrap_err();
    assert!(matches!(open_with(config(dir.path(), 1, 1, 0)), OpenError::ZeroQueue));
    assert!(matches!(open_with(config(dir.path(), 0, 1, 1)), OpenError::ZeroMaxFileBytes));
    assert!(matches!(open_with(config(dir.path(), 1, 0, 1)), OpenError::ZeroMaxFiles));
}

#[test]
fn rotation_keeps_one_chain_and_a_bounded_number_of_files() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), 1000, 3, 1024);
    let (tx, rx) = mpsc::channel();
    let log = AuditLog::open(&config, move |notice| {
        if let Notice::Rotated { head, rotated_to } = notice {
            tx.send((head, rotated_to.to_owned())).unwrap();
        }
    })
    .unwrap();
    for i in 0..60 {
        log.record(auth_ok(&format!("user {i}")));
    }
    let head = log.close().unwrap();
    let rotations: Vec<(Head, PathBuf)> = rx.try_iter().collect();
    assert!(rotations.len() >= 10, "{} rotations", rotations.len());
    assert!(rotations.iter().all(|(_, to)| *to == dir.path().join("audit.log.1")));

    let files = chain_files(&config.file);
    let names: Vec<String> =
        files.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(names, ["audit.log.3", "audit.log.2", "audit.log.1", "audit.log"]);
    for f in &files {
        assert!(std::fs::metadata(f).unwrap().len() <= 1000, "{} too big", f.display());
    }
    // The first record of each file links to the last record of the file before it.
    for pair in files.windows(2) {
        let last = lines(&pair[0]).pop().unwrap();
        assert_eq!(json(&lines(&pair[1])[0])["prev"], sha256(&last).to_hex());
    }
    // The heads announced at rotation are anchors the chain must hold (older ones fell away).
    let anchors: Vec<Head> = rotations.iter().map(|(h, _)| *h).chain([head]).collect();
    let summary = verify(&files, &anchors).unwrap();
    assert_eq!(summary.head, Some(head));
    assert_eq!(summary.head.unwrap().seq, 59);
    assert!(summary.first_seq.unwrap() > 0);
    assert_eq!(summary.anchors_checked, 4, "{summary:?}");
    assert_eq!(summary.anchors_unchecked, rotations.len() - 3);
}

#[test]
fn rotated_files_may_be_named_in_any_order() {
    let mut paths: Vec<PathBuf> =
        ["a.log", "a.log.10", "a.log.2", "a.log.1"].into_iter().map(PathBuf::from).collect();
    chain_order(&mut paths);
    assert_eq!(paths, ["a.log.10", "a.log.2", "a.log.1", "a.log"].map(PathBuf::from));
}

// ---- tampering ----

/// Ten records in one file; `tamper` changes its lines; verify must break at `line` with
/// `kind` (anchored at the true head when `anchored`).
#[track_caller]
fn check_tamper(
    anchored: bool,
    tamper: impl FnOnce(&mut Vec<Vec<u8>>),
    line: u64,
    kind: BreakKind,
) {
    let (_dir, file, head) = write((0..10).map(|i| auth_ok(&format!("user {i}"))).collect());
    assert!(verify(&[&file], &[head]).is_ok(), "untouched chain verifies");
    let mut lines = lines(&file);
    tamper(&mut lines);
    let text: Vec<u8> = lines.iter().flat_map(|l| l.iter().copied().chain([b'\n'])).collect();
    std::fs::write(&file, text).unwrap();
    let anchors = if anchored { vec![head] } else { Vec::new() };
    match verify(&[&file], &anchors) {
        Err(VerifyError::Broken(b)) => {
            assert_eq!(b, Break { file: file.clone(), line, kind }, "{b}")
        }
        other => panic!("expected a break at line {line} ({kind}), got {other:?}"),
    }
}

fn edit_byte(lines: &mut [Vec<u8>], index: usize, from: u8, to: u8) {
    let at = lines[index].iter().position(|&b| b == from).expect("byte to edit");
    lines[index][at] = to;
}

#[test]
fn edited_byte_is_found_at_its_line() {
    // "user 3" becomes "uses 3": still valid JSON, only the hash tells.
    check_tamper(false, |l| edit_byte(l, 3, b'r', b's'), 4, BreakKind::Edited);
    check_tamper(false, |l| edit_byte(l, 0, b'r', b's'), 1, BreakKind::Edited);
}

#[test]
fn edit_that_breaks_the_json_is_malformed_at_its_line() {
    check_tamper(false, |l| edit_byte(l, 5, b'}', b' '), 6, BreakKind::Malformed);
}

#[test]
fn edit_of_a_prev_field_is_found_at_its_line() {
    check_tamper(
        false,
        |l| {
            let text = String::from_utf8(l[6].clone()).unwrap();
            let at = text.find("\"prev\":\"").unwrap() + 8;
            let c = if text.as_bytes()[at] == b'0' { b'1' } else { b'0' };
            l[6][at] = c;
        },
        7,
        BreakKind::Edited,
    );
}

#[test]
fn edit_of_the_last_record_is_caught_only_against_the_anchor() {
    check_tamper(true, |l| edit_byte(l, 9, b'r', b's'), 10, BreakKind::Edited);
}

#[test]
fn deleted_line_is_found_where_it_was() {
    check_tamper(false, |l| drop(l.remove(4)), 5, BreakKind::Deleted { missing: 1 });
    check_tamper(
        false,
        |l| {
            l.drain(2..5);
        },
        3,
        BreakKind::Deleted { missing: 3 },
    );
}

#[test]
fn swapped_lines_are_found_at_the_first_of_them() {
    check_tamper(false, |l| l.swap(3, 4), 4, BreakKind::Reordered);
    check_tamper(false, |l| l.swap(0, 1), 1, BreakKind::Reordered);
    check_tamper(false, |l| l.swap(8, 9), 9, BreakKind::Reordered);
}

#[test]
fn inserted_line_is_found_at_its_line() {
    // A copy of an earlier record.
    check_tamper(false, |l| l.insert(5, l[2].clone()), 6, BreakKind::Inserted);
    // Free text.
    check_tamper(false, |l| l.insert(5, b"hello".to_vec()), 6, BreakKind::Inserted);
    // A forgery that links to the record before it, with the right number.
    check_tamper(
        false,
        |l| {
            let prev = sha256(&l[4]).to_hex();
            let forged = format!(
                r#"{{"seq":5,"ts":"2026-01-01T00:00:00.000Z","event":"unban","ip":"192.0.2.1","cause":"admin","prev":"{prev}"}}"#
            );
            l.insert(5, forged.into_bytes());
        },
        6,
        BreakKind::Inserted,
    );
}

#[test]
fn truncated_tail_is_caught_against_the_anchored_head() {
    check_tamper(true, |l| l.truncate(7), 8, BreakKind::Truncated { missing: 3 });
    check_tamper(true, |l| l.clear(), 1, BreakKind::Truncated { missing: 10 });
}

#[test]
fn truncated_tail_without_an_anchor_goes_unnoticed() {
    // What verify cannot prove: cutting whole records off the end leaves a valid chain.
    let (_dir, file, _) = write((0..10).map(|i| auth_ok(&format!("u{i}"))).collect());
    let mut kept = lines(&file);
    kept.truncate(6);
    let text: Vec<u8> = kept.iter().flat_map(|l| l.iter().copied().chain([b'\n'])).collect();
    std::fs::write(&file, text).unwrap();
    assert_eq!(verify(&[&file], &[]).unwrap().records, 6);
}

#[test]
fn torn_last_line_is_malformed() {
    let (_dir, file, head) = write((0..3).map(|i| auth_ok(&format!("u{i}"))).collect());
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() - 10]).unwrap();
    let err = verify(&[&file], &[head]).unwrap_err();
    assert!(
        matches!(&err, VerifyError::Broken(Break { line: 3, kind: BreakKind::Malformed, .. })),
        "{err}"
    );
}

#[test]
fn deleted_rotated_file_is_found_at_the_start_of_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), 600, 5, 1024);
    let log = open(&config);
    for i in 0..20 {
        log.record(auth_ok(&format!("u{i}")));
    }
    let head = log.close().unwrap();
    let files = chain_files(&config.file);
    assert!(files.len() >= 4);
    assert!(verify(&files, &[head]).is_ok());
    let mut without = files.clone();
    without.remove(1);
    let err = verify(&without, &[head]).unwrap_err();
    match err {
        VerifyError::Broken(b) => {
            assert_eq!((b.file, b.line), (files[2].clone(), 1));
            assert!(matches!(b.kind, BreakKind::Deleted { .. }), "{:?}", b.kind);
        }
        other => panic!("{other}"),
    }
}

#[test]
fn missing_file_is_an_io_error_not_a_break() {
    let err = verify(&[Path::new("/nonexistent/audit.log")], &[]).unwrap_err();
    assert!(matches!(err, VerifyError::Io { .. }), "{err}");
}

#[test]
fn chain_starting_at_seq_zero_must_link_to_genesis() {
    check_tamper(
        false,
        |l| {
            let text = String::from_utf8(l[0].clone()).unwrap();
            let forged = text.replace(&GENESIS.to_hex(), &sha256("x").to_hex());
            l[0] = forged.into_bytes();
        },
        1,
        BreakKind::Edited,
    );
}

// ---- the bounded queue ----

#[test]
fn full_queue_drops_into_one_dropped_record_without_stalling() {
    let dir = tempfile::tempdir().unwrap();
    // Every record after the first rotates; the first rotation holds the writer still.
    let config = config(dir.path(), 200, 64, 8);
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let (held_tx, held_rx) = mpsc::channel::<()>();
    let mut first = true;
    let log = AuditLog::open(&config, move |notice| {
        if matches!(notice, Notice::Rotated { .. }) && first {
            first = false;
            held_tx.send(()).unwrap();
            let _ = release_rx.recv_timeout(Duration::from_secs(10));
        }
    })
    .unwrap();
    log.record(auth_ok("first"));
    log.record(auth_ok("second"));
    held_rx.recv_timeout(Duration::from_secs(5)).expect("the writer reached the first rotation");

    // The writer is stuck: 8 records fit the queue, the other 1000 are counted, and no call
    // waits for the writer.
    let started = Instant::now();
    for i in 0..1008 {
        log.record(auth_ok(&format!("flood {i}")));
    }
    let took = started.elapsed();
    assert!(took < Duration::from_millis(500), "1008 records took {took:?} with a stuck writer");

    release_tx.send(()).unwrap();
    let head = log.close().unwrap();
    let files = chain_files(&config.file);
    let summary = verify(&files, &[head]).unwrap();
    assert_eq!(summary.dropped, 1000);
    assert_eq!(summary.records, 2 + 8 + 1);
    let last = lines(files.last().unwrap()).pop().unwrap();
    assert_eq!(json(&last)["event"], "dropped");
    assert_eq!(json(&last)["count"], 1000);
}

#[test]
fn records_after_close_are_lost_quietly() {
    let (_dir, file, head) = write(vec![auth_ok("a")]);
    let log =
        open(&AuditConfig { file: file.clone(), max_file_bytes: 1 << 20, max_files: 1, queue: 4 });
    assert_eq!(log.close(), Some(head));
    log.record(auth_ok("late"));
    assert_eq!(log.close(), Some(head));
    assert_eq!(lines(&file).len(), 1);
}

// ---- refusals ----

fn minute(m: u64, s: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_040 + m * 60 + s)
}

#[test]
fn refusals_are_counted_per_address_per_minute() {
    let mut r = Refusals::default();
    for s in 0..50 {
        assert_eq!(r.add(ip(1), "banned", minute(0, s)), 0);
    }
    r.add(ip(2), "rate_limited", minute(0, 1));
    r.add(ip(2), "origin", minute(0, 2));
    assert_eq!(r.take(Some(minute(0, 59))), (Vec::new(), 0), "minute not over yet");
    r.add(ip(1), "banned", minute(1, 0));
    let (events, lost) = r.take(Some(minute(1, 30)));
    assert_eq!(lost, 0);
    let label = rfc3339_millis(minute(0, 0));
    assert_eq!(
        events,
        vec![
            Event::FirewallRefused {
                ip: Some(ip(1)),
                minute: label.clone(),
                count: 50,
                reasons: BTreeMap::from([("banned".into(), 50)]),
            },
            Event::FirewallRefused {
                ip: Some(ip(2)),
                minute: label,
                count: 2,
                reasons: BTreeMap::from([("origin".into(), 1), ("rate_limited".into(), 1)]),
            },
        ]
    );
    let (events, _) = r.take(None);
    assert_eq!(events.len(), 1, "close takes the unfinished minute too");
}

#[test]
fn refusals_from_too_many_addresses_are_counted_together() {
    let mut r = Refusals::default();
    let n = MAX_IPS_PER_MINUTE + 500;
    for i in 0..n {
        let addr: IpAddr = std::net::Ipv6Addr::from(i as u128).into();
        r.add(addr, "denied", minute(0, 0));
    }
    let (events, _) = r.take(None);
    assert_eq!(events.len(), MAX_IPS_PER_MINUTE + 1);
    assert!(matches!(events.last(), Some(Event::FirewallRefused { ip: None, count: 500, .. })));
}

#[test]
fn refusals_reach_the_file_at_close() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), 1 << 20, 2, 16);
    let log = open(&config);
    for _ in 0..1000 {
        log.refused(ip(7), "banned");
    }
    let head = log.close().unwrap();
    let lines = lines(&config.file);
    // A flood of refusals from one address in one minute is at most two records (the minute may
    // have turned during the loop).
    assert!(lines.len() <= 2, "{} records", lines.len());
    let total: u64 = lines.iter().map(|l| json(l)["count"].as_u64().unwrap()).sum();
    assert_eq!(total, 1000);
    assert_eq!(json(&lines[0])["event"], "firewall_refused");
    assert_eq!(json(&lines[0])["ip"], "192.0.2.7");
    assert!(verify(&[&config.file], &[head]).is_ok());
}

// ---- properties ----

fn any_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[a-z\n\r\"\\\\{}]{0,20}",
        Just("\u{2028}\u{0}\u{1b}[31m".to_owned())
    ]
}

fn any_event() -> impl Strategy<Value = Event> {
    let ip = any::<[u8; 4]>().prop_map(IpAddr::from);
    prop_oneof![
        (any::<u64>(), ip.clone(), any_text(), any::<Vec<u8>>(), any::<bool>()).prop_map(
            |(conn, ip, user_id, token, email)| Event::AuthOk {
                conn,
                endpoint: "secure".into(),
                ip,
                user_id,
                token: Fingerprint::of(&token),
                email: email.then(|| Fingerprint::of(&token)),
            }
        ),
        (ip.clone(), any_text()).prop_map(|(ip, reason)| Event::AuthFailed {
            conn: 1,
            endpoint: "secure".into(),
            ip,
            reason,
            token: None,
        }),
        (any_text(), any_text(), any::<Option<u16>>()).prop_map(|(session, user_id, code)| {
            Event::SessionEnd { session, conn: 2, user_id, by: "server".into(), close_code: code }
        }),
        (any_text(), any_text(), any::<u16>()).prop_map(|(method, path, status)| {
            Event::AdminCall { admin: None, method, path, status }
        }),
        (ip, any::<u64>()).prop_map(|(ip, secs)| Event::Ban { ip, secs, cause: "admin".into() }),
        (0u64..1_000_000).prop_map(|count| Event::Dropped { count }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn verify_accepts_any_sequence_of_events(
        events in prop::collection::vec(any_event(), 0..60),
        max_file_bytes in 300u64..3000,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), max_file_bytes, 1000, 1024);
        let log = open(&config);
        for e in &events {
            log.record(e.clone());
        }
        let head = log.close();
        let files = chain_files(&config.file);
        let summary = verify(&files, &head.into_iter().collect::<Vec<_>>()).unwrap();
        let dropped: u64 = events.iter().map(|e| match e { Event::Dropped { count } => *count, _ => 0 }).sum();
        prop_assert_eq!(summary, Summary {
            files: files.len(),
            records: events.len() as u64,
            first_seq: head.map(|_| 0),
            head,
            anchors_checked: usize::from(head.is_some()),
            anchors_unchecked: 0,
            dropped,
        });
        // Every user string comes back as it went in, on its own line.
        let all: Vec<Vec<u8>> = files.iter().flat_map(|f| lines(f)).collect();
        prop_assert_eq!(all.len(), events.len());
        for (line, event) in all.iter().zip(&events) {
            if let Event::AuthOk { user_id, .. } = event {
                prop_assert_eq!(&json(line)["user_id"], user_id.as_str());
            }
        }
    }

    #[test]
    fn tampering_is_found_at_the_line_it_touched(
        index in 1usize..11,
        how in 0u8..4,
        byte in any::<prop::sample::Index>(),
        value in any::<u8>(),
    ) {
        let (_dir, file, head) = write((0..12).map(|i| auth_ok(&format!("user {i}"))).collect());
        let mut lines = lines(&file);
        let allowed: &[fn(&BreakKind) -> bool] = match how {
            0 => {
                let at = byte.index(lines[index].len());
                prop_assume!(lines[index][at] != value);
                lines[index][at] = value;
                &[|k| matches!(k, BreakKind::Edited | BreakKind::Malformed)]
            }
            1 => {
                lines.remove(index);
                &[|k| matches!(k, BreakKind::Deleted { missing: 1 })]
            }
            2 => {
                lines.swap(index, index + 1);
                &[|k| matches!(k, BreakKind::Reordered)]
            }
            _ => {
                // A copy of this line or the next one is ambiguous (which of two equal lines
                // is the extra one?); see inserted_line_is_found_at_its_line for the others.
                let from = byte.index(lines.len());
                prop_assume!(from != index && from != index + 1);
                let copy = lines[from].clone();
                lines.insert(index, copy);
                &[|k| matches!(k, BreakKind::Inserted)]
            }
        };
        let text: Vec<u8> = lines.iter().flat_map(|l| l.iter().copied().chain([b'\n'])).collect();
        std::fs::write(&file, text).unwrap();
        match verify(&[&file], &[head]) {
            Err(VerifyError::Broken(b)) => {
                prop_assert_eq!(b.line, index as u64 + 1, "{}", b);
                prop_assert!(allowed[0](&b.kind), "{}", b);
            }
            other => prop_assert!(false, "expected a break at line {}, got {:?}", index + 1, other),
        }
    }
}
