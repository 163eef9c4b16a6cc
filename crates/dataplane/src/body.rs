//! Body types: the request body with its size limit, and the response body that counts the bytes
//! sent to the client.

use crate::usage::UsageCell;
use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

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
    Stream(Incoming),
}

/// A response body: the backend's, streamed, or one the gateway made. Data frames are added to
/// the usage cell's outbound bytes as they are handed to hyper for sending.
pub(crate) struct ResponseBody {
    kind: Kind,
    usage: Option<Arc<UsageCell>>,
}

impl ResponseBody {
    pub(crate) fn full(bytes: Bytes) -> Self {
        ResponseBody {
            kind: Kind::Full(Some(bytes)),
            usage: None,
        }
    }

    pub(crate) fn stream(body: Incoming) -> Self {
        ResponseBody {
            kind: Kind::Stream(body),
            usage: None,
        }
    }

    pub(crate) fn count_into(&mut self, usage: Arc<UsageCell>) {
        self.usage = Some(usage);
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = match &mut this.kind {
            Kind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Stream(body) => Pin::new(body).poll_frame(cx),
        };
        if let (Poll::Ready(Some(Ok(frame))), Some(usage)) = (&polled, &this.usage)
            && let Some(data) = frame.data_ref()
        {
            usage.add_bytes(data.len() as u64);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(bytes) => bytes.is_none(),
            Kind::Stream(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            Kind::Full(None) => SizeHint::with_exact(0),
            Kind::Stream(body) => body.size_hint(),
        }
    }
}
