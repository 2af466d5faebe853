//! The steering programs.
//!
//! `select_worker` (`SK_REUSEPORT`): for every new connection (and every connection migrated off
//! a closing listener) it picks the worker socket of the reuseport group that receives it.
//!
//! Selection, per `CONFIG.mode`:
//! - round-robin: a global atomic counter walks the live table, so N live workers and M
//!   connections give every worker M/N rounded up or down, across all CPUs. SYNs and the ACKs
//!   that complete a SYN-cookie handshake turn separate counters: with cookies the program runs
//!   for both, and the ACK's choice is the one that gets the connection;
//! - sticky: the client's source address picks a sticky-table bucket, the bucket names a slot.
//!   If that slot is empty (or held out of the selection: user space then points its buckets
//!   at no slot), a second hash of the address picks a live-table position instead, so only
//!   that slot's clients move, and they come back when the slot serves again;
//! - least-conn: of two live sockets, the rotation's choice and a random other one, the one with
//!   fewer open connections (a tie keeps the rotation's); with two workers that is exact.
//!
//! `count_connections` (`tp_btf/inet_sock_set_state`): counts every connection of a tagged
//! listener once as it reaches ESTABLISHED and once as it leaves it, per socket (open now, and
//! in all) and per slot. The tag (`SOCKET_TAGS`) is socket storage that the kernel copies from a
//! listener to each connection it accepts; sockets without it (clients, other servers) are left
//! alone at the cost of one storage lookup. A listener's readiness probe (the tag names its
//! source port) is counted apart, in `probes`. An established connection migrated off a closing
//! listener keeps that listener's tag: `select_worker` counts it open on the socket it moves to
//! and records the move in `MOVED` (by socket cookie), where the counter finds it as it closes.
//!
//! Readiness probes: while `CONFIG.probing` is non-zero, a connection whose source port is in
//! `PROBE_PORTS` goes to that slot's starting socket in `PROBES` (the supervisor's proof that a
//! starting worker accepts), and is reset rather than sent elsewhere. With no probe pending the
//! program reads nothing more than before.
//!
//! Fallbacks, in order, for every helper failure:
//! 1. `bpf_sk_select_reuseport` fails (slot emptied since user space wrote the live table, or a
//!    socket closed after lookup, -ENOENT): try the next live-table position, at most
//!    `MAX_PROBES` in all;
//! 2. sticky mode cannot read the source address (`bpf_skb_load_bytes_relative` fails, or the
//!    frame is neither IPv4 nor IPv6): use the kernel's 4-tuple hash (`ctx.hash()`) instead;
//! 3. a segment that is not a connection attempt (RST, FIN: not a SYN, not an ACK) turns no
//!    rotation and selects nothing, like the last resort below;
//! 4. least-conn cannot read a candidate's count: the candidate counts as unloaded;
//! 5. nothing selected (no live slot, probes exhausted, or a map lookup failed): return `SK_PASS`
//!    without a selection. The kernel then picks a group member by its 4-tuple hash
//!    (`reuseport_select_sock_by_hash`). Every member of our group is a worker's socket, or the
//!    supervisor's parking socket, which is replaced once a worker serves so that what waited on
//!    it migrates; so the connection waits and is served. `SK_DROP` would answer the SYN with a
//!    RST instead. See net/core/filter.c `bpf_run_sk_reuseport` and net/core/sock_reuseport.c
//!    `reuseport_select_sock`;
//! 6. a readiness probe (its source port in `PROBE_PORTS`) whose starting socket is gone from
//!    `PROBES`, or that would migrate off a closing socket: `SK_DROP`, the one place a connection
//!    is reset on purpose, so that no serving worker sees a connection nobody made. A port
//!    lookup that fails means "not a probe";
//! 7. the counter cannot read a probed connection's remote port (`bpf_probe_read_kernel`
//!    fails): it counts as the worker's own connection;
//! 8. a migrated established connection cannot be recorded in `MOVED` (full) or its new socket
//!    has no counters: it stays counted on the socket it left, as before the move, and is
//!    counted down there when it closes; the first case counts `event::MOVE_UNRECORDED`.
#![no_std]
#![no_main]
// `fetch_add` needs compare-and-swap, which the BPF target does not declare; the fetching add
// itself is one BPF instruction, reached through the intrinsic.
#![feature(core_intrinsics)]
#![expect(
    internal_features,
    reason = "atomic_xadd is the only way to a fetching add on BPF"
)]

