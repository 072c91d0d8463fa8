//! The cluster's own metrics: Redis round-trip time and outage state, publish fan-out, events.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Upper bounds of the Redis round-trip histogram, in seconds.
const RTT_BUCKETS: [f64; 11] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];

pub(crate) struct ClusterMetrics {
    registry: Registry,
    pub(crate) redis_up: Gauge,
    pub(crate) outages: Counter,
    pub(crate) rtt: Histogram,
    pub(crate) pending_writes: Gauge,
    pub(crate) publishes: Counter,
    pub(crate) publish_sessions: Counter,
    pub(crate) publish_nodes: Counter,
    pub(crate) delivered_for_others: Counter,
    pub(crate) events_received: Counter,
    pub(crate) events_dropped: Counter,
}

impl ClusterMetrics {
    /// `redis`: also register the Redis series (not meaningful in memory).
    pub(crate) fn new(redis: bool) -> ClusterMetrics {
        let mut m = ClusterMetrics {
            registry: Registry::default(),
            redis_up: Gauge::default(),
            outages: Counter::default(),
            rtt: Histogram::new(RTT_BUCKETS),
            pending_writes: Gauge::default(),
            publishes: Counter::default(),
            publish_sessions: Counter::default(),
            publish_nodes: Counter::default(),
            delivered_for_others: Counter::default(),
            events_received: Counter::default(),
            events_dropped: Counter::default(),
        };
        let r = &mut m.registry;
        r.register(
            "palisade_cluster_publishes",
            "Messages published to users through this node (POST /publish)",
            m.publishes.clone(),
        );
        r.register(
            "palisade_cluster_publish_sessions",
            "Sessions, on all nodes, that received a message published through this node",
            m.publish_sessions.clone(),
        );
        r.register(
            "palisade_cluster_publish_nodes",
            "Nodes where at least one session received a message published through this node",
            m.publish_nodes.clone(),
        );
        if redis {
            r.register(
                "palisade_cluster_redis_up",
                "1 while Redis answers, 0 during an outage",
                m.redis_up.clone(),
            );
            r.register(
                "palisade_cluster_redis_outages",
                "Times Redis became unreachable",
                m.outages.clone(),
            );
            r.register(
                "palisade_cluster_redis_rtt_seconds",
                "Round-trip time of Redis commands",
                m.rtt.clone(),
            );
            r.register(
                "palisade_cluster_pending_writes",
                "Writes waiting to be sent to Redis",
                m.pending_writes.clone(),
            );
            r.register(
                "palisade_cluster_delivered_for_other_nodes",
                "Sessions of this node that received a message published through another node",
                m.delivered_for_others.clone(),
            );
            r.register(
                "palisade_cluster_events_received",
                "Events (bans, revocations, pushes) received from other nodes",
                m.events_received.clone(),
            );
            r.register(
                "palisade_cluster_events_dropped",
                "Events dropped because the server did not keep up",
                m.events_dropped.clone(),
            );
        }
        m
    }

    pub(crate) fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Counts one publish that reached `sessions` sessions on `nodes` nodes.
    pub(crate) fn published(&self, sessions: usize, nodes: usize) {
        self.publishes.inc();
        self.publish_sessions.inc_by(sessions as u64);
        self.publish_nodes.inc_by(nodes as u64);
    }
}
