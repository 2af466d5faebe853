//! Signals sent one by one to a serving pool, and the exit status of a stop: no signal that has
//! no meaning ends the pool, SIGUSR1 logs a status line per worker, SIGQUIT stops gracefully,
//! and a stop that had to kill a worker exits 3 naming each pid killed.

use std::{
    collections::BTreeSet,
    os::unix::process::{CommandExt as _, ExitStatusExt as _},
    thread,
    time::{Duration, Instant},
};

use cluster_tests::{Cluster, all_gone, cluster_run, field, get, require_root, tally};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

/// Sends a signal by number (real-time signals have no `Signal` variant).
fn send(pid: Pid, signal: i32) {
    // SAFETY: kill(2) with a pid we started.
    let rc = unsafe { libc::kill(pid.as_raw(), signal) };
    assert_eq!(rc, 0, "kill({pid}, {signal})");
}

/// The pids that answered `requests` requests.
fn serving_pids(cluster: &Cluster, requests: usize) -> BTreeSet<i32> {
    (0..requests)
        .map(|_| {
            let reply = get(cluster.addr(), "/", None)
                .unwrap_or_else(|f| panic!("request failed: {f:?}\n{}", cluster.log()));
            reply.pid.expect("x-worker-pid")
        })
        .collect()
}

#[test]
fn signals_without_a_meaning_leave_the_pool_serving() {
    require_root();
    let mut cluster = Cluster::start(&["--workers", "2"]);
    let pids = serving_pids(&cluster, 4);
    assert_eq!(pids.len(), 2);
    let logged = [
        ("SIGWINCH", libc::SIGWINCH),
        ("SIGALRM", libc::SIGALRM),
        ("SIGVTALRM", libc::SIGVTALRM),
        ("SIGPROF", libc::SIGPROF),
        ("SIGIO", libc::SIGIO),
        ("SIGPWR", libc::SIGPWR),
        ("SIGSTKFLT", libc::SIGSTKFLT),
        ("SIGRTMIN", libc::SIGRTMIN()),
        ("SIGRTMIN+5", libc::SIGRTMIN() + 5),
        ("SIGRTMIN+30", libc::SIGRTMAX()),
    ];
    for (name, signal) in logged {
        send(cluster.pid(), signal);
        let wanted = format!("signal={name} ");
        let seen = cluster.wait_for_log(Duration::from_secs(10), |log| {
            log.lines()
                .any(|l| l.contains(&wanted) && l.contains("ignored"))
                .then_some(())
        });
        assert!(seen.is_some(), "{name} was not logged\n{}", cluster.log());
        assert!(
            cluster.is_running(),
            "{name} ended the pool\n{}",
            cluster.log()
        );
    }
    // SIGPIPE is ignored outright: nothing to log.
    send(cluster.pid(), libc::SIGPIPE);
    thread::sleep(Duration::from_millis(200));
    assert!(cluster.is_running(), "SIGPIPE ended the pool");
    assert_eq!(
        serving_pids(&cluster, 4),
        pids,
        "the same workers still serve"
    );
    let (status, log) = cluster.stop();
    assert_eq!(status.code(), Some(0), "{log}");
}

