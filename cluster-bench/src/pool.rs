//! One `cluster run` pool of demo workers: started (under `taskset` when pinned), ready once
//! `cluster status --json` counts every slot serving, its CPU time read from `/proc`, stopped
//! with SIGTERM.

use std::{
    ffi::OsString,
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use cluster::control::protocol::PoolStatus;
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

use crate::cpu::{self, Ticks};

/// How long a pool gets to serve with every worker.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a pool gets to exit after SIGTERM (its own worker timeout is 10 s).
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// How often readiness and exit are checked.
const POLL: Duration = Duration::from_millis(100);

/// A running pool, stopped when dropped.
#[derive(Debug)]
pub struct Pool {
    binary: PathBuf,
    child: Child,
    pub addr: SocketAddr,
    pub workers: u32,
}

/// CPU ticks of a pool at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolTicks {
    /// The supervisor's own.
    pub supervisor: u64,
    /// The live workers' own, plus those of the workers the supervisor has reaped.
    pub workers: u64,
}

impl Pool {
    /// Starts `cluster run` with `workers` demo workers steered by `steering` on a free port,
    /// restricted to `cpus` (`None`: anywhere), with `extra` options (a `--hang-timeout` among
    /// them replaces the one the bench gives `hash`), and waits until every slot serves.
    pub fn start(
        binary: &Path,
        steering: &str,
        workers: u32,
        cpus: Option<&[usize]>,
        extra: &[&str],
    ) -> Result<Self> {
        Self::start_command(binary, steering, workers, cpus, extra, &[])
    }

    /// As [`Pool::start`], with each worker running `worker_command` (`cluster run … -- COMMAND`)
    /// instead of the demo worker when it is not empty.
    pub fn start_command(
        binary: &Path,
        steering: &str,
        workers: u32,
        cpus: Option<&[usize]>,
        extra: &[&str],
        worker_command: &[OsString],
    ) -> Result<Self> {
        let addr = free_port()?;
        let mut command = cpu::command_on(binary, cpus);
        command
            .args(["run", "--listen", &addr.to_string(), "--steering", steering])
            .args(["--workers", &workers.to_string()])
            .args(extra);
        if steering == "hash" && !extra.contains(&"--hang-timeout") {
            // The OS baseline: under hash the health check would load the connection counter,
            // a BPF program on every TCP state change; without it hash runs no BPF at all.
            command.args(["--hang-timeout", "0"]);
        }
        if !worker_command.is_empty() {
            command.arg("--").args(worker_command);
        }
        command
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // taskset execs the binary, so the child's pid is the supervisor's.
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut pool = Self {
            binary: binary.to_owned(),
            child,
            addr,
            workers,
        };
        pool.wait_ready()
            .with_context(|| format!("starting a {steering} pool of {workers} on {addr}"))?;
        Ok(pool)
    }

    /// The supervisor's pid.
    #[must_use]
    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).unwrap_or(i32::MAX)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("the pool exited with {status} before it served");
            }
            if let Ok(status) = self.status()
                && status.serving == self.workers
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "not every worker served within {} s",
                    READY_TIMEOUT.as_secs()
                );
            }
            thread::sleep(POLL);
        }
    }

    /// `cluster status --json` of this pool.
    pub fn status(&self) -> Result<PoolStatus> {
        let output = self
            .control(&["status", "--json"])
            .context("running cluster status")?;
        serde_json::from_slice(&output).context("reading cluster status --json")
    }

    /// Runs `cluster ARGS --pid PID` against this pool and returns its stdout.
    pub fn control(&self, args: &[&str]) -> Result<Vec<u8>> {
        let output = Command::new(&self.binary)
            .args(args)
            .args(["--pid", &self.pid().to_string()])
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {} {}", self.binary.display(), args.join(" ")))?;
        if !output.status.success() {
            bail!(
                "cluster {} exited with {}: {}",
                args.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(output.stdout)
    }

    /// The pids of the workers now alive.
    pub fn worker_pids(&self) -> Result<Vec<i32>> {
        Ok(self.status()?.rows.iter().filter_map(|r| r.pid).collect())
    }

    /// The pids of the serving workers.
    pub fn serving_pids(&self) -> Result<Vec<i32>> {
        Ok(self
            .status()?
            .rows
            .iter()
            .filter(|r| r.phase == "serving")
            .filter_map(|r| r.pid)
            .collect())
    }

    /// The CPU ticks of the supervisor and its workers now.
    pub fn ticks(&self) -> Result<PoolTicks> {
        let pids = self.worker_pids()?;
        let supervisor = cpu::ticks(&self.pid().to_string())
            .with_context(|| format!("reading the supervisor's ({}) CPU time", self.pid()))?;
        // A worker that exits between the status and the read is counted in the supervisor's
        // children once reaped; its last moments are lost, which is noise here.
        let live: u64 = pids
            .iter()
            .filter_map(|pid| cpu::ticks(&pid.to_string()).ok())
            .map(|t: Ticks| t.own)
            .sum();
        Ok(PoolTicks {
            supervisor: supervisor.own,
            workers: live + supervisor.children,
        })
    }

    /// Stops the pool with SIGTERM and waits for it.
    pub fn stop(mut self) -> Result<()> {
        self.terminate()
    }

    fn terminate(&mut self) -> Result<()> {
        if self.child.try_wait()?.is_some() {
            return Ok(());
        }
        let pid = Pid::from_raw(self.pid());
        kill(pid, Signal::SIGTERM).with_context(|| format!("sending SIGTERM to {pid}"))?;
        let deadline = Instant::now() + STOP_TIMEOUT;
        while self.child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!(
                    "the pool {pid} did not exit within {} s of SIGTERM; killed",
                    STOP_TIMEOUT.as_secs()
                );
            }
            thread::sleep(POLL);
        }
        Ok(())
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let _ = self.terminate();
    }
}

/// A loopback address with a port that was free a moment ago.
pub fn free_port() -> Result<SocketAddr> {
    let probe = TcpListener::bind("127.0.0.1:0").context("binding a probe socket")?;
    Ok(probe.local_addr()?)
}
