//! Fan-out mode: channel publications delivered to many subscribers (`cargo xtask bench`, F1
//! and F10).
//!
//! `N` clients connect to the secure endpoint with the `palisade.v1` subprotocol
//! (docs/subprotocol.md), authenticate (`{"type":"auth","token":..}` → `authenticated`) and
//! subscribe to one channel (`{"type":"subscribe","channel":..,"id":1}` → `subscribed`),
//! spread round-robin over the given URLs (one URL per node). Once every subscription is
//! active, one task publishes `rate` publications per second for `duration` through the first
//! node's admin API (`POST /channels/{channel}/publish`, keep-alive HTTP/1.1 over
//! [`PUBLISH_LANES`] TCP connections taking turns, requests pipelined up to
//! [`MAX_OUTSTANDING`] per connection). Each publication's data is
//! `{"t":NS}`, its send time in nanoseconds since the UNIX epoch (server and load on the same
//! host).
//!
//! Every subscriber checks that offsets arrive strictly increasing by one from the offset of
//! its `subscribed` reply (a gap or a repeat is an error) and records the delivery latency
//! (receive time minus `t`). The run counts a publication accepted by the admin API once per
//! subscriber as expected; what did not arrive within `drain` after the last publication is
//! reported as missing, per URL, so a node that never got a publication shows as such.
//!
//! Prints `ready` (every subscription answered), `measure_start` (before the first
//! publication) and `measure_end` (every expected delivery arrived, or the drain ran out),
//! then the result line.

use std::cell::{Cell, RefCell};
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;

use crate::conn::{Conn, OPEN_TIMEOUT, Open, Pumped, closed_by_server};
use crate::frame::{Kind, Message, OpCode};
use crate::run::Event;
use crate::stats::Stats;

/// The subprotocol the subscribers speak.
pub const PROTOCOL: &str = "palisade.v1";
/// Admin requests sent and not yet answered, at most.
pub const MAX_OUTSTANDING: usize = 256;
/// How often an idle subscriber looks whether the run is over.
const POLL: Duration = Duration::from_millis(100);

/// Fan-out mode settings.
#[derive(Clone, Debug)]
pub struct FanoutConfig {
    /// One per node (the token is sent in-band, so `open.token` is `None`).
    pub opens: Vec<Open>,
    /// The URLs, as given, for the result line.
    pub urls: Vec<String>,
    pub token: String,
    pub admin: SocketAddr,
    pub admin_token: Option<String>,
    pub channel: String,
    pub sources: Vec<IpAddr>,
    pub subscribers: usize,
    /// Publications per second.
    pub rate: u32,
    pub duration: Duration,
    /// Longest wait for the last deliveries after the last publication.
    pub drain: Duration,
    pub connect_concurrency: usize,
}

/// The `ready` line: every subscription was answered (or failed).
#[derive(Debug, Serialize)]
pub struct FanoutReady {
    pub event: &'static str,
    pub subscribers: usize,
    pub errors: u64,
    pub secs: f64,
}

/// What one URL (node) got.
#[derive(Clone, Debug, Default, Serialize)]
pub struct NodeResult {
    pub url: String,
    pub subscribers: usize,
    pub expected: u64,
    pub delivered: u64,
    pub missing: u64,
}

