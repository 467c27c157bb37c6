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
//! The bound starts at the first read that finds nothing yet. No request
//! has a timer of its own: each worker thread watches its waiting bodies
//! every 250 ms (one task, started while some body waits), so a bound is
//! kept to within that.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use actix_web::body::EitherBody;
use actix_web::dev::{Payload, Service, ServiceRequest, ServiceResponse};
use actix_web::error::PayloadError;
use actix_web::http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use actix_web::http::ConnectionType;
use actix_web::{Error, HttpMessage, ResponseError};
use bytes::Bytes;
use futures_util::Stream;
use std::time::Instant;

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

/// How often a worker thread looks at the bodies waiting for bytes: a bound
/// is kept to within this.
const WATCH_TICK: Duration = Duration::from_millis(250);

/// One body waiting for bytes, as the thread's watch sees it.
#[derive(Default)]
struct Wait {
    /// When the bound passes; set at the first read that finds nothing.
    deadline: Cell<Option<Instant>>,
    /// The task to wake when it passes.
    waker: RefCell<Option<Waker>>,
    /// The body ended (or was dropped): forget it.
    done: Cell<bool>,
    /// The bound passed (read by [`bound_body`] to answer 408).
    expired: Cell<bool>,
}

/// The bodies of this worker thread that found nothing at a read, checked
/// every [`WATCH_TICK`] by one task per thread: a request costs no timer
/// of its own (most bodies arrive with their headers, but actix polls the
/// handler before it feeds the body, so nearly every body waits once).
#[derive(Default)]
struct Watch {
    waiting: Vec<Rc<Wait>>,
    ticking: bool,
}

thread_local! {
    static WATCH: RefCell<Watch> = RefCell::new(Watch::default());
}

/// Puts `wait` under the thread's watch, starting its task if none runs.
fn watch(wait: &Rc<Wait>) {
    let start = WATCH.with(|w| {
        let mut w = w.borrow_mut();
        w.waiting.push(Rc::clone(wait));
        !std::mem::replace(&mut w.ticking, true)
    });
    if start {
        actix_rt::spawn(async {
            loop {
                actix_rt::time::sleep(WATCH_TICK).await;
                let now = Instant::now();
                let idle = WATCH.with(|w| {
                    let mut w = w.borrow_mut();
                    w.waiting.retain(|x| {
                        if x.done.get() {
                            return false;
                        }
                        if x.deadline.get().is_some_and(|d| now >= d) {
                            x.expired.set(true);
                            if let Some(waker) = x.waker.borrow_mut().take() {
                                waker.wake();
                            }
                            return false;
                        }
                        true
                    });
                    if w.waiting.is_empty() {
                        w.ticking = false;
                    }
                    !w.ticking
                });
                if idle {
                    break;
                }
            }
        });
    }
}

/// A request body cut with an error once its bound passes.
struct BoundedBody {
    inner: Payload,
    bound: Bound,
    wait: Rc<Wait>,
    done: bool,
}

impl BoundedBody {
    fn finish(&mut self) {
        self.done = true;
        self.wait.done.set(true);
    }
}

impl Drop for BoundedBody {
    fn drop(&mut self) {
        self.wait.done.set(true);
    }
}

impl Stream for BoundedBody {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if this.wait.expired.get() {
            this.finish();
            let e = std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "request body not received within {:?}",
                    this.bound.duration()
                ),
            );
            return Poll::Ready(Some(Err(PayloadError::Io(e))));
        }
        match Pin::new(&mut this.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                if let (Bound::Idle(gap), Some(_)) = (this.bound, this.wait.deadline.get()) {
                    this.wait.deadline.set(Some(Instant::now() + gap));
                }
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(None) => {
                this.finish();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Pending => {
                let mut waker = this.wait.waker.borrow_mut();
                if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    *waker = Some(cx.waker().clone());
                }
                drop(waker);
                if this.wait.deadline.get().is_none() {
                    this.wait
                        .deadline
                        .set(Some(Instant::now() + this.bound.duration()));
                    watch(&this.wait);
                }
                Poll::Pending
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
        let wait = Rc::new(Wait::default());
        let body = BoundedBody {
            inner: req.take_payload(),
            bound,
            wait: Rc::clone(&wait),
            done: false,
        };
        let body: Pin<Box<dyn Stream<Item = Result<Bytes, PayloadError>>>> = Box::pin(body);
        req.set_payload(Payload::from(body));
        Some((wait, bound))
    } else {
        None
    };
    let fut = srv.call(req);
    async move {
        let res = fut.await?;
        match expired {
            Some((wait, bound)) if wait.expired.get() => {
                let mut resp = ApiError::body_timeout(bound.duration()).error_response();
                resp.head_mut().set_connection_type(ConnectionType::Close);
                let (req, _) = res.into_parts();
                Ok(ServiceResponse::new(req, resp).map_into_right_body())
            }
            _ => Ok(res.map_into_left_body()),
        }
    }
}
