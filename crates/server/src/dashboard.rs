//! The live traffic dashboard on the admin listener: one page whose assets are embedded in the
//! binary, and a Server-Sent Events feed that pushes a snapshot every second.
//!
//! - `GET /dashboard`, `/dashboard/app.js`, `/dashboard/app.css`, `/dashboard/favicon.svg`: static
//!   and public (they hold no data), served with a strict Content-Security-Policy.
//! - `GET /dashboard/feed`: `text/event-stream`, one `snapshot` event per second (see
//!   docs/monitoring.md). It sits behind the admin token like every other data route; the page
//!   reads it with `fetch()` so it can send `Authorization: Bearer`, which `EventSource` cannot.
//!
//! The page acts only through the existing admin API (`DELETE /sessions/{id}`, `POST /bans`,
//! `DELETE /bans/{ip}`); this module adds no way to change anything.

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Extension;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream};
use palisade_metrics::MetricsSnapshot;
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::MissedTickBehavior;

use crate::admin::AdminState;
use crate::sessions::SessionInfo;

/// How often the feed pushes a snapshot.
pub(crate) const FEED_INTERVAL: Duration = Duration::from_secs(1);

/// Sessions sent per snapshot at most (the newest); `sessions_total` gives the full count.
pub(crate) const FEED_MAX_SESSIONS: usize = 200;

/// Bans sent per snapshot at most (the longest remaining); `bans_total` gives the full count.
pub(crate) const FEED_MAX_BANS: usize = 200;

/// Channels sent per snapshot at most (the most subscribers); `channels_total` gives the count.
pub(crate) const FEED_MAX_CHANNELS: usize = 5;

/// Feeds open at the same time; one more is answered 503.
pub(crate) const FEED_MAX_CLIENTS: usize = 16;

/// The policy of the page: scripts, styles and fetches only from the admin listener itself, no
/// inline code, no plugins, no framing, no forms posted anywhere, and no HTML sinks at all
/// (`require-trusted-types-for`: the page inserts every value as text).
pub(crate) const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'; require-trusted-types-for 'script'; trusted-types 'none'";

const PAGE: &str = include_str!("../assets/dashboard.html");
const SCRIPT: &str = include_str!("../assets/dashboard.js");
const STYLE: &str = include_str!("../assets/dashboard.css");
const ICON: &str = include_str!("../assets/favicon.svg");

// The routes are built in `admin::router`: the page and its assets are public, the feed
// sits behind the admin token.

/// `GET /dashboard`.
pub(crate) async fn page() -> Response {
    asset("text/html; charset=utf-8", PAGE)
}

/// `GET /dashboard/app.js`.
pub(crate) async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

/// `GET /dashboard/app.css`.
pub(crate) async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

/// `GET /dashboard/favicon.svg`.
pub(crate) async fn icon() -> Response {
    asset("image/svg+xml", ICON)
}

/// The layer `GET /dashboard/feed` needs: the slots that bound the feeds open at once.
pub(crate) fn feed_slots() -> Extension<FeedSlots> {
    Extension(FeedSlots(Arc::new(Semaphore::new(FEED_MAX_CLIENTS))))
}

/// Counts open feeds so that a page left open in many tabs cannot pile up work.
#[derive(Clone)]
pub(crate) struct FeedSlots(Arc<Semaphore>);

/// One `snapshot` event of the feed.
#[derive(Serialize)]
struct Snapshot<'a> {
    /// Milliseconds since the Unix epoch when the snapshot was taken.
    time_ms: u64,
    /// Every counter, as `GET /stats` returns them.
    metrics: &'a MetricsSnapshot,
    /// The newest sessions, newest first.
    sessions: &'a [SessionInfo],
    sessions_total: usize,
    /// Active bans, longest remaining first.
    bans: &'a [BanEntry],
    bans_total: usize,
    /// The busiest channels: most subscribers first, with their publication counts.
    channels: &'a [crate::channels::hub::BusyChannel],
    /// Active channels on this node, also those not listed.
    channels_total: usize,
}

#[derive(Serialize)]
struct BanEntry {
    ip: IpAddr,
    remaining_secs: u64,
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    security_headers(headers);
    response
}

/// Headers every dashboard response carries.
fn security_headers(headers: &mut HeaderMap) {
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
        (HeaderName::from_static("cross-origin-opener-policy"), "same-origin"),
        (HeaderName::from_static("cross-origin-resource-policy"), "same-origin"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
}

pub(crate) async fn feed(
    State(state): State<AdminState>,
    Extension(slots): Extension<FeedSlots>,
) -> Response {
    let Ok(permit) = slots.0.try_acquire_owned() else {
        tracing::warn!(
            endpoint = "admin",
            kind = "capacity",
            "dashboard feed refused: too many open feeds"
        );
        return (StatusCode::SERVICE_UNAVAILABLE, "too many dashboard feeds open\n")
            .into_response();
    };
    let mut response = Sse::new(snapshots(state, permit)).into_response();
    let headers = response.headers_mut();
    security_headers(headers);
    // Tell buffering reverse proxies (nginx) to pass events through as they come.
    headers.insert(HeaderName::from_static("x-accel-buffering"), HeaderValue::from_static("no"));
    response
}

/// One event now and one per [`FEED_INTERVAL`], until the client goes away (the stream and the
/// permit are dropped) or the server shuts down (the stream ends, so graceful shutdown is not
/// held up by open dashboards).
fn snapshots(
    state: AdminState,
    permit: OwnedSemaphorePermit,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let mut tick = tokio::time::interval(FEED_INTERVAL);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    stream::unfold((state, tick, permit, 0u64), |(state, mut tick, permit, seq)| async move {
        tokio::select! {
            _ = state.shutdown.cancelled() => None,
            _ = tick.tick() => {
                let event = snapshot_event(&state, seq);
                Some((Ok(event), (state, tick, permit, seq + 1)))
            }
        }
    })
}

fn snapshot_event(state: &AdminState, seq: u64) -> Event {
    let metrics = state.metrics.snapshot();
    let mut sessions = state.sessions.list();
    let sessions_total = sessions.len();
    // `list` is oldest first; keep the newest few, newest first.
    sessions.reverse();
    sessions.truncate(FEED_MAX_SESSIONS);
    let mut bans: Vec<BanEntry> = state
        .firewall
        .bans(Instant::now())
        .into_iter()
        .map(|(ip, left)| BanEntry { ip, remaining_secs: left.as_secs() })
        .collect();
    let bans_total = bans.len();
    bans.sort_by(|a, b| b.remaining_secs.cmp(&a.remaining_secs).then(a.ip.cmp(&b.ip)));
    bans.truncate(FEED_MAX_BANS);
    let (channels, channels_total) = state.channels.busiest(FEED_MAX_CHANNELS);
    let snapshot = Snapshot {
        time_ms: unix_millis(),
        metrics: &metrics,
        sessions: &sessions,
        sessions_total,
        bans: &bans,
        bans_total,
        channels: &channels,
        channels_total,
    };
    let event = Event::default().event("snapshot").id(seq.to_string());
    match event.json_data(&snapshot) {
        Ok(event) => event,
        Err(e) => {
            // Serialising plain numbers and strings cannot fail; if it ever did, say so in-band.
            tracing::error!(endpoint = "admin", kind = "internal", error = %e, "dashboard snapshot not serialisable");
            Event::default().event("error").data("snapshot not serialisable")
        }
    }
}

fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;
