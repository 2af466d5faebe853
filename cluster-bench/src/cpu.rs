//! CPU time of processes from `/proc/PID/stat` (see proc_pid_stat(5)), and where the load
//! generator and the pool run (`--pin`).

use std::{ffi::OsStr, fs, io, process::Command};

use nix::{
    sched::{CpuSet, sched_getaffinity, sched_setaffinity},
    unistd::{Pid, SysconfVar, sysconf},
};
use serde::Serialize;

/// CPU time of one process, in clock ticks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ticks {
    /// utime + stime: the process itself.
    pub own: u64,
    /// cutime + cstime: its children it has waited for.
    pub children: u64,
}

/// Reads the CPU time of `pid` (`self` for this process).
///
/// # Errors
///
/// The process is gone or its stat line cannot be read.
pub fn ticks(pid: &str) -> io::Result<Ticks> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_stat(&stat).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("/proc/{pid}/stat is not a stat line"),
        )
    })
}

/// The fields of a `/proc/PID/stat` line after the command name, from the state (field 3) on.
/// The name (field 2) may hold spaces and parentheses, so they start after its last `)`
/// (proc_pid_stat(5)).
pub fn stat_fields(stat: &str) -> Option<std::str::SplitWhitespace<'_>> {
    Some(stat.rsplit_once(')')?.1.split_whitespace())
}

/// The times in a stat line.
fn parse_stat(stat: &str) -> Option<Ticks> {
    // After the name: state is field 3, utime 14, stime 15, cutime 16, cstime 17.
    let fields: Vec<u64> = stat_fields(stat)?
        .skip(11)
        .take(4)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    let [utime, stime, cutime, cstime] = fields[..] else {
        return None;
    };
    Some(Ticks {
        own: utime + stime,
        children: cutime + cstime,
    })
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`).
#[must_use]
pub fn ticks_per_second() -> u64 {
    sysconf(SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|t| u64::try_from(t).ok())
        .filter(|t| *t > 0)
        .unwrap_or(100)
}

/// Where the generator and the pool run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Placement {
    /// CPUs this process could use when the bench started.
    pub cpus: Vec<usize>,
    /// Whether the generator and the pool were put on separate CPUs.
    pub pinned: bool,
    /// The generator's CPUs.
    pub generator_cpus: Vec<usize>,
    /// The pool's CPUs (supervisor and workers).
    pub pool_cpus: Vec<usize>,
    /// The placement in words, as the report states it.
    pub description: String,
}

impl Placement {
    /// Plans the placement: with `pin` and at least `workers + 1` CPUs, the generator gets the
    /// last CPU and the pool the others; otherwise every process may run anywhere the OS puts
    /// it.
    #[must_use]
    pub fn plan(cpus: Vec<usize>, workers: u32, pin: bool) -> Self {
        let needed = usize::try_from(workers)
            .unwrap_or(usize::MAX)
            .saturating_add(1);
        if pin && cpus.len() >= needed {
            let (pool, generator) = cpus.split_at(cpus.len() - 1);
            let description = format!(
                "pinned: load generator on CPU {}, pool on CPUs {}",
                list(generator),
                list(pool)
            );
            return Self {
                generator_cpus: generator.to_vec(),
                pool_cpus: pool.to_vec(),
                pinned: true,
                description,
                cpus,
            };
        }
        let why = if pin {
            format!(
                "--pin needs {needed} CPUs ({workers} workers + the generator) and there are {}",
                cpus.len()
            )
        } else {
            "no --pin".to_owned()
        };
        Self {
            description: format!(
                "not pinned ({why}): the OS places the load generator and the pool on CPUs {}",
                list(&cpus)
            ),
            generator_cpus: cpus.clone(),
            pool_cpus: cpus.clone(),
            pinned: false,
            cpus,
        }
    }

    /// The CPUs the pool is restricted to: `None` when not pinned.
    #[must_use]
    pub fn pool_restriction(&self) -> Option<&[usize]> {
        self.pinned.then_some(self.pool_cpus.as_slice())
    }
}

/// A command that runs `program` on `cpus` (under `taskset`, which execs it, so the child's pid
/// is the program's), or anywhere when `None`.
#[must_use]
pub fn command_on(program: impl AsRef<OsStr>, cpus: Option<&[usize]>) -> Command {
    match cpus {
        Some(cpus) => {
            let mut taskset = Command::new("taskset");
            taskset.args(["--cpu-list", &list(cpus)]).arg(program);
            taskset
        }
        None => Command::new(program),
    }
}

/// The CPUs this process may run on.
///
/// # Errors
///
/// `sched_getaffinity` failed.
pub fn usable_cpus() -> nix::Result<Vec<usize>> {
    let set = sched_getaffinity(Pid::from_raw(0))?;
    Ok((0..CpuSet::count())
        .filter(|cpu| set.is_set(*cpu).unwrap_or(false))
        .collect())
}

/// Restricts this process (the generator: call it before starting threads) to `cpus`.
///
/// # Errors
///
/// `sched_setaffinity` failed.
pub fn pin_self(cpus: &[usize]) -> nix::Result<()> {
    let mut set = CpuSet::new();
    for cpu in cpus {
        set.set(*cpu)?;
    }
    sched_setaffinity(Pid::from_raw(0), &set)
}

/// `0,1,2` for taskset and reports.
#[must_use]
pub fn list(cpus: &[usize]) -> String {
    cpus.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_times_after_a_name_with_spaces_and_parentheses() {
        let line = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 7 3 5 6 20 0 1 0 9 0 0";
        assert_eq!(
            parse_stat(line),
            Some(Ticks {
                own: 10,
                children: 11
            })
        );
        assert_eq!(parse_stat("42 (x) S 1"), None);
    }

    #[test]
    fn pins_only_when_every_worker_and_the_generator_get_a_cpu() {
        let pinned = Placement::plan(vec![0, 1, 2, 3], 2, true);
        assert!(pinned.pinned);
        assert_eq!(pinned.generator_cpus, [3]);
        assert_eq!(pinned.pool_cpus, [0, 1, 2]);
        let short = Placement::plan(vec![0, 1], 2, true);
        assert!(!short.pinned);
        assert!(short.description.contains("needs 3 CPUs"), "{short:?}");
        assert!(!Placement::plan(vec![0, 1, 2, 3], 2, false).pinned);
    }
}
