//! The set of serving slots, and the dense `LIVE` table the program walks in rotation.

use std::collections::BTreeSet;

/// Slots whose worker is serving. The program sees them as a dense table: position `i` holds
/// the `i`-th serving slot in ascending order, and `Config::live_count` says how many positions
/// are valid.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LiveSlots {
    slots: BTreeSet<u32>,
}

impl LiveSlots {
    /// Marks `slot` serving; returns whether it was not already.
    pub fn insert(&mut self, slot: u32) -> bool {
        self.slots.insert(slot)
    }

    /// Marks `slot` not serving; returns whether it was.
    pub fn remove(&mut self, slot: u32) -> bool {
        self.slots.remove(&slot)
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

    /// `(position, slot)` pairs of the dense table.
    pub fn table(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        (0u32..).zip(self.slots.iter().copied())
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
}
