//! One established connection: the handler API and the loop that reads with limits, writes
//! through a bounded queue, pings, times out and closes with the right code.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::future::poll_fn;
use std::task::Poll;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Notify;
use tokio::time::{Instant, sleep_until, timeout};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_util::sync::CancellationToken;

use crate::{Close, ConnError, ConnInfo, Message, Outcome, TransportConfig, close_code};

/// Per-connection application logic. One value per connection; the transport calls it from the
/// connection's own task, one call at a time.
///
/// Returning `Err(close)` from any method closes the connection with that code.
pub trait Handler: Send + 'static {
    /// Called once, right after the upgrade.
    fn on_open(&mut self, ctx: &mut Context) -> impl Future<Output = Result<(), Close>> + Send {
        let _ = ctx;
        async { Ok(()) }
    }

    /// Called for each complete data message.
    fn on_message(
        &mut self,
        msg: Message,
        ctx: &mut Context,
    ) -> impl Future<Output = Result<(), Close>> + Send;

    /// Called when the deadline set with [`Context::set_deadline`] passes.
    fn on_deadline(&mut self, ctx: &mut Context) -> impl Future<Output = Result<(), Close>> + Send {
        let _ = ctx;
        async { Ok(()) }
    }

    /// Called when the server begins to drain (shutdown was cancelled), at this connection's
    /// moment of [`crate::Drain`]'s spread; returns the close to send. `restart` is true when a
    /// successor process serves on the same sockets. The default is 1001 for either.
    fn on_drain(&mut self, restart: bool, spread: Duration) -> Close {
        let _ = spread;
        let reason = if restart { "server restarting" } else { "server shutting down" };
        Close::new(close_code::GOING_AWAY, reason)
    }

    /// Called for each message pushed through a [`ConnHandle`], before it is queued; returns
    /// the message to send (e.g. wrapped in a subprotocol's envelope). The default keeps it.
    fn on_push(&mut self, msg: Message) -> Message {
        msg
    }

    /// Called just before the server sends a close frame, whoever decided the close (the
    /// handler, a [`ConnHandle`], shutdown, a limit or a protocol error); a message returned here
    /// is written right before the close frame (e.g. an error envelope that says why). It may be
    /// called for a close that then cannot be written. The default sends nothing.
    fn on_closing(&mut self, close: &Close) -> Option<Message> {
        let _ = close;
        None
    }

    /// Called after data messages were written to the socket (for traffic counters).
    fn on_sent(&mut self, messages: usize, bytes: usize) {
        let _ = (messages, bytes);
    }

    /// Called once when the connection has ended, however it ended.
    fn on_close(&mut self, info: &ConnInfo, outcome: &Outcome) {
        let _ = (info, outcome);
    }
}

/// What a handler can do with its connection while it runs.
pub struct Context {
    info: ConnInfo,
    pending: VecDeque<Message>,
    limit: usize,
    deadline: Option<Instant>,
    handle: ConnHandle,
}

impl Context {
    /// The connection's id, peer and endpoint.
    pub fn info(&self) -> &ConnInfo {
        &self.info
    }

    /// Queues a message to the client. Fails (and the connection closes with 1008) when the
    /// client has let more than the outbound queue limit pile up.
    pub fn send(&mut self, msg: Message) -> Result<(), Close> {
        if self.pending.len() >= self.limit {
            return Err(ConnError::SlowConsumer("outbound queue full").close());
        }
        self.pending.push_back(msg);
        Ok(())
    }

    /// Sets (or clears) the one deadline of this connection; [`Handler::on_deadline`] runs then.
    pub fn set_deadline(&mut self, at: Option<std::time::Instant>) {
        self.deadline = at.map(Instant::from_std);
    }

    /// How many messages are queued and not yet written; a mark for [`Context::map_queued`].
    pub fn queued(&self) -> usize {
        self.pending.len()
    }

    /// Rewrites the queued messages from position `from` (a [`Context::queued`] mark) on, e.g.
    /// to wrap the replies an application queued in a subprotocol's envelope.
    pub fn map_queued(&mut self, from: usize, mut f: impl FnMut(Message) -> Message) {
        for slot in self.pending.iter_mut().skip(from) {
            let msg = std::mem::replace(slot, Message::Binary(bytes::Bytes::new()));
            *slot = f(msg);
        }
    }

