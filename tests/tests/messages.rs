//! Supervisor↔worker messages: `cluster broadcast` reaches every worker and `cluster send` one
//! (each seen through the demo worker's `GET /message`), a worker started later gets the last
//! broadcast, a COMMAND that is drained reads `{"type":"drain"}` on fd 4 before its SIGTERM, and
//! what a worker writes on fd 4 is logged as a `worker message`.

use std::{
    collections::BTreeMap,
    thread,
    time::{Duration, Instant},
};

use cluster_tests::{Cluster, PYTHON_SERVER, cluster_run, get, require_root};

/// What `GET /message` says, by worker pid, once every one of `workers` pids has answered.
fn messages_by_pid(cluster: &Cluster, workers: usize) -> BTreeMap<i32, String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = BTreeMap::new();
    while seen.len() < workers {
        assert!(
            Instant::now() < deadline,
            "only {seen:?} answered\n{}",
            cluster.log()
        );
        let reply = get(cluster.addr(), "/message", None).expect("GET /message");
        let body = if reply.status == 200 {
            reply.body.trim().to_owned()
        } else {
            String::new()
        };
        seen.insert(reply.pid.expect("x-worker-pid"), body);
    }
    seen
}

/// Polls `GET /message` on all `workers` until `done` holds for what they say (30 s at most);
/// returns that.
fn wait_for_messages(
    cluster: &Cluster,
    workers: usize,
    done: impl Fn(&BTreeMap<i32, String>) -> bool,
) -> BTreeMap<i32, String> {
    // Messages travel asynchronously.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let seen = messages_by_pid(cluster, workers);
        if done(&seen) {
            return seen;
        }
        assert!(Instant::now() < deadline, "{seen:?}\n{}", cluster.log());
        thread::sleep(Duration::from_millis(50));
    }
}

const USERS: &str = r#"{"users":42}"#;

#[test]
fn broadcast_reaches_every_worker_and_send_reaches_one() {
    require_root();
    let cluster = Cluster::start(&["--workers", "3"]);
    let out = cluster.control(&["broadcast", USERS]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout.trim(), "delivered to 3 worker(s)");
    wait_for_messages(&cluster, 3, |seen| seen.values().all(|m| m == USERS));

    let out = cluster.control(&["send", "1", r#""hello""#]);
    assert_eq!(out.stdout.trim(), "delivered to 1 worker(s)", "{out:?}");
    let slot1 = i32::try_from(cluster.serving_pids()[&1]).unwrap();
    let seen = wait_for_messages(&cluster, 3, |seen| seen.values().any(|m| m == r#""hello""#));
    let hello: Vec<i32> = seen
        .iter()
        .filter(|(_, m)| *m == r#""hello""#)
        .map(|(p, _)| *p)
        .collect();
    assert_eq!(hello, [slot1], "{seen:?}");
    assert_eq!(seen.values().filter(|m| *m == USERS).count(), 2, "{seen:?}");

    // Workers started later get the last broadcast too.
    let out = cluster.control(&["reload"]);
    assert!(out.status.success(), "{out:?}");
    wait_for_messages(&cluster, 3, |seen| seen.values().all(|m| m == USERS));
    let out = cluster.control(&["send", "7", "1"]);
    assert!(!out.status.success(), "{out:?}");
    assert!(out.stderr.contains("no worker in slot 7"), "{out:?}");
    assert_eq!(out.stderr.trim_end().lines().count(), 1, "{out:?}");
}

#[test]
fn what_a_worker_writes_on_its_channel_is_logged() {
    require_root();
    let script = r#"printf '{"hi":1}\nnot json\n' >&4; exec python3 -c "$0""#;
    let mut command = cluster_run(&["--workers", "1"]);
    command.args(["--", "sh", "-c", script, PYTHON_SERVER]);
    let cluster = Cluster::start_command(command);
    let logged = cluster.wait_for_log(Duration::from_secs(30), |log| {
        let message = log
            .lines()
            .find(|l| l.contains("worker message") && l.contains(r#"json={"hi":1}"#));
        let skipped = log.lines().any(|l| l.contains("not JSON"));
        (message.is_some() && skipped).then_some(())
    });
    assert!(logged.is_some(), "{}", cluster.log());
}

/// Reads fd 4 in a thread, writes the first `drain` message it gets to the file named by the
/// last argument, and ends on SIGTERM once it has (or after 10 s), so that the drain message,
/// sent before the SIGTERM, is seen even on a busy machine. Prefixed to `PYTHON_SERVER`.
const DRAIN_WATCHER: &str = r#"
import json, os, signal, sys, threading
def watch():
    for line in os.fdopen(4):
        if json.loads(line).get("type") == "drain":
            with open(sys.argv[-1], "w") as out:
                out.write(line)
            return
watcher = threading.Thread(target=watch, daemon=True)
watcher.start()
def stop(*_):
    watcher.join(10)
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
"#;

#[test]
fn a_drained_command_reads_the_drain_message_before_its_sigterm() {
    require_root();
    let marker = std::env::temp_dir().join(format!("cluster-drain-seen-{}", std::process::id()));
    let _ = std::fs::remove_file(&marker);
    let mut command = cluster_run(&["--workers", "1"]);
    command
        .args([
            "--",
            "python3",
            "-c",
            &format!("{DRAIN_WATCHER}{PYTHON_SERVER}"),
        ])
        .arg(&marker);
    let cluster = Cluster::start_command(command);
    let out = cluster.control(&["drain", "0"]);
    assert!(out.status.success(), "{out:?}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let seen = loop {
        match std::fs::read_to_string(&marker) {
            Ok(line) if line.ends_with('\n') => break line,
            _ if Instant::now() > deadline => panic!("no drain message seen\n{}", cluster.log()),
            _ => thread::sleep(Duration::from_millis(50)),
        }
    };
    let _ = std::fs::remove_file(&marker);
    let message: serde_json::Value = serde_json::from_str(&seen).expect("one JSON line");
    assert_eq!(message, serde_json::json!({"type": "drain"}));
    let (status, log) = cluster.stop();
    assert!(status.success(), "{status}\n{log}");
    assert!(!log.contains("Traceback"), "{log}");
}
