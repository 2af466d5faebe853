//! The control socket and its subcommands: `status --json` matches the running workers and the
//! program's counters; `reload`, `drain`, `scale` and `stop` act and report; the socket is
//! private (mode 0600 in a 0700 directory, other users refused); subcommands find the only
//! supervisor and ask when there are several; every bad input gets a one-line error and leaves
//! the pool serving; a flood of silent clients is capped and costs nobody else more than a wait.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::{fs::PermissionsExt as _, net::UnixStream},
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use cluster_tests::{
    BreakableServer, Captured, Cluster, ScratchDir, SharedBinary, as_nobody, cluster_command,
    cluster_run, field, get, ready_line, require_root, run_captured, tally,
};

/// The control socket's path, from the `ready` line.
fn control_path(cluster: &Cluster) -> PathBuf {
    let line = ready_line(&cluster.log()).expect("ready line");
    PathBuf::from(field(&line, "control").unwrap_or_else(|| panic!("no control= in {line}")))
}

/// One raw request line on the control socket, and the answer line.
fn raw_request(path: &Path, bytes: &[u8]) -> serde_json::Value {
    let mut stream = UnixStream::connect(path).expect("connect to the control socket");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream.write_all(bytes).expect("send");
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer).expect("read");
    serde_json::from_str(&answer).unwrap_or_else(|e| panic!("answer {answer:?}: {e}"))
}

/// A one-line error on stderr and a non-zero exit.
fn assert_fails_with(out: &Captured, needle: &str) {
    assert!(!out.status.success(), "{out:?}");
    assert_eq!(out.stderr.trim_end().lines().count(), 1, "{out:?}");
    assert!(out.stderr.contains(needle), "wanted {needle:?}: {out:?}");
}

#[test]
fn status_json_matches_the_workers_and_the_programs_counters() {
    require_root();
    let cluster = Cluster::start(&["--workers", "2"]);
    let counts = tally(cluster.addr(), "/", 20, 2);
    let answering: std::collections::BTreeSet<i64> = (0..4)
        .map(|_| i64::from(get(cluster.addr(), "/", None).unwrap().pid.unwrap()))
        .collect();
    assert_eq!(counts.values().sum::<u64>(), 20);
    // Connections leave ESTABLISHED a moment after the client's close reaches the worker.
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        let status = cluster.status();
        let open: i64 = status["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["open"].as_i64().unwrap())
            .sum();
        if open == 0 || Instant::now() > deadline {
            break status;
        }
        thread::sleep(Duration::from_millis(50));
    };
    let rows = status["rows"].as_array().unwrap();
    assert_eq!(status["workers"], 2, "{status}");
    assert_eq!(status["serving"], 2, "{status}");
    assert_eq!(status["supervisor_pid"], cluster.pid().as_raw(), "{status}");
    assert_eq!(rows.len(), 2, "{status}");
    let pids: std::collections::BTreeSet<i64> =
        rows.iter().map(|r| r["pid"].as_i64().unwrap()).collect();
    assert_eq!(pids, answering, "{status}");
    let sum = |key: &str| rows.iter().map(|r| r[key].as_u64().unwrap()).sum::<u64>();
    assert_eq!(sum("connections"), 24, "{status}");
    assert_eq!(sum("steered"), 24, "{status}");
    assert_eq!(sum("migrated"), 0, "{status}");
    for row in rows {
        assert_eq!(row["phase"], "serving", "{status}");
        assert_eq!(row["open"], 0, "{status}");
        assert_eq!(row["restarts"], 0, "{status}");
        assert!(row["rss_bytes"].as_u64().unwrap() > 1 << 20, "{status}");
        assert!(row["uptime_s"].is_u64(), "{status}");
    }
    assert_eq!(status["programs"], serde_json::json!([]), "no --bpf-stats");
    // The table for people names the same workers.
    let table = cluster.control(&["status"]);
    assert!(table.status.success(), "{table:?}");
    for pid in &pids {
        assert!(table.stdout.contains(&pid.to_string()), "{table:?}");
    }
}