    /// A handle other tasks can use to push messages to this connection or close it.
    pub fn handle(&self) -> ConnHandle {
        self.handle.clone()
    }
}

/// A cloneable, thread-safe handle to one connection: push messages to it, or close it.
#[derive(Clone, Debug)]
pub struct ConnHandle {
    shared: Arc<Shared>,
}

/// The connection's inbox: what other tasks pushed or asked for. A plain queue under a mutex
/// rather than a channel, so an idle connection holds no preallocated slots.
#[derive(Debug)]
struct Shared {
    inbox: Mutex<Inbox>,
    notify: Notify,
    limit: usize,
}

#[derive(Debug, Default)]
struct Inbox {
    queue: VecDeque<Message>,
    close: Option<Close>,
    ended: bool,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inbox> {
        self.inbox.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Why [`ConnHandle::send`] did not queue a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The client is not reading; the connection is being closed as a slow consumer.
    #[error("outbound queue full; the connection is closed as a slow consumer")]
    Full,
    /// The connection has ended.
    #[error("connection closed")]
    Closed,
}

impl ConnHandle {
    /// Queues a message without waiting. A full queue closes the connection with 1008.
    pub fn send(&self, msg: Message) -> Result<(), SendError> {
        let mut inbox = self.shared.lock();
        if inbox.ended {
            return Err(SendError::Closed);
        }
        if inbox.queue.len() >= self.shared.limit {
            drop(inbox);
            self.close(ConnError::SlowConsumer("outbound queue full").close());
            return Err(SendError::Full);
        }
        inbox.queue.push_back(msg);
        drop(inbox);
        self.shared.notify.notify_one();
        Ok(())
    }

    /// Asks the connection to close with this code and reason. The first request wins.
    pub fn close(&self, close: Close) {
        let mut inbox = self.shared.lock();
        if inbox.close.is_none() {
            inbox.close = Some(close);
        }
        drop(inbox);
        self.shared.notify.notify_one();
    }

    /// True once the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.shared.lock().ended
    }
}

/// Most messages handled from one read before the replies are written.
const MAX_BATCH: usize = 64;

/// Runs one connection to its end and reports how it ended to the handler.
pub(crate) async fn run<S, H>(
    mut ws: WebSocketStream<S>,
    info: ConnInfo,
    cfg: &TransportConfig,
    mut handler: H,
    shutdown: CancellationToken,
) -> Outcome
where
    S: AsyncRead + AsyncWrite + Unpin,
    H: Handler,
{
    let limit = cfg.outbound_queue.max(1);
    let shared =
        Arc::new(Shared { inbox: Mutex::new(Inbox::default()), notify: Notify::new(), limit });
    let mut ctx = Context {
        info: info.clone(),
        pending: VecDeque::new(),
        limit,
        deadline: None,
        handle: ConnHandle { shared: shared.clone() },
    };
    let outcome = drive(&mut ws, &mut ctx, &mut handler, &shared, cfg, &shutdown).await;
    {
        let mut inbox = shared.lock();
        inbox.ended = true;
        inbox.queue = VecDeque::new();
    }
    handler.on_close(&info, &outcome);
    outcome
}

