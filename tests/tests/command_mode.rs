//! `cluster run -- COMMAND`: every worker runs the user's program with its socket passed the
//! systemd way, and the program steers it like the demo.

use cluster_tests::{
    Cluster, assert_exact_rotation, cluster_command, require_root, steering_stats, tally,
};

/// A server that knows nothing of `cluster`: it takes fd 3 as sd_listen_fds(3) describes,
/// checks the variables, and answers each connection with its slot and pid.
const PYTHON_SERVER: &str = r#"
import os, socket
assert os.environ["LISTEN_FDS"] == "1", os.environ.get("LISTEN_FDS")
assert os.environ["LISTEN_PID"] == str(os.getpid()), (os.environ["LISTEN_PID"], os.getpid())
assert os.environ["LISTEN_FDNAMES"] == "cluster"
slot = os.environ["CLUSTER_WORKER_ID"]
listener = socket.socket(fileno=3)
assert listener.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
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
    let mut command = cluster_command(&["run", "--listen", "127.0.0.1:0", "--workers", "3"]);
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