/// With `--bpf-stats`, `status --json` carries the kernel's run count and time of the selector
/// (one run per new connection here: no SYN cookies) and of the connection counter.
#[test]
fn status_json_carries_the_programs_run_stats_with_bpf_stats() {
    require_root();
    let cluster = Cluster::start(&["--workers", "2", "--bpf-stats"]);
    let before = cluster.status();
    let counts = tally(cluster.addr(), "/", 20, 2);
    assert_eq!(counts.values().sum::<u64>(), 20);
    let after = cluster.status();
    let stats = |status: &serde_json::Value, name: &str| -> (u64, u64) {
        let programs = status["programs"].as_array().expect("programs");
        let program = programs
            .iter()
            .find(|p| p["program"] == name)
            .unwrap_or_else(|| panic!("no {name} in {status}"));
        (
            program["runs"].as_u64().unwrap(),
            program["run_time_ns"].as_u64().unwrap(),
        )
    };
    let (runs_before, time_before) = stats(&before, "select_worker");
    let (runs_after, time_after) = stats(&after, "select_worker");
    assert_eq!(runs_after - runs_before, 20, "{before}\n{after}");
    assert!(time_after > time_before, "{before}\n{after}");
    // The counter counted exactly these 20 connections on the workers' sockets.
    let established = |status: &serde_json::Value| -> u64 {
        status["rows"]
            .as_array()
            .expect("rows")
            .iter()
            .map(|r| r["connections"].as_u64().expect("connections"))
            .sum()
    };
    assert_eq!(
        established(&after) - established(&before),
        20,
        "{before}\n{after}"
    );
    let (counted_before, counted_time_before) = stats(&before, "count_connections");
    let (counted_after, counted_time_after) = stats(&after, "count_connections");
    assert!(
        counted_time_after > counted_time_before,
        "{before}\n{after}"
    );
    assert!(
        counted_after - counted_before >= 40,
        "each connection reaches and leaves ESTABLISHED: {before}\n{after}"
    );
}

#[test]
fn reload_drain_scale_and_stop_by_subcommand() {
    require_root();
    let cluster = Cluster::start(&["--workers", "2"]);
    let before = cluster.serving_pids();
    let out = cluster.control(&["reload"]);
    assert!(out.status.success(), "{out:?}\n{}", cluster.log());
    assert_eq!(out.stdout.trim(), "replaced 2 worker(s)");
    let after = cluster.serving_pids();
    assert_eq!(after.len(), 2);
    for (slot, pid) in &after {
        assert_ne!(before[slot], *pid, "slot {slot} has a new worker");
    }
    let out = cluster.control(&["drain", "1"]);
    assert_eq!(out.stdout.trim(), "replaced 1 worker(s)", "{out:?}");
    let drained = cluster.serving_pids();
    assert_eq!(drained[&0], after[&0]);
    assert_ne!(drained[&1], after[&1]);

    let out = cluster.control(&["scale", "3"]);
    assert!(out.status.success(), "{out:?}");
    wait_until(|| cluster.serving_pids().len() == 3, "3 serving");
    let out = cluster.control(&["scale", "1"]);
    assert!(out.status.success(), "{out:?}");
    wait_until(
        || cluster.status()["rows"].as_array().unwrap().len() == 1,
        "1 worker left",
    );
    assert_eq!(cluster.status()["workers"], 1);
    assert_eq!(get(cluster.addr(), "/", None).unwrap().status, 200);

    let out = cluster.control(&["stop"]);
    assert!(out.status.success(), "{out:?}");
    let (status, log) = cluster.wait_for_exit();
    assert!(status.success(), "{status}\n{log}");
}

/// Polls `ready` for up to 30 s.
fn wait_until(mut ready: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_reload_that_fails_exits_non_zero_and_a_second_reload_is_refused() {
    require_root();
    let server = BreakableServer::new();
    let cluster = Cluster::start_command(server.cluster_run(2));

    // A COMMAND replacement must run 1 s before it takes over, so this reload lasts 2 s.
    let pid = cluster.pid().to_string();
    let first = thread::spawn(move || run_captured(cluster_command(&["reload", "--pid", &pid])));
    wait_until(
        || cluster.status()["reloading"] == true,
        "the first reload under way",
    );
    let second = cluster.control(&["reload"]);
    assert_fails_with(&second, "a reload is already running");
    let first = first.join().unwrap();
    assert!(first.status.success(), "{first:?}\n{}", cluster.log());

    let before = cluster.serving_pids();
    server.break_it();
    let failed = cluster.control(&["reload"]);
    assert_fails_with(&failed, "reload failed");
    assert!(failed.stderr.contains("slot 0"), "{failed:?}");
    assert_eq!(cluster.serving_pids(), before, "the old workers serve on");
}

#[test]
fn the_control_socket_is_private() {
    require_root();
    let cluster = Cluster::start(&["--workers", "1"]);
    let path = control_path(&cluster);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&path), 0o600, "{}", path.display());
    assert_eq!(mode(path.parent().unwrap()), 0o700, "{}", path.display());
    // Another user cannot reach it. (Run from a copy: the checkout may be closed to `nobody`.)
    let shared = SharedBinary::new();
    let mut command = shared.command(&["status", "--control", path.to_str().unwrap()]);
    as_nobody(&mut command);
    assert_fails_with(&run_captured(command), "permission denied");

    // Even where the file is reachable, the supervisor refuses a peer of another uid.
    let dir = ScratchDir::new("open-control");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let open_path = dir.path().join("ctl.sock");
    let open = Cluster::start_command(cluster_run(&[
        "--workers",
        "1",
        "--control",
        open_path.to_str().unwrap(),
    ]));
    std::fs::set_permissions(&open_path, std::fs::Permissions::from_mode(0o666)).unwrap();
    let mut command = shared.command(&["status", "--control", open_path.to_str().unwrap()]);
    as_nobody(&mut command);
    assert_fails_with(&run_captured(command), "refused: uid 65534");
    assert_eq!(get(open.addr(), "/", None).unwrap().status, 200);
}

