//! The periodic checks of the serving workers: resident memory against `--max-memory`, and the
//! accept queues against stalls and hangs (with what each steering mode promises, logged at
//! start).

use super::*;

impl Supervisor {
    /// Replaces a serving worker whose resident memory stayed above `--max-memory`, by the
    /// reload path (one at a time; the others wait for the next check).
    pub(super) fn check_memory(&mut self) {
        let Some(limit) = &mut self.memory else {
            return;
        };
        let serving: Vec<(u32, Pid, u64)> = (0..self.pool.slot_count())
            .filter_map(|slot| {
                let pid = self.pool.serving(slot)?;
                Some((slot, pid, status::resident_bytes(pid)?))
            })
            .collect();
        let max = limit.limit();
        for (slot, pid, rss) in limit.check(&serving) {
            if self.pool.reloading() || self.pool.stopping() {
                return;
            }
            warn!(
                slot,
                pid = pid.as_raw(),
                rss_bytes = rss,
                max_memory = max,
                "worker stays above --max-memory; replacing it"
            );
            if let Err(err) = self
                .pool
                .reload(&mut self.fx, Some(slot), std::time::Instant::now())
            {
                warn!(slot, error = %err, "could not replace the worker");
            }
        }
    }

    /// Judges each serving worker by its accept queue: a stalled one leaves the selection until
    /// it accepts again, a hung one is killed (its queue migrates to the others, and the restart
    /// path replaces it).
    pub(super) fn check_health(&mut self, lengths: &QueueLengths) {
        let now = std::time::Instant::now();
        let serving: Vec<(u32, Pid)> = (0..self.pool.slot_count())
            .filter_map(|slot| self.pool.serving(slot).map(|pid| (slot, pid)))
            .collect();
        // A worker that left was taken out of the selection with its slot, held or not.
        let serving_pids: std::collections::BTreeSet<Pid> =
            serving.iter().map(|&(_, pid)| pid).collect();
        self.health.retain(|pid| serving_pids.contains(&pid));
        for (slot, pid) in serving {
            let Some((inode, counters)) = self.fx.socket_of(pid) else {
                continue;
            };
            let Some(&queued) = lengths.get(&inode) else {
                continue;
            };
            let reading = Reading {
                queued,
                established: counters.connections,
            };
            match self.health.observe(pid, reading, now) {
                Some(Verdict::Stalled { queued, waited }) => {
                    self.fx.hold(slot, true);
                    // Not skipped when every worker is stalled, nor where no program steers.
                    let skipped = self.fx.steering.program().is_some_and(|p| p.skipped(slot));
                    warn!(
                        slot,
                        pid = pid.as_raw(),
                        queued,
                        seconds = waited.as_secs_f64(),
                        skipped,
                        "worker stalled"
                    );
                }
                Some(Verdict::Resumed { queued, waited }) => {
                    info!(
                        slot,
                        pid = pid.as_raw(),
                        queued,
                        seconds = waited.as_secs_f64(),
                        "worker resumed"
                    );
                    self.fx.hold(slot, false);
                }
                Some(Verdict::Hung { queued, waited }) => {
                    error!(
                        slot,
                        pid = pid.as_raw(),
                        queued,
                        seconds = waited.as_secs_f64(),
                        "worker hung; killed"
                    );
                    self.fx.signal(pid, Signal::SIGKILL);
                }
                None => {}
            }
        }
    }
}

/// Logs, at start, what the steering mode promises for starting and closing sockets: where a
/// program steers, a socket gets connections only once its worker is ready, and a closing
/// socket's queue migrates (with a migrate-capable kernel); under `hash` a socket gets its share
/// as soon as it listens and a closing one's queue migrates only with `tcp_migrate_req`; under
/// `shared` the one socket outlives every worker. The cost floors select no worker of their own,
/// so the kernel's hash places connections as under `hash`.
pub(super) fn log_guarantee(options: &Options, fx: &SystemEffects) {
    let steering = options.mode;
    let selecting = fx.steering.program().filter(|p| !p.policy().is_floor());
    if let Some(program) = selecting {
        let migrate = program.migrates();
        info!(%steering, migrate, "a socket gets connections only once its worker is ready; what is queued on a closing socket migrates to the serving workers (reset instead where the kernel cannot migrate: migrate=false)");
    } else if steering == SteeringMode::Shared {
        info!(%steering, "one listening socket, held by the supervisor, for every worker: a worker's exit or reload leaves what is queued to the others");
    } else {
        let migrate_req = tcp_migrate_req();
        info!(%steering, migrate_req, "no selecting program: a socket takes its hash share as soon as it listens, before its worker is ready; what is queued on a closing socket is reset unless net.ipv4.tcp_migrate_req=1");
    }
}

/// `net.ipv4.tcp_migrate_req` of this network namespace; `false` when it cannot be read.
fn tcp_migrate_req() -> bool {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_migrate_req").is_ok_and(|v| v.trim() == "1")
}

/// Starts reading the accept queues where stalls can be seen: with a program or the counter
/// alone (`hash`), which count each socket's connections. Logs why not otherwise, and what a
/// hang kill means under `hash`.
pub(super) fn watch_queues(
    options: &Options,
    fx: &SystemEffects,
) -> Option<mpsc::Receiver<QueueLengths>> {
    match fx.steering.counter() {
        Some(counter) if !counter.policy().is_floor() => {}
        _ => {
            info!(steering = %options.mode,
                  "stall and hang detection is off: it needs the per-socket connection counter (round-robin, sticky, least-conn, or hash with BPF allowed)");
            return None;
        }
    }
    if fx.steering.program().is_none() {
        // What happens to its queue was logged at start (`log_guarantee`).
        info!(
            "--steering hash: a stalled worker keeps its hash share (no program to skip it); a hung one is killed"
        );
    }
    match AcceptQueues::open(options.addr.port()) {
        Ok(queues) => Some(accept_queues::watch(queues, health::CHECK_EVERY)),
        Err(err) => {
            warn!(error = %err, "stall and hang detection is off");
            None
        }
    }
}

/// The next accept-queue reading; never, when there are none.
pub(super) async fn next_reading(
    readings: &mut Option<mpsc::Receiver<QueueLengths>>,
) -> Option<QueueLengths> {
    match readings {
        Some(readings) => readings.recv().await,
        None => std::future::pending().await,
    }
}