/// The result line.
#[derive(Debug, Serialize)]
pub struct FanoutResult {
    pub event: &'static str,
    pub mode: &'static str,
    /// Subscriptions active when publishing started.
    pub subscribers: usize,
    pub subscribers_wanted: usize,
    pub rate: u32,
    /// Configured publishing time.
    pub secs: f64,
    /// From the first publication sent to the last one answered.
    pub publish_secs: f64,
    /// From `measure_start` to `measure_end`.
    pub window_secs: f64,
    /// Publications the admin API accepted (200).
    pub publications: u64,
    /// Admin requests refused or unanswered.
    pub publish_errors: u64,
    /// What the admin API said it queued (sum of each answer's `delivered`).
    pub server_delivered: u64,
    /// `publications × subscribers`.
    pub expected: u64,
    /// Publications received in order by a subscriber.
    pub delivered: u64,
    pub missing: u64,
    /// Offsets skipped within a subscriber's stream, and offsets seen again (or backwards).
    pub gaps: u64,
    pub duplicates: u64,
    /// Deliveries per second of the measured window.
    pub deliveries_per_sec: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub nodes: Vec<NodeResult>,
    /// Gaps, repeats, failed connections or subscriptions, unexpected messages, closes,
    /// refused publications: must be 0. Missing deliveries are counted in `missing` only.
    pub errors: u64,
    pub first_error: Option<String>,
}

/// Offsets of one subscription: each must be the previous one plus one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sequence {
    next: u64,
    pub delivered: u64,
    pub gaps: u64,
    pub duplicates: u64,
}

impl Sequence {
    /// After a `subscribed` reply at `offset` (0: nothing published yet).
    pub fn after(offset: u64) -> Sequence {
        Sequence { next: offset + 1, delivered: 0, gaps: 0, duplicates: 0 }
    }

    /// The offset expected next.
    pub fn next(&self) -> u64 {
        self.next
    }

    /// Takes the offset of a publication: an error for a gap (counting the offsets skipped;
    /// the publication itself counts as delivered) or a repeat (not delivered).
    pub fn observe(&mut self, offset: u64) -> Result<(), String> {
        if offset == self.next {
            self.next += 1;
            self.delivered += 1;
            Ok(())
        } else if offset > self.next {
            let skipped = offset - self.next;
            let expected = self.next;
            self.gaps += skipped;
            self.next = offset + 1;
            self.delivered += 1;
            Err(format!("gap: expected offset {expected}, got {offset} ({skipped} missing)"))
        } else {
            self.duplicates += 1;
            Err(format!("offset {offset} again (or backwards): expected {}", self.next))
        }
    }
}

