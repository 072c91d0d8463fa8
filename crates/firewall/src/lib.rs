//! Connection firewall for a WebSocket server: it decides, the server enforces.
//!
//! [`Firewall`] takes values (a peer address, header values, `now: Instant`) and returns
//! decisions: IP allow/deny lists in CIDR notation, bans (automatic after repeated
//! authentication failures, or manual), global and per-IP connection caps
//! ([`ConnectionPermit`]), a per-IP handshake rate limit, a per-connection message rate limit
//! ([`MessageLimiter`]), an `Origin` allow-list, and the client address behind trusted proxies.
//! A rejection is a [`Decision`] or a [`DenyReason`], not an error; only a bad
//! [`FirewallConfig`] is an error ([`ConfigError`]).
//!
//! Per-IP state is bounded: [`Firewall::prune`] forgets idle addresses, and a hard cap
//! ([`FirewallConfig::max_tracked_ips`]) evicts the least recently seen address first.
//!
//! It deliberately does no I/O, reads no clock (time is always the `now` argument), spawns
//! nothing and logs nothing: mapping decisions to HTTP statuses, close codes and log lines is
//! the server's job. Rate limits are a token bucket (GCRA) written here, not `governor`, so that
//! `now` is honoured and tests are deterministic.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use palisade_firewall::{Decision, DenyReason, Firewall, FirewallConfig};
//!
//! let mut config = FirewallConfig::secure_defaults();
//! config.deny = vec!["192.0.2.0/24".parse()?];
//! config.max_connections_per_ip = 1;
//! let firewall = Firewall::new(config)?;
//! let now = Instant::now();
//!
//! // At TCP accept.
//! let client = "203.0.113.7".parse()?;
//! let permit = firewall.admit(client, now).expect("first connection is admitted");
//! assert_eq!(firewall.admit(client, now).unwrap_err(), DenyReason::TooManyConnectionsFromIp);
//! assert_eq!(firewall.admit("192.0.2.1".parse()?, now).unwrap_err(), DenyReason::IpDenied);
//!
//! // At the WebSocket handshake.
//! assert_eq!(firewall.check_handshake_rate(client, now), Decision::Allow);
//! assert_eq!(firewall.check_origin(Some("http://localhost:8765")), Decision::Allow);
//! assert_eq!(
//!     firewall.check_origin(Some("https://evil.example")),
//!     Decision::Deny(DenyReason::OriginNotAllowed)
//! );
//!
//! // Dropping the permit frees the slot.
//! drop(permit);
//! assert_eq!(firewall.open_connections(), 0);
//!
//! // Manual bans are refused at accept until they expire.
//! firewall.ban(client, Duration::from_secs(60), now);
//! assert_eq!(firewall.admit(client, now).unwrap_err(), DenyReason::Banned);
//! assert!(firewall.admit(client, now + Duration::from_secs(61)).is_ok());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod bans;
mod connections;
mod gcra;
mod ip_rules;
mod origin;
mod proxy;
mod table;

use std::collections::VecDeque;
use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use ipnet::IpNet;

use crate::bans::Bans;
use crate::connections::Connections;
use crate::gcra::Gcra;
use crate::ip_rules::{IpRules, NetList, canonical};
use crate::origin::OriginPolicy;
use crate::table::IpTable;

