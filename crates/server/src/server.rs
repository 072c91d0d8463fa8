//! Composition: build the token codec, firewall and metrics from the configuration, bind the
//! listeners, run them, and shut down gracefully.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use palisade_firewall::{Firewall, FirewallConfig};
use palisade_metrics::Metrics;
use palisade_token::{Algorithm, Key, TokenCodec, TokenConfig};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::app::Handler;
use crate::audit::Audit;
use crate::config::Config;
use crate::endpoints::{Kind, State, WsEndpoint, v1};
use crate::sessions::SessionRegistry;
use crate::tls::listener::TlsListener;
use crate::tls::{CertInfo, CertStore};
use crate::{admin, config, tls};

/// A running server: its bound addresses and the handles to stop it.
pub struct Server {
    /// The echo endpoint's address, when enabled.
    pub echo_addr: Option<SocketAddr>,
    /// The secure endpoint's address, when enabled.
    pub secure_addr: Option<SocketAddr>,
    /// The admin listener's address, when enabled.
    pub admin_addr: Option<SocketAddr>,
    /// The session registry (push to users, revoke sessions).
    pub sessions: SessionRegistry,
    /// The firewall (bans, counts).
    pub firewall: Firewall,
    /// Traffic counters.
    pub metrics: Metrics,
    tls: Option<Arc<CertStore>>,
    audit: Audit,
    /// State shared with the other nodes (in memory when `cluster.redis_url` is unset).
    pub cluster: Arc<dyn palisade_cluster::SharedState>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    /// The admin listener outlives the shutdown token: it answers (`/readyz` 503) until the
    /// drain is over, except after an upgrade, when the successor answers on its socket.
    admin_stop: CancellationToken,
    admin_tracker: TaskTracker,
    drain: Duration,
    reloader: Arc<crate::reload::Reloader>,
    handover: Arc<crate::upgrade::Handover>,
    drain_spread: Arc<palisade_transport::Drain>,
}

impl Server {
    /// Builds everything from `config`, binds every enabled listener and starts serving.
    /// Errors name what is wrong (key, file, address) and what to do.
    pub async fn start<H: Handler>(config: &Config, app: H) -> anyhow::Result<Server> {
        let sessions = SessionRegistry::new(config.secure.max_sessions_per_user);
        Server::start_with_sessions(config, app, sessions).await
    }

    /// Like [`Server::start`], with a session registry the application already holds (so its
    /// handler can push to sessions, e.g. a chat broadcast).
    pub async fn start_with_sessions<H: Handler>(
        config: &Config,
        app: H,
        sessions: SessionRegistry,
    ) -> anyhow::Result<Server> {
        check_and_warn(config)?;
        let (parts, cluster_events) = Parts::build(config, app, sessions).await?;
        let (cert_store, transport) = transport_config(config)?;
        let tasks = Tasks::new();
        let reloader = Arc::new(crate::reload::Reloader::new(
            config,
            parts.firewall.clone(),
            cert_store.clone(),
            parts.audit.clone(),
        ));
        // Duplicates of the listening sockets, handed to the successor of an upgrade.
        let handover = Arc::new(crate::upgrade::Handover::new(Duration::from_secs(30)));
        crate::cluster::spawn_events(
            cluster_events,
            parts.sessions.clone(),
            parts.firewall.clone(),
            parts.metrics.clone(),
            tasks.shutdown.clone(),
            &tasks.tracker,
        );
        let [echo_addr, secure_addr] =
            serve_endpoints(config, &parts.state, &transport, &handover, &tasks).await?;
        let admin_addr = match config.admin.enabled {
            true => {
                let (listener, addr) = bind_admin(config, &handover).await?;
                let token = admin_token(config)?;
                let state = admin_state(config, &parts, token, &reloader, &handover, &tasks);
                serve_admin(config, listener, state, transport.tls.clone(), &tasks)?;
                Some(addr)
            }
            false => None,
        };
        spawn_pruning(&parts.firewall, &parts.metrics, &tasks);
        spawn_channel_sweep(&parts.state.channels, &tasks);
        spawn_channel_presence(
            &parts.state.channels,
            Duration::from_secs(config.cluster.heartbeat_secs),
            &tasks,
        );
        Ok(Server {
            echo_addr,
            secure_addr,
            admin_addr,
            sessions: parts.sessions,
            firewall: parts.firewall,
            metrics: parts.metrics,
            tls: cert_store,
            audit: parts.audit,
            cluster: parts.cluster.state,
            shutdown: tasks.shutdown,
            tracker: tasks.tracker,
            admin_stop: tasks.admin_stop,
            admin_tracker: tasks.admin_tracker,
            drain: Duration::from_secs(config.limits.drain_timeout_secs),
            reloader,
            handover,
            drain_spread: transport.drain.clone(),
        })
    }

