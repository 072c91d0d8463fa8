//! Cluster mode: builds the shared state from `[cluster]` (memory, or Redis when
//! `cluster.redis_url` is set), applies what other nodes do (bans to the firewall, revocations
//! and pushes to the session registry), and serves the cluster's admin routes
//! (`POST /publish`, `POST /revocations`, `GET /revocations`, `GET /cluster`, and the
//! cluster-wide views of `/sessions`).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use palisade_cluster::memory::MemoryState;
use palisade_cluster::redis_state::{RedisConfig, RedisState};
use palisade_cluster::{Admission, Event, Revocation, SessionEntry, SharedState, TokenFacts};
use palisade_firewall::Firewall;
use palisade_metrics::Metrics;
use palisade_token::Claims;
use palisade_transport::Message;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::AdminState;
use crate::config::{ClusterSection, Config};
use crate::sessions::{SessionId, SessionInfo, SessionRegistry, unix_now};

/// Revocations of all of a user's tokens last this long unless the request says `expires`.
const DEFAULT_USER_REVOCATION: Duration = Duration::from_secs(24 * 3600);

/// Longest `jti` or `user_id` accepted by `POST /revocations` (they become Redis key names).
const MAX_ID_BYTES: usize = 256;

/// What the connection path and the admin API hold of the cluster. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Link {
    pub(crate) state: Arc<dyn SharedState>,
    max_per_user: usize,
    /// Largest `POST /publish` payload (`limits.max_message_bytes`).
    max_publish_bytes: usize,
    /// Added to a revoked token's `exp`, as the verifier accepts it that much longer.
    leeway_secs: u64,
}

impl Link {
    /// Whether the token these claims come from has been revoked (local cache, no network).
    pub(crate) fn is_revoked(&self, claims: &Claims) -> bool {
        self.state.is_revoked(&claims.user_id, &facts(claims))
    }

    /// Registers a session with the cluster; `Err(max)` when the user is at the cap counted
    /// on every node. Waits on Redis at most the command timeout.
    pub(crate) async fn open(&self, info: &SessionInfo, claims: &Claims) -> Result<(), usize> {
        let entry = SessionEntry {
            id: info.id.as_str().to_owned(),
            user_id: info.user_id.clone(),
            node: String::new(),
            conn: info.conn.to_string(),
            peer: info.peer,
            endpoint: info.endpoint.clone(),
            started: info.started,
            expires: info.expires,
        };
        match self.state.open_session(entry, facts(claims), self.max_per_user).await {
            Admission::Admitted | Admission::AdmittedUnchecked => Ok(()),
            Admission::TooManySessions { max } => Err(max),
        }
    }

    /// The session's connection ended.
    pub(crate) fn close(&self, id: &SessionId) {
        self.state.close_session(id.as_str());
    }

    /// Shares a ban made on this node (automatic or through the admin API).
    pub(crate) fn ban(&self, ip: IpAddr, duration: Duration) {
        self.state.ban(ip, duration);
    }
}

fn facts(claims: &Claims) -> TokenFacts {
    TokenFacts { jti: claims.jti.clone(), iat: claims.iat }
}

/// Checks `[cluster]` without connecting.
pub(crate) fn validate(section: &ClusterSection) -> anyhow::Result<()> {
    if section.redis_url.is_some() {
        let node_id = section.node_id.clone().unwrap_or_else(|| "check".into());
        redis_config(section, node_id).validate().map_err(|e| {
            anyhow::anyhow!("{}", cluster_key_error(&e)).context(format!("[cluster]: {e}"))
        })?;
    }
    Ok(())
}

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

fn redis_config(section: &ClusterSection, node_id: String) -> RedisConfig {
    RedisConfig {
        url: section.redis_url.as_ref().map(|u| u.0.clone()).unwrap_or_default(),
        node_id,
        key_prefix: section.key_prefix.clone(),
        command_timeout: Duration::from_millis(section.command_timeout_ms),
        heartbeat: Duration::from_secs(section.heartbeat_secs),
    }
}

