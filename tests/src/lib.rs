//! Harness for the integration tests: starts the real `cluster` binary as a user would, waits
//! for its `ready` line, sends HTTP requests from chosen source addresses, reads the program's
//! counters from the final log, and stops everything it started, also when a test fails.
//!
//! Tests panic with the cluster's log instead of returning errors (as aya's integration tests
//! do), and never skip: a missing privilege is a failure that says what is missing.

pub mod load;

use std::{
    collections::BTreeMap,
    io::{self, BufRead as _, BufReader, Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpStream},
    os::unix::{fs::PermissionsExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use nix::{sys::signal::Signal, unistd::Pid};
use socket2::{Domain, Socket, Type};

/// How long a cluster gets to print `ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a cluster gets to exit after SIGTERM (its own worker timeout is 10 s).
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);
/// Socket timeouts of the test client: nothing in a test may hang.
const IO_TIMEOUT: Duration = Duration::from_secs(20);

/// The `cluster` binary under test: `CLUSTER_BIN`, or the one `cargo xtask test` built next to
/// this test executable (`target/<profile>/cluster`).
#[must_use]
pub fn cluster_binary() -> PathBuf {
    built_binary("cluster", "CLUSTER_BIN")
}

/// The bench binary (`cluster-bench`): `CLUSTER_BENCH_BIN`, or the one `cargo xtask test` built
/// next to this test executable.
#[must_use]
pub fn bench_binary() -> PathBuf {
    built_binary("cluster-bench", "CLUSTER_BENCH_BIN")
}

/// Binary `name`: the path in environment variable `env`, or `target/<profile>/name`.
fn built_binary(name: &str, env: &str) -> PathBuf {
    if let Some(bin) = std::env::var_os(env) {
        return bin.into();
    }
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test binary is in target/<profile>/deps");
    let bin = profile_dir.join(name);
    assert!(
        bin.is_file(),
        "{} does not exist: run the tests with `cargo xtask test`, which builds it",
        bin.display()
    );
    bin
}

/// A copy of the `cluster` binary in a fresh directory every user may enter, removed when
/// dropped. Tests that run it as another user use it, so that they pass wherever the checkout
/// lives: a clone under `/root` or in a 0700 temporary directory is closed to other users.
#[derive(Debug)]
pub struct SharedBinary {
    dir: PathBuf,
    path: PathBuf,
}

impl SharedBinary {
    /// Copies the binary under test.
    #[must_use]
    pub fn new() -> Self {
        static COPIES: AtomicU32 = AtomicU32::new(0);
        let n = COPIES.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("cluster-test-{}-{n}", std::process::id()));
        std::fs::create_dir(&dir).expect("create a directory for the shared binary");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = dir.join("cluster");
        // Copied by another process: a file this process held open for writing would be
        // inherited by any child another test thread forks meanwhile, and exec of the copy fails
        // with ETXTBSY until that child has exec'd in turn.
        let copied = Command::new("cp")
            .arg(cluster_binary())
            .arg(&path)
            .status()
            .expect("run cp");
        assert!(
            copied.success(),
            "copy the cluster binary to {}",
            path.display()
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        Self { dir, path }
    }

    /// The copy's path.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `cluster ARGS`, run from the copy.
    #[must_use]
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.path);
        command.args(args);
        command
    }

    /// `cluster run --listen 127.0.0.1:0 ARGS`, run from the copy.
    #[must_use]
    pub fn run(&self, args: &[&str]) -> Command {
        let mut command = self.command(&["run", "--listen", "127.0.0.1:0"]);
        command.args(args);
        command
    }
}

impl Default for SharedBinary {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for SharedBinary {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A fresh directory for one test (`cluster-NAME-PID` in the temporary directory), removed when
/// dropped, also when the test fails.
#[derive(Debug)]
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    /// Creates the directory, replacing a stale one.
    #[must_use]
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("cluster-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create a scratch directory");
        Self(dir)
    }

