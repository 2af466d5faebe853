//! The `SK_REUSEPORT` program: for every new connection (and every connection migrated off a
//! closing listener) it picks the worker socket of the reuseport group that receives it.
//!
//! Selection, per `CONFIG.mode`:
//! - round-robin: a global atomic counter walks the live table, so N live workers and M
//!   connections give every worker M/N rounded up or down, across all CPUs;
//! - sticky: the client's source address picks a sticky-table bucket, the bucket names a slot.
//!   If that slot is empty, a second hash of the address picks a live-table position instead, so
//!   only that slot's clients move, and they come back when the slot is filled again.
//!
//! Fallbacks, in order, for every helper failure:
//! 1. `bpf_sk_select_reuseport` fails (slot emptied since user space wrote the live table, or a
//!    socket closed after lookup, -ENOENT): try the next live-table position, at most
//!    `MAX_PROBES` in all;
//! 2. sticky mode cannot read the source address (`bpf_skb_load_bytes_relative` fails, or the
//!    frame is neither IPv4 nor IPv6): use the kernel's 4-tuple hash (`ctx.hash()`) instead;
//! 3. nothing selected (no live slot, probes exhausted, or a map lookup failed): return `SK_PASS`
//!    without a selection. The kernel then picks a group member by its 4-tuple hash
//!    (`reuseport_select_sock_by_hash`). Every member of our group is a worker's socket (the
//!    supervisor keeps no copies, and a closing worker's socket leaves the group at once), so the
//!    connection is still served; `SK_DROP` would answer the SYN with a RST instead.
//!    See net/core/filter.c `bpf_run_sk_reuseport` and net/core/sock_reuseport.c
//!    `reuseport_select_sock`.
#![no_std]
#![no_main]
// `fetch_add` needs compare-and-swap, which the BPF target does not declare; the fetching add
// itself is one BPF instruction, reached through the intrinsic.
#![feature(core_intrinsics)]
#![expect(
    internal_features,
    reason = "atomic_xadd is the only way to a fetching add on BPF"
)]

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    EbpfContext,
    bindings::{bpf_hdr_start_off::BPF_HDR_START_NET, sk_action::SK_PASS},
    helpers::generated::bpf_skb_load_bytes_relative,
    macros::{map, sk_reuseport},
    maps::{Array, PerCpuArray, ReusePortSockArray},
    programs::SkReuseportContext,
};
use cluster_common::{
    Config, MAX_PROBES, MAX_SLOTS, STICKY_BUCKETS, SlotStats, event, ipv4_hash, ipv6_hash, mode,
    probe_position, rotation, sticky_bucket, sticky_fallback_start, wrap_counter,
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

/// `skb->protocol` as the context carries it: the ethertype in network byte order.
const ETH_P_IP: u32 = u16::to_be(0x0800) as u32;
const ETH_P_IPV6: u32 = u16::to_be(0x86dd) as u32;
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
    if migration_aware && ctx.migrating_sk().is_some() {
        let start = wrap_counter(advance(rotation::MIGRATE), live_count);
        return pick_live(ctx, start, live_count, Kind::Migrated);
    }
    if config.mode == mode::STICKY {
        return select_sticky(ctx, live_count);
    }
    let start = wrap_counter(advance(rotation::NEW), live_count);
    pick_live(ctx, start, live_count, Kind::Selected)
}

#[inline(always)]
fn select_sticky(ctx: &SkReuseportContext, live_count: u32) -> u32 {
    let hash = match source_address_hash(ctx) {
        Some(hash) => hash,
        None => {
            count(event::ADDR_UNREADABLE);
            ctx.hash()
        }
    };
    if let Some(&slot) = STICKY.get(sticky_bucket(hash))
        && SOCKETS.select_reuseport(ctx, slot).is_ok()
    {
        record(slot, Kind::Selected);
        return SK_PASS;
    }
    count(event::STICKY_MOVED);
    pick_live(
        ctx,
        sticky_fallback_start(hash, live_count),
        live_count,
        Kind::Selected,
    )
}

/// Tries live-table positions `start`, `start + 1`, … (at most `MAX_PROBES`, at most
/// `live_count`) and selects the first whose socket is present.
#[inline(always)]
fn pick_live(ctx: &SkReuseportContext, start: u32, live_count: u32, kind: Kind) -> u32 {
    let mut attempt = 0;
    while attempt < MAX_PROBES && attempt < live_count {
        let position = probe_position(start, attempt, live_count);
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
    }
    count(event::LAST_RESORT);
    SK_PASS
}

/// Reads the client's source address from the network header. `data` starts at the TCP header,
/// so the address is read relative to the network header instead (the kernel selftest
/// `test_select_reuseport_kern.c` does the same). A dual-stack `[::]` group sees IPv4 clients as
/// `ETH_P_IP` frames.
#[inline(always)]
fn source_address_hash(ctx: &SkReuseportContext) -> Option<u32> {
    let protocol = ctx.eth_protocol();
    if protocol == ETH_P_IP {
        let mut addr = [0u8; 4];
        load_network_bytes(ctx, IPV4_SADDR, &mut addr).then(|| ipv4_hash(addr))
    } else if protocol == ETH_P_IPV6 {
        let mut addr = [0u8; 16];
        load_network_bytes(ctx, IPV6_SADDR, &mut addr).then(|| ipv6_hash(addr))
    } else {
        None
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
/// ordering the emitted instruction did not fetch (../shared/docs/toolchain.md). The BPF target
/// has 64-bit atomics only.
#[inline(always)]
fn advance(index: u32) -> u64 {
    match ROTATION.get_ptr_mut(index) {
        // SAFETY: the pointer is to a live, aligned u64 in the map's value area.
        Some(value) => unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(value, 1) },
        None => 0,
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Selected,
    Migrated,
}

#[inline(always)]
fn record(slot: u32, kind: Kind) {
    if let Some(stats) = SLOT_STATS.get_ptr_mut(slot) {
        // SAFETY: a per-CPU value of this map; nothing else on this CPU runs concurrently with
        // the program.
        let stats = unsafe { &mut *stats };
        match kind {
            Kind::Selected => stats.selected += 1,
            Kind::Migrated => stats.migrated += 1,
        }
    }
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
    // Unreachable: the program has no panicking operations (checked arithmetic only). A loop is
    // the only thing a no_std panic handler can do; the verifier would reject a program that
    // could reach it.
    loop {}
}