use core::{
    ffi::c_void,
    intrinsics::{AtomicOrdering, atomic_xadd},
    ptr,
};

use aya_ebpf::{
    EbpfContext,
    bindings::{
        bpf_hdr_start_off::BPF_HDR_START_NET,
        bpf_sock,
        sk_action::{SK_DROP, SK_PASS},
    },
    helpers::{
        bpf_probe_read_kernel,
        generated::{
            bpf_get_prandom_u32, bpf_get_socket_cookie, bpf_sk_storage_get,
            bpf_skb_load_bytes_relative,
        },
    },
    macros::{btf_map, btf_tracepoint, map, sk_reuseport},
    maps::{Array, HashMap, PerCpuArray, ReusePortSockArray},
    programs::{BtfTracePointContext, SkReuseportContext, SockContext},
};
use cluster_common::{
    Config, MAX_MOVED, MAX_PROBES, MAX_SLOTS, MAX_SOCKETS, STICKY_BUCKETS, Segment, SlotStats,
    SocketStats, SocketTag, StickyHash, event, mode, next_position, rotation, second_candidate,
    second_is_less_loaded, sticky_bucket, sticky_fallback_start, tcp_state, wrap_counter,
};

#[map]
static SOCKETS: ReusePortSockArray = ReusePortSockArray::with_max_entries(MAX_SLOTS, 0);
#[map]
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);
#[map]
static LIVE: Array<u32> = Array::with_max_entries(MAX_SLOTS, 0);
#[map]
static STICKY: Array<u32> = Array::with_max_entries(STICKY_BUCKETS, 0);
#[map]
static ROTATION: Array<u64> = Array::with_max_entries(rotation::COUNT, 0);
#[map]
static SLOT_STATS: PerCpuArray<SlotStats> = PerCpuArray::with_max_entries(MAX_SLOTS, 0);
#[map]
static EVENTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(event::COUNT, 0);
#[map]
static SLOT_SOCKET: Array<u32> = Array::with_max_entries(MAX_SLOTS, 0);
#[map]
static SOCKET_STATS: Array<SocketStats> = Array::with_max_entries(MAX_SOCKETS, 0);
#[map]
static PROBES: ReusePortSockArray = ReusePortSockArray::with_max_entries(MAX_SLOTS, 0);
#[map]
static PROBE_PORTS: HashMap<u32, u32> = HashMap::with_max_entries(MAX_SLOTS, 0);
/// Allocated as entries are added (`BPF_F_NO_PREALLOC`): an entry lives from a connection's
/// migration until it leaves ESTABLISHED, which for a kept-alive connection can be minutes. The
/// connection keeps its old listener's tag, so it stays counted open on the old socket too
/// until it closes.
#[map]
static MOVED: HashMap<u64, u32> = HashMap::with_max_entries(MAX_MOVED, BPF_F_NO_PREALLOC);
#[map]
static MOVED_COUNT: Array<u64> = Array::with_max_entries(1, 0);

/// `BPF_F_NO_PREALLOC` (include/uapi/linux/bpf.h).
const BPF_F_NO_PREALLOC: u32 = 1;

/// An `SK_STORAGE` map definition in the BTF form the loader reads (aya-obj `parse_btf_map_def`):
/// each member's array length is the value. aya-ebpf's own `SkStorage` fixes its flags at
/// `BPF_F_NO_PREALLOC`, and the tag must be copied to accepted connections, which takes
/// `BPF_F_CLONE` as well (net/core/bpf_sk_storage.c `bpf_sk_storage_clone`).
#[repr(C)]
#[derive(Debug)]
pub struct CloningSkStorage<T> {
    r#type: *const [i32; 24],     // BPF_MAP_TYPE_SK_STORAGE
    key: *const i32,              // the socket, as an fd from user space
    value: *const T,              // the tag
    max_entries: *const [i32; 0], // socket storage has no size of its own
    map_flags: *const [i32; 513], // BPF_F_NO_PREALLOC (1) | BPF_F_CLONE (512)
}

