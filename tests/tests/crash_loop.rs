//! Crash loops end: a slot whose worker keeps exiting right after it starts gives up after
//! `--max-restarts` unstable starts. A COMMAND that never starts ends the supervisor with status 4
//! and its stderr in the error, or the error of its exec when that failed; a pool whose other
//! slots work serves on without the failed slot, which `status` shows as `failed` and a reload
//! starts afresh.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    path::Path,
    time::{Duration, Instant},
};

use cluster_tests::{
    BreakableServer, Cluster, EXIT_CANNOT_START, NetNs, ScratchDir, all_gone, cluster_command,
    cluster_run, field, get, require_root, run_captured,
};
use nix::unistd::Pid;

#[test]
fn a_command_that_exits_at_once_ends_the_supervisor_with_its_stderr() {
    require_root();
    let mut command = cluster_run(&["--workers", "2"]);
    command.args(["--", "sh", "-c", "echo boom >&2; exit 3"]);
    let started = Instant::now();
    // Bounded by run_captured; with the defaults the slot gives up about 26 s after the start.
    let out = run_captured(command);
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(EXIT_CANNOT_START), "{}", out.stderr);
    // The promise: such a command ends the supervisor within 30 s. The backoff between
    // the 9 starts adds up to 25.5 s of timers; the rest is process starts.
    assert!(took < Duration::from_secs(30), "exited after {took:?}");
    let error = out.stderr.lines().last().unwrap_or_default();
    assert!(error.starts_with("error: "), "{}", out.stderr);
    assert!(error.contains("boom"), "no stderr tail in: {error}");
    assert!(error.contains("exit code 3"), "no exit status in: {error}");
    let gave_up = out
        .stderr
        .lines()
        .find(|l| field(l, "unstable_starts") == Some("9"))
        .unwrap_or_else(|| panic!("no error line for the slot that gave up:\n{}", out.stderr));
    assert!(field(gave_up, "slot").is_some(), "{gave_up}");
    assert_eq!(field(gave_up, "stderr"), Some("boom"), "{gave_up}");
    let workers: Vec<Pid> = out
        .stderr
        .lines()
        .filter(|l| l.contains("worker started"))
        .filter_map(|l| Some(Pid::from_raw(field(l, "pid")?.parse().ok()?)))
        .collect();
    assert!(workers.len() >= 9, "{}", out.stderr);
    assert!(
        all_gone(&workers, Duration::from_secs(5)),
        "workers left behind"
    );
}

/// Executable files that the kernel cannot run: execve fails in the worker after fork, and the
/// supervisor learns it from the worker's exec-status pipe, without waiting on it. Each start is
/// an unstable one told by the exec's error, and the supervisor ends with status 4 naming that
/// error, with what it means for the file.
#[test]
fn a_command_whose_exec_fails_ends_the_supervisor_naming_the_exec_error() {
    require_root();
    let dir = ScratchDir::new("exec-fails");
    let cases = [
        // Neither ELF nor `#!`: ENOEXEC.
        (
            dir.executable("not-a-program", "hello world\n"),
            "Exec format error",
            "a script needs a first line `#!INTERPRETER`",
        ),
        // A script whose interpreter does not exist: ENOENT, for a file that exists.
        (
            dir.executable("script", "#!/no/such/interpreter\necho hi\n"),
            "No such file or directory",
            "the interpreter its `#!` line names, `/no/such/interpreter`, does not exist",
        ),
    ];
    for (program, errno_text, meaning) in &cases {
        exec_fails(program, errno_text, meaning);
    }
}

/// Runs a pool of `program` until it gives up, and checks that the exec's error names the
/// program, `errno_text` and `meaning`, in the log's fields and in the last line.
fn exec_fails(program: &Path, errno_text: &str, meaning: &str) {
    let mut command = cluster_run(&["--workers", "2", "--max-restarts", "2"]);
    command.args(["--log-format", "json", "--"]).arg(program);
    let out = run_captured(command);
    assert_eq!(out.status.code(), Some(EXIT_CANNOT_START), "{}", out.stderr);
    let exec_error = format!("exec of `{}` failed: {errno_text}", program.display());
    let events: Vec<serde_json::Value> = out
        .stderr
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    // Every failed start, the restart and the give-up, by their `status` field.
    let told: Vec<&serde_json::Value> = events
        .iter()
        .map(|e| &e["fields"])
        .filter(|f| {
            f["status"]
                .as_str()
                .is_some_and(|s| s.starts_with(&exec_error))
        })
        .collect();
    assert!(told.len() >= 3, "{}", out.stderr);
    for fields in &told {
        let status = fields["status"].as_str().unwrap_or_default();
        assert!(status.contains(meaning), "{status}");
        assert!(fields["pid"].is_i64(), "a worker was forked: {fields}");
    }
    let gave_up = told
        .iter()
        .find(|f| f["unstable_starts"] == 2 && f["stderr"].is_string())
        .unwrap_or_else(|| panic!("no event for the slot that gave up:\n{}", out.stderr));
    assert_eq!(gave_up["stderr"], "none (the worker was not started)");
    let error = out.stderr.lines().last().unwrap_or_default();
    assert!(error.starts_with("error: "), "{}", out.stderr);
    assert!(
        error.contains(&format!("could not be started: {exec_error}")),
        "{error}"
    );
    assert!(error.contains(meaning), "{error}");
    let workers: Vec<Pid> = told
        .iter()
        .filter_map(|f| Some(Pid::from_raw(i32::try_from(f["pid"].as_i64()?).ok()?)))
        .collect();
    assert!(
        all_gone(&workers, Duration::from_secs(5)),
        "workers left behind"
    );
}

