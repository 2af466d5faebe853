//! `cluster run -- COMMAND`: every worker runs the user's program with its socket passed the
//! systemd way, and the program steers it like the demo.

use std::time::Duration;

use cluster_tests::{
    Cluster, PYTHON_SERVER, assert_counters_match, assert_exact_rotation, cluster_run, ready_line,
    require_root, tally,
};

#[test]
fn a_python_server_on_fd_3_is_balanced_like_the_demo() {
    require_root();
    let mut command = cluster_run(&["--workers", "3"]);
    command.args(["--", "python3", "-c", PYTHON_SERVER]);
    let cluster = Cluster::start_command(command);
    let counts = tally(cluster.addr(), "/", 600, 3);
    assert_exact_rotation(&counts, 3);
    let (status, log) = cluster.stop();
    assert!(status.success(), "{log}");
    assert!(
        !log.contains("Traceback"),
        "the Python server failed:\n{log}"
    );
    assert_counters_match(&log, &counts);
}

#[test]
fn with_wait_ready_a_worker_serves_once_it_reports_ready() {
    require_root();
    let mut command = cluster_run(&["--workers", "2"]);
    command.args([
        "--wait-ready",
        "--",
        "python3",
        "-c",
        PYTHON_SERVER,
        "notify",
    ]);
    let cluster = Cluster::start_command(command);
    let log = cluster.log();
    for slot in 0..2 {
        assert!(log.contains(&format!("worker ready slot={slot}")), "{log}");
    }
    let counts = tally(cluster.addr(), "/", 200, 2);
    assert_exact_rotation(&counts, 2);
}

#[test]
fn with_wait_ready_a_silent_worker_is_killed_and_never_counted_ready() {
    let mut command = cluster_run(&[
        "--workers",
        "1",
        "--steering",
        "hash",
        "--ready-timeout",
        "1",
    ]);
    command.args(["--wait-ready", "--", "python3", "-c", PYTHON_SERVER]);
    let cluster = Cluster::spawn_command(command);
    let killed = cluster.wait_for_log(Duration::from_secs(10), |log| {
        (log.matches("did not report READY=1 in time").count() >= 2).then_some(())
    });
    let log = cluster.log();
    assert!(killed.is_some(), "{log}");
    assert!(
        ready_line(&log).is_none(),
        "the pool was reported ready:\n{log}"
    );
    assert!(log.contains("restarting with backoff"), "{log}");
    let (status, log) = cluster.stop();
    assert!(status.success(), "{log}");
}