// SAFETY: the members are type markers for the loader, never dereferenced.
unsafe impl<T> Sync for CloningSkStorage<T> {}

#[btf_map]
static SOCKET_TAGS: CloningSkStorage<SocketTag> = CloningSkStorage {
    r#type: ptr::null(),
    key: ptr::null(),
    value: ptr::null(),
    max_entries: ptr::null(),
    map_flags: ptr::null(),
};

/// Offset of the flags byte in the TCP header; `data` starts at the TCP header.
const TCP_FLAGS: usize = 13;
/// Offset of the remote port (`skc_dport`, network byte order) in `struct sock`: after
/// `skc_addrpair` (8 bytes) and `skc_hash` (4) at the start of `struct sock_common`
/// (include/net/sock.h), unchanged since the struct was introduced.
const SK_DPORT: usize = 12;

/// `skb->protocol` as the context carries it: the ethertype in network byte order.
const ETH_P_IP: u32 = u16::to_be(0x0800) as u32;
const ETH_P_IPV6: u32 = u16::to_be(0x86dd) as u32;
/// `AF_INET`, as `bpf_sock.family` holds it.
const AF_INET: u32 = 2;
/// Offsets of the source address in the IPv4 and IPv6 headers.
const IPV4_SADDR: u32 = 12;
const IPV6_SADDR: u32 = 8;

/// Loaded with `BPF_SK_REUSEPORT_SELECT_OR_MIGRATE` (Linux 5.14+): also runs when a closing
/// listener's queued and in-flight connections are moved to another socket.
#[sk_reuseport(migrate)]
pub fn select_worker(ctx: SkReuseportContext) -> u32 {
    select(&ctx, true)
}

/// For kernels without migration: never touches `migrating_sk`, which they do not have.
#[sk_reuseport]
pub fn select_worker_no_migrate(ctx: SkReuseportContext) -> u32 {
    select(&ctx, false)
}

/// The cost floor: a program that decides nothing (the kernel hashes). Loaded only to measure,
/// beside the real one (`--steering floor-empty`, `cargo xtask cost`).
#[sk_reuseport(migrate)]
pub fn floor_empty(_ctx: SkReuseportContext) -> u32 {
    SK_PASS
}

/// The cost of one selection: `bpf_sk_select_reuseport` of the first live slot, nothing else.
/// Loaded only to measure (`--steering floor-select`).
#[sk_reuseport(migrate)]
pub fn floor_select(ctx: SkReuseportContext) -> u32 {
    if let Some(&slot) = LIVE.get(0) {
        let _ = SOCKETS.select_reuseport(&ctx, slot);
    }
    SK_PASS
}

#[inline(always)]
fn select(ctx: &SkReuseportContext, migration_aware: bool) -> u32 {
    let Some(config) = CONFIG.get(0) else {
        count(event::LAST_RESORT);
        return SK_PASS;
    };
    let live_count = if config.live_count > MAX_SLOTS {
        MAX_SLOTS
    } else {
        config.live_count
    };
    if migration_aware && let Some(migrating) = ctx.migrating_sk() {
        // A probe waiting on a starting worker's socket that closes is not moved to a serving
        // worker, which would see (and count) a connection nobody made: it is reset.
        // SAFETY: `sock` is the non-NULL `migrating_sk`; `dst_port` is a field the verifier
        // allows on it (net/core/filter.c `bpf_sock_common_is_valid_access`).
        if config.probing != 0
            && is_probe(u32::from(unsafe {
                ptr::read_volatile(&raw const (*migrating.sock).dst_port)
            }))
        {
            return SK_DROP;
        }
        // Two of the three migration paths carry no packet: the client's address is read from
        // the connection being moved.
        if config.mode == mode::STICKY {
            let hash = migrating_address_hash(&migrating, &config.sticky);
            return select_sticky(ctx, hash, live_count, Kind::Migrated(migrating.sock));
        }
        return select_by_rotation(
            ctx,
            config.mode,
            rotation::MIGRATE,
            live_count,
            Kind::Migrated(migrating.sock),
        );
    }
    let counter = match segment(ctx) {
        Segment::Syn => rotation::SYN,
        Segment::Ack => rotation::COOKIE_ACK,
        Segment::Other => {
            count(event::NOT_A_CONNECTION);
            return SK_PASS;
        }
    };
    if config.probing != 0
        && let Some(verdict) = steer_probe(ctx)
    {
        return verdict;
    }
    if config.mode == mode::STICKY {
        let hash = match source_address_hash(ctx, &config.sticky) {
            Some(hash) => hash,
            None => {
                count(event::ADDR_UNREADABLE);
                ctx.hash()
            }
        };
        return select_sticky(ctx, hash, live_count, Kind::Selected);
    }
    select_by_rotation(ctx, config.mode, counter, live_count, Kind::Selected)
}

