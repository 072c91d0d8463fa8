//! Traffic counters for a WebSocket server and their Prometheus exposition.
//!
//! [`Metrics`] is the shared registry: it is an `Arc` inside, so clone it freely across tasks.
//! Call its methods on rare events (a refused handshake, an auth outcome, an error, a close code),
//! render everything with [`Metrics::encode`] (OpenMetrics text as `prometheus-client` writes it,
//! ending in `# EOF`), or read plain numbers with [`Metrics::snapshot`] for a JSON API.
//!
//! [`EndpointMetrics`] is a handle whose per-endpoint counters are resolved once, when it is
//! created with [`Metrics::endpoint`]; take one per connection.
//! Its hot-path calls ([`EndpointMetrics::message_in`], [`EndpointMetrics::message_out`]) are two
//! relaxed atomic additions each: no lock, no allocation, no map lookup.
//!
//! Label values come from the caller, so each metric family keeps at most [`MAX_LABEL_SETS`]
//! distinct label sets (see [`Metrics::with_max_label_sets`]); any further set is counted under the
//! label set whose values are all [`OVERFLOW_LABEL`] (`"other"`).
//! Label values are cut to [`MAX_LABEL_LEN`] bytes, and quotes, backslashes and newlines in them
//! are escaped in the exposition.
//!
//! The crate deliberately does no I/O: it neither serves HTTP nor logs; serving `/metrics` belongs
//! to the admin crate. It keeps no histograms or per-connection series.
//!
//! ```
//! use palisade_metrics::Metrics;
//!
//! let metrics = Metrics::new();
//! let echo = metrics.endpoint("echo"); // Once per connection.
//! echo.connection_opened();
//! echo.message_in(5);
//! echo.message_out(22);
//! metrics.close_sent("echo", 1000);
//! echo.connection_closed();
//! metrics.handshake_refused("secure", "origin_not_allowed");
//!
//! let text = metrics.encode();
//! assert!(text.contains("palisade_bytes_sent_total{endpoint=\"echo\"} 22\n"));
//! assert!(text.contains(
//!     "palisade_handshakes_refused_total{endpoint=\"secure\",reason=\"origin_not_allowed\"} 1\n"
//! ));
//! assert!(text.ends_with("# EOF\n"));
//!
//! let snapshot = metrics.snapshot();
//! assert_eq!(snapshot.connections_open, 0);
//! assert_eq!(snapshot.connections_total, 1);
//! assert_eq!(snapshot.closes_by_code["1000"], 1);
//! ```

mod exposition;
mod histogram;
mod table;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use prometheus_client::registry::Registry;

use crate::table::{EndpointTable, LabeledCounters};

/// The default cap on distinct label sets per metric family.
pub const MAX_LABEL_SETS: usize = 256;

/// Label values longer than this many bytes are cut (at a character boundary).
pub const MAX_LABEL_LEN: usize = 64;

/// The label value that absorbs label sets beyond the cap.
pub const OVERFLOW_LABEL: &str = "other";

