//! Body types: the request body as a handler gets it, and the response body that counts the
//! bytes sent to the client (through a [`UsageHandle`]).

use crate::direct::{DirectBody, Exchanged, HeaderBlock, Reply};
use crate::limited::BoxError;
use crate::pool::{BackendPools, HostPool, Sender};
use bytes::Bytes;
use decide::UsageHandle;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// A request's body as the handler gets it: none (read by [`crate::h1`], which takes only
/// bodiless requests), or hyper's stream.
pub enum RequestBody {
    Empty,
    Incoming(Incoming),
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
pub struct Checkout {
    pub tx: Sender,
    pub pool: Arc<HostPool>,
}

impl Checkout {
    fn release(self) {
        self.pool.put(self.tx);
    }
}

/// A response body: the backend's, streamed, or one the gateway made. Data frames are added to
/// the usage cell's outbound bytes as they are handed to hyper for sending.
pub struct ResponseBody {
    kind: Kind,
    /// Whose usage the bytes are counted in.
    usage: Option<UsageHandle<BackendPools>>,
    /// The backend's header lines, when it answered a bodiless request: they travel with the
    /// body, as they were read, instead of through a header map. Whoever writes the response
    /// head takes them ([`take_header_block`](Self::take_header_block)).
    header_block: Option<HeaderBlock>,
    /// Called with the body bytes sent when the body is done with (sent, or dropped unsent):
    /// the access log's line is finished there.
    on_end: Option<OnEnd>,
    sent: u64,
}

/// What [`ResponseBody::on_end`] calls.
pub type OnEnd = Box<dyn FnOnce(u64) + Send>;

impl ResponseBody {
    pub fn full(bytes: Bytes) -> Self {
        ResponseBody {
            kind: Kind::Full(Some(bytes)),
            usage: None,
            header_block: None,
            on_end: None,
            sent: 0,
        }
    }

    /// The backend's body; `conn` goes back to its pool when the body has been read.
    pub fn stream(body: Incoming, conn: Option<Checkout>) -> Self {
        let mut body = ResponseBody {
            kind: Kind::Stream(body, conn),
            usage: None,
            header_block: None,
            on_end: None,
            sent: 0,
        };
        body.release_if_done();
        body
    }

    /// The body of an exchange of [`crate::direct`], with the backend's header lines.
    pub(crate) fn direct(exchanged: Exchanged) -> Self {
        let Exchanged { block, body } = exchanged;
        ResponseBody {
            kind: match body {
                Reply::Whole(bytes) => Kind::Full(Some(bytes)),
                Reply::Stream(body) => Kind::Direct(body),
            },
            usage: None,
            header_block: Some(block),
            on_end: None,
            sent: 0,
        }
    }

    pub fn take_header_block(&mut self) -> Option<HeaderBlock> {
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

    /// Counts the body's bytes, as they are sent, in `usage` (what the request resolved to).
    pub fn count_into(&mut self, usage: UsageHandle<BackendPools>) {
        self.usage = Some(usage);
    }

    /// Calls `f` with the body bytes sent, once the body is done with.
    pub fn on_end(&mut self, f: OnEnd) {
        self.on_end = Some(f);
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
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            let n = data.len() as u64;
            this.sent += n;
            if let Some(usage) = &this.usage {
                usage.add_bytes(n);
            }
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
        if let Some(f) = self.on_end.take() {
            f(self.sent);
        }
    }
}
