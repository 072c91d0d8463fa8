//! One established connection: the handler API and the loop that reads with limits, writes
//! through a bounded queue, pings, times out and closes with the right code.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::future::poll_fn;
use std::task::Poll;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;
use tokio::time::{Instant, sleep_until, timeout};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data as OpData, OpCode};
use tokio_util::sync::CancellationToken;

use crate::error::SlowConsumer;
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

    /// Called for each message pushed through a [`ConnHandle`], before it is queued, with the
    /// [`PushKind`] its sender gave; returns the message to send (e.g. an application message
    /// wrapped in a subprotocol's envelope, a message already framed as it is). The default
    /// keeps it.
    fn on_push(&mut self, msg: Message, kind: PushKind) -> Message {
        let _ = kind;
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
            return Err(ConnError::SlowConsumer(SlowConsumer::QueueFull).close());
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

/// What a message pushed through a [`ConnHandle`] is, in its sender's words: the transport
/// only hands it to [`Handler::on_push`]. [`ConnHandle::send`] uses [`PushKind::DEFAULT`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PushKind(pub u8);

impl PushKind {
    /// A plain push ([`ConnHandle::send`]).
    pub const DEFAULT: PushKind = PushKind(0);
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
    queue: VecDeque<(Message, PushKind)>,
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
        self.send_as(PushKind::DEFAULT, msg)
    }

    /// Like [`ConnHandle::send`], telling [`Handler::on_push`] what kind of message it is.
    pub fn send_as(&self, kind: PushKind, msg: Message) -> Result<(), SendError> {
        let mut inbox = self.shared.lock();
        if inbox.ended {
            return Err(SendError::Closed);
        }
        if inbox.queue.len() >= self.shared.limit {
            drop(inbox);
            self.close(ConnError::SlowConsumer(SlowConsumer::QueueFull).close());
            return Err(SendError::Full);
        }
        inbox.queue.push_back((msg, kind));
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
///
/// Not an `async fn`: an async fn's future keeps its arguments twice (as passed, and moved into
/// the body), which for the stream and the handler is over 1 KiB per connection; the block
/// below uses what it captured in place.
pub(crate) fn run<'a, S, H>(
    mut ws: WebSocketStream<S>,
    info: ConnInfo,
    cfg: &'a TransportConfig,
    mut handler: H,
    shutdown: CancellationToken,
) -> impl Future<Output = Outcome> + 'a
where
    S: AsyncRead + AsyncWrite + Unpin + 'a,
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
    async move {
        let outcome = drive(&mut ws, &mut ctx, &mut handler, &shared, cfg, &shutdown).await;
        {
            let mut inbox = shared.lock();
            inbox.ended = true;
            inbox.queue = VecDeque::new();
        }
        handler.on_close(&info, &outcome);
        outcome
    }
}

/// The loop of one connection: opens it, then waits for whichever comes first (shutdown, a push
/// or close from another task, data from the peer, a timer) and hands it to its step, until a
/// step ends the connection.
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
    let mut clock = Clock::new(cfg);
    // One timer for the ping, the idle timeout and the handler's deadline. It is re-armed only
    // when it fires or when the wake-up moves earlier; traffic moves the idle timeout later
    // without touching the timer, which then finds the connection busy and sleeps again.
    let mut armed = clock.next_ping.min(clock.idle_end(cfg));
    let timer = sleep_until(armed);
    tokio::pin!(timer);
    // Created once, not per turn of the loop: registering a waiter takes a lock.
    let cancelled = shutdown.cancelled();
    tokio::pin!(cancelled);
    let notified = shared.notify.notified();
    tokio::pin!(notified);
    loop {
        let wake = clock.wake(ctx, cfg);
        if wake < armed || timer.is_elapsed() {
            armed = wake;
            timer.as_mut().reset(wake);
        }
        let ended = tokio::select! {
            biased;
            () = &mut cancelled, if clock.drain_at.is_none() => {
                on_shutdown(ws, ctx, handler, &mut clock, cfg).await
            }
            () = &mut notified => {
                notified.set(shared.notify.notified());
                on_inbox(ws, ctx, handler, shared, cfg).await
            }
            item = ws.next() => {
                clock.last_seen = Instant::now();
                on_readable(ws, ctx, handler, item, cfg).await
            }
            () = &mut timer => on_timer(ws, ctx, handler, &mut clock, cfg).await,
        };
        if let Some(outcome) = ended {
            return outcome;
        }
    }
}