async fn drive<S, H>(
    ws: &mut WebSocketStream<S>,
    ctx: &mut Context,
    handler: &mut H,
    shared: &Shared,
    cfg: &TransportConfig,
    shutdown: &CancellationToken,
) -> Outcome
where
    S: AsyncRead + AsyncWrite + Unpin,
    H: Handler,
{
    let step = Box::pin(handler.on_open(ctx)).await;
    if let Some(outcome) = after_handler(ws, ctx, handler, step, false, cfg).await {
        return outcome;
    }
    let pinging = !cfg.ping_interval.is_zero();
    let now = Instant::now();
    let far = now + Duration::from_secs(86_400 * 365);
    let mut next_ping = if pinging { now + cfg.ping_interval } else { far };
    let mut last_seen = now;
    // One timer for the ping, the idle timeout and the handler's deadline. It is re-armed only
    // when it fires or when the wake-up moves earlier; traffic moves the idle timeout later
    // without touching the timer, which then finds the connection busy and sleeps again.
    let mut armed = next_ping.min(last_seen + cfg.idle_timeout);
    let timer = sleep_until(armed);
    tokio::pin!(timer);
    // Created once, not per turn of the loop: registering a waiter takes a lock.
    let cancelled = shutdown.cancelled();
    tokio::pin!(cancelled);
    let notified = shared.notify.notified();
    tokio::pin!(notified);
    // Set once shutdown is cancelled and the drain spreads closes: this connection's moment.
    let mut drain_at: Option<Instant> = None;
    loop {
        let wake = next_ping
            .min(last_seen + cfg.idle_timeout)
            .min(ctx.deadline.unwrap_or(far))
            .min(drain_at.unwrap_or(far));
        if wake < armed || timer.is_elapsed() {
            armed = wake;
            timer.as_mut().reset(wake);
        }
        tokio::select! {
            biased;
            () = &mut cancelled, if drain_at.is_none() => {
                let delay = cfg.drain.delay(ctx.info.id);
                if delay.is_zero() {
                    let close = handler.on_drain(cfg.drain.restart(), cfg.drain.spread());
                    let prelude = handler.on_closing(&close);
                    return Box::pin(close_as_server(ws, close, prelude, cfg)).await;
                }
                // Served on until its moment; the timer branch closes it then.
                drain_at = Some(Instant::now() + delay);
            }
            () = &mut notified => {
                notified.set(shared.notify.notified());
                let (close, pushed) = {
                    let mut inbox = shared.lock();
                    let room = ctx.limit.saturating_sub(ctx.pending.len());
                    let n = inbox.queue.len().min(room);
                    (inbox.close.take(), inbox.queue.drain(..n).collect::<Vec<_>>())
                };
                if let Some(close) = close {
                    let prelude = handler.on_closing(&close);
                    return Box::pin(close_as_server(ws, close, prelude, cfg)).await;
                }
                for msg in pushed {
                    ctx.pending.push_back(handler.on_push(msg));
                }
                if let Some(outcome) = after_handler(ws, ctx, handler, Ok(()), false, cfg).await {
                    return outcome;
                }
            }
            item = ws.next() => {
                last_seen = Instant::now();
                let mut item = item;
                let mut handled = 0;
                let mut pong_queued = false;
                let mut sent = Sent::default();
                // Handle every message that is already buffered, then write all replies at once.
                let step = loop {
                    let msg = match item {
                        None => return Outcome::PeerClosed { code: None, reason: String::new() },
                        Some(Err(e)) => {
                            let Some(err) = ConnError::from_ws(e) else {
                                return Outcome::PeerClosed { code: None, reason: String::new() };
                            };
                            // Replies fed so far go out before the close frame.
                            if sent.messages > 0 {
                                handler.on_sent(sent.messages, sent.bytes);
                            }
                            return Box::pin(fail(ws, err, |c| handler.on_closing(c), cfg)).await;
                        }
                        Some(Ok(msg)) => msg,
                    };
                    let step = match msg {
                        WsMessage::Text(t) => handler.on_message(Message::Text(t.as_str().to_owned()), ctx).await,
                        WsMessage::Binary(b) => handler.on_message(Message::Binary(b), ctx).await,
                        // tungstenite has queued the pong; it goes out with the replies.
                        WsMessage::Ping(_) => {
                            pong_queued = true;
                            Ok(())
                        }
                        WsMessage::Pong(_) | WsMessage::Frame(_) => Ok(()),
                        WsMessage::Close(frame) => {
                            // The replies fed before this close frame was read go out with
                            // tungstenite's close reply (no data can follow a received close).
                            if sent.messages > 0 {
                                handler.on_sent(sent.messages, sent.bytes);
                            }
                            let (code, reason) = match frame {
                                Some(f) => (Some(u16::from(f.code)), f.reason.as_str().to_owned()),
                                None => (None, String::new()),
                            };
                            // Reading on lets tungstenite send its reply and finish the handshake.
                            let _ = Box::pin(timeout(cfg.close_timeout, async {
                                while let Some(Ok(_)) = ws.next().await {}
                            }))
                            .await;
                            return Outcome::PeerClosed { code, reason };
                        }
                    };
                    // Fed now, before the next frame is read: if that is a close frame,
                    // tungstenite refuses data after it but still writes what it holds.
                    if let Err(outcome) = feed_pending(ws, ctx, &mut sent, cfg).await {
                        return outcome;
                    }
                    handled += 1;
                    if step.is_err() || handled >= MAX_BATCH {
                        break step;
                    }
                    match poll_fn(|cx| Poll::Ready(ws.poll_next_unpin(cx))).await {
                        Poll::Ready(next) => item = next,
                        Poll::Pending => break step,
                    }
                };
                if let Some(outcome) = flush_sent(ws, handler, step, sent, pong_queued, cfg).await {
                    return outcome;
                }
            }
            () = &mut timer => {
                let now = Instant::now();
                if drain_at.is_some_and(|d| now >= d) {
                    let close = handler.on_drain(cfg.drain.restart(), cfg.drain.spread());
                    let prelude = handler.on_closing(&close);
                    return Box::pin(close_as_server(ws, close, prelude, cfg)).await;
                }
                if now >= last_seen + cfg.idle_timeout {
                    return Box::pin(fail(ws, ConnError::IdleTimeout, |c| handler.on_closing(c), cfg)).await;
                }
                if ctx.deadline.is_some_and(|d| now >= d) {
                    ctx.deadline = None;
                    let step = Box::pin(handler.on_deadline(ctx)).await;
                    if let Some(outcome) = after_handler(ws, ctx, handler, step, false, cfg).await {
                        return outcome;
                    }
                }
                if now >= next_ping {
                    next_ping = now + cfg.ping_interval;
                    if let Err(outcome) = write_all(ws, std::iter::once(WsMessage::Ping(Default::default())), cfg).await {
                        return outcome;
                    }
                }
            }
        }
    }
}

