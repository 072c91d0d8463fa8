//! The cluster's admin routes: `POST /publish`, `POST /revocations`, `GET /revocations`,
//! `GET /cluster`, the cluster-wide views of `/sessions`, the cluster line of `/readyz` and the
//! cluster's series of `/metrics`.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use palisade_cluster::{Revocation, SessionEntry, SharedState};
use palisade_transport::Message;
use serde::{Deserialize, Serialize};

use super::AdminState;
use crate::cluster::revoke_by_id;
use crate::sessions::unix_now;

/// Revocations of all of a user's tokens last this long unless the request says `expires`.
const DEFAULT_USER_REVOCATION: Duration = Duration::from_secs(24 * 3600);

/// Longest `jti` or `user_id` accepted by `POST /revocations` (they become Redis key names).
const MAX_ID_BYTES: usize = 256;

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
    super::append_exposition(body, &state.encode_metrics());
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
    let here = state.sessions.send_to_user(&req.user_id, &Message::Text(req.data.clone().into()));
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
