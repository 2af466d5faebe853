//! Starting one worker process: fork, hand it its listening socket the systemd way (fd 3,
//! `LISTEN_FDS`, `LISTEN_PID`, `LISTEN_FDNAMES`) plus `CLUSTER_WORKER_ID`, its stdout and
//! stderr (the supervisor's pipes, or the supervisor's own with `--log-passthrough`), and exec.
//!
//! Written on fork/exec directly rather than `std::process::Command` because `LISTEN_PID` must
//! be the child's own pid, known only after fork, and the child may only make async-signal-safe
//! calls: every string and pointer is prepared before fork, and the child only formats its pid
//! into a stack buffer, moves fds and calls execve. `Command::spawn` also waits for the exec to
//! succeed; [`spawn`] returns right after fork instead, with a pipe that tells whether it did
//! ([`super::exec_status`]), so the event loop never waits on a child.

use std::{
    ffi::{CString, OsStr, OsString},
    io,
    os::{
        fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd},
        unix::ffi::{OsStrExt, OsStringExt},
    },
    path::{Path, PathBuf},
};

use nix::{
    fcntl::OFlag,
    unistd::{ForkResult, Pid, fork},
};

use crate::{handoff, notify::NOTIFY_SOCKET};

/// Variables the supervisor sets for each worker; inherited values are dropped.
const OWN_VARIABLES: [&str; 7] = [
    handoff::LISTEN_FDS,
    handoff::CHANNEL,
    handoff::LISTEN_PID,
    handoff::LISTEN_FDNAMES,
    handoff::WORKER_ID,
    handoff::OUTPUT_CAPTURED,
    NOTIFY_SOCKET,
];

/// The kernel's `struct sigaction` for `rt_sigaction(2)` on x86_64 and arm64
/// (include/linux/signal_types.h `struct sigaction` without `SA_RESTORER` fields in use).
#[repr(C)]
struct KernelSigaction {
    handler: libc::sighandler_t,
    flags: libc::c_ulong,
    restorer: usize,
    mask: u64,
}

/// `close_range(2)`'s flag to mark descriptors close-on-exec instead of closing them
/// (include/uapi/linux/close_range.h).
const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;

/// RLIMIT_NOFILE as the supervisor found it; see [`raise_file_limit`].
static ORIGINAL_FILE_LIMIT: std::sync::OnceLock<libc::rlimit> = std::sync::OnceLock::new();

/// Raises this process's soft limit on open files to its hard limit: the supervisor holds two
/// pipes per worker, so the usual soft limit of 1024 would cap the pool near 500 workers. Workers
/// get the original limit back (a soft limit above 1024 breaks programs that use select(2)).
pub fn raise_file_limit() -> io::Result<()> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let _ = ORIGINAL_FILE_LIMIT.set(limit);
    let raised = libc::rlimit {
        rlim_cur: limit.rlim_max,
        rlim_max: limit.rlim_max,
    };
    // SAFETY: setrlimit reads the struct we pass.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const raised) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The demo worker is this very binary. Exec'd through the kernel's link rather than by path, it
/// works even when the binary's directory is closed to the user running it (a checkout under
/// `/root` run as another user), and after the file was rebuilt or removed.
const OWN_BINARY: &str = "/proc/self/exe";

/// Why a worker could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("command `{command}` not found in PATH; give its full path or install it")]
    NotFound { command: String },
    #[error("command `{command}` is not an executable file ({path}); check its path and mode")]
    NotExecutable { command: String, path: String },
    #[error("a worker argument contains a NUL byte: {0:?}")]
    Nul(OsString),
    #[error("{op} failed while starting a worker: {source}")]
    Os {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("exec of `{path}` failed: {source}{hint}")]
    Exec {
        path: String,
        #[source]
        source: io::Error,
        /// What the error likely means for this file, with a leading `; `, or nothing.
        hint: String,
    },
}

/// What every worker runs: resolved once, before the first fork.
#[derive(Debug, Clone)]
pub struct WorkerProgram {
    path: CString,
    argv: Vec<CString>,
}