/// Sends what the handler queued (and flushes anyway with `flush`, e.g. for a queued pong),
/// then closes if the handler asked to.
async fn after_handler<S, H>(
    ws: &mut WebSocketStream<S>,
    ctx: &mut Context,
    handler: &mut H,
    step: Result<(), Close>,
    flush: bool,
    cfg: &TransportConfig,
) -> Option<Outcome>
where
    S: AsyncRead + AsyncWrite + Unpin,
    H: Handler,
{
    let mut sent = Sent::default();
    if let Err(outcome) = feed_pending(ws, ctx, &mut sent, cfg).await {
        return Some(outcome);
    }
    flush_sent(ws, handler, step, sent, flush, cfg).await
}

/// Messages handed to tungstenite and not yet flushed: count and payload bytes.
#[derive(Clone, Copy, Debug, Default)]
struct Sent {
    messages: usize,
    bytes: usize,
}

/// Hands the handler's queued messages to tungstenite without flushing, counting them.
async fn feed_pending<S>(
    ws: &mut WebSocketStream<S>,
    ctx: &mut Context,
    sent: &mut Sent,
    cfg: &TransportConfig,
) -> Result<(), Outcome>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    while let Some(msg) = ctx.pending.pop_front() {
        sent.messages += 1;
        sent.bytes += msg.len();
        // Usually tungstenite's buffer has room: hand the message over without arming the write
        // timer (one per message would cost more than the rest of the echo).
        match poll_fn(|cx| Poll::Ready(ws.poll_ready_unpin(cx))).await {
            Poll::Ready(Ok(())) => {
                if let Err(e) = ws.start_send_unpin(to_ws(msg)) {
                    return write_failed(ws, e, cfg).await;
                }
            }
            Poll::Ready(Err(e)) => return write_failed(ws, e, cfg).await,
            Poll::Pending => write(ws, std::iter::once(to_ws(msg)), false, cfg).await?,
        }
    }
    Ok(())
}

/// Flushes what was fed (or anyway with `flush`, e.g. for a queued pong), reports it to the
/// handler, then closes if the handler asked to.
async fn flush_sent<S, H>(
    ws: &mut WebSocketStream<S>,
    handler: &mut H,
    step: Result<(), Close>,
    sent: Sent,
    flush: bool,
    cfg: &TransportConfig,
) -> Option<Outcome>
where
    S: AsyncRead + AsyncWrite + Unpin,
    H: Handler,
{
    if sent.messages > 0 || flush {
        if let Err(outcome) = write_all(ws, std::iter::empty(), cfg).await {
            return Some(outcome);
        }
        if sent.messages > 0 {
            handler.on_sent(sent.messages, sent.bytes);
        }
    }
    match step {
        Ok(()) => None,
        Err(close) => {
            let prelude = handler.on_closing(&close);
            Some(Box::pin(close_as_server(ws, close, prelude, cfg)).await)
        }
    }
}

