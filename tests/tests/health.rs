//! Stalled and hung workers, seen from the kernel with no code in the worker. One of 4 workers is
//! stopped with SIGSTOP (from outside, the same as a worker stuck in a loop or a deadlock):
//! - once it is `stalled` in `status --json`, no new connection reaches it (its socket's counter
//!   stays put, every answer comes from another worker), in round-robin, sticky and least-conn;
//! - after SIGCONT it accepts what waited, is `serving` again and gets its share back (sticky:
//!   exactly its own addresses again);
//! - with `--hang-timeout 5` it is killed and replaced, and the connections queued on it are
//!   migrated and served: clients whose timeout (20 s) is above the hang timeout see no failure,
//!   since it had accepted nothing before it stopped; stopped under load, it costs no more than
//!   the requests it had accepted;
//! - a single-threaded COMMAND busy with one 4 s request is stalled meanwhile, not killed, and
//!   takes its share again afterwards.
//!
//! Each pool runs in a private network namespace, alone on its port.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use cluster_tests::{
    Cluster, Failure, NetNs, PYTHON_SERVER, Reply, get,
    load::{Load, Reuse},
    process_gone, require_root,
};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use serde_json::Value;

/// How long a state may take to show on a saturated 2-core machine.
const PATIENCE: Duration = Duration::from_secs(60);
/// Client addresses, from the namespace's 127.0.0.0/8.
const SOURCES: u8 = 40;
/// `--stall-after` where a test must see the `stalled` phase before the worker is killed or
/// resumes: the phase then lasts nearly the whole hang timeout (or the 4 s busy request), a wide
/// window for `status --json` polls on a saturated machine.
const STALL_AFTER: &str = "0.25";
/// The slot whose worker is stopped.
const STUCK_SLOT: u64 = 1;

fn source(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, n + 1))
}

