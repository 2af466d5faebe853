//! A worker killed with SIGKILL: its slot leaves the selection, a new worker serves in it, no
//! connection is refused, and none fails except ones that worker had already accepted, at most
//! one per client; connections
//! still queued on its socket are migrated by the kernel to the other workers. With no worker
//! serving at all, a connection waits until one does, even through a starting worker that is
//! killed.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use cluster_tests::{
    Cluster, Failure, PYTHON_SERVER, cluster_command, free_local_addr, get, require_root,
    steering_stats,
};
use nix::sys::signal::{Signal, kill};

const CLIENTS: usize = 4;

#[derive(Debug, Default)]
struct Outcomes {
    ok: AtomicUsize,
    refused: AtomicUsize,
    reset: AtomicUsize,
    other: AtomicUsize,
}

#[test]
fn killed_worker_is_replaced_and_costs_only_what_it_had_accepted() {
    require_root();
    let cluster = Cluster::start(&["--workers", "2", "--steering", "round-robin"]);
    let addr = cluster.addr();
    let victim = cluster.started_pid(0, 0).expect("slot 0 pid");

    let stop = Arc::new(AtomicBool::new(false));
    let outcomes = Arc::new(Outcomes::default());
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (stop, outcomes) = (Arc::clone(&stop), Arc::clone(&outcomes));
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let counter = match get(addr, "/", None) {
                        Ok(reply) if reply.status == 200 => &outcomes.ok,
                        Ok(_) | Err(Failure::Other) => &outcomes.other,
                        Err(Failure::Refused) => &outcomes.refused,
                        Err(Failure::Reset) => &outcomes.reset,
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();

    thread::sleep(Duration::from_millis(500));
    let killed_at = Instant::now();
    kill(victim, Signal::SIGKILL).unwrap();

    // The replacement answers in slot 0 with a new pid (how fast is the bench's to measure).
    let mut replacement = None;
    while killed_at.elapsed() < Duration::from_secs(60) {
        if let Ok(reply) = get(addr, "/", None)
            && reply.slot == Some(0)
            && reply.pid != Some(victim.as_raw())
        {
            replacement = reply.pid;
            break;
        }
    }
    let took = killed_at.elapsed();
    thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.join().unwrap();
    }

    let log = cluster.log();
    eprintln!("after SIGKILL: replacement served after {took:?}; {outcomes:?}");
    assert!(
        replacement.is_some(),
        "no new worker served slot 0 within 60 s\n{log}"
    );
    let ok = outcomes.ok.load(Ordering::Relaxed);
    let refused = outcomes.refused.load(Ordering::Relaxed);
    let lost = outcomes.reset.load(Ordering::Relaxed) + outcomes.other.load(Ordering::Relaxed);
    assert!(ok > 100, "too little load to prove anything: {outcomes:?}");
    // The other worker and the parking socket stay in the group, so nothing is ever refused; a
    // regression that emptied the group (or reset the killed socket's queue) would show here.
    assert_eq!(refused, 0, "connections were refused: {outcomes:?}\n{log}");
    // Only connections the killed worker had accepted may fail: at most one per client, since
    // each has one request in flight.
    assert!(
        lost <= CLIENTS,
        "{lost} connections lost: {outcomes:?}\n{log}"
    );
    let (status, _) = cluster.stop();
    assert!(status.success());
}

#[test]
fn connections_queued_on_a_killed_worker_are_migrated() {
    require_root();
    let cluster = Cluster::start(&["--workers", "2", "--steering", "round-robin"]);
    let addr = cluster.addr();

    // Make one worker busy: while it burns CPU it accepts nothing, so what is steered to it
    // waits in its socket's accept queue.
    let busy = thread::spawn(move || get(addr, "/work?iterations=10000000000", None));
    thread::sleep(Duration::from_millis(200));
    let idle_slot = get(addr, "/", None)
        .expect("the idle worker answers")
        .slot
        .unwrap();
    let busy_slot = 1 - idle_slot;
    let busy_pid = cluster.started_pid(busy_slot, 0).unwrap();

    // Ten connections: round-robin puts five behind the busy worker.
    const QUEUED: usize = 10;
    let connected = Arc::new(AtomicUsize::new(0));
    let waiting: Vec<_> = (0..QUEUED)
        .map(|_| {
            let connected = Arc::clone(&connected);
            thread::spawn(move || {
                let reply = get(addr, "/", None);
                connected.fetch_add(1, Ordering::Relaxed);
                reply
            })
        })
        .collect();
    // Let every handshake finish (the kernel completes them; the busy worker accepts nothing).
    thread::sleep(Duration::from_millis(500));
    let answered_before_kill = connected.load(Ordering::Relaxed);
    kill(busy_pid, Signal::SIGKILL).unwrap();

    let replies: Vec<_> = waiting.into_iter().map(|t| t.join().unwrap()).collect();
    for reply in &replies {
        let reply = reply
            .as_ref()
            .unwrap_or_else(|f| panic!("a queued connection was lost: {f:?}\n{}", cluster.log()));
        assert_eq!(reply.status, 200);
    }
    assert!(
        busy.join().unwrap().is_err(),
        "the busy request died with its worker"
    );
    assert_eq!(
        answered_before_kill,
        QUEUED / 2,
        "half the connections should have waited"
    );

    let (status, log) = cluster.stop();
    assert!(status.success(), "{log}");
    let migrated: u64 = steering_stats(&log).values().map(|(_, m)| m).sum();
    assert_eq!(
        migrated,
        (QUEUED / 2) as u64,
        "the kernel should have migrated the queued connections\n{log}"
    );
}

/// One slot. Its first worker never accepts and never reports ready, and is killed at the 1 s
/// ready timeout; the second serves and reports ready. A client that connects before either has
/// served waits (on the starting socket or the supervisor's parking socket; what is queued on
/// the first worker's socket migrates when it closes) and is answered by the second.
#[test]
fn with_no_worker_serving_a_connection_waits_for_one() {
    require_root();
    let marker = std::env::temp_dir().join(format!("cluster-test-started-{}", std::process::id()));
    let _ = std::fs::remove_file(&marker);
    let script =
        "if [ -e \"$1\" ]; then exec python3 -c \"$0\" notify; fi; touch \"$1\"; exec sleep 60";
    let addr = free_local_addr();
    let mut command = cluster_command(&["run", "--listen", &addr.to_string(), "--workers", "1"]);
    command
        .args(["--wait-ready", "--ready-timeout", "1"])
        .args(["--", "sh", "-c", script, PYTHON_SERVER])
        .arg(&marker);
    let cluster = Cluster::spawn_command(command);
    let started = cluster.wait_for_log(Duration::from_secs(10), |_| cluster.started_pid(0, 0));
    assert!(started.is_some(), "{}", cluster.log());
    let reply = get(addr, "/", None);
    let log = cluster.log();
    let _ = std::fs::remove_file(&marker);
    assert!(
        log.contains("did not report READY=1 in time"),
        "the first worker was not killed at its ready timeout:\n{log}"
    );
    let reply = reply.unwrap_or_else(|f| panic!("the waiting connection was lost: {f:?}\n{log}"));
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.pid,
        cluster.started_pid(0, 1).map(|p| p.as_raw()),
        "{log}"
    );
}