/// Builds the shared state: Redis when `cluster.redis_url` is set, else memory. A Redis that
/// is down at start is an outage, not an error: the node serves and catches up later.
pub(crate) async fn start(config: &Config) -> anyhow::Result<(Link, mpsc::Receiver<Event>)> {
    let section = &config.cluster;
    let node_id = section.node_id.clone().unwrap_or_else(default_node_id);
    let (state, events): (Arc<dyn SharedState>, _) = match &section.redis_url {
        Some(_) => {
            let rc = redis_config(section, node_id);
            let url = rc.redacted_url();
            let (state, events) =
                RedisState::start(rc).await.with_context(|| format!("[cluster] {url}"))?;
            tracing::info!(node = state.node_id(), redis = %url, "cluster mode: sharing state through redis");
            (Arc::new(state), events)
        }
        None => {
            let (state, events) = MemoryState::new(node_id);
            (Arc::new(state), events)
        }
    };
    let link = Link {
        state,
        max_per_user: config.secure.max_sessions_per_user,
        max_publish_bytes: config.limits.max_message_bytes,
        leeway_secs: config.auth.leeway_secs,
    };
    Ok((link, events))
}

/// The host name plus a random suffix, e.g. `web-3-5f1a9c`.
fn default_node_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .unwrap_or_default();
    let mut host: String = host
        .trim()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '_' })
        .take(48)
        .collect();
    if host.is_empty() {
        host.push_str("node");
    }
    format!("{host}-{:06x}", rand::random::<u32>() & 0xff_ffff)
}

/// Applies other nodes' events until shutdown.
pub(crate) fn spawn_events(
    mut events: mpsc::Receiver<Event>,
    sessions: SessionRegistry,
    firewall: Firewall,
    metrics: Metrics,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) {
    tracker.spawn(async move {
        loop {
            let event = tokio::select! {
                _ = shutdown.cancelled() => break,
                event = events.recv() => match event {
                    Some(event) => event,
                    None => break,
                },
            };
            apply(event, &sessions, &firewall, &metrics);
        }
    });
}

fn apply(event: Event, sessions: &SessionRegistry, firewall: &Firewall, metrics: &Metrics) {
    match event {
        Event::Ban { ip, remaining } => {
            let now = Instant::now();
            firewall.ban(ip, remaining, now);
            metrics.set_bans_active(firewall.bans(now).len() as i64);
            tracing::info!(client_ip = %ip, ban_secs = remaining.as_secs(), "address banned by another node");
        }
        Event::Unban { ip } => {
            if firewall.unban(ip) {
                metrics.set_bans_active(firewall.bans(Instant::now()).len() as i64);
                tracing::info!(client_ip = %ip, "ban lifted by another node");
            }
        }
        Event::RevokeSession { session_id } => {
            if revoke_by_id(sessions, &session_id) {
                tracing::info!(session = %session_id, "session revoked through another node");
            }
        }
        Event::RevokeUser { user_id } => {
            let n = sessions.revoke_user(&user_id);
            tracing::info!(user_id = %user_id, sessions = n, "user sessions revoked through another node");
        }
        Event::CloseSessions { session_ids } => {
            let n = session_ids.iter().filter(|id| revoke_by_id(sessions, id)).count();
            tracing::info!(sessions = n, "sessions closed: their token was revoked");
        }
        Event::Publish { user_id, data, reply } => {
            reply.delivered(sessions.send_to_user(&user_id, &Message::Text(data)));
        }
    }
}

/// Closes this node's session `id` with 1008 `session revoked`; false when it holds none.
fn revoke_by_id(sessions: &SessionRegistry, id: &str) -> bool {
    let found = sessions.list().into_iter().find(|s| s.id.as_str() == id).map(|s| s.id);
    found.is_some_and(|id| sessions.revoke(&id))
}

// ---- admin API ----

/// `/readyz` stays 200 during a Redis outage (the node still serves); this line says so.
pub(crate) fn readiness(state: &dyn SharedState) -> String {
    let s = state.status();
    match (s.backend, s.outage_secs) {
        ("memory", _) => String::new(),
        (_, Some(secs)) => format!(
            "cluster: degraded: redis unreachable for {secs} s; serving with the last known state\n"
        ),
        _ => format!("cluster: ok (node {})\n", s.node_id),
    }
}

/// Puts the cluster's series before the exposition's final `# EOF`.
pub(crate) fn append_metrics(body: &mut String, state: &dyn SharedState) {
    append_exposition(body, &state.encode_metrics());
}

