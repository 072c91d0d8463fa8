//! Shared state in Redis: several nodes behind one load balancer.
//!
//! One multiplexed connection ([`redis::aio::ConnectionManager`], RESP3) carries commands and
//! the pub/sub subscription, and reconnects by itself. Every command is bounded by
//! [`RedisConfig::command_timeout`]. Two tasks run per node: a reader applies what arrives on
//! the pub/sub channels, and a writer sends queued writes, heartbeats this node's sessions,
//! syncs the ban and revocation cache, pings Redis once a second, and catches up after an
//! outage. Key names, TTLs and channels are listed in docs/cluster.md.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{
    ErrorKind, IntoConnectionInfo, ProtocolVersion, PushInfo, PushKind, RedisError, Script,
    ServerErrorKind,
};
use tokio::sync::{Notify, mpsc, watch};

mod channels;

use crate::channels::{ChannelSettings, ChannelStore, Remote, Sink};
use crate::local::{Local, revocation_key, sort_sessions};
use crate::metrics::ClusterMetrics;
use crate::wire::{self, Envelope, Keys, Reply, Wire};
use crate::{
    Admission, BoxFuture, ClusterError, DeliveryReply, Event, PublishReport, Revocation,
    SessionEntry, SharedState, Status, TokenFacts, unix_now,
};

/// Writes kept while Redis is unreachable; beyond this the oldest are dropped (the periodic
/// sync and the heartbeat repair most of what they carried).
pub const MAX_PENDING_WRITES: usize = 10_000;

/// The writer's period: outage detection, pings and retries.
const TICK: Duration = Duration::from_secs(1);

/// Session entries live this many heartbeats without a refresh.
const TTL_HEARTBEATS: u32 = 3;

/// Pub/sub messages that may wait for the reader.
const PUSH_QUEUE: usize = 4096;

/// Longest Redis TTL written (ten years), so that "forever" stays a valid `PX`.
const MAX_TTL_MS: u64 = 10 * 365 * 24 * 3600 * 1000;

/// How a node reaches Redis.
#[derive(Clone)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port/db` or `rediss://...` (TLS, rustls).
    pub url: String,
    /// This node's id: 1 to 64 letters, digits, `.`, `_` or `-`.
    pub node_id: String,
    /// Put before every key and channel name, so that deployments can share one Redis.
    pub key_prefix: String,
    /// The longest any Redis command may take, connection attempts included.
    pub command_timeout: Duration,
    /// Interval of the session heartbeat and the cache sync; entries live three of them.
    pub heartbeat: Duration,
}

impl RedisConfig {
    /// Checks the values without connecting.
    pub fn validate(&self) -> Result<(), StartError> {
        let id = &self.node_id;
        let id_ok = !id.is_empty()
            && id.len() <= 64
            && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !id_ok {
            return Err(StartError::InvalidNodeId(id.clone()));
        }
        if self.key_prefix.len() > 64 || self.key_prefix.chars().any(char::is_whitespace) {
            return Err(StartError::InvalidKeyPrefix(self.key_prefix.clone()));
        }
        if self.command_timeout.is_zero() || self.command_timeout > Duration::from_secs(60) {
            return Err(StartError::InvalidTimeout);
        }
        if self.heartbeat < Duration::from_secs(1) || self.heartbeat > Duration::from_secs(3600) {
            return Err(StartError::InvalidHeartbeat);
        }
        self.url.as_str().into_connection_info().map_err(StartError::InvalidUrl)?;
        Ok(())
    }

    /// The URL without user name or password, for logs.
    pub fn redacted_url(&self) -> String {
        let (scheme, rest) = self.url.split_once("://").unwrap_or(("redis", &self.url));
        let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
        let rest = rest.split_once('?').map_or(rest, |(path, _)| path);
        format!("{scheme}://{rest}")
    }

    fn ttl(&self) -> Duration {
        self.heartbeat * TTL_HEARTBEATS
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &self.redacted_url())
            .field("node_id", &self.node_id)
            .field("key_prefix", &self.key_prefix)
            .field("command_timeout", &self.command_timeout)
            .field("heartbeat", &self.heartbeat)
            .finish()
    }
}

/// A [`RedisConfig`] that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The URL does not parse (or names a scheme this build does not support).
    #[error("invalid redis url")]
    InvalidUrl(#[source] RedisError),
    /// `node_id` has characters or a length that keys and logs cannot carry.
    #[error(
        "invalid node id {0:?}: use 1 to 64 characters among letters, digits, '.', '_' and '-'"
    )]
    InvalidNodeId(String),
    /// `key_prefix` is too long or has spaces.
    #[error("invalid key prefix {0:?}: use at most 64 characters and no spaces")]
    InvalidKeyPrefix(String),
    /// The command timeout is out of range.
    #[error("the command timeout must be between 1 ms and 60 s")]
    InvalidTimeout,
    /// The heartbeat period is out of range.
    #[error("the heartbeat must be between 1 s and 1 h")]
    InvalidHeartbeat,
}

