//! Worker containment: what a worker started dies with it, so an orphan cannot keep the
//! worker's socket (and the port) after the worker exits.

use std::time::Duration;

use cluster_tests::{Cluster, all_gone, cluster_run, require_root};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

/// A server forked by the worker's shell: it is not `LISTEN_PID` (so not `PYTHON_SERVER`, which
/// checks that), but it accepts on fd 3, which makes the worker ready.
const FORKED_SERVER: &str = r#"
import socket
listener = socket.socket(fileno=3)
while True:
    listener.accept()[0].close()
"#;

/// The children of `pid` (from /proc, Linux 3.5+).
fn children(pid: Pid) -> Vec<Pid> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .map(Pid::from_raw)
        .collect()
}

#[test]
fn a_shell_workers_child_dies_with_it() {
    require_root();
    // `sh` forks the server instead of exec'ing it: the worker is the shell.
    let mut command = cluster_run(&["--workers", "1"]);
    command.args(["--", "sh", "-c", "python3 -c \"$0\" & wait", FORKED_SERVER]);
    let cluster = Cluster::start_command(command);
    let shell = cluster.started_pid(0, 0).expect("worker started");
    let server = cluster
        .wait_for_log(Duration::from_secs(10), |_| {
            children(shell).first().copied()
        })
        .unwrap_or_else(|| panic!("the shell started no server\n{}", cluster.log()));
    kill(shell, Signal::SIGKILL).expect("kill the worker");
    assert!(
        all_gone(&[server], Duration::from_secs(10)),
        "the orphaned server {server} outlived its worker\n{}",
        cluster.log()
    );
    // The slot got a new worker, which serves.
    let replaced = cluster.wait_for_log(Duration::from_secs(30), |_| cluster.started_pid(0, 1));
    assert!(replaced.is_some(), "{}", cluster.log());
}