/// The unsigned integer after `"key":` in `body` (first occurrence from `from`).
fn number_after(body: &[u8], key: &[u8], from: usize) -> Option<(u64, usize)> {
    let at = find(&body[from.min(body.len())..], key)? + from + key.len();
    let rest = &body[at..];
    let rest_start = rest.iter().position(|b| *b != b' ')?;
    let digits = rest[rest_start..].iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 19 {
        return None;
    }
    let mut n = 0u64;
    for b in &rest[rest_start..rest_start + digits] {
        n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some((n, at + rest_start + digits))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A `publication` envelope's offset and its data's `t` (send time, ns since the UNIX epoch),
/// read without a JSON parser: the server writes `{"type":"publication","channel":..,
/// "offset":N,"data":{"t":NS}}`. Anything else is an error naming what came.
pub fn parse_publication(body: &[u8]) -> Result<(u64, u64), String> {
    let unexpected = || format!("unexpected message: {}", preview(body));
    if find(body, b"\"type\":\"publication\"").is_none() {
        return Err(unexpected());
    }
    let (offset, end) = number_after(body, b"\"offset\":", 0).ok_or_else(unexpected)?;
    let data = find(&body[end..], b"\"data\":").map(|i| i + end).ok_or_else(unexpected)?;
    let (t, _) = number_after(body, b"\"t\":", data).ok_or_else(unexpected)?;
    Ok((offset, t))
}

fn preview(body: &[u8]) -> String {
    const MAX: usize = 160;
    let text = String::from_utf8_lossy(&body[..body.len().min(MAX)]);
    if body.len() > MAX { format!("{text}...") } else { text.into_owned() }
}

/// Nanoseconds since the UNIX epoch.
pub fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The publication request for send time `t`.
pub fn publish_request(
    host: &str,
    channel: &str,
    admin_token: Option<&str>,
    t: u64,
    out: &mut Vec<u8>,
) {
    use std::io::Write as _;
    let body = format!("{{\"t\":{t}}}");
    let _ = write!(out, "POST /channels/{channel}/publish HTTP/1.1\r\nHost: {host}\r\n");
    if let Some(token) = admin_token {
        let _ = write!(out, "Authorization: Bearer {token}\r\n");
    }
    let _ = write!(
        out,
        "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
}

/// An HTTP/1.1 response read by [`parse_response`].
#[derive(Debug, PartialEq, Eq)]
pub struct Response<'a> {
    pub status: u16,
    pub body: &'a [u8],
    /// Bytes of the buffer it took, head and body.
    pub used: usize,
}

/// One HTTP/1.1 response at the start of `buf`; `Ok(None)` while incomplete. Only
/// `Content-Length` bodies (what the admin API sends).
pub fn parse_response(buf: &[u8]) -> Result<Option<Response<'_>>, String> {
    let Some(end) = find(buf, b"\r\n\r\n") else {
        return if buf.len() > 64 * 1024 {
            Err("admin response head longer than 64 KiB".into())
        } else {
            Ok(None)
        };
    };
    let head = &buf[..end];
    let status_line = head.split(|b| *b == b'\r').next().unwrap_or_default();
    let status = std::str::from_utf8(status_line)
        .ok()
        .and_then(|l| l.strip_prefix("HTTP/1.1 ").or_else(|| l.strip_prefix("HTTP/1.0 ")))
        .and_then(|l| l.get(..3))
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| format!("malformed admin response: {}", preview(status_line)))?;
    let len = match crate::handshake::header(head, "content-length") {
        Some(v) => v.parse::<usize>().map_err(|_| format!("bad Content-Length {v:?}"))?,
        None if crate::handshake::header(head, "transfer-encoding").is_some() => {
            return Err("admin response with Transfer-Encoding: only Content-Length is read".into());
        }
        None => 0,
    };
    let total = end + 4 + len;
    if buf.len() < total {
        return Ok(None);
    }
    Ok(Some(Response { status, body: &buf[end + 4..total], used: total }))
}

/// Counts shared by the tasks (one thread).
#[derive(Debug, Default)]
struct Tally {
    stats: Stats,
    delivered: u64,
    gaps: u64,
    duplicates: u64,
    /// Per URL: active subscriptions and deliveries.
    subscribed: Vec<usize>,
    per_url: Vec<u64>,
}

type Shared = Rc<RefCell<Tally>>;

/// Opens, authenticates and subscribes; `Ok` with the `subscribed` offset.
async fn subscribe(
    cfg: &FanoutConfig,
    open: &Open,
    source: Option<IpAddr>,
    seed: u64,
) -> Result<(Conn, u64), String> {
    let mut conn = Conn::open(open, source, seed).await?;
    let wake = tokio::time::sleep(OPEN_TIMEOUT);
    tokio::pin!(wake);
    let auth = format!("{{\"type\":\"auth\",\"token\":{}}}", json_string(&cfg.token));
    conn.tx.frame(OpCode::Text, auth.as_bytes());
    conn.reply(wake.as_mut(), |kind, body| {
        if kind == Kind::Text && find(body, b"\"type\":\"authenticated\"").is_some() {
            Ok(())
        } else {
            Err(format!("authentication failed: {}", preview(body)))
        }
    })
    .await?;
    let sub =
        format!("{{\"type\":\"subscribe\",\"channel\":{},\"id\":1}}", json_string(&cfg.channel));
    conn.tx.frame(OpCode::Text, sub.as_bytes());
    let mut offset = 0;
    conn.reply(wake.as_mut(), |kind, body| {
        if kind == Kind::Text && find(body, b"\"type\":\"subscribed\"").is_some() {
            offset = number_after(body, b"\"offset\":", 0)
                .map(|(n, _)| n)
                .ok_or_else(|| format!("subscribed without an offset: {}", preview(body)))?;
            Ok(())
        } else {
            Err(format!("subscription refused: {}", preview(body)))
        }
    })
    .await?;
    Ok((conn, offset))
}

