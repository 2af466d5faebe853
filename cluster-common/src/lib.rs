//! The ABI shared by the eBPF steering program and user space: map names and sizes, the layout of
//! the values in those maps, and the pure selection arithmetic both sides must agree on.
//!
//! Everything here is plain data or a pure function, so the arithmetic the kernel runs is unit
//! tested on the host exactly as it is compiled into the program.
#![no_std]

/// Highest number of worker slots; sizes every per-slot map.
pub const MAX_SLOTS: u32 = 1024;

/// Buckets of the sticky table. A power of two so a bucket is a mask, not a division.
pub const STICKY_BUCKETS: u32 = 4096;

/// How many live-table positions the program tries before its last resort. Bounds the loop the
/// verifier has to walk; more than one covers a slot that emptied since user space last wrote
/// the live table (a worker that just died).
pub const MAX_PROBES: u32 = 8;

/// Map names, as the program declares them and user space looks them up.
pub mod map_names {
    /// `REUSEPORT_SOCKARRAY`: slot → the worker's listening socket.
    pub const SOCKETS: &str = "SOCKETS";
    /// `ARRAY` of one [`crate::Config`].
    pub const CONFIG: &str = "CONFIG";
    /// `ARRAY`: position → slot, the first `Config::live_count` entries are the serving slots.
    pub const LIVE: &str = "LIVE";
    /// `ARRAY`: sticky bucket → slot.
    pub const STICKY: &str = "STICKY";
    /// `ARRAY` of [`crate::rotation::COUNT`] u64 rotation counters, advanced atomically.
    pub const ROTATION: &str = "ROTATION";
    /// `PERCPU_ARRAY`: slot → [`crate::SlotStats`].
    pub const SLOT_STATS: &str = "SLOT_STATS";
    /// `PERCPU_ARRAY` of [`crate::event::COUNT`] u64 event counters.
    pub const EVENTS: &str = "EVENTS";
}

/// Steering modes the program implements (`Config::mode`).
pub mod mode {
    /// Strict rotation over the live table.
    pub const ROUND_ROBIN: u32 = 0;
    /// By client source address, through the sticky table.
    pub const STICKY: u32 = 1;
}

/// Indices into the `ROTATION` map.
pub mod rotation {
    /// Advanced once per new connection in round-robin mode.
    pub const NEW: u32 = 0;
    /// Advanced once per connection migrated off a closing listener.
    pub const MIGRATE: u32 = 1;
    /// Number of counters.
    pub const COUNT: u32 = 2;
}

/// Indices into the `EVENTS` map: how often each fallback path ran.
pub mod event {
    /// The first choice was empty and a later live-table position took the connection.
    pub const PROBED: u32 = 0;
    /// No slot could be selected: the program returned `SK_PASS` without a selection and the
    /// kernel picked a group member by its own 4-tuple hash.
    pub const LAST_RESORT: u32 = 1;
    /// Sticky mode could not read the source address and used the kernel's 4-tuple hash.
    pub const ADDR_UNREADABLE: u32 = 2;
    /// Sticky mode found the address's own slot empty and used the live table instead.
    pub const STICKY_MOVED: u32 = 3;
    /// Number of counters.
    pub const COUNT: u32 = 4;
}

/// The program's configuration, the single entry of the `CONFIG` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// One of [`mode`].
    pub mode: u32,
    /// How many leading entries of `LIVE` are serving slots.
    pub live_count: u32,
}

/// Per-slot selection counters, one value per CPU; user space sums them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotStats {
    /// New connections the program steered to this slot.
    pub selected: u64,
    /// Connections migrated to this slot from a closing listener.
    pub migrated: u64,
}

#[cfg(feature = "user")]
// SAFETY: both are `repr(C)` structs of integers with no padding.
unsafe impl aya::Pod for Config {}
#[cfg(feature = "user")]
// SAFETY: as above.
unsafe impl aya::Pod for SlotStats {}

/// The murmur3 32-bit finaliser: every input bit affects every output bit.
#[inline(always)]
#[must_use]
pub const fn mix32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x85eb_ca6b);
    x ^= x >> 13;
    x = x.wrapping_mul(0xc2b2_ae35);
    x ^= x >> 16;
    x
}

/// Hash of an IPv4 source address (network byte order, as on the wire).
#[inline(always)]
#[must_use]
pub const fn ipv4_hash(addr: [u8; 4]) -> u32 {
    mix32(u32::from_be_bytes(addr))
}

/// Hash of an IPv6 source address (network byte order, as on the wire).
#[inline(always)]
#[must_use]
pub const fn ipv6_hash(addr: [u8; 16]) -> u32 {
    let mut h = 0x6a09_e667_u32;
    let mut i = 0;
    while i < 16 {
        let word = u32::from_be_bytes([addr[i], addr[i + 1], addr[i + 2], addr[i + 3]]);
        h = mix32(h ^ word);
        i += 4;
    }
    h
}

