//! One relay stream as a byte pipe: an HTTP/2 `PUT` request body (our bytes out) and its
//! response body (bytes back), with the `wl-status` trailer read at the end.
//!
//! [`H2Stream`] implements `AsyncRead + AsyncWrite`, so it carries the nested TLS session of
//! the next hop as well as the final application bytes, and it has chunk methods that keep
//! DATA frame boundaries (one frame ↔ one UDP datagram, spec §6.6). It does not wait for the
//! response headers before sending (relays answer only when they first write, §6.2).

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use h2::client::ResponseFuture;
use h2::{RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::task::JoinHandle;
use wireleap_protocol::Status;
use wireleap_protocol::status::WL_STATUS;

/// The end of a stream as the relay reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEnd {
    /// Not yet at the end.
    Open,
    /// Ended with no `wl-status` trailer (or a 200 "OK" one): a normal end.
    Clean,
    /// Ended with a non-OK `wl-status` trailer.
    Status(Status),
    /// The response was not HTTP 200 (e.g. 405); the body is kept in the status' cause.
    Http(u16, String),
    /// Reset or connection error.
    Reset(String),
}

/// Most chunks read ahead while settling a failed write.
const SETTLE_LIMIT: usize = 256;

/// Slot shared with whoever needs to know how the stream ended (the outer hops of a circuit).
pub(crate) type EndSlot = Arc<Mutex<StreamEnd>>;

enum RecvState {
    Waiting(ResponseFuture),
    Body(RecvStream),
    Trailers(RecvStream),
    Done,
}

