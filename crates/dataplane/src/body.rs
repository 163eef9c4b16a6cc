//! Body types: the request body with its size limit, and the response body that counts the bytes
//! sent to the client.

use crate::direct::{DirectBody, HeaderBlock};
use crate::plane::Target;
use crate::pool::{HostPool, Sender};
use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request's body as the handler gets it: none (read by [`crate::h1`], which takes only
/// bodiless requests), or hyper's stream.
pub(crate) enum RequestBody {
    Empty,
    Incoming(Incoming),
}

/// The request body grew past the limit while streaming.
#[derive(Debug, thiserror::Error)]
#[error("request body exceeds {limit} bytes")]
pub(crate) struct BodyTooLarge {
    pub(crate) limit: u64,
}

/// A request body cut off with [`BodyTooLarge`] once more than `limit` bytes went through.
/// (A declared `Content-Length` over the limit is refused before any of this.)
pub(crate) struct LimitedBody {
    inner: Incoming,
    remaining: u64,
    limit: u64,
}

impl LimitedBody {
    pub(crate) fn new(inner: Incoming, limit: u64) -> Self {
        LimitedBody {
            inner,
            remaining: limit,
            limit,
        }
    }
}

impl Body for LimitedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let len = data.len() as u64;
                    if len > this.remaining {
                        this.remaining = 0;
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge {
                            limit: this.limit,
                        }))));
                    }
                    this.remaining -= len;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

enum Kind {
    Full(Option<Bytes>),
    /// From hyper's client (requests with a body).
    Stream(Incoming, Option<Checkout>),
    /// Read from the backend's socket by this task (bodiless requests).
    Direct(DirectBody),
}

/// The backend connection a streamed response came over: back to its pool once the body has
/// been read to the end, closed (dropped) otherwise.
pub(crate) struct Checkout {
    pub(crate) tx: Sender,
    pub(crate) pool: Arc<HostPool>,
}

impl Checkout {
    fn release(self) {
        self.pool.put(self.tx);
    }
}

/// A response body: the backend's, streamed, or one the gateway made. Data frames are added to
/// the usage cell's outbound bytes as they are handed to hyper for sending.
pub(crate) struct ResponseBody {
    kind: Kind,
    /// Whose usage the bytes are counted in.
    usage: Option<Target>,
    /// The backend's header lines, when it answered a bodiless request: they travel with the
    /// body, as they were read, instead of through a header map. Whoever writes the response
    /// head takes them ([`take_header_block`](Self::take_header_block)).
    header_block: Option<HeaderBlock>,
}

impl ResponseBody {
    pub(crate) fn full(bytes: Bytes) -> Self {
        ResponseBody {
            kind: Kind::Full(Some(bytes)),
            usage: None,
            header_block: None,
        }
    }

    /// The backend's body; `conn` goes back to its pool when the body has been read.
    pub(crate) fn stream(body: Incoming, conn: Option<Checkout>) -> Self {
        let mut body = ResponseBody {
            kind: Kind::Stream(body, conn),
            usage: None,
            header_block: None,
        };
        body.release_if_done();
        body
    }

    /// A body read by [`crate::direct`].
    pub(crate) fn direct(body: DirectBody) -> Self {
        ResponseBody {
            kind: Kind::Direct(body),
            usage: None,
            header_block: None,
        }
    }

    pub(crate) fn with_header_block(mut self, block: HeaderBlock) -> Self {
        self.header_block = Some(block);
        self
    }

    pub(crate) fn take_header_block(&mut self) -> Option<HeaderBlock> {
        self.header_block.take()
    }

    fn release_if_done(&mut self) {
        if let Kind::Stream(body, conn) = &mut self.kind
            && conn.is_some()
            && body.is_end_stream()
            && let Some(conn) = conn.take()
        {
            conn.release();
        }
    }

    /// Counts the body's bytes, as they are sent, in the usage of what the request resolved to.
    pub(crate) fn count_into(&mut self, target: Target) {
        self.usage = Some(target);
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = match &mut this.kind {
            Kind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Stream(body, conn) => {
                let polled = Pin::new(body).poll_frame(cx);
                if matches!(polled, Poll::Ready(None))
                    && let Some(conn) = conn.take()
                {
                    conn.release();
                }
                polled.map_err(BoxError::from)
            }
            Kind::Direct(body) => body
                .poll_data(cx)
                .map(|data| data.map(|data| data.map(Frame::data))),
        };
        if let (Poll::Ready(Some(Ok(frame))), Some(usage)) =
            (&polled, this.usage.as_ref().and_then(Target::usage))
            && let Some(data) = frame.data_ref()
        {
            usage.add_bytes(data.len() as u64);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(bytes) => bytes.is_none(),
            Kind::Stream(body, _) => body.is_end_stream(),
            Kind::Direct(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            Kind::Full(None) => SizeHint::with_exact(0),
            Kind::Stream(body, _) => body.size_hint(),
            Kind::Direct(body) => match body.exact_left() {
                Some(n) => SizeHint::with_exact(n),
                None => SizeHint::default(),
            },
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        // hyper stops polling a body that says it has ended; an unfinished one takes its
        // connection down with it.
        self.release_if_done();
    }
}
