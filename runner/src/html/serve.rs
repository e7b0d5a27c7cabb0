//! The report page over HTTP (`temper report --serve`): `GET /` (any query) renders the page
//! afresh, `HEAD /` gives its headers, another method on `/` is answered 405 and any other path
//! 404; every answer says `Cache-Control: no-store` and closes its connection.
//!
//! hyper (HTTP/1.1) on a one-thread tokio runtime. The invariants, each enforced in one place:
//! - no client can keep another waiting: connections are served concurrently, each in its own
//!   task, and a connection that has not sent its request's headers within
//!   [`Limits::header_timeout`] is closed (hyper's header read timeout, [`connection`]);
//! - bounded work: at most [`Limits::max_connections`] connections are open at once; one over
//!   the bound is answered `503` at once and closed, without reading it and without a task of
//!   its own ([`busy`]). A connection's slot is freed only once the connection is closed *and*
//!   its page's render has returned, so renders never outnumber slots;
//! - renders (blocking reads of the recipe and the store) run on the runtime's blocking threads,
//!   at most [`Limits::render_threads`] at once, never on the thread that accepts;
//! - no connection lives longer than [`Limits::connection_deadline`] (a client that never
//!   reads its answer cannot hold a slot for ever).
//!
//! No signal handler is installed: Ctrl-C ends the process as before.

use anyhow::{Context, Result};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Renders the page as it is now (blocking; called once per `GET /` or `HEAD /`).
pub type Render = dyn Fn() -> Result<String> + Send + Sync;

/// The server's bounds.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections open at once; more are answered 503.
    pub max_connections: usize,
    /// From a connection's start to the end of its request's headers.
    pub header_timeout: Duration,
    /// From a connection's start to its close, whatever it is doing.
    pub connection_deadline: Duration,
    /// Renders running at once (more wait for a thread).
    pub render_threads: usize,
}

/// What `temper report --serve` uses (README, "temper report").
pub const LIMITS: Limits = Limits {
    max_connections: 64,
    header_timeout: Duration::from_secs(5),
    connection_deadline: Duration::from_secs(60),
    render_threads: 4,
};

/// What a connection over [`Limits::max_connections`] is sent before it is closed.
const BUSY: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n\
Content-Length: 38\r\nRetry-After: 1\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n\
busy: too many connections, try again\n";

/// Serves the page on `listener` until the process ends; returns only if the server cannot
/// start.
pub fn serve(listener: std::net::TcpListener, limits: Limits, render: Arc<Render>) -> Result<()> {
    listener
        .set_nonblocking(true)
        .context("making the listening socket non-blocking")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .max_blocking_threads(limits.render_threads.max(1))
        .build()
        .context("starting the HTTP server")?;
    runtime.block_on(accept(listener, limits, render))
}

/// Accepts connections for ever: each within the bound gets a task ([`connection`]), each over
/// it is answered [`busy`].
async fn accept(
    listener: std::net::TcpListener,
    limits: Limits,
    render: Arc<Render>,
) -> Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener).context("listening")?;
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, or a connection aborted before it was accepted:
                // let the moment pass instead of spinning.
                tracing::warn!("report: accepting a connection: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        match slots.clone().try_acquire_owned() {
            Ok(slot) => {
                tokio::spawn(connection(stream, slot, limits, render.clone()));
            }
            Err(_) => busy(stream),
        }
    }
}

/// Answers a connection over the bound with [`BUSY`] and closes it, without waiting: the write
/// is non-blocking, into the empty send buffer of a new socket.
fn busy(stream: TcpStream) {
    if let Ok(mut s) = stream.into_std() {
        let _ = s.write(BUSY);
        let _ = s.shutdown(std::net::Shutdown::Write);
    }
}

/// Serves one connection (one request: keep-alive is off) holding `slot`, within
/// [`Limits::header_timeout`] for the headers and [`Limits::connection_deadline`] in all.
async fn connection(
    stream: TcpStream,
    slot: OwnedSemaphorePermit,
    limits: Limits,
    render: Arc<Render>,
) {
    let slot = Arc::new(slot);
    let service = hyper::service::service_fn(move |req| answer(req, render.clone(), slot.clone()));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(false);
    let conn = http.serve_connection(TokioIo::new(stream), service);
    match tokio::time::timeout(limits.connection_deadline, conn).await {
        Ok(Ok(())) => {}
        // An idle client timed out, or one went away: routine for a server, not worth a warning.
        Ok(Err(e)) => tracing::debug!("report: a connection ended: {e}"),
        Err(_) => tracing::debug!(
            "report: a connection still open after {:?} was closed",
            limits.connection_deadline
        ),
    }
}

/// The answer to one request. The render holds `slot` until it returns, even if the
/// connection is gone by then.
async fn answer(
    req: Request<Incoming>,
    render: Arc<Render>,
    slot: Arc<OwnedSemaphorePermit>,
) -> Result<Response<String>, Infallible> {
    let text = |status, body: &str| reply(status, "text/plain; charset=utf-8", body.to_string());
    if req.uri().path() != "/" {
        return Ok(text(StatusCode::NOT_FOUND, "not found\n"));
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return Ok(r);
    }
    let rendered = tokio::task::spawn_blocking(move || {
        let _slot = slot;
        render()
    })
    .await;
    Ok(match rendered {
        Ok(Ok(page)) => reply(StatusCode::OK, "text/html; charset=utf-8", page),
        Ok(Err(e)) => {
            tracing::warn!("report: rendering the page failed: {e:#}");
            text(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e:#}\n"))
        }
        Err(e) => {
            tracing::warn!("report: rendering the page failed: {e}");
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "rendering the page failed (see the server's log)\n",
            )
        }
    })
}

/// A response with `status`, `kind` as its content type, `body`, and `Cache-Control: no-store`
/// (the page changes with the store; hyper adds `Content-Length` and `Connection: close`).
fn reply(status: StatusCode, kind: &'static str, body: String) -> Response<String> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}