/// Shared state in Redis. Dropping it (or [`SharedState::shutdown`]) stops its tasks.
pub struct RedisState {
    shared: Arc<Shared>,
}

impl RedisState {
    /// Connects (without failing when Redis is down: the node then starts in an outage),
    /// loads the cluster's bans and revocations, subscribes, and starts the background tasks.
    /// Call it inside a Tokio runtime. Returns the state and the receiver of other nodes'
    /// events, which the server must drain.
    pub async fn start(
        config: RedisConfig,
    ) -> Result<(RedisState, mpsc::Receiver<Event>), StartError> {
        config.validate()?;
        install_crypto_provider();
        let info = config.url.as_str().into_connection_info().map_err(StartError::InvalidUrl)?;
        // RESP3 lets one connection carry both commands and the subscription.
        let settings = info.redis_settings().clone().set_protocol(ProtocolVersion::RESP3);
        let client = redis::Client::open(info.set_redis_settings(settings))
            .map_err(StartError::InvalidUrl)?;

        let metrics = ClusterMetrics::new(true);
        let (push_tx, push_rx) = mpsc::channel::<PushInfo>(PUSH_QUEUE);
        let dropped = metrics.events_dropped.clone();
        let manager_config = ConnectionManagerConfig::new()
            .set_push_sender(move |info: PushInfo| {
                let sent = push_tx.try_send(info);
                if sent.is_err() {
                    dropped.inc();
                }
                sent
            })
            .set_automatic_resubscription()
            .set_connection_timeout(Some(config.command_timeout))
            .set_response_timeout(Some(config.command_timeout))
            .set_number_of_retries(1)
            .set_max_delay(TICK);
        let con = ConnectionManager::new_lazy_with_config(client, manager_config)
            .map_err(StartError::InvalidUrl)?;

        let (events, events_rx) = crate::event_queue();
        let (stop, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            keys: Keys::new(&config.key_prefix, &config.node_id),
            redacted_url: config.redacted_url(),
            cfg: config,
            con,
            local: Local::default(),
            metrics,
            events,
            outbox: Mutex::new(Outbox::default()),
            wake: Notify::new(),
            health: Mutex::new(Health { up: false, since: Instant::now(), logged: false }),
            generation: AtomicU64::new(0),
            catch_up: AtomicBool::new(true),
            full_heartbeat: AtomicBool::new(true),
            pending: Mutex::new(HashMap::new()),
            stop,
            maint: tokio::sync::Mutex::new(Maint::default()),
            scripts: Scripts::new(),
            last_command_error: Mutex::new(None),
            channel_sink: Mutex::new(None),
            channel_resync: AtomicBool::new(false),
        });
        tokio::spawn(reader(shared.clone(), push_rx));
        // First contact before serving, so that the node starts with the cluster's bans.
        shared.maintenance().await;
        tokio::spawn(writer(shared.clone()));
        Ok((RedisState { shared }, events_rx))
    }
}

impl Drop for RedisState {
    fn drop(&mut self) {
        self.shared.stop.send_replace(true);
    }
}

impl fmt::Debug for RedisState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisState").field("config", &self.shared.cfg).finish_non_exhaustive()
    }
}

impl SharedState for RedisState {
    fn node_id(&self) -> &str {
        &self.shared.cfg.node_id
    }

    fn status(&self) -> Status {
        let s = &self.shared;
        let health = lock(&s.health);
        Status {
            backend: "redis",
            node_id: s.cfg.node_id.clone(),
            connected: health.up,
            outage_secs: (!health.up).then(|| health.since.elapsed().as_secs()),
            pending_writes: lock(&s.outbox).ops.len(),
        }
    }

    fn ban(&self, ip: IpAddr, duration: Duration) {
        let now = Instant::now();
        let until = now.checked_add(duration).unwrap_or(now + Duration::from_millis(MAX_TTL_MS));
        self.shared.write(|local| local.ban(ip, duration, now), Op::Ban { ip, until });
    }

    fn unban(&self, ip: IpAddr) -> bool {
        let mut known = false;
        self.shared.write(|local| known = local.unban(ip, Instant::now()), Op::Unban { ip });
        known
    }

    fn is_banned(&self, ip: IpAddr) -> bool {
        self.shared.local.is_banned(ip, Instant::now())
    }

    fn revoke_session(&self, session_id: &str) {
        self.shared.write(|_| {}, Op::RevokeSession { id: session_id.to_owned() });
    }

    fn revoke_user(&self, user_id: &str) {
        self.shared.write(|_| {}, Op::RevokeUser { user_id: user_id.to_owned() });
    }

    fn revoke_tokens(&self, revocation: Revocation) -> Vec<String> {
        let (merged, ids) = self.shared.local.revoke(revocation, unix_now());
        self.shared.write(|_| {}, Op::RevokeTokens { revocation: merged });
        ids
    }

