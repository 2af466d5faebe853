//! The control socket's requests, as the event loop acts on them: status, reload, drain, scale,
//! stop and messages; a reload or drain is answered when it ends.

use super::*;

impl Supervisor {
    /// Acts on a control request; a reload or drain is answered when it ends.
    pub(super) fn control_request(&mut self, pending: Pending) {
        let now = std::time::Instant::now();
        info!(peer_pid = pending.peer_pid, request = ?pending.request, "control request");
        match pending.request.clone() {
            Request::Status => {
                let status = self.status();
                pending.answer(Answer {
                    status: Some(status),
                    ..Answer::ok()
                });
            }
            Request::Reload | Request::Drain { .. } => {
                // Outcomes of earlier reloads belong to their own requesters, never to this one.
                self.answer_reload_waiters();
                let slot = match pending.request {
                    Request::Drain { slot } => Some(slot),
                    _ => None,
                };
                match self.pool.reload(&mut self.fx, slot, now) {
                    Ok(_) => self.reload_waiters.push(pending),
                    Err(err) => pending.answer(Answer::error(err.to_string())),
                }
            }
            Request::Stop => {
                pending.answer(Answer::ok());
                self.pool.stop(&mut self.fx, now);
            }
            Request::Scale { workers } => match self.pool.scale(&mut self.fx, workers, now) {
                Ok(()) => pending.answer(Answer::ok()),
                Err(err) => pending.answer(Answer::error(err.to_string())),
            },
            Request::Broadcast { message } => {
                let pids: Vec<Pid> = self
                    .pool
                    .live_workers()
                    .into_iter()
                    .map(|(_, pid)| pid)
                    .collect();
                let delivered = self.fx.send_message(&pids, &message, true);
                pending.answer(Answer {
                    delivered: Some(delivered),
                    ..Answer::ok()
                });
            }
            Request::Send { slot, message } => {
                let pids: Vec<Pid> = self
                    .pool
                    .live_workers()
                    .into_iter()
                    .filter(|(s, _)| *s == slot)
                    .map(|(_, pid)| pid)
                    .collect();
                if pids.is_empty() {
                    let last = self.pool.slot_count().saturating_sub(1);
                    pending.answer(Answer::error(format!(
                        "no worker in slot {slot} (the pool has slots 0 to {last})"
                    )));
                } else {
                    let delivered = self.fx.send_message(&pids, &message, false);
                    pending.answer(Answer {
                        delivered: Some(delivered),
                        ..Answer::ok()
                    });
                }
            }
        }
    }

    /// Answers the requests waiting for a reload that ended, and counts how it ended for
    /// `status` (`reloads`).
    pub(super) fn answer_reload_waiters(&mut self) {
        for outcome in self.pool.take_outcomes() {
            if outcome.failure.is_some() {
                self.reloads.failed += 1;
            } else {
                self.reloads.finished += 1;
            }
            self.reloads.last = Some(ReloadEnd {
                replaced: outcome.replaced,
                error: outcome.failure.clone(),
            });
            for waiter in self.reload_waiters.drain(..) {
                waiter.answer(match &outcome.failure {
                    None => Answer {
                        replaced: Some(outcome.replaced),
                        ..Answer::ok()
                    },
                    Some(reason) => Answer {
                        replaced: Some(outcome.replaced),
                        ..Answer::error(format!("reload failed: {reason}"))
                    },
                });
            }
        }
    }
}
