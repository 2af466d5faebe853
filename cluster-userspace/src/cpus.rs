//! How many CPUs this process may actually use, for `--workers max`.

/// CPUs this process may run on: the scheduler affinity mask and the cgroup CPU quota (v1 and
/// v2) both count, not the host's core count. `std::thread::available_parallelism` reads exactly
/// these on Linux (sched_getaffinity, then cpu.max / cpu.cfs_quota_us).
#[must_use]
pub fn usable() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX))
}