    fn is_revoked(&self, user_id: &str, token: &TokenFacts) -> bool {
        self.shared.local.is_revoked(user_id, token, unix_now())
    }

    fn revocations(&self) -> Vec<Revocation> {
        self.shared.local.revocations(unix_now())
    }

    fn open_session(
        &self,
        mut entry: SessionEntry,
        token: TokenFacts,
        max_per_user: usize,
    ) -> BoxFuture<'_, Admission> {
        Box::pin(async move {
            let s = &self.shared;
            entry.node = s.cfg.node_id.clone();
            let json = serde_json::to_string(&entry).unwrap_or_default();
            if !s.is_up() {
                // Never wait on a Redis known to be down; the heartbeat after it returns
                // publishes the session.
                s.local.add_session(entry, token);
                s.full_heartbeat.store(true, Ordering::Relaxed);
                return Admission::AdmittedUnchecked;
            }
            let mut con = s.con.clone();
            let mut inv = s.scripts.open.prepare_invoke();
            inv.key(s.keys.user(&entry.user_id))
                .key(&s.keys.node)
                .key(&s.keys.nodes)
                .arg(wire::user_member(&s.cfg.node_id, &entry.id))
                .arg(max_per_user)
                .arg(ttl_ms(s.cfg.ttl()))
                .arg(&entry.id)
                .arg(json)
                .arg(&s.cfg.node_id);
            // Added to the local map only after the check, so that a heartbeat running
            // meanwhile cannot register the session before the cap is checked.
            match s.call(inv.invoke_async::<i64>(&mut con)).await {
                Ok(1) => {
                    s.local.add_session(entry, token);
                    Admission::Admitted
                }
                Ok(_) => Admission::TooManySessions { max: max_per_user },
                Err(_) => {
                    s.local.add_session(entry, token);
                    s.full_heartbeat.store(true, Ordering::Relaxed);
                    Admission::AdmittedUnchecked
                }
            }
        })
    }

    fn close_session(&self, session_id: &str) {
        if let Some(entry) = self.shared.local.remove_session(session_id) {
            let op = Op::CloseSession { id: entry.id, user_id: entry.user_id };
            self.shared.write(|_| {}, op);
        }
    }

    fn sessions(&self) -> BoxFuture<'_, Result<Vec<SessionEntry>, ClusterError>> {
        Box::pin(async move {
            let s = &self.shared;
            if !s.is_up() {
                return Err(ClusterError::Unavailable("redis unreachable".into()));
            }
            let mut con = s.con.clone();
            let mut inv = s.scripts.list_sessions.prepare_invoke();
            inv.key(&s.keys.nodes).arg(format!("{}node:", s.keys.prefix));
            let raw: Vec<String> = s.call(inv.invoke_async(&mut con)).await?;
            let mut list: Vec<SessionEntry> =
                raw.iter().filter_map(|j| serde_json::from_str(j).ok()).collect();
            sort_sessions(&mut list);
            Ok(list)
        })
    }

    fn local_sessions(&self) -> Vec<SessionEntry> {
        self.shared.local.sessions()
    }

    fn publish(
        &self,
        user_id: String,
        data: String,
        delivered_here: usize,
    ) -> BoxFuture<'_, Result<PublishReport, ClusterError>> {
        Box::pin(async move {
            let s = &self.shared;
            let here_nodes = usize::from(delivered_here > 0);
            if !s.is_up() {
                s.metrics.published(delivered_here, here_nodes);
                return Err(ClusterError::Unavailable("redis unreachable".into()));
            }
            let id = format!("{:032x}", rand::random::<u128>());
            let (tx, mut rx) = mpsc::unbounded_channel();
            lock(&s.pending).insert(id.clone(), tx);
            let _cleanup = RemovePending { shared: s, id: id.clone() };
            let msg = s.envelope(Wire::Publish { id, user_id, data });
            let mut con = s.con.clone();
            let receivers: usize = match s
                .call(redis::cmd("PUBLISH").arg(&s.keys.events).arg(msg).query_async(&mut con))
                .await
            {
                Ok(n) => n,
                Err(e) => {
                    s.metrics.published(delivered_here, here_nodes);
                    return Err(e);
                }
            };
            // This node is subscribed too, and ignores its own message.
            let mut report = PublishReport {
                nodes_listening: receivers.saturating_sub(1),
                ..Default::default()
            };
            let deadline = tokio::time::Instant::now() + s.reply_wait();
            while report.nodes_answered < report.nodes_listening {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(reply)) => {
                        report.nodes_answered += 1;
                        report.sessions += reply.delivered;
                        report.nodes_delivered += usize::from(reply.delivered > 0);
                    }
                    _ => break,
                }
            }
            s.metrics
                .published(delivered_here + report.sessions, here_nodes + report.nodes_delivered);
            Ok(report)
        })
    }

    fn channel_store(&self, settings: ChannelSettings) -> Option<Arc<dyn ChannelStore>> {
        Some(Arc::new(channels::RedisChannels { shared: self.shared.clone(), settings }))
    }

    fn encode_metrics(&self) -> String {
        let s = &self.shared;
        s.metrics.redis_up.set(i64::from(s.is_up()));
        s.metrics.pending_writes.set(lock(&s.outbox).ops.len() as i64);
        s.metrics.encode()
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let s = &self.shared;
            s.stop.send_replace(true);
            if !s.is_up() {
                return;
            }
            let deadline = s.cfg.command_timeout * 4;
            let _ = tokio::time::timeout(deadline, async {
                let _maint = s.maint.lock().await;
                if s.flush().await.is_ok() {
                    let mut con = s.con.clone();
                    let mut pipe = redis::pipe();
                    pipe.cmd("DEL").arg(&s.keys.node).ignore();
                    pipe.cmd("ZREM").arg(&s.keys.nodes).arg(&s.cfg.node_id).ignore();
                    let _ = s.call(pipe.query_async::<()>(&mut con)).await;
                }
            })
            .await;
        })
    }
}

