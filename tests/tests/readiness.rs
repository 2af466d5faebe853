//! Readiness from a standard sd_notify client: `systemd-notify --ready` (Debian's `systemd`
//! package) run by the worker's shell, as root and as another user. As root it sends its
//! parent's pid and then a `BARRIER=1` carrying a descriptor; as another user it can only send
//! its own pid, a process in the worker's process group. And 64 demo workers started at once
//! all report ready, though the readiness socket's queue holds 10 datagrams at a time.

use std::{os::unix::process::CommandExt as _, path::Path};

use cluster_tests::{
    Cluster, NetNs, PYTHON_SERVER, SharedBinary, as_nobody, assert_exact_rotation, cluster_run,
    field, require_root, tally,
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

/// Sends READY=1 with 20 descriptors to a supervisor that may hold only 30 and holds about 16:
/// the kernel installs what fits and truncates the control data (MSG_CTRUNC). Then sends a
/// clean READY=1.
const FLOODING_NOTIFIER: &str = r#"
import os, socket
target = os.environ["NOTIFY_SOCKET"]
if target.startswith("@"):
    target = "\0" + target[1:]
client = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
client.connect(target)
fds = [os.open("/dev/null", os.O_RDONLY) for _ in range(20)]
socket.send_fds(client, [b"READY=1\n"], fds)
client.send(b"READY=1\n")
os.execvp("python3", ["python3", "-c", os.environ["SERVER"]])
"#;

#[test]
fn a_truncated_notification_closes_its_descriptors_and_names_its_sender() {
    // `--hang-timeout 0`: no connection counter under hash, so no BPF descriptors count against
    // the low descriptor limit below.
    let mut command = cluster_run(&[
        "--workers",
        "1",
        "--steering",
        "hash",
        "--wait-ready",
        "--hang-timeout",
        "0",
    ]);
    command.args(["--", "python3", "-c", FLOODING_NOTIFIER]);
    command.env("SERVER", PYTHON_SERVER);
    // SAFETY: setrlimit is async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 30,
                rlim_max: 30,
            };
            libc::setrlimit(libc::RLIMIT_NOFILE, &raw const limit);
            Ok(())
        });
    }
    let cluster = Cluster::start_command(command);
    let log = cluster.log();
    let worker = cluster.started_pid(0, 0).unwrap();
    let dropped = log
        .lines()
        .find(|l| l.contains("did not fit the receive buffer"))
        .unwrap_or_else(|| panic!("the truncated notification was not reported:\n{log}"));
    assert!(dropped.contains(&format!("pid {worker}")), "{dropped}");
    let ready = log.lines().find(|l| l.contains("worker ready")).unwrap();
    assert_eq!(field(ready, "pid"), Some(worker.to_string().as_str()));
    // Every descriptor that arrived was closed: the supervisor holds its usual 16 or so, not
    // the 14 that fit on top.
    let held = std::fs::read_dir(format!("/proc/{}/fd", cluster.pid()))
        .unwrap()
        .count();
    assert!(held <= 20, "the supervisor holds {held} descriptors");
    let counts = tally(cluster.addr(), "/", 5, 1);
    assert_eq!(counts.values().sum::<u64>(), 5);
}

/// 64 workers start at once and all send READY=1 to one datagram socket, whose receive queue
/// holds `net.unix.max_dgram_qlen` at a time (10 by default; 1 here, in a namespace of its own,
/// so that the queue is full whatever the scheduling): those that find it full try again, so
/// every one serves on its first start, none killed for missing its deadline.
#[test]
fn sixty_four_workers_starting_at_once_all_report_ready() {
    require_root();
    NetNs::isolated(|ns| {
        ns.sysctl("net.unix.max_dgram_qlen", "1");
        let cluster = ns.start_cluster(&["--workers", "64", "--ready-timeout", "60"]);
        let status = cluster.status();
        assert_eq!(status["serving"], 64, "{status}");
        let rows = status["rows"].as_array().expect("rows");
        assert_eq!(rows.len(), 64, "{status}");
        for row in rows {
            assert_eq!(row["restarts"], 0, "a worker was restarted: {row}");
        }
        let (exit, log) = cluster.stop();
        assert!(exit.success(), "{log}");
    });
}
