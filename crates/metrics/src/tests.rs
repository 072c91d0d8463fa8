//! Unit tests: exposition snapshot, snapshot numbers, concurrency, cardinality cap.

use std::collections::BTreeMap;
use std::thread;

use expect_test::{Expect, expect};

use super::*;

/// A known sequence of calls on two endpoints.
fn known_traffic() -> Metrics {
    let metrics = Metrics::new();
    let echo = metrics.endpoint("echo");
    let secure = metrics.endpoint("secure");
    echo.connection_opened();
    echo.connection_opened();
    echo.message_in(5);
    echo.message_out(22);
    echo.message_in(3);
    echo.message_out(20);
    echo.message_handled(std::time::Duration::from_micros(30));
    echo.message_handled(std::time::Duration::from_millis(2));
    echo.connection_closed();
    metrics.close_received("echo", 1000);
    metrics.close_sent("echo", 1000);
    secure.connection_opened();
    metrics.auth("secure", "ok");
    metrics.auth("secure", "expired");
    metrics.auth("secure", "ok");
    secure.message_in(100);
    metrics.error("secure", "invalid_utf8");
    metrics.close_sent("secure", 1007);
    metrics.close_sent("secure", 1008);
    secure.connection_closed();
    metrics.handshake_refused("echo", "origin_not_allowed");
    metrics.handshake_refused("secure", "rate_limited");
    metrics.handshake_refused("secure", "rate_limited");
    metrics.error("echo", "peer_vanished");
    metrics.set_sessions_active(3);
    metrics.set_bans_active(1);
    metrics
}

#[track_caller]
fn check_exposition(metrics: &Metrics, expected: Expect) {
    expected.assert_eq(&metrics.encode());
}

