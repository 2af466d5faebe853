//! The demo worker (`cluster worker`): an HTTP server on the listening socket it was handed,
//! on one thread like a Node process, that drains in-flight requests on SIGTERM.

mod http;
mod listen_fds;

use std::{convert::Infallible, io, net::TcpListener as StdListener, time::Duration};

use hyper::{server::conn::http1, service::service_fn};
use hyper_util::{rt::TokioIo, server::graceful::GracefulShutdown};
use tokio::{
    net::{TcpListener, TcpStream},
    signal::unix::{SignalKind, signal},
    time::{MissedTickBehavior, interval, sleep},
};
use tracing::{debug, info, warn};

use crate::{handoff, notify};

use self::http::Identity;
pub use self::listen_fds::ListenFdsError;

/// How often the accept queue is checked without a wake-up: connections migrated from a closing
/// socket arrive with no `sk_data_ready()`, so epoll never reports them
/// (`inet_csk_reqsk_queue_add` in `inet_csk_listen_stop`, net/ipv4/inet_connection_sock.c).
const MIGRATED_POLL: Duration = Duration::from_millis(50);
/// How long in-flight connections get to finish after SIGTERM.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

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
    let graceful = GracefulShutdown::new();
    // The socket is registered and the loop below is about to accept: tell the supervisor.
    if let Err(err) = notify::notify_ready() {
        warn!(slot = identity.slot, error = %err, "could not report readiness to the supervisor");
    }
    debug!(slot = identity.slot, pid = identity.pid, "worker serving");

    loop {
        tokio::select! {
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => serve_connection(stream, identity, &graceful),
                Err(err) => accept_failed(&err).await,
            },
            _ = poll.tick() => {
                while let Some(stream) = accept_without_wakeup(&listener) {
                    serve_connection(stream, identity, &graceful);
                }
            }
        }
    }
    // Closing the socket now lets the kernel move what is still queued on it to the other
    // workers (with the migrate-capable program), instead of resetting it.
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = sleep(DRAIN_TIMEOUT) => warn!(slot = identity.slot, "in-flight connections did not finish in time"),
    }
    info!(slot = identity.slot, pid = identity.pid, "worker stopped");
    Ok(())
}

fn serve_connection(stream: TcpStream, identity: Identity, graceful: &GracefulShutdown) {
    let service =
        service_fn(
            move |request| async move { Ok::<_, Infallible>(http::respond(&request, identity)) },
        );
    let connection = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    let connection = graceful.watch(connection);
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            debug!(error = %err, "connection ended with an error");
        }
    });
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
