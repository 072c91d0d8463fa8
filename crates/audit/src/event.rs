//! The security events an audit record can hold, and how they serialize.

use std::collections::BTreeMap;
use std::net::IpAddr;

use palisade_digest::Fingerprint;
use serde::{Serialize, Serializer};

/// One security event. In a record it appears as `"event": "<name>"` followed by its fields.
///
/// Secrets and personal data have no field of their own type here: a token or an e-mail address
/// can only be given as a [`Fingerprint`]. Strings that a client controls (`user_id`, `path`,
/// `session`) are escaped by the JSON encoder, so they cannot start a new line or close the
/// record early.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A token was accepted.
    AuthOk {
        /// Connection id.
        conn: u64,
        /// Endpoint name, e.g. `secure`.
        endpoint: String,
        /// Client address (after trusted-proxy resolution).
        ip: IpAddr,
        /// The token's `user_id` (or `sub`) claim.
        user_id: String,
        /// Fingerprint of the token.
        #[serde(serialize_with = "fingerprint")]
        token: Fingerprint,
        /// Fingerprint of the token's `email` claim, when it has one.
        #[serde(serialize_with = "opt_fingerprint", skip_serializing_if = "Option::is_none")]
        email: Option<Fingerprint>,
    },
    /// Authentication failed.
    AuthFailed {
        /// Connection id.
        conn: u64,
        /// Endpoint name.
        endpoint: String,
        /// Client address.
        ip: IpAddr,
        /// Which check failed, e.g. `expired`, `bad_signature`, `timeout`.
        reason: String,
        /// Fingerprint of the token offered, if any was.
        #[serde(serialize_with = "opt_fingerprint")]
        token: Option<Fingerprint>,
    },
    /// An authenticated session started.
    SessionStart {
        /// Session id.
        session: String,
        /// Connection id.
        conn: u64,
        /// Endpoint name.
        endpoint: String,
        /// Client address.
        ip: IpAddr,
        /// The session's user.
        user_id: String,
    },
    /// An authenticated session ended.
    SessionEnd {
        /// Session id.
        session: String,
        /// Connection id.
        conn: u64,
        /// The session's user.
        user_id: String,
        /// Who ended it: `client`, `server` or `error`.
        by: String,
        /// The close code sent or received, when there was a close frame.
        close_code: Option<u16>,
    },
    /// An address was banned.
    Ban {
        /// The banned address.
        ip: IpAddr,
        /// Ban length in seconds.
        secs: u64,
        /// Why: `auth_failures` or `admin`.
        cause: String,
    },
    /// A ban was lifted before it expired.
    Unban {
        /// The address.
        ip: IpAddr,
        /// Why: `admin`.
        cause: String,
    },
    /// Sessions were revoked.
    Revoked {
        /// The session revoked, when one was named.
        session: Option<String>,
        /// The user whose sessions were revoked, when a user was named.
        user_id: Option<String>,
        /// How many sessions were closed.
        sessions: u64,
        /// Why: `admin`.
        cause: String,
    },
    /// A call to the admin API, answered or refused.
    AdminCall {
        /// Fingerprint of the bearer token presented, if any.
        #[serde(serialize_with = "opt_fingerprint")]
        admin: Option<Fingerprint>,
        /// HTTP method.
        method: String,
        /// Request path (without the query).
        path: String,
        /// HTTP status of the answer.
        status: u16,
    },
    /// Connections refused by the firewall from one address during one minute, counted.
    FirewallRefused {
        /// The address; `null` for the addresses past the per-minute limit, counted together.
        ip: Option<IpAddr>,
        /// The minute, as the RFC 3339 time of its start.
        minute: String,
        /// Refusals in that minute.
        count: u64,
        /// Refusals by reason, e.g. `{"banned": 3, "rate_limited": 12}`.
        reasons: BTreeMap<String, u64>,
    },
    /// The configuration was reloaded (or a reload was refused).
    ConfigReload {
        /// Whether the new configuration took effect.
        ok: bool,
        /// What changed, or why it was refused.
        detail: String,
    },
    /// The TLS certificate was reloaded (or a reload failed).
    CertReload {
        /// Whether the new certificate took effect.
        ok: bool,
        /// The certificate's subject or the error.
        detail: String,
    },
    /// Records lost because the queue was full or the file could not be written; this one takes
    /// their place in the chain.
    Dropped {
        /// How many records were lost.
        count: u64,
    },
}

impl Event {
    /// The name written as the record's `event` field, e.g. `auth_ok`.
    pub fn name(&self) -> &'static str {
        match self {
            Event::AuthOk { .. } => "auth_ok",
            Event::AuthFailed { .. } => "auth_failed",
            Event::SessionStart { .. } => "session_start",
            Event::SessionEnd { .. } => "session_end",
            Event::Ban { .. } => "ban",
            Event::Unban { .. } => "unban",
            Event::Revoked { .. } => "revoked",
            Event::AdminCall { .. } => "admin_call",
            Event::FirewallRefused { .. } => "firewall_refused",
            Event::ConfigReload { .. } => "config_reload",
            Event::CertReload { .. } => "cert_reload",
            Event::Dropped { .. } => "dropped",
        }
    }
}

fn fingerprint<S: Serializer>(fp: &Fingerprint, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(fp)
}

fn opt_fingerprint<S: Serializer>(fp: &Option<Fingerprint>, s: S) -> Result<S::Ok, S::Error> {
    match fp {
        Some(fp) => s.collect_str(fp),
        None => s.serialize_none(),
    }
}