    /// The directory's path.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// A file `name` in it with `content`, mode 0755.
    #[must_use]
    pub fn executable(&self, name: &str, content: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, content).expect("write a scratch file");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A server that knows nothing of `cluster`: it takes fd 3 as sd_listen_fds(3) describes,
/// checks the variables, and answers each connection with its slot and pid. Given the argument
/// `notify`, it reports readiness as sd_notify(3) describes (`@` is the abstract namespace).
/// Given `block-slot=N`, the worker of slot N stops at a `GET /block` request for an hour, like a
/// single-threaded server stuck in a call; given `sleep-slot=N`, it spends 4 s on a `GET /sleep`
/// request, like a single-threaded server busy with one long request.
pub const PYTHON_SERVER: &str = r#"
import os, socket, sys, time
assert os.environ["LISTEN_FDS"] == "1", os.environ.get("LISTEN_FDS")
assert os.environ["LISTEN_PID"] == str(os.getpid()), (os.environ["LISTEN_PID"], os.getpid())
assert os.environ["LISTEN_FDNAMES"] == "cluster"
slot = os.environ["CLUSTER_WORKER_ID"]
listener = socket.socket(fileno=3)
assert listener.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
if "notify" in sys.argv[1:]:
    target = os.environ["NOTIFY_SOCKET"]
    if target.startswith("@"):
        target = "\0" + target[1:]
    socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b"READY=1\n", target)
blocking = "block-slot=" + slot in sys.argv[1:]
sleeping = "sleep-slot=" + slot in sys.argv[1:]
while True:
    conn, _ = listener.accept()
    request = conn.recv(65536)
    if blocking and request.startswith(b"GET /block "):
        time.sleep(3600)
    if sleeping and request.startswith(b"GET /sleep "):
        time.sleep(4)
    body = "Handled by process %d (worker %s)\n" % (os.getpid(), slot)
    head = "HTTP/1.1 200 OK\r\nx-worker-slot: %s\r\nx-worker-pid: %d\r\n" % (slot, os.getpid())
    head += "content-length: %d\r\nconnection: close\r\n\r\n" % len(body)
    conn.sendall((head + body).encode())
    conn.close()
"#;

/// A COMMAND worker (PYTHON_SERVER) whose next starts fail once [`BreakableServer::break_it`]
/// was called, like a bad build deployed before a reload. The marker file is removed on drop.
#[derive(Debug)]
pub struct BreakableServer {
    marker: PathBuf,
}

impl BreakableServer {
    #[must_use]
    pub fn new() -> Self {
        static COUNT: AtomicU32 = AtomicU32::new(0);
        let n = COUNT.fetch_add(1, Ordering::Relaxed);
        let marker =
            std::env::temp_dir().join(format!("cluster-broken-{}-{n}", std::process::id()));
        let _ = std::fs::remove_file(&marker);
        Self { marker }
    }

    /// `cluster run` with `workers` workers of this server.
    #[must_use]
    pub fn cluster_run(&self, workers: u32) -> Command {
        let mut command = cluster_run(&["--workers", &workers.to_string()]);
        command.arg("--").args(self.command(None));
        command
    }

    /// The COMMAND that runs this server; with `only_slot`, only that slot's worker breaks.
    #[must_use]
    pub fn command(&self, only_slot: Option<u32>) -> [String; 4] {
        let slot_test = only_slot.map_or_else(String::new, |slot| {
            format!("[ \"$CLUSTER_WORKER_ID\" = {slot} ] && ")
        });
        let script = format!(
            "if {slot_test}[ -e '{}' ]; then echo 'broken build' >&2; exit 3; fi; \
             exec python3 -c \"$0\"",
            self.marker.display()
        );
        ["sh".into(), "-c".into(), script, PYTHON_SERVER.into()]
    }

    /// From now on, a new worker exits at once with status 3, writing `broken build` to stderr.
    pub fn break_it(&self) {
        std::fs::write(&self.marker, b"").expect("create the marker");
    }

    /// From now on, new workers serve again (a fixed build).
    pub fn repair(&self) {
        std::fs::remove_file(&self.marker).expect("remove the marker");
    }
}

impl Default for BreakableServer {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for BreakableServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.marker);
    }
}

/// The exit status with which the supervisor says the COMMAND cannot start (README, "Exit
/// status").
pub const EXIT_CANNOT_START: i32 = 4;

/// Fails the test unless it runs as root: loading the program needs CAP_BPF and CAP_PERFMON.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test loads the eBPF program and needs root (CI runs as root): run `sudo -E cargo xtask test`"
    );
}