/// Aborts the wrapped task on drop (nested connection drivers live as long as their stream).
#[derive(Debug)]
pub(crate) struct AbortOnDrop(pub(crate) JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A relay stream as bytes (see the module doc).
pub struct H2Stream {
    send: SendStream<Bytes>,
    recv: RecvState,
    buffered: Bytes,
    /// Chunks read ahead while settling a failed write (served before new ones).
    early: VecDeque<Bytes>,
    end: EndSlot,
    finished: bool,
    /// Streams and connection drivers this stream runs inside of (kept alive with it).
    pub(crate) keep: Vec<AbortOnDrop>,
}

impl std::fmt::Debug for H2Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Stream")
            .field("end", &self.end())
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

impl H2Stream {
    pub(crate) fn new(send: SendStream<Bytes>, response: ResponseFuture) -> Self {
        Self {
            send,
            recv: RecvState::Waiting(response),
            buffered: Bytes::new(),
            early: VecDeque::new(),
            end: Arc::new(Mutex::new(StreamEnd::Open)),
            finished: false,
            keep: Vec::new(),
        }
    }

    pub(crate) fn end_slot(&self) -> EndSlot {
        self.end.clone()
    }

    /// How the stream ended so far ([`StreamEnd::Open`] until the response body ended).
    pub fn end(&self) -> StreamEnd {
        self.end
            .lock()
            .map(|g| g.clone())
            .unwrap_or(StreamEnd::Reset("poisoned".into()))
    }

    fn set_end(&self, e: StreamEnd) {
        if let Ok(mut g) = self.end.lock() {
            *g = e;
        }
    }

    /// Polls the next response DATA chunk; `None` at the end (the trailer is then read).
    pub fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<Bytes>>> {
        if !self.buffered.is_empty() {
            return Poll::Ready(Ok(Some(std::mem::take(&mut self.buffered))));
        }
        if let Some(c) = self.early.pop_front() {
            return Poll::Ready(Ok(Some(c)));
        }
        self.poll_next_chunk(cx)
    }

    /// After a failed write (the relay ended or reset the stream), reads whatever of the
    /// response is already buffered, so that a `wl-status` trailer that came before the reset
    /// is recorded in [`H2Stream::end`]. Data read here is kept for later reads.
    fn settle(&mut self, cx: &mut Context<'_>) {
        for _ in 0..SETTLE_LIMIT {
            match self.poll_next_chunk(cx) {
                Poll::Ready(Ok(Some(c))) => self.early.push_back(c),
                Poll::Ready(_) | Poll::Pending => return,
            }
        }
    }

    fn write_error(&mut self, cx: &mut Context<'_>, e: io::Error) -> io::Error {
        self.settle(cx);
        match self.end() {
            StreamEnd::Status(s) => io::Error::other(s),
            _ => e,
        }
    }

    fn poll_next_chunk(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<Bytes>>> {
        loop {
            match &mut self.recv {
                RecvState::Waiting(fut) => match ready!(Pin::new(fut).poll(cx)) {
                    Ok(resp) => {
                        let code = resp.status().as_u16();
                        let body = resp.into_body();
                        if code != 200 {
                            // Collecting an error body is not worth a state: report the code.
                            self.set_end(StreamEnd::Http(code, String::new()));
                            self.recv = RecvState::Done;
                            return Poll::Ready(Err(io::Error::other(format!(
                                "relay answered HTTP {code}"
                            ))));
                        }
                        self.recv = RecvState::Body(body);
                    }
                    Err(e) => {
                        self.set_end(StreamEnd::Reset(e.to_string()));
                        self.recv = RecvState::Done;
                        return Poll::Ready(Err(io::Error::other(e)));
                    }
                },
                RecvState::Body(body) => match ready!(body.poll_data(cx)) {
                    Some(Ok(data)) => {
                        let _ = body.flow_control().release_capacity(data.len());
                        if data.is_empty() {
                            continue;
                        }
                        return Poll::Ready(Ok(Some(data)));
                    }
                    Some(Err(e)) => {
                        self.set_end(StreamEnd::Reset(e.to_string()));
                        self.recv = RecvState::Done;
                        return Poll::Ready(Err(io::Error::other(e)));
                    }
                    None => {
                        if let RecvState::Body(b) =
                            std::mem::replace(&mut self.recv, RecvState::Done)
                        {
                            self.recv = RecvState::Trailers(b);
                        }
                    }
                },
                RecvState::Trailers(body) => {
                    let t = ready!(body.poll_trailers(cx));
                    self.recv = RecvState::Done;
                    let end = match t {
                        Ok(Some(h)) => match h.get(WL_STATUS) {
                            Some(v) => match Status::from_json(v.as_bytes()) {
                                Ok(s) if s.is_ok() => StreamEnd::Clean,
                                Ok(s) => StreamEnd::Status(s),
                                Err(e) => StreamEnd::Reset(format!("bad wl-status trailer: {e}")),
                            },
                            None => StreamEnd::Clean,
                        },
                        Ok(None) => StreamEnd::Clean,
                        Err(e) => StreamEnd::Reset(e.to_string()),
                    };
                    self.set_end(end);
                    return Poll::Ready(Ok(None));
                }
                RecvState::Done => return Poll::Ready(Ok(None)),
            }
        }
    }

    /// The next response DATA chunk (one UDP datagram in UDP mode); `None` at the end.
    ///
    /// # Errors
    /// An I/O error on reset, connection loss or a non-200 response.
    pub async fn recv_chunk(&mut self) -> io::Result<Option<Bytes>> {
        std::future::poll_fn(|cx| self.poll_chunk(cx)).await
    }

    /// Sends `data` as one DATA frame, waiting for enough flow-control capacity (one UDP
    /// datagram in UDP mode; the relay's max frame size must allow it).
    ///
    /// # Errors
    /// An I/O error when the stream was reset or finished.
    pub async fn send_chunk(&mut self, mut data: Bytes) -> io::Result<()> {
        let min = data.len();
        std::future::poll_fn(|cx| self.poll_send(cx, &mut data, min))
            .await
            .map(drop)
    }

    /// Polls to send the front of `data` as one DATA frame: once at least `min` bytes of
    /// flow-control capacity are ours (`min` is capped at `data.len()`), sends as much of `data`
    /// as the capacity covers and advances `data` past it. `Ready(Ok(n))` says how many bytes
    /// went; `min = data.len()` keeps `data` whole (a UDP datagram), `min = 1` sends a byte
    /// stream as the window allows. While `Pending` nothing was sent, so the caller may poll
    /// other work (such as reading the response) and come back with the same `data`.
    ///
    /// # Errors
    /// An I/O error when the stream was reset or finished (a `wl-status` that came before the
    /// reset is then in [`H2Stream::end`] and in the error).
    pub fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        data: &mut Bytes,
        min: usize,
    ) -> Poll<io::Result<usize>> {
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if self.finished {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "stream finished",
            )));
        }
        let min = min.clamp(1, data.len());
        self.send.reserve_capacity(data.len());
        while self.send.capacity() < min {
            match ready!(self.send.poll_capacity(cx)) {
                Some(Ok(_)) => {}
                Some(Err(e)) => return Poll::Ready(Err(self.write_error(cx, io::Error::other(e)))),
                None => {
                    let e = io::Error::new(io::ErrorKind::BrokenPipe, "stream closed");
                    return Poll::Ready(Err(self.write_error(cx, e)));
                }
            }
        }
        let n = self.send.capacity().min(data.len());
        let chunk = data.split_to(n);
        match self.send.send_data(chunk, false) {
            Ok(()) => Poll::Ready(Ok(n)),
            Err(e) => Poll::Ready(Err(self.write_error(cx, io::Error::other(e)))),
        }
    }

    /// Ends our side (END_STREAM). The relay then closes the remote (no half-close, §6.5).
    pub fn finish(&mut self) {
        if !self.finished {
            self.finished = true;
            let _ = self.send.send_data(Bytes::new(), true);
        }
    }

    /// Reads and discards the rest of the response, then returns how the stream ended.
    pub async fn wait_end(&mut self) -> StreamEnd {
        loop {
            match self.recv_chunk().await {
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => return self.end(),
            }
        }
    }
}

impl AsyncRead for H2Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.buffered.is_empty() {
            match ready!(this.poll_chunk(cx))? {
                Some(data) => this.buffered = data,
                None => {
                    return match this.end() {
                        StreamEnd::Status(s) => Poll::Ready(Err(io::Error::other(s))),
                        _ => Poll::Ready(Ok(())),
                    };
                }
            }
        }
        let n = this.buffered.len().min(buf.remaining());
        buf.put_slice(&this.buffered[..n]);
        this.buffered.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for H2Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.finished {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "stream finished",
            )));
        }
        this.send.reserve_capacity(buf.len());
        let mut cap = this.send.capacity();
        while cap == 0 {
            cap = match ready!(this.send.poll_capacity(cx)) {
                Some(Ok(n)) => n,
                Some(Err(e)) => return Poll::Ready(Err(this.write_error(cx, io::Error::other(e)))),
                None => {
                    let e = io::Error::new(io::ErrorKind::BrokenPipe, "stream closed");
                    return Poll::Ready(Err(this.write_error(cx, e)));
                }
            };
        }
        let n = cap.min(buf.len());
        if let Err(e) = this
            .send
            .send_data(Bytes::copy_from_slice(&buf[..n]), false)
        {
            return Poll::Ready(Err(this.write_error(cx, io::Error::other(e))));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().finish();
        Poll::Ready(Ok(()))
    }
}