#[test]
fn a_flood_of_silent_clients_is_capped_and_the_socket_answers_again_after() {
    require_root();
    let cluster = Cluster::start(&["--workers", "1"]);
    let path = control_path(&cluster);
    // As many silent clients as are served at once (`MAX_CONNECTIONS`), then one more.
    let silent: Vec<UnixStream> = (0..64)
        .map(|_| UnixStream::connect(&path).expect("connect"))
        .collect();
    assert_fails_with(
        &cluster.control(&["status"]),
        "closed the connection without answering",
    );
    drop(silent);
    wait_until(
        || cluster.control(&["status"]).status.success(),
        "status answered once the silent clients left",
    );
    assert_eq!(get(cluster.addr(), "/", None).unwrap().status, 200);
}

#[test]
fn bad_input_gets_a_one_line_error_and_the_pool_serves_on() {
    require_root();
    let cluster = Cluster::start(&["--workers", "2"]);
    let path = control_path(&cluster);
    // A client that connects and says nothing holds up nobody.
    let _silent = UnixStream::connect(&path).unwrap();
    for (bytes, needle) in [
        (b"nonsense\n".to_vec(), "malformed request"),
        (b"{\"command\":\"explode\"}\n".to_vec(), "malformed request"),
        (
            b"{\"command\":\"scale\",\"workers\":0}\n".to_vec(),
            "cannot scale to 0",
        ),
        (
            b"{\"command\":\"drain\",\"slot\":7}\n".to_vec(),
            "no slot 7",
        ),
        (b"\xff\xfe\n".to_vec(), "malformed request"),
        (b"\n".to_vec(), "empty request"),
        (vec![b'x'; 100 * 1024], "longer than"),
    ] {
        let answer = raw_request(&path, &bytes);
        assert_eq!(answer["ok"], false, "{answer}");
        let error = answer["error"].as_str().unwrap();
        assert!(error.contains(needle), "wanted {needle:?}: {error}");
        assert!(!error.contains('\n'), "{error}");
    }
    assert_fails_with(&cluster.control(&["drain", "9"]), "no slot 9");
    // A bad command line: exit status 2 and one line that names the help.
    for (args, needle) in [
        (&["scale", "0"][..], "0 is not in 1..=1024"),
        (&["frobnicate"][..], "unrecognized subcommand 'frobnicate'"),
    ] {
        let out = if args[0] == "scale" {
            cluster.control(args)
        } else {
            run_captured(cluster_command(args))
        };
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        assert_eq!(out.stderr.trim_end().lines().count(), 1, "{out:?}");
        assert!(out.stderr.contains(needle), "{out:?}");
        assert!(out.stderr.contains("`cluster --help`"), "{out:?}");
    }
    assert_fails_with(
        &run_captured(cluster_command(&["status", "--pid", "2147483646"])),
        "no supervisor listens on",
    );
    assert_eq!(cluster.serving_pids().len(), 2);
    assert_eq!(get(cluster.addr(), "/", None).unwrap().status, 200);
}

#[test]
fn subcommands_find_the_only_supervisor_and_ask_when_there_are_several() {
    require_root();
    let dir = ScratchDir::new("xdg");
    let in_dir = |args: &[&str]| {
        let mut command = cluster_command(args);
        command.env("XDG_RUNTIME_DIR", dir.path());
        command
    };
    let out = run_captured(in_dir(&["status"]));
    assert_fails_with(&out, "no cluster supervisor is running");
    assert!(out.stderr.contains(dir.path().to_str().unwrap()), "{out:?}");

    let mut first = cluster_run(&["--workers", "1"]);
    first.env("XDG_RUNTIME_DIR", dir.path());
    let first = Cluster::start_command(first);
    let out = run_captured(in_dir(&["status", "--json"]));
    assert!(out.status.success(), "{out:?}");
    assert!(
        out.stdout
            .contains(&format!("\"supervisor_pid\":{}", first.pid())),
        "{out:?}"
    );

    let mut second = cluster_run(&["--workers", "1"]);
    second.env("XDG_RUNTIME_DIR", dir.path());
    let second = Cluster::start_command(second);
    let out = run_captured(in_dir(&["status"]));
    assert_fails_with(&out, "several cluster supervisors are running");
    for pid in [first.pid(), second.pid()] {
        assert!(out.stderr.contains(&format!("pid {pid}")), "{out:?}");
    }
    let out = run_captured(in_dir(&["status", "--pid", &second.pid().to_string()]));
    assert!(out.status.success(), "{out:?}");
}
