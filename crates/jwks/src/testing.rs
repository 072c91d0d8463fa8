//! Test support (feature `testing`): a real HTTP identity provider on loopback and key pairs to
//! mint tokens with. Not for production use.
//!
//! [`Idp`] serves `/jwks` and `/.well-known/openid-configuration` over real HTTP/1.1 on
//! `127.0.0.1:0`, and can be told to rotate keys, go down, hang, serve garbage, serve 5 MB or
//! redirect; it counts the requests it sees.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// How the provider answers `/jwks`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// 200 with the current key set (and `Cache-Control: max-age` when set).
    Serve,
    /// Closes every connection without an answer.
    Down,
    /// Reads the request and never answers.
    Hang,
    /// 200 with a body that is not JSON.
    Garbage,
    /// 200 with a 5 MB body.
    Huge,
    /// 302 to this location.
    Redirect(String),
    /// This status with an empty body.
    Status(u16),
}

struct State {
    mode: Mode,
    keys: Vec<Value>,
    max_age: Option<u64>,
    discovery_issuer: String,
    requests: BTreeMap<String, usize>,
}

/// A loopback identity provider; stops when dropped.
pub struct Idp {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Idp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Idp {
    /// Starts serving `keys` (JWK objects) at `/jwks`; the discovery document names
    /// [`Idp::issuer`].
    pub async fn start(keys: Vec<Value>) -> Idp {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the test idp");
        let addr = listener.local_addr().expect("local addr");
        let state = Arc::new(Mutex::new(State {
            mode: Mode::Serve,
            keys,
            max_age: None,
            discovery_issuer: format!("http://{addr}/realm"),
            requests: BTreeMap::new(),
        }));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let state = shared.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16 * 1024 {
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let text = String::from_utf8_lossy(&buf);
                    let path = text.split_whitespace().nth(1).unwrap_or("/").to_owned();
                    let (mode, body, max_age) = {
                        let mut s = lock(&state);
                        *s.requests.entry(path.clone()).or_default() += 1;
                        let body = if path.starts_with("/.well-known/") {
                            json!({"issuer": s.discovery_issuer, "jwks_uri": format!("http://{addr}/jwks")})
                        } else {
                            json!({"keys": s.keys})
                        };
                        let mode = if path.starts_with("/.well-known/") {
                            Mode::Serve
                        } else {
                            s.mode.clone()
                        };
                        (mode, body.to_string().into_bytes(), s.max_age)
                    };
                    let response = match mode {
                        Mode::Serve => {
                            let cache = max_age
                                .map(|a| format!("Cache-Control: max-age={a}\r\n"))
                                .unwrap_or_default();
                            respond(200, &cache, &body)
                        }
                        Mode::Down => return,
                        Mode::Hang => {
                            std::future::pending::<()>().await;
                            return;
                        }
                        Mode::Garbage => respond(200, "", b"<html>not json</html>"),
                        Mode::Huge => respond(200, "", &vec![b' '; 5 * 1024 * 1024]),
                        Mode::Redirect(to) => respond(302, &format!("Location: {to}\r\n"), b""),
                        Mode::Status(code) => respond(code, "", b""),
                    };
                    let _ = stream.write_all(&response).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        Idp { addr, state, task }
    }

    /// The provider's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>/jwks`.
    pub fn jwks_url(&self) -> String {
        format!("http://{}/jwks", self.addr)
    }

    /// `http://<addr>/.well-known/openid-configuration`.
    pub fn discovery_url(&self) -> String {
        format!("http://{}/.well-known/openid-configuration", self.addr)
    }

    /// The issuer the discovery document names (by default `http://<addr>/realm`).
    pub fn issuer(&self) -> String {
        lock(&self.state).discovery_issuer.clone()
    }

    /// Makes the discovery document name another issuer.
    pub fn set_discovery_issuer(&self, issuer: &str) {
        lock(&self.state).discovery_issuer = issuer.to_owned();
    }

    /// Replaces the key set (a rotation).
    pub fn set_keys(&self, keys: Vec<Value>) {
        lock(&self.state).keys = keys;
    }

    /// Changes how `/jwks` answers.
    pub fn set_mode(&self, mode: Mode) {
        lock(&self.state).mode = mode;
    }

    /// Sends `Cache-Control: max-age` with the set.
    pub fn set_max_age(&self, secs: Option<u64>) {
        lock(&self.state).max_age = secs;
    }

    /// Requests seen for `path` (e.g. `/jwks`).
    pub fn requests(&self, path: &str) -> usize {
        lock(&self.state).requests.get(path).copied().unwrap_or(0)
    }

    /// Requests seen for any path.
    pub fn total_requests(&self) -> usize {
        lock(&self.state).requests.values().sum()
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

fn respond(code: u16, headers: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n{headers}\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

/// A private key of a fixture, to publish as a JWK and to sign tokens with.
#[derive(Clone)]
pub struct TestKey {
    alg: jsonwebtoken::Algorithm,
    key: EncodingKey,
}

impl TestKey {
    /// A 2048-bit RSA key (RS256).
    pub fn rsa() -> TestKey {
        TestKey::rsa_pem(include_bytes!("../../token/tests/fixtures/rsa-private.pem"))
    }

    /// A second 2048-bit RSA key (RS256).
    pub fn rsa2() -> TestKey {
        TestKey::rsa_pem(include_bytes!("../../token/tests/fixtures/rsa2-private.pem"))
    }

    /// A 1024-bit RSA key: too weak, a JWKS holding it must ignore it.
    pub fn rsa1024() -> TestKey {
        TestKey::rsa_pem(include_bytes!("../tests/fixtures/rsa1024-private.pem"))
    }

    /// A P-256 key (ES256).
    pub fn ec() -> TestKey {
        let key =
            EncodingKey::from_ec_pem(include_bytes!("../../token/tests/fixtures/ec-private.pem"));
        TestKey { alg: jsonwebtoken::Algorithm::ES256, key: key.expect("ec fixture") }
    }

    /// An Ed25519 key (EdDSA).
    pub fn ed25519() -> TestKey {
        let pem = include_bytes!("../../token/tests/fixtures/ed25519-private.pem");
        let key = EncodingKey::from_ed_pem(pem).expect("ed25519 fixture");
        TestKey { alg: jsonwebtoken::Algorithm::EdDSA, key }
    }

    fn rsa_pem(pem: &[u8]) -> TestKey {
        let key = EncodingKey::from_rsa_pem(pem).expect("rsa fixture");
        TestKey { alg: jsonwebtoken::Algorithm::RS256, key }
    }

    /// The public JWK of this key with `kid`, `use: sig` and its `alg`.
    pub fn jwk(&self, kid: &str) -> Value {
        let jwk = Jwk::from_encoding_key(&self.key, self.alg).expect("jwk from fixture");
        let mut value = serde_json::to_value(jwk).expect("jwk json");
        value["kid"] = json!(kid);
        value["use"] = json!("sig");
        value
    }

    /// A token signed with this key: header `kid` (when given) plus `extra_header` entries,
    /// payload `claims`.
    pub fn mint(&self, kid: Option<&str>, claims: &Value, extra_header: &[(&str, &str)]) -> String {
        let mut header = Header::new(self.alg);
        header.kid = kid.map(str::to_owned);
        for (name, value) in extra_header {
            match *name {
                "jku" => header.jku = Some((*value).to_owned()),
                "x5u" => header.x5u = Some((*value).to_owned()),
                other => panic!("TestKey::mint: header {other} not supported"),
            }
        }
        jsonwebtoken::encode(&header, claims, &self.key).expect("sign test token")
    }
}

/// Mints an HS256 token with `secret` (for algorithm-confusion tests).
pub fn mint_hs256(secret: &[u8], kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(secret).expect("hs256 key"))
        .expect("sign hs256")
}
