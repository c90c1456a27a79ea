//! How the server takes HTTP connections: a deadline for each request's head and one for its
//! body, so that a client that connects and sends nothing, or sends a request a byte at a
//! time, cannot hold a connection (and a file descriptor) for as long as it likes; a cap on
//! open connections; and the graceful drain when the server is told to stop.

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderValue, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::metrics::gauge::Gauge;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// The limits every connection is held to (`[server]` in the configuration).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// How long a client has to send a request's head, counted from when the server starts
    /// waiting for it: on a new connection, and on a kept-alive one after each answer (so it
    /// is also how long an idle connection stays open). Then as long again for the body.
    pub read_timeout: Duration,
    /// Connections open at once; more wait in the kernel's queue until one closes.
    pub max_connections: usize,
}

/// The most connections a server takes, whatever the limits say (Linux's own ceiling on open
/// files is about a million).
pub const MAX_CONNECTIONS: usize = 1 << 20;

/// The largest request head (request line and headers) taken: what a connection can make the
/// server hold before its request is even known (hyper's own bound is its read buffer, about
/// 400 KiB). Over it, `431`.
pub const MAX_HEAD: usize = 64 * 1024;

/// Three quarters of the process's soft limit on open files (at least one): the rest is left
/// to the ledger, upstream connections, sinks and the audit index.
pub fn default_max_connections() -> usize {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    limit.map_or(MAX_CONNECTIONS, |n| {
        usize::try_from(n / 4 * 3)
            .unwrap_or(MAX_CONNECTIONS)
            .clamp(1, MAX_CONNECTIONS)
    })
}

/// Raises the process's soft limit on open files to its hard limit, as servers that hold a
/// connection per client do (the soft default is often 1,024). Returns the soft limit after
/// the attempt; a limit that cannot be raised is left as it is.
pub fn raise_open_file_limit() -> Option<u64> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let now = getrlimit(Resource::Nofile);
    if now.current != now.maximum {
        let raised = rustix::process::Rlimit {
            current: now.maximum,
            maximum: now.maximum,
        };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            tracing::debug!(error = %e, "the limit on open files stays as it is");
        }
    }
    getrlimit(Resource::Nofile).current
}

