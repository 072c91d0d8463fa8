//! Lets each connection keep a small read buffer without paying a system call per small read.
//!
//! tungstenite reads at most `read_buffer_size` bytes per call (its per-connection buffer, 128
//! KiB by default, which an idle connection keeps). Palisade gives it a small buffer
//! ([`crate::TransportConfig::read_buffer_bytes`], 1 KiB by default) and puts this wrapper
//! under it: each socket read lands in a 64 KiB scratch buffer of the worker thread, and the
//! part the caller has room for is handed over. When more arrived than that, the scratch buffer
//! itself becomes the connection's spill (no copy) and the thread starts a new one; a drained
//! spill goes back to the thread (or is freed). An idle connection so holds only the small
//! buffer, and a busy one still moves up to 64 KiB per system call.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes one socket read may bring in.
const SCRATCH_BYTES: usize = 64 * 1024;

thread_local! {
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// A stream whose reads go through the thread's scratch buffer; writes pass straight through.
#[derive(Debug)]
pub(crate) struct ReadAhead<S> {
    inner: S,
    /// Bytes read from the socket that the caller had no room for yet, from `pos` on.
    spill: Vec<u8>,
    pos: usize,
}

impl<S> ReadAhead<S> {
    pub(crate) fn new(inner: S) -> Self {
        ReadAhead { inner, spill: Vec::new(), pos: 0 }
    }

    fn drain_spill(&mut self, out: &mut ReadBuf<'_>) {
        let n = out.remaining().min(self.spill.len() - self.pos);
        out.put_slice(&self.spill[self.pos..self.pos + n]);
        self.pos += n;
        if self.pos == self.spill.len() {
            // Drained: back to the thread if it has no scratch buffer, else freed. An idle
            // connection holds no spill.
            self.pos = 0;
            let mut done = std::mem::take(&mut self.spill);
            done.clear();
            SCRATCH.with_borrow_mut(|scratch| {
                if scratch.capacity() < done.capacity() {
                    *scratch = done;
                }
            });
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ReadAhead<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pos < this.spill.len() {
            this.drain_spill(out);
            return Poll::Ready(Ok(()));
        }
        if out.remaining() >= SCRATCH_BYTES {
            return Pin::new(&mut this.inner).poll_read(cx, out);
        }
        SCRATCH.with_borrow_mut(|scratch| {
            scratch.clear();
            scratch.reserve(SCRATCH_BYTES);
            // Reads into the vector's spare capacity: nothing to zero first.
            ready!(tokio_util::io::poll_read_buf(Pin::new(&mut this.inner), cx, scratch))?;
            let n = scratch.len().min(out.remaining());
            out.put_slice(&scratch[..n]);
            if n < scratch.len() {
                // The rest stays with this connection, in this very buffer.
                this.spill = std::mem::take(scratch);
                this.pos = n;
            }
            Poll::Ready(Ok(()))
        })
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ReadAhead<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn small_reads_get_every_byte_in_order_from_one_large_socket_read() {
        let (mut client, server) = tokio::io::duplex(256 * 1024);
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        client.write_all(&data).await.unwrap();
        drop(client);
        let mut reader = ReadAhead::new(server);
        let mut got = Vec::new();
        let mut chunk = [0u8; 2048];
        loop {
            let n = reader.read(&mut chunk).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&chunk[..n]);
        }
        assert_eq!(got, data);
        assert_eq!(reader.spill.capacity(), 0, "a drained spill is freed");
    }

    #[tokio::test]
    async fn a_large_caller_buffer_reads_directly() {
        let (mut client, server) = tokio::io::duplex(256 * 1024);
        client.write_all(&[7u8; 100_000]).await.unwrap();
        let mut reader = ReadAhead::new(server);
        let mut big = vec![0u8; SCRATCH_BYTES * 2];
        let n = reader.read(&mut big).await.unwrap();
        assert!(n > 0);
        assert!(reader.spill.is_empty());
    }
}
