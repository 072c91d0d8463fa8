//! Renders the counters as OpenMetrics families through a `prometheus-client` collector.

use std::fmt::{self, Write as _};
use std::sync::atomic::Ordering;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelValue, EncodeMetric, LabelValueEncoder, NoLabelSet,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use crate::table::LabeledCounters;
use crate::{EndpointCounters, State};

impl Collector for State {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        let endpoints = self.endpoints.entries();
        for spec in ENDPOINT_FAMILIES {
            let mut family =
                encoder.encode_descriptor(spec.name, spec.help, None, spec.metric_type)?;
            for (endpoint, counters) in &endpoints {
                let labels = [("endpoint", Escaped(endpoint))];
                (spec.value)(counters).encode(family.encode_family(&labels)?)?;
            }
        }

        let mut family = encoder.encode_descriptor(
            "palisade_message_handling_seconds",
            "Time the server took to handle one client message.",
            None,
            MetricType::Histogram,
        )?;
        for (endpoint, counters) in &endpoints {
            let labels = [("endpoint", Escaped(endpoint))];
            let (sum, count, buckets) = counters.handling.buckets();
            family
                .encode_family(&labels)?
                .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
        }

        let labeled: [(&str, &str, &str, &LabeledCounters); 5] = [
            (
                "palisade_handshakes_refused",
                "WebSocket handshakes refused, by reason.",
                "reason",
                &self.handshakes_refused,
            ),
            ("palisade_auth", "Authentication attempts, by outcome.", "outcome", &self.auth),
            ("palisade_errors", "Connection errors, by kind.", "kind", &self.errors),
            (
                "palisade_close_codes",
                "Close frames sent, by close code.",
                "code",
                &self.close_codes,
            ),
            (
                "palisade_close_codes_received",
                "Close frames received from clients, by close code.",
                "code",
                &self.close_codes_received,
            ),
        ];
        for (name, help, label, counters) in labeled {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            counters.visit(|endpoint, value, count| {
                let labels = [("endpoint", Escaped(endpoint)), (label, Escaped(value))];
                ConstCounter::new(count).encode(family.encode_family(&labels)?)
            })?;
        }

        let gauges = [
            ("palisade_sessions_active", "Live sessions.", &self.sessions_active),
            ("palisade_bans_active", "Active bans.", &self.bans_active),
        ];
        for (name, help, gauge) in gauges {
            let family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            ConstGauge::new(gauge.load(Ordering::Relaxed)).encode(family)?;
        }
        Ok(())
    }
}

/// The families labelled by endpoint alone, in exposition order.
const ENDPOINT_FAMILIES: [EndpointFamily; 6] = [
    EndpointFamily {
        name: "palisade_connections_open",
        help: "WebSocket connections currently open.",
        metric_type: MetricType::Gauge,
        value: |c| Value::Gauge(c.open.load(Ordering::Relaxed)),
    },
    EndpointFamily {
        name: "palisade_connections",
        help: "WebSocket connections opened (handshake completed).",
        metric_type: MetricType::Counter,
        value: |c| Value::Counter(c.total.load(Ordering::Relaxed)),
    },
    EndpointFamily {
        name: "palisade_messages_received",
        help: "WebSocket messages received from clients.",
        metric_type: MetricType::Counter,
        value: |c| Value::Counter(c.messages_in.load(Ordering::Relaxed)),
    },
    EndpointFamily {
        name: "palisade_messages_sent",
        help: "WebSocket messages sent to clients.",
        metric_type: MetricType::Counter,
        value: |c| Value::Counter(c.messages_out.load(Ordering::Relaxed)),
    },
    EndpointFamily {
        name: "palisade_bytes_received",
        help: "Payload bytes received from clients.",
        metric_type: MetricType::Counter,
        value: |c| Value::Counter(c.bytes_in.load(Ordering::Relaxed)),
    },
    EndpointFamily {
        name: "palisade_bytes_sent",
        help: "Payload bytes sent to clients.",
        metric_type: MetricType::Counter,
        value: |c| Value::Counter(c.bytes_out.load(Ordering::Relaxed)),
    },
];

/// A family with one sample per endpoint.
struct EndpointFamily {
    name: &'static str,
    help: &'static str,
    metric_type: MetricType,
    value: fn(&EndpointCounters) -> Value,
}

/// One sample of a per-endpoint family.
enum Value {
    Counter(u64),
    Gauge(i64),
}

impl Value {
    fn encode(self, encoder: prometheus_client::encoding::MetricEncoder<'_>) -> fmt::Result {
        match self {
            Value::Counter(v) => ConstCounter::new(v).encode(encoder),
            Value::Gauge(v) => ConstGauge::new(v).encode(encoder),
        }
    }
}

/// A label value written with OpenMetrics escapes (`\\`, `\"`, `\n`); prometheus-client 0.24
/// writes label values verbatim.
struct Escaped<'a>(&'a str);

impl EncodeLabelValue for Escaped<'_> {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some(at) = rest.find(['\\', '"', '\n']) {
            encoder.write_str(&rest[..at])?;
            encoder.write_str(match rest.as_bytes()[at] {
                b'\\' => "\\\\",
                b'"' => "\\\"",
                _ => "\\n",
            })?;
            rest = &rest[at + 1..];
        }
        encoder.write_str(rest)
    }
}
