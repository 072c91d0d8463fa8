//! `wss://` and `https://`: the development CA, clear refusals of plain text and old TLS
//! versions, certificate reload on SIGHUP, and the startup errors for bad files.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::support::{STEP, Server};

type Wss = WebSocketStream<TlsStream<TcpStream>>;

/// Development certificates written by `palisade dev-cert` into a temporary folder.
struct DevCa {
    dir: tempfile::TempDir,
}

impl DevCa {
    fn new() -> DevCa {
        let dir = tempfile::tempdir().expect("tempdir");
        dev_cert(dir.path(), false);
        DevCa { dir }
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// Config overrides that turn TLS on with this certificate.
    fn overrides(&self) -> String {
        format!(
            "tls.cert_file = {:?}\ntls.key_file = {:?}\n",
            self.path("cert.pem").display().to_string(),
            self.path("key.pem").display().to_string()
        )
    }

    /// A client configuration that trusts this CA only.
    fn client(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_file(self.path("ca.pem")).expect("ca.pem")).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Arc::new(config)
    }

    /// The server certificate in `cert.pem` now.
    fn served_cert(&self) -> CertificateDer<'static> {
        CertificateDer::from_pem_file(self.path("cert.pem")).expect("cert.pem")
    }
}

/// Runs `palisade dev-cert --out dir`.
fn dev_cert(dir: &Path, renew: bool) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_palisade"));
    cmd.arg("dev-cert").arg("--out").arg(dir);
    if renew {
        cmd.arg("--renew");
    }
    let out = cmd.output().expect("run palisade dev-cert");
    assert!(out.status.success(), "dev-cert failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// TLS to `addr` as `localhost`, trusting `ca`'s certificate authority.
async fn tls_connect(ca: &DevCa, addr: SocketAddr) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::try_from("localhost").unwrap();
    timeout(STEP, TlsConnector::from(ca.client()).connect(name, tcp))
        .await
        .expect("tls handshake timed out")
        .expect("tls handshake")
}

/// A `wss://` client; also returns the certificate the server presented.
async fn wss(ca: &DevCa, addr: SocketAddr) -> (Wss, CertificateDer<'static>) {
    let tls = tls_connect(ca, addr).await;
    let presented = tls.get_ref().1.peer_certificates().expect("server certificate")[0].clone();
    let url = format!("wss://localhost:{}/", addr.port());
    let (ws, _) = timeout(STEP, tokio_tungstenite::client_async(url, tls))
        .await
        .expect("websocket handshake timed out")
        .expect("websocket handshake");
    (ws, presented)
}

async fn send(ws: &mut Wss, text: &str) {
    timeout(STEP, ws.send(Message::text(text))).await.expect("send timed out").expect("send");
}

async fn expect_text(ws: &mut Wss, expected: &str) {
    loop {
        let item = timeout(STEP, ws.next()).await.expect("no message in time");
        match item {
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(Message::Text(t))) => return assert_eq!(t.as_str(), expected),
            other => panic!("expected text {expected:?}, got {other:?}"),
        }
    }
}

async fn round_trip(ws: &mut Wss, text: &str) {
    send(ws, text).await;
    expect_text(ws, &format!("Server received: {text}")).await;
}

