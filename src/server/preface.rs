//! Telling HTTP/2 prior knowledge from HTTP/1.1 on a plain listener, by
//! reading the connection's first bytes, and handing them on.
//!
//! [`detect`] reads (never peeks) until the bytes either stop matching the
//! HTTP/2 client preface or complete it, so a client that sends part of the
//! preface and waits costs nothing until more bytes arrive: the task sleeps
//! on the socket's readiness, not on a timer. [`Prefixed`] then serves the
//! bytes already read before the rest of the stream, so the protocol sees
//! the connection from its first byte. Invariant: no byte the client sent is
//! lost or reordered; at most [`PREFACE`]'s length is held (no allocation).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// The HTTP/2 client connection preface.
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Reads the connection's first bytes: whether they are the HTTP/2 preface,
/// and the stream with every byte read put back in front. A connection that
/// closes first gives what it sent (perhaps nothing) as HTTP/1.1. The caller
/// bounds the wait (`timeouts.header_read`).
pub async fn detect<I: AsyncRead + Unpin>(mut io: I) -> io::Result<(bool, Prefixed<I>)> {
    let mut buf = [0u8; PREFACE.len()];
    let mut len = 0;
    let h2 = loop {
        let n = io.read(&mut buf[len..]).await?;
        len += n;
        if n == 0 || buf[..len] != PREFACE[..len] {
            break false;
        }
        if len == PREFACE.len() {
            break true;
        }
    };
    Ok((
        h2,
        Prefixed {
            io,
            buf,
            len: len as u8,
            pos: 0,
        },
    ))
}

/// A stream with up to [`PREFACE`]'s length of already-read bytes served
/// first.
#[derive(Debug)]
pub struct Prefixed<I> {
    io: I,
    buf: [u8; PREFACE.len()],
    len: u8,
    pos: u8,
}

impl<I: AsyncRead + Unpin> AsyncRead for Prefixed<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.pos < self.len {
            let (pos, len) = (self.pos as usize, self.len as usize);
            let n = (len - pos).min(out.remaining());
            out.put_slice(&self.buf[pos..pos + n]);
            self.pos += n as u8;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, out)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Prefixed<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn detect_after(chunks: &[&[u8]]) -> (bool, Vec<u8>) {
        let (mut client, server) = tokio::io::duplex(64);
        for c in chunks {
            client.write_all(c).await.unwrap();
        }
        drop(client);
        let (h2, mut io) = detect(server).await.unwrap();
        let mut all = Vec::new();
        io.read_to_end(&mut all).await.unwrap();
        (h2, all)
    }

    #[tokio::test]
    async fn the_preface_in_pieces_is_http2_and_every_byte_is_handed_on() {
        let mut rest = PREFACE.to_vec();
        rest.extend_from_slice(b"\x00\x00\x00frames");
        let (h2, all) = detect_after(&[&PREFACE[..3], &PREFACE[3..10], &rest[10..]]).await;
        assert!(h2);
        assert_eq!(all, rest);
    }

    #[tokio::test]
    async fn a_request_line_is_http1_and_every_byte_is_handed_on() {
        let req = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(detect_after(&[req]).await, (false, req.to_vec()));
        // One that starts like the preface and then differs.
        let pri = b"PRI /x HTTP/1.1\r\n\r\n";
        assert_eq!(detect_after(&[pri]).await, (false, pri.to_vec()));
    }

    #[tokio::test]
    async fn a_connection_closed_early_is_http1_with_what_it_sent() {
        assert_eq!(detect_after(&[]).await, (false, vec![]));
        assert_eq!(
            detect_after(&[&PREFACE[..5]]).await,
            (false, PREFACE[..5].to_vec())
        );
    }
}
