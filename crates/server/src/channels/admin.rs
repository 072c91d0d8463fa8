//! Admin handlers for channels (routed in `admin::router`): server-side publish, the active channels, a channel's presence.

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
    delivered: usize,
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
        let msg =
            format!("data is {} bytes; at most {max} (limits.max_message_bytes)\n", body.len());
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
    let (offset, delivered) = hub.publish(&channel, data, None);
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
    let users = state.channels.presence(&channel);
    Json(Presence { channel, users }).into_response()
}