/// Everything the firewall enforces. Start from [`FirewallConfig::secure_defaults`].
///
/// Every IP address is matched after IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) are turned
/// into their IPv4 address, and so are networks in these lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirewallConfig {
    /// Addresses allowed to connect. Empty allows every address not in `deny`.
    pub allow: Vec<IpNet>,
    /// Addresses refused at accept. Deny wins over `allow`.
    pub deny: Vec<IpNet>,
    /// Open connections over all clients. 0 = unlimited.
    pub max_connections: usize,
    /// Open connections from one client address. 0 = unlimited.
    pub max_connections_per_ip: usize,
    /// Sustained WebSocket handshakes per second per client address. 0 = unlimited.
    pub handshake_rate_per_sec: u32,
    /// Handshakes one client address may make at once before the rate applies (0 acts as 1).
    pub handshake_burst: u32,
    /// Sustained messages per second per connection. 0 = unlimited.
    pub message_rate_per_sec: u32,
    /// Messages one connection may send at once before the rate applies (0 acts as 1).
    pub message_burst: u32,
    /// Failed authentications from one address within `ban_window` that trigger a ban. 0 = never ban.
    pub ban_after_failures: u32,
    /// Sliding window in which failures are counted.
    pub ban_window: Duration,
    /// How long an automatic ban lasts.
    pub ban_duration: Duration,
    /// Allowed `Origin` values: exact origins (`https://app.example.com`), subdomain patterns
    /// (`https://*.example.com`: one or more labels, never the bare domain), any port
    /// (`http://localhost:*`), `null` to accept the `null` origin, and `*` to accept every
    /// well-formed origin (dangerous: any web page may then connect with the user's cookies).
    /// Scheme and host compare case-insensitively; a default port equals no port. Empty refuses
    /// every request that carries an `Origin`.
    pub allowed_origins: Vec<String>,
    /// Refuse requests without an `Origin` header (browsers always send one; other clients
    /// usually do not).
    pub require_origin: bool,
    /// Peers whose `X-Forwarded-For` / `Forwarded` headers are believed. Empty ignores them.
    pub trusted_proxies: Vec<IpNet>,
    /// Hard cap on client addresses with per-IP state (rate buckets, failures), and separately
    /// on bans. Must be at least 1.
    pub max_tracked_ips: usize,
}

impl FirewallConfig {
    /// Defaults for a server reachable from untrusted clients:
    ///
    /// | field | default |
    /// | --- | --- |
    /// | `allow`, `deny` | empty: every address may connect |
    /// | `max_connections` | 10 000 |
    /// | `max_connections_per_ip` | 64 |
    /// | `handshake_rate_per_sec`, `handshake_burst` | 20 per second, burst 40, per address |
    /// | `message_rate_per_sec`, `message_burst` | 100 per second, burst 200, per connection |
    /// | `ban_after_failures`, `ban_window`, `ban_duration` | 10 failures within 60 s ban for 15 min |
    /// | `allowed_origins` | `http://localhost:*`, `http://127.0.0.1:*` |
    /// | `require_origin` | false: non-browser clients without `Origin` are allowed |
    /// | `trusted_proxies` | empty: forwarding headers are ignored |
    /// | `max_tracked_ips` | 100 000 |
    pub fn secure_defaults() -> FirewallConfig {
        FirewallConfig {
            allow: Vec::new(),
            deny: Vec::new(),
            max_connections: 10_000,
            max_connections_per_ip: 64,
            handshake_rate_per_sec: 20,
            handshake_burst: 40,
            message_rate_per_sec: 100,
            message_burst: 200,
            ban_after_failures: 10,
            ban_window: Duration::from_secs(60),
            ban_duration: Duration::from_secs(15 * 60),
            allowed_origins: vec!["http://localhost:*".to_owned(), "http://127.0.0.1:*".to_owned()],
            require_origin: false,
            trusted_proxies: Vec::new(),
            max_tracked_ips: 100_000,
        }
    }
}

/// A [`FirewallConfig`] that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// An entry of `allowed_origins` is not an origin pattern.
    #[error("invalid origin pattern {pattern:?}: {reason}")]
    InvalidOrigin {
        /// The entry as configured.
        pattern: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// `max_tracked_ips` is 0, which would leave nowhere to keep rate limits and failures.
    #[error("max_tracked_ips must be at least 1")]
    NoTrackedIps,
}

/// The firewall: cheap to clone (an `Arc` inside), `Send + Sync`, shared by every connection task.
#[derive(Clone)]
pub struct Firewall {
    inner: Arc<Inner>,
}

struct Inner {
    /// The compiled rules; swapped whole by [`Firewall::reconfigure`], read lock-free.
    policy: ArcSwap<Policy>,
    table: IpTable,
    bans: Bans,
    connections: Arc<Connections>,
}