/// The times a connection wakes up for, besides the handler's deadline.
struct Clock {
    next_ping: Instant,
    /// When the peer was last heard from; the idle timeout runs from here.
    last_seen: Instant,
    /// Set once shutdown is cancelled and the drain spreads closes: this connection's moment.
    drain_at: Option<Instant>,
    /// "Never": a year from the start.
    far: Instant,
}

impl Clock {
    fn new(cfg: &TransportConfig) -> Clock {
        let now = Instant::now();
        let far = now + Duration::from_secs(86_400 * 365);
        let next_ping = if cfg.ping_interval.is_zero() { far } else { now + cfg.ping_interval };
        Clock { next_ping, last_seen: now, drain_at: None, far }
    }

    fn idle_end(&self, cfg: &TransportConfig) -> Instant {
        self.last_seen + cfg.idle_timeout
    }

    /// The earliest of the ping, the idle timeout, the handler's deadline and the drain moment.
    fn wake(&self, ctx: &Context, cfg: &TransportConfig) -> Instant {
        self.next_ping
            .min(self.idle_end(cfg))
            .min(ctx.deadline.unwrap_or(self.far))
            .min(self.drain_at.unwrap_or(self.far))
    }
}

/// Shutdown began: close now, or note this connection's moment of the drain's spread (it is
/// served on until then, and the timer closes it).
async fn on_shutdown<S, H>(
    ws: &mut WebSocketStream<S>,
    ctx: &Context,
    handler: &mut H,
    clock: &mut Clock,
    cfg: &TransportConfig,
) -> Option<Outcome>
where
    S: AsyncRead + AsyncWrite + Unpin,
    H: Handler,
{
    let delay = cfg.drain.delay(ctx.info.id);
    if delay.is_zero() {
        return Some(drain_now(ws, handler, cfg).await);
    }
    clock.drain_at = Some(Instant::now() + delay);
    None
}

/// Closes with the handler's drain close.
async fn drain_now<S, H>(
    ws: &mut WebSocketStream<S>,
    handler: &mut H,
    cfg: &TransportConfig,
) -> Outcome
where
    S: AsyncRead + AsyncWrite + Unpin,
    H: Handler,
{
    let close = handler.on_drain(cfg.drain.restart(), cfg.drain.spread());
    close_with(ws, handler, close, cfg).await
}

/// Sends the handler's prelude for `close` (if any) and the close frame.
async fn close_with<S, H>(
    ws: &mut WebSocketStream<S>,
    handler: &mut H,
    close: Close,
    cfg: &TransportConfig,
) -> Outcome
where
    S: AsyncRead + AsyncWrite + Unpin,
    H: Handler,
{
    let prelude = handler.on_closing(&close);
    Box::pin(close_as_server(ws, close, prelude, cfg)).await
}

/// Other tasks pushed messages (queued as far as the outbound queue has room) or asked for a
/// close.
async fn on_inbox<S, H>(
    ws: &mut WebSocketStream<S>,
    ctx: &mut Context,
    handler: &mut H,
    shared: &Shared,
    cfg: &TransportConfig,
) -> Option<Outcome>
where
    S: AsyncRead + AsyncWrite + Unpin,
    H: Handler,
{
    let (close, pushed) = {
        let mut inbox = shared.lock();
        let room = ctx.limit.saturating_sub(ctx.pending.len());
        let n = inbox.queue.len().min(room);
        (inbox.close.take(), inbox.queue.drain(..n).collect::<Vec<_>>())
    };
    if let Some(close) = close {
        return Some(close_with(ws, handler, close, cfg).await);
    }
    for (msg, kind) in pushed {
        ctx.pending.push_back(handler.on_push(msg, kind));
    }
    after_handler(ws, ctx, handler, Ok(()), false, cfg).await
}