fn to_ws(msg: Message) -> WsMessage {
    match msg {
        Message::Text(t) => WsMessage::Text(t.into()),
        Message::Binary(b) => WsMessage::Binary(b),
    }
}

/// Feeds messages and flushes once, within the write timeout.
async fn write_all<S>(
    ws: &mut WebSocketStream<S>,
    msgs: impl Iterator<Item = WsMessage>,
    cfg: &TransportConfig,
) -> Result<(), Outcome>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    write(ws, msgs, true, cfg).await
}

/// Feeds messages into tungstenite's write buffer (which goes to the socket whenever it passes
/// `write_buffer_bytes`) and, with `flush`, flushes it; all within the write timeout.
async fn write<S>(
    ws: &mut WebSocketStream<S>,
    msgs: impl Iterator<Item = WsMessage>,
    flush: bool,
    cfg: &TransportConfig,
) -> Result<(), Outcome>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let result = timeout(cfg.write_timeout, async {
        for m in msgs {
            ws.feed(m).await?;
        }
        if flush { ws.flush().await } else { Ok(()) }
    })
    .await;
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => write_failed(ws, e, cfg).await,
        Err(_) => {
            Err(Outcome::Failed { error: ConnError::SlowConsumer("write timed out"), close: None })
        }
    }
}

/// How a connection ends after a write error.
async fn write_failed<S>(
    ws: &mut WebSocketStream<S>,
    e: tokio_tungstenite::tungstenite::Error,
    cfg: &TransportConfig,
) -> Result<(), Outcome>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match ConnError::from_ws(e) {
        None => Err(Outcome::PeerClosed { code: None, reason: String::new() }),
        Some(err) => Err(Box::pin(fail(ws, err, |_| None, cfg)).await),
    }
}

/// Sends `prelude` (if any) and our close frame, and waits (bounded) for the peer's.
async fn close_as_server<S>(
    ws: &mut WebSocketStream<S>,
    close: Close,
    prelude: Option<Message>,
    cfg: &TransportConfig,
) -> Outcome
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    send_close(ws, &close, prelude, cfg).await;
    Outcome::ServerClosed(close)
}

/// Ends a failed connection: tells the client why where the socket can still be written, after
/// the message `prelude` returns for that close (if any).
async fn fail<S>(
    ws: &mut WebSocketStream<S>,
    error: ConnError,
    prelude: impl FnOnce(&Close) -> Option<Message>,
    cfg: &TransportConfig,
) -> Outcome
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let writable = !matches!(
        error,
        ConnError::PeerVanished | ConnError::Io(_) | ConnError::SlowConsumer("write timed out")
    );
    if writable {
        let close = error.close();
        let before = prelude(&close);
        let sent = send_close(ws, &close, before, cfg).await;
        return Outcome::Failed { error, close: sent.then_some(close) };
    }
    Outcome::Failed { error, close: None }
}

async fn send_close<S>(
    ws: &mut WebSocketStream<S>,
    close: &Close,
    prelude: Option<Message>,
    cfg: &TransportConfig,
) -> bool
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let frame = CloseFrame {
        code: CloseCode::from(close.code),
        reason: truncate(&close.reason, 123).into(),
    };
    let closing = async {
        if let Some(msg) = prelude {
            ws.feed(to_ws(msg)).await?;
        }
        ws.close(Some(frame)).await
    };
    let sent = matches!(timeout(cfg.close_timeout, closing).await, Ok(Ok(())));
    if sent {
        // Wait briefly for the client's close frame so it sees an orderly end.
        let _ =
            timeout(cfg.close_timeout, async { while let Some(Ok(_)) = ws.next().await {} }).await;
    }
    sent
}

/// Cuts a close reason to at most `max` bytes on a character boundary.
fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}