#[test]
fn exposition_of_known_traffic_is_exact() {
    check_exposition(
        &known_traffic(),
        expect![[r##"
            # HELP palisade_connections_open WebSocket connections currently open.
            # TYPE palisade_connections_open gauge
            palisade_connections_open{endpoint="echo"} 1
            palisade_connections_open{endpoint="secure"} 0
            # HELP palisade_connections WebSocket connections opened (handshake completed).
            # TYPE palisade_connections counter
            palisade_connections_total{endpoint="echo"} 2
            palisade_connections_total{endpoint="secure"} 1
            # HELP palisade_messages_received WebSocket messages received from clients.
            # TYPE palisade_messages_received counter
            palisade_messages_received_total{endpoint="echo"} 2
            palisade_messages_received_total{endpoint="secure"} 1
            # HELP palisade_messages_sent WebSocket messages sent to clients.
            # TYPE palisade_messages_sent counter
            palisade_messages_sent_total{endpoint="echo"} 2
            palisade_messages_sent_total{endpoint="secure"} 0
            # HELP palisade_bytes_received Payload bytes received from clients.
            # TYPE palisade_bytes_received counter
            palisade_bytes_received_total{endpoint="echo"} 8
            palisade_bytes_received_total{endpoint="secure"} 100
            # HELP palisade_bytes_sent Payload bytes sent to clients.
            # TYPE palisade_bytes_sent counter
            palisade_bytes_sent_total{endpoint="echo"} 42
            palisade_bytes_sent_total{endpoint="secure"} 0
            # HELP palisade_message_handling_seconds Time the server took to handle one client message.
            # TYPE palisade_message_handling_seconds histogram
            palisade_message_handling_seconds_sum{endpoint="echo"} 0.00203
            palisade_message_handling_seconds_count{endpoint="echo"} 2
            palisade_message_handling_seconds_bucket{le="0.00001",endpoint="echo"} 0
            palisade_message_handling_seconds_bucket{le="0.000025",endpoint="echo"} 0
            palisade_message_handling_seconds_bucket{le="0.00005",endpoint="echo"} 1
            palisade_message_handling_seconds_bucket{le="0.0001",endpoint="echo"} 1
            palisade_message_handling_seconds_bucket{le="0.00025",endpoint="echo"} 1
            palisade_message_handling_seconds_bucket{le="0.0005",endpoint="echo"} 1
            palisade_message_handling_seconds_bucket{le="0.001",endpoint="echo"} 1
            palisade_message_handling_seconds_bucket{le="0.0025",endpoint="echo"} 2
            palisade_message_handling_seconds_bucket{le="0.005",endpoint="echo"} 2
            palisade_message_handling_seconds_bucket{le="0.01",endpoint="echo"} 2
            palisade_message_handling_seconds_bucket{le="0.025",endpoint="echo"} 2
            palisade_message_handling_seconds_bucket{le="0.05",endpoint="echo"} 2
            palisade_message_handling_seconds_bucket{le="0.1",endpoint="echo"} 2
            palisade_message_handling_seconds_bucket{le="1.0",endpoint="echo"} 2
            palisade_message_handling_seconds_bucket{le="+Inf",endpoint="echo"} 2
            palisade_message_handling_seconds_sum{endpoint="secure"} 0.0
            palisade_message_handling_seconds_count{endpoint="secure"} 0
            palisade_message_handling_seconds_bucket{le="0.00001",endpoint="secure"} 0
            palisade_message_handling_seconds_bucket{le="0.000025",endpoint="secure"} 0
            palisade_message_handling_seconds_bucket{le="0.00005",endpoint="secure"} 0
            palisade_message_handling_seconds_bucket{le="0.0001",endpoint="secure"} 0
            palisade_message_handling_seconds_bucket{le="0.00025",endpoint="secure"} 0
            palisade_message_handling_seconds_bucket{le="0.0005",endpoint="secure"} 0
            palisade_message_handling_seconds_bucket{le="0.001",endpoint="secure"} 0
            palisade_message_handling_seconds_bucket{le="0.0025",endpoint="secure"} 0
            palisade_message_handling_seconds_bucket{le="0.005",endpoint="secure"} 0
            palisade_message_handling_seconds_bucket{le="0.01",endpoint="secure"} 0
            palisade_message_handling_seconds_bucket{le="0.025",endpoint="secure"} 0
            palisade_message_handling_seconds_bucket{le="0.05",endpoint="secure"} 0
            palisade_message_handling_seconds_bucket{le="0.1",endpoint="secure"} 0
            palisade_message_handling_seconds_bucket{le="1.0",endpoint="secure"} 0
            palisade_message_handling_seconds_bucket{le="+Inf",endpoint="secure"} 0
            # HELP palisade_handshakes_refused WebSocket handshakes refused, by reason.
            # TYPE palisade_handshakes_refused counter
            palisade_handshakes_refused_total{endpoint="echo",reason="origin_not_allowed"} 1
            palisade_handshakes_refused_total{endpoint="secure",reason="rate_limited"} 2
            # HELP palisade_auth Authentication attempts, by outcome.
            # TYPE palisade_auth counter
            palisade_auth_total{endpoint="secure",outcome="expired"} 1
            palisade_auth_total{endpoint="secure",outcome="ok"} 2
            # HELP palisade_errors Connection errors, by kind.
            # TYPE palisade_errors counter
            palisade_errors_total{endpoint="echo",kind="peer_vanished"} 1
            palisade_errors_total{endpoint="secure",kind="invalid_utf8"} 1
            # HELP palisade_close_codes Close frames sent, by close code.
            # TYPE palisade_close_codes counter
            palisade_close_codes_total{endpoint="echo",code="1000"} 1
            palisade_close_codes_total{endpoint="secure",code="1007"} 1
            palisade_close_codes_total{endpoint="secure",code="1008"} 1
            # HELP palisade_close_codes_received Close frames received from clients, by close code.
            # TYPE palisade_close_codes_received counter
            palisade_close_codes_received_total{endpoint="echo",code="1000"} 1
            # HELP palisade_sessions_active Live sessions.
            # TYPE palisade_sessions_active gauge
            palisade_sessions_active 3
            # HELP palisade_bans_active Active bans.
            # TYPE palisade_bans_active gauge
            palisade_bans_active 1
            # EOF
        "##]],
    );
}

#[test]
fn exposition_of_fresh_metrics_has_every_family_and_eof() {
    check_exposition(
        &Metrics::default(),
        expect![[r#"
            # HELP palisade_connections_open WebSocket connections currently open.
            # TYPE palisade_connections_open gauge
            # HELP palisade_connections WebSocket connections opened (handshake completed).
            # TYPE palisade_connections counter
            # HELP palisade_messages_received WebSocket messages received from clients.
            # TYPE palisade_messages_received counter
            # HELP palisade_messages_sent WebSocket messages sent to clients.
            # TYPE palisade_messages_sent counter
            # HELP palisade_bytes_received Payload bytes received from clients.
            # TYPE palisade_bytes_received counter
            # HELP palisade_bytes_sent Payload bytes sent to clients.
            # TYPE palisade_bytes_sent counter
            # HELP palisade_message_handling_seconds Time the server took to handle one client message.
            # TYPE palisade_message_handling_seconds histogram
            # HELP palisade_handshakes_refused WebSocket handshakes refused, by reason.
            # TYPE palisade_handshakes_refused counter
            # HELP palisade_auth Authentication attempts, by outcome.
            # TYPE palisade_auth counter
            # HELP palisade_errors Connection errors, by kind.
            # TYPE palisade_errors counter
            # HELP palisade_close_codes Close frames sent, by close code.
            # TYPE palisade_close_codes counter
            # HELP palisade_close_codes_received Close frames received from clients, by close code.
            # TYPE palisade_close_codes_received counter
            # HELP palisade_sessions_active Live sessions.
            # TYPE palisade_sessions_active gauge
            palisade_sessions_active 0
            # HELP palisade_bans_active Active bans.
            # TYPE palisade_bans_active gauge
            palisade_bans_active 0
            # EOF
        "#]],
    );
}

#[test]
fn label_values_are_escaped_and_clipped() {
    let metrics = Metrics::new();
    metrics.error("a\"b\\c\nd", "kind");
    let long = "é".repeat(40); // 80 bytes; clipped to 64 at a character boundary.
    metrics.endpoint(&long).connection_opened();
    let text = metrics.encode();
    assert!(
        text.contains("palisade_errors_total{endpoint=\"a\\\"b\\\\c\\nd\",kind=\"kind\"} 1\n"),
        "{text}"
    );
    let clipped = "é".repeat(32);
    assert!(text.contains(&format!("palisade_connections_total{{endpoint=\"{clipped}\"}} 1\n")));
    assert_eq!(metrics.snapshot().endpoints.keys().collect::<Vec<_>>(), [&clipped]);
}

#[test]
fn snapshot_sums_endpoints_and_breaks_down_labels() {
    let snapshot = known_traffic().snapshot();
    let map = |pairs: &[(&str, u64)]| -> BTreeMap<String, u64> {
        pairs.iter().map(|&(k, v)| (k.to_owned(), v)).collect()
    };
    let expected = MetricsSnapshot {
        connections_open: 1,
        connections_total: 3,
        messages_in_total: 3,
        messages_out_total: 2,
        bytes_in_total: 108,
        bytes_out_total: 42,
        errors_total: 2,
        sessions_active: 3,
        bans_active: 1,
        handshakes_refused_total: 3,
        endpoints: BTreeMap::from([
            (
                "echo".to_owned(),
                EndpointSnapshot {
                    connections_open: 1,
                    connections_total: 2,
                    messages_in_total: 2,
                    messages_out_total: 2,
                    bytes_in_total: 8,
                    bytes_out_total: 42,
                    messages_handled_total: 2,
                },
            ),
            (
                "secure".to_owned(),
                EndpointSnapshot {
                    connections_open: 0,
                    connections_total: 1,
                    messages_in_total: 1,
                    messages_out_total: 0,
                    bytes_in_total: 100,
                    bytes_out_total: 0,
                    messages_handled_total: 0,
                },
            ),
        ]),
        errors_by_kind: map(&[("invalid_utf8", 1), ("peer_vanished", 1)]),
        handshakes_refused_by_reason: map(&[("origin_not_allowed", 1), ("rate_limited", 2)]),
        closes_by_code: map(&[("1000", 1), ("1007", 1), ("1008", 1)]),
        closes_received_by_code: map(&[("1000", 1)]),
        auth_by_outcome: map(&[("expired", 1), ("ok", 2)]),
    };
    assert_eq!(snapshot, expected);
}

#[test]
fn snapshot_serializes_to_json() {
    let json = serde_json::to_value(known_traffic().snapshot()).unwrap();
    assert_eq!(json["bytes_in_total"], 108);
    assert_eq!(json["endpoints"]["echo"]["connections_open"], 1);
    assert_eq!(json["closes_by_code"]["1008"], 1);
}

#[test]
fn concurrent_increments_from_several_threads_sum_exactly() {
    const THREADS: u64 = 8;
    const PER_THREAD: u64 = 10_000;
    let metrics = Metrics::new();
    thread::scope(|scope| {
        for t in 0..THREADS {
            let metrics = metrics.clone();
            scope.spawn(move || {
                // Threads alternate between two endpoints, so several threads hit the same atomics.
                let endpoint = if t % 2 == 0 { "echo" } else { "secure" };
                let handle = metrics.endpoint(endpoint);
                handle.connection_opened();
                for _ in 0..PER_THREAD {
                    handle.message_in(3);
                    handle.message_out(5);
                }
                metrics.error(endpoint, "io");
                metrics.close_sent(endpoint, 1000);
                handle.connection_closed();
            });
        }
    });
    let snapshot = metrics.snapshot();
    assert_eq!(snapshot.connections_open, 0);
    assert_eq!(snapshot.connections_total, THREADS);
    assert_eq!(snapshot.messages_in_total, THREADS * PER_THREAD);
    assert_eq!(snapshot.messages_out_total, THREADS * PER_THREAD);
    assert_eq!(snapshot.bytes_in_total, 3 * THREADS * PER_THREAD);
    assert_eq!(snapshot.bytes_out_total, 5 * THREADS * PER_THREAD);
    assert_eq!(snapshot.endpoints["echo"].messages_in_total, THREADS / 2 * PER_THREAD);
    assert_eq!(snapshot.errors_by_kind["io"], THREADS);
    assert_eq!(snapshot.closes_by_code["1000"], THREADS);
}

#[test]
fn endpoints_beyond_the_cap_fold_into_other() {
    let metrics = Metrics::new();
    for i in 0..MAX_LABEL_SETS + 100 {
        metrics.endpoint(&format!("ep{i}")).message_in(1);
    }
    let snapshot = metrics.snapshot();
    assert_eq!(snapshot.endpoints.len(), MAX_LABEL_SETS + 1);
    assert_eq!(snapshot.endpoints[OVERFLOW_LABEL].messages_in_total, 100);
    assert_eq!(snapshot.messages_in_total, MAX_LABEL_SETS as u64 + 100);
    // Names admitted before the cap keep their own counters.
    metrics.endpoint("ep0").message_in(1);
    assert_eq!(metrics.snapshot().endpoints["ep0"].messages_in_total, 2);
}

#[test]
fn labeled_families_beyond_the_cap_fold_into_other() {
    let metrics = Metrics::new();
    for i in 0..MAX_LABEL_SETS + 10 {
        metrics.error("echo", &format!("kind{i}"));
        metrics.close_sent("echo", u16::try_from(i).unwrap());
    }
    metrics.error("echo", "kind0");
    let snapshot = metrics.snapshot();
    assert_eq!(snapshot.errors_by_kind.len(), MAX_LABEL_SETS + 1);
    assert_eq!(snapshot.errors_by_kind[OVERFLOW_LABEL], 10);
    assert_eq!(snapshot.errors_by_kind["kind0"], 2);
    assert_eq!(snapshot.errors_total, MAX_LABEL_SETS as u64 + 11);
    assert_eq!(snapshot.closes_by_code.len(), MAX_LABEL_SETS + 1);
    let text = metrics.encode();
    assert!(text.contains("palisade_errors_total{endpoint=\"other\",kind=\"other\"} 10\n"));
    let error_lines = text.lines().filter(|l| l.starts_with("palisade_errors_total{")).count();
    assert_eq!(error_lines, MAX_LABEL_SETS + 1);
}

#[test]
fn small_cap_applies_per_family() {
    let metrics = Metrics::with_max_label_sets(1);
    metrics.auth("secure", "ok");
    metrics.auth("secure", "invalid");
    metrics.handshake_refused("echo", "ip_denied");
    metrics.endpoint("echo").connection_opened();
    metrics.endpoint("secure").connection_opened();
    let snapshot = metrics.snapshot();
    assert_eq!(snapshot.auth_by_outcome, BTreeMap::from([("ok".into(), 1), ("other".into(), 1)]));
    assert_eq!(snapshot.handshakes_refused_by_reason, BTreeMap::from([("ip_denied".into(), 1)]));
    assert_eq!(snapshot.endpoints.keys().collect::<Vec<_>>(), ["echo", "other"]);
}

#[test]
fn metrics_and_handles_are_send_sync_and_clone_shares_state() {
    fn is_send_sync<T: Send + Sync + Clone + 'static>() {}
    is_send_sync::<Metrics>();
    is_send_sync::<EndpointMetrics>();
    let metrics = Metrics::new();
    metrics.clone().set_sessions_active(7);
    metrics.endpoint("echo").clone().message_out(4);
    let snapshot = metrics.snapshot();
    assert_eq!((snapshot.sessions_active, snapshot.bytes_out_total), (7, 4));
}

#[test]
fn close_codes_format_as_decimal() {
    for (code, text) in [(0, "0"), (7, "7"), (1000, "1000"), (4999, "4999"), (u16::MAX, "65535")] {
        let mut buf = [0; 5];
        assert_eq!(table::format_u16(code, &mut buf), text);
    }
}

#[test]
fn a_written_batch_counts_every_message_and_byte() {
    let metrics = Metrics::new();
    let echo = metrics.endpoint("echo");
    echo.messages_out(3, 30);
    echo.message_out(7);
    let snap = metrics.snapshot();
    assert_eq!(snap.messages_out_total, 4);
    assert_eq!(snap.bytes_out_total, 37);
}
