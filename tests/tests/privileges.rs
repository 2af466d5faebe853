//! Running without root, as the README says: file capabilities set with `setcap` on a copy of
//! the binary, or CAP_BPF and CAP_PERFMON handed down by `setpriv`; and `hash` and `shared`,
//! which need no privilege at all. Every test runs the binary as `nobody` from a directory that
//! user can enter, wherever the checkout lives.

use std::process::Command;

use cluster_tests::{
    Cluster, NetNs, SharedBinary, as_nobody, assert_exact_rotation, get, require_root,
    steering_stats, tally,
};

/// The README's one-liner.
const CAPABILITIES: &str = "cap_bpf,cap_perfmon,cap_net_bind_service+ep";

#[test]
fn setcap_lets_another_user_run_the_program_on_a_low_port() {
    require_root(); // to set file capabilities and become `nobody`
    let binary = SharedBinary::new();
    let status = Command::new("setcap")
        .args([CAPABILITIES])
        .arg(binary.path())
        .status()
        .expect("run setcap (Debian package libcap2-bin; `cargo xtask test` installs it as root)");
    assert!(status.success(), "setcap failed");

    // Port 80 is free in a namespace of our own; below 1024 it needs cap_net_bind_service.
    let ns = NetNs::new();
    let mut command = binary.command(&["run", "--listen", "127.0.0.1:80", "--workers", "2"]);
    ns.enter(&mut command);
    as_nobody(&mut command);
    let cluster = Cluster::start_command(command);
    let addr = cluster.addr();
    let counts = ns.run(|| tally(addr, "/", 200, 2));
    assert_exact_rotation(&counts, 2);
    let (status, log) = cluster.stop();
    assert!(status.success(), "{log}");
    let connections: u64 = steering_stats(&log).values().map(|(c, _)| c).sum();
    assert_eq!(
        connections, 200,
        "the program counted every connection\n{log}"
    );
}

#[test]
fn cap_bpf_and_cap_perfmon_are_enough_for_the_program() {
    require_root(); // to hand out capabilities
    let binary = SharedBinary::new();
    let mut command = Command::new("setpriv");
    command
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .args([
            "--inh-caps=-all,+bpf,+perfmon",
            "--ambient-caps=-all,+bpf,+perfmon",
        ])
        .arg(binary.path())
        .args(["run", "--listen", "127.0.0.1:0", "--workers", "2"]);
    let cluster = Cluster::start_command(command);
    let counts = tally(cluster.addr(), "/", 100, 2);
    assert_exact_rotation(&counts, 2);
}

#[test]
fn hash_and_shared_modes_need_no_privileges() {
    require_root(); // to become `nobody`
    let binary = SharedBinary::new();
    for mode in ["hash", "shared"] {
        let mut command = binary.run(&["--workers", "2", "--steering", mode]);
        as_nobody(&mut command);
        let cluster = Cluster::start_command(command);
        let reply = get(cluster.addr(), "/", None).expect("a pool run by nobody serves");
        assert_eq!(reply.status, 200, "{mode}");
        let (status, log) = cluster.stop();
        assert!(status.success(), "{mode}: {log}");
    }
}
