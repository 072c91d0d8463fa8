//! The server's configuration: TOML with secure defaults, unknown keys refused, environment
//! overrides, and validation that names the key and what is expected.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde::Deserialize;

/// The whole configuration. Every key and default is documented in docs/configuration.md.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The echo endpoint.
    pub echo: EchoConfig,
    /// The authenticated endpoint.
    pub secure: SecureConfig,
    /// The admin HTTP listener.
    pub admin: AdminConfig,
    /// TLS (`wss://`) for the WebSocket endpoints and, with `admin.tls`, the admin listener.
    pub tls: TlsSection,
    /// Token verification.
    pub auth: AuthConfig,
    /// The `palisade.v1` subprotocol on the secure endpoint.
    pub subprotocol: SubprotocolConfig,
    /// Limits and timeouts.
    pub limits: LimitsConfig,
    /// IP rules, rate limits, bans and origins.
    pub firewall: FirewallSection,
    /// Logging.
    pub log: LogSection,
    /// The tamper-evident audit trail (docs/audit.md).
    pub audit: AuditSection,
    /// Several nodes sharing state through Redis (docs/cluster.md).
    pub cluster: ClusterSection,
    /// Publish/subscribe channels over `palisade.v1` (docs/subprotocol.md#channels).
    pub channels: ChannelsConfig,
    /// The file this was read from ([`Config::from_file`]); a live reload reads it again.
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

/// `[cluster]`: unset `redis_url` keeps everything in memory (one node).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSection {
    /// `redis://host:6379/0` or `rediss://...`; may hold a password (never logged).
    pub redis_url: Option<SecretString>,
    /// This node's id in the cluster (default: host name plus a random suffix).
    pub node_id: Option<String>,
    /// Put before every Redis key and channel, so that deployments can share one Redis.
    pub key_prefix: String,
    /// The longest any Redis command may take, in milliseconds.
    pub command_timeout_ms: u64,
    /// Seconds between session heartbeats and cache syncs; entries live three heartbeats.
    pub heartbeat_secs: u64,
}

impl ClusterSection {
    /// Checks `[cluster]` without connecting.
    pub(crate) fn validate(&self) -> anyhow::Result<()> {
        if self.redis_url.is_some() {
            let node_id = self.node_id.clone().unwrap_or_else(|| "check".into());
            self.redis_config(node_id).validate().map_err(|e| {
                anyhow::anyhow!("{}", cluster_key_error(&e)).context(format!("[cluster]: {e}"))
            })?;
        }
        Ok(())
    }

    /// The Redis settings of this section, for the node `node_id`.
    pub(crate) fn redis_config(
        &self,
        node_id: String,
    ) -> palisade_cluster::redis_state::RedisConfig {
        palisade_cluster::redis_state::RedisConfig {
            url: self.redis_url.as_ref().map(|u| u.0.clone()).unwrap_or_default(),
            node_id,
            key_prefix: self.key_prefix.clone(),
            command_timeout: Duration::from_millis(self.command_timeout_ms),
            heartbeat: Duration::from_secs(self.heartbeat_secs),
        }
    }
}

/// The key and expectation for a `[cluster]` value the Redis client refuses.
fn cluster_key_error(e: &palisade_cluster::redis_state::StartError) -> &'static str {
    use palisade_cluster::redis_state::StartError as E;
    match e {
        E::InvalidUrl(_) => {
            "cluster.redis_url: expected redis://host:6379/0 or rediss://host:6380/0 \
             (or set PALISADE_REDIS_URL)"
        }
        E::InvalidNodeId(_) => "cluster.node_id: use letters, digits, '.', '_' and '-'",
        E::InvalidKeyPrefix(_) => "cluster.key_prefix: at most 64 characters, no spaces",
        E::InvalidTimeout => "cluster.command_timeout_ms: between 1 and 60000",
        E::InvalidHeartbeat => "cluster.heartbeat_secs: between 1 and 3600",
    }
}

impl Default for ClusterSection {
    fn default() -> ClusterSection {
        ClusterSection {
            redis_url: None,
            node_id: None,
            key_prefix: "palisade:".into(),
            command_timeout_ms: 250,
            heartbeat_secs: 5,
        }
    }
}

/// `[echo]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EchoConfig {
    /// Turn the endpoint off with `false`.
    pub enabled: bool,
    /// Listen address.
    pub listen: SocketAddr,
    /// Text put before every echoed message.
    pub prefix: String,
}

