//! Readiness from a standard sd_notify client: `systemd-notify --ready` (Debian's `systemd`
//! package) run by the worker's shell, as root and as another user. As root it sends its
//! parent's pid and then a `BARRIER=1` carrying a descriptor; as another user it can only send
//! its own pid, a process in the worker's process group.

use std::path::Path;

use cluster_tests::{
    Cluster, PYTHON_SERVER, SharedBinary, as_nobody, assert_exact_rotation, cluster_run,
    require_root, tally,
};

const SYSTEMD_NOTIFY: &str = "/usr/bin/systemd-notify";

fn require_systemd_notify() {
    assert!(
        Path::new(SYSTEMD_NOTIFY).is_file(),
        "{SYSTEMD_NOTIFY} is missing: install Debian's `systemd` package (`cargo xtask test` does, as root)"
    );
}

/// The worker: a shell that reports ready with systemd-notify, then execs the Python server.
fn notifying_worker() -> [&'static str; 4] {
    let script = "systemd-notify --ready || exit 1; exec python3 -c \"$0\"";
    ["sh", "-c", script, PYTHON_SERVER]
}

fn assert_clean_readiness(cluster: &Cluster, workers: u32) {
    let log = cluster.log();
    for slot in 0..workers {
        assert!(log.contains(&format!("worker ready slot={slot} ")), "{log}");
    }
    assert!(!log.contains("did not report READY=1"), "{log}");
    assert!(
        !log.contains("notification"),
        "a notification failed:\n{log}"
    );
}

#[test]
fn systemd_notify_as_root() {
    require_root();
    require_systemd_notify();
    let mut command = cluster_run(&["--workers", "2", "--wait-ready", "--ready-timeout", "20"]);
    command.arg("--").args(notifying_worker());
    let cluster = Cluster::start_command(command);
    assert_clean_readiness(&cluster, 2);
    let counts = tally(cluster.addr(), "/", 100, 2);
    assert_exact_rotation(&counts, 2);
}

#[test]
fn systemd_notify_as_another_user() {
    require_root(); // to become `nobody`
    require_systemd_notify();
    let binary = SharedBinary::new();
    let mut command = binary.run(&[
        "--workers",
        "2",
        "--steering",
        "hash",
        "--wait-ready",
        "--ready-timeout",
        "20",
    ]);
    command.arg("--").args(notifying_worker());
    as_nobody(&mut command);
    let cluster = Cluster::start_command(command);
    assert_clean_readiness(&cluster, 2);
    let counts = tally(cluster.addr(), "/", 20, 2);
    assert_eq!(counts.values().sum::<u64>(), 20);
}