/// Where a [`DeliveryReply`] goes: the publishing node's reply channel.
pub(crate) struct ReplyTo {
    shared: Weak<Shared>,
    to: String,
    id: String,
}

impl ReplyTo {
    pub(crate) fn send(self, delivered: usize) {
        if let Some(s) = self.shared.upgrade() {
            s.metrics.delivered_for_others.inc_by(delivered as u64);
            // A late answer is useless to the publisher, which waits only briefly.
            if s.is_up() {
                s.write(|_| {}, Op::Reply { to: self.to, id: self.id, delivered });
            }
        }
    }
}

impl fmt::Debug for ReplyTo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplyTo").field("to", &self.to).field("id", &self.id).finish()
    }
}

/// A write waiting to be sent.
#[derive(Clone, Debug)]
enum Op {
    Ban { ip: IpAddr, until: Instant },
    Unban { ip: IpAddr },
    RevokeSession { id: String },
    RevokeUser { user_id: String },
    RevokeTokens { revocation: Revocation },
    CloseSession { id: String, user_id: String },
    Reply { to: String, id: String, delivered: usize },
}

#[derive(Default)]
struct Outbox {
    ops: VecDeque<(u64, Op)>,
    next: u64,
    overflow_logged: bool,
}

struct Health {
    up: bool,
    /// Since when `up` has been false.
    since: Instant,
    /// Whether this outage has been logged (the first contact failing counts as one).
    logged: bool,
}

/// State of the writer, one at a time.
#[derive(Default)]
struct Maint {
    last_heartbeat: Option<Instant>,
    last_sync: Option<Instant>,
    last_ping: Option<Instant>,
    /// Redis's `run_id`: a new one means Redis restarted and may have lost everything.
    run_id: Option<String>,
}

struct Scripts {
    open: Script,
    heartbeat: Script,
    list_sessions: Script,
    list_bans: Script,
    list_revocations: Script,
    channels: channels::ChannelScripts,
}

impl Scripts {
    fn new() -> Scripts {
        Scripts {
            open: Script::new(&wire::open_session_script()),
            heartbeat: Script::new(&wire::heartbeat_script()),
            list_sessions: Script::new(&wire::list_sessions_script()),
            list_bans: Script::new(wire::LIST_BANS),
            list_revocations: Script::new(wire::LIST_REVOCATIONS),
            channels: channels::ChannelScripts::new(),
        }
    }
}

struct Shared {
    cfg: RedisConfig,
    redacted_url: String,
    keys: Keys,
    con: ConnectionManager,
    local: Local,
    metrics: ClusterMetrics,
    events: mpsc::Sender<Event>,
    /// Also serialises changes to the ban and revocation cache with the sync that replaces it.
    outbox: Mutex<Outbox>,
    wake: Notify,
    health: Mutex<Health>,
    /// Bumped on every change to the cache, so that a sync racing with one does not undo it.
    generation: AtomicU64,
    /// A disconnect was seen (or nothing was loaded yet): reload everything at the next tick.
    catch_up: AtomicBool,
    /// Rewrite this node's session hash at the next heartbeat.
    full_heartbeat: AtomicBool,
    /// Publishes waiting for answers, by id.
    pending: Mutex<HashMap<String, mpsc::UnboundedSender<Reply>>>,
    stop: watch::Sender<bool>,
    maint: tokio::sync::Mutex<Maint>,
    scripts: Scripts,
    last_command_error: Mutex<Option<Instant>>,
    /// Where channel publications go ([`ChannelStore::set_sink`]).
    channel_sink: Mutex<Option<Sink>>,
    /// A disconnect was seen: channels may have missed publications ([`Remote::Resync`]).
    channel_resync: AtomicBool,
}