/// Everything [`Firewall::reconfigure`] replaces; per-IP state, bans and counts stay.
struct Policy {
    config: Arc<FirewallConfig>,
    rules: IpRules,
    trusted_proxies: NetList,
    origins: OriginPolicy,
    handshake: Option<Gcra>,
    message: Option<Gcra>,
}

impl Policy {
    fn new(config: FirewallConfig) -> Result<Policy, ConfigError> {
        if config.max_tracked_ips == 0 {
            return Err(ConfigError::NoTrackedIps);
        }
        Ok(Policy {
            rules: IpRules::new(&config.allow, &config.deny),
            trusted_proxies: NetList::new(&config.trusted_proxies),
            origins: OriginPolicy::new(&config.allowed_origins, config.require_origin)?,
            handshake: Gcra::new(config.handshake_rate_per_sec, config.handshake_burst),
            message: Gcra::new(config.message_rate_per_sec, config.message_burst),
            config: Arc::new(config),
        })
    }
}

impl Firewall {
    /// Checks and compiles `config`.
    pub fn new(config: FirewallConfig) -> Result<Firewall, ConfigError> {
        let policy = Policy::new(config)?;
        let config = &policy.config;
        let inner = Inner {
            table: IpTable::new(config.max_tracked_ips),
            bans: Bans::new(config.max_tracked_ips),
            connections: Arc::new(Connections::new(
                config.max_connections,
                config.max_connections_per_ip,
            )),
            policy: ArcSwap::from_pointee(policy),
        };
        Ok(Firewall { inner: Arc::new(inner) })
    }

    /// The configuration in force (the one given to [`Firewall::new`] or the last
    /// [`Firewall::reconfigure`]).
    pub fn config(&self) -> Arc<FirewallConfig> {
        Arc::clone(&self.inner.policy.load().config)
    }

