//! Reconnect mode: `N` held clients that reconnect whenever the server closes them, the way
//! docs/clients.md says a client should (advice `backoff` for 1001 and 1012: wait a random
//! time in `[0, min(cap, base · 2^attempt))`, at least `retry_after_ms`, with `attempt` back
//! at 0 after every connection that was served), plus a steady stream of new short
//! connections. Meant to run while the server restarts or upgrades itself
//! (`cargo xtask bench --restart`): it counts every connection attempt, every attempt that
//! failed (refused, reset, a bad upgrade answer, a timeout), how often each client came back,
//! and when the reconnects landed (per 100 ms), so the peak reconnect rate can be compared
//! with the server's drain spread.
//!
//! Prints a `ready` line once every client has been served once; the run lasts `duration`
//! after that.

use std::cell::RefCell;
use std::net::IpAddr;
use std::rc::Rc;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use crate::conn::{Conn, Open, Pumped, closed_by_server};
use crate::frame::{Kind, Message, OpCode};

/// The message every connection sends once to prove it is served.
const HELLO: &[u8] = b"hello";
/// Width of the buckets the reconnect times are counted in.
pub const BUCKET: Duration = Duration::from_millis(100);

/// Reconnect mode settings.
#[derive(Clone, Debug)]
pub struct ReconnectConfig {
    pub open: Open,
    pub prefix: String,
    pub sources: Vec<IpAddr>,
    /// Held clients that reconnect on close.
    pub clients: usize,
    /// New short connections (connect, one echo, close) per second; 0: none.
    pub new_per_sec: u32,
    /// Seconds to run after the `ready` line.
    pub duration: Duration,
    /// Backoff base and cap (docs/clients.md: 500 ms and 30 s).
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    /// Clients being opened at once at the start.
    pub connect_concurrency: usize,
}

/// The `ready` line: every client has been served once.
#[derive(Debug, Serialize)]
pub struct ReconnectReady {
    pub event: &'static str,
    pub clients: usize,
    pub secs: f64,
}

/// The result line.
#[derive(Debug, Default, Serialize)]
pub struct ReconnectResult {
    pub event: &'static str,
    pub mode: &'static str,
    pub clients: usize,
    pub new_per_sec: u32,
    pub secs: f64,
    /// Connection attempts of every kind (first connections, reconnects, new connections).
    pub attempts: u64,
    /// Attempts refused or failed before the connection was served (connect error, bad
    /// upgrade answer, reset, timeout): the figure a deploy must keep at 0.
    pub failed: u64,
    /// Served connections that the server closed with a close frame (the drains).
    pub server_closes: u64,
    /// Close codes of those closes, e.g. `{"1001": 4000}`.
    pub close_codes: std::collections::BTreeMap<u16, u64>,
    /// Connections closed without a close frame (reset, EOF): should be 0.
    pub dropped: u64,
    /// Successful reconnects of the held clients.
    pub reconnects: u64,
    /// Held clients that reconnected at least once / the fewest and most times one did.
    pub clients_reconnected: usize,
    pub min_reconnects_per_client: u64,
    pub max_reconnects_per_client: u64,
    /// Held clients connected (and served) when the run ended.
    pub clients_connected_at_end: usize,
    /// New short connections served.
    pub new_connections: u64,
    /// The most reconnects within one 100 ms bucket and within one second (10 buckets).
    pub peak_reconnects_per_100ms: u64,
    pub peak_reconnects_per_sec: u64,
    /// Reconnects per second of the run, from the `ready` line.
    pub reconnects_per_sec: Vec<u64>,
    pub first_error: Option<String>,
}

/// Full-jitter backoff (docs/clients.md): a random delay in `[0, min(cap, base · 2^attempt))`,
/// never less than `retry_after`.
pub fn full_jitter(base: Duration, cap: Duration, attempt: u32, retry_after: Duration) -> Duration {
    let ceiling = base.saturating_mul(2u32.saturating_pow(attempt.min(16))).min(cap);
    let ms = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
    let jitter =
        if ms == 0 { Duration::ZERO } else { Duration::from_millis(rand::random_range(0..ms)) };
    jitter.max(retry_after)
}

#[derive(Debug, Default)]
struct Tally {
    attempts: u64,
    failed: u64,
    server_closes: u64,
    close_codes: std::collections::BTreeMap<u16, u64>,
    dropped: u64,
    new_connections: u64,
    /// Reconnects per [`BUCKET`] since the `ready` line (reconnects before it go to bucket 0).
    buckets: Vec<u64>,
    per_client: Vec<u64>,
    connected: Vec<bool>,
    served_once: usize,
    first_error: Option<String>,
    ready_at: Option<Instant>,
}

impl Tally {
    fn fail(&mut self, e: String) {
        self.failed += 1;
        if self.first_error.is_none() {
            eprintln!("palisade-load: first failed attempt: {e}");
            self.first_error = Some(e);
        }
    }
}

type Shared = Rc<RefCell<Tally>>;