/// A running `cluster run`, stopped (and its workers with it) when dropped.
#[derive(Debug)]
pub struct Cluster {
    child: Option<Child>,
    addr: SocketAddr,
    log: Arc<Mutex<String>>,
    /// Disconnects when the log reader has read everything: every process that held the
    /// cluster's stderr (supervisor and workers) has exited.
    log_done: mpsc::Receiver<()>,
}

impl Cluster {
    /// Starts `cluster run --listen 127.0.0.1:0 ARGS` and waits for `ready`.
    #[must_use]
    pub fn start(args: &[&str]) -> Self {
        Self::start_command(cluster_run(args))
    }

    /// Starts `cluster run --listen LISTEN ARGS` and waits for `ready`.
    #[must_use]
    pub fn start_listening(listen: &str, args: &[&str]) -> Self {
        let mut command = Command::new(cluster_binary());
        command.args(["run", "--listen", listen]).args(args);
        Self::start_command(command)
    }

    /// Starts a prepared `cluster` command and waits for `ready`.
    #[must_use]
    pub fn start_command(command: Command) -> Self {
        let mut cluster = Self::spawn_command(command);
        let line = cluster.wait_until_ready();
        cluster.addr = field(&line, "addr")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no addr= in the ready line: {line}"));
        cluster
    }