impl WorkerProgram {
    /// The built-in demo HTTP server: this binary's hidden `worker` subcommand.
    pub fn demo() -> Result<Self, SpawnError> {
        Self::new(
            PathBuf::from(OWN_BINARY),
            [OsString::from("cluster"), OsString::from("worker")],
        )
    }

    /// A user's COMMAND: looked up in PATH now, so a typo fails before any worker starts.
    pub fn command(command: &[OsString]) -> Result<Self, SpawnError> {
        let (program, _) = command.split_first().ok_or_else(|| SpawnError::NotFound {
            command: String::new(),
        })?;
        let path = resolve(program)?;
        Self::new(path, command.iter().cloned())
    }

    fn new(path: PathBuf, argv: impl IntoIterator<Item = OsString>) -> Result<Self, SpawnError> {
        Ok(Self {
            path: c_string(path.into_os_string())?,
            argv: argv.into_iter().map(c_string).collect::<Result<_, _>>()?,
        })
    }

    /// The executable's path, for logs.
    #[must_use]
    pub fn display(&self) -> String {
        String::from_utf8_lossy(self.path.as_bytes()).into_owned()
    }

    /// Why a worker's exec failed with `errno`, with what that likely means for this file. Its
    /// first bytes are read now (a deploy may have replaced it since the pool started). This
    /// read runs on the event loop's thread and blocks it for as long as the file's filesystem
    /// takes (a network filesystem may take long); it happens only after a failed exec.
    #[must_use]
    pub fn exec_error(&self, errno: i32) -> SpawnError {
        let header = Header::read(Path::new(OsStr::from_bytes(self.path.as_bytes())));
        SpawnError::Exec {
            source: io::Error::from_raw_os_error(errno),
            hint: exec_hint(errno, &header).map_or_else(String::new, |h| format!("; {h}")),
            path: self.display(),
        }
    }

    /// The command line, quoted so that a shell runs it as given: what a person types to run
    /// it by hand.
    #[must_use]
    pub fn command_line(&self) -> String {
        let words = self.argv.iter().map(|word| word.as_bytes());
        // The words are C strings: no NUL byte, the only thing quoting refuses.
        let quoted = shlex::bytes::try_join(words).unwrap_or_default();
        String::from_utf8_lossy(&quoted).into_owned()
    }
}

/// Finds `program` the way execvp would: a name with a slash is a path, anything else is looked
/// up in PATH. The file must be executable by us.
fn resolve(program: &OsStr) -> Result<PathBuf, SpawnError> {
    let command = program.to_string_lossy().into_owned();
    let candidates: Vec<PathBuf> = if program.as_bytes().contains(&b'/') {
        vec![PathBuf::from(program)]
    } else {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .map(|dir| dir.join(program))
            .collect()
    };
    let mut found_unusable = None;
    for candidate in candidates {
        if candidate.is_file() && is_executable(&candidate) {
            return Ok(candidate);
        }
        if candidate.exists() {
            found_unusable.get_or_insert(candidate);
        }
    }
    Err(match found_unusable {
        Some(path) => SpawnError::NotExecutable {
            command,
            path: path.display().to_string(),
        },
        None => SpawnError::NotFound { command },
    })
}

fn is_executable(path: &Path) -> bool {
    nix::unistd::access(path, nix::unistd::AccessFlags::X_OK).is_ok()
}

/// What the start of an executable file says about how the kernel runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Header {
    /// A script: the interpreter its `#!` line names.
    Script(String),
    /// An ELF binary.
    Elf,
    /// Neither.
    Other,
    /// The file could not be read.
    Unreadable,
}

impl Header {
    /// Reads the first line of `path` (at most 256 bytes, the kernel's own limit for a `#!`
    /// line: BINPRM_BUF_SIZE in include/uapi/linux/binfmts.h).
    fn read(path: &Path) -> Self {
        let mut start = [0u8; 256];
        match std::fs::File::open(path).and_then(|mut file| io::Read::read(&mut file, &mut start)) {
            Ok(len) => Self::parse(&start[..len]),
            Err(_) => Self::Unreadable,
        }
    }

