//! One HTTP(S) GET: a timeout, a body cap, no redirects, no connection pool.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use url::{Host, Url};

/// The longest one fetch (connect, TLS, request, whole body) may take.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// The largest JWKS or discovery document accepted, in bytes (1 MiB).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// A successful response: the body and the `Cache-Control: max-age`, if any.
#[derive(Debug)]
pub(crate) struct Response {
    pub(crate) body: Bytes,
    pub(crate) max_age: Option<u64>,
}

/// Why a fetch failed. The messages name no token and no key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// The whole fetch took longer than [`FETCH_TIMEOUT`].
    #[error("no complete answer within {} s", FETCH_TIMEOUT.as_secs())]
    Timeout,
    /// Connecting, TLS or HTTP failed.
    #[error("{0}")]
    Io(String),
    /// The server answered with a redirect, which is never followed.
    #[error("HTTP {0} redirect not followed (configure the final URL)")]
    Redirect(u16),
    /// The server answered with a status other than 200.
    #[error("HTTP status {0}, expected 200")]
    Status(u16),
    /// The body is larger than [`MAX_BODY_BYTES`].
    #[error("the body is larger than {} bytes", MAX_BODY_BYTES)]
    TooLarge,
    /// The URL is not an `http://` or `https://` URL with a host.
    #[error("unsupported URL: {0}")]
    BadUrl(String),
}

impl FetchError {
    /// A short, stable snake_case name for logs and metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            FetchError::Timeout => "timeout",
            FetchError::Io(_) => "io",
            FetchError::Redirect(_) => "redirect",
            FetchError::Status(_) => "status",
            FetchError::TooLarge => "too_large",
            FetchError::BadUrl(_) => "bad_url",
        }
    }
}

/// GETs `url` within [`FETCH_TIMEOUT`], reading at most [`MAX_BODY_BYTES`].
pub(crate) async fn get(url: &Url) -> Result<Response, FetchError> {
    match tokio::time::timeout(FETCH_TIMEOUT, get_unbounded(url)).await {
        Ok(result) => result,
        Err(_) => Err(FetchError::Timeout),
    }
}

async fn get_unbounded(url: &Url) -> Result<Response, FetchError> {
    let https = match url.scheme() {
        "https" => true,
        "http" => false,
        other => return Err(FetchError::BadUrl(format!("scheme {other:?}"))),
    };
    let host = url.host().ok_or_else(|| FetchError::BadUrl("no host".into()))?;
    let port = url.port_or_known_default().unwrap_or(if https { 443 } else { 80 });
    let io_err = |e: std::io::Error| FetchError::Io(format!("connect: {e}"));
    let tcp = match &host {
        Host::Domain(name) => TcpStream::connect((*name, port)).await.map_err(io_err)?,
        Host::Ipv4(ip) => TcpStream::connect((*ip, port)).await.map_err(io_err)?,
        Host::Ipv6(ip) => TcpStream::connect((*ip, port)).await.map_err(io_err)?,
    };
    let mut target = url.path().to_owned();
    if let Some(query) = url.query() {
        target.push('?');
        target.push_str(query);
    }
    let authority = match url.port() {
        Some(port) => format!("{}:{port}", host),
        None => host.to_string(),
    };
    let request = Request::get(target)
        .header(header::HOST, authority)
        .header(header::ACCEPT, "application/json")
        .header(header::USER_AGENT, concat!("palisade-jwks/", env!("CARGO_PKG_VERSION")))
        .body(Empty::<Bytes>::new())
        .map_err(|e| FetchError::BadUrl(e.to_string()))?;
    if !https {
        return send(tcp, request).await;
    }
    let name = match host {
        Host::Domain(name) => rustls::pki_types::ServerName::try_from(name.to_owned())
            .map_err(|e| FetchError::BadUrl(e.to_string()))?,
        Host::Ipv4(ip) => rustls::pki_types::ServerName::from(std::net::IpAddr::V4(ip)),
        Host::Ipv6(ip) => rustls::pki_types::ServerName::from(std::net::IpAddr::V6(ip)),
    };
    let tls = tokio_rustls::TlsConnector::from(tls_config()?)
        .connect(name, tcp)
        .await
        .map_err(|e| FetchError::Io(format!("tls: {e}")))?;
    send(tls, request).await
}

async fn send<T>(io: T, request: Request<Empty<Bytes>>) -> Result<Response, FetchError>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let http_err = |e: hyper::Error| FetchError::Io(format!("http: {e}"));
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(io)).await.map_err(http_err)?;
    // The connection is driven alongside the request and dropped with it.
    let exchange = async {
        let response = sender.send_request(request).await.map_err(http_err)?;
        let status = response.status();
        if status.is_redirection() {
            return Err(FetchError::Redirect(status.as_u16()));
        }
        if status != StatusCode::OK {
            return Err(FetchError::Status(status.as_u16()));
        }
        let headers = response.headers();
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > MAX_BODY_BYTES as u64) {
            return Err(FetchError::TooLarge);
        }
        let max_age = headers.get_all(header::CACHE_CONTROL).iter().find_map(max_age);
        let body =
            Limited::new(response.into_body(), MAX_BODY_BYTES).collect().await.map_err(|e| {
                match e.downcast::<http_body_util::LengthLimitError>() {
                    Ok(_) => FetchError::TooLarge,
                    Err(e) => FetchError::Io(format!("body: {e}")),
                }
            })?;
        Ok(Response { body: body.to_bytes(), max_age })
    };
    tokio::pin!(exchange);
    tokio::select! {
        result = &mut exchange => result,
        conn_result = conn => match conn_result {
            // The connection ended first: the exchange can still have its answer buffered.
            Ok(()) => exchange.await,
            Err(e) => Err(http_err(e)),
        },
    }
}

/// `max-age=N` from one `Cache-Control` header value; `no-store`/`no-cache` count as 0.
fn max_age(value: &http::HeaderValue) -> Option<u64> {
    let text = value.to_str().ok()?;
    let mut found = None;
    for directive in text.split(',').map(str::trim) {
        let lower = directive.to_ascii_lowercase();
        if lower == "no-store" || lower == "no-cache" {
            return Some(0);
        }
        if let Some(secs) = lower.strip_prefix("max-age=") {
            found = secs.trim_matches('"').parse().ok();
        }
    }
    found
}

/// The TLS client configuration: ring, the operating system's roots; built once.
fn tls_config() -> Result<Arc<rustls::ClientConfig>, FetchError> {
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let mut roots = rustls::RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                // A certificate the store cannot use is skipped, as browsers do.
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err("no CA certificates found on this system".to_owned());
            }
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map(|b| Arc::new(b.with_root_certificates(roots).with_no_client_auth()))
                .map_err(|e| e.to_string())
        })
        .clone()
        .map_err(|e| FetchError::Io(format!("tls: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_age_reads_the_directive() {
        let v = |s: &'static str| http::HeaderValue::from_static(s);
        assert_eq!(max_age(&v("public, max-age=120")), Some(120));
        assert_eq!(max_age(&v("no-store")), Some(0));
        assert_eq!(max_age(&v("public")), None);
        assert_eq!(max_age(&v("max-age=abc")), None);
    }
}