/// Connects and proves the connection is served (one echo). Counted as an attempt; an error
/// is a failed attempt. `Ok(None)`: the server closed it cleanly before the echo (a drain).
async fn connect(cfg: &ReconnectConfig, tally: &Shared, seq: u64) -> Result<Option<Conn>, String> {
    tally.borrow_mut().attempts += 1;
    let source = cfg.sources.get(seq as usize % cfg.sources.len().max(1)).copied();
    let mut conn = Conn::open(&cfg.open, source, seq).await?;
    conn.tx.frame(OpCode::Text, HELLO);
    let wake = tokio::time::sleep(crate::conn::OPEN_TIMEOUT);
    tokio::pin!(wake);
    let mut want = cfg.prefix.as_bytes().to_vec();
    want.extend_from_slice(HELLO);
    match conn
        .reply(wake.as_mut(), |kind, body| {
            if kind == Kind::Text && body == want.as_slice() {
                Ok(())
            } else {
                Err(format!("unexpected reply {:?}", String::from_utf8_lossy(body)))
            }
        })
        .await
    {
        Ok(()) => Ok(Some(conn)),
        // A clean close before the echo: not a failed attempt, but not served either.
        Err(e) if e.starts_with("server closed the connection") => {
            let _ = conn.close(1000).await;
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// How a held connection ended.
enum Ended {
    /// The server's close frame, with its code.
    Closed(Option<u16>),
    /// The run is over.
    Stop,
}

/// Waits for the server to close `conn` (answering pings), or for the end of the run (which
/// moves once, at the `ready` line).
async fn hold(conn: &mut Conn, end: &RefCell<Instant>) -> Result<Ended, String> {
    let wake = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(wake);
    loop {
        while let Some(m) = conn.rx.next_message(&mut conn.tx)? {
            if let Message::Close(code) = m {
                return Ok(Ended::Closed(code));
            }
        }
        let now = Instant::now();
        let end = *end.borrow();
        if now >= end {
            return Ok(Ended::Stop);
        }
        wake.as_mut().reset(end.min(now + Duration::from_millis(500)));
        match conn.pump(wake.as_mut()).await? {
            Pumped::Data | Pumped::Wake => {}
            Pumped::Eof => return Err("server ended the connection without a close frame".into()),
        }
    }
}

async fn client(
    cfg: Rc<ReconnectConfig>,
    tally: Shared,
    i: usize,
    end: Rc<RefCell<Instant>>,
    mut opening: Option<tokio::sync::OwnedSemaphorePermit>,
) {
    let mut attempt = 0u32;
    let mut served_before = false;
    let mut seq = (i as u64) << 20;
    loop {
        if Instant::now() >= *end.borrow() {
            return;
        }
        seq += 1;
        let outcome = connect(&cfg, &tally, seq).await;
        // Only the first connections are bounded; reconnects are the point of the run.
        drop(opening.take());
        let conn = match outcome {
            Ok(Some(conn)) => conn,
            Ok(None) => {
                tokio::time::sleep(full_jitter(
                    cfg.backoff_base,
                    cfg.backoff_cap,
                    0,
                    Duration::ZERO,
                ))
                .await;
                continue;
            }
            Err(e) => {
                tally.borrow_mut().fail(format!("client {i}: {e}"));
                tokio::time::sleep(full_jitter(
                    cfg.backoff_base,
                    cfg.backoff_cap,
                    attempt,
                    Duration::ZERO,
                ))
                .await;
                attempt += 1;
                continue;
            }
        };
        attempt = 0;
        {
            let mut t = tally.borrow_mut();
            t.connected[i] = true;
            if served_before {
                t.per_client[i] += 1;
                let bucket = t.ready_at.map_or(0, |r| {
                    (Instant::now().saturating_duration_since(r).as_millis() / BUCKET.as_millis())
                        as usize
                });
                if t.buckets.len() <= bucket {
                    t.buckets.resize(bucket + 1, 0);
                }
                t.buckets[bucket] += 1;
            } else {
                t.served_once += 1;
            }
        }
        served_before = true;
        let mut conn = conn;
        let ended = hold(&mut conn, &end).await;
        tally.borrow_mut().connected[i] = false;
        match ended {
            Ok(Ended::Stop) => {
                // Connected at the end of the run.
                tally.borrow_mut().connected[i] = true;
                let _ = conn.close(1000).await;
                return;
            }
            Ok(Ended::Closed(code)) => {
                {
                    let mut t = tally.borrow_mut();
                    t.server_closes += 1;
                    *t.close_codes.entry(code.unwrap_or(1005)).or_default() += 1;
                }
                let _ = conn.close(1000).await;
                // 1001 and 1012 (and 1011, 1013) carry the advice `backoff`.
                match code {
                    Some(1001 | 1011 | 1012 | 1013) => {}
                    other => {
                        tally.borrow_mut().fail(format!("client {i}: {}", closed_by_server(other)));
                        return;
                    }
                }
            }
            Err(e) => {
                let mut t = tally.borrow_mut();
                t.dropped += 1;
                if t.first_error.is_none() {
                    t.first_error = Some(format!("client {i}: {e}"));
                }
            }
        }
        // Plain clients get no `retry_after_ms`: the closes are already spread by the server.
        tokio::time::sleep(full_jitter(cfg.backoff_base, cfg.backoff_cap, attempt, Duration::ZERO))
            .await;
    }
}

/// One new short connection: connect, one echo, close.
async fn fresh(cfg: Rc<ReconnectConfig>, tally: Shared, seq: u64) {
    match connect(&cfg, &tally, seq).await {
        Ok(Some(conn)) => {
            tally.borrow_mut().new_connections += 1;
            let _ = conn.close(1000).await;
        }
        Ok(None) => {}
        Err(e) => tally.borrow_mut().fail(format!("new connection: {e}")),
    }
}

/// Runs the mode; `ready` is called once every client has been served once.
pub async fn reconnect(
    cfg: ReconnectConfig,
    ready: impl FnOnce(ReconnectReady),
) -> ReconnectResult {
    let started = Instant::now();
    let cfg = Rc::new(cfg);
    let tally: Shared = Rc::new(RefCell::new(Tally {
        per_client: vec![0; cfg.clients],
        connected: vec![false; cfg.clients],
        ..Tally::default()
    }));
    // Far away until the `ready` line; then `duration` after it.
    let end = Rc::new(RefCell::new(started + Duration::from_secs(365 * 86_400)));
    let mut tasks = Vec::new();
    let opening = std::sync::Arc::new(tokio::sync::Semaphore::new(cfg.connect_concurrency.max(1)));
    for i in 0..cfg.clients {
        let (cfg, tally, end, opening) = (cfg.clone(), tally.clone(), end.clone(), opening.clone());
        tasks.push(tokio::task::spawn_local(async move {
            let permit = opening.acquire_owned().await.ok();
            client(cfg, tally, i, end, permit).await;
        }));
    }
    // Every client served once, or a failure budget spent.
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let t = tally.borrow();
        if t.served_once >= cfg.clients || started.elapsed() > Duration::from_secs(120) {
            break;
        }
    }
    let ready_at = Instant::now();
    tally.borrow_mut().ready_at = Some(ready_at);
    ready(ReconnectReady {
        event: "ready",
        clients: tally.borrow().served_once,
        secs: (ready_at - started).as_secs_f64(),
    });
    *end.borrow_mut() = ready_at + cfg.duration;
    let end_at = ready_at + cfg.duration;
    if cfg.new_per_sec > 0 {
        let every = Duration::from_secs(1) / cfg.new_per_sec;
        let mut tick = tokio::time::interval(every);
        let mut seq = 1u64 << 40;
        while Instant::now() < end_at {
            tick.tick().await;
            seq += 1;
            tasks.push(tokio::task::spawn_local(fresh(cfg.clone(), tally.clone(), seq)));
        }
    } else {
        tokio::time::sleep_until(end_at).await;
    }
    for t in tasks {
        let _ = t.await;
    }
    let t = tally.borrow();
    let per_sec: Vec<u64> = t.buckets.chunks(10).map(|c| c.iter().sum()).collect();
    let peak_sec = (0..t.buckets.len())
        .map(|i| t.buckets[i..(i + 10).min(t.buckets.len())].iter().sum::<u64>())
        .max()
        .unwrap_or(0);
    ReconnectResult {
        event: "result",
        mode: "reconnect",
        clients: cfg.clients,
        new_per_sec: cfg.new_per_sec,
        secs: cfg.duration.as_secs_f64(),
        attempts: t.attempts,
        failed: t.failed,
        server_closes: t.server_closes,
        close_codes: t.close_codes.clone(),
        dropped: t.dropped,
        reconnects: t.per_client.iter().sum(),
        clients_reconnected: t.per_client.iter().filter(|&&n| n > 0).count(),
        min_reconnects_per_client: t.per_client.iter().copied().min().unwrap_or(0),
        max_reconnects_per_client: t.per_client.iter().copied().max().unwrap_or(0),
        clients_connected_at_end: t.connected.iter().filter(|&&c| c).count(),
        new_connections: t.new_connections,
        peak_reconnects_per_100ms: t.buckets.iter().copied().max().unwrap_or(0),
        peak_reconnects_per_sec: peak_sec,
        reconnects_per_sec: per_sec,
        first_error: t.first_error.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_jitter_stays_under_the_ceiling_and_honours_retry_after() {
        let (base, cap) = (Duration::from_millis(500), Duration::from_secs(30));
        for _ in 0..200 {
            assert!(full_jitter(base, cap, 0, Duration::ZERO) < base);
            assert!(full_jitter(base, cap, 3, Duration::ZERO) < Duration::from_secs(4));
            assert!(full_jitter(base, cap, 40, Duration::ZERO) < cap);
            assert!(full_jitter(base, cap, 0, Duration::from_secs(2)) >= Duration::from_secs(2));
        }
        assert_eq!(full_jitter(Duration::ZERO, cap, 5, Duration::ZERO), Duration::ZERO);
    }
}