/// Waits (bounded) for a console line containing every one of `needles`; returns it.
#[track_caller]
fn expect_console_line(server: &Server, needles: &[&str]) -> String {
    let deadline = Instant::now() + STEP;
    loop {
        let console = server.console();
        if let Some(line) = console.lines().find(|l| needles.iter().all(|n| l.contains(n))) {
            return line.to_owned();
        }
        assert!(Instant::now() < deadline, "no console line with {needles:?}; console:\n{console}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn sighup(server: &Server) {
    let status =
        Command::new("kill").args(["-HUP", &server.pid().to_string()]).status().expect("run kill");
    assert!(status.success(), "kill -HUP failed: {status}");
}

#[tokio::test]
async fn wss_echo_and_authentication_work_with_the_dev_ca() {
    let ca = DevCa::new();
    let server = Server::start(&ca.overrides());
    let (mut echo, presented) = wss(&ca, server.echo).await;
    assert_eq!(presented, ca.served_cert());
    round_trip(&mut echo, "over tls").await;

    let (mut secure, _) = wss(&ca, server.secure).await;
    send(&mut secure, &server.token("42", 60)).await;
    expect_text(&mut secure, "Authenticated!").await;
    round_trip(&mut secure, "secret stuff").await;
    let line = expect_console_line(&server, &["INFO", "tls enabled", "CN=localhost"]);
    assert!(line.contains("sha256="), "{line}");
}

#[tokio::test]
async fn plain_ws_client_on_the_tls_port_gets_400_and_a_warning() {
    let ca = DevCa::new();
    let server = Server::start(&ca.overrides());
    let err = timeout(STEP, tokio_tungstenite::connect_async(format!("ws://{}/", server.echo)))
        .await
        .expect("a plain client must get an answer, not a hang")
        .unwrap_err();
    let tungstenite::Error::Http(resp) = err else { panic!("expected an http answer, got {err}") };
    assert_eq!(resp.status(), 400);
    let body = String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default()).into_owned();
    assert!(body.contains("connect with wss://"), "{body}");
    // A client mistake, not a server fault: a warning on the console, nothing in the error log.
    expect_console_line(&server, &["WARN", "handshake failed", "kind=\"tls\"", "plain text"]);
    assert!(!server.error_log().contains("tls"), "error log: {}", server.error_log());
    // The port still serves TLS clients.
    let (mut ws, _) = wss(&ca, server.echo).await;
    round_trip(&mut ws, "fine").await;
}

/// A ClientHello whose highest version is TLS 1.1 (0x0302): no `supported_versions` extension,
/// otherwise what a TLS 1.1 client with ECDHE would send.
fn tls11_client_hello() -> Vec<u8> {
    fn with_len16(body: &[u8]) -> Vec<u8> {
        let mut out = (body.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(body);
        out
    }
    fn extension(kind: u16, body: &[u8]) -> Vec<u8> {
        let mut out = kind.to_be_bytes().to_vec();
        out.extend(with_len16(body));
        out
    }
    let mut extensions = Vec::new();
    let mut sni = vec![0u8];
    sni.extend(with_len16(b"localhost"));
    extensions.extend(extension(0x0000, &with_len16(&sni)));
    extensions.extend(extension(0x000a, &with_len16(&[0x00, 0x1d, 0x00, 0x17])));
    extensions.extend(extension(0x000b, &[0x01, 0x00]));
    extensions.extend(extension(0x000d, &with_len16(&[0x04, 0x03, 0x08, 0x04, 0x04, 0x01])));

    let mut hello = vec![0x03, 0x02]; // legacy_version: TLS 1.1
    hello.extend([0x5a; 32]); // random
    hello.push(0); // no session id
    hello.extend(with_len16(&[0xc0, 0x2b, 0xc0, 0x2f, 0xc0, 0x13, 0x00, 0x2f])); // cipher suites
    hello.extend([0x01, 0x00]); // compression: null only
    hello.extend(with_len16(&extensions));

    let mut handshake = vec![0x01]; // client_hello
    handshake.extend(&(hello.len() as u32).to_be_bytes()[1..]);
    handshake.extend(hello);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend(with_len16(&handshake));
    record
}

#[tokio::test]
async fn client_offering_only_tls_1_1_is_refused() {
    let ca = DevCa::new();
    let server = Server::start(&ca.overrides());
    let mut tcp = TcpStream::connect(server.echo).await.expect("connect");
    tcp.write_all(&tls11_client_hello()).await.expect("send client hello");
    let mut answer = Vec::new();
    timeout(STEP, tcp.read_to_end(&mut answer))
        .await
        .expect("the server neither answered nor closed")
        .expect("read");
    // A fatal alert record: type 21, two bytes, level 2 (fatal), 70 (protocol_version).
    assert!(answer.len() >= 7, "expected an alert, got {answer:?}");
    assert_eq!(answer[0], 0x15, "expected an alert record, got {answer:?}");
    assert_eq!(&answer[3..7], &[0x00, 0x02, 0x02, 70], "expected protocol_version: {answer:?}");
    expect_console_line(&server, &["WARN", "handshake failed", "kind=\"tls\"", "incompatible"]);
}

#[tokio::test]
async fn tls_handshake_is_bounded_by_the_handshake_timeout() {
    let ca = DevCa::new();
    let server = Server::start(&(ca.overrides() + "limits.handshake_timeout_secs = 1\n"));
    let mut tcp = TcpStream::connect(server.echo).await.expect("connect");
    // The start of a handshake record, then silence.
    tcp.write_all(&[0x16, 0x03, 0x01, 0x00, 0x80]).await.expect("write");
    let started = Instant::now();
    let mut rest = Vec::new();
    let read = timeout(STEP, tcp.read_to_end(&mut rest)).await.expect("no hang-up in time");
    assert_eq!(read.unwrap_or(0), 0, "expected a hang-up, got {rest:?}");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(800) && took < Duration::from_secs(4), "{took:?}");
    expect_console_line(&server, &["WARN", "kind=\"timeout\""]);
}

#[tokio::test]
async fn sighup_reload_keeps_open_connections_and_serves_the_new_certificate() {
    let ca = DevCa::new();
    let server = Server::start(&ca.overrides());
    let (mut open, before) = wss(&ca, server.echo).await;
    round_trip(&mut open, "before").await;

    dev_cert(ca.dir.path(), true);
    let renewed = ca.served_cert();
    assert_ne!(renewed, before, "dev-cert --renew wrote the same certificate");
    sighup(&server);
    expect_console_line(&server, &["INFO", "tls certificate reloaded"]);

    // The open connection is untouched ...
    round_trip(&mut open, "after the reload").await;
    // ... and the next one gets the new certificate.
    let (mut next, presented) = wss(&ca, server.echo).await;
    assert_eq!(presented, renewed);
    round_trip(&mut next, "new cert").await;
    round_trip(&mut open, "still here").await;
}

#[tokio::test]
async fn bad_file_on_sighup_is_logged_and_the_old_certificate_stays() {
    let ca = DevCa::new();
    let server = Server::start(&ca.overrides());
    let (mut open, before) = wss(&ca, server.echo).await;
    std::fs::write(ca.path("cert.pem"), "not a certificate\n").expect("overwrite cert.pem");
    sighup(&server);
    // The new configuration names a file that holds no certificate: the reload is refused
    // whole, naming the key at fault.
    let line = server.expect_error_line(&[("kind", "config_reload"), ("key", "tls.cert_file")]);
    let error = line["error"].as_str().unwrap_or_default();
    assert!(error.contains("no certificate found"), "{line}");
    round_trip(&mut open, "unaffected").await;
    let (mut next, presented) = wss(&ca, server.echo).await;
    assert_eq!(presented, before, "the old certificate must stay in use");
    round_trip(&mut next, "old cert").await;
}

#[tokio::test]
async fn admin_api_is_served_over_https_with_the_same_certificate() {
    let ca = DevCa::new();
    let server = Server::start(&(ca.overrides() + "admin.tls = true\n"));
    let mut tls = tls_connect(&ca, server.admin).await;
    assert_eq!(tls.get_ref().1.peer_certificates().unwrap()[0], ca.served_cert());
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("write request");
    let mut raw = Vec::new();
    // The server may end without close_notify after `Connection: close`; the response is what counts.
    let _ = timeout(STEP, tls.read_to_end(&mut raw)).await.expect("https response timed out");
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with("ok\n"), "{text}");
    // Plain HTTP on the admin port gets no answer, only a closed connection.
    let mut tcp = TcpStream::connect(server.admin).await.expect("connect");
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
    let mut out = Vec::new();
    let _ = timeout(STEP, tcp.read_to_end(&mut out)).await.expect("plain client left hanging");
    assert!(!String::from_utf8_lossy(&out).contains("200"), "plain http was served");
}