impl Shared {
    fn is_up(&self) -> bool {
        lock(&self.health).up
    }

    fn reply_wait(&self) -> Duration {
        (self.cfg.command_timeout * 4).max(Duration::from_millis(200))
    }

    fn envelope(&self, msg: Wire) -> String {
        let env = Envelope { origin: self.cfg.node_id.clone(), msg };
        // Plain data: serialising cannot fail.
        serde_json::to_string(&env).unwrap_or_default()
    }

    /// Changes the cache and queues the write, as one step with respect to the sync.
    fn write(&self, change: impl FnOnce(&Local), op: Op) {
        {
            let mut outbox = lock(&self.outbox);
            change(&self.local);
            if outbox.ops.len() >= MAX_PENDING_WRITES {
                outbox.ops.pop_front();
                if !outbox.overflow_logged {
                    outbox.overflow_logged = true;
                    tracing::warn!(
                        kind = "cluster_backlog",
                        max = MAX_PENDING_WRITES,
                        "cluster: too many writes waiting for redis; dropping the oldest"
                    );
                }
            }
            let seq = outbox.next;
            outbox.next += 1;
            outbox.ops.push_back((seq, op));
            self.generation.fetch_add(1, Ordering::SeqCst);
        }
        self.wake.notify_one();
    }

    /// A change from another node, applied to the cache as one step with respect to the sync.
    fn apply_remote<T>(&self, change: impl FnOnce(&Local) -> T) -> T {
        let _outbox = lock(&self.outbox);
        let out = change(&self.local);
        self.generation.fetch_add(1, Ordering::SeqCst);
        out
    }

    fn emit(&self, event: Event) {
        if self.events.try_send(event).is_err() {
            self.metrics.events_dropped.inc();
        }
    }

