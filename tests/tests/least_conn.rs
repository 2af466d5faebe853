//! `--steering least-conn`: a new connection goes to the worker with fewer open connections (of
//! two candidates; exact with two workers), counted in the kernel as connections reach and leave
//! ESTABLISHED. A busy worker keeps its connection open, so new ones go elsewhere, with the demo
//! worker and with a COMMAND that knows nothing of it; the counts return to 0 afterwards.

use std::{
    collections::BTreeMap,
    net::TcpStream,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use cluster_tests::{
    Cluster, PYTHON_SERVER, assert_counters_match, assert_exact_rotation, assert_no_fallback,
    cluster_command, cluster_run, free_local_addr, get, read_reply, require_root, send_request,
    tally,
};

/// Light requests, one at a time, each on a new connection: slot → answered.
fn light_requests(cluster: &Cluster, count: usize) -> BTreeMap<u32, u64> {
    tally(cluster.addr(), "/", count, 1)
}

#[test]
fn a_busy_worker_gets_no_new_connection() {
    require_root();
    let cluster = Cluster::start(&["--workers", "2", "--steering", "least-conn"]);
    let addr = cluster.addr();
    let long_done = Arc::new(AtomicBool::new(false));
    let done = Arc::clone(&long_done);
    // About 2.5 s of CPU in the debug build, during which the worker accepts nothing.
    let long = thread::spawn(move || {
        let reply = get(addr, "/work?iterations=300000000", None);
        done.store(true, Ordering::SeqCst);
        reply
    });
    thread::sleep(Duration::from_millis(300));
    let light = light_requests(&cluster, 20);
    assert!(
        !long_done.load(Ordering::SeqCst),
        "the long request ended before the light ones: the test proves nothing"
    );
    assert_eq!(
        light.len(),
        1,
        "light requests went to both workers: {light:?}"
    );
    let long = long.join().unwrap().expect("the long request is served");
    let idle = *light.keys().next().unwrap();
    assert_ne!(
        long.slot,
        Some(idle),
        "the long request was on the busy worker"
    );
    let (status, log) = cluster.stop();
    assert!(status.success(), "{log}");
    assert_no_fallback(&log);
}

/// Equal loads give equal counts at every new connection, and a tie keeps the rotation's
/// choice: least-conn is then as exact as round-robin. (With concurrent clients the share
/// follows how fast each worker drains its connections, which depends on the scheduler: measured
/// by the bench, not asserted here.)
#[test]
fn equal_load_rotates_exactly() {
    require_root();
    let cluster = Cluster::start(&["--workers", "4", "--steering", "least-conn"]);
    let counts = light_requests(&cluster, 1000);
    assert_exact_rotation(&counts, 4);
    let (status, log) = cluster.stop();
    assert!(status.success(), "{log}");
    assert_counters_match(&log, &counts);
    assert_no_fallback(&log);
}

/// The `open` counts of every slot in `status --json`, by slot.
fn open_counts(cluster: &Cluster) -> Vec<Option<u64>> {
    cluster.status()["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|row| row["open"].as_u64())
        .collect()
}

/// Polls `open_counts` until it equals `wanted` (60 s at most); returns the last reading.
fn wait_for_open_counts(cluster: &Cluster, wanted: &[u64]) -> Vec<Option<u64>> {
    let wanted: Vec<Option<u64>> = wanted.iter().copied().map(Some).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let counts = open_counts(cluster);
        if counts == wanted || Instant::now() > deadline {
            return counts;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn open_counts_return_to_zero_after_the_load() {
    require_root();
    let cluster = Cluster::start(&["--workers", "3", "--steering", "least-conn"]);
    let counts = tally(cluster.addr(), "/", 600, 3);
    assert_eq!(counts.values().sum::<u64>(), 600);
    // Held open, then closed by the client: both directions of a connection's end count down.
    let held: Vec<TcpStream> = (0..6)
        .map(|_| TcpStream::connect(cluster.addr()).unwrap())
        .collect();
    let during = wait_for_open_counts(&cluster, &[2, 2, 2]);
    assert_eq!(
        during,
        [Some(2); 3],
        "6 held connections spread over 3 workers"
    );
    drop(held);
    let after = wait_for_open_counts(&cluster, &[0, 0, 0]);
    assert_eq!(
        after,
        [Some(0); 3],
        "counts did not return to 0\n{}",
        cluster.log()
    );
}

#[test]
fn a_command_worker_that_is_busy_gets_no_new_connection() {
    require_root();
    let mut command = cluster_run(&["--workers", "2", "--steering", "least-conn"]);
    command.args(["--", "python3", "-c", PYTHON_SERVER]);
    let cluster = Cluster::start_command(command);
    // A connection that sends nothing: the single-threaded server that accepts it blocks in
    // recv(2), as a server stuck on one slow client would.
    let stuck = TcpStream::connect(cluster.addr()).unwrap();
    thread::sleep(Duration::from_millis(300));
    let light = light_requests(&cluster, 20);
    assert_eq!(light.values().sum::<u64>(), 20);
    assert_eq!(
        light.len(),
        1,
        "requests reached the stuck worker: {light:?}"
    );
    drop(stuck);
    let (status, log) = cluster.stop();
    assert!(status.success(), "{log}");
    assert!(!log.contains("Traceback"), "{log}");
}

/// `open` and `migrated` of `slot`'s row in `status --json`, and how many rows there are.
fn slot_counts(cluster: &Cluster, slot: u64) -> (Option<u64>, Option<u64>, usize) {
    let status = cluster.status();
    let rows = status["rows"].as_array().expect("rows");
    let row = rows.iter().find(|row| row["slot"] == slot);
    (
        row.and_then(|row| row["open"].as_u64()),
        row.and_then(|row| row["migrated"].as_u64()),
        rows.len(),
    )
}

/// Polls `slot_counts` until `done` holds (60 s at most, for a saturated machine); returns the
/// last reading.
fn wait_for_counts(
    cluster: &Cluster,
    slot: u64,
    done: impl Fn(&(Option<u64>, Option<u64>, usize)) -> bool,
) -> (Option<u64>, Option<u64>, usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let counts = slot_counts(cluster, slot);
        if done(&counts) || Instant::now() > deadline {
            return counts;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// A connection that waited in a closing socket's accept queue is moved by the kernel to
/// another socket, and keeps the tag of the listener it left. It is counted open on the socket
/// it moved to for as long as it lives there, so least-conn sees it, and counted down there as
/// it closes: nothing is left over once the load ends.
#[test]
fn a_migrated_connection_counts_on_the_socket_it_moved_to() {
    require_root();
    let mut command = cluster_run(&[
        "--workers",
        "2",
        "--steering",
        "least-conn",
        "--drain-timeout",
        "4",
    ]);
    command.args(["--", "python3", "-c", PYTHON_SERVER]);
    let cluster = Cluster::start_command(command);
    let connect = || {
        let stream = TcpStream::connect(cluster.addr()).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        stream
    };
    // One connection that sends nothing yet on each worker (least-conn puts the second on the
    // other worker): each single-threaded server blocks in recv(2) on it and accepts nothing
    // more. Then 10 requests, which least-conn spreads 5 and 5; they wait in the accept queues.
    let mut holders: Vec<TcpStream> = (0..2).map(|_| connect()).collect();
    let mut queued: Vec<TcpStream> = (0..10)
        .map(|_| {
            let mut stream = connect();
            send_request(&mut stream, "/").expect("send a request");
            stream
        })
        .collect();
    let before = wait_for_counts(&cluster, 0, |c| c.0 == Some(6));
    assert_eq!(
        before.0,
        Some(6),
        "slot 0 before the scale-down: {before:?}"
    );
    assert_eq!(slot_counts(&cluster, 1).0, Some(6), "slot 1 before");

    // Slot 1 drains: its server never accepts again, so it gets SIGTERM at half the drain
    // timeout and dies, and the kernel migrates its 5 queued connections to slot 0's socket.
    let scaled = cluster.control(&["scale", "1"]);
    assert!(scaled.status.success(), "{scaled:?}");
    let moved = wait_for_counts(&cluster, 0, |c| c.1 == Some(5) && c.2 == 1);
    assert_eq!(
        moved,
        (Some(11), Some(5), 1),
        "slot 0 holds its own 6 and the 5 moved to it, all counted open there\n{}",
        cluster.log()
    );

    // Slot 0's holder sends its request, and the server serves everything queued on it.
    for holder in &mut holders {
        let _ = send_request(holder, "/");
    }
    for (i, stream) in queued.iter_mut().enumerate() {
        let reply = read_reply(stream).unwrap_or_else(|e| panic!("request {i}: {e:?}"));
        assert_eq!((reply.status, reply.slot), (200, Some(0)), "request {i}");
    }
    drop((holders, queued));
    let after = wait_for_counts(&cluster, 0, |c| c.0 == Some(0));
    assert_eq!(
        after.0,
        Some(0),
        "slot 0's count after the load\n{}",
        cluster.log()
    );
    let (status, log) = cluster.stop();
    assert!(status.success(), "{log}");
    assert!(!log.contains("Traceback"), "{log}");
}

/// Connections made before any worker serves wait on the starting worker's socket or on the
/// supervisor's parking socket, which carries no tag. Once the worker serves, the parking
/// socket closes and what waited on it migrates to the worker's socket, counted open there.
/// Once served and closed, every one is counted down again: nothing is left over.
#[test]
fn connections_moved_off_the_parking_socket_are_counted_down() {
    require_root();
    let addr = free_local_addr();
    let mut command = cluster_command(&[
        "run",
        "--listen",
        &addr.to_string(),
        "--workers",
        "1",
        "--steering",
        "least-conn",
        "--wait-ready",
    ]);
    command.args([
        "--",
        "sh",
        "-c",
        "sleep 2; exec python3 -c \"$0\" notify",
        PYTHON_SERVER,
    ]);
    let cluster = Cluster::spawn_command(command);
    let started = cluster.wait_for_log(Duration::from_secs(10), |_| cluster.started_pid(0, 0));
    assert!(started.is_some(), "{}", cluster.log());
    let clients: Vec<_> = (0..12)
        .map(|_| thread::spawn(move || get(addr, "/", None)))
        .collect();
    for (i, client) in clients.into_iter().enumerate() {
        let reply = client
            .join()
            .unwrap()
            .unwrap_or_else(|f| panic!("request {i} was lost: {f:?}\n{}", cluster.log()));
        assert_eq!(reply.status, 200, "request {i}");
    }
    let (open, migrated, _) = wait_for_counts(&cluster, 0, |c| c.0 == Some(0));
    assert!(
        migrated.is_some_and(|m| m > 0),
        "nothing waited on the parking socket, so this proves nothing: migrated {migrated:?}"
    );
    assert_eq!(open, Some(0), "left counted open\n{}", cluster.log());
}
