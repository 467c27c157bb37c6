//! How long a request body may take to arrive. Headers are bounded by actix
//! (`client_request_timeout`); the body is not, so a client announcing more
//! than it sends, or trickling it, would hold its connection (and a file
//! descriptor) for as long as it likes. [`bound_body`] wraps every request
//! body: on the public, admin and cluster listeners the whole body must
//! arrive within a total bound; on the proxy listener, whose uploads stream
//! to the upstream, only the silence between two pieces is bounded. Past the
//! bound the reader gets an error, the client a 408 and the connection
//! closes.
//!
//! The timer starts only when a read finds nothing twice in a row: the
//! handler reads its body before the HTTP dispatcher has handed over the
//! part that arrived with the headers, so the first read of an ordinary
//! check finds nothing and asks to be polled again; the dispatcher then
//! hands the body over and the second read finds it. A body that arrives
//! with its headers (every ordinary check) costs no timer.

use std::cell::Cell;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::body::EitherBody;
use actix_web::dev::{Payload, Service, ServiceRequest, ServiceResponse};
use actix_web::error::PayloadError;
use actix_web::http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use actix_web::http::ConnectionType;
use actix_web::{Error, HttpMessage, ResponseError};
use bytes::Bytes;
use futures_util::Stream;
use std::future::Future;
use tokio::time::{Instant, Sleep};

use super::error::ApiError;

/// The bounds of one server's request bodies.
#[derive(Debug, Clone, Copy)]
pub struct BodyBounds {
    /// Longest a whole body may take once the headers are in.
    pub total: Duration,
    /// On the proxy listener (`proxy`), the longest silence between two
    /// pieces of a body instead.
    pub proxy_idle: Duration,
    pub proxy: Option<SocketAddr>,
}

impl BodyBounds {
    /// A server without a proxy listener.
    pub fn total(total: Duration) -> Self {
        BodyBounds {
            total,
            proxy_idle: total,
            proxy: None,
        }
    }
}

/// Which bound a body is held to.
#[derive(Debug, Clone, Copy)]
enum Bound {
    Total(Duration),
    Idle(Duration),
}

impl Bound {
    fn duration(self) -> Duration {
        match self {
            Bound::Total(d) | Bound::Idle(d) => d,
        }
    }
}

/// A request body cut with an error once its bound passes.
struct BoundedBody {
    inner: Payload,
    bound: Bound,
    deadline: Instant,
    /// Armed at the second read in a row that finds nothing.
    timer: Option<Pin<Box<Sleep>>>,
    /// The last read found nothing (and asked to be polled again).
    waited: bool,
    /// Set when the bound passed (read by [`bound_body`] to answer 408).
    expired: Rc<Cell<bool>>,
    done: bool,
}

impl Stream for BoundedBody {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                this.waited = false;
                if let Bound::Idle(gap) = this.bound {
                    this.deadline = Instant::now() + gap;
                    if let Some(timer) = &mut this.timer {
                        timer.as_mut().reset(this.deadline);
                    }
                }
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(None) => {
                this.done = true;
                this.timer = None;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Pending if this.timer.is_none() && !this.waited => {
                // The dispatcher wakes this task anyway when it hands over
                // the body that came with the headers: one more poll, no timer.
                this.waited = true;
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            Poll::Pending => {
                let deadline = this.deadline;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.done = true;
                this.expired.set(true);
                let e = std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "request body not received within {:?}",
                        this.bound.duration()
                    ),
                );
                Poll::Ready(Some(Err(PayloadError::Io(e))))
            }
        }
    }
}

/// True when the request announces a body.
fn has_body(req: &ServiceRequest) -> bool {
    let h = req.headers();
    h.contains_key(TRANSFER_ENCODING) || h.get(CONTENT_LENGTH).is_some_and(|v| v.as_bytes() != b"0")
}

/// Middleware (`wrap_fn`) holding every request body to `bounds`: a request
/// whose body did not arrive in time is answered 408 (whatever its handler
/// made of the cut body) and its connection closes.
pub fn bound_body<S, B>(
    bounds: BodyBounds,
    mut req: ServiceRequest,
    srv: &S,
) -> impl std::future::Future<Output = Result<ServiceResponse<EitherBody<B>>, Error>>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error>,
    S::Future: 'static,
    B: 'static,
{
    let expired = if has_body(&req) {
        let bound = if bounds.proxy.is_some() && bounds.proxy == Some(req.app_config().local_addr())
        {
            Bound::Idle(bounds.proxy_idle)
        } else {
            Bound::Total(bounds.total)
        };
        let expired = Rc::new(Cell::new(false));
        let body = BoundedBody {
            inner: req.take_payload(),
            bound,
            deadline: Instant::now() + bound.duration(),
            timer: None,
            waited: false,
            expired: Rc::clone(&expired),
            done: false,
        };
        let body: Pin<Box<dyn Stream<Item = Result<Bytes, PayloadError>>>> = Box::pin(body);
        req.set_payload(Payload::from(body));
        Some((expired, bound))
    } else {
        None
    };
    let fut = srv.call(req);
    async move {
        let res = fut.await?;
        match expired {
            Some((expired, bound)) if expired.get() => {
                let mut resp = ApiError::body_timeout(bound.duration()).error_response();
                resp.head_mut().set_connection_type(ConnectionType::Close);
                let (req, _) = res.into_parts();
                Ok(ServiceResponse::new(req, resp).map_into_right_body())
            }
            _ => Ok(res.map_into_left_body()),
        }
    }
}