    fn parse(start: &[u8]) -> Self {
        if start.starts_with(b"\x7fELF") {
            return Self::Elf;
        }
        let Some(line) = start.strip_prefix(b"#!") else {
            return Self::Other;
        };
        let line = line.split(|&b| b == b'\n').next().unwrap_or_default();
        match line
            .split(|b| b.is_ascii_whitespace())
            .find(|word| !word.is_empty())
        {
            Some(interpreter) => Self::Script(String::from_utf8_lossy(interpreter).into_owned()),
            None => Self::Other,
        }
    }
}

/// What a failed exec with `errno` means for a file that starts like `header`, where the bare
/// errno misleads: ENOENT for a file that exists, ENOEXEC (fs/exec.c, fs/binfmt_script.c).
fn exec_hint(errno: i32, header: &Header) -> Option<String> {
    match (errno, header) {
        (libc::ENOENT, Header::Script(interpreter)) => Some(format!(
            "the interpreter its `#!` line names, `{interpreter}`, does not exist (or the file was removed); install it or correct that line"
        )),
        (libc::ENOENT, Header::Elf) => Some(
            "the dynamic loader this binary names does not exist (or the file was removed); it was probably built for another system".to_owned(),
        ),
        (libc::ENOEXEC, Header::Elf) => {
            Some("this kernel cannot run this binary; it was probably built for another architecture".to_owned())
        }
        (libc::ENOEXEC, Header::Other) => Some(
            "the file is neither a binary this kernel runs nor a script; a script needs a first line `#!INTERPRETER`".to_owned(),
        ),
        _ => None,
    }
}

fn c_string(s: OsString) -> Result<CString, SpawnError> {
    CString::new(s.clone().into_vec()).map_err(|_| SpawnError::Nul(s))
}

/// What a worker is handed besides its program.
#[derive(Debug, Clone, Copy)]
pub struct Handoff<'a> {
    /// Its slot, as `CLUSTER_WORKER_ID`.
    pub slot: u32,
    /// The listening socket, as fd 3.
    pub listener: BorrowedFd<'a>,
    /// `LISTEN_FDNAMES`.
    pub fd_name: &'a str,
    /// `NOTIFY_SOCKET`, where it reports readiness.
    pub notify_socket: &'a str,
    /// Its stdout and stderr; `None` leaves it the supervisor's own.
    pub output: Option<(BorrowedFd<'a>, BorrowedFd<'a>)>,
    /// Its end of the message channel, as fd 4.
    pub channel: Option<BorrowedFd<'a>>,
}

/// A forked worker, whose exec may not have happened yet.
#[derive(Debug)]
pub struct Forked {
    pub pid: Pid,
    /// The read end (non-blocking) of its exec-status pipe: end of file once its exec
    /// succeeded, or the errno of the step that failed, after which it exits with status 127.
    pub exec_status: OwnedFd,
}

