//! A draining worker whose socket still has queued connections when it closes: every one of
//! them is migrated by the kernel to a serving socket and answered there. The kernel's own
//! counters prove it: `TCPMigrateReqSuccess` grows by exactly the connections queued, and
//! `TCPMigrateReqFailure` (a queue reset for want of a target) does not move.
//!
//! The demo worker's own drain accepts whatever is queued before it closes its socket, so a
//! healthy worker never leaves a queue behind. What does is a worker that cannot drain: its only
//! thread is stuck, so it accepts nothing, and the supervisor ends it at the drain deadline.
//! Two such cases, each removing the worker a different way:
//!
//! - the demo worker stuck in `GET /work` (10^10 iterations, minutes of CPU) and replaced by a
//!   reload (SIGHUP): it ignores SIGTERM while it burns and is killed at `--drain-timeout`;
//! - a COMMAND (python3) blocked in `sleep` by one request, and scaled away (SIGTTOU): it gets
//!   SIGTERM at half of `--drain-timeout`, since its socket never drains, and dies of it.
//!
//! Each test runs in a private network namespace, so that the `TcpExt` counters of
//! `/proc/net/netstat` count this test's connections only, and so that the accept queues can
//! be read from `/proc/net/tcp` (`rx_queue` of a listening socket is its accept queue length).

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use cluster_tests::{
    Cluster, Failure, NetNs, PYTHON_SERVER, Reply, field, get, process_gone, require_root,
    socket_inodes, steering_stats,
};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

/// New connections sent once a worker is stuck; round-robin over two workers queues half.
const CONNECTIONS: usize = 10;
/// How long a condition may take to show on a saturated 2-core machine.
const TIMEOUT: Duration = Duration::from_secs(60);

/// A pool started with `ARGS` in a namespace of its own.
fn pool_in_namespace(args: &[&str]) -> (NetNs, Cluster) {
    let ns = NetNs::new();
    let cluster = ns.start_cluster(args);
    (ns, cluster)
}

/// How far `counter` moved between two readings.
fn moved(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>, counter: &str) -> u64 {
    let value = |map: &BTreeMap<String, u64>| {
        *map.get(counter)
            .unwrap_or_else(|| panic!("no {counter} in TcpExt: the kernel is too old"))
    };
    value(after) - value(before)
}

/// Socket inode → accept queue length, of every socket listening on `port` in the namespace:
/// `rx_queue` of a listening socket in `/proc/net/tcp` is its accept queue length.
fn accept_queues(ns: &NetNs, port: u16) -> BTreeMap<u64, u64> {
    let text = ns
        .run(|| std::fs::read_to_string("/proc/thread-self/net/tcp"))
        .expect("read /proc/net/tcp");
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let local_port = u16::from_str_radix(cols.get(1)?.rsplit(':').next()?, 16).ok()?;
            let listening = *cols.get(3)? == "0A";
            let rx = u64::from_str_radix(cols.get(4)?.split(':').nth(1)?, 16).ok()?;
            let inode = cols.get(9)?.parse().ok()?;
            (listening && local_port == port).then_some((inode, rx))
        })
        .collect()
}

/// CPU time a process has used, in clock ticks (utime + stime of /proc/PID/stat).
fn cpu_ticks(pid: Pid) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/PID/stat");
    let (_, rest) = stat.rsplit_once(')').expect("stat format");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state is field 3 of stat(5), utime 14 and stime 15.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// `count` new connections, each with `GET /`, from client threads inside the namespace.
fn send_requests(
    ns: &NetNs,
    addr: SocketAddr,
    count: usize,
) -> Vec<JoinHandle<Result<Reply, Failure>>> {
    ns.run(|| {
        (0..count)
            .map(|_| thread::spawn(move || get(addr, "/", None)))
            .collect()
    })
}