    /// Stops accepting and drains: open connections are closed spread over the first half of
    /// `limits.drain_timeout_secs` (1012 to `palisade.v1` clients after an upgrade, 1001
    /// otherwise; see docs/deployment.md), then waits for them up to the drain timeout. Returns
    /// false when some connections were still open at the deadline.
    ///
    /// During a shutdown drain the admin API keeps answering (`/readyz` 503, `/healthz` 200)
    /// until the connections are gone; after an upgrade it stops at once, since the successor
    /// answers on the same socket.
    pub async fn shutdown(self) -> bool {
        let restart = self.handover.done().is_cancelled();
        self.drain_spread.begin(self.drain / 2, restart);
        self.shutdown.cancel();
        if restart {
            self.admin_stop.cancel();
        }
        self.tracker.close();
        let drained = tokio::time::timeout(self.drain, self.tracker.wait()).await.is_ok();
        self.admin_stop.cancel();
        self.admin_tracker.close();
        // Admin calls in flight (a dashboard feed) get a moment to end; nothing waits on them.
        let _ = tokio::time::timeout(Duration::from_secs(2), self.admin_tracker.wait()).await;
        self.cluster.shutdown().await;
        // After the sessions have ended, so their records are in; logs the final head.
        self.audit.close();
        drained
    }

    /// True when the endpoints speak TLS (`wss://`).
    pub fn tls_enabled(&self) -> bool {
        self.tls.is_some()
    }

    /// Reads the TLS certificate and key files again (on SIGHUP). New handshakes get the new
    /// certificate; open connections are not touched. On error the current certificate stays
    /// in use. `Ok(None)` when TLS is off.
    pub fn reload_tls(&self) -> anyhow::Result<Option<CertInfo>> {
        let Some(store) = &self.tls else { return Ok(None) };
        store.reload().map(Some)
    }

    /// The certificate being served, when TLS is on.
    pub fn tls_certificate(&self) -> Option<CertInfo> {
        self.tls.as_ref().map(|s| s.info())
    }

    /// Reads the configuration file again and applies what can change live (see
    /// docs/configuration.md); a bad file is refused whole and the running configuration stays.
    pub fn reload(&self) -> Result<crate::reload::ReloadReport, crate::reload::ReloadError> {
        self.reloader.reload()
    }

    /// Lets [`Server::reload`] change the console log level.
    pub fn set_log_level_handle(&self, handle: palisade_errlog::LevelHandle) {
        self.reloader.set_log_level_handle(handle);
    }

    /// Starts the new binary with the listening sockets (docs/deployment.md) and waits until
    /// it serves; then [`Server::handed_over`] is cancelled and the caller should
    /// [`Server::shutdown`]. On error this server serves on.
    pub async fn upgrade(&self) -> anyhow::Result<u32> {
        self.handover.upgrade().await
    }

    /// Cancelled once an upgrade's successor serves (from `SIGUSR2` or `POST /upgrade`).
    pub fn handed_over(&self) -> CancellationToken {
        self.handover.done()
    }

    /// A token that is cancelled when shutdown begins.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }
}