/// Appends another OpenMetrics exposition (ending in `# EOF`) to `body`, keeping one `# EOF`.
pub(crate) fn append_exposition(body: &mut String, extra: &str) {
    if extra.is_empty() {
        return;
    }
    if let Some(len) = body.strip_suffix("# EOF\n").map(str::len) {
        body.truncate(len);
    }
    body.push_str(extra);
}

/// A row of `GET /sessions`.
fn local_rows(state: &AdminState) -> Vec<SessionEntry> {
    let node = state.cluster.state.node_id().to_owned();
    state
        .sessions
        .list()
        .into_iter()
        .map(|s| SessionEntry {
            id: s.id.as_str().to_owned(),
            user_id: s.user_id,
            node: node.clone(),
            conn: s.conn.to_string(),
            peer: s.peer,
            endpoint: s.endpoint,
            started: s.started,
            expires: s.expires,
        })
        .collect()
}

/// `GET /sessions`: every node's sessions, each with its node id. During a Redis outage,
/// this node's only, with `X-Palisade-Cluster: partial`.
pub(crate) async fn list_sessions(state: &AdminState) -> Response {
    let cluster = &state.cluster.state;
    if cluster.status().backend == "memory" {
        return Json(local_rows(state)).into_response();
    }
    match cluster.sessions().await {
        Ok(rows) => Json(rows).into_response(),
        Err(_) => ([("x-palisade-cluster", "partial")], Json(local_rows(state))).into_response(),
    }
}

#[derive(Serialize)]
struct Revoked {
    revoked: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    node: Option<String>,
}

/// `DELETE /sessions/{id}` for a session this node does not hold.
pub(crate) async fn revoke_remote_session(state: &AdminState, id: &str) -> Response {
    let cluster = &state.cluster.state;
    if cluster.status().backend == "memory" {
        return (StatusCode::NOT_FOUND, "no such session\n").into_response();
    }
    match cluster.sessions().await {
        Ok(rows) => match rows.into_iter().find(|r| r.id == id) {
            Some(row) => {
                cluster.revoke_session(id);
                tracing::info!(endpoint = "admin", session = %id, node = %row.node, "session revoked on another node");
                Json(Revoked { revoked: 1, node: Some(row.node) }).into_response()
            }
            None => (StatusCode::NOT_FOUND, "no such session\n").into_response(),
        },
        Err(_) => {
            // The cluster view is unavailable: send the revocation when Redis is back.
            cluster.revoke_session(id);
            (
                StatusCode::ACCEPTED,
                "redis unreachable: the revocation is queued for the other nodes\n",
            )
                .into_response()
        }
    }
}