/// A JSON string literal (tokens and channel names are ASCII without quotes, but escape anyway).
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Reads publications until the run is over.
async fn receive(
    mut conn: Conn,
    offset: u64,
    url: usize,
    tally: Shared,
    stop: Rc<Cell<bool>>,
) -> Result<(), String> {
    let mut seq = Sequence::after(offset);
    let wake = tokio::time::sleep(POLL);
    tokio::pin!(wake);
    let outcome = loop {
        match conn.pump(wake.as_mut()).await {
            Ok(Pumped::Data) => {}
            Ok(Pumped::Wake) => {
                if stop.get() {
                    break Ok(());
                }
                wake.as_mut().reset(Instant::now() + POLL);
                continue;
            }
            Ok(Pumped::Eof) => {
                break Err("server ended the connection without a close frame".into());
            }
            Err(e) => break Err(e),
        }
        let now = unix_nanos();
        let before = seq.delivered;
        let mut t = tally.borrow_mut();
        let ended = loop {
            let body = match conn.rx.next_message(&mut conn.tx) {
                Ok(None) => break None,
                Ok(Some(Message::Data(Kind::Text, body))) => body,
                Ok(Some(Message::Data(Kind::Binary, body))) => {
                    break Some(format!("unexpected binary message ({} bytes)", body.len()));
                }
                Ok(Some(Message::Close(code))) => break Some(closed_by_server(code)),
                Err(e) => break Some(e),
            };
            match parse_publication(body) {
                Ok((offset, sent)) => {
                    if let Err(e) = seq.observe(offset) {
                        t.stats.error(e);
                    }
                    t.stats.record(Duration::from_nanos(now.saturating_sub(sent)));
                }
                // An `error` envelope comes before a close: counted, and the close follows.
                Err(e) => t.stats.error(e),
            }
        };
        let got = seq.delivered - before;
        t.delivered += got;
        t.per_url[url] += got;
        if let Some(e) = ended {
            break Err(e);
        }
    };
    {
        let mut t = tally.borrow_mut();
        t.gaps += seq.gaps;
        t.duplicates += seq.duplicates;
    }
    outcome?;
    conn.close(1000).await
}

/// What the publisher did.
#[derive(Debug, Default)]
struct Published {
    ok: u64,
    /// Refused (not 200) or never answered.
    errors: u64,
    server_delivered: u64,
    first_error: Option<String>,
    secs: f64,
}

impl Published {
    fn note(&mut self, e: String) {
        if self.first_error.is_none() {
            self.first_error = Some(e);
        }
    }
}

/// Admin connections the publications are spread over. The admin API answers the requests of
/// one HTTP/1.1 connection one after the other, and in cluster mode each waits for a Redis round
/// trip, so one connection would cap the publish rate at one per round trip.
pub const PUBLISH_LANES: u64 = 8;

/// Publishes `rate × duration` publications on schedule over [`PUBLISH_LANES`] connections.
async fn publish(cfg: &FanoutConfig) -> Published {
    let total = (f64::from(cfg.rate) * cfg.duration.as_secs_f64()).round() as u64;
    let lanes = futures_util::future::join_all(
        (0..PUBLISH_LANES).map(|lane| publish_lane(cfg, total, lane)),
    )
    .await;
    let mut out = Published::default();
    for lane in lanes {
        out.ok += lane.ok;
        out.errors += lane.errors;
        out.server_delivered += lane.server_delivered;
        out.secs = out.secs.max(lane.secs);
        if let Some(e) = lane.first_error {
            out.note(e);
        }
    }
    out
}