#[test]
fn sigusr1_logs_one_status_line_per_worker() {
    require_root();
    let cluster = Cluster::start(&["--workers", "2"]);
    let counts = tally(cluster.addr(), "/", 10, 1);
    let victim = cluster.started_pid(1, 0).expect("slot 1");
    kill(victim, Signal::SIGKILL).unwrap();
    let replaced = cluster.wait_for_log(Duration::from_secs(10), |_| cluster.started_pid(1, 1));
    let replacement = replaced.unwrap_or_else(|| panic!("slot 1 not refilled\n{}", cluster.log()));
    cluster
        .wait_for_log(Duration::from_secs(10), |log| {
            log.contains(&format!("worker ready slot=1 pid={replacement}"))
                .then_some(())
        })
        .unwrap_or_else(|| panic!("replacement not ready\n{}", cluster.log()));

    kill(cluster.pid(), Signal::SIGUSR1).unwrap();
    let lines = cluster
        .wait_for_log(Duration::from_secs(10), |log| {
            let lines: Vec<String> = log
                .lines()
                .filter(|l| l.contains("worker status"))
                .map(str::to_owned)
                .collect();
            (lines.len() == 2 && log.contains("pool status")).then_some(lines)
        })
        .unwrap_or_else(|| panic!("no status lines\n{}", cluster.log()));
    for (slot, line) in lines.iter().enumerate() {
        let slot = u32::try_from(slot).unwrap();
        assert_eq!(
            field(line, "slot"),
            Some(slot.to_string().as_str()),
            "{line}"
        );
        assert_eq!(field(line, "phase"), Some("serving"), "{line}");
        assert!(field(line, "uptime_s").is_some(), "{line}");
        let expected_pid = if slot == 1 {
            replacement
        } else {
            cluster.started_pid(0, 0).unwrap()
        };
        assert_eq!(
            field(line, "pid"),
            Some(expected_pid.to_string().as_str()),
            "{line}"
        );
        let restarts = if slot == 1 { "1" } else { "0" };
        assert_eq!(field(line, "restarts"), Some(restarts), "{line}");
        // The program's count for the slot: the 10 connections, and nothing since.
        let steered = counts.get(&slot).copied().unwrap_or(0).to_string();
        assert_eq!(field(line, "steered"), Some(steered.as_str()), "{line}");
        // The worker's own socket: slot 1's replacement has had no connection yet.
        let own = if slot == 1 { "0".to_owned() } else { steered };
        assert_eq!(field(line, "connections"), Some(own.as_str()), "{line}");
        assert_eq!(field(line, "open"), Some("0"), "{line}");
    }
}

#[test]
fn sigquit_stops_gracefully_and_lets_requests_finish() {
    require_root();
    let cluster = Cluster::start(&["--workers", "2"]);
    let addr = cluster.addr();
    let workers = [
        cluster.started_pid(0, 0).unwrap(),
        cluster.started_pid(1, 0).unwrap(),
    ];
    let in_flight = thread::spawn(move || get(addr, "/work?iterations=300000000", None));
    thread::sleep(Duration::from_millis(200));
    let (status, log) = cluster.stop_by(Signal::SIGQUIT);
    let reply = in_flight.join().unwrap();
    assert_eq!(reply.map(|r| r.status), Ok(200), "{log}");
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(log.contains("signal=SIGQUIT"), "{log}");
    assert!(all_gone(&workers, Duration::from_secs(2)), "{log}");
}

/// The pids first started in slots 0 and 1.
fn first_workers(cluster: &Cluster) -> BTreeSet<i32> {
    (0..2)
        .map(|slot| cluster.started_pid(slot, 0).unwrap().as_raw())
        .collect()
}

/// A COMMAND that ignores SIGTERM (the ignored disposition survives exec).
fn stubborn_pool(shutdown_timeout: &str) -> Cluster {
    let mut command = cluster_run(&[
        "--workers",
        "2",
        "--steering",
        "hash",
        "--shutdown-timeout",
        shutdown_timeout,
    ]);
    command.args(["--", "sh", "-c", "trap '' TERM; exec sleep 300"]);
    started(Cluster::spawn_command(command), 2)
}

/// Waits until each of the first `slots` slots has started its worker and the worker runs
/// `sleep` (the pools here run `… exec sleep 300`). A worker is logged as started once forked,
/// before its exec: until then it still has the supervisor's blocked signals, and a shell has
/// not yet set its `trap`. These workers never accept, so `ready` is not waited for.
fn started(cluster: Cluster, slots: u32) -> Cluster {
    let all = cluster.wait_for_log(Duration::from_secs(30), |_| {
        (0..slots)
            .all(|slot| {
                cluster.started_pid(slot, 0).is_some_and(|pid| {
                    std::fs::read_to_string(format!("/proc/{pid}/comm"))
                        .is_ok_and(|comm| comm.trim() == "sleep")
                })
            })
            .then_some(())
    });
    assert!(
        all.is_some(),
        "workers not running sleep:\n{}",
        cluster.log()
    );
    cluster
}