/// `DELETE /users/{user_id}/sessions`: closes them here (`closed_here`) and on every other node;
/// answers how many there were in the cluster.
pub(crate) async fn revoke_user(state: &AdminState, user_id: &str, closed_here: usize) -> Response {
    let cluster = &state.cluster.state;
    let me = cluster.node_id().to_owned();
    let elsewhere = match cluster.sessions().await {
        Ok(rows) => rows.iter().filter(|r| r.user_id == user_id && r.node != me).count(),
        Err(_) => 0,
    };
    cluster.revoke_user(user_id);
    let n = closed_here + elsewhere;
    tracing::info!(endpoint = "admin", user_id = %user_id, sessions = n, "user sessions revoked");
    Json(Revoked { revoked: n, node: None }).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PublishRequest {
    user_id: String,
    data: String,
}

#[derive(Serialize)]
struct Published {
    /// Sessions that received the message, on every node.
    delivered: usize,
    /// Nodes where at least one session received it.
    nodes: usize,
    /// Nodes that answered (this one included).
    nodes_answered: usize,
    /// False when some node did not answer in time or Redis was unreachable.
    complete: bool,
}

/// `POST /publish` `{"user_id": "42", "data": "text"}`: a text message to every session of the
/// user on every node.
pub(crate) async fn publish(
    State(state): State<AdminState>,
    body: Result<Json<PublishRequest>, JsonRejection>,
) -> Response {
    let Json(req) = match body {
        Ok(b) => b,
        Err(e) => {
            let msg = format!("expected {{\"user_id\": \"42\", \"data\": \"text\"}}: {e}\n");
            return (StatusCode::BAD_REQUEST, msg).into_response();
        }
    };
    let max = state.cluster.max_publish_bytes;
    if req.data.len() > max {
        let msg =
            format!("data is {} bytes; at most {max} (limits.max_message_bytes)\n", req.data.len());
        return (StatusCode::PAYLOAD_TOO_LARGE, msg).into_response();
    }
    let here = state.sessions.send_to_user(&req.user_id, &Message::Text(req.data.clone()));
    let cluster = &state.cluster.state;
    let answer = match cluster.publish(req.user_id.clone(), req.data, here).await {
        Ok(r) => Published {
            delivered: here + r.sessions,
            nodes: usize::from(here > 0) + r.nodes_delivered,
            nodes_answered: 1 + r.nodes_answered,
            complete: r.nodes_answered == r.nodes_listening,
        },
        Err(_) => Published {
            delivered: here,
            nodes: usize::from(here > 0),
            nodes_answered: 1,
            complete: false,
        },
    };
    tracing::info!(endpoint = "admin", user_id = %req.user_id, delivered = answer.delivered, nodes = answer.nodes, "message published");
    Json(answer).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RevocationRequest {
    /// Revoke the token with this `jti` (then `expires`, its `exp`, is required)...
    jti: Option<String>,
    /// ...or every token of this user issued before `issued_before` (default: now).
    user_id: Option<String>,
    issued_before: Option<u64>,
    /// When the revoked tokens expire anyway (Unix seconds).
    expires: Option<u64>,
}

#[derive(Serialize)]
struct RevocationAnswer {
    revocation: Revocation,
    /// Sessions of this node closed because they used such a token (other nodes close theirs).
    closed_here: usize,
}

const REVOCATION_HELP: &str = "expected {\"jti\": \"...\", \"expires\": <the token's exp>} or \
     {\"user_id\": \"42\", \"issued_before\": <unix secs, default now>, \"expires\": <unix secs, \
     default 24 h later>}";

/// `POST /revocations`: refuse a token (by `jti`) or all tokens of a user issued before a
/// time, on every node, for as long as they would have lived; open sessions using them close.
pub(crate) async fn add_revocation(
    State(state): State<AdminState>,
    body: Result<Json<RevocationRequest>, JsonRejection>,
) -> Response {
    let bad = |why: String| (StatusCode::BAD_REQUEST, format!("{why}\n")).into_response();
    let req = match body {
        Ok(Json(r)) => r,
        Err(e) => return bad(format!("{REVOCATION_HELP}: {e}")),
    };
    let now = unix_now();
    let leeway = state.cluster.leeway_secs;
    let revocation = match (req.jti, req.user_id) {
        (Some(jti), None) if req.issued_before.is_none() => {
            let Some(exp) = req.expires else {
                return bad(format!("{REVOCATION_HELP}: `expires` is required with `jti`"));
            };
            if jti.is_empty() || jti.len() > MAX_ID_BYTES {
                return bad(format!("jti must be 1 to {MAX_ID_BYTES} bytes"));
            }
            Revocation::Token { jti, until: exp.saturating_add(leeway) }
        }
        (None, Some(user_id)) => {
            if user_id.is_empty() || user_id.len() > MAX_ID_BYTES {
                return bad(format!("user_id must be 1 to {MAX_ID_BYTES} bytes"));
            }
            let before = req.issued_before.unwrap_or(now.saturating_add(1));
            let until = req
                .expires
                .unwrap_or(before.saturating_add(DEFAULT_USER_REVOCATION.as_secs()))
                .saturating_add(leeway);
            Revocation::IssuedBefore { user_id, before, until }
        }
        _ => return bad(REVOCATION_HELP.to_owned()),
    };
    if revocation.until() <= now {
        return bad("`expires` is in the past: such tokens are refused anyway".into());
    }
    let ids = state.cluster.state.revoke_tokens(revocation.clone());
    let closed_here = ids.iter().filter(|id| revoke_by_id(&state.sessions, id)).count();
    tracing::warn!(endpoint = "admin", revocation = ?revocation, closed_here, "tokens revoked");
    (StatusCode::CREATED, Json(RevocationAnswer { revocation, closed_here })).into_response()
}

/// `GET /revocations`: the active revocations this node knows.
pub(crate) async fn list_revocations(State(state): State<AdminState>) -> Response {
    Json(state.cluster.state.revocations()).into_response()
}

/// `GET /cluster`: backend, node id, Redis reachability, writes waiting.
pub(crate) async fn status(State(state): State<AdminState>) -> Response {
    Json(state.cluster.state.status()).into_response()
}