/// Publications `lane`, `lane + PUBLISH_LANES`, ... of `total`, each at its time in the
/// schedule (catching up when answers lag, with at most [`MAX_OUTSTANDING`] unanswered on this
/// connection), and reads the answers.
async fn publish_lane(cfg: &FanoutConfig, total_all: u64, lane: u64) -> Published {
    let mut out = Published::default();
    let total = total_all.saturating_sub(lane).div_ceil(PUBLISH_LANES);
    // The overall index of this lane's `k`-th publication.
    let index = |k: u64| lane + k * PUBLISH_LANES;
    let mut stream = match TcpStream::connect(cfg.admin).await {
        Ok(s) => s,
        Err(e) => {
            out.note(format!("admin {}: {e}", cfg.admin));
            out.errors = total;
            return out;
        }
    };
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.split();
    let host = cfg.admin.to_string();
    let interval = Duration::from_secs(1) / cfg.rate.max(1);
    let due = |k: u64| start_plus(interval, index(k));
    let start = Instant::now();
    let (mut sent, mut answered) = (0u64, 0u64);
    let mut req = Vec::with_capacity(512);
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut last_answer = start;
    let stall = tokio::time::sleep(Duration::from_secs(10));
    tokio::pin!(stall);
    while answered < total {
        let can_send = sent < total && sent - answered < MAX_OUTSTANDING as u64;
        tokio::select! {
            () = tokio::time::sleep_until(start + due(sent)), if can_send => {
                req.clear();
                // Everything due goes out in one write (the timer wheel ticks in ms).
                let now = Instant::now();
                while sent < total
                    && sent - answered < MAX_OUTSTANDING as u64
                    && start + due(sent) <= now
                {
                    let token = cfg.admin_token.as_deref();
                    publish_request(&host, &cfg.channel, token, unix_nanos(), &mut req);
                    sent += 1;
                }
                if let Err(e) = wr.write_all(&req).await {
                    out.note(format!("admin request: {e}"));
                    break;
                }
            }
            read = rd.read_buf(&mut buf) => {
                match read {
                    Ok(0) => {
                        out.note("the admin API closed the connection".into());
                        break;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        out.note(format!("admin response: {e}"));
                        break;
                    }
                }
                let mut pos = 0;
                let mut broken = false;
                while let Some(parsed) = match parse_response(&buf[pos..]) {
                    Ok(p) => p,
                    Err(e) => {
                        out.note(e);
                        broken = true;
                        None
                    }
                } {
                    let Response { status, body, used } = parsed;
                    answered += 1;
                    if status == 200 {
                        out.ok += 1;
                        if let Some((n, _)) = number_after(body, b"\"delivered\":", 0) {
                            out.server_delivered += n;
                        }
                    } else {
                        out.errors += 1;
                        let body = preview(body);
                        out.note(format!(
                            "POST /channels/{}/publish: {status} {}",
                            cfg.channel,
                            body.trim()
                        ));
                    }
                    pos += used;
                }
                buf.drain(..pos);
                last_answer = Instant::now();
                stall.as_mut().reset(last_answer + Duration::from_secs(10));
                if broken {
                    break;
                }
            }
            () = &mut stall => {
                out.note(format!("no admin answer for 10 s; {} unanswered", sent - answered));
                break;
            }
        }
    }
    out.errors += total - answered;
    out.secs = last_answer.duration_since(start).as_secs_f64();
    out
}

/// `interval × n`, saturating.
fn start_plus(interval: Duration, n: u64) -> Duration {
    interval.saturating_mul(u32::try_from(n).unwrap_or(u32::MAX))
}