/// Starts `program` with what `handoff` gives it. Returns as soon as the fork succeeded, without
/// waiting for the exec: `exec_status` tells how it went. The child is the leader of a new
/// process group, so signals for it reach what it starts too, and it is killed if the
/// supervisor dies.
pub fn spawn(program: &WorkerProgram, handoff: &Handoff<'_>) -> Result<Forked, SpawnError> {
    let env = worker_environment(handoff)?;
    let mut envp: Vec<*const libc::c_char> = env.iter().map(|v| v.as_ptr()).collect();
    // The LISTEN_PID entry: the child writes its pid into `pid_entry` and points here at it.
    let pid_index = envp.len();
    envp.push(std::ptr::null());
    envp.push(std::ptr::null());
    let mut argv: Vec<*const libc::c_char> = program.argv.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());

    let devnull = nix::fcntl::open(
        "/dev/null",
        OFlag::O_RDWR | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| os("open(/dev/null)", e))?;
    // Non-blocking at both ends: the child writes 4 bytes into the empty pipe, which never waits.
    let (status_read, status_write) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).map_err(|e| os("pipe2", e))?;
    let parent = nix::unistd::getpid();
    let mut pid_entry = [0u8; 32];
    let file_limit = ORIGINAL_FILE_LIMIT.get().copied();

    // SAFETY: the child runs only `exec_child`, which makes async-signal-safe calls on memory
    // prepared above, and never returns.
    match unsafe { fork() }.map_err(|e| os("fork", e))? {
        ForkResult::Child => unsafe {
            exec_child(&ChildPlan {
                path: program.path.as_ptr(),
                argv: argv.as_ptr(),
                envp: envp.as_mut_ptr(),
                pid_index,
                pid_entry: pid_entry.as_mut_ptr(),
                listener: handoff.listener.as_raw_fd(),
                devnull: devnull.as_raw_fd(),
                output: handoff
                    .output
                    .map(|(out, err)| (out.as_raw_fd(), err.as_raw_fd())),
                channel: handoff.channel.map(|fd| fd.as_raw_fd()),
                status: status_write.as_raw_fd(),
                parent: parent.as_raw(),
                last_signal: libc::SIGRTMAX(),
                file_limit,
            })
        },
        ForkResult::Parent { child } => {
            // Now the child holds the only write end, which closes at its exec or its exit.
            drop(status_write);
            // Also set in the child; doing it here too closes the race with an early kill(-pid).
            let _ = nix::unistd::setpgid(child, child);
            Ok(Forked {
                pid: child,
                exec_status: status_read,
            })
        }
    }
}

fn worker_environment(plan: &Handoff<'_>) -> Result<Vec<CString>, SpawnError> {
    let mut env: Vec<CString> = std::env::vars_os()
        .filter(|(key, _)| !OWN_VARIABLES.iter().any(|own| key == own))
        .map(|(key, value)| {
            let mut entry = key;
            entry.push("=");
            entry.push(value);
            c_string(entry)
        })
        .collect::<Result<_, _>>()?;
    for entry in [
        format!("{}=1", handoff::LISTEN_FDS),
        format!("{}={}", handoff::LISTEN_FDNAMES, plan.fd_name),
        format!("{}={}", handoff::WORKER_ID, plan.slot),
        format!("{NOTIFY_SOCKET}={}", plan.notify_socket),
    ] {
        env.push(c_string(entry.into())?);
    }
    if plan.output.is_some() {
        env.push(c_string(format!("{}=1", handoff::OUTPUT_CAPTURED).into())?);
    }
    if plan.channel.is_some() {
        env.push(c_string(
            format!("{}={}", handoff::CHANNEL, handoff::CHANNEL_FD).into(),
        )?);
    }
    Ok(env)
}

fn os(op: &'static str, errno: nix::errno::Errno) -> SpawnError {
    SpawnError::Os {
        op,
        source: errno.into(),
    }
}

/// Everything the child needs, as raw pointers and fds into memory prepared before fork.
struct ChildPlan {
    path: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *mut *const libc::c_char,
    pid_index: usize,
    pid_entry: *mut u8,
    listener: RawFd,
    devnull: RawFd,
    /// stdout and stderr; `None` keeps the inherited ones.
    output: Option<(RawFd, RawFd)>,
    /// The message channel, for fd 4.
    channel: Option<RawFd>,
    status: RawFd,
    parent: libc::pid_t,
    /// The highest signal number, to reset every disposition.
    last_signal: libc::c_int,
    /// RLIMIT_NOFILE as the supervisor found it, for the worker to get back.
    file_limit: Option<libc::rlimit>,
}

