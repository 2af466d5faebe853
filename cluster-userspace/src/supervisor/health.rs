//! Whether each serving worker still accepts, judged from outside: a worker is *stalled* when
//! connections wait in its accept queue and it has accepted none of them for `--stall-after`,
//! and *hung* when that lasts `--hang-timeout`. Any COMMAND is judged alike, with no code in it.
//!
//! Pure: the supervisor feeds it readings (the socket's accept-queue length from sock_diag, and
//! the connections the program counted as established on it) and acts on the verdicts.
//! Accepted connections are the established ones minus the queued ones: a new connection raises
//! both, an accept lowers only the queue. A worker that accepts anything between two readings is
//! never stalled, however long its queue.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use nix::unistd::Pid;

/// How often the accept queues are read.
pub const CHECK_EVERY: Duration = Duration::from_millis(250);

/// The health rules (`--stall-after`, `--hang-timeout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthConfig {
    pub stall_after: Duration,
    /// `None`: a stalled worker is never killed.
    pub hang_timeout: Option<Duration>,
}

/// One reading of a worker's socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reading {
    /// Connections in its accept queue now.
    pub queued: u32,
    /// Connections established on it since it opened, as the program counts them.
    pub established: u64,
}

/// What a reading showed, when it changed something.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// It stopped accepting with connections waiting: leave it out of the selection.
    Stalled { queued: u32, waited: Duration },
    /// It accepts again: back into the selection. `queued` is what still waits on it.
    Resumed { queued: u32, waited: Duration },
    /// Stalled for the hang timeout: kill it.
    Hung { queued: u32, waited: Duration },
}

#[derive(Debug)]
struct Watch {
    accepted: u64,
    queued: u32,
    /// Since when connections have waited with none accepted.
    waiting_since: Option<Instant>,
    stalled: bool,
    hung: bool,
}

/// The serving workers' health.
#[derive(Debug)]
pub struct Health {
    config: HealthConfig,
    watches: BTreeMap<Pid, Watch>,
}

impl Health {
    #[must_use]
    pub fn new(config: HealthConfig) -> Self {
        Self {
            config,
            watches: BTreeMap::new(),
        }
    }

    /// Takes in a reading of `pid`'s socket at `now`.
    pub fn observe(&mut self, pid: Pid, reading: Reading, now: Instant) -> Option<Verdict> {
        let accepted = reading
            .established
            .saturating_sub(u64::from(reading.queued));
        let watch = self.watches.entry(pid).or_insert(Watch {
            accepted,
            queued: 0,
            waiting_since: None,
            stalled: false,
            hung: false,
        });
        // A connection migrated here from a closing socket is queued without having been
        // established here, so `accepted` can also go down; only a rise is an accept.
        let progressed = accepted > watch.accepted || reading.queued == 0;
        watch.accepted = accepted;
        watch.queued = reading.queued;
        if progressed {
            let waited = watch
                .waiting_since
                .take()
                .map_or(Duration::ZERO, |since| now.saturating_duration_since(since));
            if watch.stalled {
                watch.stalled = false;
                return Some(Verdict::Resumed {
                    queued: reading.queued,
                    waited,
                });
            }
            return None;
        }
        let waited = now.saturating_duration_since(*watch.waiting_since.get_or_insert(now));
        if !watch.stalled && waited >= self.config.stall_after {
            watch.stalled = true;
            return Some(Verdict::Stalled {
                queued: reading.queued,
                waited,
            });
        }
        if watch.stalled
            && !watch.hung
            && self.config.hang_timeout.is_some_and(|hang| waited >= hang)
        {
            watch.hung = true;
            return Some(Verdict::Hung {
                queued: reading.queued,
                waited,
            });
        }
        None
    }

    /// Forgets the workers that no longer serve.
    pub fn retain(&mut self, serving: impl Fn(Pid) -> bool) {
        self.watches.retain(|&pid, _| serving(pid));
    }

    /// Whether `pid` is stalled now.
    #[must_use]
    pub fn stalled(&self, pid: Pid) -> bool {
        self.watches.get(&pid).is_some_and(|w| w.stalled)
    }

