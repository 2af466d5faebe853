//! Rolling reloads under load: each slot's replacement starts on a new socket, takes the old
//! socket's place in the program's map once ready, and the old worker drains. Nothing is lost:
//! no refusal, reset, truncated answer or non-200, with new connections or kept-alive ones, with
//! the built-in worker or a COMMAND that exits at once on SIGTERM. Under `hash`, which has no map,
//! the built-in worker loses nothing either with new connections, when
//! `net.ipv4.tcp_migrate_req=1` migrates what is queued on a closing socket. A replacement that
//! fails, or never becomes ready, stops the reload and leaves the old worker serving.

use std::{
    collections::BTreeSet,
    thread,
    time::{Duration, Instant},
};

use cluster_tests::{
    BreakableServer, Cluster, NetNs, PYTHON_SERVER, assert_no_fallback, cluster_run,
    load::{Load, Reuse, Tally},
    require_root,
};
use nix::sys::signal::{Signal, kill};

const WORKERS: u32 = 4;
const RELOADS: u64 = 3;
/// How long one whole reload of the pool may take on a saturated 2-core machine.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(90);

/// Sends `signal` and waits until `status` counts `finished` reloads ended well.
fn reload(cluster: &Cluster, signal: Signal, finished: u64) {
    kill(cluster.pid(), signal).expect("signal the supervisor");
    wait_for_reloads(cluster, finished);
}

