//! Admin handlers for channels (routed in `admin::router`): server-side publish, the active
//! channels, a channel's presence, ending a user's subscriptions and closing a channel.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::value::RawValue;

use crate::admin::AdminState;

#[derive(Serialize)]
struct Published {
    channel: String,
    offset: u64,
    /// Subscribers of this node it was queued for; absent in cluster mode, where every node
    /// (this one too) delivers it as it arrives from Redis.
    #[serde(skip_serializing_if = "Option::is_none")]
    delivered: Option<usize>,
}

/// 503 for a request the cluster could not serve.
fn unavailable(e: super::hub::Unavailable) -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, format!("{}; retry when redis is reachable\n", e.0))
        .into_response()
}

/// `POST /channels/{channel}/publish`.
pub(crate) async fn publish(
    State(state): State<AdminState>,
    Path(channel): Path<String>,
    body: Bytes,
) -> Response {
    if let Err(detail) = super::grants::validate_channel(&channel) {
        return (StatusCode::BAD_REQUEST, format!("bad channel: {detail}\n")).into_response();
    }
    let hub = &state.channels;
    let max = hub.settings.max_data_bytes;
    if body.len() > max {
        let msg = format!(
            "data is {} bytes; at most {max} (channels.max_data_bytes, or limits.max_message_bytes when 0)\n",
            body.len()
        );
        return (StatusCode::PAYLOAD_TOO_LARGE, msg).into_response();
    }
    let text = match std::str::from_utf8(&body) {
        Ok(t) => t.trim(),
        Err(_) => return (StatusCode::BAD_REQUEST, "the body is not UTF-8 JSON\n").into_response(),
    };
    let data: &RawValue = match serde_json::from_str(text) {
        Ok(d) => d,
        Err(e) => {
            let msg = format!("the body is the publication's data, any JSON value: {e}\n");
            return (StatusCode::BAD_REQUEST, msg).into_response();
        }
    };
    let (offset, delivered) = match hub.publish(&channel, data, None).await {
        Ok(done) => done,
        Err(e) => return unavailable(e),
    };
    tracing::info!(endpoint = "admin", channel = %channel, offset, delivered, "channel publication");
    Json(Published { channel, offset, delivered }).into_response()
}

/// `GET /channels`.
pub(crate) async fn list(State(state): State<AdminState>) -> Response {
    Json(state.channels.list()).into_response()
}

#[derive(Serialize)]
struct Presence {
    channel: String,
    users: Vec<super::hub::PresenceRow>,
}

/// `GET /channels/{channel}/presence`.
pub(crate) async fn presence(
    State(state): State<AdminState>,
    Path(channel): Path<String>,
) -> Response {
    if let Err(detail) = super::grants::validate_channel(&channel) {
        return (StatusCode::BAD_REQUEST, format!("bad channel: {detail}\n")).into_response();
    }
    let users = match state.channels.presence(&channel).await {
        Ok(users) => users,
        Err(e) => return unavailable(e),
    };
    Json(Presence { channel, users }).into_response()
}

#[derive(Serialize)]
struct UserUnsubscribed<'a> {
    channel: &'a str,
    user_id: &'a str,
    unsubscribed: usize,
}

/// `DELETE /channels/{channel}/subscribers/{user_id}`: every session of the user subscribed to
/// the channel gets `unsubscribed` with `permission_revoked`. 404 when it had none (one node;
/// in cluster mode every node ends its own, and the count is this node's).
pub(crate) async fn unsubscribe_user(
    State(state): State<AdminState>,
    Path((channel, user_id)): Path<(String, String)>,
) -> Response {
    if let Err(detail) = super::grants::validate_channel(&channel) {
        return (StatusCode::BAD_REQUEST, format!("bad channel: {detail}\n")).into_response();
    }
    let hub = &state.channels;
    let n = match hub.unsubscribe_user(&channel, &user_id).await {
        Ok(n) => n,
        Err(e) => return unavailable(e),
    };
    if n == 0 && !hub.is_clustered() {
        return (StatusCode::NOT_FOUND, "no subscription of that user to that channel\n")
            .into_response();
    }
    for _ in 0..n {
        hub.stats.denied("permission_revoked");
    }
    tracing::info!(endpoint = "admin", channel = %channel, user_id = %user_id, unsubscribed = n, "channel subscriptions ended by admin");
    Json(UserUnsubscribed { channel: &channel, user_id: &user_id, unsubscribed: n }).into_response()
}

#[derive(Serialize)]
struct ChannelClosed<'a> {
    channel: &'a str,
    #[serde(flatten)]
    closed: super::hub::Closed,
}

/// `DELETE /channels/{channel}`: every subscription ends with `channel_closed` and the history
/// is dropped (a new epoch when the channel is next used). 404 when the channel is not active.
pub(crate) async fn close(
    State(state): State<AdminState>,
    Path(channel): Path<String>,
) -> Response {
    if let Err(detail) = super::grants::validate_channel(&channel) {
        return (StatusCode::BAD_REQUEST, format!("bad channel: {detail}\n")).into_response();
    }
    let closed = match state.channels.close(&channel).await {
        Ok(closed) => closed,
        Err(e) => return unavailable(e),
    };
    match closed {
        Some(closed) => {
            tracing::info!(endpoint = "admin", channel = %channel, unsubscribed = closed.unsubscribed, history_dropped = closed.history_dropped, "channel closed by admin");
            Json(ChannelClosed { channel: &channel, closed }).into_response()
        }
        None => (StatusCode::NOT_FOUND, "no such channel (no subscribers and no history)\n")
            .into_response(),
    }
}