/// Waits until every one of `sent` connections is either answered or waiting in the accept
/// queue of one socket (the stuck worker's: the other worker has taken all of its own);
/// returns how many wait there. Nothing else may be queued on the port: then a connection
/// accepted and not yet answered cannot pass for a queued one.
fn wait_until_queued(
    ns: &NetNs,
    cluster: &Cluster,
    sent: &[JoinHandle<Result<Reply, Failure>>],
) -> u64 {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let answered = sent.iter().filter(|t| t.is_finished()).count() as u64;
        let queues = accept_queues(ns, cluster.addr().port());
        let waiting: u64 = queues.values().sum();
        let queues_in_use = queues.values().filter(|&&q| q > 0).count();
        if answered + waiting == sent.len() as u64 && queues_in_use <= 1 {
            return waiting;
        }
        assert!(
            Instant::now() < deadline,
            "of {} connections, {answered} answered and {queues:?} (socket inode: queue) in \
             accept queues: some were accepted and not answered\n{}",
            sent.len(),
            cluster.log()
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// Which worker holds each listening socket on `port`, with its accept queue, for a failure
/// message: (slot, pid, socket inode, queue).
fn queue_owners(ns: &NetNs, cluster: &Cluster, slots: u32) -> Vec<(u32, i32, u64, u64)> {
    let queues = accept_queues(ns, cluster.addr().port());
    let mut owners = Vec::new();
    for slot in 0..slots {
        for nth in 0.. {
            let Some(pid) = cluster.started_pid(slot, nth) else {
                break;
            };
            for inode in socket_inodes(pid) {
                if let Some(queue) = queues.get(&inode) {
                    owners.push((slot, pid.as_raw(), inode, *queue));
                }
            }
        }
    }
    owners
}

/// Every one of the `waiting` queued connections migrated, by the kernel's count and by the
/// program's, none was reset, and the pool stopped cleanly.
fn assert_all_migrated(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
    waiting: u64,
    status: std::process::ExitStatus,
    log: &str,
) {
    assert_eq!(
        moved(before, after, "TCPMigrateReqSuccess"),
        waiting,
        "every queued connection migrated\n{log}"
    );
    assert_eq!(
        moved(before, after, "TCPMigrateReqFailure"),
        0,
        "a queue was reset\n{log}"
    );
    let migrated: u64 = steering_stats(log).values().map(|(_, m)| m).sum();
    assert_eq!(migrated, waiting, "the program's migrated counters\n{log}");
    assert!(status.success(), "{status}\n{log}");
}

/// Joins the client threads; every one must have a `200 OK`. Returns the replies.
fn all_answered(cluster: &Cluster, sent: Vec<JoinHandle<Result<Reply, Failure>>>) -> Vec<Reply> {
    sent.into_iter()
        .map(|t| {
            let reply = t.join().unwrap().unwrap_or_else(|f| {
                panic!("a queued connection was lost: {f:?}\n{}", cluster.log())
            });
            assert_eq!(reply.status, 200, "{reply:?}");
            reply
        })
        .collect()
}

#[test]
fn a_stuck_worker_replaced_by_a_reload_has_its_queue_served_elsewhere() {
    require_root();
    let (ns, cluster) = pool_in_namespace(&["--workers", "2", "--drain-timeout", "3"]);
    let addr = cluster.addr();

    // One worker stuck for minutes: round-robin gives the next connection to the other one.
    let busy = ns.run(|| thread::spawn(move || get(addr, "/work?iterations=10000000000", None)));
    let idle = ns
        .run(|| get(addr, "/", None))
        .unwrap_or_else(|f| panic!("the idle worker answers: {f:?}\n{}", cluster.log()));
    let busy_slot = 1 - idle.slot.expect("x-worker-slot");
    let busy_pid = cluster
        .started_pid(busy_slot, 0)
        .expect("busy worker's pid");
    // Only once it burns CPU is it sure to have stopped accepting.
    let ticks = cpu_ticks(busy_pid);
    let deadline = Instant::now() + TIMEOUT;
    while cpu_ticks(busy_pid) < ticks + 30 {
        assert!(
            Instant::now() < deadline,
            "the busy worker does not burn CPU"
        );
        thread::sleep(Duration::from_millis(20));
    }

    let sent = send_requests(&ns, addr, CONNECTIONS);
    let waiting = wait_until_queued(&ns, &cluster, &sent);
    assert_eq!(
        waiting,
        (CONNECTIONS / 2) as u64,
        "round-robin queues every other connection behind the busy worker; (slot, pid, inode, \
         queue): {:?}\n{}",
        queue_owners(&ns, &cluster, 2),
        cluster.log()
    );
    let before = ns.tcp_ext();

    kill(cluster.pid(), Signal::SIGHUP).expect("signal the supervisor");
    let replies = all_answered(&cluster, sent);
    let finished = cluster.wait_for_log(TIMEOUT, |log| {
        assert!(!log.contains("reload failed"), "{log}");
        log.contains("reload finished").then_some(())
    });
    assert!(finished.is_some(), "{}", cluster.log());
    let deadline = Instant::now() + TIMEOUT;
    while !process_gone(busy_pid) {
        assert!(Instant::now() < deadline, "the stuck worker is still there");
        thread::sleep(Duration::from_millis(20));
    }
    let after = ns.tcp_ext();
    assert!(
        busy.join().unwrap().is_err(),
        "the stuck request died with its worker"
    );

    let (status, log) = cluster.stop();
    eprintln!(
        "queued {waiting}; TCPMigrateReqSuccess +{}, TCPMigrateReqFailure +{}; replies from {:?}",
        moved(&before, &after, "TCPMigrateReqSuccess"),
        moved(&before, &after, "TCPMigrateReqFailure"),
        replies.iter().map(|r| (r.slot, r.pid)).collect::<Vec<_>>()
    );
    let killed = log.lines().any(|l| {
        l.contains("did not finish draining in time")
            && field(l, "pid") == Some(&busy_pid.to_string())
    });
    assert!(
        killed,
        "the stuck worker was killed at its drain deadline\n{log}"
    );
    assert!(
        replies.iter().all(|r| r.pid != Some(busy_pid.as_raw())),
        "{replies:?}"
    );
    assert_all_migrated(&before, &after, waiting, status, &log);
}

#[test]
fn a_blocked_command_worker_scaled_away_has_its_queue_served_elsewhere() {
    require_root();
    let (ns, cluster) = pool_in_namespace(&[
        "--workers",
        "2",
        "--drain-timeout",
        "4",
        "--",
        "python3",
        "-c",
        PYTHON_SERVER,
        "block-slot=1",
    ]);
    let addr = cluster.addr();
    let blocked_pid = cluster.started_pid(1, 0).expect("slot 1's pid");

    // Two `/block` requests, one to each worker: slot 0 answers its own, slot 1 blocks. Both are
    // connected and sent before anything else, so slot 1 accepts its blocker first.
    let blockers: Vec<TcpStream> = ns.run(|| {
        (0..2)
            .map(|_| {
                let mut stream = TcpStream::connect(addr).expect("connect");
                stream
                    .set_read_timeout(Some(TIMEOUT))
                    .expect("read timeout");
                let request = format!("GET /block HTTP/1.1\r\nHost: {addr}\r\n\r\n");
                stream.write_all(request.as_bytes()).expect("send");
                stream
            })
            .collect()
    });
    let blockers: Vec<JoinHandle<Vec<u8>>> = blockers
        .into_iter()
        .map(|mut stream| {
            thread::spawn(move || {
                let mut answer = Vec::new();
                let _ = stream.read_to_end(&mut answer);
                answer
            })
        })
        .collect();
    // Slot 0 has answered its blocker, and slot 1 has taken its own off the queue (a python
    // worker may take a while to start on a busy machine): nothing is queued before the test's
    // connections.
    let deadline = Instant::now() + TIMEOUT;
    while !blockers.iter().any(JoinHandle::is_finished)
        || accept_queues(&ns, addr.port()).values().sum::<u64>() > 0
    {
        assert!(
            Instant::now() < deadline,
            "the blockers are not taken: finished {:?}, (slot, pid, inode, queue) {:?}\n{}",
            blockers
                .iter()
                .map(JoinHandle::is_finished)
                .collect::<Vec<_>>(),
            queue_owners(&ns, &cluster, 2),
            cluster.log()
        );
        thread::sleep(Duration::from_millis(20));
    }

    let sent = send_requests(&ns, addr, CONNECTIONS);
    let waiting = wait_until_queued(&ns, &cluster, &sent);
    assert_eq!(
        waiting,
        (CONNECTIONS / 2) as u64,
        "round-robin queues every other connection behind the blocked worker; (slot, pid, \
         inode, queue): {:?}; blockers finished: {:?}\n{}",
        queue_owners(&ns, &cluster, 2),
        blockers
            .iter()
            .map(JoinHandle::is_finished)
            .collect::<Vec<_>>(),
        cluster.log()
    );
    let before = ns.tcp_ext();

    kill(cluster.pid(), Signal::SIGTTOU).expect("signal the supervisor");
    let replies = all_answered(&cluster, sent);
    let exited = cluster.wait_for_log(TIMEOUT, |log| {
        log.lines()
            .any(|l| {
                l.contains("worker of a removed slot exited")
                    && field(l, "pid") == Some(&blocked_pid.to_string())
            })
            .then_some(())
    });
    assert!(exited.is_some(), "{}", cluster.log());
    let after = ns.tcp_ext();
    let blocker_answers: Vec<Vec<u8>> = blockers.into_iter().map(|t| t.join().unwrap()).collect();

    let (status, log) = cluster.stop();
    eprintln!(
        "queued {waiting}; TCPMigrateReqSuccess +{}, TCPMigrateReqFailure +{}; replies from {:?}",
        moved(&before, &after, "TCPMigrateReqSuccess"),
        moved(&before, &after, "TCPMigrateReqFailure"),
        replies.iter().map(|r| (r.slot, r.pid)).collect::<Vec<_>>()
    );
    assert_eq!(
        blocker_answers.iter().filter(|a| a.is_empty()).count(),
        1,
        "the blocked request died with its worker, the other was answered"
    );
    let half_drain = log.lines().any(|l| {
        l.contains("after half its drain time") && field(l, "pid") == Some(&blocked_pid.to_string())
    });
    assert!(
        half_drain,
        "the blocked worker got SIGTERM at half its drain time\n{log}"
    );
    assert!(
        replies.iter().all(|r| r.slot == Some(0)),
        "slot 0 serves everything once slot 1 is gone: {replies:?}"
    );
    assert_all_migrated(&before, &after, waiting, status, &log);
}
