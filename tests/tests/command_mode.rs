//! `cluster run -- COMMAND`: every worker runs the user's program with its socket passed the
//! systemd way, and the program steers it like the demo.

use std::time::Duration;

use cluster_tests::{
    Cluster, assert_exact_rotation, cluster_run, ready_line, require_root, steering_stats, tally,
};

/// A server that knows nothing of `cluster`: it takes fd 3 as sd_listen_fds(3) describes,
/// checks the variables, and answers each connection with its slot and pid. Given the argument
/// `notify`, it reports readiness as sd_notify(3) describes (`@` is the abstract namespace).
const PYTHON_SERVER: &str = r#"
import os, socket, sys
assert os.environ["LISTEN_FDS"] == "1", os.environ.get("LISTEN_FDS")
assert os.environ["LISTEN_PID"] == str(os.getpid()), (os.environ["LISTEN_PID"], os.getpid())
assert os.environ["LISTEN_FDNAMES"] == "cluster"
slot = os.environ["CLUSTER_WORKER_ID"]
listener = socket.socket(fileno=3)
assert listener.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
if sys.argv[1:] == ["notify"]:
    target = os.environ["NOTIFY_SOCKET"]
    if target.startswith("@"):
        target = "\0" + target[1:]
    socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b"READY=1\n", target)
while True:
    conn, _ = listener.accept()
    conn.recv(65536)
    body = "Handled by process %d (worker %s)\n" % (os.getpid(), slot)
    head = "HTTP/1.1 200 OK\r\nx-worker-slot: %s\r\nx-worker-pid: %d\r\n" % (slot, os.getpid())
    head += "content-length: %d\r\nconnection: close\r\n\r\n" % len(body)
    conn.sendall((head + body).encode())
    conn.close()
"#;

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
    let selected: std::collections::BTreeMap<u32, u64> = steering_stats(&log)
        .into_iter()
        .map(|(slot, (sel, _))| (slot, sel))
        .collect();
    assert_eq!(selected, counts, "{log}");
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
