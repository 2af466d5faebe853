//! The ABI shared by the eBPF steering program and user space: map names and sizes, the layout of
//! the values in those maps, and the pure selection arithmetic both sides must agree on.
//!
//! Everything here is plain data or a pure function, so the arithmetic the kernel runs is unit
//! tested on the host exactly as it is compiled into the program.
#![no_std]

/// Highest number of worker slots; sizes every per-slot map.
pub const MAX_SLOTS: u32 = 1024;

/// Entries of the per-socket counters (`SOCKET_STATS`). Every listening socket the supervisor
/// opens gets an id below this, reused only long after (ids are dealt out in turn, skipping any
/// whose connections are still open).
pub const MAX_SOCKETS: u32 = 8192;

/// Established connections migrated off a closing listener that can be counted on their new
/// socket at once (`MOVED` entries); past that a migrated connection counts on its old one
/// only. A recorded one counts on both until it closes (it keeps its old listener's tag).
pub const MAX_MOVED: u32 = 65536;

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
    /// `ARRAY`: slot → the id of the socket serving in it ([`crate::MAX_SOCKETS`] when none).
    pub const SLOT_SOCKET: &str = "SLOT_SOCKET";
    /// `ARRAY`: socket id → [`crate::SocketStats`], updated atomically.
    pub const SOCKET_STATS: &str = "SOCKET_STATS";
    /// `SK_STORAGE` with `BPF_F_CLONE`: listening socket → [`crate::SocketTag`]. The kernel copies
    /// the entry to every connection the socket accepts (`bpf_sk_storage_clone` in
    /// net/core/bpf_sk_storage.c), which is how a closing connection names its listener.
    pub const SOCKET_TAGS: &str = "SOCKET_TAGS";
    /// `PERCPU_ARRAY` of [`crate::event::COUNT`] u64 event counters.
    pub const EVENTS: &str = "EVENTS";
    /// `REUSEPORT_SOCKARRAY`: slot → the socket of its starting worker while a readiness probe
    /// is pending for it. A socket can occupy one index of any such map only (the kernel keeps
    /// the index in `sk_user_data`): cleared before the socket is stored in `SOCKETS`.
    pub const PROBES: &str = "PROBES";
    /// `HASH`: a pending probe's source port (network byte order, in a u32) → its slot.
    pub const PROBE_PORTS: &str = "PROBE_PORTS";
    /// `HASH`: socket cookie of an established connection migrated off a closing listener → the
    /// id of the socket it moved to. Such a connection keeps its old listener's tag, so its new
    /// socket's `open` count is raised at the move and lowered, through this entry, as it leaves
    /// ESTABLISHED.
    pub const MOVED: &str = "MOVED";
    /// `ARRAY` of one u64: how many `MOVED` entries exist. While it is 0 the counter looks
    /// nothing up in `MOVED`.
    pub const MOVED_COUNT: &str = "MOVED_COUNT";
}

/// Steering modes the program implements (`Config::mode`).
pub mod mode {
    /// Strict rotation over the live table.
    pub const ROUND_ROBIN: u32 = 0;
    /// By client source address, through the sticky table.
    pub const STICKY: u32 = 1;
    /// To the serving socket with the fewest open connections, of two candidates.
    pub const LEAST_CONN: u32 = 2;
}

/// Indices into the `ROTATION` map.
pub mod rotation {
    /// Advanced once per SYN (a new connection without SYN cookies).
    pub const SYN: u32 = 0;
    /// Advanced once per connection migrated off a closing listener.
    pub const MIGRATE: u32 = 1;
    /// Advanced once per ACK that reaches the program: with SYN cookies the kernel keeps no state
    /// after the SYN, looks the listener up again for the handshake's last ACK, and the ACK's
    /// choice is the one that gets the connection (net/ipv4/tcp_ipv4.c, `tcp_v4_rcv`). A
    /// rotation of its own keeps both exact: without cookies only SYNs reach the program.
    pub const COOKIE_ACK: u32 = 2;
    /// Number of counters.
    pub const COUNT: u32 = 3;
}

/// The segment the program was run for, from the TCP flags (byte 13 of the TCP header).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Segment {
    /// SYN without ACK: a new connection.
    Syn,
    /// ACK without SYN or RST: the last ACK of a handshake answered with a SYN cookie, or a
    /// stray ACK that the listener will answer with a RST.
    Ack,
    /// Anything else (RST, FIN, SYN+ACK): not a connection attempt.
    Other,
}

