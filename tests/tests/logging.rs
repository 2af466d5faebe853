//! The pool's log: it survives its reader going away, it carries every worker's output line by
//! line with slot, pid and stream (as text or JSON), and `RUST_LOG=debug` is this project's own
//! debug output, not aya's.

use std::{
    io::{BufRead as _, BufReader},
    process::Stdio,
    thread,
    time::{Duration, Instant},
};

use cluster_tests::{
    Cluster, cluster_command, cluster_run, field, free_local_addr, get, require_root, wait_for_exit,
};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

/// `cluster run … 2>&1 | head -2`: the reader takes two lines and goes away; the next log line
/// (a worker's exit) must neither panic the supervisor nor take the pool down.
#[test]
fn the_pool_outlives_the_reader_of_its_log() {
    require_root();
    let addr = free_local_addr();
    let mut command = cluster_command(&["run", "--listen", &addr.to_string(), "--workers", "2"]);
    command
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("start cluster");
    let supervisor = Pid::from_raw(i32::try_from(child.id()).unwrap());
    let mut log = BufReader::new(child.stderr.take().unwrap());
    for _ in 0..2 {
        let mut line = String::new();
        log.read_line(&mut line).unwrap();
    }
    drop(log);

    // Wait until both workers serve, then kill one: its exit is the next thing logged.
    let deadline = Instant::now() + Duration::from_secs(20);
    let victim = loop {
        if let Ok(reply) = get(addr, "/", None)
            && reply.slot == Some(0)
        {
            break reply.pid.unwrap();
        }
        assert!(Instant::now() < deadline, "the pool never served");
        thread::sleep(Duration::from_millis(50));
    };
    kill(Pid::from_raw(victim), Signal::SIGKILL).unwrap();

    // A replacement serves slot 0, so the supervisor lived through the failed writes.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(reply) = get(addr, "/", None)
            && reply.slot == Some(0)
            && reply.pid != Some(victim)
        {
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the supervisor died with its log reader: {status}");
        }
        assert!(Instant::now() < deadline, "slot 0 was never refilled");
        thread::sleep(Duration::from_millis(50));
    }
    kill(supervisor, Signal::SIGUSR1).unwrap(); // one more line into the closed pipe
    kill(supervisor, Signal::SIGTERM).unwrap();
    let status = wait_for_exit(
        &mut child,
        Duration::from_secs(20),
        "the supervisor did not stop",
    );
    assert_eq!(status.code(), Some(0), "{status}");
}

/// Prints a line on each stream, then one of 20000 bytes, then serves nothing and waits.
const CHATTY: &str = r#"echo "out $CLUSTER_WORKER_ID"; echo "err $CLUSTER_WORKER_ID" >&2; head -c 20000 /dev/zero | tr '\0' y; echo; echo "after $CLUSTER_WORKER_ID"; exec sleep 300"#;

fn chatty_command(extra: &[&str]) -> std::process::Command {
    let mut command = cluster_run(&["--workers", "2", "--steering", "hash"]);
    command.args(extra).args(["--", "sh", "-c", CHATTY]);
    command
}

/// The chatty pool, not waited for: its workers never accept, so it never becomes ready.
fn chatty_pool(extra: &[&str]) -> Cluster {
    Cluster::spawn_command(chatty_command(extra))
}

#[test]
fn worker_output_is_logged_line_by_line_with_slot_pid_and_stream() {
    let cluster = chatty_pool(&[]);
    let lines = cluster
        .wait_for_log(Duration::from_secs(10), |log| {
            let lines: Vec<String> = log
                .lines()
                .filter(|l| l.contains(" worker: "))
                .map(str::to_owned)
                .collect();
            (lines.len() >= 8).then_some(lines)
        })
        .unwrap_or_else(|| panic!("worker output missing\n{}", cluster.log()));
    for slot in 0..2u32 {
        let pid = cluster.started_pid(slot, 0).unwrap().to_string();
        let of_slot: Vec<&String> = lines
            .iter()
            .filter(|l| field(l, "slot") == Some(&slot.to_string()))
            .collect();
        assert_eq!(of_slot.len(), 4, "{of_slot:#?}");
        for line in &of_slot {
            assert_eq!(field(line, "pid"), Some(pid.as_str()), "{line}");
        }
        let find = |text: &str| {
            of_slot
                .iter()
                .find(|l| l.contains(text))
                .unwrap_or_else(|| panic!("no line with {text:?}: {of_slot:#?}"))
        };
        assert_eq!(
            field(find(&format!("out {slot} ")), "stream"),
            Some("stdout")
        );
        assert_eq!(
            field(find(&format!("err {slot} ")), "stream"),
            Some("stderr")
        );
        assert_eq!(
            field(find(&format!("after {slot} ")), "stream"),
            Some("stdout")
        );
        let long = find("[line cut at 16 KiB]");
        assert_eq!(long.matches('y').count(), 16 * 1024, "cut at 16 KiB");
        assert_eq!(field(long, "cut"), Some("true"), "{long}");
    }
}

