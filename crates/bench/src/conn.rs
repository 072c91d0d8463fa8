//! One client connection: TCP connect from a chosen source address, upgrade,
//! optional token authentication, non-blocking read/write pumping, close.

use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Sleep;

use crate::frame::{Decoder, Encoder, Kind, Message, OpCode};
use crate::handshake::{self, Target};

/// Bound on connect + upgrade + authentication.
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on waiting for the server's close frame (and its end of stream).
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// The secure endpoint's answer to a valid token.
pub const AUTH_OK: &[u8] = b"Authenticated!";

/// What [`Conn::pump`] saw.
#[derive(Debug, PartialEq, Eq)]
pub enum Pumped {
    /// New bytes are in `rx.buf`.
    Data,
    /// The server ended the stream.
    Eof,
    /// The wake-up timer fired.
    Wake,
}

/// An established WebSocket client connection.
#[derive(Debug)]
pub struct Conn {
    stream: TcpStream,
    pub rx: Decoder,
    pub tx: Encoder,
    /// Bytes of `tx.buf` already written.
    written: usize,
}

/// Options for opening connections.
#[derive(Clone, Debug)]
pub struct Open {
    pub target: Target,
    pub token: Option<String>,
    /// Subprotocol to offer at the upgrade; the server must select it.
    pub protocol: Option<String>,
    /// Spare room kept in the read buffer before each read.
    pub read_spare: usize,
}

impl Conn {
    /// Connects from `source` (port chosen by the kernel), upgrades and,
    /// with a token, authenticates; all bounded by [`OPEN_TIMEOUT`].
    pub async fn open(opts: &Open, source: Option<IpAddr>, seed: u64) -> Result<Conn, String> {
        match tokio::time::timeout(OPEN_TIMEOUT, Conn::open_inner(opts, source, seed)).await {
            Ok(result) => result,
            Err(_) => Err(format!("opening the connection took longer than {OPEN_TIMEOUT:?}")),
        }
    }

