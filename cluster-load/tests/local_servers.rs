//! The generator against real HTTP servers started inside each test on 127.0.0.1:0, one per
//! behaviour: answering (Content-Length or chunked), resetting, never answering, answering 503,
//! closing mid-answer, closing kept-alive connections while idle; and a port with no listener.
//!
//! Runs are open loop (a fixed rate for a fixed time), so each one sends a known number of
//! requests whatever the machine's speed, and every count below is exact. Server and clients
//! share the test's single-threaded runtime: a server's answer and its close run without the
//! client in between.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use cluster_load::{Config, ConnectionMode, ErrorClass, PathMix, Report, Target};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};

/// Requests a run sends: 50 per second for 0.19 s, due at 0, 20, … 180 ms.
const REQUESTS: u64 = 10;

/// What a test server does with each connection (`n`: its accept order, from 0).
#[derive(Debug, Clone, Copy)]
enum Behaviour {
    /// Answers every request 200 with a `Content-Length` body, naming slot `n % 2` and pid
    /// `1000 + n % 2`; closes when the request asks to.
    Answer,
    /// As `Answer`, with a chunked body.
    AnswerChunked,
    /// Answers each connection's first request, then closes it at once without saying so.
    AnswerThenClose,
    /// Answers each connection's first request, then reads the next one and resets.
    AnswerThenReset,
    /// Answers each request with `Connection: close`, then closes.
    AnswerAndSayClose,
    /// Reads the request, then resets the connection (`SO_LINGER` 0, then close).
    Reset,
    /// Reads the request and never answers.
    Silent,
    /// Answers 503 with an empty body.
    Unavailable,
    /// Announces a 100-byte body, sends 9 bytes, and closes.
    ShortBody,
    /// Sends half a status line's headers, and closes.
    ShortHead,
    /// Closes after reading the request, answering nothing.
    NoAnswer,
    /// A chunked body cut in its second chunk.
    ShortChunk,
    /// Closes each connection as soon as it is accepted, reading nothing.
    CloseAtOnce,
}

/// A server on 127.0.0.1:0 and the source addresses of the connections it accepted.
struct Server {
    addr: SocketAddr,
    peers: Arc<Mutex<Vec<Ipv4Addr>>>,
}

async fn serve(behaviour: Behaviour) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let peers = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&peers);
    tokio::spawn(async move {
        for n in 0u32.. {
            let (stream, peer) = listener.accept().await.unwrap();
            if let SocketAddr::V4(peer) = peer {
                seen.lock().unwrap().push(*peer.ip());
            }
            tokio::spawn(connection(stream, n, behaviour));
        }
    });
    Server { addr, peers }
}

async fn connection(mut stream: TcpStream, n: u32, behaviour: Behaviour) {
    if let Behaviour::CloseAtOnce = behaviour {
        return;
    }
    for answered in 0u32.. {
        let Some(request) = read_request(&mut stream).await else {
            return;
        };
        if let (Behaviour::AnswerThenReset, 1..) = (behaviour, answered) {
            stream.set_zero_linger().unwrap();
            return;
        }
        let asks_close = request.to_ascii_lowercase().contains("connection: close");
        let slot = n % 2;
        let named = format!("x-worker-slot: {slot}\r\nx-worker-pid: {}\r\n", 1000 + slot);
        let answer = match behaviour {
            Behaviour::Answer | Behaviour::AnswerThenClose | Behaviour::AnswerThenReset => {
                format!("HTTP/1.1 200 OK\r\n{named}content-length: 2\r\n\r\nok")
            }
            Behaviour::AnswerChunked => format!(
                "HTTP/1.1 200 OK\r\n{named}transfer-encoding: chunked\r\n\r\n2\r\nok\r\n3\r\n!!!\r\n0\r\n\r\n"
            ),
            Behaviour::AnswerAndSayClose => {
                format!(
                    "HTTP/1.1 200 OK\r\n{named}connection: close\r\ncontent-length: 2\r\n\r\nok"
                )
            }
            Behaviour::Reset => {
                // With a zero linger time, close sends RST instead of FIN (socket(7)).
                stream.set_zero_linger().unwrap();
                return;
            }
            Behaviour::Silent => {
                tokio::time::sleep(Duration::from_secs(600)).await;
                return;
            }
            Behaviour::Unavailable => {
                "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n".to_owned()
            }
            Behaviour::ShortBody => {
                "HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly part".to_owned()
            }
            Behaviour::ShortHead => "HTTP/1.1 200 OK\r\ncontent-le".to_owned(),
            Behaviour::NoAnswer | Behaviour::CloseAtOnce => String::new(),
            Behaviour::ShortChunk => {
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n9\r\nonly"
                    .to_owned()
            }
        };
        if stream.write_all(answer.as_bytes()).await.is_err() {
            return;
        }
        let keep_open = matches!(
            behaviour,
            Behaviour::Answer | Behaviour::AnswerChunked | Behaviour::AnswerThenReset
        );
        if asks_close || !keep_open {
            // Every byte of the request was read, so this close sends FIN, not RST.
            drop(stream.shutdown().await);
            return;
        }
    }
}

