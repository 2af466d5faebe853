//! The set of serving slots, the ones held out of the selection for now (their worker stopped
//! accepting), and the dense `LIVE` table the program walks in rotation.

use std::collections::BTreeSet;

/// Slots whose worker is serving, and of those the held ones. The program sees the selection as
/// a dense table: position `i` holds the `i`-th selectable slot in ascending order, and
/// `Config::live_count` says how many positions are valid. A held slot is left out, unless every
/// serving slot is held: then none is, since a stuck worker is still better than no worker.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LiveSlots {
    slots: BTreeSet<u32>,
    held: BTreeSet<u32>,
}

impl LiveSlots {
    /// Marks `slot` serving, with a new socket that is not held; returns whether the selection
    /// changed.
    pub fn insert(&mut self, slot: u32) -> bool {
        let released = self.held.remove(&slot);
        self.slots.insert(slot) || released
    }

    /// Marks `slot` not serving; returns whether it was.
    pub fn remove(&mut self, slot: u32) -> bool {
        self.held.remove(&slot);
        self.slots.remove(&slot)
    }

    /// Holds a serving `slot` out of the selection (`true`) or lets it back (`false`); returns
    /// whether that changed anything.
    pub fn hold(&mut self, slot: u32, held: bool) -> bool {
        if held {
            self.slots.contains(&slot) && self.held.insert(slot)
        } else {
            self.held.remove(&slot)
        }
    }

    /// How many slots are serving.
    #[must_use]
    pub fn len(&self) -> u32 {
        u32::try_from(self.slots.len()).unwrap_or(u32::MAX)
    }

    /// Whether no slot is serving.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Whether `slot` is left out of the selection now.
    #[must_use]
    pub fn skipped(&self, slot: u32) -> bool {
        self.held.contains(&slot) && !self.all_held()
    }

    /// The slots left out of the selection now.
    #[must_use]
    pub fn skipped_slots(&self) -> BTreeSet<u32> {
        if self.all_held() {
            BTreeSet::new()
        } else {
            self.held.clone()
        }
    }

    /// How many positions the dense table has.
    #[must_use]
    pub fn selectable(&self) -> u32 {
        u32::try_from(self.selectable_slots().count()).unwrap_or(u32::MAX)
    }

    /// `(position, slot)` pairs of the dense table.
    pub fn table(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        (0u32..).zip(self.selectable_slots())
    }

    fn selectable_slots(&self) -> impl Iterator<Item = u32> + '_ {
        let all_held = self.all_held();
        self.slots
            .iter()
            .copied()
            .filter(move |slot| all_held || !self.held.contains(slot))
    }

    fn all_held(&self) -> bool {
        !self.slots.is_empty() && self.held.len() == self.slots.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_dense_and_ordered() {
        let mut live = LiveSlots::default();
        for slot in [3, 0, 7, 1] {
            assert!(live.insert(slot));
        }
        assert!(!live.insert(3));
        assert!(live.remove(0));
        assert!(!live.remove(0));
        assert_eq!(live.len(), 3);
        assert_eq!(
            live.table().collect::<Vec<_>>(),
            vec![(0, 1), (1, 3), (2, 7)]
        );
        for slot in [1, 3, 7] {
            live.remove(slot);
        }
        assert!(live.is_empty());
    }

    #[test]
    fn a_held_slot_leaves_the_table_until_released_or_replaced() {
        let mut live = LiveSlots::default();
        for slot in 0..3 {
            live.insert(slot);
        }
        assert!(!live.hold(5, true), "only a serving slot can be held");
        assert!(live.hold(1, true));
        assert!(!live.hold(1, true));
        assert!(live.skipped(1));
        assert_eq!(live.table().collect::<Vec<_>>(), vec![(0, 0), (1, 2)]);
        assert_eq!(live.selectable(), 2);
        assert_eq!(live.len(), 3, "a held slot still serves");
        assert!(live.hold(1, false));
        assert_eq!(live.selectable(), 3);
        live.hold(2, true);
        assert!(live.insert(2), "a new socket in the slot is not held");
        assert!(!live.skipped(2));
        live.hold(2, true);
        live.remove(2);
        live.insert(2);
        assert!(!live.skipped(2), "removal forgets the hold");
    }

    #[test]
    fn when_every_slot_is_held_none_is_skipped() {
        let mut live = LiveSlots::default();
        live.insert(0);
        live.insert(1);
        live.hold(0, true);
        live.hold(1, true);
        assert!(!live.skipped(0) && !live.skipped(1));
        assert_eq!(live.selectable(), 2);
        live.hold(1, false);
        assert!(live.skipped(0));
        assert_eq!(live.table().collect::<Vec<_>>(), vec![(0, 1)]);
    }
}