/// Validates the configuration and logs what weakens its security posture.
fn check_and_warn(config: &Config) -> anyhow::Result<()> {
    config.validate()?;
    for finding in crate::posture::findings(config) {
        tracing::warn!(key = finding.key, "security posture: {}", finding.why);
    }
    Ok(())
}

/// What the endpoints and the admin API share, built from the configuration.
struct Parts<H> {
    state: Arc<State<H>>,
    sessions: SessionRegistry,
    firewall: Firewall,
    metrics: Metrics,
    audit: Audit,
    cluster: crate::cluster::Link,
}

/// Other nodes' events, to be applied by `cluster::spawn_events`.
type ClusterEvents = tokio::sync::mpsc::Receiver<palisade_cluster::Event>;

impl<H: Handler> Parts<H> {
    /// Builds the verifier, firewall, metrics, audit trail, cluster link and channels, and the
    /// endpoints' shared state over them.
    async fn build(
        config: &Config,
        app: H,
        sessions: SessionRegistry,
    ) -> anyhow::Result<(Parts<H>, ClusterEvents)> {
        let codec = match config.secure.enabled {
            true => Some(crate::issuers::verifier(&config.auth).await?),
            false => None,
        };
        let firewall =
            Firewall::new(firewall_config(config)?).context("invalid [firewall] section")?;
        let metrics = Metrics::new();
        let audit = Audit::open(&config.audit)?;
        let (cluster, cluster_events) = crate::cluster::start(config).await?;
        let (channel_hub, channel_policy) = crate::channels::build(config, &*cluster.state);
        let state = Arc::new(State::new(
            Arc::new(app),
            codec,
            sessions.clone(),
            firewall.clone(),
            metrics.clone(),
            &config.echo.prefix,
            Duration::from_secs(config.secure.auth_timeout_secs),
            audit.clone(),
            cluster.clone(),
            channel_hub,
            channel_policy,
        ));
        Ok((Parts { state, sessions, firewall, metrics, audit, cluster }, cluster_events))
    }
}

/// The certificate store (when TLS is configured) and the transport settings using it.
fn transport_config(
    config: &Config,
) -> anyhow::Result<(Option<Arc<CertStore>>, Arc<palisade_transport::TransportConfig>)> {
    let cert_store = match config.tls_paths() {
        Some(paths) => Some(load_tls(paths)?),
        None => None,
    };
    let mut transport = config.transport();
    transport.tls = cert_store.clone().map(tls::server_config).transpose()?;
    Ok((cert_store, Arc::new(transport)))
}

/// The tokens and trackers that stop and wait for the server's tasks.
struct Tasks {
    shutdown: CancellationToken,
    tracker: TaskTracker,
    /// The admin listener outlives `shutdown` (see [`Server::shutdown`]).
    admin_stop: CancellationToken,
    admin_tracker: TaskTracker,
}

impl Tasks {
    fn new() -> Tasks {
        Tasks {
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
            admin_stop: CancellationToken::new(),
            admin_tracker: TaskTracker::new(),
        }
    }
}

/// Binds and serves the enabled WebSocket endpoints; returns the echo and secure addresses.
async fn serve_endpoints<H: Handler>(
    config: &Config,
    state: &Arc<State<H>>,
    transport: &Arc<palisade_transport::TransportConfig>,
    handover: &crate::upgrade::Handover,
    tasks: &Tasks,
) -> anyhow::Result<[Option<SocketAddr>; 2]> {
    let mut addrs = [None, None];
    for (slot, (kind, enabled, listen)) in addrs.iter_mut().zip([
        (Kind::Echo, config.echo.enabled, config.echo.listen),
        (Kind::Secure, config.secure.enabled, config.secure.listen),
    ]) {
        if !enabled {
            continue;
        }
        let listener = bind(listen, &format!("{}.listen", kind.name()), kind.name()).await?;
        *slot = Some(listener.local_addr()?);
        handover.add(kind.name(), dup_fd(&listener)?);
        let endpoint = Arc::new(WsEndpoint {
            kind,
            state: state.clone(),
            metrics: state.metrics.endpoint(kind.name()),
            v1: v1::Settings::from_config(config),
        });
        let serve = palisade_transport::serve(
            listener,
            kind.name(),
            endpoint,
            transport.clone(),
            tasks.shutdown.clone(),
            tasks.tracker.clone(),
        );
        tasks.tracker.spawn(serve);
    }
    Ok(addrs)
}