    /// Replaces the rules (allow/deny lists, trusted proxies, origins, rate limits, ban
    /// settings, connection caps) while the firewall serves, e.g. on a configuration reload.
    /// Bans, per-IP state and open-connection counts are kept; open connections are not
    /// re-checked, and connections over a lowered cap stay until they close. A bad `config` is
    /// refused whole and the rules in force stay. `max_tracked_ips` keeps its first value (the
    /// tables are sized once).
    ///
    /// ```
    /// use std::time::Instant;
    /// use palisade_firewall::{DenyReason, Firewall, FirewallConfig};
    ///
    /// let firewall = Firewall::new(FirewallConfig::secure_defaults())?;
    /// let ip = "192.0.2.7".parse()?;
    /// assert!(firewall.admit(ip, Instant::now()).is_ok());
    /// let mut config = FirewallConfig::secure_defaults();
    /// config.deny = vec!["192.0.2.0/24".parse()?];
    /// firewall.reconfigure(config)?;
    /// assert_eq!(firewall.admit(ip, Instant::now()).unwrap_err(), DenyReason::IpDenied);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn reconfigure(&self, mut config: FirewallConfig) -> Result<(), ConfigError> {
        config.max_tracked_ips = self.inner.policy.load().config.max_tracked_ips;
        let policy = Policy::new(config)?;
        self.inner
            .connections
            .set_caps(policy.config.max_connections, policy.config.max_connections_per_ip);
        self.inner.policy.store(Arc::new(policy));
        Ok(())
    }

    /// At TCP accept: deny list, allow list, bans, global cap, per-IP cap, in that order.
    /// On success the returned permit counts the connection until it is dropped.
    pub fn admit(&self, ip: IpAddr, now: Instant) -> Result<ConnectionPermit, DenyReason> {
        let ip = canonical(ip);
        self.inner.policy.load().rules.check(ip)?;
        if self.inner.bans.is_banned(ip, now) {
            return Err(DenyReason::Banned);
        }
        self.inner.connections.acquire(ip)?;
        Ok(ConnectionPermit { connections: Arc::clone(&self.inner.connections), ip })
    }

    /// At the WebSocket handshake: takes one token from `ip`'s bucket. `Throttle` means
    /// HTTP 429 with `Retry-After` (round `retry_after` up to whole seconds).
    pub fn check_handshake_rate(&self, ip: IpAddr, now: Instant) -> Decision {
        let Some(gcra) = self.inner.policy.load().handshake else {
            return Decision::Allow;
        };
        let ip = canonical(ip);
        match self.inner.table.with(ip, |state| gcra.check(&mut state.handshake_tat, now)) {
            Ok(()) => Decision::Allow,
            Err(retry_after) => Decision::Throttle { retry_after },
        }
    }

    /// At the WebSocket handshake: the `Origin` header's value, if any. `Deny` means HTTP 403.
    pub fn check_origin(&self, origin: Option<&str>) -> Decision {
        self.inner.policy.load().origins.check(origin)
    }

    /// The client's address. `X-Forwarded-For` and `Forwarded` are read only when `peer` is a
    /// trusted proxy; then the right-most address that is not a trusted proxy wins. When both
    /// headers are present `X-Forwarded-For` is used (pass several header lines joined with
    /// `, `). A malformed, `unknown` or obfuscated hop where the client should be gives `peer`.
    pub fn client_ip(
        &self,
        peer: IpAddr,
        x_forwarded_for: Option<&str>,
        forwarded: Option<&str>,
    ) -> IpAddr {
        proxy::client_ip(
            &self.inner.policy.load().trusted_proxies,
            peer,
            x_forwarded_for,
            forwarded,
        )
    }

    /// Counts a failed authentication from `ip`. Returns `Some(ban_duration)` when this failure
    /// reached `ban_after_failures` within `ban_window` and so banned the address.
    pub fn record_auth_failure(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let config = Arc::clone(&self.inner.policy.load().config);
        let limit = usize::try_from(config.ban_after_failures).unwrap_or(usize::MAX);
        if limit == 0 {
            return None;
        }
        let ip = canonical(ip);
        let window = config.ban_window;
        let triggered = self.inner.table.with(ip, |state| {
            forget_old_failures(&mut state.failures, window, now);
            state.failures.push_back(now);
            let triggered = state.failures.len() >= limit;
            if triggered {
                state.failures.clear();
            }
            triggered
        });
        if !triggered {
            return None;
        }
        self.inner.bans.insert(ip, config.ban_duration, now, false);
        Some(config.ban_duration)
    }

    /// Bans `ip` for `duration` from `now` (admin API), replacing any current ban.
    /// Open connections are not affected; the server closes them if it wants to.
    pub fn ban(&self, ip: IpAddr, duration: Duration, now: Instant) {
        self.inner.bans.insert(canonical(ip), duration, now, true);
    }

    /// Lifts a ban. Returns whether `ip` had one (possibly already expired).
    pub fn unban(&self, ip: IpAddr) -> bool {
        self.inner.bans.remove(canonical(ip))
    }

    /// Whether `ip` is banned at `now`.
    pub fn is_banned(&self, ip: IpAddr, now: Instant) -> bool {
        self.inner.bans.is_banned(canonical(ip), now)
    }

    /// Active bans with their remaining time, sorted by address.
    pub fn bans(&self, now: Instant) -> Vec<(IpAddr, Duration)> {
        self.inner.bans.list(now)
    }

    /// A fresh bucket for one connection's messages.
    pub fn message_limiter(&self) -> MessageLimiter {
        MessageLimiter { gcra: self.inner.policy.load().message, tat: None }
    }

    /// Connections currently holding a [`ConnectionPermit`].
    pub fn open_connections(&self) -> usize {
        self.inner.connections.total()
    }

    /// Connections from `ip` currently holding a [`ConnectionPermit`].
    pub fn open_connections_from(&self, ip: IpAddr) -> usize {
        self.inner.connections.count_for(canonical(ip))
    }

    /// Client addresses with per-IP state (for metrics; at most `max_tracked_ips`).
    pub fn tracked_ips(&self) -> usize {
        self.inner.table.len()
    }

    /// Forgets expired bans and addresses whose state is back to fresh (full handshake bucket,
    /// no failure within `ban_window`). Call it periodically, e.g. every minute.
    pub fn prune(&self, now: Instant) {
        self.inner.bans.prune(now);
        let window = self.inner.policy.load().config.ban_window;
        self.inner.table.retain(|state| {
            forget_old_failures(&mut state.failures, window, now);
            !(gcra::is_full(state.handshake_tat, now) && state.failures.is_empty())
        });
    }
}