impl Segment {
    /// Classifies the TCP flags byte.
    #[inline(always)]
    #[must_use]
    pub const fn from_flags(flags: u8) -> Self {
        const FIN: u8 = 0x01;
        const SYN: u8 = 0x02;
        const RST: u8 = 0x04;
        const ACK: u8 = 0x10;
        match (flags & SYN != 0, flags & ACK != 0, flags & (RST | FIN) != 0) {
            (true, false, false) => Self::Syn,
            (false, true, false) => Self::Ack,
            _ => Self::Other,
        }
    }
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
    /// A segment that is not a connection attempt (RST, FIN, …) reached the program; it was left
    /// to the kernel's hash without turning any rotation.
    pub const NOT_A_CONNECTION: u32 = 4;
    /// An established connection migrated off a closing listener could not be recorded in
    /// `MOVED` (full): it counts on its old socket until it closes, not on its new one (a
    /// recorded one counts on both).
    pub const MOVE_UNRECORDED: u32 = 5;
    /// Number of counters.
    pub const COUNT: u32 = 6;
}

/// The program's configuration, the single entry of the `CONFIG` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// One of [`mode`].
    pub mode: u32,
    /// How many leading entries of `LIVE` are serving slots.
    pub live_count: u32,
    /// How sticky mode hashes a client address.
    pub sticky: StickyHash,
    /// How many readiness probes are pending (`PROBE_PORTS` entries). While it is 0 the program
    /// never looks at a connection's source port.
    pub probing: u32,
}

/// Sticky mode's hash of a client address: keyed with a secret chosen at random for each pool,
/// so nobody can pick addresses that all land on one worker, and taken over a prefix of the
/// address, so that a client whose IPv6 privacy address rotates within its /64 stays put.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StickyHash {
    pub key: [u32; 2],
    /// Leading bits of an IPv4 address that count (0 to 32).
    pub v4_prefix: u32,
    /// Leading bits of an IPv6 address that count (0 to 128).
    pub v6_prefix: u32,
}

impl StickyHash {
    /// The hash of an IPv4 address (network byte order, as on the wire).
    #[inline(always)]
    #[must_use]
    pub const fn ipv4(&self, addr: [u8; 4]) -> u32 {
        let word = u32::from_be_bytes(addr) & prefix_mask(self.v4_prefix, 0);
        mix32(mix32(word ^ self.key[0]) ^ self.key[1])
    }

    /// The hash of an IPv6 address (network byte order), see [`Self::ipv6_words`].
    #[inline(always)]
    #[must_use]
    pub const fn ipv6(&self, addr: [u8; 16]) -> u32 {
        self.ipv6_words([
            u32::from_be_bytes([addr[0], addr[1], addr[2], addr[3]]),
            u32::from_be_bytes([addr[4], addr[5], addr[6], addr[7]]),
            u32::from_be_bytes([addr[8], addr[9], addr[10], addr[11]]),
            u32::from_be_bytes([addr[12], addr[13], addr[14], addr[15]]),
        ])
    }

    /// The hash of an IPv6 address as four 32-bit words, most significant first. An IPv4-mapped
    /// address (`::ffff:a.b.c.d`, how a dual-stack socket sees an IPv4 client) hashes as the
    /// IPv4 address, so both views of one client agree.
    #[inline(always)]
    #[must_use]
    pub const fn ipv6_words(&self, words: [u32; 4]) -> u32 {
        if words[0] == 0 && words[1] == 0 && words[2] == 0x0000_ffff {
            return self.ipv4(words[3].to_be_bytes());
        }
        let mut h = self.key[0] ^ 0x6a09_e667;
        let mut i = 0;
        while i < 4 {
            h = mix32(h ^ (words[i] & prefix_mask(self.v6_prefix, i as u32)));
            i += 1;
        }
        mix32(h ^ self.key[1])
    }
}

/// The mask of the prefix's bits that fall in 32-bit word `word` (0 = most significant) of an
/// address.
#[inline(always)]
#[must_use]
pub const fn prefix_mask(prefix_bits: u32, word: u32) -> u32 {
    let start = word * 32;
    if prefix_bits <= start {
        0
    } else if prefix_bits >= start + 32 {
        u32::MAX
    } else {
        u32::MAX << (32 - (prefix_bits - start))
    }
}