/// Runs in the forked child: async-signal-safe calls only, no allocation.
///
/// # Safety
/// Call only in a freshly forked child, with `plan` pointing into memory prepared before fork.
unsafe fn exec_child(plan: &ChildPlan) -> ! {
    // SAFETY: (for the whole block) plain syscalls on fds and memory from `plan`.
    unsafe {
        let fail = |status: RawFd| -> ! {
            let errno = *libc::__errno_location();
            let bytes = errno.to_ne_bytes();
            libc::write(status, bytes.as_ptr().cast(), bytes.len());
            libc::_exit(127)
        };
        // Die with the supervisor; if it already died, the parent is someone else now.
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 || libc::getppid() != plan.parent
        {
            libc::_exit(1);
        }
        libc::setpgid(0, 0);
        // A clean signal state. The mask is inherited (the supervisor blocks the signals it
        // reads from its signalfd), and so is every ignored disposition: Rust ignores SIGPIPE,
        // and `nohup` or a shell's `trap '' TERM` may have ignored others for the supervisor.
        // Handlers are reset by exec anyway.
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&raw mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &raw const none, std::ptr::null_mut());
        // The raw syscall, not glibc's signal(), which refuses glibc's own two real-time
        // signals (32 and 33), and those can arrive ignored too. It fails, harmlessly, for
        // SIGKILL and SIGSTOP.
        let default = KernelSigaction {
            handler: libc::SIG_DFL,
            flags: 0,
            restorer: 0,
            mask: 0,
        };
        for signal in 1..=plan.last_signal {
            libc::syscall(
                libc::SYS_rt_sigaction,
                signal,
                &raw const default,
                std::ptr::null_mut::<KernelSigaction>(),
                std::mem::size_of::<u64>(),
            );
        }
        if let Some(limit) = plan.file_limit {
            libc::setrlimit(libc::RLIMIT_NOFILE, &raw const limit);
        }

        // Lift every fd we use above the ones we are about to fill (0 to 3), so none is
        // overwritten before it is read.
        let high = |fd: RawFd| libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 10);
        let status = high(plan.status);
        let listener = high(plan.listener);
        let devnull = high(plan.devnull);
        let output = plan
            .output
            .map(|(stdout, stderr)| (high(stdout), high(stderr)));
        let channel = plan.channel.map(high);
        if status < 0 || listener < 0 || devnull < 0 {
            fail(if status < 0 { plan.status } else { status });
        }
        if output.is_some_and(|(stdout, stderr)| stdout < 0 || stderr < 0)
            || channel.is_some_and(|fd| fd < 0)
        {
            fail(status);
        }
        // dup2 leaves the new fd without close-on-exec: these survive exec.
        if libc::dup2(listener, handoff::LISTEN_FD) < 0 || libc::dup2(devnull, 0) < 0 {
            fail(status);
        }
        if let Some((stdout, stderr)) = output
            && (libc::dup2(stdout, 1) < 0 || libc::dup2(stderr, 2) < 0)
        {
            fail(status);
        }
        if let Some(channel) = channel
            && libc::dup2(channel, handoff::CHANNEL_FD) < 0
        {
            fail(status);
        }
        // Nothing beyond the hand-off: every other descriptor the supervisor has, its own and any
        // its parent left open without close-on-exec, closes at exec. (Close-on-exec rather than
        // closed now: the status pipe must stay open until exec succeeds. Linux 5.11+; on older
        // kernels the call fails and nothing changes.)
        let first_closed = if channel.is_some() {
            handoff::CHANNEL_FD + 1
        } else {
            handoff::CHANNEL_FD
        };
        libc::syscall(
            libc::SYS_close_range,
            first_closed.cast_unsigned(),
            u32::MAX,
            CLOSE_RANGE_CLOEXEC,
        );

        let len = write_pid_entry(plan.pid_entry, libc::getpid());
        *plan.pid_entry.add(len) = 0;
        *plan.envp.add(plan.pid_index) = plan.pid_entry.cast_const().cast();
        libc::execve(plan.path, plan.argv, plan.envp.cast_const());
        fail(status)
    }
}