/// Round-robin, or least-conn starting from the rotation's choice, on rotation `counter`.
#[inline(always)]
fn select_by_rotation(
    ctx: &SkReuseportContext,
    mode: u32,
    counter: u32,
    live_count: u32,
    kind: Kind,
) -> u32 {
    let start = wrap_counter(advance(counter), live_count);
    if mode == mode::LEAST_CONN {
        return select_least_conn(ctx, start, live_count, kind);
    }
    pick_live(ctx, start, live_count, kind)
}

/// What the packet the program runs for is, from its TCP flags; `Other` when they cannot be read.
#[inline(always)]
fn segment(ctx: &SkReuseportContext) -> Segment {
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + TCP_FLAGS + 1 > end {
        return Segment::Other;
    }
    // SAFETY: the byte lies between `data` and `data_end`, checked just above.
    let flags = unsafe { *((data + TCP_FLAGS) as *const u8) };
    Segment::from_flags(flags)
}

/// A readiness probe, known by its source port, goes to its starting worker's socket (not in
/// `SOCKETS` yet) and counts nowhere here; one whose socket is gone is reset rather than sent to
/// a serving worker. `None` for any other connection. Runs only while probes are pending.
#[inline(always)]
fn steer_probe(ctx: &SkReuseportContext) -> Option<u32> {
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + 2 > end {
        return None;
    }
    // SAFETY: the source port (the TCP header's first two bytes) lies between `data` and
    // `data_end`, checked just above; kept in network byte order, as user space writes it.
    let port = u32::from(unsafe { ptr::read_unaligned(data as *const u16) });
    // SAFETY: a plain lookup; the value is copied out at once.
    let slot = *unsafe { PROBE_PORTS.get(port) }?;
    Some(if PROBES.select_reuseport(ctx, slot).is_ok() {
        SK_PASS
    } else {
        SK_DROP
    })
}

/// Whether `port` (network byte order) is a pending probe's source port.
#[inline(always)]
fn is_probe(port: u32) -> bool {
    // SAFETY: a plain lookup.
    unsafe { PROBE_PORTS.get(port) }.is_some()
}

/// Least-conn: the live position `first` (the rotation's) against a random other one; the one
/// whose socket has fewer open connections is tried first, then the usual probing.
#[inline(always)]
fn select_least_conn(ctx: &SkReuseportContext, first: u32, live_count: u32, kind: Kind) -> u32 {
    // SAFETY: a helper without arguments.
    let random = unsafe { bpf_get_prandom_u32() };
    let second = second_candidate(first, random, live_count);
    let start = if second_is_less_loaded(open_at(first), open_at(second)) {
        second
    } else {
        first
    };
    pick_live(ctx, start, live_count, kind)
}

/// Open connections of the socket serving at live position `position`; 0 when unknown. A count
/// that wrapped below zero (an update the kernel skipped, see the README) also reads as 0.
#[inline(always)]
fn open_at(position: u32) -> u64 {
    let Some(&slot) = LIVE.get(position) else {
        return 0;
    };
    let Some(&id) = SLOT_SOCKET.get(slot) else {
        return 0;
    };
    match SOCKET_STATS.get(id) {
        Some(stats) if stats.open <= i64::MAX as u64 => stats.open,
        _ => 0,
    }
}