/// The admin bearer token from `admin.token_file`, if set (at least 16 bytes).
fn admin_token(config: &Config) -> anyhow::Result<Option<Vec<u8>>> {
    let Some(path) = &config.admin.token_file else { return Ok(None) };
    let token = read_secret(path, "admin.token_file")?;
    if token.len() < 16 {
        bail!(
            "admin.token_file {} holds {} bytes: use at least 16 random bytes \
             (e.g. `openssl rand -hex 32 > {}`)",
            path.display(),
            token.len(),
            path.display()
        );
    }
    Ok(Some(token))
}

/// Binds the admin listener (or takes the inherited one) and offers it to an upgrade.
async fn bind_admin(
    config: &Config,
    handover: &crate::upgrade::Handover,
) -> anyhow::Result<(TcpListener, SocketAddr)> {
    let listener = bind(config.admin.listen, "admin.listen", "admin").await?;
    let addr = listener.local_addr()?;
    handover.add("admin", dup_fd(&listener)?);
    Ok((listener, addr))
}

/// What the admin API's handlers reach.
fn admin_state<H>(
    config: &Config,
    parts: &Parts<H>,
    token: Option<Vec<u8>>,
    reloader: &Arc<crate::reload::Reloader>,
    handover: &Arc<crate::upgrade::Handover>,
    tasks: &Tasks,
) -> admin::AdminState {
    admin::AdminState {
        sessions: parts.sessions.clone(),
        firewall: parts.firewall.clone(),
        metrics: parts.metrics.clone(),
        token: token.map(Arc::new),
        ban_duration: Duration::from_secs(config.firewall.ban_secs),
        posture: Arc::new(crate::posture::findings(config)),
        shutdown: tasks.shutdown.clone(),
        audit: parts.audit.clone(),
        cluster: parts.cluster.clone(),
        issuers: parts.state.codec.clone().filter(|v| !v.status().is_empty()),
        reloader: reloader.clone(),
        handover: handover.clone(),
        channels: parts.state.channels.clone(),
    }
}

/// Serves the admin API on `listener` (over TLS with `admin.tls`) until `admin_stop`.
fn serve_admin(
    config: &Config,
    listener: TcpListener,
    admin_state: admin::AdminState,
    tls_config: Option<Arc<rustls::ServerConfig>>,
    tasks: &Tasks,
) -> anyhow::Result<()> {
    let stop = tasks.admin_stop.clone();
    match tls_config.filter(|_| config.admin.tls) {
        Some(tls) => {
            let timeout = Duration::from_secs(config.limits.handshake_timeout_secs);
            let listener =
                TlsListener::new(listener, tls, timeout, stop.clone(), &tasks.admin_tracker)?;
            tasks.admin_tracker.spawn(admin::serve(listener, admin_state, stop));
        }
        None => {
            tasks.admin_tracker.spawn(admin::serve(listener, admin_state, stop));
        }
    }
    Ok(())
}

/// Per-IP state expires; prunes it in the background so memory stays bounded.
fn spawn_pruning(firewall: &Firewall, metrics: &Metrics, tasks: &Tasks) {
    let (fw, stop, m) = (firewall.clone(), tasks.shutdown.clone(), metrics.clone());
    tasks.tracker.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {
                    let now = Instant::now();
                    fw.prune(now);
                    m.set_bans_active(fw.bans(now).len() as i64);
                }
            }
        }
    });
}

