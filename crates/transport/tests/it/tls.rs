//! `wss://`: the TLS step between admission and the upgrade, under the handshake timeout.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use super::{Recorder, start};

/// A server configuration for `localhost` and a client configuration that trusts it.
fn tls_pair() -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert: CertificateDer<'static> = ck.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    (Arc::new(server), Arc::new(client))
}

async fn wss_connect(
    addr: std::net::SocketAddr,
    client: Arc<rustls::ClientConfig>,
) -> tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let tls = TlsConnector::from(client).connect(name, tcp).await.unwrap();
    let (ws, _) = tokio_tungstenite::client_async("wss://localhost/", tls).await.unwrap();
    ws
}

async fn wait_failure(rec: &Recorder) -> String {
    for _ in 0..250 {
        if let Some(f) = rec.failures.lock().unwrap().first() {
            return f.clone();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no handshake failure recorded");
}

#[tokio::test]
async fn wss_client_gets_its_echo() {
    let (server, client) = tls_pair();
    let s = start(|c| c.tls = Some(server)).await;
    let mut ws = wss_connect(s.addr, client).await;
    ws.send(WsMessage::text("over tls")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), WsMessage::text("over tls"));
    ws.send(WsMessage::text("bye")).await.unwrap();
    assert_eq!(super::wait_outcome(&s.rec).await, "server 4000");
}

#[tokio::test]
async fn plain_ws_client_on_a_tls_port_gets_400_and_a_tls_failure() {
    let (server, _) = tls_pair();
    let s = start(|c| c.tls = Some(server)).await;
    let err = tokio_tungstenite::connect_async(format!("ws://{}/", s.addr)).await.unwrap_err();
    let tokio_tungstenite::tungstenite::Error::Http(resp) = err else { panic!("{err}") };
    assert_eq!(resp.status(), 400);
    let body = String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default()).into_owned();
    assert!(body.contains("wss://"), "{body}");
    assert_eq!(wait_failure(&s.rec).await, "tls");
}

#[tokio::test]
async fn client_that_does_not_trust_the_certificate_is_a_tls_failure() {
    let (server, _) = tls_pair();
    let (_, other_client) = tls_pair();
    let s = start(|c| c.tls = Some(server)).await;
    let tcp = TcpStream::connect(s.addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let refused = TlsConnector::from(other_client).connect(name, tcp).await;
    assert!(refused.is_err(), "a client with another root accepted the certificate");
    assert_eq!(wait_failure(&s.rec).await, "tls");
    assert!(s.rec.outcomes.lock().unwrap().is_empty());
}

#[tokio::test]
async fn handshake_timeout_covers_the_tls_handshake() {
    let (server, _) = tls_pair();
    let s = start(|c| {
        c.tls = Some(server);
        c.handshake_timeout = Duration::from_millis(300);
    })
    .await;
    let mut tcp = TcpStream::connect(s.addr).await.unwrap();
    // The start of a handshake record, then silence.
    tcp.write_all(&[0x16, 0x03, 0x01, 0x00, 0x40]).await.unwrap();
    let started = std::time::Instant::now();
    let mut buf = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut buf)).await.unwrap();
    assert_eq!(n.unwrap_or(0), 0, "expected the server to hang up");
    assert!(started.elapsed() < Duration::from_secs(3), "hung up after {:?}", started.elapsed());
    assert_eq!(wait_failure(&s.rec).await, "timeout");
}

/// Sends a malformed handshake record and returns every byte the server answers with.
async fn answer_to_bad_record(addr: std::net::SocketAddr) -> Vec<u8> {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    // A handshake record holding a message type no TLS version defines.
    let _ = tcp.write_all(&[0x16, 0x03, 0x01, 0x00, 0x04, 0xfe, 0x00, 0x00, 0x00]).await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer));
    let _ = read.await.expect("the server neither answered nor closed");
    answer
}

#[tokio::test]
async fn admission_runs_before_any_tls_work() {
    let (server, client) = tls_pair();
    let s = start(|c| c.tls = Some(server)).await;
    // Admitted, the bad record reaches rustls, which answers with an alert record.
    let admitted = answer_to_bad_record(s.addr).await;
    assert_eq!(admitted.first(), Some(&0x15), "expected a tls alert, got {admitted:?}");
    assert_eq!(wait_failure(&s.rec).await, "tls");

    // Refused at admission, the socket is closed before a single TLS byte.
    s.rec.deny.store(true, Ordering::Relaxed);
    let refused = answer_to_bad_record(s.addr).await;
    assert!(refused.is_empty(), "a refused client got {refused:?}");
    assert_eq!(s.rec.failures.lock().unwrap().len(), 1, "a refused client reached the handshake");
    assert_eq!(s.rec.admitted.load(Ordering::Relaxed), 1);

    s.rec.deny.store(false, Ordering::Relaxed);
    let mut ws = wss_connect(s.addr, client).await;
    ws.send(WsMessage::text("admitted")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), WsMessage::text("admitted"));
}