/// Sticky: the address hash's bucket names a slot; if that slot has no socket, or is held out of
/// the selection (its worker stopped accepting), a second hash picks a live position to probe
/// from, so only that slot's clients move, and they come back when it serves again. (User space
/// holds a slot out by pointing its buckets at `MAX_SLOTS`, which no socket occupies.)
#[inline(always)]
fn select_sticky(ctx: &SkReuseportContext, hash: u32, live_count: u32, kind: Kind) -> u32 {
    if let Some(&slot) = STICKY.get(sticky_bucket(hash))
        && SOCKETS.select_reuseport(ctx, slot).is_ok()
    {
        record(slot, kind);
        return SK_PASS;
    }
    count(event::STICKY_MOVED);
    pick_live(
        ctx,
        sticky_fallback_start(hash, live_count),
        live_count,
        kind,
    )
}

/// Tries live-table positions `start` (below `live_count`), `start + 1`, …, wrapping (at most
/// `MAX_PROBES`, at most `live_count`) and selects the first whose socket is present.
#[inline(always)]
fn pick_live(ctx: &SkReuseportContext, start: u32, live_count: u32, kind: Kind) -> u32 {
    let mut attempt = 0;
    let mut position = start;
    while attempt < MAX_PROBES && attempt < live_count {
        if let Some(&slot) = LIVE.get(position)
            && SOCKETS.select_reuseport(ctx, slot).is_ok()
        {
            if attempt > 0 {
                count(event::PROBED);
            }
            record(slot, kind);
            return SK_PASS;
        }
        attempt += 1;
        position = next_position(position, live_count);
    }
    count(event::LAST_RESORT);
    SK_PASS
}

/// Reads the client's source address from the network header. `data` starts at the TCP header,
/// so the address is read relative to the network header instead (the kernel selftest
/// `test_select_reuseport_kern.c` does the same). A dual-stack `[::]` group sees IPv4 clients as
/// `ETH_P_IP` frames.
#[inline(always)]
fn source_address_hash(ctx: &SkReuseportContext, sticky: &StickyHash) -> Option<u32> {
    let protocol = ctx.eth_protocol();
    if protocol == ETH_P_IP {
        let mut addr = [0u8; 4];
        load_network_bytes(ctx, IPV4_SADDR, &mut addr).then(|| sticky.ipv4(addr))
    } else if protocol == ETH_P_IPV6 {
        let mut addr = [0u8; 16];
        load_network_bytes(ctx, IPV6_SADDR, &mut addr).then(|| sticky.ipv6(addr))
    } else {
        None
    }
}

/// The client address of a connection being migrated, hashed as its SYN was: the remote end
/// (`dst_ip4`/`dst_ip6`) of the moving socket. An IPv4 client of a dual-stack socket shows as
/// `::ffff:a.b.c.d`, which `StickyHash::ipv6_words` hashes as the IPv4 address.
#[inline(always)]
fn migrating_address_hash(migrating: &SockContext, sticky: &StickyHash) -> u32 {
    let sock = migrating.sock;
    // SAFETY: `sock` is the non-NULL `migrating_sk`; family and the address words are fields the
    // verifier allows on it, read one u32 at a time (net/core/filter.c
    // `bpf_sock_common_is_valid_access`).
    unsafe {
        if ptr::read_volatile(&raw const (*sock).family) == AF_INET {
            let addr = ptr::read_volatile(&raw const (*sock).dst_ip4);
            return sticky.ipv4(addr.to_ne_bytes());
        }
        // Each word is in network byte order, as on the wire.
        let word = |i: usize| u32::from_be(ptr::read_volatile(&raw const (*sock).dst_ip6[i]));
        sticky.ipv6_words([word(0), word(1), word(2), word(3)])
    }
}

#[inline(always)]
fn load_network_bytes<const N: usize>(
    ctx: &SkReuseportContext,
    offset: u32,
    buf: &mut [u8; N],
) -> bool {
    // SAFETY: the helper writes at most N bytes into `buf`, which is N bytes long.
    let rc = unsafe {
        bpf_skb_load_bytes_relative(
            ctx.as_ptr(),
            offset,
            buf.as_mut_ptr().cast(),
            N as u32,
            BPF_HDR_START_NET,
        )
    };
    rc == 0
}

