//! The echo endpoint: the seed's text and binary echo.

use crate::support::{
    Server, connect, expect_binary, expect_close, expect_text, round_trip, send_binary, send_text,
};

#[tokio::test]
async fn text_gets_server_received_prefix() {
    let server = Server::start("");
    let mut ws = connect(server.echo).await;
    round_trip(&mut ws, "hello").await;
}

#[tokio::test]
async fn unicode_text_is_echoed_unchanged() {
    let server = Server::start("");
    let mut ws = connect(server.echo).await;
    round_trip(&mut ws, "héllo wörld — 你好 🦀 שלום").await;
}

#[tokio::test]
async fn empty_text_gets_the_bare_prefix() {
    let server = Server::start("");
    let mut ws = connect(server.echo).await;
    send_text(&mut ws, "").await;
    expect_text(&mut ws, "Server received: ").await;
}

#[tokio::test]
async fn binary_gets_prefix_bytes_then_payload() {
    let server = Server::start("");
    let mut ws = connect(server.echo).await;
    let payload = [0u8, 1, 2, 0xff, 0xfe, b'x'];
    send_binary(&mut ws, &payload).await;
    let mut expected = b"Server received: ".to_vec();
    expected.extend_from_slice(&payload);
    expect_binary(&mut ws, &expected).await;
}

#[tokio::test]
async fn messages_are_echoed_in_order() {
    let server = Server::start("");
    let mut ws = connect(server.echo).await;
    for i in 0..50 {
        send_text(&mut ws, &format!("m{i}")).await;
    }
    for i in 0..50 {
        expect_text(&mut ws, &format!("Server received: m{i}")).await;
    }
}

#[tokio::test]
async fn configured_prefix_is_used() {
    let server = Server::start(r#"echo.prefix = "got: ""#);
    let mut ws = connect(server.echo).await;
    send_text(&mut ws, "x").await;
    expect_text(&mut ws, "got: x").await;
}

#[tokio::test]
async fn client_close_is_answered_with_1000() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    let server = Server::start("");
    let mut ws = connect(server.echo).await;
    let frame = CloseFrame { code: 1000.into(), reason: "bye".into() };
    ws.send(tokio_tungstenite::tungstenite::Message::Close(Some(frame))).await.expect("send close");
    expect_close(&mut ws, 1000, None).await;
}

#[tokio::test]
async fn client_ping_gets_pong() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let server = Server::start("");
    let mut ws = connect(server.echo).await;
    ws.send(Message::Ping(b"are you there".to_vec().into())).await.expect("send ping");
    let reply = tokio::time::timeout(crate::support::STEP, ws.next()).await.expect("pong in time");
    match reply {
        Some(Ok(Message::Pong(p))) => assert_eq!(&p[..], b"are you there"),
        other => panic!("expected pong, got {other:?}"),
    }
}