/// Per-slot counters, one value per CPU; user space sums them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotStats {
    /// Connections established on this slot's sockets, counted once each as they reach
    /// ESTABLISHED (whether or not SYN cookies made the program run twice for them).
    pub connections: u64,
    /// Connections migrated to this slot from a closing listener.
    pub migrated: u64,
}

/// Counters of one listening socket, shared by all CPUs and updated atomically.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SocketStats {
    /// Its connections now ESTABLISHED (queued or accepted, not yet closing). Kept as a wrapping
    /// u64: up once as a connection reaches ESTABLISHED, down once as it leaves.
    pub open: u64,
    /// Connections established on it since it was opened.
    pub connections: u64,
    /// Readiness probes established on it: counted here only, never in the fields above.
    pub probes: u64,
}

/// What a listening socket carries in `SOCKET_TAGS`, and every connection it accepts with it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SocketTag {
    pub slot: u32,
    /// The socket's id, below [`MAX_SOCKETS`].
    pub id: u32,
    /// The source port of the readiness probe sent to it (network byte order, in a u32), 0 when
    /// none: a connection from that port is the probe, counted apart from the worker's own.
    pub probe_port: u32,
}

#[cfg(feature = "user")]
// SAFETY: all are `repr(C)` structs of integers with no padding (`Config` is seven u32s).
unsafe impl aya::Pod for Config {}
#[cfg(feature = "user")]
// SAFETY: as above.
unsafe impl aya::Pod for SlotStats {}
#[cfg(feature = "user")]
// SAFETY: as above.
unsafe impl aya::Pod for SocketStats {}
#[cfg(feature = "user")]
// SAFETY: as above.
unsafe impl aya::Pod for SocketTag {}

/// TCP states as the `sock:inet_sock_set_state` tracepoint reports them (include/net/tcp_states.h).
pub mod tcp_state {
    pub const ESTABLISHED: i32 = 1;
}

/// Of two candidates' open-connection counts, whether the second is the better choice: strictly
/// fewer open connections. A tie keeps the first, the rotation's choice, so equal loads rotate.
#[inline(always)]
#[must_use]
pub const fn second_is_less_loaded(first_open: u64, second_open: u64) -> bool {
    second_open < first_open
}

/// The second candidate of least-conn: a random live position other than `first` (when there is
/// more than one). With two live workers it is always the other one, which makes least-conn exact.
#[inline(always)]
#[must_use]
pub const fn second_candidate(first: u32, random: u32, live_count: u32) -> u32 {
    if live_count < 2 || first >= live_count {
        return first;
    }
    // One of the live_count - 1 other positions, counted on from `first`. The random number is
    // scaled by multiplying rather than dividing, as the kernel's `reciprocal_scale` does.
    let offset = ((random as u64 * (live_count - 1) as u64) >> 32) as u32;
    let position = first + 1 + offset;
    if position >= live_count {
        position - live_count
    } else {
        position
    }
}

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
    if len == 0 {
        return 0;
    }
    // A 32-bit division while the counter fits (the first 4 billion connections): it costs
    // about half of a 64-bit one on x86.
    if counter <= u32::MAX as u64 {
        return (counter as u32) % len;
    }
    // The remainder is below `len`, so it fits in u32.
    (counter % len as u64) as u32
}

