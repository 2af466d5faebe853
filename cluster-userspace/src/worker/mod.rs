//! The demo worker (`cluster worker`): an HTTP server on the listening socket it was handed,
//! on one thread like a Node process, that drains without losing a request on SIGTERM.
//!
//! Draining: accept whatever is queued, close the listener (the kernel migrates what arrives
//! later to the serving workers), answer the next request on every connection with
//! `Connection: close`, and close a connection that stays idle for 2 s (`IDLE_GRACE`), unless a
//! request waits unread on it (the worker's one thread was busy meanwhile). Closing idle
//! keep-alive connections at once (hyper-util's graceful shutdown) races with a request the
//! client is sending on one, and loses it (nginx/nginx#437).

pub mod channel;
mod http;
mod listen_fds;

use std::{
    convert::Infallible,
    io,
    net::TcpListener as StdListener,
    os::fd::{AsRawFd as _, RawFd},
    time::Duration,
};

use hyper::{
    header::{CONNECTION, HeaderValue},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use tokio::{
    net::{TcpListener, TcpStream},
    signal::unix::{SignalKind, signal},
    sync::watch,
    task::JoinSet,
    time::{MissedTickBehavior, interval, sleep},
};
use tracing::{debug, info, warn};

use crate::{handoff, notify};

use self::http::Identity;
pub use self::listen_fds::{ListenFdsError, take_listener as listener};
pub use crate::notify::notify_ready as ready;

/// How often the accept queue is checked without a wake-up, for kernels older than the fix
/// "tcp: call sk_data_ready() after listener migration": there, connections migrated from a
/// closing socket arrive with no `sk_data_ready()`, so epoll never reports them
/// (`inet_csk_reqsk_queue_add` in `inet_csk_listen_stop`, net/ipv4/inet_connection_sock.c).
/// Kernels with the fix (6.18 here) wake the accept at once, and this poll finds nothing.
const MIGRATED_POLL: Duration = Duration::from_millis(50);
/// How long a keep-alive connection may stay idle once the worker drains before it is closed.
/// A client still using it sends its next request sooner and gets `Connection: close`.
const IDLE_GRACE: Duration = Duration::from_secs(2);

/// Why the demo worker stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    ListenFds(#[from] ListenFdsError),
    #[error("CLUSTER_WORKER_ID={0:?} is not a slot number")]
    BadSlot(String),
    #[error("{op} failed: {source}")]
    Io {
        op: &'static str,
        #[source]
        source: io::Error,
    },
}

/// Runs the demo worker until SIGTERM or SIGINT.
pub fn run() -> Result<(), WorkerError> {
    let listener = listen_fds::take_listener()?;
    let slot = match std::env::var(handoff::WORKER_ID) {
        Ok(value) => value.parse().map_err(|_| WorkerError::BadSlot(value))?,
        Err(_) => 0,
    };
    let identity = Identity {
        pid: std::process::id(),
        slot,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| WorkerError::Io {
            op: "starting the worker's event loop",
            source,
        })?;
    runtime.block_on(serve(listener, identity))
}

async fn serve(listener: StdListener, identity: Identity) -> Result<(), WorkerError> {
    let io_error = |op| move |source| WorkerError::Io { op, source };
    let listener = TcpListener::from_std(listener).map_err(io_error("registering the socket"))?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(io_error("handling SIGTERM"))?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(io_error("handling SIGINT"))?;
    let mut poll = interval(MIGRATED_POLL);
    poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let (draining, drain_watch) = watch::channel(false);
    let (last_message, message_watch) = watch::channel(None::<String>);
    let mut channel = channel::Channel::take().map_err(io_error("opening the message channel"))?;
    let mut connections = JoinSet::new();
    // The socket is registered and the loop below is about to accept: tell the supervisor, on
    // a task of its own, since a full queue makes it try again for a while.
    tokio::spawn(async move {
        if let Err(err) = notify::notify_ready().await {
            warn!(slot = identity.slot, error = %err, "could not report readiness to the supervisor");
        }
    });
    debug!(slot = identity.slot, pid = identity.pid, "worker serving");

    loop {
        tokio::select! {
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => serve_connection(stream, identity, &drain_watch, &message_watch, &mut connections),
                Err(err) => accept_failed(&err).await,
            },
            _ = poll.tick() => {
                while let Some(stream) = accept_without_wakeup(&listener) {
                    serve_connection(stream, identity, &drain_watch, &message_watch, &mut connections);
                }
            }
            Some(_) = connections.join_next() => {}
            incoming = next_message(channel.as_mut()) => match incoming {
                Some(channel::Incoming::Drain) => break,
                Some(channel::Incoming::Message(message)) => {
                    let _ = last_message.send(Some(message.to_string()));
                }
                // The supervisor closed the channel: read it no more.
                None => channel = None,
            }
        }
    }
    // Take what is queued, then close the socket: what the kernel still holds for it then
    // moves to the serving workers (with the migrate-capable program), instead of being reset.
    while let Some(stream) = accept_without_wakeup(&listener) {
        serve_connection(
            stream,
            identity,
            &drain_watch,
            &message_watch,
            &mut connections,
        );
    }
    drop(listener);
    let _ = draining.send(true);
    info!(
        slot = identity.slot,
        pid = identity.pid,
        open = connections.len(),
        "worker draining"
    );
    while connections.join_next().await.is_some() {}
    info!(slot = identity.slot, pid = identity.pid, "worker stopped");
    Ok(())
}