/// The sticky bucket of a source-address hash.
#[inline(always)]
#[must_use]
pub const fn sticky_bucket(hash: u32) -> u32 {
    hash & (STICKY_BUCKETS - 1)
}

/// Where in the live table a sticky client whose own slot is empty starts probing: a second,
/// independent hash, so the clients of one empty slot spread over all live slots, and the same
/// client keeps landing on the same one while the live table is unchanged.
#[inline(always)]
#[must_use]
pub const fn sticky_fallback_start(hash: u32, live_count: u32) -> u32 {
    wrap(mix32(hash ^ 0x9e37_79b9), live_count)
}

/// `value % len`, and 0 when `len` is 0: the program must not contain a division that can trap.
#[inline(always)]
#[must_use]
pub const fn wrap(value: u32, len: u32) -> u32 {
    match value.checked_rem(len) {
        Some(v) => v,
        None => 0,
    }
}

/// A 64-bit rotation counter reduced to a position in a table of `len` entries (0 when empty).
#[inline(always)]
#[must_use]
pub const fn wrap_counter(counter: u64, len: u32) -> u32 {
    match counter.checked_rem(len as u64) {
        // The remainder is below `len`, so it fits in u32.
        Some(v) => v as u32,
        None => 0,
    }
}

/// The live-table position tried on probe `attempt` (0-based) when starting at `start`.
#[inline(always)]
#[must_use]
pub const fn probe_position(start: u32, attempt: u32, live_count: u32) -> u32 {
    wrap(start.wrapping_add(attempt), live_count)
}

/// The slot the sticky table assigns to `bucket` when `slots` slots exist: buckets are dealt out
/// in turn, so every slot owns `STICKY_BUCKETS / slots` buckets, give or take one.
#[inline(always)]
#[must_use]
pub const fn sticky_owner(bucket: u32, slots: u32) -> u32 {
    wrap(bucket, slots)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::{collections::BTreeMap, vec::Vec};

    use super::*;

    #[test]
    fn wrap_never_divides_by_zero() {
        assert_eq!(wrap(7, 0), 0);
        assert_eq!(wrap(7, 3), 1);
        assert_eq!(wrap_counter(7, 0), 0);
        assert_eq!(wrap_counter(u64::MAX, 10), 5);
        assert_eq!(probe_position(u32::MAX, 1, 5), 0);
    }

    #[test]
    fn rotation_is_exact() {
        for live in 1..=9u32 {
            let mut hits = [0u32; 9];
            for counter in 0..u64::from(live * 1000 + 3) {
                hits[wrap_counter(counter, live) as usize] += 1;
            }
            let used = &hits[..live as usize];
            let (min, max) = (used.iter().min().unwrap(), used.iter().max().unwrap());
            assert!(max - min <= 1, "live={live}: {used:?}");
        }
    }

    #[test]
    fn sticky_table_is_balanced() {
        for slots in 1..=64u32 {
            let mut owned = BTreeMap::new();
            for bucket in 0..STICKY_BUCKETS {
                *owned.entry(sticky_owner(bucket, slots)).or_insert(0u32) += 1;
            }
            assert_eq!(owned.len() as u32, slots);
            let min = owned.values().min().unwrap();
            let max = owned.values().max().unwrap();
            assert!(max - min <= 1, "slots={slots}");
        }
    }

    #[test]
    fn address_hash_ignores_nothing_and_spreads() {
        // Consecutive loopback clients, as the tests use: they must not pile into few buckets.
        let buckets: Vec<u32> = (1..=250u8)
            .map(|i| sticky_bucket(ipv4_hash([127, 0, 0, i])))
            .collect();
        let per_slot = |slots: u32| {
            let mut n = BTreeMap::new();
            for b in &buckets {
                *n.entry(sticky_owner(*b, slots)).or_insert(0u32) += 1;
            }
            n
        };
        let four = per_slot(4);
        assert_eq!(four.len(), 4);
        assert!(four.values().all(|&n| n > 30), "{four:?}");
        assert_ne!(ipv4_hash([10, 0, 0, 1]), ipv4_hash([10, 0, 0, 2]));
        let mut a = [0u8; 16];
        let mut b = [0u8; 16];
        a[15] = 1;
        b[0] = 1;
        assert_ne!(ipv6_hash(a), ipv6_hash(b));
    }

    #[test]
    fn fallback_start_is_stable_and_in_range() {
        for h in [0u32, 1, 0xdead_beef, u32::MAX] {
            for live in 1..10 {
                let s = sticky_fallback_start(h, live);
                assert!(s < live);
                assert_eq!(s, sticky_fallback_start(h, live));
            }
        }
        assert_eq!(sticky_fallback_start(5, 0), 0);
    }
}
