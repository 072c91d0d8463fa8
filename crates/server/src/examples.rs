//! `GET /examples/chat` on the admin listener: a browser page running the official TypeScript
//! client (clients/js/dist, embedded at build time like the dashboard's assets) against the
//! secure endpoint. Public like the dashboard page; it holds no data, the token is the user's.

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

const PAGE: &str = include_str!("../assets/examples/chat.html");
const SCRIPT: &str = include_str!("../assets/examples/chat.js");
const STYLE: &str = include_str!("../assets/examples/chat.css");
const CLIENT: &str = include_str!("../../../clients/js/dist/index.js");
const CLIENT_BACKOFF: &str = include_str!("../../../clients/js/dist/backoff.js");

/// Scripts and styles only from this origin; WebSocket connections to any `ws:`/`wss:` URL
/// (the secure endpoint listens on another port).
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src ws: wss:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

const JS: &str = "text/javascript; charset=utf-8";

// The routes are built in `admin::router`.

/// `GET /examples/chat`.
pub(crate) async fn chat_page() -> Response {
    asset("text/html; charset=utf-8", PAGE)
}

/// `GET /examples/chat.js`.
pub(crate) async fn chat_script() -> Response {
    asset(JS, SCRIPT)
}

/// `GET /examples/chat.css`.
pub(crate) async fn chat_style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

/// `GET /examples/palisade-client/index.js`.
pub(crate) async fn client() -> Response {
    asset(JS, CLIENT)
}

/// `GET /examples/palisade-client/backoff.js`.
pub(crate) async fn client_backoff() -> Response {
    asset(JS, CLIENT_BACKOFF)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_TYPE, content_type),
        (header::CONTENT_SECURITY_POLICY, POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}