/// `[secure]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecureConfig {
    /// Turn the endpoint off with `false`.
    pub enabled: bool,
    /// Listen address.
    pub listen: SocketAddr,
    /// Seconds a client has to send its token.
    pub auth_timeout_secs: u64,
    /// Concurrent sessions one user may hold (0: no cap).
    pub max_sessions_per_user: usize,
}

/// `[admin]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Turn the admin listener off with `false`.
    pub enabled: bool,
    /// Listen address.
    pub listen: SocketAddr,
    /// File holding a bearer token required for every admin call except `/healthz`.
    pub token_file: Option<PathBuf>,
    /// Serve the admin API over HTTPS with the `[tls]` certificate.
    pub tls: bool,
}

/// `[tls]`
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSection {
    /// PEM certificate chain, the server's certificate first. With `key_file`, turns TLS on.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of that certificate.
    pub key_file: Option<PathBuf>,
}

/// `[auth]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// `HS256`, `HS384`, `HS512`, `RS256`, `ES256` or `EdDSA`.
    pub algorithm: String,
    /// File with the HMAC secret (HS*), at least 32 bytes.
    pub secret_file: Option<PathBuf>,
    /// PEM public key to verify (RS256, ES256, EdDSA).
    pub public_key_file: Option<PathBuf>,
    /// PEM private key, only for minting with `palisade token`.
    pub private_key_file: Option<PathBuf>,
    /// Refuse tokens without `exp`.
    pub require_exp: bool,
    /// Clock skew allowed on `exp`, `nbf` and `iat`.
    pub leeway_secs: u64,
    /// Required `iss`, when set.
    pub issuer: Option<String>,
    /// Required `aud`, when set.
    pub audience: Option<String>,
    /// Required `typ` header, when set (e.g. `at+jwt`).
    pub typ: Option<String>,
    /// Longest token accepted, in bytes.
    pub max_token_bytes: usize,
    /// Longest a `palisade.v1` session may last, refreshes included, in seconds (0: no cap).
    pub max_session_secs: u64,
    /// Seconds before a token's `exp` that a `palisade.v1` client is sent `expiring` (0: never).
    pub expiry_warning_secs: u64,
    /// `[[auth.issuers]]`: identity providers whose JWKS keys verify their tokens
    /// (docs/identity-providers.md).
    pub issuers: Vec<crate::issuers::IssuerEntry>,
    /// The HMAC secret itself, from `PALISADE_JWT_SECRET` (never from the file).
    #[serde(skip)]
    pub secret: Option<SecretString>,
}

/// `[limits]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest message accepted from a client, in bytes.
    pub max_message_bytes: usize,
    /// Largest frame accepted from a client, in bytes.
    pub max_frame_bytes: usize,
    /// Seconds allowed for the TCP-to-upgrade handshake.
    pub handshake_timeout_secs: u64,
    /// Seconds without any frame from the client before it is closed.
    pub idle_timeout_secs: u64,
    /// Seconds between pings (0: no pings).
    pub ping_interval_secs: u64,
    /// Open connections, all endpoints together.
    pub max_connections: usize,
    /// Messages that may wait for a slow client before it is closed.
    pub outbound_queue: usize,
    /// Seconds one write may block on a client that does not read.
    pub write_timeout_secs: u64,
    /// Seconds to wait for connections to close at shutdown.
    pub drain_timeout_secs: u64,
    /// Read buffer every connection keeps, in bytes (see docs/benchmarks.md).
    pub read_buffer_bytes: usize,
    /// Replies collected before a write goes to the socket, in bytes.
    pub write_buffer_bytes: usize,
}

/// `[firewall]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FirewallSection {
    /// CIDRs allowed to connect (empty: all).
    pub allow: Vec<String>,
    /// CIDRs refused (wins over `allow`).
    pub deny: Vec<String>,
    /// Open connections from one client address.
    pub max_connections_per_ip: usize,
    /// Handshakes per second per client address (0: unlimited).
    pub handshakes_per_sec_per_ip: u32,
    /// Handshake burst per client address.
    pub handshake_burst: u32,
    /// Messages per second per connection (0: unlimited).
    pub messages_per_sec: u32,
    /// Message burst per connection.
    pub message_burst: u32,
    /// Failed authentications that ban an address (0: never).
    pub ban_after_auth_failures: u32,
    /// Window in which those failures count, in seconds.
    pub ban_window_secs: u64,
    /// How long a ban lasts, in seconds.
    pub ban_secs: u64,
    /// Allowed `Origin` values and `https://*.example.com` patterns.
    pub allowed_origins: Vec<String>,
    /// Refuse handshakes without an `Origin` header.
    pub require_origin: bool,
    /// Proxies whose `X-Forwarded-For`/`Forwarded` headers are believed.
    pub trusted_proxies: Vec<String>,
}

