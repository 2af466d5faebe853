//! One address serves one pool. A second pool started on the address of another fails with exit
//! status 1 and says the address is in use, instead of joining the first pool's reuseport group
//! (the kernel admits any socket of the same user that sets SO_REUSEPORT): there the pool that
//! attached its program last would steer every connection of both to its own workers, and the
//! other pool's workers would get none. This holds when the two start at the same moment too.

use std::{
    collections::BTreeSet,
    thread,
    time::{Duration, Instant},
};

use cluster_tests::{Cluster, cluster_command, free_local_addr, get, ready_line, require_root};

/// How long two pools get to settle (be ready or exit) on a saturated machine.
const SETTLE: Duration = Duration::from_secs(60);

fn pool(listen: &str) -> Cluster {
    let mut command = cluster_command(&["run", "--listen", listen, "--workers", "1"]);
    command.env("RUST_LOG", "info");
    Cluster::spawn_command(command)
}

/// Waits until `cluster` is ready or has exited; returns whether it is ready.
fn settles_ready(cluster: &mut Cluster) -> bool {
    let deadline = Instant::now() + SETTLE;
    loop {
        if ready_line(&cluster.log()).is_some() {
            return true;
        }
        if !cluster.is_running() {
            return false;
        }
        assert!(
            Instant::now() < deadline,
            "neither ready nor exited:\n{}",
            cluster.log()
        );
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_pool_started_on_a_running_pools_address_fails() {
    require_root();
    let first = Cluster::start(&["--workers", "1"]);
    let mut second = pool(&first.addr().to_string());
    assert!(
        !settles_ready(&mut second),
        "a second pool serves on {}:\n{}",
        first.addr(),
        second.log()
    );
    let (status, log) = second.stop();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("already in use"), "{log}");
    let (status, log) = first.stop();
    assert!(status.success(), "{log}");
}

/// `sudo -E` keeps the user's `XDG_RUNTIME_DIR`, so root's control sockets land elsewhere; the
/// address lock must not: two root pools started at once with different runtime directories still
/// yield one pool.
#[test]
fn root_pools_with_different_runtime_dirs_still_exclude_each_other() {
    require_root();
    let runtime = std::env::temp_dir().join(format!("cluster-xdg-{}", std::process::id()));
    std::fs::create_dir_all(&runtime).expect("runtime dir");
    for round in 0..3 {
        let listen = free_local_addr().to_string();
        let mut other = cluster_command(&["run", "--listen", &listen, "--workers", "1"]);
        other
            .env("RUST_LOG", "info")
            .env("XDG_RUNTIME_DIR", &runtime);
        let mut pools = [pool(&listen), Cluster::spawn_command(other)];
        let ready: Vec<bool> = pools.iter_mut().map(settles_ready).collect();
        let [a, b] = pools;
        let ((_, log_a), (_, log_b)) = (a.stop(), b.stop());
        assert_eq!(
            ready.iter().filter(|&&r| r).count(),
            1,
            "round {round}: pools ready on {listen}: {ready:?}\n--- default ---\n{log_a}\n--- XDG_RUNTIME_DIR ---\n{log_b}"
        );
    }
    let _ = std::fs::remove_dir_all(&runtime);
}

#[test]
fn of_two_pools_started_at_once_on_one_address_only_one_serves() {
    require_root();
    for round in 0..3 {
        let listen = free_local_addr().to_string();
        let mut pools = [pool(&listen), pool(&listen)];
        let ready: Vec<bool> = pools.iter_mut().map(settles_ready).collect();
        // Who answers, for the failure message: with both ready, one pool's workers get all.
        let answered_by: BTreeSet<Option<i32>> = (0..8)
            .map(|_| {
                get(listen.parse().unwrap(), "/", None)
                    .ok()
                    .and_then(|r| r.pid)
            })
            .collect();
        let workers: Vec<Option<i32>> = pools
            .iter()
            .map(|p| p.started_pid(0, 0).map(|pid| pid.as_raw()))
            .collect();
        let [a, b] = pools;
        let ((status_a, log_a), (status_b, log_b)) = (a.stop(), b.stop());
        assert_eq!(
            ready.iter().filter(|&&r| r).count(),
            1,
            "round {round}: pools ready on {listen}: {ready:?}; both bound the port and joined \
             one reuseport group: 8 requests answered by {answered_by:?}, the pools' workers are \
             {workers:?}\n--- first pool ---\n{log_a}\n--- second pool ---\n{log_b}"
        );
        let (failed, failed_log) = if ready[0] {
            (status_b, log_b)
        } else {
            (status_a, log_a)
        };
        assert_eq!(failed.code(), Some(1), "{failed_log}");
        assert!(failed_log.contains("already in use"), "{failed_log}");
    }
}