    async fn open_inner(opts: &Open, source: Option<IpAddr>, seed: u64) -> Result<Conn, String> {
        let target = &opts.target;
        let socket = if target.addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }
            .map_err(|e| format!("socket: {e}"))?;
        if let Some(ip) = source {
            socket.bind(SocketAddr::new(ip, 0)).map_err(|e| format!("bind {ip}: {e}"))?;
        }
        socket.set_nodelay(true).map_err(|e| format!("TCP_NODELAY: {e}"))?;
        let stream = socket
            .connect(target.addr)
            .await
            .map_err(|e| format!("connect {}: {e}", target.addr))?;
        let mut conn =
            Conn { stream, rx: Decoder::new(opts.read_spare), tx: Encoder::new(seed), written: 0 };
        let key = handshake::new_key();
        conn.stream
            .write_all(handshake::request_with(target, &key, opts.protocol.as_deref()).as_bytes())
            .await
            .map_err(|e| format!("sending the upgrade request: {e}"))?;
        loop {
            conn.rx.prepare_read();
            let n = conn
                .stream
                .read_buf(&mut conn.rx.buf)
                .await
                .map_err(|e| format!("reading the upgrade response: {e}"))?;
            if n == 0 {
                return Err("connection closed during the upgrade".into());
            }
            if let Some(head) =
                handshake::parse_response(&conn.rx.buf, &key).map_err(|e| e.to_string())?
            {
                if let Some(want) = &opts.protocol {
                    let got = handshake::header(&conn.rx.buf[..head], "sec-websocket-protocol");
                    if got.as_deref() != Some(want.as_str()) {
                        return Err(format!(
                            "the server did not select subprotocol {want:?} (answered {got:?})"
                        ));
                    }
                }
                conn.rx.pos = head;
                break;
            }
        }
        if let Some(token) = &opts.token {
            conn.tx.frame(OpCode::Text, token.as_bytes());
            let far = tokio::time::sleep(OPEN_TIMEOUT);
            tokio::pin!(far);
            conn.reply(far.as_mut(), |kind, body| {
                if kind == Kind::Text && body == AUTH_OK {
                    Ok(())
                } else {
                    Err(format!("authentication failed: reply {:?}", String::from_utf8_lossy(body)))
                }
            })
            .await?;
        }
        Ok(conn)
    }

    /// Writes what it can of the pending output, then waits until the
    /// socket has bytes to read (reading them into `rx.buf`), the server
    /// ends the stream, or `wake` fires. Cancel safe.
    pub async fn pump(&mut self, mut wake: Pin<&mut Sleep>) -> Result<Pumped, String> {
        // One read per turn: a connection whose socket is always readable
        // would otherwise keep the one thread for a whole cooperative budget
        // (128 rounds, long with big messages) while the others starve and
        // their latencies blow up. Yielding makes the turns round-robin.
        tokio::task::yield_now().await;
        loop {
            self.write_some()?;
            let interest = if self.written < self.tx.buf.len() {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            let ready = tokio::select! {
                ready = self.stream.ready(interest) => ready.map_err(|e| format!("socket: {e}"))?,
                () = &mut wake => return Ok(Pumped::Wake),
            };
            if ready.is_readable() {
                self.rx.prepare_read();
                match self.stream.try_read_buf(&mut self.rx.buf) {
                    Ok(0) => return Ok(Pumped::Eof),
                    Ok(_) => return Ok(Pumped::Data),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(e) => return Err(format!("read: {e}")),
                }
            }
        }
    }

    fn write_some(&mut self) -> Result<(), String> {
        while self.written < self.tx.buf.len() {
            match self.stream.try_write(&self.tx.buf[self.written..]) {
                Ok(n) => self.written += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => return Err(format!("write: {e}")),
            }
        }
        if self.written == self.tx.buf.len() {
            self.tx.buf.clear();
            self.written = 0;
        } else if self.written > 64 * 1024 && self.written * 2 > self.tx.buf.len() {
            self.tx.buf.drain(..self.written);
            self.written = 0;
        }
        Ok(())
    }

    /// Sends what is queued and waits for the next data message, checked by
    /// `check`; an error if `wake` fires first or the server closes.
    pub async fn reply(
        &mut self,
        mut wake: Pin<&mut Sleep>,
        mut check: impl FnMut(Kind, &[u8]) -> Result<(), String>,
    ) -> Result<(), String> {
        loop {
            match self.rx.next_message(&mut self.tx)? {
                Some(Message::Data(kind, body)) => return check(kind, body),
                Some(Message::Close(code)) => return Err(closed_by_server(code)),
                None => {}
            }
            match self.pump(wake.as_mut()).await? {
                Pumped::Data => {}
                Pumped::Eof => {
                    return Err("server ended the connection without a close frame".into());
                }
                Pumped::Wake => return Err("timed out waiting for a reply".into()),
            }
        }
    }

    /// Sends a close frame (unless one was sent) and waits, at most
    /// [`CLOSE_TIMEOUT`], for the server's close frame and then for the end
    /// of the stream, so that the server closes the TCP connection first.
    /// Data messages arriving meanwhile are ignored.
    pub async fn close(mut self, code: u16) -> Result<(), String> {
        self.tx.close(code);
        let wake = tokio::time::sleep(CLOSE_TIMEOUT);
        tokio::pin!(wake);
        loop {
            while !self.rx.closed() {
                match self.rx.next_message(&mut self.tx)? {
                    Some(_) => {}
                    None => break,
                }
            }
            match self.pump(wake.as_mut()).await? {
                Pumped::Data if self.rx.closed() => self.rx.pos = self.rx.buf.len(),
                Pumped::Data => {}
                Pumped::Eof if self.rx.closed() => return Ok(()),
                Pumped::Eof => {
                    return Err("server ended the connection without a close frame".into());
                }
                // Close frames exchanged; the server is just slow to hang up.
                Pumped::Wake if self.rx.closed() => return Ok(()),
                Pumped::Wake => return Err("timed out waiting for the server's close frame".into()),
            }
        }
    }
}

/// Error text for a close frame the server sent unasked.
pub fn closed_by_server(code: Option<u16>) -> String {
    match code {
        Some(code) => format!("server closed the connection (close code {code})"),
        None => "server closed the connection (no close code)".into(),
    }
}