    /// Starts a prepared `cluster` command without waiting for anything; `addr` is unknown.
    /// The log level is `info` unless the command sets `RUST_LOG` itself.
    #[must_use]
    pub fn spawn_command(mut command: Command) -> Self {
        if !command.get_envs().any(|(key, _)| key == "RUST_LOG") {
            command.env("RUST_LOG", "info");
        }
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = spawn(&mut command);
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("piped stderr");
        let sink = Arc::clone(&log);
        let (done, log_done) = mpsc::channel::<()>();
        thread::spawn(move || {
            let _done = done;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        Self {
            child: Some(child),
            addr: "0.0.0.0:0".parse().unwrap(),
            log,
            log_done,
        }
    }

    /// Waits for the `ready` line; fails at once if the cluster exits first.
    fn wait_until_ready(&mut self) -> String {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(line) = ready_line(&self.log()) {
                return line.to_owned();
            }
            let child = self.child.as_mut().expect("running");
            if let Some(status) = child.try_wait().expect("wait for cluster") {
                self.wait_for_log_end();
                panic!(
                    "cluster exited ({status}) before it was ready:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "cluster did not become ready within {READY_TIMEOUT:?}:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The address the cluster listens on.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The supervisor's pid.
    #[must_use]
    pub fn pid(&self) -> Pid {
        let child = self.child.as_ref().expect("running");
        Pid::from_raw(i32::try_from(child.id()).unwrap())
    }

    /// Everything the supervisor and its workers logged so far.
    #[must_use]
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Polls the log until `found` returns something, or `timeout` passes.
    pub fn wait_for_log<T>(
        &self,
        timeout: Duration,
        mut found: impl FnMut(&str) -> Option<T>,
    ) -> Option<T> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(value) = found(&self.log()) {
                return Some(value);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The pid the log says was started for `slot`, the `nth` time (0 = first).
    #[must_use]
    pub fn started_pid(&self, slot: u32, nth: usize) -> Option<Pid> {
        let wanted = format!("slot={slot}");
        self.log()
            .lines()
            .filter(|l| l.contains("worker started") && l.split_whitespace().any(|w| w == wanted))
            .nth(nth)
            .and_then(|l| field(l, "pid"))
            .and_then(|p| p.parse().ok())
            .map(Pid::from_raw)
    }

    /// Runs the control subcommand `cluster ARGS --pid PID` against this cluster.
    #[must_use]
    pub fn control(&self, args: &[&str]) -> Captured {
        let mut command = cluster_command(args);
        command.args(["--pid", &self.pid().to_string()]);
        run_captured(command)
    }

    /// `cluster status --json`, parsed.
    #[must_use]
    pub fn status(&self) -> serde_json::Value {
        let out = self.control(&["status", "--json"]);
        assert!(
            out.status.success(),
            "status failed: {out:?}\n{}",
            self.log()
        );
        serde_json::from_str(&out.stdout)
            .unwrap_or_else(|err| panic!("status --json is not JSON ({err}): {}", out.stdout))
    }

    /// The pids of the serving workers, by slot, from `status --json`.
    #[must_use]
    pub fn serving_pids(&self) -> BTreeMap<u64, i64> {
        self.status()["rows"]
            .as_array()
            .expect("rows")
            .iter()
            .filter(|row| row["phase"] == "serving")
            .map(|row| {
                (
                    row["slot"].as_u64().expect("slot"),
                    row["pid"].as_i64().expect("pid"),
                )
            })
            .collect()
    }

    /// Sends SIGTERM and waits for the supervisor to exit; returns its status and full log.
    pub fn stop(self) -> (ExitStatus, String) {
        self.stop_by(Signal::SIGTERM)
    }

    /// Sends `signal` and waits for the supervisor to exit; returns its status and full log.
    pub fn stop_by(mut self, signal: Signal) -> (ExitStatus, String) {
        let status = self.stop_with(signal);
        self.wait_for_log_end();
        (status, self.log())
    }

    /// Waits for the supervisor to exit by itself (`cluster stop`); returns its status and log.
    pub fn wait_for_exit(mut self) -> (ExitStatus, String) {
        let mut child = self.child.take().expect("running");
        let what = format!("cluster did not exit:\n{}", self.log());
        let status = wait_for_exit(&mut child, EXIT_TIMEOUT, &what);
        self.wait_for_log_end();
        (status, self.log())
    }

    /// Whether the supervisor is still running (and not a zombie).
    #[must_use]
    pub fn is_running(&mut self) -> bool {
        let child = self.child.as_mut().expect("running");
        child.try_wait().expect("wait for cluster").is_none()
    }

    /// Waits until the log reader has read the last line (at most 10 s: a worker that outlived
    /// its supervisor would keep stderr open, and the assertions on the log then say so).
    fn wait_for_log_end(&self) {
        let _ = self.log_done.recv_timeout(Duration::from_secs(10));
    }

    fn stop_with(&mut self, signal: Signal) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let pid = Pid::from_raw(i32::try_from(child.id()).unwrap());
        let _ = nix::sys::signal::kill(pid, signal);
        let what = format!("cluster did not exit after {signal}:\n{}", self.log());
        wait_for_exit(&mut child, EXIT_TIMEOUT, &what)
    }
}

impl Drop for Cluster {
    /// A test that failed midway still leaves nothing behind: SIGKILL the supervisor, and its
    /// workers die with it (PR_SET_PDEATHSIG).
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs `cluster ARGS` to completion (at most 30 s) and returns exit status and stderr.
#[must_use]
pub fn run_to_exit(mut command: Command) -> (ExitStatus, String) {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = spawn(&mut command);
    let mut stderr = child.stderr.take().expect("piped stderr");
    let reader = thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let what = format!("`cluster` hung instead of exiting: {command:?}");
    let status = wait_for_exit(&mut child, Duration::from_secs(30), &what);
    (status, reader.join().expect("stderr reader"))
}

/// What a command printed, and how it exited.
#[derive(Debug)]
pub struct Captured {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `command` to completion (at most 90 s: a reload may take that long on a busy machine)
/// and returns its exit status, stdout and stderr.
#[must_use]
pub fn run_captured(mut command: Command) -> Captured {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = spawn(&mut command);
    let read_all = |mut pipe: Box<dyn io::Read + Send>| {
        thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let stdout = read_all(Box::new(child.stdout.take().expect("piped stdout")));
    let stderr = read_all(Box::new(child.stderr.take().expect("piped stderr")));
    let what = format!("`cluster` hung instead of exiting: {command:?}");
    let status = wait_for_exit(&mut child, Duration::from_secs(90), &what);
    Captured {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

/// Starts `command`, failing the test with the reason if it cannot.
fn spawn(command: &mut Command) -> Child {
    command
        .spawn()
        .unwrap_or_else(|err| panic!("start {command:?}: {err}"))
}

/// `cluster run --listen 127.0.0.1:0 ARGS`: a pool on a free loopback port.
#[must_use]
pub fn cluster_run(args: &[&str]) -> Command {
    let mut command = cluster_command(&["run", "--listen", "127.0.0.1:0"]);
    command.args(args);
    command
}

/// `cluster ARGS` as a command, for [`run_to_exit`] or [`Cluster::start_command`].
#[must_use]
pub fn cluster_command(args: &[&str]) -> Command {
    let mut command = Command::new(cluster_binary());
    command.args(args);
    command
}

/// Makes `command` run as user and group `nobody`, without capabilities.
pub fn as_nobody(command: &mut Command) -> &mut Command {
    // SAFETY: only async-signal-safe syscalls between fork and exec.
    unsafe {
        command.pre_exec(|| {
            let nobody = 65534;
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(nobody) != 0
                || libc::setuid(nobody) != 0
            {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

/// Makes `command` see a kernel without the bpf(2) syscall (as one built without
/// CONFIG_BPF_SYSCALL): a seccomp filter answers every bpf(2) call with ENOSYS.
pub fn without_bpf_syscall(command: &mut Command) -> &mut Command {
    deny_syscall(
        command,
        u32::try_from(libc::SYS_bpf).unwrap_or(0),
        None,
        libc::ENOSYS,
    )
}

/// Installs a seccomp filter in `command` (before exec) that fails syscall `nr` with `errno`;
/// with `arg = Some((offset, value))`, only when the 32-bit word at that offset of
/// `seccomp_data` equals `value`.
fn deny_syscall(
    command: &mut Command,
    nr: u32,
    arg: Option<(u32, u32)>,
    errno: i32,
) -> &mut Command {
    // SAFETY: only async-signal-safe syscalls between fork and exec; the filter is on the stack.
    unsafe {
        command.pre_exec(move || {
            const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
            let op = |code: u32, k: u32, jt: u8, jf: u8| libc::sock_filter {
                code: u16::try_from(code).unwrap_or(0),
                jt,
                jf,
                k,
            };
            let ld = libc::BPF_LD | libc::BPF_W | libc::BPF_ABS;
            let jeq = libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K;
            let ret = libc::BPF_RET | libc::BPF_K;
            let allow = op(ret, libc::SECCOMP_RET_ALLOW, 0, 0);
            let deny = op(
                ret,
                libc::SECCOMP_RET_ERRNO | u32::try_from(errno).unwrap_or(0),
                0,
                0,
            );
            // Without an argument test, the argument jump goes to `deny` on a hit and a miss.
            let (arg_offset, arg_value, arg_miss) = match arg {
                Some((offset, value)) => (offset, value, 1),
                None => (0, 0, 0),
            };
            let filter = [
                op(ld, 4, 0, 0),
                op(jeq, AUDIT_ARCH_X86_64, 1, 0),
                allow,
                op(ld, 0, 0, 0),
                op(jeq, nr, 0, 3),
                op(ld, arg_offset, 0, 0),
                op(jeq, arg_value, 0, arg_miss),
                deny,
                allow,
            ];
            let program = libc::sock_fprog {
                len: u16::try_from(filter.len()).unwrap_or(0),
                filter: filter.as_ptr().cast_mut(),
            };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER,
                    &raw const program,
                ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

/// Makes `command` see a kernel without IPv6 (booted with `ipv6.disable=1`): a seccomp filter
/// answers socket(AF_INET6, …) with EAFNOSUPPORT.
pub fn without_ipv6(command: &mut Command) -> &mut Command {
    let nr = u32::try_from(libc::SYS_socket).unwrap_or(0);
    let family = u32::try_from(libc::AF_INET6).unwrap_or(0);
    // seccomp_data: nr at offset 0, arch at 4, args[0] (low 32 bits on little-endian) at 16.
    deny_syscall(command, nr, Some((16, family)), libc::EAFNOSUPPORT)
}

/// Restricts `command` to CPU 0, as `taskset -c 0` would.
pub fn on_one_cpu(command: &mut Command) -> &mut Command {
    // SAFETY: sched_setaffinity is a plain syscall on a stack value.
    unsafe {
        command.pre_exec(|| {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(0, &mut set);
            if libc::sched_setaffinity(0, std::mem::size_of_val(&set), &raw const set) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

/// What one request got back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub slot: Option<u32>,
    pub pid: Option<i32>,
    pub body: String,
}

/// How a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The SYN was answered with a RST: nothing accepted the connection.
    Refused,
    /// The connection was accepted, then reset or closed without an answer.
    Reset,
    /// Anything else (timeout, unparsable reply).
    Other,
}

/// One new TCP connection to `addr`, from `source` (port chosen by the kernel) when given, one
/// HTTP/1.1 `GET path` on it with `Connection: close`, and the parsed reply.
///
/// Written on std sockets rather than an HTTP client crate because every test needs exact
/// control of the connection: a fresh one per request (so one request is one SYN the program
/// steers) and a chosen source address (for sticky steering).
pub fn get(addr: SocketAddr, path: &str, source: Option<IpAddr>) -> Result<Reply, Failure> {
    let socket =
        Socket::new(Domain::for_address(addr), Type::STREAM, None).map_err(|_| Failure::Other)?;
    if let Some(ip) = source {
        socket
            .bind(&SocketAddr::new(ip, 0).into())
            .map_err(|_| Failure::Other)?;
    }
    match socket.connect_timeout(&addr.into(), IO_TIMEOUT) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => return Err(Failure::Refused),
        Err(_) => return Err(Failure::Other),
    }
    let mut stream: TcpStream = socket.into();
    stream
        .set_read_timeout(Some(IO_TIMEOUT))
        .map_err(|_| Failure::Other)?;
    stream
        .set_write_timeout(Some(IO_TIMEOUT))
        .map_err(|_| Failure::Other)?;
    send_request(&mut stream, path).map_err(io_failure)?;
    read_reply(&mut stream)
}

/// Writes a `GET path` request that asks the server to close the connection after answering.
pub fn send_request(stream: &mut TcpStream, path: &str) -> io::Result<()> {
    let addr = stream.peer_addr()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes())
}

/// Reads a reply until the server closes the connection.
pub fn read_reply(stream: &mut TcpStream) -> Result<Reply, Failure> {
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(io_failure)?;
    parse_reply(&String::from_utf8_lossy(&raw)).ok_or(Failure::Reset)
}

fn io_failure(err: io::Error) -> Failure {
    match err.kind() {
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe
        | io::ErrorKind::UnexpectedEof => Failure::Reset,
        _ => Failure::Other,
    }
}

fn parse_reply(raw: &str) -> Option<Reply> {
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let mut lines = head.lines();
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let mut reply = Reply {
        status,
        slot: None,
        pid: None,
        body: body.to_owned(),
    };
    for line in lines {
        let (name, value) = line.split_once(':')?;
        match name.trim().to_ascii_lowercase().as_str() {
            "x-worker-slot" => reply.slot = value.trim().parse().ok(),
            "x-worker-pid" => reply.pid = value.trim().parse().ok(),
            _ => {}
        }
    }
    Some(reply)
}

/// Sends `total` requests for `path` from `threads` client threads and returns how many
/// each slot answered. Panics on any failed request.
#[must_use]
pub fn tally(addr: SocketAddr, path: &str, total: usize, threads: usize) -> BTreeMap<u32, u64> {
    let per_thread = total / threads;
    assert_eq!(per_thread * threads, total, "total must divide evenly");
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let path = path.to_owned();
            thread::spawn(move || {
                let mut counts = BTreeMap::new();
                for _ in 0..per_thread {
                    let reply =
                        get(addr, &path, None).unwrap_or_else(|f| panic!("request failed: {f:?}"));
                    assert_eq!(reply.status, 200, "{reply:?}");
                    *counts
                        .entry(reply.slot.expect("x-worker-slot"))
                        .or_insert(0) += 1;
                }
                counts
            })
        })
        .collect();
    let mut counts = BTreeMap::new();
    for handle in handles {
        for (slot, n) in handle.join().expect("client thread") {
            *counts.entry(slot).or_insert(0) += n;
        }
    }
    counts
}

/// The program's per-slot counters from the supervisor's final `steering stats` lines:
/// slot → (connections, migrated): connections established on the slot, each counted once,
/// and connections migrated to it.
#[must_use]
pub fn steering_stats(log: &str) -> BTreeMap<u32, (u64, u64)> {
    log.lines()
        .filter(|l| l.contains("steering stats"))
        .filter_map(|l| {
            Some((
                field(l, "slot")?.parse().ok()?,
                (
                    field(l, "connections")?.parse().ok()?,
                    field(l, "migrated")?.parse().ok()?,
                ),
            ))
        })
        .collect()
}

/// Asserts that the program's per-slot connection counters in the final log equal what the
/// workers answered (`counts`: slot → requests), slot by slot.
pub fn assert_counters_match(log: &str, counts: &BTreeMap<u32, u64>) {
    let connections: BTreeMap<u32, u64> = steering_stats(log)
        .into_iter()
        .map(|(slot, (connections, _))| (slot, connections))
        .collect();
    assert_eq!(
        &connections, counts,
        "the program's counters disagree with the workers\n{log}"
    );
}

/// Waits up to `timeout` for `child` to exit; kills it and fails the test with `what` if it
/// does not.
pub fn wait_for_exit(child: &mut Child, timeout: Duration, what: &str) -> ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("wait for cluster") {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} within {timeout:?}");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// The program's `steering events` counters from the supervisor's final log: name → count.
#[must_use]
pub fn steering_events(log: &str) -> BTreeMap<String, u64> {
    let line = log
        .lines()
        .find(|l| l.contains("steering events"))
        .unwrap_or_else(|| panic!("no `steering events` line:\n{log}"));
    line.split_whitespace()
        .filter_map(|word| {
            let (key, value) = word.split_once('=')?;
            Some((key.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// Asserts that the program never took a fallback path: every connection found its socket at
/// the first try.
pub fn assert_no_fallback(log: &str) {
    let events = steering_events(log);
    for key in ["probed", "last_resort"] {
        assert_eq!(events.get(key), Some(&0), "{key} in {events:?}\n{log}");
    }
}

/// A loopback address with a port that was free a moment ago, for a test that must know the
/// address before the cluster reports it.
#[must_use]
pub fn free_local_addr() -> SocketAddr {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a probe socket");
    probe.local_addr().expect("probe address")
}

/// The supervisor's `ready` line (not a worker's `worker ready`).
#[must_use]
pub fn ready_line(log: &str) -> Option<String> {
    log.lines()
        .find(|l| l.contains(": ready addr="))
        .map(str::to_owned)
}

/// The value of `key=value` in a log line.
#[must_use]
pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(key)?.strip_prefix('='))
}

/// Every listening TCP socket, from /proc/net/tcp and tcp6: (inode, port).
#[must_use]
pub fn listening_sockets() -> Vec<(u64, u16)> {
    let mut found = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) = (cols.get(1), cols.get(3), cols.get(9))
            else {
                continue;
            };
            let port = local
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if let (Some(port), "0A", Ok(inode)) = (port, *state, inode.parse()) {
                found.push((inode, port));
            }
        }
    }
    found
}

/// Socket inodes among a process's open fds.
#[must_use]
pub fn socket_inodes(pid: Pid) -> std::collections::BTreeSet<u64> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .filter_map(|target| {
                    let text = target.to_string_lossy().into_owned();
                    text.strip_prefix("socket:[")?
                        .strip_suffix(']')?
                        .parse()
                        .ok()
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Whether the process is gone (or a zombie waiting for a reaper that is not us).
#[must_use]
pub fn process_gone(pid: Pid) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

/// Waits up to `timeout` for every pid to be gone.
#[must_use]
pub fn all_gone(pids: &[Pid], timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if pids.iter().all(|p| process_gone(*p)) {
            return true;
        }
        thread::sleep(Duration::from_millis(20));
    }
    pids.iter().all(|p| process_gone(*p))
}

/// Asserts per-slot counts cover exactly `slots` slots and differ by at most one.
pub fn assert_exact_rotation(counts: &BTreeMap<u32, u64>, slots: u32) {
    let expected: Vec<u32> = (0..slots).collect();
    assert_eq!(
        counts.keys().copied().collect::<Vec<_>>(),
        expected,
        "{counts:?}"
    );
    let min = counts.values().min().unwrap();
    let max = counts.values().max().unwrap();
    assert!(max - min <= 1, "round-robin is not exact: {counts:?}");
}

/// A private network namespace for one test, alive as long as this value (it holds the
/// namespace's fd): when the test ends, however it ends, the kernel frees it with everything
/// in it. The test's own threads stay where they are; [`NetNs::enter`] and [`NetNs::run`] put a
/// command or a closure inside.
#[derive(Debug)]
pub struct NetNs {
    fd: std::os::fd::OwnedFd,
}

impl NetNs {
    /// Creates the namespace, with `lo` up.
    #[must_use]
    pub fn new() -> Self {
        // unshare(2) moves the calling thread only; a throwaway thread keeps ours untouched.
        let fd = thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                .expect("unshare(CLONE_NEWNET) needs root");
            std::fs::File::open("/proc/thread-self/ns/net").expect("open the new namespace")
        })
        .join()
        .expect("namespace thread");
        let ns = Self { fd: fd.into() };
        ns.ip_batch("link set lo up\n");
        ns
    }

    /// Runs `ip -batch -` inside the namespace with these commands, one per line.
    pub fn ip_batch(&self, commands: &str) {
        let mut ip = Command::new("ip");
        ip.args(["-batch", "-"]).stdin(Stdio::piped());
        self.enter(&mut ip);
        let mut child = ip.spawn().expect("run `ip` (package iproute2)");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(commands.as_bytes())
            .unwrap();
        let status = child.wait().unwrap();
        assert!(status.success(), "ip -batch failed for:\n{commands}");
    }

    /// Sets a sysctl of this namespace (`net.ipv4.tcp_syncookies` → `/proc/sys/net/ipv4/…`):
    /// written from a thread inside it, the file is the namespace's own.
    pub fn sysctl(&self, name: &str, value: &str) {
        let path = format!("/proc/sys/{}", name.replace('.', "/"));
        self.run(|| std::fs::write(&path, value))
            .unwrap_or_else(|e| panic!("write {value} to {path} in the test namespace: {e}"));
        let read = self.run(|| std::fs::read_to_string(&path)).unwrap();
        assert_eq!(read.trim(), value, "{path} in the test namespace");
    }

    /// The namespace's `TcpExt` counters (`/proc/net/netstat`, read from a thread inside it):
    /// name → value, such as `TCPMigrateReqSuccess` and `TCPMigrateReqFailure`.
    #[must_use]
    pub fn tcp_ext(&self) -> BTreeMap<String, u64> {
        let text = self
            .run(|| std::fs::read_to_string("/proc/thread-self/net/netstat"))
            .expect("read /proc/net/netstat");
        let rows: Vec<&str> = text.lines().filter(|l| l.starts_with("TcpExt:")).collect();
        assert_eq!(rows.len(), 2, "TcpExt names and values:\n{text}");
        rows[0]
            .split_whitespace()
            .zip(rows[1].split_whitespace())
            .skip(1)
            .map(|(name, value)| (name.to_owned(), value.parse().expect("a counter")))
            .collect()
    }

    /// Runs `test` on a thread inside a new namespace (threads it starts are inside too).
    pub fn isolated(test: impl FnOnce(&Self) + Send) {
        let ns = Self::new();
        ns.run(|| test(&ns));
    }

    /// Starts `cluster run --listen 127.0.0.1:8080 ARGS` in the namespace, where no other pool
    /// can share the port, and waits for `ready`.
    #[must_use]
    pub fn start_cluster(&self, args: &[&str]) -> Cluster {
        let mut command = cluster_command(&["run", "--listen", "127.0.0.1:8080"]);
        command.args(args);
        self.enter(&mut command);
        Cluster::start_command(command)
    }

    /// Makes `command` start inside the namespace.
    pub fn enter<'a>(&self, command: &'a mut Command) -> &'a mut Command {
        let fd = std::os::fd::AsRawFd::as_raw_fd(&self.fd);
        // SAFETY: setns is a plain syscall on a fd this process holds open.
        unsafe {
            command.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            })
        }
    }

    /// Runs `f` on a thread inside the namespace.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        thread::scope(|scope| {
            scope
                .spawn(|| {
                    nix::sched::setns(&self.fd, nix::sched::CloneFlags::CLONE_NEWNET)
                        .expect("setns into the test namespace");
                    f()
                })
                .join()
                .expect("namespace thread")
        })
    }
}

impl Default for NetNs {
    fn default() -> Self {
        Self::new()
    }
}