/// All of a server's traffic counters; cheap to clone (an `Arc` inside), `Send` and `Sync`.
#[derive(Clone, Debug)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl Metrics {
    /// Creates empty counters with the default label-set cap, [`MAX_LABEL_SETS`].
    pub fn new() -> Metrics {
        Metrics::with_max_label_sets(MAX_LABEL_SETS)
    }

    /// Creates empty counters keeping at most `max` distinct label sets per metric family
    /// (plus the overflow set, whose values are all [`OVERFLOW_LABEL`]).
    pub fn with_max_label_sets(max: usize) -> Metrics {
        let state = Arc::new(State::new(max));
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Arc::clone(&state)));
        Metrics { inner: Arc::new(Inner { registry, state }) }
    }

    /// Returns the counters of `endpoint` (e.g. `"echo"`, `"secure"`), creating them on first use.
    ///
    /// Takes a lock; call it once per connection and keep the handle.
    pub fn endpoint(&self, endpoint: &str) -> EndpointMetrics {
        EndpointMetrics { counters: self.inner.state.endpoints.get_or_insert(endpoint) }
    }

    /// Counts a handshake refused on `endpoint` for `reason` (e.g. `"ip_denied"`, `"rate_limited"`).
    pub fn handshake_refused(&self, endpoint: &str, reason: &str) {
        self.inner.state.handshakes_refused.inc(endpoint, reason);
    }

    /// Counts an authentication `outcome` (e.g. `"ok"`, `"expired"`, `"invalid"`, `"timeout"`).
    pub fn auth(&self, endpoint: &str, outcome: &str) {
        self.inner.state.auth.inc(endpoint, outcome);
    }

    /// Counts an error of `kind` (e.g. `"protocol"`, `"invalid_utf8"`, `"peer_vanished"`).
    pub fn error(&self, endpoint: &str, kind: &str) {
        self.inner.state.errors.inc(endpoint, kind);
    }

    /// Counts a close frame received from a client with `code`.
    pub fn close_received(&self, endpoint: &str, code: u16) {
        let mut buf = [0; 5];
        self.inner.state.close_codes_received.inc(endpoint, table::format_u16(code, &mut buf));
    }

    /// Counts a close frame sent with `code`.
    pub fn close_sent(&self, endpoint: &str, code: u16) {
        let mut buf = [0; 5];
        self.inner.state.close_codes.inc(endpoint, table::format_u16(code, &mut buf));
    }

    /// Sets the number of live sessions.
    pub fn set_sessions_active(&self, n: i64) {
        self.inner.state.sessions_active.store(n, Ordering::Relaxed);
    }

    /// Sets the number of active bans.
    pub fn set_bans_active(&self, n: i64) {
        self.inner.state.bans_active.store(n, Ordering::Relaxed);
    }

    /// Renders every metric as OpenMetrics text, ending with `# EOF\n`.
    ///
    /// Families appear in a fixed order and label sets sorted, so the output is deterministic.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail, and the collector only forwards writer errors.
        let encoded = prometheus_client::encoding::text::encode(&mut text, &self.inner.registry);
        debug_assert!(encoded.is_ok(), "encoding into a string failed");
        text
    }

    /// Returns plain numbers: totals over all endpoints plus per-endpoint and per-label breakdowns.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let state = &self.inner.state;
        let mut snapshot = MetricsSnapshot {
            sessions_active: state.sessions_active.load(Ordering::Relaxed),
            bans_active: state.bans_active.load(Ordering::Relaxed),
            handshakes_refused_total: state.handshakes_refused.total(),
            errors_total: state.errors.total(),
            handshakes_refused_by_reason: state.handshakes_refused.by_value(),
            auth_by_outcome: state.auth.by_value(),
            errors_by_kind: state.errors.by_value(),
            closes_by_code: state.close_codes.by_value(),
            closes_received_by_code: state.close_codes_received.by_value(),
            ..MetricsSnapshot::default()
        };
        for (name, counters) in state.endpoints.entries() {
            let endpoint = counters.snapshot();
            snapshot.connections_open += endpoint.connections_open;
            snapshot.connections_total += endpoint.connections_total;
            snapshot.messages_in_total += endpoint.messages_in_total;
            snapshot.messages_out_total += endpoint.messages_out_total;
            snapshot.bytes_in_total += endpoint.bytes_in_total;
            snapshot.bytes_out_total += endpoint.bytes_out_total;
            snapshot.endpoints.insert(name, endpoint);
        }
        snapshot
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

/// The counters of one endpoint, resolved once; cheap to clone, `Send` and `Sync`.
#[derive(Clone, Debug)]
pub struct EndpointMetrics {
    counters: Arc<EndpointCounters>,
}

