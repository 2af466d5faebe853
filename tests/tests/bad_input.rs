//! Bad input ends `cluster run` with a one-line error that names the fix and a non-zero exit:
//! never a panic, a hang, or a half-started pool.

use std::{net::TcpListener, process::Command};

use cluster_tests::{
    SharedBinary, as_nobody, cluster_command, cluster_run, require_root, run_to_exit,
    without_bpf_syscall,
};

/// Runs the command, expects `code`, and returns the `error:` line, asserting it is the only
/// line that says anything and that nothing panicked.
fn expect_error(command: Command, code: i32) -> String {
    let (status, stderr) = run_to_exit(command);
    assert_eq!(status.code(), Some(code), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    let error = lines
        .iter()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_else(|| panic!("no `error:` line in:\n{stderr}"));
    error.to_string()
}

/// A runtime error: exactly one line on stderr, exit status 1.
fn expect_runtime_error(command: Command) -> String {
    let (status, stderr) = run_to_exit(command);
    assert_eq!(status.code(), Some(1), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one line:\n{stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    lines[0].to_owned()
}

#[test]
fn zero_workers() {
    let error = expect_error(cluster_command(&["run", "--workers", "0"]), 2);
    assert!(error.contains("at least 1 worker"), "{error}");
}

#[test]
fn non_numeric_workers() {
    let error = expect_error(cluster_command(&["run", "--workers", "abc"]), 2);
    assert!(
        error.contains("whole number of workers, `max`, or `-N`"),
        "{error}"
    );
}

#[test]
fn ipv6_address_without_brackets() {
    let error = expect_error(cluster_command(&["run", "--listen", "::1:8080"]), 2);
    assert!(error.contains("in brackets, as in [::1]:8080"), "{error}");
}

#[test]
fn listen_name_that_does_not_resolve() {
    let error = expect_runtime_error(cluster_command(&[
        "run",
        "--listen",
        "no-such-host.invalid:8080",
        "--steering",
        "hash",
    ]));
    assert!(
        error.contains("cannot resolve `no-such-host.invalid` for --listen"),
        "{error}"
    );
}

#[test]
fn unknown_log_format() {
    let error = expect_error(cluster_command(&["run", "--log-format", "xml"]), 2);
    assert!(error.contains("xml"), "{error}");
}

#[test]
fn unparsable_listen_address() {
    let error = expect_error(cluster_command(&["run", "--listen", "localhost:80:80"]), 2);
    assert!(error.contains("--listen"), "{error}");
}

#[test]
fn unknown_steering_mode() {
    let error = expect_error(cluster_command(&["run", "--steering", "random"]), 2);
    assert!(error.contains("random"), "{error}");
}

#[test]
fn port_held_without_reuseport() {
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap().to_string();
    for mode in ["round-robin", "hash", "shared"] {
        let error = expect_runtime_error(cluster_command(&[
            "run",
            "--workers",
            "2",
            "--listen",
            &addr,
            "--steering",
            mode,
        ]));
        assert!(error.contains("already in use"), "{mode}: {error}");
        assert!(
            error.contains("choose another --listen port"),
            "{mode}: {error}"
        );
    }
}

#[test]
fn address_not_on_this_host() {
    // 192.0.2.0/24 is TEST-NET-1, assigned to no host.
    let error = expect_runtime_error(cluster_command(&[
        "run",
        "--listen",
        "192.0.2.1:8080",
        "--steering",
        "hash",
    ]));
    assert!(
        error.contains("no local interface has that address"),
        "{error}"
    );
}

#[test]
fn missing_command() {
    let error = expect_runtime_error(cluster_run(&[
        "--steering",
        "hash",
        "--",
        "no-such-program-xyz",
    ]));
    assert!(
        error.contains("`no-such-program-xyz` not found in PATH"),
        "{error}"
    );
}

#[test]
fn too_little_privilege_names_what_is_missing() {
    require_root();
    let binary = SharedBinary::new();
    let mut command = binary.run(&["--workers", "1"]);
    as_nobody(&mut command);
    let error = expect_runtime_error(command);
    assert!(
        error.contains("run as root, or with CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN)"),
        "{error}"
    );
    assert!(
        error.contains("`--steering hash` needs none of them"),
        "{error}"
    );
}

#[test]
fn kernel_without_bpf_is_named() {
    let mut command = cluster_run(&["--workers", "1", "--steering", "sticky"]);
    without_bpf_syscall(&mut command);
    let error = expect_runtime_error(command);
    assert!(
        error.contains("this kernel cannot run the eBPF steering program"),
        "{error}"
    );
    assert!(error.contains("use `--steering hash` instead"), "{error}");
}

#[test]
fn worker_subcommand_without_a_socket() {
    let error = expect_runtime_error(cluster_command(&["worker"]));
    assert!(error.contains("started by `cluster run`"), "{error}");
}

#[test]
fn second_pool_on_the_same_port_is_refused() {
    // Both would be SO_REUSEPORT sockets of the same user: without the check the second pool
    // would silently join the first one's group and take over its steering.
    let first = cluster_tests::Cluster::start(&["--workers", "1", "--steering", "hash"]);
    let addr = first.addr().to_string();
    let error = expect_runtime_error(cluster_command(&[
        "run",
        "--workers",
        "1",
        "--listen",
        &addr,
        "--steering",
        "hash",
    ]));
    assert!(error.contains("already in use"), "{error}");
}
