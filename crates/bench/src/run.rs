//! The three load modes. Everything runs on one thread (a current-thread
//! runtime and a `LocalSet`), so results are shared through `Rc<RefCell<_>>`.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::conn::{Conn, Open, Pumped, closed_by_server};
use crate::frame::{Kind, Message};
use crate::stats::{Checker, Stats, fill};

/// Size of the text messages of the handshake and idle modes.
pub const SMALL_MESSAGE: usize = 32;

/// Echo mode settings.
#[derive(Clone, Debug)]
pub struct EchoConfig {
    pub open: Open,
    pub prefix: String,
    pub sources: Vec<IpAddr>,
    pub connections: usize,
    pub inflight: usize,
    pub size: usize,
    pub kind: Kind,
    pub duration: Duration,
    pub warmup: Duration,
    pub connect_concurrency: usize,
}

/// Handshake mode settings.
#[derive(Clone, Debug)]
pub struct HandshakeConfig {
    pub open: Open,
    pub prefix: String,
    pub sources: Vec<IpAddr>,
    pub duration: Duration,
    /// Cycles completed before the end of the warm-up are not counted.
    pub warmup: Duration,
    pub concurrency: usize,
}

/// Idle mode settings.
#[derive(Clone, Debug)]
pub struct IdleConfig {
    pub open: Open,
    pub prefix: String,
    pub sources: Vec<IpAddr>,
    pub connections: usize,
    pub hold: Duration,
    /// 0: no traffic.
    pub trickle_ms: u64,
    pub connect_concurrency: usize,
}