/// Reads one request head (a `GET` has no body); `None` at the end of the stream.
async fn read_request(stream: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await.ok()? == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    String::from_utf8(head).ok()
}

/// A run of [`REQUESTS`] requests to `addr` in `mode`, two clients, with a timeout of `timeout`.
async fn run(addr: SocketAddr, mode: ConnectionMode, timeout: Duration) -> Report {
    let mut config = Config::new(Target::from_addr(addr));
    config.mode = mode;
    config.concurrency = 2;
    config.rate = Some(50.0);
    config.duration = Duration::from_millis(190);
    config.timeout = timeout;
    cluster_load::run(config).await.unwrap()
}

/// Asserts that every request of `report` failed, all as `class`.
fn all_failed_as(report: &Report, class: ErrorClass) {
    assert_eq!(report.ok, 0, "{report:#?}");
    assert_eq!(report.failed, REQUESTS, "{report:#?}");
    assert_eq!(report.errors.count(class), REQUESTS, "{report:#?}");
    assert_eq!(report.latency.count, 0, "{report:#?}");
    assert!(!report.failure_samples.is_empty(), "{report:#?}");
}

const MODES: [ConnectionMode; 2] = [ConnectionMode::PerRequest, ConnectionMode::KeepAlive];
const TIMEOUT: Duration = Duration::from_secs(20);

#[tokio::test]
async fn answers_are_counted_with_their_workers() {
    for behaviour in [Behaviour::Answer, Behaviour::AnswerChunked] {
        let server = serve(behaviour).await;
        let report = run(server.addr, ConnectionMode::PerRequest, TIMEOUT).await;
        assert_eq!((report.ok, report.failed), (REQUESTS, 0), "{report:#?}");
        assert_eq!(report.connections, REQUESTS, "{report:#?}");
        assert_eq!(report.latency.count, REQUESTS);
        // Connection n names slot n % 2: an even share.
        assert_eq!(report.by_slot.counts, BTreeMap::from([(0, 5), (1, 5)]));
        assert_eq!(report.by_pid.counts, BTreeMap::from([(1000, 5), (1001, 5)]));
        assert_eq!(report.by_slot.cv, Some(0.0));
        assert_eq!(report.by_slot.max_over_min, Some(1.0));
        assert!(report.requests_per_second > 0.0);
    }
}

#[tokio::test]
async fn the_live_counters_name_a_worker_that_answered() {
    let server = serve(Behaviour::Answer).await;
    let mut config = Config::new(Target::from_addr(server.addr));
    config.rate = Some(50.0);
    config.duration = Duration::from_millis(190);
    let running = cluster_load::start(config).unwrap();
    let live = running.live();
    assert_eq!(live.last_pid(), None, "nothing answered yet");
    let report = running.finish().await.unwrap();
    assert_eq!((live.ok(), live.failed()), (REQUESTS, 0), "{report:#?}");
    let pid = live.last_pid().expect("an answer named its pid");
    assert!([1000, 1001].contains(&pid), "{pid}");
}

#[tokio::test]
async fn keep_alive_uses_one_connection_per_client() {
    let server = serve(Behaviour::Answer).await;
    let report = run(server.addr, ConnectionMode::KeepAlive, TIMEOUT).await;
    assert_eq!((report.ok, report.failed), (REQUESTS, 0), "{report:#?}");
    assert_eq!(report.connections, 2, "{report:#?}");
    assert_eq!(report.errors.idle_closed, 0, "{report:#?}");
}

#[tokio::test]
async fn a_refused_connection_is_refused() {
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = free.local_addr().unwrap();
    drop(free);
    for mode in MODES {
        all_failed_as(&run(addr, mode, TIMEOUT).await, ErrorClass::Refused);
    }
}

#[tokio::test]
async fn a_reset_is_reset() {
    let server = serve(Behaviour::Reset).await;
    for mode in MODES {
        let report = run(server.addr, mode, TIMEOUT).await;
        all_failed_as(&report, ErrorClass::Reset);
        // Every request failed on a new connection: none had been answered on.
        assert!(report.kept_alive_failures.is_empty(), "{report:#?}");
    }
}