/// Data from the peer: handles `item` and every message already buffered after it (at most
/// [`MAX_BATCH`]), feeding each one's replies, then flushes all replies at once.
async fn on_readable<S, H>(
    ws: &mut WebSocketStream<S>,
    ctx: &mut Context,
    handler: &mut H,
    mut item: Option<Result<WsMessage, WsError>>,
    cfg: &TransportConfig,
) -> Option<Outcome>
where
    S: AsyncRead + AsyncWrite + Unpin,
    H: Handler,
{
    let mut handled = 0;
    let mut pong_queued = false;
    let mut sent = Sent::default();
    let step = loop {
        let msg = match item {
            None => return Some(Outcome::PeerClosed { code: None, reason: String::new() }),
            Some(Err(e)) => return Some(read_failed(ws, handler, e, sent, cfg).await),
            Some(Ok(msg)) => msg,
        };
        let step = match msg {
            WsMessage::Text(t) => handler.on_message(Message::Text(t), ctx).await,
            WsMessage::Binary(b) => handler.on_message(Message::Binary(b), ctx).await,
            // tungstenite has queued the pong; it goes out with the replies.
            WsMessage::Ping(_) => {
                pong_queued = true;
                Ok(())
            }
            WsMessage::Pong(_) | WsMessage::Frame(_) => Ok(()),
            WsMessage::Close(frame) => {
                return Some(peer_closed(ws, handler, frame, sent, cfg).await);
            }
        };
        // Fed now, before the next frame is read: if that is a close frame, tungstenite
        // refuses data after it but still writes what it holds.
        if let Err(outcome) = feed_pending(ws, ctx, &mut sent, cfg).await {
            return Some(outcome);
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
    flush_sent(ws, handler, step, sent, pong_queued, cfg).await
}

/// A read failed: the connection ended quietly, or it fails with a close where it can. The
/// replies fed so far go out before the close frame.
async fn read_failed<S, H>(
    ws: &mut WebSocketStream<S>,
    handler: &mut H,
    e: WsError,
    sent: Sent,
    cfg: &TransportConfig,
) -> Outcome
where
    S: AsyncRead + AsyncWrite + Unpin,
    H: Handler,
{
    let Some(err) = ConnError::from_ws(e) else {
        return Outcome::PeerClosed { code: None, reason: String::new() };
    };
    if sent.messages > 0 {
        handler.on_sent(sent.messages, sent.bytes);
    }
    Box::pin(fail(ws, err, |c| handler.on_closing(c), cfg)).await
}

/// The peer sent a close frame. The replies fed before it was read go out with tungstenite's
/// close reply (no data can follow a received close).
async fn peer_closed<S, H>(
    ws: &mut WebSocketStream<S>,
    handler: &mut H,
    frame: Option<CloseFrame>,
    sent: Sent,
    cfg: &TransportConfig,
) -> Outcome
where
    S: AsyncRead + AsyncWrite + Unpin,
    H: Handler,
{
    if sent.messages > 0 {
        handler.on_sent(sent.messages, sent.bytes);
    }
    let (code, reason) = match frame {
        Some(f) => (Some(u16::from(f.code)), f.reason.as_str().to_owned()),
        None => (None, String::new()),
    };
    // Reading on lets tungstenite send its reply and finish the handshake.
    let _ =
        Box::pin(timeout(cfg.close_timeout, async { while let Some(Ok(_)) = ws.next().await {} }))
            .await;
    Outcome::PeerClosed { code, reason }
}

/// The timer fired: the drain moment, the idle timeout, the handler's deadline or a ping.
async fn on_timer<S, H>(
    ws: &mut WebSocketStream<S>,
    ctx: &mut Context,
    handler: &mut H,
    clock: &mut Clock,
    cfg: &TransportConfig,
) -> Option<Outcome>
where
    S: AsyncRead + AsyncWrite + Unpin,
    H: Handler,
{
    let now = Instant::now();
    if clock.drain_at.is_some_and(|d| now >= d) {
        return Some(drain_now(ws, handler, cfg).await);
    }
    if now >= clock.idle_end(cfg) {
        let idle = fail(ws, ConnError::IdleTimeout, |c| handler.on_closing(c), cfg);
        return Some(Box::pin(idle).await);
    }
    if ctx.deadline.is_some_and(|d| now >= d) {
        ctx.deadline = None;
        let step = Box::pin(handler.on_deadline(ctx)).await;
        if let Some(outcome) = after_handler(ws, ctx, handler, step, false, cfg).await {
            return Some(outcome);
        }
    }
    if now >= clock.next_ping {
        clock.next_ping = now + cfg.ping_interval;
        let ping = std::iter::once(WsMessage::Ping(Default::default()));
        if let Err(outcome) = write_all(ws, ping, cfg).await {
            return Some(outcome);
        }
    }
    None
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
    let direct = direct_write_bytes(cfg);
    while let Some(msg) = ctx.pending.pop_front() {
        sent.messages += 1;
        sent.bytes += msg.len();
        if msg.len() >= direct && ws.get_ref().is_write_vectored() {
            write_direct(ws, &msg, cfg).await?;
            continue;
        }
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
        Err(close) => Some(close_with(ws, handler, close, cfg).await),
    }
}

/// Messages at least this large (and at least the write buffer's size, past which tungstenite
/// would write them out on their own anyway) skip tungstenite's write buffer.
const MIN_DIRECT_WRITE_BYTES: usize = 4 * 1024;

fn direct_write_bytes(cfg: &TransportConfig) -> usize {
    cfg.write_buffer_bytes.max(MIN_DIRECT_WRITE_BYTES)
}

/// Longest frame header (tungstenite's `FrameHeader::MAX_SIZE`; a server's, unmasked, takes 10).
const MAX_HEADER_BYTES: usize = 14;

/// Writes one large data message straight to the socket, within the write timeout: first what
/// tungstenite holds (earlier replies, a pong), so frames stay in order, then the frame's header
/// and payload in vectored writes. tungstenite would copy the payload into its write buffer, and
/// that buffer would keep the largest message's size for the connection's life; here the payload
/// goes from the application's `Bytes` to the socket. Only called while tungstenite is open
/// for writing: every path that sends or receives a close ends the connection loop.
async fn write_direct<S>(
    ws: &mut WebSocketStream<S>,
    msg: &Message,
    cfg: &TransportConfig,
) -> Result<(), Outcome>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (opcode, payload) = match msg {
        Message::Text(t) => (OpData::Text, t.as_bytes()),
        Message::Binary(b) => (OpData::Binary, &b[..]),
    };
    let header = FrameHeader { opcode: OpCode::Data(opcode), ..FrameHeader::default() };
    let mut head = [0u8; MAX_HEADER_BYTES];
    let head_len = header.len(payload.len() as u64);
    header
        .format(payload.len() as u64, &mut &mut head[..])
        .expect("a frame header fits in 14 bytes");
    let result = timeout(cfg.write_timeout, async {
        ws.flush().await?;
        write_frame(ws.get_mut(), &head[..head_len], payload).await.map_err(WsError::Io)
    })
    .await;
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => write_failed(ws, e, cfg).await,
        Err(_) => {
            let error = ConnError::SlowConsumer(SlowConsumer::WriteTimedOut);
            Err(Outcome::Failed { error, close: None })
        }
    }
}

/// Writes a frame's header and payload, vectored while any of the header is left.
async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    head: &[u8],
    payload: &[u8],
) -> std::io::Result<()> {
    let total = head.len() + payload.len();
    let mut done = 0;
    while done < total {
        let n = if done < head.len() {
            let parts = [std::io::IoSlice::new(&head[done..]), std::io::IoSlice::new(payload)];
            w.write_vectored(&parts).await?
        } else {
            w.write(&payload[done - head.len()..]).await?
        };
        if n == 0 {
            // As tungstenite reports it: the peer is gone.
            return Err(std::io::ErrorKind::ConnectionReset.into());
        }
        done += n;
    }
    Ok(())
}

fn to_ws(msg: Message) -> WsMessage {
    match msg {
        Message::Text(t) => WsMessage::Text(t),
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
            let error = ConnError::SlowConsumer(SlowConsumer::WriteTimedOut);
            Err(Outcome::Failed { error, close: None })
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
    if error.can_send_close() {
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
