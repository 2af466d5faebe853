//! The pool's life: workers own their sockets (the supervisor keeps no copy), SIGTERM and SIGINT
//! stop everything, killing the supervisor kills every worker (a COMMAND that a shell execs
//! included; a process a worker forks is not, see the README's limit), `--workers max` counts the CPUs
//! this process may use, and a worker that keeps crashing is restarted with growing delays.

use std::{collections::BTreeSet, time::Duration};

use cluster_tests::{
    Cluster, PYTHON_SERVER, all_gone, cluster_run, field, listening_sockets, on_one_cpu,
    ready_line, require_root, socket_inodes,
};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

fn worker_pids(cluster: &Cluster, workers: u32) -> Vec<Pid> {
    (0..workers)
        .map(|slot| cluster.started_pid(slot, 0).expect("worker pid"))
        .collect()
}

#[test]
fn each_worker_owns_its_socket_and_the_supervisor_only_the_parking_one() {
    require_root();
    let cluster = Cluster::start(&["--workers", "3"]);
    let port = cluster.addr().port();
    let listening: BTreeSet<u64> = listening_sockets()
        .into_iter()
        .filter(|(_, p)| *p == port)
        .map(|(inode, _)| inode)
        .collect();
    assert_eq!(
        listening.len(),
        4,
        "one socket per worker, and the parking socket"
    );
    let parking: BTreeSet<u64> = socket_inodes(cluster.pid())
        .intersection(&listening)
        .copied()
        .collect();
    assert_eq!(
        parking.len(),
        1,
        "the supervisor holds the parking socket only"
    );
    for pid in worker_pids(&cluster, 3) {
        let own: Vec<u64> = socket_inodes(pid)
            .intersection(&listening)
            .copied()
            .collect();
        assert_eq!(own.len(), 1, "worker {pid}");
        assert!(
            parking.is_disjoint(&own.into_iter().collect()),
            "worker {pid} shares the parking socket"
        );
    }
}

#[test]
fn sigterm_stops_every_worker() {
    require_root();
    let cluster = Cluster::start(&["--workers", "3"]);
    let workers = worker_pids(&cluster, 3);
    let (status, log) = cluster.stop();
    assert!(status.success(), "{status}\n{log}");
    assert!(log.contains("all workers stopped"), "{log}");
    assert!(
        all_gone(&workers, Duration::from_secs(2)),
        "workers left behind\n{log}"
    );
}

#[test]
fn sigint_stops_every_worker() {
    let cluster = Cluster::start(&["--workers", "2", "--steering", "hash"]);
    let workers = worker_pids(&cluster, 2);
    kill(cluster.pid(), Signal::SIGINT).unwrap();
    let stopped = cluster.wait_for_log(Duration::from_secs(15), |log| {
        log.contains("all workers stopped").then_some(())
    });
    assert!(stopped.is_some(), "{}", cluster.log());
    assert!(all_gone(&workers, Duration::from_secs(2)));
}

#[test]
fn killing_the_supervisor_kills_every_worker() {
    let cluster = Cluster::start(&["--workers", "2", "--steering", "hash"]);
    let workers = worker_pids(&cluster, 2);
    kill(cluster.pid(), Signal::SIGKILL).unwrap();
    assert!(
        all_gone(&workers, Duration::from_secs(3)),
        "workers outlived their supervisor"
    );
}

/// The README's way around the limit: `sh -c 'exec server'` makes the server the worker itself,
/// so it dies with a SIGKILLed supervisor too, and nothing keeps the port.
#[test]
fn killing_the_supervisor_kills_a_server_a_shell_execs() {
    let mut command = cluster_run(&["--workers", "2", "--steering", "hash"]);
    command.args(["--", "sh", "-c", "exec python3 -c \"$0\"", PYTHON_SERVER]);
    let cluster = Cluster::start_command(command);
    let port = cluster.addr().port();
    let workers = worker_pids(&cluster, 2);
    kill(cluster.pid(), Signal::SIGKILL).unwrap();
    assert!(
        all_gone(&workers, Duration::from_secs(3)),
        "the exec'd servers outlived their supervisor"
    );
    assert!(
        listening_sockets().iter().all(|&(_, p)| p != port),
        "something still listens on port {port}"
    );
}

#[test]
fn workers_max_counts_the_cpus_this_process_may_use() {
    let mut command = cluster_run(&["--steering", "hash"]);
    on_one_cpu(&mut command);
    let cluster = Cluster::start_command(command);
    let ready = ready_line(&cluster.log()).unwrap();
    assert_eq!(field(&ready, "workers"), Some("1"), "{ready}");

    let all = Cluster::start(&["--workers", "max", "--steering", "hash"]);
    let cpus = std::thread::available_parallelism()
        .unwrap()
        .get()
        .to_string();
    let ready = ready_line(&all.log()).unwrap();
    assert_eq!(field(&ready, "workers"), Some(cpus.as_str()), "{ready}");
}

#[test]
fn a_crashing_worker_is_restarted_with_growing_delays() {
    let mut command = cluster_run(&["--workers", "1", "--steering", "hash"]);
    command.args(["--", "sh", "-c", "exit 3"]);
    // Never ready (it never accepts): watch the restarts without waiting for `ready`.
    let cluster = Cluster::spawn_command(command);
    let delays = |log: &str| -> Vec<u64> {
        log.lines()
            .filter(|l| l.contains("restarting with backoff"))
            .filter_map(|l| field(l, "delay_ms")?.parse().ok())
            .collect()
    };
    let seen = cluster.wait_for_log(Duration::from_secs(10), |log| {
        let d = delays(log);
        (d.len() >= 4).then_some(d)
    });
    let seen = seen.unwrap_or_else(|| panic!("no backoff seen:\n{}", cluster.log()));
    assert_eq!(&seen[..4], &[100, 200, 400, 800], "{}", cluster.log());
    assert!(
        cluster.log().contains("status=exit code 3"),
        "{}",
        cluster.log()
    );
    let (status, log) = cluster.stop();
    assert!(
        status.success(),
        "the supervisor must survive a crash loop\n{log}"
    );
}
