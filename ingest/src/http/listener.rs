//! The listening socket: a connection cap, and a deadline on each request's head.
//!
//! - At most `max` connections are served at once; past it, new connections wait in the
//!   kernel's accept queue until one closes, so a client holding many connections open cannot
//!   make the service take more work than it was sized for.
//! - A request's head (request line and headers) must arrive within the head timeout of its
//!   first byte (of the connection's opening, for the first request). poem gives hyper no timer,
//!   so hyper's own header timeout never runs; without this a client trickling one header byte
//!   a minute held its connection and permit for ever, since the idle timeout counts any byte
//!   as activity. The body has its own deadline (the middleware's 408), and the time between
//!   keep-alive requests is the idle timeout's.
//!
//! The head ends at the first `\r\n\r\n` read after it began; it begins at accept and at the
//! first byte read after a response (a final one, not `100 Continue`) was written. A connection
//! that opens with the HTTP/2 preface has no such deadline (hyper's HTTP/2 takes its frames).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use poem::http::uri::Scheme;
use poem::listener::Acceptor;
use poem::web::{LocalAddr, RemoteAddr};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;

/// An acceptor that holds a permit per open connection and times each request head.
pub struct Capped<A> {
    inner: A,
    permits: Arc<Semaphore>,
    head_timeout: Duration,
}

impl<A> Capped<A> {
    pub fn new(inner: A, max: usize, head_timeout: Duration) -> Self {
        Capped {
            inner,
            permits: Arc::new(Semaphore::new(max)),
            head_timeout,
        }
    }
}

impl<A: Acceptor> Acceptor for Capped<A> {
    type Io = CappedIo<A::Io>;

    fn local_addr(&self) -> Vec<LocalAddr> {
        self.inner.local_addr()
    }

    async fn accept(&mut self) -> std::io::Result<(Self::Io, LocalAddr, RemoteAddr, Scheme)> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(std::io::Error::other)?;
        let (io, local, remote, scheme) = self.inner.accept().await?;
        let io = CappedIo {
            io,
            _permit: permit,
            head: Head::new(self.head_timeout),
        };
        Ok((io, local, remote, scheme))
    }
}

/// A connection; its permit goes back when it is dropped (closed).
pub struct CappedIo<Io> {
    io: Io,
    _permit: OwnedSemaphorePermit,
    head: Head,
}

/// Where a connection is in its current request, as far as the head deadline goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Its head is arriving: the deadline runs.
    Head,
    /// Past the head: the body, then the response.
    Request,
    /// A response was written; the next byte read starts the next head.
    Between,
    /// HTTP/2: no head deadline.
    Off,
}

const END_OF_HEAD: &[u8; 4] = b"\r\n\r\n";
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

struct Head {
    limit: Duration,
    phase: Phase,
    deadline: Pin<Box<Sleep>>,
    /// How many bytes of `\r\n\r\n` the bytes read so far end with.
    matched: usize,
    /// Bytes of the connection read so far, up to the HTTP/2 preface's length.
    opening: Vec<u8>,
}

impl Head {
    fn new(limit: Duration) -> Head {
        Head {
            limit,
            phase: Phase::Head,
            deadline: Box::pin(tokio::time::sleep(limit)),
            matched: 0,
            opening: Vec::with_capacity(H2_PREFACE.len()),
        }
    }

    /// Follows the bytes a read returned.
    fn read(&mut self, bytes: &[u8]) {
        if bytes.is_empty() || self.phase == Phase::Off {
            return;
        }
        if self.opening.len() < H2_PREFACE.len() {
            let take = (H2_PREFACE.len() - self.opening.len()).min(bytes.len());
            self.opening.extend_from_slice(&bytes[..take]);
            if H2_PREFACE.starts_with(&self.opening) {
                if self.opening.len() == H2_PREFACE.len() {
                    self.phase = Phase::Off;
                    return;
                }
            } else {
                // Not HTTP/2: stop collecting.
                self.opening.resize(H2_PREFACE.len(), 0);
            }
        }
        if self.phase == Phase::Between {
            self.phase = Phase::Head;
            self.matched = 0;
            self.deadline
                .as_mut()
                .reset(tokio::time::Instant::now() + self.limit);
        }
        if self.phase != Phase::Head {
            return;
        }
        for &b in bytes {
            self.matched = if b == END_OF_HEAD[self.matched] {
                self.matched + 1
            } else if b == b'\r' {
                1
            } else {
                0
            };
            if self.matched == END_OF_HEAD.len() {
                self.phase = Phase::Request;
                return;
            }
        }
    }

