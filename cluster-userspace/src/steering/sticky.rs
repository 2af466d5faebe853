//! The sticky table: which slot owns each of the `STICKY_BUCKETS` buckets that client addresses
//! hash into, and how it changes when a slot is added or removed so that as few clients as
//! possible move: adding a slot to N moves about 1/(N+1) of the buckets, all to the new slot;
//! removing one moves only its own buckets. A worker restarting in its slot moves nobody.

use std::collections::BTreeMap;

use cluster_common::{STICKY_BUCKETS, sticky_owner};

/// Bucket → owning slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StickyTable {
    owners: Vec<u32>,
}

impl StickyTable {
    /// A table for slots `0..slots`, buckets dealt out in turn.
    #[must_use]
    pub fn new(slots: u32) -> Self {
        Self {
            owners: (0..STICKY_BUCKETS)
                .map(|bucket| sticky_owner(bucket, slots.max(1)))
                .collect(),
        }
    }

    /// `(bucket, slot)` for every bucket.
    pub fn entries(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        (0u32..).zip(self.owners.iter().copied())
    }

    /// The slot owning `bucket`.
    #[must_use]
    pub fn owner(&self, bucket: u32) -> u32 {
        self.owners[bucket as usize]
    }

    /// Adds `slot`: the slots with the most buckets each give up their last ones until the new
    /// slot has its share (the bucket count divided by the new slot count, rounded down).
    /// Nothing else moves. Adding a slot that owns buckets already changes nothing.
    pub fn add(&mut self, slot: u32) {
        let mut owned = self.buckets_by_slot();
        if owned.contains_key(&slot) {
            return;
        }
        let share = STICKY_BUCKETS as usize / (owned.len() + 1);
        for _ in 0..share {
            let Some(richest) = owned
                .iter()
                .max_by(|(a, x), (b, y)| x.len().cmp(&y.len()).then(b.cmp(a)))
                .map(|(s, _)| *s)
            else {
                break;
            };
            let Some(bucket) = owned.get_mut(&richest).and_then(Vec::pop) else {
                break;
            };
            self.owners[bucket as usize] = slot;
        }
    }

    /// Removes `slot`: its buckets are dealt, one by one, to the remaining slots that own the
    /// fewest. Only its buckets move. Removing the last slot leaves the table as it is.
    pub fn remove(&mut self, slot: u32) {
        let mut owned = self.buckets_by_slot();
        let Some(freed) = owned.remove(&slot) else {
            return;
        };
        if owned.is_empty() {
            return;
        }
        for bucket in freed {
            let poorest = owned
                .iter()
                .min_by(|(a, x), (b, y)| x.len().cmp(&y.len()).then(a.cmp(b)))
                .map(|(s, _)| *s)
                .unwrap_or(slot);
            self.owners[bucket as usize] = poorest;
            if let Some(list) = owned.get_mut(&poorest) {
                list.push(bucket);
            }
        }
    }

    /// Slot → its buckets, in ascending order.
    fn buckets_by_slot(&self) -> BTreeMap<u32, Vec<u32>> {
        let mut owned: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
        for (bucket, slot) in self.entries() {
            owned.entry(slot).or_default().push(bucket);
        }
        owned
    }
}

#[cfg(test)]
mod tests {
    use cluster_common::{StickyHash, sticky_bucket};

    use super::*;

    /// 4000 client addresses' buckets, under one key.
    fn client_buckets() -> Vec<u32> {
        let hash = StickyHash {
            key: [0xdead_beef, 0x0123_4567],
            v4_prefix: 32,
            v6_prefix: 64,
        };
        (0..4000u32)
            .map(|i| sticky_bucket(hash.ipv4((0x0a00_0000 + i).to_be_bytes())))
            .collect()
    }

    fn owners_of(table: &StickyTable, buckets: &[u32]) -> Vec<u32> {
        buckets.iter().map(|&b| table.owner(b)).collect()
    }

    fn spread(table: &StickyTable) -> (usize, usize) {
        let owned = table.buckets_by_slot();
        let sizes = owned.values().map(Vec::len);
        (sizes.clone().min().unwrap(), sizes.max().unwrap())
    }

    #[test]
    fn growing_moves_about_one_share_and_only_to_the_new_slot() {
        let clients = client_buckets();
        for n in 1..=16u32 {
            let mut table = StickyTable::new(n);
            let before = owners_of(&table, &clients);
            table.add(n);
            let after = owners_of(&table, &clients);
            let moved: Vec<_> = before.iter().zip(&after).filter(|(b, a)| b != a).collect();
            assert!(
                moved.iter().all(|(_, a)| **a == n),
                "moves go to the new slot"
            );
            let bound = 1.5 / f64::from(n + 1) * clients.len() as f64;
            assert!(
                (moved.len() as f64) <= bound,
                "{n}→{}: {} of {} moved, bound {bound}",
                n + 1,
                moved.len(),
                clients.len()
            );
            let (min, max) = spread(&table);
            assert!(max - min <= 1, "{n}→{}: {min}..{max}", n + 1);
        }
    }

    #[test]
    fn removing_a_slot_moves_only_its_clients() {
        let clients = client_buckets();
        for (n, victim) in [(2u32, 0u32), (4, 1), (7, 6), (16, 9)] {
            let mut table = StickyTable::new(n);
            let before = owners_of(&table, &clients);
            table.remove(victim);
            let after = owners_of(&table, &clients);
            for (b, a) in before.iter().zip(&after) {
                if *b == victim {
                    assert_ne!(*a, victim);
                } else {
                    assert_eq!(a, b, "a client of a remaining slot moved");
                }
            }
            let (min, max) = spread(&table);
            assert!(max - min <= 1, "n={n}: {min}..{max}");
        }
    }

    #[test]
    fn grow_then_shrink_stays_balanced_and_unknown_slots_are_no_ops() {
        let mut table = StickyTable::new(3);
        for slot in 3..10 {
            table.add(slot);
        }
        for slot in [4, 0, 9] {
            table.remove(slot);
        }
        let (min, max) = spread(&table);
        assert!(max - min <= 1, "{min}..{max}");
        let snapshot = table.clone();
        table.add(1);
        table.remove(42);
        assert_eq!(table, snapshot);
        let mut single = StickyTable::new(1);
        single.remove(0);
        assert!(
            single.entries().all(|(_, s)| s == 0),
            "the last slot keeps its buckets"
        );
    }
}