/// Returns the counter's previous value and advances it, atomically across CPUs. Needs a
/// fetching atomic add (BPF ISA v3, built with `-C target-cpu=v3`) and `SeqCst`: with relaxed
/// ordering the emitted instruction did not fetch (measured: the object had a plain add). The BPF target
/// has 64-bit atomics only.
#[inline(always)]
fn advance(index: u32) -> u64 {
    match ROTATION.get_ptr_mut(index) {
        // SAFETY: the pointer is to a live, aligned u64 in the map's value area.
        Some(value) => unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(value, 1) },
        None => 0,
    }
}

/// Whether a selection is for a new connection or a migrated one. New connections are counted
/// by `count_connections` when they are established, so that the two runs of a SYN-cookie
/// handshake count once; a migration is counted here.
#[derive(Clone, Copy)]
enum Kind {
    Selected,
    /// Carries the connection being moved (`migrating_sk`, not NULL).
    Migrated(*mut bpf_sock),
}

#[inline(always)]
fn record(slot: u32, kind: Kind) {
    let Kind::Migrated(connection) = kind else {
        return;
    };
    if let Some(stats) = SLOT_STATS.get_ptr_mut(slot) {
        // SAFETY: a per-CPU value; `migrated` is only written by this program, which does not
        // nest on a CPU.
        unsafe { (*stats).migrated += 1 };
    }
    move_open_count(slot, connection);
}

/// An established connection moved off a closing listener (one that waited in its accept
/// queue) keeps that listener's tag, so `count_connections` would count it down there: it is
/// counted open on the socket of `slot` now, and recorded in `MOVED` so that it is counted down
/// there too. A request still in its handshake needs nothing: its connection is created later
/// from the listener it moved to, so it inherits that listener's tag (net/ipv4/tcp_ipv4.c
/// `tcp_v4_rcv`, net/ipv4/inet_connection_sock.c `inet_csk_listen_stop`). A TCP Fast Open
/// child, already a socket in SYN_RECV, keeps its old listener's tag and is counted there. If
/// `MOVED` is full, the connection stays counted on its old socket (`event::MOVE_UNRECORDED`).
#[inline(always)]
fn move_open_count(slot: u32, connection: *mut bpf_sock) {
    // SAFETY: `connection` is the non-NULL `migrating_sk`; `state` is a field the verifier allows
    // on it (net/core/filter.c `bpf_sock_common_is_valid_access`).
    let state = unsafe { ptr::read_volatile(&raw const (*connection).state) };
    if state != tcp_state::ESTABLISHED as u32 {
        return;
    }
    let Some(&id) = SLOT_SOCKET.get(slot) else {
        return;
    };
    let Some(stats) = SOCKET_STATS.get_ptr_mut(id) else {
        return;
    };
    // SAFETY: the helper takes any socket pointer (`ARG_PTR_TO_BTF_ID_SOCK_COMMON`).
    let cookie = unsafe { bpf_get_socket_cookie(connection.cast()) };
    // SAFETY: a plain lookup; the value is copied out at once.
    let earlier = unsafe { MOVED.get(cookie) }.copied();
    if MOVED.insert(cookie, id, 0).is_err() {
        count(event::MOVE_UNRECORDED);
        return;
    }
    match earlier {
        // Moved a second time (the socket it had moved to closed as well).
        Some(earlier) => count_down(earlier),
        None => {
            if let Some(moved) = MOVED_COUNT.get_ptr_mut(0) {
                // SAFETY: a live, aligned u64 of the map; other CPUs update it too.
                unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(moved, 1) };
            }
        }
    }
    // SAFETY: as above.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(&raw mut (*stats).open, 1) };
}

/// One open connection fewer on socket `id`.
#[inline(always)]
fn count_down(id: u32) {
    if let Some(stats) = SOCKET_STATS.get_ptr_mut(id) {
        // SAFETY: a live, aligned u64 field of the map; adding u64::MAX subtracts one.
        unsafe {
            atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(&raw mut (*stats).open, u64::MAX)
        };
    }
}

