//! Running the browser client of docs/subprotocol.md in Node.js, whose standard `WebSocket`
//! (Node 22, or Node 20.10+ with `--experimental-websocket`) is the WHATWG API browsers have.

use std::process::Command;

use serde_json::Value;

/// Set to skip the Node.js test on a machine without a suitable `node`.
pub(crate) const SKIP_VAR: &str = "PALISADE_SKIP_NODE";

/// How to run node with a standard `WebSocket`.
pub(crate) struct Node {
    pub(crate) program: String,
    pub(crate) flags: Vec<String>,
}

/// Finds a `node` with a standard `WebSocket`. Without one the test fails, unless
/// `PALISADE_SKIP_NODE` is set, which skips it with a message.
pub(crate) fn find() -> Option<Node> {
    if std::env::var_os(SKIP_VAR).is_some() {
        eprintln!("SKIPPED: the browser-client test, because {SKIP_VAR} is set");
        return None;
    }
    let check = "process.exit(typeof WebSocket === 'function' ? 0 : 1)";
    for flags in [vec![], vec!["--experimental-websocket".to_owned()]] {
        let ok = Command::new("node")
            .args(&flags)
            .args(["-e", check])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return Some(Node { program: "node".into(), flags });
        }
    }
    panic!(
        "this test runs the browser client of docs/subprotocol.md in Node.js, which needs `node` \
         with a standard WebSocket (Node 22, or 20.10+ with --experimental-websocket); install it, \
         or set {SKIP_VAR}=1 to skip this test"
    );
}

/// The first ```js block of docs/subprotocol.md.
pub(crate) fn snippet() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/subprotocol.md");
    let doc = std::fs::read_to_string(path).expect("read docs/subprotocol.md");
    let start = doc.find("```js\n").expect("a ```js block in docs/subprotocol.md") + 6;
    let len = doc[start..].find("\n```").expect("the end of the ```js block");
    doc[start..start + len].to_owned()
}

/// The harness with the documented snippet in place.
pub(crate) fn script() -> String {
    let harness = include_str!("harness.mjs");
    assert!(harness.contains("// SNIPPET\n"), "the harness has a SNIPPET line");
    harness.replace("// SNIPPET\n", &(snippet() + "\n"))
}

/// Checks the harness's events: auth, expiring, refresh, expiring, a refused refresh closing
/// with `session_too_long`, a reconnect after the backoff, and data flowing in both sessions,
/// including after the first token's `exp`.
#[track_caller]
pub(crate) fn check_run(events: &[Value], first_exp: u64) {
    let shown = || events.iter().map(Value::to_string).collect::<Vec<_>>().join("\n");
    let kinds: Vec<String> = events
        .iter()
        .filter_map(|e| match e["event"].as_str() {
            Some("recv") => {
                let env = &e["envelope"];
                match env["type"].as_str() {
                    Some("error") => {
                        Some(format!("error:{}", env["reason"].as_str().unwrap_or("?")))
                    }
                    other => other.map(str::to_owned),
                }
            }
            Some("close") => {
                Some(format!("close:{}:{}", e["code"], e["reason"].as_str().unwrap_or("")))
            }
            Some("open_attempt") => Some("open".into()),
            Some("done") => Some("done".into()),
            _ => None,
        })
        .collect();
    let expected = [
        "open",
        "authenticated",
        "expiring",
        "refreshed",
        "expiring",
        "error:session_too_long",
        "close:1008:session too long",
        "open",
        "authenticated",
        "done",
    ];
    assert_eq!(kinds, expected, "events:\n{}", shown());
    let time_of = |pred: &dyn Fn(&Value) -> bool| -> f64 {
        events.iter().find(|e| pred(e)).and_then(|e| e["t"].as_f64()).expect("event time")
    };
    let closed = time_of(&|e| e["event"] == "close");
    let reopened =
        events.iter().filter(|e| e["event"] == "open_attempt").nth(1).and_then(|e| e["t"].as_f64());
    let backoff = reopened.expect("second open") - closed;
    assert!((0.45..5.0).contains(&backoff), "reconnected {backoff} s after the close");
    let data_after_exp = events
        .iter()
        .filter(|e| e["event"] == "data")
        .filter(|e| e["t"].as_f64().is_some_and(|t| t > first_exp as f64 && t < closed))
        .count();
    assert!(data_after_exp > 0, "no data after the first token's exp:\n{}", shown());
    let protocols =
        events.iter().find(|e| e["event"] == "open_attempt").map(|e| e["protocols"].clone());
    assert_eq!(protocols, Some(Value::from("palisade.v1")));
}