#[tokio::test]
async fn a_failure_on_a_kept_alive_connection_names_the_worker_that_held_it() {
    let server = serve(Behaviour::AnswerThenReset).await;
    let report = run(server.addr, ConnectionMode::KeepAlive, TIMEOUT).await;
    // Each connection answers its first request and resets on the second, so the requests
    // alternate between succeeding on a new connection and failing on a kept one.
    assert!(report.failed >= 2, "{report:#?}");
    assert_eq!(report.errors.reset, report.failed, "{report:#?}");
    assert_eq!(report.ok + report.failed, REQUESTS, "{report:#?}");
    let failures = &report.kept_alive_failures;
    assert_eq!(failures.len() as u64, report.failed, "{report:#?}");
    for failure in failures {
        assert!([1000, 1001].contains(&failure.pid), "{report:#?}");
        assert!(
            failure.sent_seconds <= report.elapsed_seconds,
            "{report:#?}"
        );
    }
    assert!(
        failures.is_sorted_by(|a, b| a.sent_seconds <= b.sent_seconds),
        "{report:#?}"
    );
    // A new connection per request: only first requests, every one answered.
    let report = run(server.addr, ConnectionMode::PerRequest, TIMEOUT).await;
    assert_eq!((report.ok, report.failed), (REQUESTS, 0), "{report:#?}");
    assert!(report.kept_alive_failures.is_empty(), "{report:#?}");
}

#[tokio::test]
async fn no_answer_within_the_timeout_is_a_timeout() {
    let server = serve(Behaviour::Silent).await;
    for mode in MODES {
        let report = run(server.addr, mode, Duration::from_millis(100)).await;
        all_failed_as(&report, ErrorClass::Timeout);
    }
}

#[tokio::test]
async fn a_non_2xx_answer_is_a_bad_status() {
    let server = serve(Behaviour::Unavailable).await;
    for mode in MODES {
        let report = run(server.addr, mode, TIMEOUT).await;
        all_failed_as(&report, ErrorClass::BadStatus);
        assert_eq!(report.errors.statuses, BTreeMap::from([(503, REQUESTS)]));
    }
}

#[tokio::test]
async fn a_connection_closed_before_the_whole_answer_is_truncated() {
    for behaviour in [
        Behaviour::ShortBody,
        Behaviour::ShortHead,
        Behaviour::NoAnswer,
        Behaviour::ShortChunk,
    ] {
        let server = serve(behaviour).await;
        for mode in MODES {
            let report = run(server.addr, mode, TIMEOUT).await;
            assert_eq!(
                report.errors.truncated, REQUESTS,
                "{behaviour:?}: {report:#?}"
            );
            all_failed_as(&report, ErrorClass::Truncated);
        }
    }
}

#[tokio::test]
async fn a_connection_closed_before_the_request_fails_as_truncated_or_reset() {
    let server = serve(Behaviour::CloseAtOnce).await;
    for mode in MODES {
        let report = run(server.addr, mode, TIMEOUT).await;
        // FIN if the close came before the request arrived, RST (the request hit a closed
        // socket) if after: which one depends on who ran first.
        assert_eq!(report.failed, REQUESTS, "{report:#?}");
        assert_eq!(
            report.errors.truncated + report.errors.reset,
            REQUESTS,
            "{report:#?}"
        );
    }
}

#[tokio::test]
async fn kept_alive_connections_closed_while_idle_are_counted_apart() {
    let server = serve(Behaviour::AnswerThenClose).await;
    let report = run(server.addr, ConnectionMode::KeepAlive, TIMEOUT).await;
    // Each connection answers one request and is closed before the next is due; that request
    // finds it closed and goes out on a new connection. No request fails.
    assert_eq!((report.ok, report.failed), (REQUESTS, 0), "{report:#?}");
    assert_eq!(report.connections, REQUESTS, "{report:#?}");
    // Two clients: the first request of each found no connection to reuse.
    assert_eq!(report.errors.idle_closed, REQUESTS - 2, "{report:#?}");
}

#[tokio::test]
async fn a_close_the_server_announces_is_not_an_idle_close() {
    let server = serve(Behaviour::AnswerAndSayClose).await;
    let report = run(server.addr, ConnectionMode::KeepAlive, TIMEOUT).await;
    assert_eq!((report.ok, report.failed), (REQUESTS, 0), "{report:#?}");
    assert_eq!(report.connections, REQUESTS, "{report:#?}");
    assert_eq!(report.errors.idle_closed, 0, "{report:#?}");
}