    /// Runs one Redis call with the command timeout; records the round trip or the outage.
    async fn call<T>(
        &self,
        fut: impl Future<Output = Result<T, RedisError>>,
    ) -> Result<T, ClusterError> {
        let started = Instant::now();
        match tokio::time::timeout(self.cfg.command_timeout, fut).await {
            Ok(Ok(v)) => {
                self.metrics.rtt.observe(started.elapsed().as_secs_f64());
                Ok(v)
            }
            Ok(Err(e)) if is_outage(&e) => {
                self.outage(&e);
                Err(ClusterError::Unavailable(e.to_string()))
            }
            Ok(Err(e)) => {
                let mut last = lock(&self.last_command_error);
                if last.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                    *last = Some(Instant::now());
                    tracing::error!(kind = "cluster_command", redis = %self.redacted_url, error = %e, "cluster: redis command failed");
                }
                Err(ClusterError::Command(e))
            }
            Err(_) => {
                let why = format!("no answer within {} ms", self.cfg.command_timeout.as_millis());
                self.outage(&why);
                Err(ClusterError::Unavailable(why))
            }
        }
    }

    /// Marks Redis unreachable; logs once per outage.
    fn outage(&self, error: &dyn fmt::Display) {
        let mut h = lock(&self.health);
        if h.up {
            h.up = false;
            h.since = Instant::now();
        }
        if !h.logged {
            h.logged = true;
            self.metrics.outages.inc();
            self.metrics.redis_up.set(0);
            tracing::error!(kind = "cluster_outage", redis = %self.redacted_url, node = %self.cfg.node_id, error = %error, "cluster: redis unreachable; serving with the last known state until it returns");
        }
        self.catch_up.store(true, Ordering::SeqCst);
        self.channel_resync.store(true, Ordering::SeqCst);
    }

    fn mark_up(&self) {
        let mut h = lock(&self.health);
        if h.up {
            return;
        }
        let secs = h.since.elapsed().as_secs();
        if h.logged {
            tracing::info!(kind = "cluster_outage_end", redis = %self.redacted_url, node = %self.cfg.node_id, outage_secs = secs, "cluster: redis reachable again; state caught up");
        } else {
            tracing::info!(redis = %self.redacted_url, node = %self.cfg.node_id, "cluster: connected to redis");
        }
        *h = Health { up: true, since: Instant::now(), logged: false };
        self.metrics.redis_up.set(1);
        lock(&self.outbox).overflow_logged = false;
    }

    /// One round of the writer: catch up if needed, send queued writes, heartbeat, sync, ping.
    async fn maintenance(&self) {
        let mut m = self.maint.lock().await;
        if *self.stop.borrow() {
            return;
        }
        let now = Instant::now();
        if self.catch_up.swap(false, Ordering::SeqCst) || !self.is_up() {
            if let Err(e) = self.catch_up_now(&mut m).await {
                tracing::debug!(error = %e, "cluster: catching up failed; retrying");
                self.catch_up.store(true, Ordering::SeqCst);
            }
            return;
        }
        if self.flush().await.is_err() {
            return;
        }
        if due(m.last_heartbeat, self.cfg.heartbeat, now) {
            if self.heartbeat().await.is_err() {
                return;
            }
            m.last_heartbeat = Some(now);
        }
        if due(m.last_sync, self.cfg.heartbeat, now) {
            if self.sync().await.is_err() {
                return;
            }
            m.last_sync = Some(now);
        }
        if due(m.last_ping, TICK, now) {
            let mut con = self.con.clone();
            if self.call(redis::cmd("PING").query_async::<String>(&mut con)).await.is_ok() {
                m.last_ping = Some(now);
            }
        }
    }

    /// After a disconnect or an outage (or at start): subscribe, restore what a restarted
    /// Redis lost, send queued writes, rewrite this node's sessions, reload bans and
    /// revocations. Redis counts as up again only when all of it worked.
    async fn catch_up_now(&self, m: &mut Maint) -> Result<(), ClusterError> {
        let mut con = self.con.clone();
        let channels =
            vec![self.keys.events.clone(), self.keys.reply.clone(), self.keys.channels.clone()];
        self.call(con.subscribe(channels)).await?;
        let info: String =
            self.call(redis::cmd("INFO").arg("server").query_async(&mut con)).await?;
        let run_id =
            info.lines().find_map(|l| l.strip_prefix("run_id:")).map(|s| s.trim().to_owned());
        if m.run_id.is_some() && run_id != m.run_id {
            tracing::warn!(kind = "cluster_restart", redis = %self.redacted_url, "cluster: redis restarted; restoring the bans and revocations this node knows");
            self.restore().await?;
        }
        self.flush().await?;
        self.full_heartbeat.store(true, Ordering::SeqCst);
        self.heartbeat().await?;
        self.sync().await?;
        let now = Instant::now();
        m.run_id = run_id;
        m.last_heartbeat = Some(now);
        m.last_sync = Some(now);
        m.last_ping = Some(now);
        self.mark_up();
        if self.channel_resync.swap(false, Ordering::SeqCst) {
            self.to_sink(Remote::Resync);
        }
        Ok(())
    }

    /// Writes back the bans and revocations this node knows (Redis lost them in a restart).
    async fn restore(&self) -> Result<(), ClusterError> {
        let mut pipe = redis::pipe();
        for (ip, left) in self.local.bans(Instant::now()) {
            pipe.cmd("SET").arg(self.keys.ban(ip)).arg(self.ban_value()).arg("PX");
            pipe.arg(ttl_ms(left)).ignore();
            pipe.cmd("SADD").arg(&self.keys.bans).arg(ip.to_string()).ignore();
        }
        let now = unix_now();
        for r in self.local.revocations(now) {
            self.revocation_cmds(&mut pipe, &r, now);
        }
        if pipe.cmd_iter().next().is_none() {
            // Nothing to restore (redis-rs refuses an empty pipeline).
            return Ok(());
        }
        let mut con = self.con.clone();
        self.call(pipe.query_async::<()>(&mut con)).await
    }

    fn ban_value(&self) -> String {
        serde_json::json!({ "node": self.cfg.node_id }).to_string()
    }

    fn revocation_cmds(&self, pipe: &mut redis::Pipeline, r: &Revocation, now_unix: u64) {
        let left_ms = r.until().saturating_sub(now_unix).saturating_mul(1000).min(MAX_TTL_MS);
        if left_ms == 0 {
            return;
        }
        let key = revocation_key(r);
        let json = serde_json::to_string(r).unwrap_or_default();
        pipe.cmd("SET").arg(self.keys.revoked(&key)).arg(json).arg("PX").arg(left_ms).ignore();
        pipe.cmd("SADD").arg(&self.keys.revocations).arg(key).ignore();
    }

    /// Sends queued writes in order; stops at the first failure (the write stays queued).
    async fn flush(&self) -> Result<(), ClusterError> {
        loop {
            let next = lock(&self.outbox).ops.front().cloned();
            let Some((seq, op)) = next else { return Ok(()) };
            self.send(&op).await?;
            let mut outbox = lock(&self.outbox);
            if outbox.ops.front().is_some_and(|(s, _)| *s == seq) {
                outbox.ops.pop_front();
            }
        }
    }

    async fn send(&self, op: &Op) -> Result<(), ClusterError> {
        let k = &self.keys;
        let mut pipe = redis::pipe();
        match op {
            Op::Ban { ip, until } => {
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Ok(());
                }
                let ms = ttl_ms(left);
                pipe.cmd("SET").arg(k.ban(*ip)).arg(self.ban_value()).arg("PX").arg(ms).ignore();
                pipe.cmd("SADD").arg(&k.bans).arg(ip.to_string()).ignore();
                self.publish_cmd(&mut pipe, Wire::Ban { ip: *ip, ms });
            }
            Op::Unban { ip } => {
                pipe.cmd("DEL").arg(k.ban(*ip)).ignore();
                pipe.cmd("SREM").arg(&k.bans).arg(ip.to_string()).ignore();
                self.publish_cmd(&mut pipe, Wire::Unban { ip: *ip });
            }
            Op::RevokeSession { id } => {
                self.publish_cmd(&mut pipe, Wire::RevokeSession { id: id.clone() });
            }
            Op::RevokeUser { user_id } => {
                self.publish_cmd(&mut pipe, Wire::RevokeUser { user_id: user_id.clone() });
            }
            Op::RevokeTokens { revocation } => {
                self.revocation_cmds(&mut pipe, revocation, unix_now());
                let msg = Wire::RevokeTokens { revocation: revocation.clone() };
                self.publish_cmd(&mut pipe, msg);
            }
            Op::CloseSession { id, user_id } => {
                let member = wire::user_member(&self.cfg.node_id, id);
                pipe.cmd("ZREM").arg(k.user(user_id)).arg(member).ignore();
                pipe.cmd("HDEL").arg(&k.node).arg(id).ignore();
            }
            Op::Reply { to, id, delivered } => {
                let reply =
                    Reply { id: id.clone(), node: self.cfg.node_id.clone(), delivered: *delivered };
                let json = serde_json::to_string(&reply).unwrap_or_default();
                pipe.cmd("PUBLISH").arg(k.reply_to(to)).arg(json).ignore();
            }
        }
        let mut con = self.con.clone();
        self.call(pipe.query_async::<()>(&mut con)).await
    }

    fn publish_cmd(&self, pipe: &mut redis::Pipeline, msg: Wire) {
        pipe.cmd("PUBLISH").arg(&self.keys.events).arg(self.envelope(msg)).ignore();
    }

    /// Keeps this node's sessions alive for another TTL (rewriting them all when asked to).
    async fn heartbeat(&self) -> Result<(), ClusterError> {
        let full = self.full_heartbeat.swap(false, Ordering::SeqCst);
        match self.heartbeat_once(full).await {
            Ok(-1) => {
                // The hash is missing (Redis restarted, the TTL ran out) or out of step with
                // this node's sessions: write it all.
                self.heartbeat_once(true).await.map(|_| ())
            }
            Ok(_) => Ok(()),
            Err(e) => {
                if full {
                    self.full_heartbeat.store(true, Ordering::SeqCst);
                }
                Err(e)
            }
        }
    }

    async fn heartbeat_once(&self, full: bool) -> Result<i64, ClusterError> {
        let sessions = self.local.sessions();
        let mut inv = self.scripts.heartbeat.prepare_invoke();
        inv.key(&self.keys.node)
            .key(&self.keys.nodes)
            .arg(ttl_ms(self.cfg.ttl()))
            .arg(&self.cfg.node_id)
            .arg(&self.keys.prefix)
            .arg(if full { "1" } else { "0" })
            .arg(sessions.len());
        for s in &sessions {
            let json =
                if full { serde_json::to_string(s).unwrap_or_default() } else { String::new() };
            inv.arg(&s.id).arg(&s.user_id).arg(json);
        }
        let mut con = self.con.clone();
        self.call(inv.invoke_async::<i64>(&mut con)).await
    }

    /// Replaces the ban and revocation cache with what Redis holds, and tells the server
    /// what changed. Skipped when the cache changed meanwhile (the next sync retries).
    async fn sync(&self) -> Result<(), ClusterError> {
        let before = self.generation.load(Ordering::SeqCst);
        let mut con = self.con.clone();
        let mut inv = self.scripts.list_bans.prepare_invoke();
        inv.key(&self.keys.bans).arg(format!("{}ban:", self.keys.prefix));
        let flat: Vec<String> = self.call(inv.invoke_async(&mut con)).await?;
        let mut inv = self.scripts.list_revocations.prepare_invoke();
        inv.key(&self.keys.revocations).arg(format!("{}revoked:", self.keys.prefix));
        let revs: Vec<String> = self.call(inv.invoke_async(&mut con)).await?;

        let bans: Vec<(IpAddr, Duration)> = flat
            .chunks_exact(2)
            .filter_map(|pair| {
                let ip = pair[0].parse().ok()?;
                let ms: i64 = pair[1].parse().ok()?;
                // -1: a key without expiry (not written by Palisade): treat it as long-lived.
                let ms = if ms < 0 { MAX_TTL_MS } else { ms.unsigned_abs() };
                Some((ip, Duration::from_millis(ms)))
            })
            .collect();
        let revs: Vec<Revocation> =
            revs.iter().filter_map(|j| serde_json::from_str(j).ok()).collect();

        let outbox = lock(&self.outbox);
        if !outbox.ops.is_empty() || self.generation.load(Ordering::SeqCst) != before {
            return Ok(());
        }
        let now = Instant::now();
        let (added, removed) = self.local.replace_bans(&bans, now);
        let closing = self.local.replace_revocations(revs, unix_now());
        drop(outbox);
        for (ip, remaining) in added {
            self.emit(Event::Ban { ip, remaining });
        }
        for ip in removed {
            self.emit(Event::Unban { ip });
        }
        if !closing.is_empty() {
            self.emit(Event::CloseSessions { session_ids: closing });
        }
        Ok(())
    }

    /// A pub/sub message.
    fn on_message(self: &Arc<Self>, channel: &str, payload: &str) {
        if channel == self.keys.reply {
            if let Ok(reply) = serde_json::from_str::<Reply>(payload)
                && let Some(tx) = lock(&self.pending).get(&reply.id)
            {
                let _ = tx.send(reply);
            }
            return;
        }
        if channel == self.keys.channels {
            self.on_channel_message(payload);
            return;
        }
        if channel != self.keys.events {
            return;
        }
        let Ok(env) = serde_json::from_str::<Envelope>(payload) else {
            tracing::warn!(
                kind = "cluster_message",
                channel,
                "cluster: ignoring a malformed message"
            );
            return;
        };
        if env.origin == self.cfg.node_id {
            return;
        }
        self.metrics.events_received.inc();
        match env.msg {
            Wire::Ban { ip, ms } => {
                let remaining = Duration::from_millis(ms);
                self.apply_remote(|l| l.ban(ip, remaining, Instant::now()));
                self.emit(Event::Ban { ip, remaining });
            }
            Wire::Unban { ip } => {
                self.apply_remote(|l| l.unban(ip, Instant::now()));
                self.emit(Event::Unban { ip });
            }
            Wire::RevokeSession { id } => {
                if self.local.has_session(&id) {
                    self.emit(Event::RevokeSession { session_id: id });
                }
            }
            Wire::RevokeUser { user_id } => {
                if self.local.sessions_of(&user_id) > 0 {
                    self.emit(Event::RevokeUser { user_id });
                }
            }
            Wire::RevokeTokens { revocation } => {
                let (_, ids) = self.apply_remote(|l| l.revoke(revocation, unix_now()));
                if !ids.is_empty() {
                    self.emit(Event::CloseSessions { session_ids: ids });
                }
            }
            Wire::Publish { id, user_id, data } => {
                let reply = ReplyTo { shared: Arc::downgrade(self), to: env.origin, id };
                if self.local.sessions_of(&user_id) == 0 {
                    reply.send(0);
                } else {
                    let reply = DeliveryReply { inner: Some(reply) };
                    self.emit(Event::Publish { user_id, data, reply });
                }
            }
        }
    }
}

