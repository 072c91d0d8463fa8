//! The admin HTTP listener: health, Prometheus metrics, sessions and bans.
//!
//! Every route but `/healthz` requires `Authorization: Bearer <admin token>` when
//! `admin.token_file` is set. Keep the listener on loopback or a private network.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use palisade_firewall::Firewall;
use palisade_metrics::Metrics;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::audit::{self, Audit};
use crate::sessions::SessionRegistry;

mod cluster_api;

#[derive(Clone)]
pub(crate) struct AdminState {
    pub(crate) sessions: SessionRegistry,
    pub(crate) firewall: Firewall,
    pub(crate) metrics: Metrics,
    pub(crate) token: Option<Arc<Vec<u8>>>,
    pub(crate) ban_duration: Duration,
    pub(crate) posture: Arc<Vec<crate::posture::Finding>>,
    pub(crate) shutdown: CancellationToken,
    pub(crate) audit: Audit,
    pub(crate) cluster: crate::cluster::Link,
    /// The JWKS issuers (`GET /issuers`); `None` without `[[auth.issuers]]`.
    pub(crate) issuers: Option<palisade_jwks::Verifier>,
    pub(crate) reloader: Arc<crate::reload::Reloader>,
    pub(crate) handover: Arc<crate::upgrade::Handover>,
    /// The node's channels (`/channels`).
    pub(crate) channels: Arc<crate::channels::Hub>,
}

/// How long connections the admin listener accepted before `stop` get to send their request:
/// during an upgrade the old process stops accepting at once (the successor accepts on the same
/// socket), and a probe it had just accepted must still get its answer, not a hang-up.
const ADMIN_GRACE: Duration = Duration::from_secs(1);

/// Serves the admin API on `listener`: a `TcpListener`, or a TLS listener for `admin.tls`.
/// Once `stop` is cancelled it accepts nothing more, answers what it has accepted (for up to
/// [`ADMIN_GRACE`] before the request arrives, then as long as the request takes) and returns.
pub(crate) async fn serve<L>(listener: L, state: AdminState, stop: CancellationToken)
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    let app = router(state);
    let listener = UntilStopped { inner: listener, stop: stop.clone() };
    let graceful = async move {
        stop.cancelled().await;
        tokio::time::sleep(ADMIN_GRACE).await;
    };
    let result = axum::serve(listener, app).with_graceful_shutdown(graceful).await;
    if let Err(e) = result {
        tracing::error!(endpoint = "admin", kind = "io", error = %e, "admin listener failed");
    }
}

/// A listener that accepts nothing more once `stop` is cancelled (the socket itself stays open:
/// after an upgrade it is the successor's too).
struct UntilStopped<L> {
    inner: L,
    stop: CancellationToken,
}

impl<L: axum::serve::Listener> axum::serve::Listener for UntilStopped<L> {
    type Io = L::Io;
    type Addr = L::Addr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        tokio::select! {
            biased;
            () = self.stop.cancelled() => std::future::pending().await,
            conn = self.inner.accept() => conn,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

fn router(state: AdminState) -> Router {
    let protected = Router::new()
        .route("/metrics", get(metrics))
        .route("/stats", get(stats))
        .route("/posture", get(posture))
        .route("/sessions", get(list_sessions))
        .route("/sessions/{id}", delete(revoke_session))
        .route("/users/{user_id}/sessions", delete(revoke_user))
        .route("/bans", get(list_bans).post(add_ban))
        .route("/bans/{ip}", delete(lift_ban))
        .route("/publish", post(cluster_api::publish))
        .route("/revocations", get(cluster_api::list_revocations).post(cluster_api::add_revocation))
        .route("/cluster", get(cluster_api::status))
        .route("/issuers", get(crate::issuers::list))
        .route("/issuers/refresh", post(crate::issuers::refresh))
        .route("/reload", post(crate::reload::admin_reload))
        .route("/upgrade", post(crate::upgrade::admin_upgrade))
        .route("/dashboard/feed", get(crate::dashboard::feed).layer(crate::dashboard::feed_slots()))
        .route("/channels", get(crate::channels::admin::list))
        .route("/channels/{channel}/publish", post(crate::channels::admin::publish))
        .route("/channels/{channel}/presence", get(crate::channels::admin::presence))
        .route("/channels/{channel}", delete(crate::channels::admin::close))
        .route(
            "/channels/{channel}/subscribers/{user_id}",
            delete(crate::channels::admin::unsubscribe_user),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token))
        .route_layer(middleware::from_fn_with_state(state.clone(), audit::admin_calls));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        // Public: pages and assets that hold no data.
        .route("/dashboard", get(crate::dashboard::page))
        .route("/dashboard/app.js", get(crate::dashboard::script))
        .route("/dashboard/app.css", get(crate::dashboard::style))
        .route("/dashboard/favicon.svg", get(crate::dashboard::icon))
        .route("/examples/chat", get(crate::examples::chat_page))
        .route("/examples/chat.js", get(crate::examples::chat_script))
        .route("/examples/chat.css", get(crate::examples::chat_style))
        .route("/examples/palisade-client/index.js", get(crate::examples::client))
        .route("/examples/palisade-client/backoff.js", get(crate::examples::client_backoff))
        .merge(protected)
        .with_state(state)
}

async fn require_token(State(state): State<AdminState>, req: Request, next: Next) -> Response {
    if let Some(expected) = &state.token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(crate::http_auth::bearer_token)
            .unwrap_or("");
        // Compare digests so neither the length nor the content leaks through timing.
        let ok = palisade_digest::sha256(given.as_bytes())
            == palisade_digest::sha256(expected.as_slice());
        if !ok {
            tracing::warn!(endpoint = "admin", kind = "admin_auth", path = %req.uri().path(), "admin call refused: missing or wrong bearer token");
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer realm=\"palisade-admin\"")],
                "missing or wrong admin bearer token\n",
            )
                .into_response();
        }
    }
    next.run(req).await
}