#[tokio::test]
async fn spread_sources_bind_each_connection_to_the_next_address() {
    let server = serve(Behaviour::Answer).await;
    let mut config = Config::new(Target::from_addr(server.addr));
    config.spread_sources = Some(4);
    config.rate = Some(50.0);
    config.duration = Duration::from_millis(190);
    let report = cluster_load::run(config).await.unwrap();
    assert_eq!((report.ok, report.failed), (REQUESTS, 0), "{report:#?}");
    let peers = server.peers.lock().unwrap().clone();
    let expected: Vec<Ipv4Addr> = (0..REQUESTS)
        .map(|n| Ipv4Addr::new(127, 0, 0, 1 + u8::try_from(n % 4).unwrap()))
        .collect();
    assert_eq!(peers, expected);
}

#[tokio::test]
async fn a_mix_requests_only_its_paths() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let paths = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&paths);
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            let request = read_request(&mut stream).await.unwrap();
            let path = request.split(' ').nth(1).unwrap().to_owned();
            seen.lock().unwrap().push(path);
            let answer = "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
            stream.write_all(answer.as_bytes()).await.unwrap();
        }
    });
    let mut config = Config::new(Target::from_addr(addr));
    config.paths = PathMix::parse("3:/work?iterations=1,1:/other").unwrap();
    config.rate = Some(50.0);
    config.duration = Duration::from_millis(190);
    let report = cluster_load::run(config).await.unwrap();
    assert_eq!((report.ok, report.failed), (REQUESTS, 0), "{report:#?}");
    assert_eq!(report.by_slot.without_header, REQUESTS);
    let paths = paths.lock().unwrap().clone();
    assert_eq!(paths.len(), 10);
    assert!(
        paths
            .iter()
            .all(|p| p == "/work?iterations=1" || p == "/other"),
        "{paths:?}"
    );
}

/// A run of [`REQUESTS`] with a timeline of 100 ms buckets: requests due at 0 to 80 ms in the
/// first, 100 to 180 ms in the second (each counted by when it was due, however late its client).
async fn run_with_timeline(addr: SocketAddr, timeout: Duration) -> Report {
    let mut config = Config::new(Target::from_addr(addr));
    config.concurrency = 2;
    config.rate = Some(50.0);
    config.duration = Duration::from_millis(190);
    config.timeout = timeout;
    config.timeline = Some(Duration::from_millis(100));
    cluster_load::run(config).await.unwrap()
}

#[tokio::test]
async fn the_timeline_buckets_requests_by_when_they_were_sent() {
    let server = serve(Behaviour::Answer).await;
    let report = run_with_timeline(server.addr, TIMEOUT).await;
    let timeline = report.timeline.expect("a timeline was asked for");
    assert_eq!(timeline.bucket_seconds, 0.1);
    assert_eq!(timeline.ok, [5, 5], "{timeline:?}");
    assert_eq!(timeline.failed, [0, 0], "{timeline:?}");
    for bucket in 0..2 {
        let (p50, p99, max) = (
            timeline.p50_us[bucket],
            timeline.p99_us[bucket],
            timeline.max_us[bucket],
        );
        assert!(0 < p50 && p50 <= p99 && p99 <= max, "{timeline:?}");
        // Within the histograms' precision of the whole run's maximum.
        assert!(max <= report.latency.max_us * 101 / 100, "{timeline:?}");
    }

    let silent = serve(Behaviour::Silent).await;
    let report = run_with_timeline(silent.addr, Duration::from_millis(100)).await;
    let timeline = report.timeline.unwrap();
    assert_eq!(timeline.ok, [0, 0], "{timeline:?}");
    assert_eq!(timeline.failed, [5, 5], "{timeline:?}");
    assert_eq!(timeline.p99_us, [0, 0], "{timeline:?}");
}

#[tokio::test]
async fn the_report_serializes_with_documented_fields() {
    let server = serve(Behaviour::Answer).await;
    let report = run(server.addr, ConnectionMode::PerRequest, TIMEOUT).await;
    let json = serde_json::to_value(&report).unwrap();
    for field in [
        "requests_per_second",
        "requests",
        "ok",
        "failed",
        "elapsed_seconds",
    ] {
        assert!(json[field].is_number(), "{field}: {json}");
    }
    for field in ["p50_us", "p90_us", "p99_us", "p999_us"] {
        assert!(json["latency"][field].is_u64(), "{field}: {json}");
    }
    for field in [
        "refused",
        "reset",
        "timeout",
        "bad_status",
        "truncated",
        "other",
        "idle_closed",
    ] {
        assert_eq!(json["errors"][field], 0, "{field}: {json}");
    }
    assert_eq!(json["by_slot"]["counts"]["0"], 5, "{json}");
    assert_eq!(json["mode"], "per-request");
    assert!(json.get("timeline").is_none(), "not asked for: {json}");
    assert!(
        json.get("kept_alive_failures").is_none(),
        "none failed: {json}"
    );
    let mut table = Vec::new();
    report.write_table(&mut table).unwrap();
    assert!(!table.is_empty());
}