/// Serves one connection until the client closes it, or, once the worker drains, until its
/// next response (sent with `Connection: close`) or [`IDLE_GRACE`] of idleness.
fn serve_connection(
    stream: TcpStream,
    identity: Identity,
    drain_watch: &watch::Receiver<bool>,
    message_watch: &watch::Receiver<Option<String>>,
    connections: &mut JoinSet<()>,
) {
    let draining = drain_watch.clone();
    let last_message = message_watch.clone();
    let service = service_fn(move |request| {
        let closing = *draining.borrow();
        // Only `/message` shows it: no copy for every other request.
        let message = (request.uri().path() == "/message")
            .then(|| last_message.borrow().clone())
            .flatten();
        async move {
            let mut response = http::respond(&request, identity, message.as_deref());
            if closing {
                response
                    .headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
            Ok::<_, Infallible>(response)
        }
    });
    let mut drain_watch = drain_watch.clone();
    let fd = stream.as_raw_fd();
    connections.spawn(async move {
        let connection = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
        tokio::pin!(connection);
        let result = tokio::select! {
            result = connection.as_mut() => result,
            () = until_draining(&mut drain_watch) => loop {
                tokio::select! {
                    result = connection.as_mut() => break result,
                    () = sleep(IDLE_GRACE) => {
                        // A request that arrived while the worker's one thread was busy
                        // elsewhere is still unread: it is answered (with `Connection: close`)
                        // before anything closes.
                        if bytes_unread(fd) {
                            continue;
                        }
                        // Idle (a busy connection got `Connection: close` and ended): finish any
                        // request in flight, then close.
                        connection.as_mut().graceful_shutdown();
                        break connection.await;
                    }
                }
            },
        };
        if let Err(err) = result {
            debug!(error = %err, "connection ended with an error");
        }
    });
}

/// The next message from the supervisor; never, without a channel. A read error counts as
/// the channel closing.
async fn next_message(channel: Option<&mut channel::Channel>) -> Option<channel::Incoming> {
    match channel {
        Some(channel) => channel.recv().await.ok().flatten(),
        None => std::future::pending().await,
    }
}

/// Whether the socket `fd` has received bytes nobody has read yet (`FIONREAD`, tcp(7)); `false`
/// when that cannot be told. `fd` belongs to a connection the caller keeps open.
fn bytes_unread(fd: RawFd) -> bool {
    let mut unread: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int to the pointer given; `fd` is an open socket.
    let rc = unsafe { libc::ioctl(fd, libc::FIONREAD, &raw mut unread) };
    rc == 0 && unread > 0
}

/// Returns once the worker drains (at once if it already does).
async fn until_draining(drain_watch: &mut watch::Receiver<bool>) {
    // An error means the sender is gone, which happens only after draining began.
    let _ = drain_watch.wait_for(|&draining| draining).await.map(|_| ());
}

/// One non-blocking accept(2) straight on the socket, bypassing tokio's readiness cache.
fn accept_without_wakeup(listener: &TcpListener) -> Option<TcpStream> {
    let (socket, _) = socket2::SockRef::from(listener).accept().ok()?;
    socket.set_nonblocking(true).ok()?;
    TcpStream::from_std(socket.into()).ok()
}

/// Accept errors are per connection (ECONNABORTED) or resource limits (EMFILE): log, pause
/// briefly so a limit does not become a busy loop, and go on.
async fn accept_failed(err: &io::Error) {
    warn!(error = %err, "accept failed");
    sleep(Duration::from_millis(10)).await;
}