/// Ready while serving; 503 once a shutdown has begun, for its whole drain (the admin API
/// answers until the connections are gone). After an upgrade the node stays ready: the
/// successor serves on the same sockets and answers this on the admin socket, and this process
/// (should a request still reach it) says the same.
async fn readyz(State(state): State<AdminState>) -> Response {
    if state.handover.done().is_cancelled() {
        "ready\nupgrade: a new process serves; this one drains\n".into_response()
    } else if state.shutdown.is_cancelled() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response()
    } else {
        format!("ready\n{}", cluster_api::readiness(state.cluster.state.as_ref())).into_response()
    }
}

async fn posture(State(state): State<AdminState>) -> Response {
    Json(state.posture.as_ref()).into_response()
}

async fn metrics(State(state): State<AdminState>) -> Response {
    let mut body = state.metrics.encode();
    cluster_api::append_metrics(&mut body, state.cluster.state.as_ref());
    crate::issuers::append_metrics(&mut body, state.issuers.as_ref());
    state.reloader.append_metrics(&mut body);
    crate::channels::append_metrics(&mut body, &state.channels);
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body)
        .into_response()
}

async fn stats(State(state): State<AdminState>) -> Response {
    Json(state.metrics.snapshot()).into_response()
}

async fn list_sessions(State(state): State<AdminState>) -> Response {
    cluster_api::list_sessions(&state).await
}

async fn revoke_session(State(state): State<AdminState>, Path(id): Path<String>) -> Response {
    let found = state.sessions.list().into_iter().find(|s| s.id.as_str() == id).map(|s| s.id);
    match found {
        Some(id) if state.sessions.revoke(&id) => {
            tracing::info!(endpoint = "admin", session = %id, "session revoked");
            state.audit.record(|| audit::revoked(Some(id.as_str()), None, 1));
            (StatusCode::OK, Json(Revoked { revoked: 1 })).into_response()
        }
        _ => cluster_api::revoke_remote_session(&state, &id).await,
    }
}

async fn revoke_user(State(state): State<AdminState>, Path(user_id): Path<String>) -> Response {
    let n = state.sessions.revoke_user(&user_id);
    state.audit.record(|| audit::revoked(None, Some(&user_id), n));
    cluster_api::revoke_user(&state, &user_id, n).await
}

#[derive(Serialize)]
struct Revoked {
    revoked: usize,
}

#[derive(Serialize)]
struct BanView {
    ip: IpAddr,
    remaining_secs: u64,
}

async fn list_bans(State(state): State<AdminState>) -> Response {
    let bans: Vec<BanView> = state
        .firewall
        .bans(Instant::now())
        .into_iter()
        .map(|(ip, left)| BanView { ip, remaining_secs: left.as_secs() })
        .collect();
    Json(bans).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BanRequest {
    ip: IpAddr,
    secs: Option<u64>,
}

async fn add_ban(
    State(state): State<AdminState>,
    body: Result<Json<BanRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(req) = match body {
        Ok(b) => b,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("expected {{\"ip\": \"192.0.2.1\", \"secs\": 600}}: {e}\n"),
            )
                .into_response();
        }
    };
    let duration = req.secs.map(Duration::from_secs).unwrap_or(state.ban_duration);
    state.firewall.ban(req.ip, duration, Instant::now());
    state.audit.record(|| audit::ban(req.ip, duration, "admin"));
    state.cluster.ban(req.ip, duration);
    state.metrics.set_bans_active(state.firewall.bans(Instant::now()).len() as i64);
    tracing::warn!(endpoint = "admin", client_ip = %req.ip, ban_secs = duration.as_secs(), "address banned by admin");
    (StatusCode::CREATED, Json(BanView { ip: req.ip, remaining_secs: duration.as_secs() }))
        .into_response()
}

async fn lift_ban(State(state): State<AdminState>, Path(ip): Path<String>) -> Response {
    let Ok(ip) = ip.parse::<IpAddr>() else {
        return (StatusCode::BAD_REQUEST, "not an IP address\n").into_response();
    };
    let known_to_cluster = state.cluster.state.unban(ip);
    if state.firewall.unban(ip) || known_to_cluster {
        state.metrics.set_bans_active(state.firewall.bans(Instant::now()).len() as i64);
        tracing::info!(endpoint = "admin", client_ip = %ip, "ban lifted");
        state.audit.record(|| palisade_audit::Event::Unban { ip, cause: "admin".into() });
        StatusCode::NO_CONTENT.into_response()
    } else {
        (StatusCode::NOT_FOUND, "no ban for that address\n").into_response()
    }
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
