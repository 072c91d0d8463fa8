//! One established connection: the handler API and the loop that reads with limits, writes
//! through a bounded queue, pings, times out and closes with the right code.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Notify, mpsc};
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
            let msg = std::mem::replace(slot, Message::Binary(Vec::new()));
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
    tx: mpsc::Sender<Message>,
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    close: Mutex<Option<Close>>,
    notify: Notify,
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
        match self.tx.try_send(msg) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.close(ConnError::SlowConsumer("outbound queue full").close());
                Err(SendError::Full)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(SendError::Closed),
        }
    }

    /// Asks the connection to close with this code and reason. The first request wins.
    pub fn close(&self, close: Close) {
        let mut slot = self.shared.close.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(close);
        }
        drop(slot);
        self.shared.notify.notify_one();
    }

    /// True once the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

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
    let (tx, mut rx) = mpsc::channel(cfg.outbound_queue.max(1));
    let shared = Arc::new(Shared::default());
    let mut ctx = Context {
        info: info.clone(),
        pending: VecDeque::new(),
        limit: cfg.outbound_queue.max(1),
        deadline: None,
        handle: ConnHandle { tx, shared: shared.clone() },
    };
    let outcome = drive(&mut ws, &mut ctx, &mut handler, &mut rx, &shared, cfg, &shutdown).await;
    rx.close();
    handler.on_close(&info, &outcome);
    outcome
}

async fn drive<S, H>(
    ws: &mut WebSocketStream<S>,
    ctx: &mut Context,
    handler: &mut H,
    rx: &mut mpsc::Receiver<Message>,
    shared: &Shared,
    cfg: &TransportConfig,
    shutdown: &CancellationToken,
) -> Outcome
where
    S: AsyncRead + AsyncWrite + Unpin,
    H: Handler,
{
    let step = handler.on_open(ctx).await;
    if let Some(outcome) = after_handler(ws, ctx, handler, step, cfg).await {
        return outcome;
    }
    let pinging = !cfg.ping_interval.is_zero();
    let mut next_ping = Instant::now() + cfg.ping_interval;
    let mut last_seen = Instant::now();
    let far = Duration::from_secs(86_400 * 365);
    loop {
        let idle_at = last_seen + cfg.idle_timeout;
        let deadline = ctx.deadline.unwrap_or_else(|| Instant::now() + far);
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => {
                let close = Close::new(close_code::GOING_AWAY, "server shutting down");
                let prelude = handler.on_closing(&close);
                return close_as_server(ws, close, prelude, cfg).await;
            }
            _ = shared.notify.notified() => {
                let requested = shared.close.lock().unwrap_or_else(|p| p.into_inner()).take();
                if let Some(close) = requested {
                    let prelude = handler.on_closing(&close);
                    return close_as_server(ws, close, prelude, cfg).await;
                }
            }
            item = ws.next() => {
                let msg = match item {
                    None => return Outcome::PeerClosed { code: None, reason: String::new() },
                    Some(Err(e)) => match ConnError::from_ws(e) {
                        None => return Outcome::PeerClosed { code: None, reason: String::new() },
                        Some(err) => return fail(ws, err, |c| handler.on_closing(c), cfg).await,
                    },
                    Some(Ok(msg)) => msg,
                };
                last_seen = Instant::now();
                let step = match msg {
                    WsMessage::Text(t) => handler.on_message(Message::Text(t.as_str().to_owned()), ctx).await,
                    WsMessage::Binary(b) => handler.on_message(Message::Binary(Vec::from(b)), ctx).await,
                    WsMessage::Ping(_) => {
                        // tungstenite has queued the pong; push it out now.
                        match timeout(cfg.write_timeout, ws.flush()).await {
                            Ok(Ok(())) => continue,
                            Ok(Err(e)) => match ConnError::from_ws(e) {
                                None => return Outcome::PeerClosed { code: None, reason: String::new() },
                                Some(err) => return fail(ws, err, |c| handler.on_closing(c), cfg).await,
                            },
                            Err(_) => return fail(ws, ConnError::SlowConsumer("write timed out"), |c| handler.on_closing(c), cfg).await,
                        }
                    }
                    WsMessage::Pong(_) | WsMessage::Frame(_) => continue,
                    WsMessage::Close(frame) => {
                        let (code, reason) = match frame {
                            Some(f) => (Some(u16::from(f.code)), f.reason.as_str().to_owned()),
                            None => (None, String::new()),
                        };
                        // Reading on lets tungstenite send its reply and finish the handshake.
                        let _ = timeout(cfg.close_timeout, async {
                            while let Some(Ok(_)) = ws.next().await {}
                        })
                        .await;
                        return Outcome::PeerClosed { code, reason };
                    }
                };
                if let Some(outcome) = after_handler(ws, ctx, handler, step, cfg).await {
                    return outcome;
                }
            }
            Some(msg) = rx.recv() => {
                ctx.pending.push_back(handler.on_push(msg));
                while ctx.pending.len() < ctx.limit {
                    match rx.try_recv() {
                        Ok(m) => ctx.pending.push_back(handler.on_push(m)),
                        Err(_) => break,
                    }
                }
                if let Some(outcome) = after_handler(ws, ctx, handler, Ok(()), cfg).await {
                    return outcome;
                }
            }
            _ = sleep_until(next_ping), if pinging => {
                next_ping = Instant::now() + cfg.ping_interval;
                if let Err(outcome) = write_all(ws, std::iter::once(WsMessage::Ping(Default::default())), cfg).await {
                    return outcome;
                }
            }
            _ = sleep_until(idle_at) => {
                return fail(ws, ConnError::IdleTimeout, |c| handler.on_closing(c), cfg).await;
            }
            _ = sleep_until(deadline), if ctx.deadline.is_some() => {
                ctx.deadline = None;
                let step = handler.on_deadline(ctx).await;
                if let Some(outcome) = after_handler(ws, ctx, handler, step, cfg).await {
                    return outcome;
                }
            }
        }
    }
}

/// Sends what the handler queued, then closes if the handler asked to.
async fn after_handler<S, H>(
    ws: &mut WebSocketStream<S>,
    ctx: &mut Context,
    handler: &mut H,
    step: Result<(), Close>,
    cfg: &TransportConfig,
) -> Option<Outcome>
where
    S: AsyncRead + AsyncWrite + Unpin,
    H: Handler,
{
    if !ctx.pending.is_empty() {
        let count = ctx.pending.len();
        let bytes = ctx.pending.iter().map(Message::len).sum();
        let batch = ctx.pending.drain(..).map(to_ws);
        if let Err(outcome) = write_all(ws, batch, cfg).await {
            return Some(outcome);
        }
        handler.on_sent(count, bytes);
    }
    match step {
        Ok(()) => None,
        Err(close) => {
            let prelude = handler.on_closing(&close);
            Some(close_as_server(ws, close, prelude, cfg).await)
        }
    }
}

fn to_ws(msg: Message) -> WsMessage {
    match msg {
        Message::Text(t) => WsMessage::Text(t.into()),
        Message::Binary(b) => WsMessage::Binary(b.into()),
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
    let result = timeout(cfg.write_timeout, async {
        for m in msgs {
            ws.feed(m).await?;
        }
        ws.flush().await
    })
    .await;
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => match ConnError::from_ws(e) {
            None => Err(Outcome::PeerClosed { code: None, reason: String::new() }),
            Some(err) => Err(fail(ws, err, |_| None, cfg).await),
        },
        Err(_) => {
            Err(Outcome::Failed { error: ConnError::SlowConsumer("write timed out"), close: None })
        }
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
