//! Which socket ids (indexes of the per-socket counters) a new listening socket may get. An id
//! names one socket's counters: least-conn reads them, `status` shows them, and every connection
//! the socket accepts carries the id in its tag. So an id is never dealt while the supervisor
//! still holds its socket's worker (a long-lived socket may have no connection open for a while),
//! nor while connections of its socket, gone or not, are still open and counted there.

use std::collections::BTreeSet;

/// The ids below a capacity, dealt in turn, each to one socket at a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketIds {
    capacity: u32,
    /// Where the search for the next free id starts: dealing in turn leaves a released id
    /// unused for as long as possible.
    next: u32,
    /// Ids of sockets that are not known to be gone.
    in_use: BTreeSet<u32>,
}

impl SocketIds {
    /// Ids `0..capacity`, all free.
    #[must_use]
    pub fn new(capacity: u32) -> Self {
        Self {
            capacity,
            next: 0,
            in_use: BTreeSet::new(),
        }
    }

    /// Deals the first id from where the last search ended that no socket holds and for which
    /// `open` says no connection is counted; `None` when there is none.
    pub fn take(&mut self, mut open: impl FnMut(u32) -> bool) -> Option<u32> {
        let id = (0..self.capacity)
            .map(|step| (self.next + step) % self.capacity)
            .find(|id| !self.in_use.contains(id) && !open(*id))?;
        self.in_use.insert(id);
        self.next = (id + 1) % self.capacity;
        Some(id)
    }

    /// `id`'s socket is gone: the id may be dealt again once no connection is counted on it.
    pub fn release(&mut self, id: u32) {
        self.in_use.remove(&id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONE_OPEN: fn(u32) -> bool = |_| false;

    #[test]
    fn ids_are_dealt_in_turn_and_a_released_one_comes_back_last() {
        let mut ids = SocketIds::new(4);
        assert_eq!(ids.take(NONE_OPEN), Some(0));
        assert_eq!(ids.take(NONE_OPEN), Some(1));
        ids.release(0);
        assert_eq!(ids.take(NONE_OPEN), Some(2));
        assert_eq!(ids.take(NONE_OPEN), Some(3));
        assert_eq!(ids.take(NONE_OPEN), Some(0), "after a full turn");
    }

    #[test]
    fn a_held_socket_keeps_its_id_however_many_sockets_come_and_go() {
        let mut ids = SocketIds::new(4);
        let long_lived = ids.take(NONE_OPEN).unwrap();
        for _ in 0..20 {
            let id = ids.take(NONE_OPEN).unwrap();
            assert_ne!(
                id, long_lived,
                "its counters show no connection, yet it is held"
            );
            ids.release(id);
        }
    }

    #[test]
    fn an_id_with_connections_open_waits_until_they_close() {
        let mut ids = SocketIds::new(3);
        for id in 0..3 {
            assert_eq!(ids.take(NONE_OPEN), Some(id));
        }
        assert_eq!(ids.take(NONE_OPEN), None, "all held");
        for id in 0..3 {
            ids.release(id);
        }
        // Socket 0 is gone, but one of its connections is still open.
        let mut open = BTreeSet::from([0]);
        assert_eq!(ids.take(|id| open.contains(&id)), Some(1));
        assert_eq!(ids.take(|id| open.contains(&id)), Some(2));
        assert_eq!(ids.take(|id| open.contains(&id)), None);
        open.clear();
        assert_eq!(ids.take(|id| open.contains(&id)), Some(0));
    }
}