    /// Follows the bytes of a write: a final response ends the request.
    fn wrote(&mut self, bytes: &[u8]) {
        if self.phase == Phase::Request && !bytes.starts_with(b"HTTP/1.1 1") {
            self.phase = Phase::Between;
        }
    }

    /// Ready with an error once the head's deadline has passed.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Error> {
        if self.phase != Phase::Head {
            return Poll::Pending;
        }
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "request head not received in time",
            )),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<Io: AsyncRead + Unpin> AsyncRead for CappedIo<Io> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if let Poll::Ready(e) = this.head.poll_expired(cx) {
            return Poll::Ready(Err(e));
        }
        let before = buf.filled().len();
        let res = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = res {
            this.head.read(&buf.filled()[before..]);
        }
        res
    }
}

impl<Io: AsyncWrite + Unpin> AsyncWrite for CappedIo<Io> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let res = Pin::new(&mut this.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = res {
            this.head.wrote(&buf[..n]);
        }
        res
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let res = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        if let (Poll::Ready(Ok(n)), Some(first)) = (&res, bufs.iter().find(|b| !b.is_empty())) {
            if *n > 0 {
                this.head.wrote(first);
            }
        }
        res
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head() -> Head {
        Head::new(Duration::from_secs(10))
    }

    #[tokio::test]
    async fn a_head_ends_at_its_blank_line_even_split_across_reads() {
        let mut h = head();
        h.read(b"GET / HTTP/1.1\r\nHost: x\r");
        assert_eq!(h.phase, Phase::Head);
        h.read(b"\n\r");
        assert_eq!(h.phase, Phase::Head);
        h.read(b"\n{\"body\"");
        assert_eq!(h.phase, Phase::Request);
    }

    #[tokio::test]
    async fn the_next_head_starts_after_a_final_response_only() {
        let mut h = head();
        h.read(b"POST / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n");
        h.wrote(b"HTTP/1.1 100 Continue\r\n\r\n");
        assert_eq!(h.phase, Phase::Request, "an interim response ends nothing");
        h.read(b"{\"a\": 1}");
        assert_eq!(h.phase, Phase::Request, "body bytes are not a head");
        h.wrote(b"HTTP/1.1 202 Accepted\r\n");
        assert_eq!(h.phase, Phase::Between);
        h.read(b"G");
        assert_eq!(
            h.phase,
            Phase::Head,
            "the next request's first byte starts its head"
        );
    }

    #[tokio::test]
    async fn http2_connections_have_no_head_deadline() {
        let mut h = head();
        h.read(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        assert_eq!(h.phase, Phase::Off);
        let mut h = head();
        h.read(b"PRI * HT");
        h.read(b"TP/2.0\r\n");
        assert_eq!(h.phase, Phase::Off);
        let mut h = head();
        h.read(b"PRIVATE-LOOKING / HTTP/1.1\r\n\r\n");
        assert_eq!(h.phase, Phase::Request);
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickled_head_expires_and_a_complete_one_does_not() {
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut h = Head::new(Duration::from_secs(2));
        h.read(b"GET / HTTP/1.1\r\n");
        assert!(h.poll_expired(&mut cx).is_pending());
        tokio::time::advance(Duration::from_secs(3)).await;
        assert!(h.poll_expired(&mut cx).is_ready());
        let mut h = Head::new(Duration::from_secs(2));
        h.read(b"GET / HTTP/1.1\r\n\r\n");
        tokio::time::advance(Duration::from_secs(3)).await;
        assert!(
            h.poll_expired(&mut cx).is_pending(),
            "a request past its head"
        );
    }
}
