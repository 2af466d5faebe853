//! Node itself: found on PATH, the app written out, and Node's own `cluster` running the app
//! (its primary forks the workers, in a process group of its own so that a stop reaches them
//! all), ready once every worker listens, its CPU time read from `/proc`.

use std::{
    ffi::OsString,
    fs,
    io::{self, BufRead as _, BufReader},
    net::{SocketAddr, TcpStream},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use nix::{
    errno::Errno,
    sys::signal::{Signal, killpg},
    unistd::Pid,
};
use serde::Deserialize;

use crate::{
    cpu,
    pool::{self, PoolTicks},
};

/// The app (`cluster-bench/node/server.js`), built into the bench.
const APP: &str = include_str!("../../node/server.js");
/// How long Node's cluster gets until every worker listens.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long its processes get to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How often readiness and exit are checked.
const POLL: Duration = Duration::from_millis(100);

/// `node --version`, or `None` when there is no `node` on PATH.
///
/// # Errors
///
/// `node` is there but does not run or answer.
pub fn version() -> Result<Option<String>> {
    let output = match Command::new("node")
        .arg("--version")
        .stdin(Stdio::null())
        .output()
    {
        Ok(output) => output,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => {
            return Err(err).context("running `node --version` (pass --peer none to skip Node)");
        }
    };
    if !output.status.success() {
        bail!(
            "`node --version` exited with {} (pass --peer none to skip Node): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(Some(
        String::from_utf8_lossy(&output.stdout).trim().to_owned(),
    ))
}

/// Writes the app to `DIR/node/server.js` and returns its absolute path.
///
/// # Errors
///
/// The directory or the file cannot be written.
pub fn write_app(dir: &Path) -> Result<PathBuf> {
    let app_dir = dir.join("node");
    fs::create_dir_all(&app_dir).with_context(|| format!("creating {}", app_dir.display()))?;
    let app = app_dir.join("server.js");
    fs::write(&app, APP).with_context(|| format!("writing {}", app.display()))?;
    app.canonicalize()
        .with_context(|| format!("resolving {}", app.display()))
}

/// The COMMAND that runs the app as one worker of this pool.
#[must_use]
pub fn worker_command(app: &Path) -> Vec<OsString> {
    vec!["node".into(), app.into(), "fd3".into()]
}

/// What the primary prints once every worker listens.
#[derive(Debug, Deserialize)]
struct Listening {
    listening: Vec<i32>,
}

/// Node's cluster running the app, stopped when dropped.
#[derive(Debug)]
pub struct NodeCluster {
    child: Child,
    workers: Vec<i32>,
    stopped: bool,
    pub addr: SocketAddr,
}

impl NodeCluster {
    /// Starts `node APP cluster WORKERS PORT` on a free loopback port, restricted to `cpus`
    /// (`None`: anywhere), and waits until every worker listens and the port answers.
    ///
    /// # Errors
    ///
    /// Node cannot start, exits, or its workers do not all listen within a minute.
    pub fn start(app: &Path, workers: u32, cpus: Option<&[usize]>) -> Result<Self> {
        let addr = pool::free_port()?;
        let mut command = cpu::command_on("node", cpus);
        command
            .arg(app)
            .args(["cluster", &workers.to_string(), &addr.port().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0);
        let mut child = command
            .spawn()
            .with_context(|| format!("starting node {} cluster", app.display()))?;
        let stdout = child.stdout.take().context("node's stdout")?;
        let mut cluster = Self {
            child,
            workers: Vec::new(),
            stopped: false,
            addr,
        };
        cluster.wait_ready(stdout).with_context(|| {
            format!(
                "starting Node's cluster of {workers} on {addr} (try `node {} cluster {workers} \
                 {}` by hand)",
                app.display(),
                addr.port()
            )
        })?;
        Ok(cluster)
    }

    fn wait_ready(&mut self, stdout: std::process::ChildStdout) -> Result<()> {
        // The primary prints one line; a thread reads it so that this loop can also watch for an
        // early exit and the deadline.
        let (lines, line) = mpsc::channel();
        thread::spawn(move || {
            let mut text = String::new();
            let _ = BufReader::new(stdout).read_line(&mut text);
            let _ = lines.send(text);
        });
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(text) = line.recv_timeout(POLL) {
                if text.is_empty() {
                    thread::sleep(POLL);
                    let status = self.child.try_wait()?;
                    bail!(
                        "node closed its output ({}) before its workers listened",
                        status.map_or_else(|| "still running".to_owned(), |s| s.to_string())
                    );
                }
                let listening: Listening = serde_json::from_str(&text)
                    .with_context(|| format!("reading the primary's ready line {text:?}"))?;
                self.workers = listening.listening;
                TcpStream::connect_timeout(&self.addr, READY_TIMEOUT)
                    .context("connecting to the port the workers listen on")?;
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("node exited with {status} before its workers listened");
            }
            if Instant::now() > deadline {
                bail!(
                    "not every worker listened within {} s",
                    READY_TIMEOUT.as_secs()
                );
            }
        }
    }

    /// The CPU ticks of the primary (as the supervisor) and its workers now.
    pub fn ticks(&self) -> Result<PoolTicks> {
        let primary = cpu::ticks(&self.child.id().to_string())
            .context("reading the CPU time of Node's primary")?;
        let mut workers = primary.children;
        for pid in &self.workers {
            workers += cpu::ticks(&pid.to_string())
                .with_context(|| format!("reading the CPU time of Node's worker {pid}"))?
                .own;
        }
        Ok(PoolTicks {
            supervisor: primary.own,
            workers,
        })
    }

    /// Stops the primary and its workers with SIGTERM to their process group, and waits until
    /// none is left.
    pub fn stop(mut self) -> Result<()> {
        self.terminate()
    }

    fn terminate(&mut self) -> Result<()> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        let group = Pid::from_raw(i32::try_from(self.child.id()).unwrap_or(i32::MAX));
        let started = Instant::now();
        let mut signal = Signal::SIGTERM;
        loop {
            match killpg(group, signal) {
                Err(Errno::ESRCH) => break,
                Err(err) => bail!("sending {signal} to Node's process group {group}: {err}"),
                Ok(()) => {}
            }
            // Reaps the primary, so its group empties once the workers have gone too.
            let _ = self.child.try_wait()?;
            if started.elapsed() > 2 * STOP_TIMEOUT {
                bail!(
                    "Node's process group {group} still has members {} s after SIGTERM and \
                     SIGKILL",
                    started.elapsed().as_secs()
                );
            }
            if started.elapsed() > STOP_TIMEOUT {
                signal = Signal::SIGKILL;
            }
            thread::sleep(POLL);
        }
        self.child.wait()?;
        if signal == Signal::SIGKILL {
            bail!(
                "Node's cluster did not exit within {} s of SIGTERM; killed",
                STOP_TIMEOUT.as_secs()
            );
        }
        Ok(())
    }
}

impl Drop for NodeCluster {
    fn drop(&mut self) {
        let _ = self.terminate();
    }
}
