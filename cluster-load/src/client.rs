//! One HTTP/1.1 client connection: hyper's low-level `http1` client on a socket opened here (so
//! that its source address can be chosen), one request at a time, each answer read whole.

use std::net::{Ipv4Addr, SocketAddr};

use http_body_util::{BodyExt as _, Empty};
use hyper::{
    HeaderMap, Request, Version,
    body::Bytes,
    client::conn::http1::{self, SendRequest},
    header::{CONNECTION, HeaderValue},
};
use hyper_util::rt::TokioIo;
use nix::sys::socket::{setsockopt, sockopt::IpBindAddressNoPort};
use tokio::{
    net::{TcpSocket, TcpStream},
    task::JoinHandle,
};

use crate::errors::{ErrorClass, Failure};

/// The request type sent: a `GET` has no body.
pub(crate) type GetRequest = Request<Empty<Bytes>>;

/// A whole answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Answer {
    pub status: u16,
    /// The `x-worker-slot` header, if present and a number.
    pub slot: Option<u64>,
    /// The `x-worker-pid` header, if present and a number.
    pub pid: Option<u64>,
    /// The connection may carry another request: HTTP/1.1 without `Connection: close`.
    pub reusable: bool,
}

/// Why a request got no answer.
#[derive(Debug)]
pub(crate) enum SendError {
    /// The connection was closed before the request was written; here it is back.
    Unsent(Box<GetRequest>, Failure),
    /// The request was written (or being written) and failed.
    Failed(Failure),
}

/// An open connection. Dropping it closes the socket at once, whatever is in flight.
#[derive(Debug)]
pub(crate) struct Connection {
    sender: SendRequest<Empty<Bytes>>,
    /// Runs hyper's connection: writes requests, reads answers, and notices a close. Ends
    /// with the connection, with the error that ended it if any.
    driver: Option<JoinHandle<Result<(), hyper::Error>>>,
    /// Requests answered on it so far.
    pub answered: u64,
    /// The `x-worker-pid` of its latest answer that had one.
    pid: Option<u64>,
}

impl Connection {
    /// Connects to `target`, from `source` if given (bound before connecting).
    pub(crate) async fn open(
        target: SocketAddr,
        source: Option<Ipv4Addr>,
    ) -> Result<Self, Failure> {
        let from = source.map_or_else(String::new, |ip| format!(" from {ip}"));
        let stream = connect(target, source)
            .await
            .map_err(|err| Failure::io(&format!("connecting to {target}{from}"), &err))?;
        // No Nagle delay: a request is one write, and waiting for an ACK would add latency.
        stream
            .set_nodelay(true)
            .map_err(|err| Failure::io("setting TCP_NODELAY", &err))?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|err| Failure::hyper("starting the HTTP/1.1 connection", &err))?;
        let driver = tokio::spawn(connection);
        Ok(Self {
            sender,
            driver: Some(driver),
            answered: 0,
            pid: None,
        })
    }

    /// Sends `request` and reads its answer whole, body included.
    pub(crate) async fn send(&mut self, request: GetRequest) -> Result<Answer, SendError> {
        if self.sender.ready().await.is_err() {
            let failure = self.why_closed().await;
            return Err(SendError::Unsent(Box::new(request), failure));
        }
        let response = match self.sender.try_send_request(request).await {
            Ok(response) => response,
            Err(mut err) => {
                return Err(match err.take_message() {
                    Some(request) => SendError::Unsent(Box::new(request), self.why_closed().await),
                    None => {
                        SendError::Failed(Failure::hyper("waiting for the answer", err.error()))
                    }
                });
            }
        };
        let status = response.status().as_u16();
        let headers = response.headers();
        let answer = Answer {
            status,
            slot: number_header(headers, "x-worker-slot"),
            pid: number_header(headers, "x-worker-pid"),
            reusable: response.version() == Version::HTTP_11 && !asks_to_close(headers),
        };
        // Read the body to its end: hyper checks it against Content-Length or the chunked
        // framing, and reports one cut short.
        let mut body = response.into_body();
        while let Some(frame) = body.frame().await {
            frame.map_err(|err| SendError::Failed(Failure::hyper("reading the body", &err)))?;
        }
        self.answered += 1;
        self.pid = answer.pid.or(self.pid);
        Ok(answer)
    }

    /// The worker that answered on it, once it has answered: the one holding it kept alive
    /// (`pid` is only set by an answer).
    pub(crate) fn kept_by(&self) -> Option<u64> {
        self.pid
    }

    /// Why the connection closed before a request was sent on it: the error that ended it
    /// (a reset), or else the server closed it.
    async fn why_closed(&mut self) -> Failure {
        const DOING: &str = "the connection closed before the request was sent";
        // The connection has ended, so its driver has or is about to.
        let ended = match self.driver.take() {
            Some(driver) => driver.await.ok(),
            None => None,
        };
        match ended {
            Some(Err(err)) => Failure::hyper(DOING, &err),
            _ => Failure {
                class: ErrorClass::Truncated,
                detail: format!("{DOING}: the server closed it"),
            },
        }
    }

    /// Lets hyper finish the connection on its own (it closes after an answer to
    /// `Connection: close`) instead of closing the socket now.
    pub(crate) fn release(mut self) {
        self.driver.take();
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        if let Some(driver) = self.driver.take() {
            driver.abort();
        }
    }
}

async fn connect(target: SocketAddr, source: Option<Ipv4Addr>) -> std::io::Result<TcpStream> {
    let Some(source) = source else {
        return TcpStream::connect(target).await;
    };
    let socket = TcpSocket::new_v4()?;
    // The port is picked at connect time for the whole 4-tuple, not at bind time for the
    // address alone (ip(7), IP_BIND_ADDRESS_NO_PORT).
    setsockopt(&socket, IpBindAddressNoPort, &true).map_err(std::io::Error::from)?;
    socket.bind(SocketAddr::new(source.into(), 0))?;
    socket.connect(target).await
}

/// A `GET path` to `host`, keeping the connection open or asking the server to close it.
pub(crate) fn get(uri: hyper::Uri, host: &HeaderValue, keep_alive: bool) -> GetRequest {
    let mut request = Request::new(Empty::new());
    *request.uri_mut() = uri;
    let headers = request.headers_mut();
    headers.insert(hyper::header::HOST, host.clone());
    let connection = if keep_alive { "keep-alive" } else { "close" };
    headers.insert(CONNECTION, HeaderValue::from_static(connection));
    request
}

fn number_header(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

fn asks_to_close(headers: &HeaderMap) -> bool {
    headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("close"))
}