/// `[log]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    /// Folder of `websocket_errors.log`.
    pub dir: PathBuf,
    /// Console level: an `EnvFilter` directive such as `info` or `palisade=debug,info`.
    pub level: String,
    /// Console format: `text` or `json`.
    pub format: String,
    /// Size at which the error log rotates.
    pub max_file_bytes: u64,
    /// Rotated error-log files kept.
    pub max_files: usize,
}

/// `[audit]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditSection {
    /// The audit trail, JSON lines (off when unset).
    pub file: Option<PathBuf>,
    /// Size at which the audit file rotates.
    pub max_file_bytes: u64,
    /// Rotated audit files kept (at least 1).
    pub max_files: usize,
    /// Records that may wait for the writer before they are counted as dropped.
    pub queue: usize,
}

impl Default for AuditSection {
    fn default() -> AuditSection {
        AuditSection { file: None, max_file_bytes: 16 * 1024 * 1024, max_files: 10, queue: 4096 }
    }
}

impl Default for EchoConfig {
    fn default() -> EchoConfig {
        EchoConfig {
            enabled: true,
            listen: ([127, 0, 0, 1], 8765).into(),
            prefix: "Server received: ".into(),
        }
    }
}

impl Default for SecureConfig {
    fn default() -> SecureConfig {
        SecureConfig {
            enabled: true,
            listen: ([127, 0, 0, 1], 8888).into(),
            auth_timeout_secs: 10,
            max_sessions_per_user: 16,
        }
    }
}

impl Default for AdminConfig {
    fn default() -> AdminConfig {
        AdminConfig {
            enabled: true,
            listen: ([127, 0, 0, 1], 9100).into(),
            token_file: None,
            tls: false,
        }
    }
}

impl Default for AuthConfig {
    fn default() -> AuthConfig {
        AuthConfig {
            algorithm: "HS256".into(),
            secret_file: None,
            public_key_file: None,
            private_key_file: None,
            require_exp: true,
            leeway_secs: 30,
            issuer: None,
            audience: None,
            typ: None,
            max_token_bytes: 8 * 1024,
            max_session_secs: 24 * 3600,
            expiry_warning_secs: 60,
            issuers: Vec::new(),
            secret: None,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> LimitsConfig {
        LimitsConfig {
            max_message_bytes: 64 * 1024,
            max_frame_bytes: 64 * 1024,
            handshake_timeout_secs: 10,
            idle_timeout_secs: 60,
            ping_interval_secs: 20,
            max_connections: 10_000,
            outbound_queue: 256,
            write_timeout_secs: 10,
            drain_timeout_secs: 10,
            read_buffer_bytes: 1024,
            write_buffer_bytes: 16 * 1024,
        }
    }
}

impl Default for FirewallSection {
    fn default() -> FirewallSection {
        FirewallSection {
            allow: Vec::new(),
            deny: Vec::new(),
            max_connections_per_ip: 256,
            handshakes_per_sec_per_ip: 50,
            handshake_burst: 100,
            messages_per_sec: 1000,
            message_burst: 2000,
            ban_after_auth_failures: 10,
            ban_window_secs: 60,
            ban_secs: 900,
            allowed_origins: vec!["http://localhost:*".into(), "http://127.0.0.1:*".into()],
            require_origin: false,
            trusted_proxies: Vec::new(),
        }
    }
}

impl Default for LogSection {
    fn default() -> LogSection {
        LogSection {
            dir: PathBuf::from("."),
            level: "info".into(),
            format: "text".into(),
            max_file_bytes: 10 * 1024 * 1024,
            max_files: 5,
        }
    }
}

/// `[channels]`: publish/subscribe over `palisade.v1`, in memory on this node.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChannelsConfig {
    /// Publications held per channel for `history` and recovery (0: none).
    pub history_size: usize,
    /// Seconds a publication is held (0: until pushed out by newer ones).
    pub history_ttl_secs: u64,
    /// Bytes of history held by this node, all channels together.
    pub history_max_bytes: usize,
    /// Channels one session may subscribe to at once.
    pub max_subscriptions_per_session: usize,
    /// Publish `{"presence":"join"|"leave","user_id":..}` when a user's first session
    /// subscribes to a channel or its last one leaves.
    pub presence_events: bool,
    /// The token claim mapping channel patterns to rights.
    pub grants_claim: String,
    /// Channel patterns any authenticated session may subscribe to.
    pub public: Vec<String>,
    /// Largest `data` of one publication, in bytes (0: `limits.max_message_bytes`).
    pub max_data_bytes: usize,
}

impl Default for ChannelsConfig {
    fn default() -> ChannelsConfig {
        ChannelsConfig {
            history_size: 0,
            history_ttl_secs: 300,
            history_max_bytes: 64 * 1024 * 1024,
            max_subscriptions_per_session: 128,
            presence_events: false,
            grants_claim: "channels".into(),
            public: Vec::new(),
            max_data_bytes: 0,
        }
    }
}

/// `[subprotocol]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SubprotocolConfig {
    /// Select `palisade.v1` on the secure endpoint when a client offers it.
    pub enabled: bool,
    /// The bad envelope (of one connection) at which it is closed with 1008.
    pub close_after_bad_envelopes: u32,
}