/// Channel history older than `channels.history_ttl_secs` is also dropped when its channel is
/// next used; this sweep returns it for idle channels too, at most one TTL (capped to 1 to 10 s)
/// after it expired. No task without a TTL or without history.
fn spawn_channel_sweep(hub: &Arc<crate::channels::Hub>, tasks: &Tasks) {
    let Some(ttl) = hub.settings.history_ttl.filter(|_| hub.settings.history_size > 0) else {
        return;
    };
    let (hub, stop) = (hub.clone(), tasks.shutdown.clone());
    tasks.tracker.spawn(async move {
        let mut tick = tokio::time::interval(channel_sweep_period(ttl));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {
                    let freed = hub.sweep(Instant::now());
                    if freed > 0 {
                        tracing::debug!(bytes = freed, "expired channel history swept");
                    }
                }
            }
        }
    });
}

/// Cluster mode: keeps this node's channel subscriptions in the cluster's presence lists, once
/// per `cluster.heartbeat_secs` (entries of a node that stops expire three heartbeats later).
fn spawn_channel_presence(hub: &Arc<crate::channels::Hub>, every: Duration, tasks: &Tasks) {
    if !hub.is_clustered() {
        return;
    }
    let (hub, stop) = (hub.clone(), tasks.shutdown.clone());
    tasks.tracker.spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {
                    if let Err(e) = hub.touch_presence().await {
                        tracing::debug!(error = %e.0, "channel presence not refreshed; retrying at the next heartbeat");
                    }
                }
            }
        }
    });
}

/// How often [`spawn_channel_sweep`] runs for a history TTL.
fn channel_sweep_period(ttl: Duration) -> Duration {
    ttl.clamp(Duration::from_secs(1), Duration::from_secs(10))
}

/// The listener handed over by socket activation or an upgrade (named `name`), else a new one.
async fn bind(addr: SocketAddr, key: &str, name: &str) -> anyhow::Result<TcpListener> {
    if let Some(inherited) = crate::upgrade::take_inherited(name) {
        return TcpListener::from_std(inherited)
            .with_context(|| format!("cannot use the inherited {name} socket ({key})"));
    }
    TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen on {addr} ({key}): is another process using it? choose another port in the config")
    })
}

fn dup_fd(listener: &TcpListener) -> anyhow::Result<std::os::fd::OwnedFd> {
    use std::os::fd::AsFd as _;
    listener.as_fd().try_clone_to_owned().context("cannot duplicate a listening socket")
}

/// Loads the certificate and key (errors name the file), logs what is served and warns about
/// validity.
fn load_tls(paths: tls::CertPaths) -> anyhow::Result<Arc<CertStore>> {
    let store = CertStore::load(paths)?;
    let info = store.info();
    tracing::info!(subject = %info.subject, not_after = %info.not_after_text, sha256 = %info.sha256, chain = info.chain_len, "tls enabled");
    if let Some(warning) = info.validity_warning(std::time::SystemTime::now()) {
        tracing::warn!(kind = "tls_certificate", subject = %info.subject, "{warning}");
    }
    Ok(Arc::new(store))
}

/// Reads a secret file; trailing newlines and spaces are not part of the secret.
fn read_secret(path: &std::path::Path, key: &str) -> anyhow::Result<Vec<u8>> {
    let bytes =
        std::fs::read(path).with_context(|| format!("cannot read {key} {}", path.display()))?;
    let end = bytes.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(0, |i| i + 1);
    Ok(bytes[..end].to_vec())
}