/// Runs `palisade check` on a config with these keys; returns (success, stderr).
fn check(config: &str) -> (bool, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("palisade.toml");
    std::fs::write(&path, config).expect("write config");
    let out = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .arg("--config")
        .arg(&path)
        .arg("check")
        .env("PALISADE_JWT_SECRET", crate::support::SECRET)
        .output()
        .expect("run palisade check");
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn tls_section(cert: &Path, key: &Path) -> String {
    format!(
        "[tls]\ncert_file = {:?}\nkey_file = {:?}\n",
        cert.display().to_string(),
        key.display().to_string()
    )
}

#[test]
fn startup_errors_name_the_file_and_the_problem() {
    let a = DevCa::new();
    let b = DevCa::new();
    let (ok, err) = check(&tls_section(&a.path("cert.pem"), &a.path("key.pem")));
    assert!(ok, "{err}");

    let (ok, err) = check(&tls_section(&a.path("missing.pem"), &a.path("key.pem")));
    assert!(!ok && err.contains("tls.cert_file") && err.contains("no such file"), "{err}");

    let (ok, err) = check(&tls_section(&a.path("cert.pem"), &b.path("key.pem")));
    assert!(!ok && err.contains("does not match the certificate"), "{err}");

    std::fs::write(a.path("broken.pem"), "-----BEGIN PRIVATE KEY-----\n%%%\n").expect("write");
    let (ok, err) = check(&tls_section(&a.path("cert.pem"), &a.path("broken.pem")));
    assert!(!ok && err.contains("tls.key_file") && err.to_lowercase().contains("pem"), "{err}");
}

#[tokio::test]
async fn expired_certificate_starts_with_a_warning() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(dir.path().join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.path().join("key.pem"), key.serialize_pem()).unwrap();
    let overrides = format!(
        "tls.cert_file = {:?}\ntls.key_file = {:?}\n",
        dir.path().join("cert.pem").display().to_string(),
        dir.path().join("key.pem").display().to_string()
    );
    let server = Server::start(&overrides);
    expect_console_line(&server, &["WARN", "expired at 2021-01-01"]);
}