/// Runs the mode; `event` gets the `ready`, `measure_start` and `measure_end` lines.
pub async fn fanout(
    cfg: FanoutConfig,
    mut ready: impl FnMut(FanoutReady),
    mut event: impl FnMut(Event),
) -> FanoutResult {
    let started = Instant::now();
    let cfg = Rc::new(cfg);
    let urls = cfg.opens.len().max(1);
    let tally: Shared = Rc::new(RefCell::new(Tally {
        subscribed: vec![0; urls],
        per_url: vec![0; urls],
        ..Tally::default()
    }));
    let stop = Rc::new(Cell::new(false));
    let permits = Arc::new(Semaphore::new(cfg.connect_concurrency.max(1)));
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<bool>();
    let mut tasks = Vec::with_capacity(cfg.subscribers);
    for i in 0..cfg.subscribers {
        let (cfg, tally, stop, permits, done) =
            (cfg.clone(), tally.clone(), stop.clone(), permits.clone(), done_tx.clone());
        tasks.push(tokio::task::spawn_local(async move {
            let url = i % urls;
            let source = (!cfg.sources.is_empty()).then(|| cfg.sources[i % cfg.sources.len()]);
            let permit = permits.acquire_owned().await;
            let opened = subscribe(&cfg, &cfg.opens[url], source, rand::random()).await;
            drop(permit);
            let (conn, offset) = match opened {
                Ok(x) => x,
                Err(e) => {
                    tally.borrow_mut().stats.error(format!("subscriber {i}: {e}"));
                    let _ = done.send(false);
                    return;
                }
            };
            tally.borrow_mut().subscribed[url] += 1;
            let _ = done.send(true);
            drop(done);
            if let Err(e) = receive(conn, offset, url, tally.clone(), stop).await {
                tally.borrow_mut().stats.error(format!("subscriber {i}: {e}"));
            }
        }));
    }
    drop(done_tx);
    let mut subscribed = 0;
    while let Some(ok) = done_rx.recv().await {
        subscribed += usize::from(ok);
    }
    ready(FanoutReady {
        event: "ready",
        subscribers: subscribed,
        errors: tally.borrow().stats.errors,
        secs: started.elapsed().as_secs_f64(),
    });

    event(Event { event: "measure_start" });
    let window = Instant::now();
    let published = if subscribed > 0 {
        publish(&cfg).await
    } else {
        let mut none = Published::default();
        none.note("no subscription is active".into());
        none
    };
    // Wait for the last deliveries, or the drain.
    let expected = published.ok * subscribed as u64;
    let drain_end = Instant::now() + cfg.drain;
    while tally.borrow().delivered < expected && Instant::now() < drain_end {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let window_secs = window.elapsed().as_secs_f64();
    event(Event { event: "measure_end" });
    stop.set(true);
    for task in tasks {
        if let Err(e) = task.await {
            tally.borrow_mut().stats.error(format!("task failed: {e}"));
        }
    }

    let mut t = tally.borrow_mut();
    if published.errors > 0 {
        t.stats.errors += published.errors;
        if t.stats.first_error.is_none() {
            t.stats.first_error.clone_from(&published.first_error);
        }
    }
    let nodes: Vec<NodeResult> = (0..urls)
        .map(|u| {
            let expected = published.ok * t.subscribed[u] as u64;
            NodeResult {
                url: cfg.urls.get(u).cloned().unwrap_or_default(),
                subscribers: t.subscribed[u],
                expected,
                delivered: t.per_url[u],
                missing: expected.saturating_sub(t.per_url[u]),
            }
        })
        .collect();
    let (p50_us, p99_us, p999_us, max_us) = t.stats.percentiles();
    FanoutResult {
        event: "result",
        mode: "fanout",
        subscribers: subscribed,
        subscribers_wanted: cfg.subscribers,
        rate: cfg.rate,
        secs: cfg.duration.as_secs_f64(),
        publish_secs: published.secs,
        window_secs,
        publications: published.ok,
        publish_errors: published.errors,
        server_delivered: published.server_delivered,
        expected,
        delivered: t.delivered,
        missing: expected.saturating_sub(t.delivered),
        gaps: t.gaps,
        duplicates: t.duplicates,
        deliveries_per_sec: if window_secs > 0.0 { t.delivered as f64 / window_secs } else { 0.0 },
        p50_us,
        p99_us,
        p999_us,
        max_us,
        nodes,
        errors: t.stats.errors,
        first_error: t.stats.first_error.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_must_follow_each_other() {
        let mut s = Sequence::after(0);
        assert_eq!(s.next(), 1);
        assert!(s.observe(1).is_ok() && s.observe(2).is_ok());
        let gap = s.observe(5).unwrap_err();
        assert!(gap.contains("expected offset 3, got 5 (2 missing)"), "{gap}");
        assert!(s.observe(6).is_ok());
        let again = s.observe(6).unwrap_err();
        assert!(again.contains("offset 6 again"), "{again}");
        assert!(s.observe(2).is_err());
        assert_eq!((s.delivered, s.gaps, s.duplicates, s.next()), (4, 2, 2, 7));
        let mut s = Sequence::after(41);
        assert!(s.observe(41).is_err());
        assert!(s.observe(42).is_ok());
    }

    #[test]
    fn publications_are_read_without_a_json_parser() {
        let body = br#"{"type":"publication","channel":"bench","offset":42,"data":{"t":1712345678901234567}}"#;
        assert_eq!(parse_publication(body), Ok((42, 1_712_345_678_901_234_567)));
        // Field order and spaces do not matter; `t` is read inside `data`.
        let body = br#"{"offset": 7, "data": {"t": 5}, "type":"publication","channel":"t"}"#;
        assert_eq!(parse_publication(body), Ok((7, 5)));
        for bad in [
            &br#"{"type":"error","reason":"slow_consumer","reconnect":"backoff"}"#[..],
            br#"{"type":"publication","channel":"bench","offset":1,"data":"x"}"#,
            br#"{"type":"publication","channel":"bench","data":{"t":1}}"#,
            br#"{"type":"publication","offset":-1,"data":{"t":1}}"#,
            br#"{"type":"publication","offset":99999999999999999999,"data":{"t":1}}"#,
        ] {
            let e = parse_publication(bad).unwrap_err();
            assert!(e.starts_with("unexpected message: {"), "{e}");
        }
    }

    #[test]
    fn publish_requests_and_pipelined_responses() {
        let mut out = Vec::new();
        publish_request("127.0.0.1:9", "bench", Some("tok"), 123, &mut out);
        publish_request("127.0.0.1:9", "bench", None, 4, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "POST /channels/bench/publish HTTP/1.1\r\nHost: 127.0.0.1:9\r\n\
             Authorization: Bearer tok\r\nContent-Type: application/json\r\n\
             Content-Length: 9\r\n\r\n{\"t\":123}\
             POST /channels/bench/publish HTTP/1.1\r\nHost: 127.0.0.1:9\r\n\
             Content-Type: application/json\r\nContent-Length: 7\r\n\r\n{\"t\":4}"
        );

        let one = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 45\r\n\r\n{\"channel\":\"bench\",\"offset\":1,\"delivered\":10}";
        let mut two = one.to_vec();
        two.extend_from_slice(b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\nHTTP/1.1 2");
        for cut in 0..one.len() {
            assert_eq!(parse_response(&two[..cut]), Ok(None), "cut {cut}");
        }
        let Response { status, body, used } = parse_response(&two).unwrap().unwrap();
        assert_eq!((status, used), (200, one.len()));
        assert_eq!(number_after(body, b"\"delivered\":", 0), Some((10, body.len() - 1)));
        let r = parse_response(&two[one.len()..]).unwrap().unwrap();
        assert_eq!(r, Response { status: 401, body: b"", used: 48 });
        assert_eq!(parse_response(&two[one.len() + 48..]), Ok(None));
        assert!(parse_response(b"SSH-2.0\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").is_err());
    }

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_string("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000a\"");
        assert!(unix_nanos() > 1_600_000_000_000_000_000);
    }
}