/// The status row of `pid`, if it is there.
fn row(status: &Value, pid: i32) -> Option<Value> {
    status["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .find(|row| row["pid"] == pid)
        .cloned()
}

/// The pid serving `slot` (phase `serving` or `stalled`).
fn pid_of(status: &Value, slot: u64) -> Option<i32> {
    status["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .find(|row| row["slot"] == slot && (row["phase"] == "serving" || row["phase"] == "stalled"))
        .and_then(|row| row["pid"].as_i64())
        .and_then(|pid| i32::try_from(pid).ok())
}

/// Polls `status --json` until `check` returns something.
fn wait_for<T>(cluster: &Cluster, what: &str, check: impl Fn(&Value) -> Option<T>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let status = cluster.status();
        if let Some(found) = check(&status) {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not seen within {PATIENCE:?}; last status {status}\n{}",
            cluster.log()
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// One request from each source in turn; returns source → (slot, pid). Panics on a failure.
fn ask_all(cluster: &Cluster) -> BTreeMap<u8, (u32, i32)> {
    (0..SOURCES)
        .map(|n| {
            let reply = get(cluster.addr(), "/", Some(source(n))).unwrap_or_else(|f| {
                panic!(
                    "request from {} failed: {f:?}\n{}",
                    source(n),
                    cluster.log()
                )
            });
            assert_eq!(reply.status, 200, "{reply:?}");
            (n, (reply.slot.expect("slot"), reply.pid.expect("pid")))
        })
        .collect()
}

/// Clients that each send one request (from the given sources), started one after another so
/// each connection is steered before the next; they wait up to 20 s for their answer.
fn waiting_clients(cluster: &Cluster, sources: &[u8]) -> Vec<JoinHandle<Result<Reply, Failure>>> {
    let addr = cluster.addr();
    sources
        .iter()
        .map(|&n| {
            // Inside `NetNs::isolated`, a new thread starts in the namespace.
            let handle = thread::spawn(move || get(addr, "/", Some(source(n))));
            thread::sleep(Duration::from_millis(20));
            handle
        })
        .collect()
}

/// Starts 4 workers with `args`, stops slot 1's worker, and sends waiting clients (among them,
/// for sticky, every address of slot 1) until status shows it `stalled` with connections queued.
/// Returns the stopped pid, its status row at that moment, the clients, and where each source
/// went before the stop.
struct Stalled {
    pid: i32,
    row: Value,
    clients: Vec<JoinHandle<Result<Reply, Failure>>>,
    before: BTreeMap<u8, (u32, i32)>,
}

fn stall_one(cluster: &Cluster) -> Stalled {
    let before = ask_all(cluster);
    let pid = pid_of(&cluster.status(), STUCK_SLOT).expect("slot 1 serves");
    kill(Pid::from_raw(pid), Signal::SIGSTOP).expect("SIGSTOP the worker");
    // Its own addresses first (sticky sends them there), then others.
    let mut sources: Vec<u8> = before
        .iter()
        .filter(|(_, (slot, _))| u64::from(*slot) == STUCK_SLOT)
        .map(|(&n, _)| n)
        .collect();
    let others: Vec<u8> = (0..8).filter(|n| !sources.contains(n)).collect();
    sources.extend(others);
    let clients = waiting_clients(cluster, &sources);
    let row = wait_for(cluster, "the stopped worker stalled", |status| {
        row(status, pid).filter(|r| r["phase"] == "stalled")
    });
    assert!(
        row["queued"].as_u64().is_some_and(|q| q >= 1),
        "stalled with nothing queued: {row}"
    );
    Stalled {
        pid,
        row,
        clients,
        before,
    }
}

/// While slot 1's worker is stalled, 40 new connections all go elsewhere and its socket's
/// counter does not move; after SIGCONT it serves what waited and gets its share again.
fn stalled_then_resumed(mode: &str) {
    require_root();
    NetNs::isolated(|ns| {
        let cluster =
            ns.start_cluster(&["--workers", "4", "--steering", mode, "--hang-timeout", "0"]);
        let stalled = stall_one(&cluster);
        let during = ask_all(&cluster);
        assert!(
            during.values().all(|&(_, pid)| pid != stalled.pid),
            "a new connection reached the stalled worker: {during:?}\n{}",
            cluster.log()
        );
        let row_after = row(&cluster.status(), stalled.pid).expect("still there");
        assert_eq!(
            row_after["connections"], stalled.row["connections"],
            "its socket took connections while stalled"
        );
        if mode == "sticky" {
            for (n, (slot, _)) in &stalled.before {
                if u64::from(*slot) != STUCK_SLOT {
                    assert_eq!(
                        during[n].0,
                        *slot,
                        "{} moved although its worker serves",
                        source(*n)
                    );
                }
            }
        }

        kill(Pid::from_raw(stalled.pid), Signal::SIGCONT).expect("SIGCONT the worker");
        for client in stalled.clients {
            let reply = client.join().expect("client thread");
            assert!(
                reply.as_ref().is_ok_and(|r| r.status == 200),
                "a waiting client failed: {reply:?}\n{}",
                cluster.log()
            );
        }
        wait_for(&cluster, "the worker serving again", |status| {
            row(status, stalled.pid).filter(|r| r["phase"] == "serving")
        });
        let after = ask_all(&cluster);
        let share = after
            .values()
            .filter(|&&(_, pid)| pid == stalled.pid)
            .count();
        match mode {
            "round-robin" => assert_eq!(share, 10, "{after:?}"),
            "sticky" => assert_eq!(
                after
                    .iter()
                    .map(|(n, (slot, _))| (*n, *slot))
                    .collect::<BTreeMap<_, _>>(),
                stalled
                    .before
                    .iter()
                    .map(|(n, (slot, _))| (*n, *slot))
                    .collect::<BTreeMap<_, _>>(),
                "every address is back on its own slot"
            ),
            _ => assert!(share > 0, "no share after resuming: {after:?}"),
        }
        let status = cluster.status();
        assert_eq!(
            row(&status, stalled.pid).expect("still there")["restarts"],
            0,
            "{status}"
        );
        let (exit, log) = cluster.stop();
        assert!(exit.success(), "{log}");
    });
}

#[test]
fn a_stalled_worker_gets_no_connection_until_it_resumes_round_robin() {
    stalled_then_resumed("round-robin");
}

#[test]
fn a_stalled_worker_gets_no_connection_until_it_resumes_sticky() {
    stalled_then_resumed("sticky");
}

#[test]
fn a_stalled_worker_gets_no_connection_until_it_resumes_least_conn() {
    stalled_then_resumed("least-conn");
}

/// 4 workers steered by `mode`, stalled after 0.25 s without an accept and killed as hung 5 s
/// later, in `ns`.
fn hang_checked_pool(ns: &NetNs, mode: &str) -> Cluster {
    ns.start_cluster(&[
        "--workers",
        "4",
        "--steering",
        mode,
        "--stall-after",
        STALL_AFTER,
        "--hang-timeout",
        "5",
    ])
}

/// With `--hang-timeout 5`, the stopped worker is killed and replaced; every client that waited
/// on it is served (its queue migrates), and none fails: it had accepted nothing.
fn hung_is_killed(mode: &str) {
    require_root();
    NetNs::isolated(|ns| {
        let cluster = hang_checked_pool(ns, mode);
        let stalled = stall_one(&cluster);
        let queued = stalled.row["queued"].as_u64().expect("queued");
        let replacement = wait_for(&cluster, "a replacement in slot 1", |status| {
            pid_of(status, STUCK_SLOT).filter(|&pid| pid != stalled.pid)
        });
        let mut answered_by = BTreeMap::new();
        for client in stalled.clients {
            let reply = client
                .join()
                .expect("client thread")
                .unwrap_or_else(|f| panic!("a waiting client failed: {f:?}\n{}", cluster.log()));
            assert_eq!(reply.status, 200, "{reply:?}");
            *answered_by.entry(reply.pid.expect("pid")).or_insert(0) += 1;
        }
        assert!(
            !answered_by.contains_key(&stalled.pid),
            "the stopped worker answered: {answered_by:?}"
        );
        assert!(
            process_gone(Pid::from_raw(stalled.pid)),
            "the hung worker is still there"
        );
        let status = cluster.status();
        let migrated: u64 = status["rows"]
            .as_array()
            .expect("rows")
            .iter()
            .filter_map(|r| r["migrated"].as_u64())
            .sum();
        assert!(
            migrated >= queued,
            "{queued} were queued on the hung worker, {migrated} migrated: {status}"
        );
        assert!(
            row(&status, replacement).is_some_and(|r| r["restarts"] == 1),
            "{status}"
        );
        let (exit, log) = cluster.stop();
        assert!(exit.success(), "{log}");
    });
}

#[test]
fn a_hung_worker_is_killed_and_its_queue_served_round_robin() {
    hung_is_killed("round-robin");
}

#[test]
fn a_hung_worker_is_killed_and_its_queue_served_sticky() {
    hung_is_killed("sticky");
}

#[test]
fn a_hung_worker_is_killed_and_its_queue_served_least_conn() {
    hung_is_killed("least-conn");
}

/// Under `hash` there is no program to skip a stalled worker, but the connection counter sees it
/// stall, and at the hang timeout it is killed and replaced. With `net.ipv4.tcp_migrate_req=1` in
/// the namespace, what waited on it is migrated by the kernel and served.
#[test]
fn under_hash_a_hung_worker_is_killed_and_with_migrate_req_its_queue_served() {
    require_root();
    NetNs::isolated(|ns| {
        ns.sysctl("net.ipv4.tcp_migrate_req", "1");
        let cluster = hang_checked_pool(ns, "hash");
        let pid = pid_of(&cluster.status(), STUCK_SLOT).expect("slot 1 serves");
        kill(Pid::from_raw(pid), Signal::SIGSTOP).expect("SIGSTOP the worker");
        // The kernel's hash picks the socket: send waiting clients until some wait on it.
        let mut clients = Vec::new();
        let deadline = Instant::now() + PATIENCE;
        let stalled = loop {
            clients.extend(waiting_clients(&cluster, &(0..8).collect::<Vec<_>>()));
            let status = cluster.status();
            if let Some(r) = row(&status, pid).filter(|r| r["phase"] == "stalled") {
                break r;
            }
            assert!(Instant::now() < deadline, "never stalled: {status}");
            thread::sleep(Duration::from_millis(500));
        };
        assert!(
            stalled["queued"].as_u64().is_some_and(|q| q >= 1),
            "{stalled}"
        );
        let replacement = wait_for(&cluster, "a replacement in slot 1", |status| {
            pid_of(status, STUCK_SLOT).filter(|&p| p != pid)
        });
        for client in clients {
            let reply = client.join().expect("client thread");
            assert!(
                reply
                    .as_ref()
                    .is_ok_and(|r| r.status == 200 && r.pid != Some(pid)),
                "a waiting client failed: {reply:?}\n{}",
                cluster.log()
            );
        }
        assert!(
            process_gone(Pid::from_raw(pid)),
            "the hung worker is still there"
        );
        assert!(
            row(&cluster.status(), replacement).is_some_and(|r| r["restarts"] == 1),
            "{}",
            cluster.log()
        );
        let (exit, log) = cluster.stop();
        assert!(exit.success(), "{log}");
    });
}

/// Under load (4 clients from one address, a new connection per request, 20 s timeouts), the
/// worker that answers them is stopped, stalls, and is killed at the 5 s hang timeout (in
/// round-robin, sticky and least-conn). The clients see no failure beyond the
/// requests it had accepted before it stopped: its socket's open connections minus the queued
/// ones when it stalled. The queued ones are migrated and served.
fn stopped_under_load(mode: &str) {
    require_root();
    NetNs::isolated(|ns| {
        let cluster = hang_checked_pool(ns, mode);
        let load = Load::start(cluster.addr(), "/", 4, Reuse::NewConnection);
        assert!(load.wait_for_answers(200, PATIENCE), "{}", cluster.log());
        // The worker that answers the load's address (the only one, for sticky).
        let reply = get(cluster.addr(), "/", None).expect("a request");
        let pid = reply.pid.expect("x-worker-pid");
        let slot = u64::from(reply.slot.expect("x-worker-slot"));
        kill(Pid::from_raw(pid), Signal::SIGSTOP).expect("SIGSTOP the worker");
        // What it had accepted when it stopped: its open connections minus its queue, read after
        // a few health checks (0.25 s apart) and long before any client's 20 s timeout closes
        // one. If it had accepted every request in flight, nothing waits in its queue and it
        // stalls only once the clients give up and connect again: those requests are the ones
        // it may cost.
        thread::sleep(Duration::from_secs(1));
        let stopped = row(&cluster.status(), pid).expect("the stopped worker's row");
        let open = stopped["open"].as_i64().expect("open");
        let queued = stopped["queued"].as_i64().expect("queued");
        let accepted = u64::try_from(open - queued).unwrap_or(0);
        wait_for(&cluster, "the stopped worker stalled", |status| {
            row(status, pid).filter(|r| r["phase"] == "stalled")
        });
        let replacement = wait_for(&cluster, "a replacement in its slot", |status| {
            pid_of(status, slot).filter(|&p| p != pid)
        });
        assert!(load.wait_for_answers(200, PATIENCE), "{}", cluster.log());
        let tally = load.stop();
        assert!(
            tally.failed <= accepted,
            "{} failed, but the worker had accepted only {accepted} ({open} open, {queued} queued): {:?}\n{}",
            tally.failed,
            tally.failures,
            cluster.log()
        );
        assert!(
            tally.by_pid.contains_key(&replacement),
            "the replacement answered nothing: {tally:?}"
        );
        let (exit, log) = cluster.stop();
        assert!(exit.success(), "{log}");
    });
}

#[test]
fn a_worker_stopped_under_load_costs_only_what_it_had_accepted_round_robin() {
    stopped_under_load("round-robin");
}

#[test]
fn a_worker_stopped_under_load_costs_only_what_it_had_accepted_sticky() {
    stopped_under_load("sticky");
}

#[test]
fn a_worker_stopped_under_load_costs_only_what_it_had_accepted_least_conn() {
    stopped_under_load("least-conn");
}

/// A single-threaded COMMAND that spends 4 s on one request is stalled while connections wait
/// for it, but not killed (hang timeout 20 s); it serves them afterwards and takes its share
/// again.
#[test]
fn a_worker_busy_with_one_long_request_is_stalled_not_killed() {
    require_root();
    NetNs::isolated(|ns| {
        let cluster = ns.start_cluster(&[
            "--workers",
            "4",
            "--stall-after",
            STALL_AFTER,
            "--hang-timeout",
            "20",
            "--",
            "python3",
            "-c",
            PYTHON_SERVER,
            "sleep-slot=1",
        ]);
        let before = ask_all(&cluster);
        let pid = pid_of(&cluster.status(), STUCK_SLOT).expect("slot 1 serves");
        // Round-robin: of 4 `/sleep` requests in a row, one reaches slot 1, which sleeps; the
        // other three are answered at once. Then more clients, of which one in four waits.
        let addr = cluster.addr();
        let sleepers: Vec<JoinHandle<Result<Reply, Failure>>> = (0..4)
            .map(|_| {
                let handle = thread::spawn(move || get(addr, "/sleep", None));
                thread::sleep(Duration::from_millis(20));
                handle
            })
            .collect();
        let waiting = waiting_clients(&cluster, &(0..8).collect::<Vec<_>>());
        wait_for(&cluster, "the busy worker stalled", |status| {
            row(status, pid).filter(|r| r["phase"] == "stalled")
        });
        for client in sleepers.into_iter().chain(waiting) {
            let reply = client.join().expect("client thread");
            assert!(
                reply.as_ref().is_ok_and(|r| r.status == 200),
                "a client failed: {reply:?}\n{}",
                cluster.log()
            );
        }
        wait_for(&cluster, "the worker serving again", |status| {
            row(status, pid).filter(|r| r["phase"] == "serving" && r["restarts"] == 0)
        });
        let after = ask_all(&cluster);
        assert_eq!(
            after.values().filter(|&&(_, p)| p == pid).count(),
            before.values().filter(|&&(_, p)| p == pid).count(),
            "its share after: {after:?}"
        );
        let (exit, log) = cluster.stop();
        assert!(exit.success(), "{log}");
    });
}