/// Serves `router` on `listener` until `shutdown` is cancelled, then lets each connection
/// finish the request it is on (closing it after that answer) and returns once every
/// connection has closed. The caller bounds that wait.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: CancellationToken,
    open: Gauge,
) {
    let connections = TaskTracker::new();
    let mut warned: Option<std::time::Instant> = None;
    let local = listener.local_addr().ok();
    let slots = Arc::new(tokio::sync::Semaphore::new(
        limits.max_connections.clamp(1, MAX_CONNECTIONS),
    ));
    loop {
        let slot = match slots.clone().try_acquire_owned() {
            Ok(s) => s,
            Err(_) => {
                at_the_cap(&mut warned, limits.max_connections, local);
                tokio::select! {
                    slot = slots.clone().acquire_owned() => match slot {
                        Ok(s) => s,
                        Err(_) => break,
                    },
                    () = shutdown.cancelled() => break,
                }
            }
        };
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    refused(e).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let router = router.clone();
        let shutdown = shutdown.clone();
        let held = Held::new(slot, &open);
        connections.spawn(async move {
            serve_connection(stream, remote, router, limits, shutdown).await;
            drop(held);
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// Says, at most once a minute, that new connections wait for a place.
fn at_the_cap(warned: &mut Option<std::time::Instant>, max: usize, listener: Option<SocketAddr>) {
    if warned.is_some_and(|at| at.elapsed() < Duration::from_secs(60)) {
        return;
    }
    *warned = Some(std::time::Instant::now());
    tracing::warn!(
        listener = ?listener,
        max_connections = max,
        "every connection place is taken: new connections wait in the kernel's queue until one closes"
    );
}

/// A connection's place under the cap, counted in the open-connections gauge while held.
struct Held {
    _slot: tokio::sync::OwnedSemaphorePermit,
    open: Gauge,
}

impl Held {
    fn new(slot: tokio::sync::OwnedSemaphorePermit, open: &Gauge) -> Held {
        open.inc();
        Held {
            _slot: slot,
            open: open.clone(),
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.open.dec();
    }
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    remote: SocketAddr,
    router: Router,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let mut req = req.map(Body::new);
        req.extensions_mut().insert(ConnectInfo(remote));
        router.clone().oneshot(req)
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.read_timeout)
        .max_header_size(MAX_HEAD);
    let io = WriteDeadline {
        io: stream,
        limit: limits.read_timeout,
        stalled: None,
    };
    let conn = builder.serve_connection(TokioIo::new(io), service);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        served = conn.as_mut() => {
            if let Err(e) = served {
                tracing::debug!(error = %e, %remote, "connection ended");
            }
            return;
        }
        () = shutdown.cancelled() => conn.as_mut().graceful_shutdown(),
    }
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, %remote, "connection ended while draining");
    }
}

/// A connection's socket whose writes must make progress: a write that has waited
/// `limit` for the client to take anything fails, and the connection with it. hyper's head
/// deadline runs only while it waits for a request; a client that sends requests and never
/// reads the answers (or stops reading an event stream) would otherwise hold its connection
/// for good once the buffers between them are full. Nothing is timed while there is nothing
/// to write, so a quiet event stream is left alone.
struct WriteDeadline<T> {
    io: T,
    limit: Duration,
    /// Since the first write that could not proceed after the last one that did.
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<T> WriteDeadline<T> {
    fn progress<R>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<std::io::Result<R>>,
    ) -> Poll<std::io::Result<R>> {
        if polled.is_ready() {
            self.stalled = None;
            return polled;
        }
        let limit = self.limit;
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match stalled.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("the client took nothing for {} s", limit.as_secs()),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for WriteDeadline<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for WriteDeadline<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        self.progress(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.progress(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_flush(cx);
        self.progress(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Binds the listener with a queue of 1,024 connections (the standard library's is 128): what
/// waits there while the server is at `max_connections` is served in turn; past it, the kernel
/// drops new connection attempts and clients try again.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// An accept that failed: a connection reset before it was taken is nothing; anything else
/// (most often out of file descriptors) is logged, and accepting waits a second rather than
/// spin.
async fn refused(e: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "accepting a connection failed; trying again in a second");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// Middleware: the request's body must arrive within `timeout` of the server starting to read
/// it. A body that does not is refused with 408 and the connection closed, whatever the
/// handler made of the broken read (its CORS headers kept, so a browser client can read the
/// refusal); a request without a body is passed on untouched.
pub async fn body_deadline(
    timeout: Duration,
    req: Request<Body>,
    next: axum::middleware::Next,
) -> Response {
    use hyper::body::Body as _;
    if req.body().is_end_stream() {
        return next.run(req).await;
    }
    let late = Arc::new(AtomicBool::new(false));
    let req = req.map(|inner| {
        Body::new(Deadline {
            inner,
            timeout,
            sleep: None,
            late: late.clone(),
        })
    });
    let answer = next.run(req).await;
    if !late.load(Ordering::Acquire) {
        return answer;
    }
    let body = serde_json::json!({
        "error": "invalid_request",
        "error_description": format!(
            "the request's body did not arrive within {} s",
            timeout.as_secs()
        ),
    });
    let mut r = (StatusCode::REQUEST_TIMEOUT, axum::Json(body)).into_response();
    let headers = r.headers_mut();
    for (name, value) in answer.headers() {
        if name == header::VARY || name.as_str().starts_with("access-control-") {
            headers.append(name, value.clone());
        }
    }
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

/// A request body that fails once its deadline passes while the next frame is still awaited.
/// The deadline is set when the body is first read, so time the request spent waiting before
/// that (for a rate limiter, for the handler's turn) is not held against the client.
struct Deadline {
    inner: Body,
    timeout: Duration,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    late: Arc<AtomicBool>,
}

/// The error a late body ends with.
#[derive(Debug, thiserror::Error)]
#[error("the request's body did not arrive in time")]
struct Late;

impl hyper::body::Body for Deadline {
    type Data = axum::body::Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let timeout = self.timeout;
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.late.store(true, Ordering::Release);
                Poll::Ready(Some(Err(Late.into())))
            }
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