impl EndpointMetrics {
    /// Counts a connection that completed its handshake: open gauge +1, total +1.
    pub fn connection_opened(&self) {
        self.counters.open.fetch_add(1, Ordering::Relaxed);
        self.counters.total.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a connection that ended: open gauge -1.
    pub fn connection_closed(&self) {
        self.counters.open.fetch_sub(1, Ordering::Relaxed);
    }

    /// Counts one received message of `bytes` payload bytes.
    #[inline]
    pub fn message_in(&self, bytes: usize) {
        self.counters.messages_in.fetch_add(1, Ordering::Relaxed);
        self.counters.bytes_in.fetch_add(to_u64(bytes), Ordering::Relaxed);
    }

    /// Counts one sent message of `bytes` payload bytes.
    #[inline]
    pub fn message_out(&self, bytes: usize) {
        self.messages_out(1, bytes);
    }

    /// Counts `count` sent messages of `bytes` payload bytes in all (one write of a batch).
    #[inline]
    pub fn messages_out(&self, count: usize, bytes: usize) {
        self.counters.messages_out.fetch_add(to_u64(count), Ordering::Relaxed);
        self.counters.bytes_out.fetch_add(to_u64(bytes), Ordering::Relaxed);
    }

    /// Records how long the server took to handle one message (histogram, lock-free).
    #[inline]
    pub fn message_handled(&self, elapsed: std::time::Duration) {
        self.counters.handling.observe(elapsed);
    }
}

/// Plain numbers for a JSON API or a dashboard; totals are summed over endpoints.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct MetricsSnapshot {
    /// Connections open now.
    pub connections_open: i64,
    /// Connections accepted since start.
    pub connections_total: u64,
    /// Messages received since start.
    pub messages_in_total: u64,
    /// Messages sent since start.
    pub messages_out_total: u64,
    /// Payload bytes received since start.
    pub bytes_in_total: u64,
    /// Payload bytes sent since start.
    pub bytes_out_total: u64,
    /// Connection errors since start (all kinds).
    pub errors_total: u64,
    /// Authenticated sessions now.
    pub sessions_active: i64,
    /// Addresses banned now.
    pub bans_active: i64,
    /// Handshakes refused since start (all reasons).
    pub handshakes_refused_total: u64,
    /// Traffic per endpoint name.
    pub endpoints: BTreeMap<String, EndpointSnapshot>,
    /// Errors by kind, summed over endpoints.
    pub errors_by_kind: BTreeMap<String, u64>,
    /// Refused handshakes by reason, summed over endpoints.
    pub handshakes_refused_by_reason: BTreeMap<String, u64>,
    /// Close frames sent by code (as text, so the overflow value fits), summed over endpoints.
    pub closes_by_code: BTreeMap<String, u64>,
    /// Close frames received from clients by code, summed over endpoints.
    pub closes_received_by_code: BTreeMap<String, u64>,
    /// Authentication outcomes, summed over endpoints.
    pub auth_by_outcome: BTreeMap<String, u64>,
}

/// The traffic of one endpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct EndpointSnapshot {
    /// Connections open now.
    pub connections_open: i64,
    /// Connections accepted since start.
    pub connections_total: u64,
    /// Messages received since start.
    pub messages_in_total: u64,
    /// Messages sent since start.
    pub messages_out_total: u64,
    /// Payload bytes received since start.
    pub bytes_in_total: u64,
    /// Payload bytes sent since start.
    pub bytes_out_total: u64,
    /// Messages whose handling time was recorded.
    pub messages_handled_total: u64,
}

#[derive(Debug)]
struct Inner {
    /// Holds one collector: `state`, which renders every family.
    registry: Registry,
    state: Arc<State>,
}

/// Every counter; also the `prometheus-client` collector (see `exposition`).
#[derive(Debug)]
struct State {
    endpoints: EndpointTable,
    handshakes_refused: LabeledCounters,
    auth: LabeledCounters,
    errors: LabeledCounters,
    close_codes: LabeledCounters,
    close_codes_received: LabeledCounters,
    sessions_active: AtomicI64,
    bans_active: AtomicI64,
}

impl State {
    fn new(max_label_sets: usize) -> State {
        State {
            endpoints: EndpointTable::new(max_label_sets),
            handshakes_refused: LabeledCounters::new(max_label_sets),
            auth: LabeledCounters::new(max_label_sets),
            errors: LabeledCounters::new(max_label_sets),
            close_codes: LabeledCounters::new(max_label_sets),
            close_codes_received: LabeledCounters::new(max_label_sets),
            sessions_active: AtomicI64::new(0),
            bans_active: AtomicI64::new(0),
        }
    }
}

/// The counters behind one endpoint label.
#[derive(Debug, Default)]
struct EndpointCounters {
    open: AtomicI64,
    total: AtomicU64,
    messages_in: AtomicU64,
    messages_out: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    handling: histogram::Histogram,
}

impl EndpointCounters {
    fn snapshot(&self) -> EndpointSnapshot {
        EndpointSnapshot {
            connections_open: self.open.load(Ordering::Relaxed),
            connections_total: self.total.load(Ordering::Relaxed),
            messages_in_total: self.messages_in.load(Ordering::Relaxed),
            messages_out_total: self.messages_out.load(Ordering::Relaxed),
            bytes_in_total: self.bytes_in.load(Ordering::Relaxed),
            bytes_out_total: self.bytes_out.load(Ordering::Relaxed),
            messages_handled_total: self.handling.count(),
        }
    }
}

/// Widens a byte count; `usize` is at most 64 bits on every target Rust supports.
#[inline]
fn to_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests;