/// Writes `LISTEN_PID=<pid>` (see [`handoff::LISTEN_PID`]) at `out` and returns its length; `out` has room for 32 bytes.
///
/// # Safety
/// `out` must be valid for 32 bytes of writes.
unsafe fn write_pid_entry(out: *mut u8, pid: libc::pid_t) -> usize {
    const PREFIX: &[u8] = b"LISTEN_PID=";
    let mut digits = [0u8; 12];
    let mut n = pid.unsigned_abs();
    let mut count = 0;
    loop {
        digits[count] = b'0' + (n % 10) as u8;
        count += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    // SAFETY: PREFIX (11) + at most 10 digits fit in the caller's 32 bytes.
    unsafe {
        std::ptr::copy_nonoverlapping(PREFIX.as_ptr(), out, PREFIX.len());
        for i in 0..count {
            *out.add(PREFIX.len() + i) = digits[count - 1 - i];
        }
    }
    PREFIX.len() + count
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_entry_formats() {
        let mut buf = [0u8; 32];
        for (pid, text) in [(1, "LISTEN_PID=1"), (4_194_304, "LISTEN_PID=4194304")] {
            // SAFETY: buf has 32 bytes.
            let len = unsafe { write_pid_entry(buf.as_mut_ptr(), pid) };
            assert_eq!(&buf[..len], text.as_bytes());
        }
    }

    #[test]
    fn resolves_commands() {
        assert!(WorkerProgram::command(&["sh".into()]).is_ok());
        let err = WorkerProgram::command(&["no-such-command-xyz".into()]).unwrap_err();
        assert!(err.to_string().contains("not found in PATH"), "{err}");
        let plain_file =
            std::env::temp_dir().join(format!("cluster-not-exec-{}", std::process::id()));
        std::fs::write(&plain_file, "not a program").unwrap();
        let err = WorkerProgram::command(&[plain_file.clone().into()]).unwrap_err();
        std::fs::remove_file(&plain_file).unwrap();
        assert!(matches!(err, SpawnError::NotExecutable { .. }), "{err}");
    }

    #[test]
    fn command_lines_read_as_typed() {
        let program = |argv: &[&str]| {
            WorkerProgram::command(&argv.iter().map(OsString::from).collect::<Vec<_>>()).unwrap()
        };
        assert_eq!(
            program(&["sh", "-c", "echo boom >&2; exit 3"]).command_line(),
            "sh -c 'echo boom >&2; exit 3'"
        );
        assert_eq!(
            WorkerProgram::demo().unwrap().command_line(),
            "cluster worker"
        );
    }

    #[test]
    fn headers_are_told_apart() {
        assert_eq!(Header::parse(b"\x7fELF\x02\x01"), Header::Elf);
        assert_eq!(
            Header::parse(b"#! /usr/bin/env  python3\nprint()"),
            Header::Script("/usr/bin/env".to_owned())
        );
        assert_eq!(
            Header::parse(b"#!/no/such/interp"),
            Header::Script("/no/such/interp".to_owned())
        );
        assert_eq!(Header::parse(b"#!\n"), Header::Other);
        assert_eq!(Header::parse(b"hello world\n"), Header::Other);
        assert_eq!(Header::parse(b""), Header::Other);
    }

    #[test]
    fn exec_errors_say_what_they_mean_for_the_file() {
        let dir = std::env::temp_dir().join(format!("cluster-exec-error-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let script = dir.join("server");
        std::fs::write(&script, "#!/no/such/interp\n").unwrap();
        let program = WorkerProgram::new(script.clone(), [script.clone().into()]).unwrap();
        let missing = program.exec_error(libc::ENOENT).to_string();
        std::fs::write(&script, "hello world\n").unwrap();
        let not_a_program = program.exec_error(libc::ENOEXEC).to_string();
        let denied = program.exec_error(libc::EACCES).to_string();
        std::fs::remove_dir_all(&dir).unwrap();
        let path = script.display();
        assert!(
            missing.starts_with(&format!(
                "exec of `{path}` failed: No such file or directory"
            )),
            "{missing}"
        );
        assert!(
            missing.contains("`/no/such/interp`, does not exist"),
            "{missing}"
        );
        assert!(
            not_a_program.contains("Exec format error"),
            "{not_a_program}"
        );
        assert!(not_a_program.contains("`#!INTERPRETER`"), "{not_a_program}");
        assert_eq!(
            denied,
            format!("exec of `{path}` failed: Permission denied (os error 13)")
        );
    }
}
