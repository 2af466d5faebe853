//! A COMMAND without `--wait-ready` serves only once it has accepted a probe connection from its
//! own socket (under `hash` and `shared`: once /proc shows it waiting on its socket): a worker
//! still loading stays `starting`, the pool's `ready` comes only when every
//! worker accepts, a COMMAND that dies at start (or never accepts) never makes it ready, and the
//! probe is counted nowhere the workers' own connections are.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    thread,
    time::{Duration, Instant},
};

use cluster_tests::{
    Cluster, EXIT_CANNOT_START, NetNs, PYTHON_SERVER, assert_counters_match, cluster_command,
    cluster_run, get, ready_line, require_root, run_captured,
};

/// What `/proc/PID/comm` says: `sh` while the worker sleeps, `python3` once it exec'd the server.
fn comm(pid: i64) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|c| c.trim().to_owned())
}

#[test]
fn a_worker_still_loading_stays_starting_and_ready_comes_once_both_accept() {
    loading_then_ready("round-robin");
}

/// Under `hash` no program steers a probe: the worker is seen in /proc blocked in `accept` on
/// its own socket instead.
#[test]
fn under_hash_ready_comes_once_both_wait_on_their_sockets() {
    loading_then_ready("hash");
}

/// Under `shared` the one socket is every worker's: each is seen waiting on it.
#[test]
fn under_shared_ready_comes_once_both_wait_on_the_socket() {
    loading_then_ready("shared");
}

/// Two workers that sleep 3 s before they exec the server, under `steering`: each stays
/// `starting` while it is the shell, and the pool's `ready` comes only once both serve.
fn loading_then_ready(steering: &str) {
    require_root();
    NetNs::isolated(|ns| {
        let mut command = cluster_command(&[
            "run",
            "--listen",
            "127.0.0.1:8080",
            "--workers",
            "2",
            "--steering",
            steering,
        ]);
        command.args([
            "--",
            "sh",
            "-c",
            "sleep 3; exec python3 -c \"$0\"",
            PYTHON_SERVER,
        ]);
        ns.enter(&mut command);
        let cluster = Cluster::spawn_command(command);
        let addr: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        // Watch status until both serve: a worker that serves must have become the server, and
        // while one is still the shell the pool is not ready.
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut seen_loading = 0;
        loop {
            assert!(
                Instant::now() < deadline,
                "never served:\n{}",
                cluster.log()
            );
            let out = cluster.control(&["status", "--json"]);
            if !out.status.success() {
                // The control socket is not bound yet.
                thread::sleep(Duration::from_millis(50));
                continue;
            }
            let status: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
            let rows: BTreeMap<u64, (String, i64)> = status["rows"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|r| {
                    Some((
                        r["slot"].as_u64()?,
                        (r["phase"].as_str()?.to_owned(), r["pid"].as_i64()?),
                    ))
                })
                .collect();
            let mut serving = 0;
            for (slot, (phase, pid)) in &rows {
                let name = comm(*pid);
                if phase == "serving" {
                    serving += 1;
                    assert_eq!(
                        name.as_deref(),
                        Some("python3"),
                        "slot {slot} serves before its server runs"
                    );
                } else if name.as_deref() == Some("sh") {
                    assert_eq!(phase, "starting", "slot {slot}");
                    seen_loading += 1;
                    assert!(
                        ready_line(&cluster.log()).is_none(),
                        "ready while slot {slot} still loads:\n{}",
                        cluster.log()
                    );
                }
            }
            if serving == 2 {
                break;
            }
            thread::sleep(Duration::from_millis(100));
        }
        assert!(
            seen_loading > 0,
            "status never showed a worker still loading"
        );
        let line = cluster
            .wait_for_log(Duration::from_secs(5), ready_line)
            .unwrap_or_else(|| panic!("no ready line:\n{}", cluster.log()));
        assert!(line.contains("workers=2"), "{line}");
        // Right after `ready` a request is answered by a worker, not left to wait.
        let reply = get(addr, "/", None).expect("a request right after ready");
        assert_eq!(reply.status, 200);
        let slot = reply.slot.expect("x-worker-slot");
        let (status, log) = cluster.stop();
        assert!(status.success(), "{log}");
        assert!(!log.contains("Traceback"), "the server failed:\n{log}");
        // The probes are not counted: the program's counters say exactly what the client made
        // (`hash` and `shared` have no program, and send no probe).
        if steering == "round-robin" {
            let mut counts = BTreeMap::from([(0, 0), (1, 0)]);
            counts.insert(slot, 1);
            assert_counters_match(&log, &counts);
        }
    });
}

/// Runs `command` to its end: the supervisor must give up with status 4, never having reported
/// a worker or the pool ready.
fn assert_never_ready(command: std::process::Command) {
    let out = run_captured(command);
    assert_eq!(out.status.code(), Some(EXIT_CANNOT_START), "{}", out.stderr);
    assert!(
        ready_line(&out.stderr).is_none(),
        "the pool was reported ready:\n{}",
        out.stderr
    );
    assert!(!out.stderr.contains("worker ready"), "{}", out.stderr);
}

#[test]
fn a_command_that_dies_at_start_never_makes_the_pool_ready() {
    require_root();
    let mut command = cluster_run(&["--workers", "2", "--max-restarts", "2", "--min-uptime", "1"]);
    command.args(["--", "sh", "-c", "exit 3"]);
    assert_never_ready(command);
}

#[test]
fn a_command_that_never_accepts_is_killed_at_its_ready_timeout_and_never_ready() {
    require_root();
    let mut command = cluster_run(&[
        "--workers",
        "1",
        "--max-restarts",
        "2",
        "--ready-timeout",
        "1",
    ]);
    // Runs, holds its socket, never accepts.
    command.args(["--", "sleep", "600"]);
    assert_never_ready(command);
}