/// `reloads` of `status --json` once `done` holds for it (or the reload timeout passed).
fn reloads_when(cluster: &Cluster, done: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = Instant::now() + RELOAD_TIMEOUT;
    loop {
        let reloads = cluster.status()["reloads"].clone();
        if done(&reloads) || Instant::now() > deadline {
            return reloads;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until `status` counts `finished` reloads ended well, and none failed.
fn wait_for_reloads(cluster: &Cluster, finished: u64) {
    let reloads = reloads_when(cluster, |r| {
        r["failed"] != 0 || r["finished"].as_u64() >= Some(finished)
    });
    assert_eq!(
        reloads["failed"],
        0,
        "a reload failed: {reloads}\n{}",
        cluster.log()
    );
    assert!(
        reloads["finished"].as_u64() >= Some(finished),
        "reload {finished} did not finish: {reloads}\n{}",
        cluster.log()
    );
}

/// The pids answering a burst of new connections.
fn answering_pids(cluster: &Cluster) -> BTreeSet<i32> {
    let load = Load::start(cluster.addr(), "/", 2, Reuse::NewConnection);
    assert!(load.wait_for_answers(200, Duration::from_secs(30)));
    let tally = load.stop();
    assert_eq!(tally.failed, 0, "{tally:?}");
    tally.by_pid.keys().copied().collect()
}

/// Runs `RELOADS` back-to-back reloads of `cluster` under `load`, and checks that nothing failed
/// and that every slot ends with a new worker; returns the log.
fn reloads_lose_nothing(cluster: Cluster, load: Load) -> String {
    let before = answering_pids(&cluster);
    assert_eq!(before.len(), WORKERS as usize, "{before:?}");
    assert!(
        load.wait_for_answers(100, Duration::from_secs(30)),
        "{}",
        cluster.log()
    );
    for n in 1..=RELOADS {
        let signal = if n % 2 == 0 {
            Signal::SIGUSR2
        } else {
            Signal::SIGHUP
        };
        reload(&cluster, signal, n);
        assert!(
            load.wait_for_answers(50, Duration::from_secs(30)),
            "{}",
            cluster.log()
        );
    }
    let tally: Tally = load.stop();
    let after = answering_pids(&cluster);
    let (status, log) = cluster.stop();
    assert_eq!(
        tally.failed, 0,
        "failed requests: {:?}\n{log}",
        tally.failures
    );
    assert!(tally.ok > 300, "{tally:?}");
    assert_eq!(after.len(), WORKERS as usize, "{after:?}\n{log}");
    assert!(before.is_disjoint(&after), "{before:?} {after:?}\n{log}");
    assert_eq!(
        log.matches("replacing the old one").count(),
        (RELOADS * u64::from(WORKERS)) as usize,
        "{log}"
    );
    assert!(status.success(), "{status}\n{log}");
    log
}

/// 4 built-in workers steered by `mode`, reloaded 3 times under `clients` clients that `reuse`
/// connections or not: nothing lost, and no fallback path of the program ran.
fn reloads_of_built_in_workers_lose_nothing(mode: &str, clients: usize, reuse: Reuse) {
    require_root();
    let cluster = Cluster::start(&["--workers", "4", "--steering", mode]);
    let load = Load::start(cluster.addr(), "/", clients, reuse);
    assert_no_fallback(&reloads_lose_nothing(cluster, load));
}

#[test]
fn reloads_under_new_connection_load_lose_nothing() {
    reloads_of_built_in_workers_lose_nothing("round-robin", 4, Reuse::NewConnection);
}

#[test]
fn reloads_under_keep_alive_load_lose_nothing() {
    reloads_of_built_in_workers_lose_nothing("round-robin", 8, Reuse::KeepAlive);
}

#[test]
fn least_conn_reloads_under_new_connection_load_lose_nothing() {
    reloads_of_built_in_workers_lose_nothing("least-conn", 4, Reuse::NewConnection);
}

#[test]
fn least_conn_reloads_under_keep_alive_load_lose_nothing() {
    reloads_of_built_in_workers_lose_nothing("least-conn", 8, Reuse::KeepAlive);
}

#[test]
fn reloads_with_one_shared_socket_lose_nothing() {
    require_root();
    let cluster = Cluster::start(&["--workers", "4", "--steering", "shared"]);
    let load = Load::start(cluster.addr(), "/", 4, Reuse::NewConnection);
    // No program, so no steering counters to check.
    let _log = reloads_lose_nothing(cluster, load);
}

#[test]
fn reloads_of_a_command_that_exits_at_once_on_sigterm_lose_nothing() {
    require_root();
    let mut command = cluster_run(&["--workers", "4"]);
    command.args(["--", "python3", "-c", PYTHON_SERVER]);
    let cluster = Cluster::start_command(command);
    let load = Load::start(cluster.addr(), "/", 4, Reuse::NewConnection);
    assert_no_fallback(&reloads_lose_nothing(cluster, load));
}

/// The README's promise for `hash`: no map, so a replacement's socket takes its hash share as
/// soon as it listens (those connections wait in its queue until it accepts), and what is
/// queued on the old socket when it closes is migrated, not reset, with
/// `net.ipv4.tcp_migrate_req=1` in the network namespace. So with that sysctl the built-in
/// worker, which drains, loses nothing. (A COMMAND gets SIGTERM at once under `hash`, so one
/// that exits at once on it loses what it is handling; the README gives the measured loss.)
#[test]
fn hash_reloads_with_tcp_migrate_req_lose_nothing() {
    require_root();
    NetNs::isolated(|ns| {
        ns.sysctl("net.ipv4.tcp_migrate_req", "1");
        let before = ns.tcp_ext();
        let cluster = ns.start_cluster(&["--workers", "4", "--steering", "hash"]);
        let load = Load::start(cluster.addr(), "/", 4, Reuse::NewConnection);
        let _log = reloads_lose_nothing(cluster, load);
        let after = ns.tcp_ext();
        let reset = "TCPMigrateReqFailure";
        assert_eq!(after[reset], before[reset], "queues were reset");
    });
}

#[test]
fn a_replacement_that_fails_stops_the_reload_and_the_old_workers_serve_on() {
    require_root();
    let server = BreakableServer::new();
    let cluster = Cluster::start_command(server.cluster_run(2));
    let before = answering_pids(&cluster);
    server.break_it();
    kill(cluster.pid(), Signal::SIGHUP).expect("signal the supervisor");
    let reloads = reloads_when(&cluster, |r| r["failed"] != 0);
    assert_eq!(reloads["failed"], 1, "{reloads}\n{}", cluster.log());
    assert_eq!(reloads["finished"], 0, "{reloads}");
    assert_eq!(reloads["last"]["replaced"], 0, "{reloads}");
    let error = reloads["last"]["error"].as_str().unwrap_or_default();
    assert!(error.contains("slot 0"), "{reloads}");
    assert_eq!(answering_pids(&cluster), before, "the old workers serve on");
    let (status, log) = cluster.stop();
    assert!(status.success(), "{status}\n{log}");
    assert!(!log.contains("replacing the old one"), "{log}");
}

/// A replacement that starts but never becomes ready (`--wait-ready`, no READY=1) is killed at
/// `--ready-timeout`: `cluster reload` exits 1 with the reason, `status` counts the failed
/// reload, and the old workers serve on.
#[test]
fn a_replacement_that_never_becomes_ready_fails_the_reload() {
    require_root();
    let marker = std::env::temp_dir().join(format!("cluster-never-ready-{}", std::process::id()));
    let _ = std::fs::remove_file(&marker);
    let script = "if [ -e \"$1\" ]; then exec sleep 600; fi; exec python3 -c \"$0\" notify";
    let mut command = cluster_run(&["--workers", "2", "--wait-ready", "--ready-timeout", "2"]);
    command
        .args(["--", "sh", "-c", script, PYTHON_SERVER])
        .arg(&marker);
    let cluster = Cluster::start_command(command);
    let before = answering_pids(&cluster);
    std::fs::write(&marker, b"").expect("create the marker");
    let out = cluster.control(&["reload"]);
    let _ = std::fs::remove_file(&marker);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(out.stderr.trim_end().lines().count(), 1, "{out:?}");
    assert!(out.stderr.contains("reload failed"), "{out:?}");
    let reloads = cluster.status()["reloads"].clone();
    assert_eq!(
        (&reloads["failed"], &reloads["finished"]),
        (&1.into(), &0.into()),
        "{reloads}"
    );
    assert_eq!(answering_pids(&cluster), before, "the old workers serve on");
    let (status, log) = cluster.stop();
    assert!(status.success(), "{status}\n{log}");
}

#[test]
fn a_reload_asked_for_during_a_reload_is_refused() {
    require_root();
    let cluster = Cluster::start(&["--workers", "4"]);
    // Two different signals: two pending SIGHUPs would merge into one.
    kill(cluster.pid(), Signal::SIGHUP).expect("signal the supervisor");
    kill(cluster.pid(), Signal::SIGUSR2).expect("signal the supervisor");
    wait_for_reloads(&cluster, 1);
    // The second was refused, not queued: the first is over, nothing runs and none failed.
    let status = cluster.status();
    assert_eq!(
        status["reloads"]["finished"], 1,
        "the second reload did not run: {status}"
    );
    assert_eq!(status["reloads"]["failed"], 0, "{status}");
    assert_eq!(status["reloading"], false, "a reload still runs: {status}");
    let (status, log) = cluster.stop();
    assert!(status.success(), "{status}\n{log}");
    assert_eq!(log.matches("reload refused").count(), 1, "{log}");
    assert!(log.contains("a reload is already running"), "{log}");
}

#[test]
fn a_worker_above_max_memory_is_replaced_without_loss() {
    require_root();
    // The demo worker's resident memory is several MiB, so 1 MiB is always exceeded.
    let cluster = Cluster::start(&["--workers", "2", "--max-memory", "1M"]);
    let before = cluster.serving_pids();
    let load = Load::start(cluster.addr(), "/", 2, Reuse::NewConnection);
    let replaced = cluster.wait_for_log(RELOAD_TIMEOUT, |log| {
        log.contains("replacing the old one").then_some(())
    });
    assert!(replaced.is_some(), "{}", cluster.log());
    let tally = load.stop();
    let after = cluster.serving_pids();
    let (status, log) = cluster.stop();
    assert!(log.contains("stays above --max-memory"), "{log}");
    assert_ne!(before, after, "{log}");
    assert_eq!(tally.failed, 0, "{:?}\n{log}", tally.failures);
    assert!(status.success(), "{status}\n{log}");
}