/// The pids the log says were killed at shutdown.
fn killed_pids(log: &str) -> BTreeSet<i32> {
    log.lines()
        .filter(|l| l.contains("did not stop in time"))
        .filter_map(|l| field(l, "pid")?.parse().ok())
        .collect()
}

#[test]
fn a_worker_killed_at_the_shutdown_timeout_makes_the_exit_status_3() {
    let cluster = stubborn_pool("1");
    let workers = first_workers(&cluster);
    let (status, log) = cluster.stop();
    assert_eq!(status.code(), Some(3), "{log}");
    assert_eq!(killed_pids(&log), workers, "{log}");
}

#[test]
fn a_second_sigterm_cuts_the_stop_short_with_exit_status_3() {
    let cluster = stubborn_pool("60");
    let workers = first_workers(&cluster);
    kill(cluster.pid(), Signal::SIGTERM).unwrap();
    let stopping = cluster.wait_for_log(Duration::from_secs(10), |log| {
        log.contains("signal=SIGTERM").then_some(())
    });
    assert!(stopping.is_some(), "{}", cluster.log());
    let second = Instant::now();
    let (status, log) = cluster.stop();
    assert_eq!(status.code(), Some(3), "{log}");
    assert_eq!(killed_pids(&log), workers, "{log}");
    assert!(
        second.elapsed() < Duration::from_secs(30),
        "the second SIGTERM did not cut the 60 s stop short: {:?}",
        second.elapsed()
    );
}

#[test]
fn fault_signals_keep_their_default_action() {
    let mut command = cluster_run(&["--workers", "1", "--steering", "hash"]);
    // SAFETY: setrlimit is async-signal-safe; no core file is left behind.
    unsafe {
        command.pre_exec(|| {
            let none = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::setrlimit(libc::RLIMIT_CORE, &raw const none);
            Ok(())
        });
    }
    let cluster = Cluster::start_command(command);
    let worker = cluster.started_pid(0, 0).unwrap();
    let (status, log) = cluster.stop_by(Signal::SIGABRT);
    assert_eq!(status.signal(), Some(libc::SIGABRT), "{status}\n{log}");
    assert!(
        all_gone(&[worker], Duration::from_secs(3)),
        "the worker outlived its supervisor"
    );
}

/// `nohup`, or a shell's `trap '' …`, ignores signals for the supervisor, which blocks others
/// for its signalfd: a worker must still start with every signal at its default action, none
/// blocked, and no descriptor beyond its hand-off (0 to 3, and 4, its message channel).
#[test]
fn workers_start_with_a_clean_signal_state_and_only_their_descriptors() {
    let mut command = std::process::Command::new("sh");
    command.arg("-c").arg(format!(
        "trap '' HUP INT QUIT USR1 TERM; exec 7</dev/null; exec {} run --listen 127.0.0.1:0 --workers 1 --steering hash -- sleep 300",
        cluster_tests::cluster_binary().display()
    ));
    let cluster = started(Cluster::spawn_command(command), 1);
    let worker = cluster.started_pid(0, 0).unwrap();
    let status = std::fs::read_to_string(format!("/proc/{worker}/status")).unwrap();
    let mask = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .unwrap_or_else(|| panic!("no {name} in {status}"))
            .to_owned()
    };
    assert_eq!(mask("SigBlk:"), "0000000000000000", "blocked signals");
    assert_eq!(mask("SigIgn:"), "0000000000000000", "ignored signals");
    let mut fds: Vec<u32> = std::fs::read_dir(format!("/proc/{worker}/fd"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    fds.sort_unstable();
    assert_eq!(fds, vec![0, 1, 2, 3, 4], "descriptors of the worker");
    let channel = std::fs::read_link(format!("/proc/{worker}/fd/4")).unwrap();
    assert!(
        channel.to_string_lossy().starts_with("socket:"),
        "{channel:?}"
    );
    // SIGTERM reaches it: the stop is clean although the supervisor's parent ignored TERM.
    let (status, log) = cluster.stop();
    assert_eq!(status.code(), Some(0), "{log}");
}