    /// The accept-queue length of `pid`'s socket at the last reading.
    #[must_use]
    pub fn queued(&self, pid: Pid) -> Option<u32> {
        self.watches.get(&pid).map(|w| w.queued)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PID: Pid = Pid::from_raw(42);

    fn health(hang: Option<u64>) -> Health {
        Health::new(HealthConfig {
            stall_after: Duration::from_secs(1),
            hang_timeout: hang.map(Duration::from_secs),
        })
    }

    fn reading(queued: u32, established: u64) -> Reading {
        Reading {
            queued,
            established,
        }
    }

    /// Feeds `readings` a quarter second apart from `t0`; returns the verdicts with their times.
    fn feed(health: &mut Health, t0: Instant, readings: &[(u32, u64)]) -> Vec<(Duration, Verdict)> {
        readings
            .iter()
            .enumerate()
            .filter_map(|(i, &(queued, established))| {
                let at = CHECK_EVERY * u32::try_from(i).unwrap_or(u32::MAX);
                health
                    .observe(PID, reading(queued, established), t0 + at)
                    .map(|v| (at, v))
            })
            .collect()
    }

    #[test]
    fn a_worker_that_accepts_is_never_stalled_however_long_its_queue() {
        let mut h = health(Some(5));
        // Ten new connections per reading, nine accepted: the queue grows, but it moves.
        let readings: Vec<(u32, u64)> = (0..40u32).map(|i| (i + 1, u64::from(i) * 10)).collect();
        assert!(feed(&mut h, Instant::now(), &readings).is_empty());
        assert!(!h.stalled(PID));
    }

    #[test]
    fn an_empty_queue_is_never_a_stall() {
        let mut h = health(Some(5));
        let readings = vec![(0, 7); 40];
        assert!(feed(&mut h, Instant::now(), &readings).is_empty());
    }

    #[test]
    fn waiting_connections_with_no_accept_stall_it_then_it_hangs() {
        let mut h = health(Some(2));
        let t0 = Instant::now();
        // It accepted 5; then 3 wait (8 established) and nothing moves.
        let mut readings = vec![(0, 5)];
        readings.extend(vec![(3, 8); 12]);
        let verdicts = feed(&mut h, t0, &readings);
        assert_eq!(
            verdicts,
            vec![
                (
                    Duration::from_millis(1250),
                    Verdict::Stalled {
                        queued: 3,
                        waited: Duration::from_secs(1)
                    }
                ),
                (
                    Duration::from_millis(2250),
                    Verdict::Hung {
                        queued: 3,
                        waited: Duration::from_secs(2)
                    }
                ),
            ]
        );
        assert!(h.stalled(PID));
        assert_eq!(h.queued(PID), Some(3));
    }

    #[test]
    fn an_accept_resumes_a_stalled_worker() {
        let mut h = health(None);
        let t0 = Instant::now();
        let mut readings = vec![(2, 2); 6];
        readings.push((1, 2));
        let verdicts = feed(&mut h, t0, &readings);
        assert_eq!(verdicts.len(), 2, "{verdicts:?}");
        assert!(matches!(verdicts[0].1, Verdict::Stalled { queued: 2, .. }));
        assert_eq!(
            verdicts[1],
            (
                Duration::from_millis(1500),
                Verdict::Resumed {
                    queued: 1,
                    waited: Duration::from_millis(1500)
                }
            )
        );
        assert!(!h.stalled(PID));
    }

    #[test]
    fn without_a_hang_timeout_it_stays_stalled() {
        let mut h = health(None);
        let verdicts = feed(&mut h, Instant::now(), &vec![(1, 1); 400]);
        assert_eq!(verdicts.len(), 1);
        assert!(h.stalled(PID));
    }

    #[test]
    fn connections_migrated_in_are_not_accepts() {
        let mut h = health(None);
        // 4 queued, then 3 more migrated in (queued without being established here).
        let mut readings = vec![(4, 4); 3];
        readings.extend(vec![(7, 4); 4]);
        let verdicts = feed(&mut h, Instant::now(), &readings);
        assert!(matches!(
            verdicts.as_slice(),
            [(_, Verdict::Stalled { queued: 7, .. })]
        ));
    }

    #[test]
    fn retain_forgets_workers_that_left() {
        let mut h = health(None);
        feed(&mut h, Instant::now(), &[(1, 1); 6]);
        assert!(h.stalled(PID));
        h.retain(|_| false);
        assert!(!h.stalled(PID));
        assert_eq!(h.queued(PID), None);
    }
}