/// Builds the token codec from `[auth]`.
pub(crate) fn token_codec(auth: &config::AuthConfig) -> anyhow::Result<TokenCodec> {
    let algorithm: Algorithm =
        auth.algorithm.parse().map_err(|e| anyhow::anyhow!("auth.algorithm: {e}"))?;
    let key = if algorithm.is_hmac() {
        let secret = match (&auth.secret, &auth.secret_file) {
            (Some(s), _) => s.0.clone().into_bytes(),
            (None, Some(path)) => read_secret(path, "auth.secret_file")?,
            (None, None) => bail!(
                "no JWT secret configured: set auth.secret_file or {} \
                 (`cargo xtask run` generates a development secret for you)",
                config::env::JWT_SECRET
            ),
        };
        Key::secret(secret)
    } else {
        let public = match &auth.public_key_file {
            Some(p) => std::fs::read(p)
                .with_context(|| format!("cannot read auth.public_key_file {}", p.display()))?,
            None => {
                bail!("auth.algorithm {algorithm} needs auth.public_key_file (a PEM public key)")
            }
        };
        match &auth.private_key_file {
            Some(p) => Key::pem_pair(
                public,
                std::fs::read(p).with_context(|| {
                    format!("cannot read auth.private_key_file {}", p.display())
                })?,
            ),
            None => Key::public_pem(public),
        }
    };
    let mut tc = TokenConfig::new(algorithm, vec![key]);
    tc.require_exp = auth.require_exp;
    tc.leeway_secs = auth.leeway_secs;
    tc.issuer = auth.issuer.clone();
    tc.audience = auth.audience.clone();
    tc.required_typ = auth.typ.clone();
    tc.max_token_bytes = auth.max_token_bytes;
    TokenCodec::new(tc).context("invalid [auth] key")
}

pub(crate) fn firewall_config(config: &Config) -> anyhow::Result<FirewallConfig> {
    let f = &config.firewall;
    let nets = |key: &str, list: &[String]| -> anyhow::Result<Vec<ipnet::IpNet>> {
        list.iter()
            .map(|s| {
                s.parse::<ipnet::IpNet>()
                    .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| {
                        anyhow::anyhow!(
                            "{key}: {s:?} is not an IP address or CIDR (e.g. 10.0.0.0/8)"
                        )
                    })
            })
            .collect()
    };
    let mut fc = FirewallConfig::secure_defaults();
    fc.allow = nets("firewall.allow", &f.allow)?;
    fc.deny = nets("firewall.deny", &f.deny)?;
    fc.trusted_proxies = nets("firewall.trusted_proxies", &f.trusted_proxies)?;
    fc.max_connections = config.limits.max_connections;
    fc.max_connections_per_ip = f.max_connections_per_ip;
    fc.handshake_rate_per_sec = f.handshakes_per_sec_per_ip;
    fc.handshake_burst = f.handshake_burst;
    fc.message_rate_per_sec = f.messages_per_sec;
    fc.message_burst = f.message_burst;
    fc.ban_after_failures = f.ban_after_auth_failures;
    fc.ban_window = Duration::from_secs(f.ban_window_secs);
    fc.ban_duration = Duration::from_secs(f.ban_secs);
    fc.allowed_origins = f.allowed_origins.clone();
    fc.require_origin = f.require_origin;
    Ok(fc)
}

/// Checks a configuration as `Server::start` would, without binding anything.
pub fn check(config: &Config) -> anyhow::Result<()> {
    config.validate()?;
    if config.secure.enabled && config.auth.issuers.is_empty() {
        token_codec(&config.auth)?;
    }
    Firewall::new(firewall_config(config)?).context("invalid [firewall] section")?;
    if let Some(paths) = config.tls_paths() {
        CertStore::load(paths)?;
    }
    Ok(())
}

/// Mints a token with the configured key (HS* secret, or `auth.private_key_file`), with `iss`
/// and `aud` from `[auth] issuer` and `audience` when set, so that the server accepts it.
pub fn mint(
    config: &Config,
    user_id: &str,
    ttl: Duration,
    email: Option<&str>,
) -> anyhow::Result<String> {
    let codec = token_codec(&config.auth)?;
    let now = crate::sessions::unix_now();
    let mut claims = palisade_token::Claims::new(user_id);
    claims.iat = Some(now);
    claims.exp = Some(now + ttl.as_secs());
    claims.iss.clone_from(&config.auth.issuer);
    claims.aud.clone_from(&config.auth.audience);
    if let Some(e) = email {
        claims.email = Some(
            palisade_email::Email::parse(e)
                .map_err(|err| anyhow::anyhow!("--email {e:?}: {err}"))?,
        );
    }
    codec.encode(&claims).context("cannot mint a token with this key")
}