#[derive(Debug, Serialize)]
pub struct EchoResult {
    pub event: &'static str,
    pub mode: &'static str,
    /// Connections established.
    pub connections: usize,
    pub inflight: usize,
    pub size: usize,
    pub binary: bool,
    pub secs: f64,
    pub messages: u64,
    pub bytes: u64,
    pub msgs_per_sec: f64,
    pub mb_per_sec: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub errors: u64,
    pub first_error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct HandshakeResult {
    pub event: &'static str,
    pub mode: &'static str,
    pub concurrency: usize,
    pub secs: f64,
    pub handshakes: u64,
    pub handshakes_per_sec: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub errors: u64,
    pub first_error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct IdleResult {
    pub event: &'static str,
    pub mode: &'static str,
    /// Connections established.
    pub connections: usize,
    pub trickle_ms: u64,
    pub secs: f64,
    pub messages: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub errors: u64,
    pub first_error: Option<String>,
}

/// The `ready` line of the idle mode.
#[derive(Debug, Serialize)]
pub struct Ready {
    pub event: &'static str,
    pub connections: usize,
    pub errors: u64,
}

/// A marker line: `measure_start` / `measure_end` bracket the measured
/// window of the echo and handshake modes (the orchestrator samples the
/// server's CPU time at both).
#[derive(Debug, Serialize)]
pub struct Event {
    pub event: &'static str,
}

/// Reports the start and end of the measured window as they happen.
async fn mark_window(from: Instant, to: Instant, event: &mut impl FnMut(Event)) {
    tokio::time::sleep_until(from).await;
    event(Event { event: "measure_start" });
    tokio::time::sleep_until(to).await;
    event(Event { event: "measure_end" });
}

type Shared = Rc<RefCell<Stats>>;

fn source(sources: &[IpAddr], i: usize) -> Option<IpAddr> {
    (!sources.is_empty()).then(|| sources[i % sources.len()])
}

fn per_sec(n: u64, secs: f64) -> f64 {
    if secs > 0.0 { n as f64 / secs } else { 0.0 }
}

/// Opens connections `0..n` (at most `concurrency` at a time), each in its
/// own local task; an established connection waits, answering pings, for
/// the start signal and then runs `body(i, conn, start)`. Returns the
/// established count once every attempt is done, a sender for the start
/// instant, and the task handles.
async fn open_all<F, Fut>(
    open: &Open,
    sources: &[IpAddr],
    n: usize,
    concurrency: usize,
    stats: &Shared,
    body: F,
) -> (usize, watch::Sender<Option<Instant>>, Vec<JoinHandle<()>>)
where
    F: Fn(usize, Conn, Instant) -> Fut + Clone + 'static,
    Fut: Future<Output = Result<(), String>> + 'static,
{
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let (go_tx, go_rx) = watch::channel(None::<Instant>);
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<bool>();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let (open, permits, mut go_rx, done_tx) =
            (open.clone(), permits.clone(), go_rx.clone(), done_tx.clone());
        let (stats, body) = (stats.clone(), body.clone());
        let src = source(sources, i);
        tasks.push(tokio::task::spawn_local(async move {
            let permit = permits.acquire_owned().await;
            let opened = Conn::open(&open, src, rand::random()).await;
            drop(permit);
            let _ = done_tx.send(opened.is_ok());
            drop(done_tx);
            let result = match opened {
                Ok(mut conn) => match wait_for_start(&mut conn, &mut go_rx).await {
                    Ok(Some(start)) => body(i, conn, start).await,
                    Ok(None) => Ok(()),
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                stats.borrow_mut().error(e);
            }
        }));
    }
    drop(done_tx);
    let mut established = 0;
    for _ in 0..n {
        match done_rx.recv().await {
            Some(ok) => established += usize::from(ok),
            None => break,
        }
    }
    (established, go_tx, tasks)
}

/// Keeps an idle connection serviced (pings answered) until the start
/// instant is published; `None` if the run was abandoned.
async fn wait_for_start(
    conn: &mut Conn,
    go: &mut watch::Receiver<Option<Instant>>,
) -> Result<Option<Instant>, String> {
    let never = tokio::time::sleep(Duration::from_secs(365 * 24 * 3600));
    tokio::pin!(never);
    loop {
        if let Some(start) = *go.borrow_and_update() {
            return Ok(Some(start));
        }
        tokio::select! {
            changed = go.changed() => if changed.is_err() { return Ok(None) },
            pumped = conn.pump(never.as_mut()) => {
                if pumped? == Pumped::Eof {
                    return Err("server ended the connection before the run started".into());
                }
                unexpected(conn)?;
            }
        }
    }
}

/// Processes buffered frames where no data message is expected.
fn unexpected(conn: &mut Conn) -> Result<(), String> {
    match conn.rx.next_message(&mut conn.tx)? {
        None => Ok(()),
        Some(Message::Close(code)) => Err(closed_by_server(code)),
        Some(Message::Data(kind, body)) => {
            Err(format!("unexpected {kind:?} message from the server ({} bytes)", body.len()))
        }
    }
}

async fn join(tasks: Vec<JoinHandle<()>>, stats: &Shared) {
    for task in tasks {
        if let Err(e) = task.await {
            stats.borrow_mut().error(format!("task failed: {e}"));
        }
    }
}

/// Echo mode: throughput and latency with K messages in flight per connection.
pub async fn echo(cfg: EchoConfig, mut event: impl FnMut(Event)) -> EchoResult {
    let stats = Shared::default();
    let body = {
        let (cfg, stats) = (cfg.clone(), stats.clone());
        move |_i: usize, conn: Conn, start: Instant| {
            echo_conn(cfg.clone(), stats.clone(), conn, start)
        }
    };
    let (connections, go, tasks) =
        open_all(&cfg.open, &cfg.sources, cfg.connections, cfg.connect_concurrency, &stats, body)
            .await;
    let start = Instant::now();
    let _ = go.send(Some(start));
    mark_window(start + cfg.warmup, start + cfg.warmup + cfg.duration, &mut event).await;
    join(tasks, &stats).await;
    let s = stats.borrow();
    let secs = cfg.duration.as_secs_f64();
    let (p50_us, p99_us, p999_us, max_us) = s.percentiles();
    EchoResult {
        event: "result",
        mode: "echo",
        connections,
        inflight: cfg.inflight,
        size: cfg.size,
        binary: cfg.kind == Kind::Binary,
        secs,
        messages: s.messages,
        bytes: s.bytes,
        msgs_per_sec: per_sec(s.messages, secs),
        mb_per_sec: per_sec(s.bytes, secs) / 1e6,
        p50_us,
        p99_us,
        p999_us,
        max_us,
        errors: s.errors,
        first_error: s.first_error.clone(),
    }
}

async fn echo_conn(
    cfg: EchoConfig,
    stats: Shared,
    mut conn: Conn,
    start: Instant,
) -> Result<(), String> {
    let warm_end = start + cfg.warmup;
    let end = warm_end + cfg.duration;
    let mut checker = Checker::new(&cfg.prefix, cfg.size, cfg.kind);
    let (kind, size) = (cfg.kind, cfg.size);
    let mut inflight: VecDeque<(u64, Instant)> = VecDeque::with_capacity(cfg.inflight);
    let mut seq = 0u64;
    let now = Instant::now();
    for _ in 0..cfg.inflight {
        conn.tx.frame_with(kind.opcode(), size, |d| fill(d, seq, kind));
        inflight.push_back((seq, now));
        seq += 1;
    }
    let wake = tokio::time::sleep_until(end);
    tokio::pin!(wake);
    let (mut messages, mut bytes) = (0u64, 0u64);
    let outcome = loop {
        match conn.pump(wake.as_mut()).await {
            Ok(Pumped::Wake) => break Ok(()),
            Ok(Pumped::Eof) => {
                break Err("server ended the connection without a close frame".to_string());
            }
            Err(e) => break Err(e),
            Ok(Pumped::Data) => {}
        }
        let now = Instant::now();
        let measured = now >= warm_end;
        let mut st = stats.borrow_mut();
        let handled = (|| loop {
            match conn.rx.next_message(&mut conn.tx)? {
                None => return Ok(()),
                Some(Message::Close(code)) => return Err(closed_by_server(code)),
                Some(Message::Data(got, body)) => {
                    let (sent_seq, sent_at) = inflight
                        .pop_front()
                        .ok_or_else(|| "reply with no message in flight".to_string())?;
                    checker.check(sent_seq, got, body)?;
                    if measured {
                        st.record(now - sent_at);
                        messages += 1;
                        bytes += size as u64;
                    }
                    if now < end {
                        conn.tx.frame_with(kind.opcode(), size, |d| fill(d, seq, kind));
                        inflight.push_back((seq, now));
                        seq += 1;
                    }
                }
            }
        })();
        if let Err(e) = handled {
            break Err(e);
        }
    };
    {
        let mut st = stats.borrow_mut();
        st.messages += messages;
        st.bytes += bytes;
    }
    outcome?;
    conn.close(1000).await
}

/// Handshake mode: connection set-up and tear-down rate.
pub async fn handshake(cfg: HandshakeConfig, mut event: impl FnMut(Event)) -> HandshakeResult {
    let stats = Shared::default();
    let start = Instant::now();
    let warm_end = start + cfg.warmup;
    let end = warm_end + cfg.duration;
    let counter = Rc::new(std::cell::Cell::new(0usize));
    let mut tasks = Vec::with_capacity(cfg.concurrency);
    for _ in 0..cfg.concurrency {
        let (cfg, stats, counter) = (cfg.clone(), stats.clone(), counter.clone());
        tasks.push(tokio::task::spawn_local(async move {
            let mut checker = Checker::new(&cfg.prefix, SMALL_MESSAGE, Kind::Text);
            let mut seq = 0u64;
            while Instant::now() < end {
                let i = counter.get();
                counter.set(i.wrapping_add(1));
                let t0 = Instant::now();
                match cycle(&cfg, source(&cfg.sources, i), &mut checker, seq).await {
                    Ok(()) => {
                        let done = Instant::now();
                        if done >= warm_end && done <= end {
                            let mut st = stats.borrow_mut();
                            st.messages += 1;
                            st.record(done - t0);
                        }
                    }
                    Err(e) => {
                        stats.borrow_mut().error(e);
                        // Do not spin when the server refuses outright.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                seq += 1;
            }
        }));
    }
    mark_window(warm_end, end, &mut event).await;
    join(tasks, &stats).await;
    let secs = cfg.duration.as_secs_f64();
    let s = stats.borrow();
    let (p50_us, p99_us, p999_us, max_us) = s.percentiles();
    HandshakeResult {
        event: "result",
        mode: "handshake",
        concurrency: cfg.concurrency,
        secs,
        handshakes: s.messages,
        handshakes_per_sec: per_sec(s.messages, secs),
        p50_us,
        p99_us,
        p999_us,
        max_us,
        errors: s.errors,
        first_error: s.first_error.clone(),
    }
}

async fn cycle(
    cfg: &HandshakeConfig,
    src: Option<IpAddr>,
    checker: &mut Checker,
    seq: u64,
) -> Result<(), String> {
    let mut conn = Conn::open(&cfg.open, src, rand::random()).await?;
    if cfg.open.token.is_none() {
        conn.tx.frame_with(Kind::Text.opcode(), SMALL_MESSAGE, |d| fill(d, seq, Kind::Text));
        let wake = tokio::time::sleep(crate::conn::OPEN_TIMEOUT);
        tokio::pin!(wake);
        conn.reply(wake.as_mut(), |kind, body| checker.check(seq, kind, body)).await?;
    }
    conn.close(1000).await
}

/// Idle mode: many open connections, optionally a slow trickle of messages.
/// `ready` is called once every connection attempt is done, before the hold.
pub async fn idle(cfg: IdleConfig, ready: impl FnOnce(Ready)) -> IdleResult {
    let stats = Shared::default();
    let body = {
        let (cfg, stats) = (cfg.clone(), stats.clone());
        move |i: usize, conn: Conn, end: Instant| {
            idle_conn(cfg.clone(), stats.clone(), i, conn, end)
        }
    };
    let (connections, go, tasks) =
        open_all(&cfg.open, &cfg.sources, cfg.connections, cfg.connect_concurrency, &stats, body)
            .await;
    ready(Ready { event: "ready", connections, errors: stats.borrow().errors });
    let hold_start = Instant::now();
    // The tasks get the end of the hold as their start signal.
    let _ = go.send(Some(hold_start + cfg.hold));
    join(tasks, &stats).await;
    let secs = cfg.hold.as_secs_f64();
    let s = stats.borrow();
    let (p50_us, p99_us, p999_us, max_us) = s.percentiles();
    IdleResult {
        event: "result",
        mode: "idle",
        connections,
        trickle_ms: cfg.trickle_ms,
        secs,
        messages: s.messages,
        p50_us,
        p99_us,
        p999_us,
        max_us,
        errors: s.errors,
        first_error: s.first_error.clone(),
    }
}

async fn idle_conn(
    cfg: IdleConfig,
    stats: Shared,
    i: usize,
    mut conn: Conn,
    end: Instant,
) -> Result<(), String> {
    let hold_start = end.checked_sub(cfg.hold).unwrap_or(end);
    let interval = Duration::from_millis(cfg.trickle_ms);
    let trickle = !interval.is_zero();
    let offset = if trickle {
        interval.mul_f64(i as f64 / cfg.connections.max(1) as f64)
    } else {
        Duration::ZERO
    };
    let mut next_send = if trickle { hold_start + offset } else { end };
    let mut checker = Checker::new(&cfg.prefix, SMALL_MESSAGE, Kind::Text);
    let mut inflight: VecDeque<(u64, Instant)> = VecDeque::new();
    let mut seq = 0u64;
    let wake = tokio::time::sleep_until(next_send.min(end));
    tokio::pin!(wake);
    loop {
        wake.as_mut().reset(next_send.min(end));
        match conn.pump(wake.as_mut()).await? {
            Pumped::Eof => return Err("server ended the connection during the hold".into()),
            Pumped::Wake => {
                let now = Instant::now();
                if now >= end {
                    break;
                }
                if trickle && now >= next_send {
                    conn.tx.frame_with(Kind::Text.opcode(), SMALL_MESSAGE, |d| {
                        fill(d, seq, Kind::Text)
                    });
                    inflight.push_back((seq, now));
                    seq += 1;
                    next_send += interval;
                }
            }
            Pumped::Data => {
                let now = Instant::now();
                loop {
                    match conn.rx.next_message(&mut conn.tx)? {
                        None => break,
                        Some(Message::Close(code)) => {
                            return Err(format!("during the hold: {}", closed_by_server(code)));
                        }
                        Some(Message::Data(got, body)) => {
                            let Some((sent_seq, sent_at)) = inflight.pop_front() else {
                                return Err(format!(
                                    "unexpected {got:?} message from the server ({} bytes)",
                                    body.len()
                                ));
                            };
                            checker.check(sent_seq, got, body)?;
                            let mut st = stats.borrow_mut();
                            st.messages += 1;
                            st.record(now - sent_at);
                        }
                    }
                }
            }
        }
    }
    conn.close(1000).await
}
