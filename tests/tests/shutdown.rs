//! Graceful shutdown with requests in flight: on SIGTERM every request already sent completes
//! with a whole `200 OK` (the one a worker is busy with, and the one waiting behind it, in its
//! accept queue or accepted and not yet read), a keep-alive client in mid-stream gets complete answers up to one marked
//! `Connection: close` and then a clean end of stream (never a truncated answer or a request
//! left unanswered), and the supervisor exits 0 with every worker gone. A kept-alive connection
//! left idle while its worker drains is closed cleanly after the worker's idle grace.
//!
//! The long requests are `GET /work` sized at run time to about 1.5 s each (the demo worker burns
//! CPU on its only thread, so the speed depends on the build and the machine's load), and the
//! test checks that each one was answered after SIGTERM was sent, so it really was in flight.
//! The pool runs in a private network namespace, alone on its port.

use std::{
    collections::BTreeSet,
    io::{BufReader, Read as _},
    net::{SocketAddr, TcpStream},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use cluster_tests::{
    NetNs, all_gone, get,
    load::{self, Answer, read_answer},
    require_root,
};
use nix::unistd::Pid;

/// How long each long request should take.
const LONG_REQUEST: Duration = Duration::from_millis(1500);
/// Long requests sent before SIGTERM: two per worker, so that each worker has one in progress
/// and one in its accept queue.
const LONG_REQUESTS: usize = 4;
/// How long the keep-alive clients may run before a `Connection: close`: far above anything the
/// test waits for, so that only a hang trips it.
const IO_TIMEOUT: Duration = Duration::from_secs(60);

fn connect(addr: SocketAddr) -> BufReader<TcpStream> {
    load::connect(addr).expect("connect to the pool")
}

fn send(reader: &mut BufReader<TcpStream>, addr: SocketAddr, path: &str, connection: &str) {
    load::send(reader, addr, path, connection).expect("send the request");
}

/// `/work` iterations that take about `target` on this machine now, from one timed request.
fn iterations_for(addr: SocketAddr, target: Duration) -> u64 {
    const PROBE: u64 = 20_000_000;
    let started = Instant::now();
    let reply = get(addr, &format!("/work?iterations={PROBE}"), None).expect("probe request");
    assert_eq!(reply.status, 200, "{reply:?}");
    let took = started.elapsed().as_secs_f64().max(0.001);
    let scaled = (PROBE as f64 * target.as_secs_f64() / took) as u64;
    eprintln!("{PROBE} iterations took {took:.3} s: {scaled} iterations for {target:?}");
    scaled.clamp(PROBE, 10_000_000_000)
}

/// What a keep-alive client saw: its answers in order, and how it ended.
#[derive(Debug)]
struct KeepAliveRun {
    answers: Vec<Answer>,
    /// `None` when the last answer said `Connection: close` and the server then ended the
    /// stream cleanly; otherwise what went wrong.
    error: Option<String>,
}

/// A client that sends `GET /` on one kept-alive connection, one request after the other,
/// until an answer says `Connection: close` (then it expects the end of the stream) or something
/// fails. `answered` gets a message per answer.
fn keep_alive_client(addr: SocketAddr, answered: &mpsc::Sender<()>) -> KeepAliveRun {
    let deadline = Instant::now() + IO_TIMEOUT;
    let mut reader = connect(addr);
    let mut answers = Vec::new();
    let error = loop {
        if Instant::now() > deadline {
            break Some(format!("no `Connection: close` within {IO_TIMEOUT:?}"));
        }
        send(&mut reader, addr, "/", "keep-alive");
        match read_answer(&mut reader) {
            Ok(answer) => {
                let close = answer.close;
                answers.push(answer);
                let _ = answered.send(());
                if close {
                    let mut rest = Vec::new();
                    break match reader.read_to_end(&mut rest) {
                        Ok(_) if rest.is_empty() => None,
                        Ok(_) => Some(format!("{} bytes after `Connection: close`", rest.len())),
                        Err(e) => Some(format!("after `Connection: close`: {e}")),
                    };
                }
            }
            Err(e) => break Some(format!("request {}: {e}", answers.len() + 1)),
        }
    };
    KeepAliveRun { answers, error }
}

#[test]
fn sigterm_lets_every_request_in_flight_finish_and_exits_0() {
    require_root();
    NetNs::isolated(sigterm_lets_every_request_in_flight_finish_and_exits_0_in);
}

fn sigterm_lets_every_request_in_flight_finish_and_exits_0_in(ns: &NetNs) {
    // A shutdown timeout far above the ~3 s of work each worker has left, so that exit status
    // 0 means the workers drained, not that they raced a deadline.
    let cluster = ns.start_cluster(&["--workers", "2", "--shutdown-timeout", "60"]);
    let addr = cluster.addr();
    let workers: Vec<Pid> = (0..2)
        .map(|slot| cluster.started_pid(slot, 0).expect("worker pid"))
        .collect();
    let iterations = iterations_for(addr, LONG_REQUEST);

    // Two keep-alive clients (round-robin puts one on each worker), each in mid-stream.
    let (keep_alive, answers): (Vec<_>, Vec<_>) = (0..2)
        .map(|_| {
            let (answered, answers) = mpsc::channel();
            let client = thread::spawn(move || keep_alive_client(addr, &answered));
            (client, answers)
        })
        .unzip();
    for answers in &answers {
        for _ in 0..3 {
            answers
                .recv_timeout(IO_TIMEOUT)
                .expect("the keep-alive client is answered");
        }
    }

    // The long requests: connected and sent before SIGTERM, read after.
    let (sent, sent_all) = mpsc::channel();
    let long: Vec<_> = (0..LONG_REQUESTS)
        .map(|_| {
            let sent = sent.clone();
            let path = format!("/work?iterations={iterations}");
            thread::spawn(move || {
                let mut reader = connect(addr);
                send(&mut reader, addr, &path, "close");
                let _ = sent.send(());
                read_answer(&mut reader)
            })
        })
        .collect();
    for _ in 0..LONG_REQUESTS {
        sent_all.recv_timeout(IO_TIMEOUT).expect("requests sent");
    }

    let term_sent = Instant::now();
    let (status, log) = cluster.stop();
    let stopped_after = term_sent.elapsed();

    let long: Vec<Result<Answer, String>> = long.into_iter().map(|t| t.join().unwrap()).collect();
    let keep_alive: Vec<KeepAliveRun> = keep_alive.into_iter().map(|t| t.join().unwrap()).collect();
    eprintln!(
        "stopped {stopped_after:?} after SIGTERM; long requests answered after {:?}",
        long.iter()
            .map(|a| a
                .as_ref()
                .map(|a| a.at.saturating_duration_since(term_sent)))
            .collect::<Vec<_>>()
    );

    let mut long_pids = BTreeSet::new();
    for answer in &long {
        let answer = answer
            .as_ref()
            .unwrap_or_else(|e| panic!("a request in flight was lost: {e}\n{log}"));
        assert_eq!(answer.status, 200, "{answer:?}\n{log}");
        assert!(
            answer.at > term_sent,
            "answered before SIGTERM, so not in flight: size the requests up\n{log}"
        );
        long_pids.insert(answer.pid.expect("x-worker-pid"));
    }
    let expected: BTreeSet<i32> = workers.iter().map(|p| p.as_raw()).collect();
    assert!(
        long_pids.is_subset(&expected),
        "answered by {long_pids:?}, not this pool's workers {expected:?}\n{log}"
    );
    assert_eq!(long_pids, expected, "both workers had requests in flight");

    for run in &keep_alive {
        assert_eq!(run.error, None, "keep-alive client: {run:?}\n{log}");
        assert!(
            run.answers.iter().all(|a| a.status == 200),
            "{run:?}\n{log}"
        );
        let last = run.answers.last().expect("answers");
        assert!(
            last.close && last.at > term_sent,
            "the answer that ended the stream came after SIGTERM: {run:?}"
        );
        assert!(
            run.answers.iter().any(|a| a.at < term_sent),
            "the client was in mid-stream at SIGTERM: {run:?}"
        );
    }

    assert_eq!(status.code(), Some(0), "{status}\n{log}");
    assert!(log.contains("all workers stopped"), "{log}");
    assert!(!log.contains("killing it"), "{log}");
    assert!(
        all_gone(&workers, Duration::from_secs(5)),
        "workers left behind\n{log}"
    );
}

/// A kept-alive connection that stays idle while its worker drains is closed by the worker once
/// its idle grace (2 s) passes, cleanly (an end of stream, no half answer), and the worker then
/// exits by itself, far from `--drain-timeout` (120 s here), which would end it with SIGKILL.
#[test]
fn an_idle_kept_alive_connection_is_closed_when_its_worker_drains() {
    require_root();
    NetNs::isolated(an_idle_kept_alive_connection_is_closed_when_its_worker_drains_in);
}

fn an_idle_kept_alive_connection_is_closed_when_its_worker_drains_in(ns: &NetNs) {
    let cluster = ns.start_cluster(&["--workers", "1", "--drain-timeout", "120"]);
    let addr = cluster.addr();
    let old = cluster.started_pid(0, 0).expect("worker pid");
    let mut reader = connect(addr);
    send(&mut reader, addr, "/", "keep-alive");
    let answer = read_answer(&mut reader).expect("the first answer");
    assert!(!answer.close, "{answer:?}");
    let out = cluster.control(&["drain", "0"]);
    assert!(out.status.success(), "{out:?}");
    // Idle from here on: the draining worker closes the connection after its grace.
    reader
        .get_mut()
        .set_read_timeout(Some(IO_TIMEOUT))
        .expect("set a read timeout");
    let mut rest = Vec::new();
    let ended = reader.read_to_end(&mut rest);
    assert!(
        matches!(ended, Ok(0)),
        "wanted a clean end of stream: {ended:?}, {} bytes\n{}",
        rest.len(),
        cluster.log()
    );
    assert!(
        all_gone(&[old], Duration::from_secs(60)),
        "the drained worker {old} did not exit by itself\n{}",
        cluster.log()
    );
    let (status, log) = cluster.stop();
    assert!(status.success(), "{status}\n{log}");
}