impl Default for SubprotocolConfig {
    fn default() -> SubprotocolConfig {
        SubprotocolConfig { enabled: true, close_after_bad_envelopes: 3 }
    }
}

/// A secret that never prints: `Debug` shows `***`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct SecretString(pub String);

impl std::fmt::Debug for SecretString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretString(***)")
    }
}

/// Environment variables the server reads (only the server reads the environment).
pub mod env {
    /// The HMAC secret itself; wins over `auth.secret_file`.
    pub const JWT_SECRET: &str = "PALISADE_JWT_SECRET";
    /// Console log level; wins over `log.level`.
    pub const LOG_LEVEL: &str = "PALISADE_LOG_LEVEL";
    /// Error-log folder; wins over `log.dir`.
    pub const LOG_DIR: &str = "PALISADE_LOG_DIR";
    /// The Redis URL (it may hold a password); wins over `cluster.redis_url`.
    pub const REDIS_URL: &str = "PALISADE_REDIS_URL";
}

impl Config {
    /// Parses TOML text. Unknown keys and wrongly typed values are errors that name the key.
    pub fn from_toml(text: &str) -> anyhow::Result<Config> {
        let config: Config =
            toml::from_str(text).map_err(|e| anyhow::anyhow!("{}", e.to_string().trim_end()))?;
        config.validate()?;
        Ok(config)
    }

    /// Reads and parses a TOML file.
    pub fn from_file(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        let mut config = Config::from_toml(&text)
            .with_context(|| format!("invalid config file {}", path.display()))?;
        config.source = Some(path.to_owned());
        Ok(config)
    }

    /// Applies environment overrides from `vars` (pass `std::env::vars()`).
    pub fn apply_env(&mut self, vars: impl IntoIterator<Item = (String, String)>) {
        for (k, v) in vars {
            match k.as_str() {
                env::JWT_SECRET => self.auth.secret = Some(SecretString(v)),
                env::LOG_LEVEL => self.log.level = v,
                env::LOG_DIR => self.log.dir = PathBuf::from(v),
                env::REDIS_URL => self.cluster.redis_url = Some(SecretString(v)),
                _ => {}
            }
        }
    }