/// A connection leaving ESTABLISHED that had been moved off a closing listener is counted down
/// on the socket it moved to as well (`move_open_count`). Looks nothing up while no connection
/// is moved.
#[inline(always)]
fn count_down_moved(sk: *mut c_void) {
    match MOVED_COUNT.get(0) {
        Some(&moved) if moved != 0 => {}
        _ => return,
    }
    // SAFETY: `sk` is the tracepoint's socket; the helper takes any socket pointer.
    let cookie = unsafe { bpf_get_socket_cookie(sk) };
    // SAFETY: a plain lookup; the value is copied out at once.
    let Some(&id) = (unsafe { MOVED.get(cookie) }) else {
        return;
    };
    // Only the CPU whose delete succeeds counts down, should two race for one connection.
    if MOVED.remove(cookie).is_err() {
        return;
    }
    count_down(id);
    if let Some(moved) = MOVED_COUNT.get_ptr_mut(0) {
        // SAFETY: as in `move_open_count`; adding u64::MAX subtracts one.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(moved, u64::MAX) };
    }
}

/// Counts a tagged listener's connections as they reach and leave ESTABLISHED. A connection that
/// is reset before it is established is never counted; one in the accept queue is (it waits for
/// its worker). Runs for every TCP state change on the host; returns 0 as tracing programs must.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn count_connections(ctx: BtfTracePointContext) -> i32 {
    let old: i32 = ctx.arg(1);
    let new: i32 = ctx.arg(2);
    let entering = new == tcp_state::ESTABLISHED;
    if !entering && old != tcp_state::ESTABLISHED {
        return 0;
    }
    let sk: *mut c_void = ctx.arg(0);
    if !entering {
        // Before the tag: a connection moved off the parking socket, which has none, was counted
        // on the socket it moved to all the same.
        count_down_moved(sk);
    }
    // SAFETY: `sk` is the tracepoint's `struct sock *` (a BTF pointer the verifier checks); the
    // helper returns NULL or a pointer to this socket's tag.
    let tag = unsafe {
        bpf_sk_storage_get(
            ptr::from_ref(&SOCKET_TAGS).cast_mut().cast(),
            sk,
            ptr::null_mut(),
            0,
        )
    }
    .cast::<SocketTag>();
    if tag.is_null() {
        return 0;
    }
    // SAFETY: non-null, so it points at the tag the kernel keeps for this socket.
    let SocketTag {
        slot,
        id,
        probe_port,
    } = unsafe { *tag };
    let Some(stats) = SOCKET_STATS.get_ptr_mut(id) else {
        return 0;
    };
    if probe_port != 0 && remote_port(sk) == probe_port {
        // The supervisor's readiness probe: counted apart, so the counters stay what the
        // worker's own clients made.
        if entering {
            // SAFETY: as below.
            unsafe {
                atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(&raw mut (*stats).probes, 1)
            };
        }
        return 0;
    }
    // SAFETY: pointers to aligned u64 fields of a live map value; other CPUs update the same
    // value, hence the atomic adds. Adding u64::MAX subtracts one.
    unsafe {
        if entering {
            atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(&raw mut (*stats).open, 1);
            atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(&raw mut (*stats).connections, 1);
        } else {
            atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(&raw mut (*stats).open, u64::MAX);
        }
    }
    if entering && let Some(slot_stats) = SLOT_STATS.get_ptr_mut(slot) {
        // SAFETY: a per-CPU value; `connections` is only written by this program, and the kernel
        // never runs a tracing program nested in itself on one CPU.
        unsafe { (*slot_stats).connections += 1 };
    }
    0
}

/// The remote port of a connection (network byte order, in a u32); 0 when it cannot be read.
#[inline(always)]
fn remote_port(sk: *mut c_void) -> u32 {
    // SAFETY: `sk` is the tracepoint's `struct sock *`; the helper copies two bytes of it, or
    // fails without touching anything.
    unsafe { bpf_probe_read_kernel(sk.cast::<u8>().add(SK_DPORT).cast::<u16>()) }
        .map_or(0, u32::from)
}

#[inline(always)]
fn count(event: u32) {
    if let Some(counter) = EVENTS.get_ptr_mut(event) {
        // SAFETY: as in `record`.
        unsafe { *counter += 1 };
    }
}

/// The kernel refuses GPL-only helpers to programs without a GPL-compatible licence.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable: the program has no panicking operations (its arithmetic wraps or is clamped:
    // release builds have no overflow checks, and every index is checked by the map). A loop is
    // the only thing a no_std panic handler can do; the verifier would reject a program that
    // could reach it.
    loop {}
}