impl fmt::Debug for Firewall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Firewall")
            .field("config", &self.config())
            .field("open_connections", &self.open_connections())
            .finish_non_exhaustive()
    }
}

/// One admitted connection. Dropping it releases its global and per-IP slot.
#[must_use = "dropping the permit immediately releases the connection slot"]
pub struct ConnectionPermit {
    connections: Arc<Connections>,
    ip: IpAddr,
}

impl ConnectionPermit {
    /// The (canonical) address this permit counts against.
    pub fn ip(&self) -> IpAddr {
        self.ip
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        self.connections.release(self.ip);
    }
}

impl fmt::Debug for ConnectionPermit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionPermit").field("ip", &self.ip).finish_non_exhaustive()
    }
}

/// Message rate limit of one connection; `Throttle` means close with 1008 `rate limit exceeded`.
#[derive(Debug, Clone)]
pub struct MessageLimiter {
    gcra: Option<Gcra>,
    tat: Option<Instant>,
}

impl MessageLimiter {
    /// Takes one token for a message received at `now`.
    pub fn check(&mut self, now: Instant) -> Decision {
        let Some(gcra) = self.gcra else {
            return Decision::Allow;
        };
        match gcra.check(&mut self.tat, now) {
            Ok(()) => Decision::Allow,
            Err(retry_after) => Decision::Throttle { retry_after },
        }
    }
}

/// The outcome of a check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Admitted.
    Allow,
    /// Refused, for this reason; retrying does not help until the rules or bans change.
    Deny(DenyReason),
    /// Over a rate limit; a retry after `retry_after` would be admitted.
    Throttle {
        /// How long until a retry would be admitted.
        retry_after: Duration,
    },
}

impl Decision {
    /// True for [`Decision::Allow`].
    pub fn is_allow(&self) -> bool {
        matches!(self, Decision::Allow)
    }

    /// Why the request was refused; `Throttle` gives [`DenyReason::RateLimited`].
    pub fn deny_reason(&self) -> Option<DenyReason> {
        match self {
            Decision::Allow => None,
            Decision::Deny(reason) => Some(*reason),
            Decision::Throttle { .. } => Some(DenyReason::RateLimited),
        }
    }
}

/// Why a connection or request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DenyReason {
    /// The address matches a `deny` CIDR.
    IpDenied,
    /// An `allow` list is set and the address is in none of its CIDRs.
    IpNotAllowed,
    /// The address is banned (after repeated failures, or by an operator).
    Banned,
    /// The global connection cap is reached.
    TooManyConnections,
    /// The per-address connection cap is reached.
    TooManyConnectionsFromIp,
    /// The `Origin` header is not in the allow-list.
    OriginNotAllowed,
    /// An allow-list is set and the request has no `Origin` header.
    OriginMissing,
    /// Over a handshake or message rate limit.
    RateLimited,
}

impl DenyReason {
    /// Stable snake_case name for logs and metric labels.
    pub fn as_str(&self) -> &'static str {
        match self {
            DenyReason::IpDenied => "ip_denied",
            DenyReason::IpNotAllowed => "ip_not_allowed",
            DenyReason::Banned => "banned",
            DenyReason::TooManyConnections => "too_many_connections",
            DenyReason::TooManyConnectionsFromIp => "too_many_connections_from_ip",
            DenyReason::OriginNotAllowed => "origin_not_allowed",
            DenyReason::OriginMissing => "origin_missing",
            DenyReason::RateLimited => "rate_limited",
        }
    }
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn forget_old_failures(failures: &mut VecDeque<Instant>, window: Duration, now: Instant) {
    while failures.front().is_some_and(|t| now.saturating_duration_since(*t) >= window) {
        failures.pop_front();
    }
}

/// Locks `mutex`, ignoring poisoning: every critical section leaves the state consistent.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests;