#[test]
fn worker_output_in_a_json_log_is_json_with_the_same_fields() {
    // The harness waits for the text `ready` line; here the events themselves are awaited.
    let cluster = Cluster::spawn_command(chatty_command(&["--log-format", "json"]));
    let events = cluster
        .wait_for_log(Duration::from_secs(10), |log| {
            let events = events_of(log, "worker");
            (events.len() >= 8).then_some(events)
        })
        .unwrap_or_else(|| panic!("worker output missing\n{}", cluster.log()));
    let started = events_of(&cluster.log(), "cluster::supervisor::pool");
    let pid0 = started
        .iter()
        .find(|e| e["fields"]["message"] == "worker started" && e["fields"]["slot"] == 0)
        .map(|e| e["fields"]["pid"].clone())
        .unwrap_or_else(|| panic!("no `worker started` event: {started:#?}"));
    let err0 = events
        .iter()
        .find(|e| e["fields"]["message"] == "err 0")
        .unwrap_or_else(|| panic!("{events:#?}"));
    assert_eq!(err0["fields"]["slot"], 0);
    assert_eq!(err0["fields"]["pid"], pid0);
    assert_eq!(err0["fields"]["stream"], "stderr");
}

/// The JSON events of `target` in a log that must be JSON throughout.
fn events_of(log: &str, target: &str) -> Vec<serde_json::Value> {
    log.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .filter(|e: &serde_json::Value| e["target"] == target)
        .collect()
}

#[test]
fn log_passthrough_keeps_raw_inherited_output() {
    let cluster = chatty_pool(&["--log-passthrough"]);
    let raw = cluster.wait_for_log(Duration::from_secs(10), |log| {
        (log.lines().any(|l| l == "err 0") && log.lines().any(|l| l == "err 1")).then_some(())
    });
    assert!(raw.is_some(), "{}", cluster.log());
    assert!(!cluster.log().contains(" worker: "), "{}", cluster.log());
}

#[test]
fn rust_log_debug_is_this_projects_debug_output() {
    require_root(); // loads the program, whose loading aya logs at debug
    let mut command = cluster_run(&["--workers", "1"]);
    command.env("RUST_LOG", "debug");
    let cluster = Cluster::start_command(command);
    let debug_line = cluster.wait_for_log(Duration::from_secs(10), |log| {
        log.lines()
            .find(|l| l.contains("DEBUG") && l.contains("worker serving"))
            .map(str::to_owned)
    });
    assert!(debug_line.is_some(), "no debug output\n{}", cluster.log());
    let (_, log) = cluster.stop();
    assert!(
        !log.contains("aya"),
        "aya's internals at RUST_LOG=debug:\n{log}"
    );
    assert!(!log.contains("RLIMIT_MEMLOCK"), "{log}");

    let mut command = cluster_run(&["--workers", "1"]);
    command.env("RUST_LOG", "info,aya_obj=debug");
    let (_, log) = Cluster::start_command(command).stop();
    assert!(
        log.contains("DEBUG aya_obj"),
        "aya_obj=debug shows aya's lines:\n{log}"
    );
}

/// A worker that never stops printing: the supervisor still reads its signals and stops in time.
#[test]
fn a_worker_that_prints_without_pause_does_not_stall_the_supervisor() {
    let mut command = cluster_run(&["--workers", "2", "--steering", "hash"]);
    command.args([
        "--shutdown-timeout",
        "5",
        "--",
        "sh",
        "-c",
        "while :; do echo spam; done",
    ]);
    // Its workers never accept, so the pool never becomes ready: wait for their output.
    let cluster = Cluster::spawn_command(command);
    let spam = cluster.wait_for_log(Duration::from_secs(30), |log| {
        let spam = log.matches("spam").count();
        (spam > 100).then_some(spam)
    });
    assert!(
        spam.is_some(),
        "the workers' output is not read:\n{}",
        cluster.log()
    );
    // `stop` fails the test if the supervisor takes more than 30 s.
    let (status, log) = cluster.stop();
    assert_eq!(
        status.code(),
        Some(0),
        "{}",
        &log[log.len().saturating_sub(2000)..]
    );
}

/// A log reader that stops reading without going away (a stuck log shipper): the pipe fills, and
/// the supervisor drops log lines instead of blocking on them.
#[test]
fn the_pool_outlives_a_stalled_log_reader() {
    let mut command = cluster_run(&["--workers", "2", "--steering", "hash"]);
    command.args(["--", "sh", "-c", "while :; do echo spam; done"]);
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("start cluster");
    let stalled = child.stderr.take().unwrap(); // held open, never read
    thread::sleep(Duration::from_secs(2));
    let supervisor = Pid::from_raw(i32::try_from(child.id()).unwrap());
    kill(supervisor, Signal::SIGTERM).unwrap();
    let status = wait_for_exit(
        &mut child,
        Duration::from_secs(20),
        "the supervisor blocked on its stalled log and did not stop",
    );
    drop(stalled);
    assert_eq!(status.code(), Some(0), "{status}");
}