#[test]
fn a_slot_that_crash_loops_fails_while_the_others_serve_until_a_reload() {
    require_root();
    NetNs::isolated(|ns| {
        // Slot 1's worker exits at once with status 3; slots 0 and 2 serve.
        let server = BreakableServer::new();
        server.break_it();
        let addr: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let mut command = cluster_command(&["run", "--listen", &addr.to_string()]);
        command.args(["--log-format", "json"]);
        // Six unstable starts take 3.1 s of backoff: the other slots have run past the 1 s
        // minimum uptime by then, so the pool is known to work and serves on.
        command
            .args(["--workers", "3", "--max-restarts", "6", "--"])
            .args(server.command(Some(1)));
        ns.enter(&mut command);
        let mut cluster = Cluster::spawn_command(command);
        let answering = cluster.wait_for_log(Duration::from_secs(30), |_| {
            cluster
                .control(&["status", "--json"])
                .status
                .success()
                .then_some(())
        });
        assert!(answering.is_some(), "no control socket:\n{}", cluster.log());
        if let Err(status) = wait_for_phases(&cluster, &["serving", "failed", "serving"]) {
            panic!("slot 1 did not fail: {status}\n{}", cluster.log());
        }
        let status = cluster.status();
        assert_eq!(status["serving"], 2, "{status}");
        assert_eq!(
            status["rows"][1]["pid"],
            serde_json::Value::Null,
            "{status}"
        );
        assert!(cluster.is_running(), "{}", cluster.log());
        assert_eq!(serving_slots(addr, 12), BTreeSet::from([0, 2]));
        // The error event, by its fixed fields.
        let gave_up = cluster.wait_for_log(Duration::from_secs(10), |log| {
            log.lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find(|e| e["level"] == "ERROR" && e["fields"]["unstable_starts"] == 6)
        });
        let gave_up = gave_up.unwrap_or_else(|| panic!("no error event:\n{}", cluster.log()));
        let fields = &gave_up["fields"];
        assert_eq!(fields["slot"], 1, "{gave_up}");
        assert_eq!(
            (&fields["serving"], &fields["slots"]),
            (&2.into(), &3.into())
        );
        assert_eq!(fields["status"], "exit code 3", "{gave_up}");
        assert_eq!(fields["stderr"], "broken build", "{gave_up}");
        assert!(
            fields["command"]
                .as_str()
                .unwrap_or_default()
                .starts_with("sh -c "),
            "{gave_up}"
        );

        // A fixed deploy: the reload replaces slots 0 and 2 and starts slot 1 afresh.
        server.repair();
        let reload = cluster.control(&["reload"]);
        assert!(reload.status.success(), "{reload:?}\n{}", cluster.log());
        if let Err(status) = wait_for_phases(&cluster, &["serving", "serving", "serving"]) {
            panic!("slot 1 did not come back: {status}\n{}", cluster.log());
        }
        assert_eq!(serving_slots(addr, 12), BTreeSet::from([0, 1, 2]));
        let (status, log) = cluster.stop();
        assert!(status.success(), "{status}\n{log}");
    });
}

/// Polls `status --json` (up to 30 s) until the slots' phases are `phases`, one row per slot.
/// Returns the last status seen.
fn wait_for_phases(cluster: &Cluster, phases: &[&str]) -> Result<(), serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = cluster.status();
        let rows: Vec<&str> = status["rows"]
            .as_array()
            .expect("rows")
            .iter()
            .filter_map(|row| row["phase"].as_str())
            .collect();
        if rows == phases {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(status);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The slots that answered `requests` requests, one new connection each; every one must succeed.
fn serving_slots(addr: SocketAddr, requests: usize) -> BTreeSet<u32> {
    (0..requests)
        .map(|_| {
            let reply = get(addr, "/", None).unwrap_or_else(|f| panic!("request failed: {f:?}"));
            assert_eq!(reply.status, 200, "{reply:?}");
            reply.slot.expect("x-worker-slot")
        })
        .collect()
}
