//! `--max-memory`: which serving workers have stayed above the limit for two checks in a row,
//! and so are due to be replaced. One check over the limit is forgiven (a short spike).

use std::collections::BTreeSet;

use nix::unistd::Pid;

/// How often resident memory is checked.
pub const CHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// The limit and the workers found over it at the last check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryLimit {
    limit: u64,
    over: BTreeSet<Pid>,
}

impl MemoryLimit {
    #[must_use]
    pub fn new(limit: u64) -> Self {
        Self {
            limit,
            over: BTreeSet::new(),
        }
    }

    /// The limit in bytes.
    #[must_use]
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Takes this check's `(slot, pid, resident bytes)` of the serving workers; returns those
    /// over the limit now and at the previous check.
    pub fn check(&mut self, workers: &[(u32, Pid, u64)]) -> Vec<(u32, Pid, u64)> {
        let over_now: Vec<(u32, Pid, u64)> = workers
            .iter()
            .copied()
            .filter(|&(_, _, rss)| rss > self.limit)
            .collect();
        let due = over_now
            .iter()
            .copied()
            .filter(|(_, pid, _)| self.over.contains(pid))
            .collect();
        self.over = over_now.iter().map(|&(_, pid, _)| pid).collect();
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_checks_in_a_row_over_the_limit_make_a_worker_due() {
        let (a, b) = (Pid::from_raw(10), Pid::from_raw(11));
        let mut limit = MemoryLimit::new(100);
        assert!(limit.check(&[(0, a, 150), (1, b, 50)]).is_empty());
        assert_eq!(limit.check(&[(0, a, 160), (1, b, 150)]), [(0, a, 160)]);
        // A dip below the limit starts the count again.
        assert!(limit.check(&[(0, a, 90), (1, b, 50)]).is_empty());
        assert!(limit.check(&[(0, a, 190), (1, b, 50)]).is_empty());
        assert_eq!(limit.check(&[(0, a, 190)]), [(0, a, 190)]);
    }
}