    /// Checks values that parse but make no sense, naming the key and what is expected.
    pub fn validate(&self) -> anyhow::Result<()> {
        let l = &self.limits;
        positive("limits.max_message_bytes", l.max_message_bytes as u64)?;
        positive("limits.max_frame_bytes", l.max_frame_bytes as u64)?;
        if l.max_frame_bytes > l.max_message_bytes {
            bail!(
                "limits.max_frame_bytes ({}) must not exceed limits.max_message_bytes ({})",
                l.max_frame_bytes,
                l.max_message_bytes
            );
        }
        positive("limits.handshake_timeout_secs", l.handshake_timeout_secs)?;
        positive("limits.idle_timeout_secs", l.idle_timeout_secs)?;
        positive("limits.max_connections", l.max_connections as u64)?;
        positive("firewall.max_connections_per_ip", self.firewall.max_connections_per_ip as u64)?;
        positive("limits.outbound_queue", l.outbound_queue as u64)?;
        positive("limits.write_timeout_secs", l.write_timeout_secs)?;
        for (key, value) in [
            ("limits.read_buffer_bytes", l.read_buffer_bytes),
            ("limits.write_buffer_bytes", l.write_buffer_bytes),
        ] {
            if !(256..=16 * 1024 * 1024).contains(&value) {
                bail!("{key} ({value}) must be between 256 and 16777216 bytes");
            }
        }
        positive("secure.auth_timeout_secs", self.secure.auth_timeout_secs)?;
        if l.ping_interval_secs > 0 && l.ping_interval_secs >= l.idle_timeout_secs {
            bail!(
                "limits.ping_interval_secs ({}) must be shorter than limits.idle_timeout_secs ({}), \
                 or 0 to turn pings off",
                l.ping_interval_secs,
                l.idle_timeout_secs
            );
        }
        if self.auth.leeway_secs > 300 {
            bail!(
                "auth.leeway_secs ({}) is too large: expected at most 300 (30 is usual)",
                self.auth.leeway_secs
            );
        }
        positive("auth.max_token_bytes", self.auth.max_token_bytes as u64)?;
        crate::issuers::validate(&self.auth)?;
        positive(
            "subprotocol.close_after_bad_envelopes",
            u64::from(self.subprotocol.close_after_bad_envelopes),
        )?;
        match self.log.format.as_str() {
            "text" | "json" => {}
            other => bail!("log.format: expected \"text\" or \"json\", found {other:?}"),
        }
        positive("log.max_file_bytes", self.log.max_file_bytes)?;
        crate::channels::validate(&self.channels)?;
        if self.channels.max_data_bytes > self.limits.max_message_bytes {
            bail!(
                "channels.max_data_bytes ({}) is larger than limits.max_message_bytes ({}): a publish that large could not arrive; lower it, or set 0 to use limits.max_message_bytes",
                self.channels.max_data_bytes,
                self.limits.max_message_bytes
            );
        }
        self.cluster.validate()?;
        match (&self.tls.cert_file, &self.tls.key_file) {
            (Some(_), None) => {
                bail!("tls.cert_file is set but tls.key_file is not: set both, or neither")
            }
            (None, Some(_)) => {
                bail!("tls.key_file is set but tls.cert_file is not: set both, or neither")
            }
            _ => {}
        }
        if self.admin.enabled && self.admin.tls && self.tls_paths().is_none() {
            bail!("admin.tls = true needs tls.cert_file and tls.key_file");
        }
        if self.admin.enabled
            && !self.admin.listen.ip().is_loopback()
            && self.admin.token_file.is_none()
        {
            bail!(
                "admin.listen {} is not a loopback address and admin.token_file is not set: \
                 anyone who can reach it could revoke sessions and lift bans; set admin.token_file \
                 or listen on 127.0.0.1",
                self.admin.listen
            );
        }
        positive("audit.max_file_bytes", self.audit.max_file_bytes)?;
        positive("audit.max_files", self.audit.max_files as u64)?;
        positive("audit.queue", self.audit.queue as u64)?;
        Ok(())
    }

    /// The certificate and key files, when TLS is on.
    pub fn tls_paths(&self) -> Option<crate::tls::CertPaths> {
        match (&self.tls.cert_file, &self.tls.key_file) {
            (Some(cert), Some(key)) => {
                Some(crate::tls::CertPaths { cert_file: cert.clone(), key_file: key.clone() })
            }
            _ => None,
        }
    }

    /// True when the WebSocket listeners serve TLS (`tls.cert_file` and `tls.key_file` set).
    pub fn tls_enabled(&self) -> bool {
        self.tls_paths().is_some()
    }

    /// The transport's limits from this configuration.
    pub fn transport(&self) -> palisade_transport::TransportConfig {
        let l = &self.limits;
        let mut t = palisade_transport::TransportConfig::secure_defaults();
        t.max_message_bytes = l.max_message_bytes;
        t.max_frame_bytes = l.max_frame_bytes;
        t.handshake_timeout = Duration::from_secs(l.handshake_timeout_secs);
        t.idle_timeout = Duration::from_secs(l.idle_timeout_secs);
        t.ping_interval = Duration::from_secs(l.ping_interval_secs);
        t.outbound_queue = l.outbound_queue;
        t.write_timeout = Duration::from_secs(l.write_timeout_secs);
        t.read_buffer_bytes = l.read_buffer_bytes;
        t.write_buffer_bytes = l.write_buffer_bytes;
        t
    }
}

fn positive(key: &str, value: u64) -> anyhow::Result<()> {
    if value == 0 {
        bail!("{key} must be greater than 0");
    }
    Ok(())
}

#[cfg(test)]
mod tests;