/// Removes a publish's entry from the pending map, however the publish ends.
struct RemovePending<'a> {
    shared: &'a Shared,
    id: String,
}

impl Drop for RemovePending<'_> {
    fn drop(&mut self) {
        lock(&self.shared.pending).remove(&self.id);
    }
}

async fn reader(shared: Arc<Shared>, mut rx: mpsc::Receiver<PushInfo>) {
    let mut stop = shared.stop.subscribe();
    loop {
        let info = tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            info = rx.recv() => match info {
                Some(info) => info,
                None => break,
            },
        };
        match info.kind {
            PushKind::Message => {
                let text = |v: &redis::Value| redis::from_redis_value_ref::<String>(v).ok();
                if let [channel, payload] = info.data.as_slice()
                    && let (Some(channel), Some(payload)) = (text(channel), text(payload))
                {
                    shared.on_message(&channel, &payload);
                }
            }
            PushKind::Disconnection => {
                // Messages may have been missed: reload everything once reconnected.
                shared.catch_up.store(true, Ordering::SeqCst);
                shared.channel_resync.store(true, Ordering::SeqCst);
                shared.wake.notify_one();
            }
            _ => {}
        }
    }
}

async fn writer(shared: Arc<Shared>) {
    let mut stop = shared.stop.subscribe();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            _ = tick.tick() => {}
            _ = shared.wake.notified() => {}
        }
        shared.maintenance().await;
    }
}

/// Errors that mean "Redis is not there" rather than "this command is wrong".
fn is_outage(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || matches!(
            e.kind(),
            ErrorKind::Io
                | ErrorKind::Client
                | ErrorKind::AuthenticationFailed
                | ErrorKind::Server(
                    ServerErrorKind::BusyLoading
                        | ServerErrorKind::TryAgain
                        | ServerErrorKind::ClusterDown
                        | ServerErrorKind::MasterDown
                        | ServerErrorKind::ReadOnly
                )
        )
}

fn due(last: Option<Instant>, every: Duration, now: Instant) -> bool {
    last.is_none_or(|t| now.saturating_duration_since(t) >= every)
}

fn ttl_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).clamp(1, MAX_TTL_MS)
}

/// rustls needs one process-wide crypto provider for `rediss://`; use ring unless the
/// application installed one.
fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing the race to another installer is fine: a provider is then installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// Locks `mutex`, ignoring poisoning: every critical section leaves the state consistent.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests;
