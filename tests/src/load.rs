//! A load generator for the lifecycle tests: client threads that send `GET` requests without
//! pause, each on a new connection or on kept-alive connections (as wrk does), and count every
//! answer by the worker pid that gave it and every failure by what went wrong.
//!
//! On a kept-alive connection, a response with `Connection: close` ends the connection and the
//! next request opens a new one, as HTTP/1.1 clients do. A request that a reused connection
//! answers with nothing (closed or reset under it) is a failure: that is the request a server
//! loses when it closes an idle keep-alive connection as the client sends on it.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

/// Socket timeouts: a request that takes longer counts as failed.
const IO_TIMEOUT: Duration = Duration::from_secs(20);
/// Failures kept word for word in the tally (the rest are only counted).
const FAILURES_KEPT: usize = 20;

/// How a client uses connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reuse {
    /// One request per connection (`Connection: close`): every request is a new SYN.
    NewConnection,
    /// Requests follow each other on one connection until the server closes it.
    KeepAlive,
}

/// What the clients saw.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tally {
    /// Requests answered `200 OK`, complete.
    pub ok: u64,
    /// Of those, how many each worker pid answered.
    pub by_pid: BTreeMap<i32, u64>,
    /// Requests that failed, in all.
    pub failed: u64,
    /// The first few failures, described.
    pub failures: Vec<String>,
}

impl Tally {
    fn merge(&mut self, other: Self) {
        self.ok += other.ok;
        for (pid, n) in other.by_pid {
            *self.by_pid.entry(pid).or_insert(0) += n;
        }
        self.failed += other.failed;
        for failure in other.failures {
            if self.failures.len() < FAILURES_KEPT {
                self.failures.push(failure);
            }
        }
    }

    fn fail(&mut self, what: String) {
        self.failed += 1;
        if self.failures.len() < FAILURES_KEPT {
            self.failures.push(what);
        }
    }
}

/// Running clients; [`Load::stop`] ends them and returns what they saw.
#[derive(Debug)]
pub struct Load {
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
    clients: Vec<JoinHandle<Tally>>,
}

impl Load {
    /// Starts `clients` threads sending `GET path` to `addr`.
    #[must_use]
    pub fn start(addr: SocketAddr, path: &str, clients: usize, reuse: Reuse) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicU64::new(0));
        let clients = (0..clients)
            .map(|_| {
                let (stop, answered, path) =
                    (Arc::clone(&stop), Arc::clone(&answered), path.to_owned());
                thread::spawn(move || client(addr, &path, reuse, &stop, &answered))
            })
            .collect();
        Self {
            stop,
            answered,
            clients,
        }
    }

    /// Requests answered so far, by all clients.
    #[must_use]
    pub fn answered(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
    }

    /// Waits until `more` further requests were answered (or `timeout` passed); returns whether
    /// they were.
    pub fn wait_for_answers(&self, more: u64, timeout: Duration) -> bool {
        let target = self.answered() + more;
        let deadline = std::time::Instant::now() + timeout;
        while self.answered() < target {
            if std::time::Instant::now() > deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(10));
        }
        true
    }

    /// Stops the clients (each finishes its request in flight) and adds up what they saw.
    #[must_use]
    pub fn stop(self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        let mut tally = Tally::default();
        for client in self.clients {
            tally.merge(client.join().expect("load client thread"));
        }
        tally
    }
}

fn client(
    addr: SocketAddr,
    path: &str,
    reuse: Reuse,
    stop: &AtomicBool,
    answered: &AtomicU64,
) -> Tally {
    let mut tally = Tally::default();
    let mut connection: Option<(BufReader<TcpStream>, u64)> = None;
    while !stop.load(Ordering::Relaxed) {
        let (mut reader, served) = match connection.take() {
            Some(open) => open,
            None => match connect(addr) {
                Ok(reader) => (reader, 0),
                Err(err) => {
                    tally.fail(format!("connect: {err}"));
                    continue;
                }
            },
        };
        match request(&mut reader, addr, path, reuse) {
            Ok((pid, close)) => {
                tally.ok += 1;
                answered.fetch_add(1, Ordering::Relaxed);
                *tally.by_pid.entry(pid).or_insert(0) += 1;
                if reuse == Reuse::KeepAlive && !close {
                    connection = Some((reader, served + 1));
                }
            }
            Err(err) => tally.fail(format!("{err} (request {} on its connection)", served + 1)),
        }
    }
    tally
}

/// A client connection with the test's timeouts and no Nagle delay.
pub fn connect(addr: SocketAddr) -> std::io::Result<BufReader<TcpStream>> {
    let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    stream.set_nodelay(true)?;
    Ok(BufReader::new(stream))
}

/// One complete HTTP/1.1 answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub pid: Option<i32>,
    /// The server closes the connection after it (`Connection: close`).
    pub close: bool,
    /// When its last byte was read.
    pub at: Instant,
}

/// Sends `GET path` with `Connection: connection` (`close` or `keep-alive`).
pub fn send(
    reader: &mut BufReader<TcpStream>,
    addr: SocketAddr,
    path: &str,
    connection: &str,
) -> Result<(), String> {
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: {connection}\r\n\r\n");
    reader
        .get_mut()
        .write_all(request.as_bytes())
        .map_err(|e| format!("sending: {e}"))
}

/// Reads one whole answer: status line, headers, and a body of exactly `Content-Length` bytes.
/// Anything less (end of stream or reset before the last byte) is an error saying where.
pub fn read_answer(reader: &mut BufReader<TcpStream>) -> Result<Answer, String> {
    let mut status_line = String::new();
    match reader.read_line(&mut status_line) {
        Ok(0) => return Err("connection closed with no answer".to_owned()),
        Ok(_) => {}
        Err(e) => return Err(format!("reading the answer: {e}")),
    }
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let (mut length, mut pid, mut close) = (None, None, false);
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) => return Err("connection closed in the headers".to_owned()),
            Ok(_) => {}
            Err(e) => return Err(format!("reading headers: {e}")),
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(format!("bad header line {line:?}"));
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => length = value.parse::<usize>().ok(),
            "x-worker-pid" => pid = value.parse::<i32>().ok(),
            "connection" => close = value.eq_ignore_ascii_case("close"),
            _ => {}
        }
    }
    let length = length.ok_or("no content-length")?;
    let mut body = vec![0; length];
    reader
        .read_exact(&mut body)
        .map_err(|e| format!("truncated body ({length} bytes announced): {e}"))?;
    Ok(Answer {
        status,
        pid,
        close,
        at: Instant::now(),
    })
}

/// Sends one request and reads its whole answer, which must be a `200 OK` naming its worker.
fn request(
    reader: &mut BufReader<TcpStream>,
    addr: SocketAddr,
    path: &str,
    reuse: Reuse,
) -> Result<(i32, bool), String> {
    let connection = match reuse {
        Reuse::NewConnection => "close",
        Reuse::KeepAlive => "keep-alive",
    };
    send(reader, addr, path, connection)?;
    let answer = read_answer(reader)?;
    if answer.status != 200 {
        return Err(format!("status {}", answer.status));
    }
    Ok((answer.pid.ok_or("no x-worker-pid")?, answer.close))
}
