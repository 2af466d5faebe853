//! The pool's status as `cluster status` and SIGUSR1 show it: each worker's phase and uptime,
//! its socket's counters and its slot's from the program, and its resident memory.

use std::time::Instant;

use nix::unistd::Pid;
use tracing::info;

use super::{
    effects::SystemEffects,
    health::Health,
    pool::{Phase, Pool},
};
use crate::{
    control::protocol::{PoolStatus, ProgramStats, Reloads, WorkerRow},
    telemetry,
};

/// A snapshot of the pool.
#[must_use]
pub fn snapshot(
    pool: &Pool,
    fx: &SystemEffects,
    health: &Health,
    addr: &str,
    steering: &str,
    with_program_stats: bool,
    reloads: Reloads,
) -> PoolStatus {
    let program = fx.steering.counter();
    let now = Instant::now();
    let rows = pool
        .status()
        .into_iter()
        .map(|row| {
            let slot_counters = program.and_then(|p| p.slot_counters(row.slot).ok());
            let socket = row.pid.and_then(|pid| fx.socket_counters(pid));
            WorkerRow {
                slot: row.slot,
                pid: row.pid.map(Pid::as_raw),
                phase: match (row.phase, row.pid) {
                    (Some(Phase::Serving), Some(pid)) if health.stalled(pid) => {
                        "stalled".to_owned()
                    }
                    (Some(phase), _) => phase.to_string(),
                    (None, _) => "restarting".to_owned(),
                },
                uptime_s: row
                    .started
                    .map(|t| now.saturating_duration_since(t).as_secs()),
                restarts: row.restarts,
                open: socket.map(|c| c.open),
                queued: row.pid.and_then(|pid| health.queued(pid)),
                connections: socket.map(|c| c.connections),
                steered: slot_counters.map(|c| c.connections + c.migrated),
                migrated: slot_counters.map(|c| c.migrated),
                rss_bytes: row.pid.and_then(resident_bytes),
            }
        })
        .collect();
    PoolStatus {
        supervisor_pid: nix::unistd::getpid().as_raw(),
        addr: addr.to_owned(),
        steering: steering.to_owned(),
        workers: pool.slot_count(),
        serving: u32::try_from(
            (0..pool.slot_count())
                .filter(|&slot| pool.serving(slot).is_some())
                .count(),
        )
        .unwrap_or(u32::MAX),
        reloading: pool.reloading(),
        rows,
        programs: if with_program_stats {
            program_stats(fx)
        } else {
            Vec::new()
        },
        reloads,
    }
}

/// The run stats of the loaded programs; none when they cannot be read (logged).
pub(super) fn program_stats(fx: &SystemEffects) -> Vec<ProgramStats> {
    let Some(program) = fx.steering.program() else {
        return Vec::new();
    };
    match program.costs() {
        Ok(costs) => costs
            .iter()
            .map(|cost| ProgramStats {
                program: cost.program.to_owned(),
                runs: cost.runs,
                run_time_ns: u64::try_from(cost.run_time.as_nanos()).unwrap_or(u64::MAX),
            })
            .collect(),
        Err(err) => {
            tracing::warn!(error = %err, "could not read the programs' stats");
            Vec::new()
        }
    }
}

/// Logs a snapshot: a `worker status` line per row, then a `pool status` line (SIGUSR1).
pub fn log(status: &PoolStatus) {
    for row in &status.rows {
        info!(
            slot = row.slot,
            pid = row.pid,
            phase = %row.phase,
            uptime_s = row.uptime_s,
            restarts = row.restarts,
            steered = row.steered,
            open = row.open,
            queued = row.queued,
            connections = row.connections,
            rss_bytes = row.rss_bytes,
            "worker status"
        );
    }
    info!(addr = %status.addr, workers = status.workers, serving = status.serving,
          steering = %status.steering, reloading = status.reloading,
          dropped_log_lines = telemetry::dropped_lines(), "pool status");
}

/// The resident memory of `pid` (the second field of /proc/PID/statm, in pages).
#[must_use]
pub fn resident_bytes(pid: Pid) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    let page_size = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|size| u64::try_from(size).ok())?;
    Some(pages * page_size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_resident_memory_is_read() {
        let rss = resident_bytes(nix::unistd::getpid()).unwrap();
        assert!(rss > 1024 * 1024, "{rss}");
        assert_eq!(resident_bytes(Pid::from_raw(i32::MAX)), None);
    }
}