/// The live-table position probed after `position`: the next one, wrapping to 0 at the end (no
/// division on the program's path).
#[inline(always)]
#[must_use]
pub const fn next_position(position: u32, live_count: u32) -> u32 {
    if position + 1 >= live_count {
        0
    } else {
        position + 1
    }
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
        assert_eq!(next_position(3, 5), 4);
        assert_eq!(next_position(4, 5), 0);
        assert_eq!(next_position(0, 1), 0);
        assert_eq!(next_position(0, 0), 0);
        for counter in [u64::from(u32::MAX) - 2, u64::from(u32::MAX) + 5] {
            for len in 1..10u32 {
                assert_eq!(
                    u64::from(wrap_counter(counter, len)),
                    counter % u64::from(len)
                );
            }
        }
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
        let hash = StickyHash {
            key: [0x1234_5678, 0x9abc_def0],
            v4_prefix: 32,
            v6_prefix: 128,
        };
        let buckets: Vec<u32> = (1..=250u8)
            .map(|i| sticky_bucket(hash.ipv4([127, 0, 0, i])))
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
        assert_ne!(hash.ipv4([10, 0, 0, 1]), hash.ipv4([10, 0, 0, 2]));
        let mut a = [0u8; 16];
        let mut b = [0u8; 16];
        a[15] = 1;
        b[0] = 1;
        assert_ne!(hash.ipv6(a), hash.ipv6(b));
    }

    #[test]
    fn the_key_changes_every_bucket_assignment() {
        let with = |k0, k1| StickyHash {
            key: [k0, k1],
            v4_prefix: 32,
            v6_prefix: 64,
        };
        let (a, b) = (with(1, 2), with(3, 4));
        let same = (0..=255u8)
            .filter(|&i| {
                sticky_owner(sticky_bucket(a.ipv4([10, 1, 2, i])), 4)
                    == sticky_owner(sticky_bucket(b.ipv4([10, 1, 2, i])), 4)
            })
            .count();
        // Independent keys agree on about a quarter of the addresses, by chance alone.
        assert!(
            (30..=100).contains(&same),
            "{same} of 256 kept their worker"
        );
    }

    #[test]
    fn prefixes_group_addresses() {
        let hash = StickyHash {
            key: [7, 8],
            v4_prefix: 24,
            v6_prefix: 64,
        };
        assert_eq!(hash.ipv4([192, 0, 2, 1]), hash.ipv4([192, 0, 2, 200]));
        assert_ne!(hash.ipv4([192, 0, 2, 1]), hash.ipv4([192, 0, 3, 1]));
        let v6 = |last: u8, net: u8| {
            let mut a = [
                0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, net, 0, 0, 0, 0, 0, 0, 0, last,
            ];
            a[9] = last.wrapping_mul(7);
            hash.ipv6(a)
        };
        assert_eq!(v6(1, 0), v6(2, 0), "one /64, privacy addresses");
        assert_ne!(v6(1, 0), v6(1, 1), "another /64");
        let mapped = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 0, 2, 9];
        assert_eq!(hash.ipv6(mapped), hash.ipv4([192, 0, 2, 9]));
        assert_eq!(prefix_mask(64, 0), u32::MAX);
        assert_eq!(prefix_mask(64, 2), 0);
        assert_eq!(prefix_mask(24, 0), 0xffff_ff00);
        assert_eq!(prefix_mask(0, 0), 0);
        assert_eq!(prefix_mask(128, 3), u32::MAX);
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

    #[test]
    fn tcp_flags_classify_segments() {
        assert_eq!(Segment::from_flags(0x02), Segment::Syn);
        assert_eq!(
            Segment::from_flags(0x02 | 0x40 | 0x80),
            Segment::Syn,
            "ECE/CWR SYN"
        );
        assert_eq!(Segment::from_flags(0x10), Segment::Ack);
        assert_eq!(
            Segment::from_flags(0x18),
            Segment::Ack,
            "ACK with PSH (cookie ACK with data)"
        );
        assert_eq!(Segment::from_flags(0x12), Segment::Other, "SYN+ACK");
        assert_eq!(Segment::from_flags(0x14), Segment::Other, "RST+ACK");
        assert_eq!(Segment::from_flags(0x11), Segment::Other, "FIN+ACK");
        assert_eq!(Segment::from_flags(0x04), Segment::Other, "RST");
    }

    #[test]
    fn least_conn_candidates() {
        for live in 2..=9u32 {
            for first in 0..live {
                let mut seen = std::collections::BTreeSet::new();
                for i in 0..1000u32 {
                    // Spread over the whole u32 range, as bpf_get_prandom_u32 is.
                    let random = i.wrapping_mul(0x9e37_79b9);
                    let second = second_candidate(first, random, live);
                    assert!(second < live);
                    assert_ne!(second, first, "live={live}");
                    seen.insert(second);
                }
                assert_eq!(
                    seen.len() as u32,
                    live - 1,
                    "every other position is reachable"
                );
            }
        }
        assert_eq!(second_candidate(0, 7, 1), 0);
        assert_eq!(second_candidate(0, 7, 0), 0);
        assert!(second_is_less_loaded(3, 2));
        assert!(
            !second_is_less_loaded(2, 2),
            "a tie keeps the rotation's choice"
        );
    }
}
