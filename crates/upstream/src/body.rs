//! Body types: the request body as a handler gets it, and the response body, which carries
//! the usage its bytes are counted in ([`UsageHandle`]): the bytes read back from the backend
//! as it reads them, and the bytes sent to the client as the server writes them (see
//! [`ResponseBody::add_sent`]).

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

/// A response body: the backend's, streamed, or one the gateway made.
///
/// Outbound traffic is metered where the response is written, since only there are the status
/// line, headers and framing known: the server counts what it writes with
/// [`add_sent`](Self::add_sent), or asks the body to count its data frames as they are handed
/// over ([`count_data_as_sent`](Self::count_data_as_sent), for HTTP/2, whose head the server
/// counts itself). Backend traffic is counted here, as the body reads it.
pub struct ResponseBody {
    kind: Kind,
    /// Whose usage the bytes are counted in.
    usage: Option<UsageHandle<BackendPools>>,
    /// Data frames count as sent to the client as they are polled.
    count_data: bool,
    /// Bytes read from the backend before [`count_into`](Self::count_into) said whose they are.
    backend_pending: u64,
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
            count_data: false,
            backend_pending: 0,
            header_block: None,
            on_end: None,
            sent: 0,
        }
    }

    /// The backend's body; `conn` goes back to its pool when the body has been read.
    /// `head_bytes`: the size of the response head as read (backend traffic).
    pub fn stream(body: Incoming, conn: Option<Checkout>, head_bytes: u64) -> Self {
        let mut body = ResponseBody {
            kind: Kind::Stream(body, conn),
            usage: None,
            count_data: false,
            backend_pending: head_bytes,
            header_block: None,
            on_end: None,
            sent: 0,
        };
        body.release_if_done();
        body
    }

    /// The body of an exchange of [`crate::direct`], with the backend's header lines.
    pub(crate) fn direct(exchanged: Exchanged) -> Self {
        let Exchanged {
            block,
            body,
            received,
        } = exchanged;
        ResponseBody {
            kind: match body {
                Reply::Whole(bytes) => Kind::Full(Some(bytes)),
                Reply::Stream(body) => Kind::Direct(body),
            },
            usage: None,
            count_data: false,
            backend_pending: received,
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

    /// Counts the response's traffic in `usage` (what the request resolved to).
    pub fn count_into(&mut self, usage: UsageHandle<BackendPools>) {
        usage.add_backend_bytes(std::mem::take(&mut self.backend_pending));
        self.usage = Some(usage);
    }

    /// Where the response's traffic is counted, once [`count_into`](Self::count_into) said.
    pub fn usage(&self) -> Option<&UsageHandle<BackendPools>> {
        self.usage.as_ref()
    }

    /// Counts `n` bytes of this response written to the client.
    #[inline]
    pub fn add_sent(&self, n: u64) {
        if let Some(usage) = &self.usage {
            usage.add_bytes(n);
        }
    }

    /// From now on each data frame counts as sent to the client when it is polled (for a
    /// server that frames the body itself and cannot say what it wrote).
    pub fn count_data_as_sent(&mut self) {
        self.count_data = true;
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
                // hyper's client hands over the body decoded: its data is what was read,
                // without chunk framing (see the crate docs).
                if let (Poll::Ready(Some(Ok(frame))), Some(usage)) = (&polled, &this.usage)
                    && let Some(data) = frame.data_ref()
                {
                    usage.add_backend_bytes(data.len() as u64);
                }
                polled.map_err(BoxError::from)
            }
            Kind::Direct(body) => {
                let polled = body.poll_data(cx);
                let read = body.take_received();
                if let Some(usage) = &this.usage {
                    usage.add_backend_bytes(read);
                }
                polled.map(|data| data.map(|data| data.map(Frame::data)))
            }
        };
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            let n = data.len() as u64;
            this.sent += n;
            if this.count_data
                && let Some(usage) = &this.usage
            {
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
