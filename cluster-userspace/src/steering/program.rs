//! The eBPF steering programs in the kernel: loading them, attaching the selector to the
//! reuseport group and the connection counter to its tracepoint, tagging each listening socket,
//! and writing the maps (slot sockets, live table, sticky table); reading the counters.

use std::{
    collections::BTreeSet,
    io,
    os::fd::{AsRawFd, BorrowedFd},
};

use aya::{
    Btf, Ebpf, include_bytes_aligned,
    maps::{Array, HashMap, MapData, PerCpuArray, ReusePortSockArray, SkStorage},
    programs::{BtfTracePoint, SkReuseport},
};
use cluster_common::{
    Config, MAX_SLOTS, MAX_SOCKETS, SlotStats, SocketStats, SocketTag, StickyHash, event,
    map_names, mode,
};

use super::{live::LiveSlots, socket_ids::SocketIds, sticky::StickyTable};

/// The object built from `cluster-ebpf` by build.rs.
static OBJECT: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/cluster-steering"));

/// Loaded as `BPF_SK_REUSEPORT_SELECT_OR_MIGRATE` (Linux 5.14+).
const PROGRAM_MIGRATE: &str = "select_worker";
/// Loaded as `BPF_SK_REUSEPORT_SELECT`, for kernels that refuse the migrate attach type.
const PROGRAM_SELECT: &str = "select_worker_no_migrate";
/// The cost floors, loaded only to measure against.
const PROGRAM_FLOOR_EMPTY: &str = "floor_empty";
const PROGRAM_FLOOR_SELECT: &str = "floor_select";
/// The connection counter, a `tp_btf` program.
const PROGRAM_COUNT: &str = "count_connections";
/// The tracepoint it runs on (`sock:inet_sock_set_state`).
const COUNT_TRACEPOINT: &str = "inet_sock_set_state";

/// What the program chooses by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    RoundRobin,
    Sticky,
    LeastConn,
    /// A program that returns SK_PASS and nothing else: the cost floor.
    FloorEmpty,
    /// A program that makes one `bpf_sk_select_reuseport` call (always the first live slot).
    FloorSelect,
    /// No selector: the kernel's own hash steers (`--steering hash`); only the connection
    /// counter is loaded, so that stalled workers can be seen.
    CountOnly,
}

impl Policy {
    /// Whether this is a cost floor, loaded only to measure: it reads no map and steers nothing
    /// the supervisor relies on (no probes, no skipping).
    #[must_use]
    pub fn is_floor(self) -> bool {
        matches!(self, Self::FloorEmpty | Self::FloorSelect)
    }

    /// The selector programs to load, in order of preference.
    fn programs(self) -> &'static [&'static str] {
        match self {
            Self::RoundRobin | Self::Sticky | Self::LeastConn => &[PROGRAM_MIGRATE, PROGRAM_SELECT],
            Self::FloorEmpty => &[PROGRAM_FLOOR_EMPTY],
            Self::FloorSelect => &[PROGRAM_FLOOR_SELECT],
            Self::CountOnly => &[],
        }
    }
}

/// What one program cost so far, from the kernel's own stats (counted only while
/// [`enable_run_stats`] is held).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProgramCost {
    pub program: &'static str,
    pub runs: u64,
    pub run_time: std::time::Duration,
}

/// The counters of one listening socket (one worker incarnation).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SocketCounters {
    /// Connections open on it now. Signed: the kernel skips a tracing program nested in itself
    /// on one CPU, and a skipped update can leave the count below zero (see the README).
    pub open: i64,
    /// Connections established on it since it was opened.
    pub connections: u64,
    /// Readiness probes established on it (not in the fields above).
    pub probes: u64,
}

/// The id of one listening socket, below [`MAX_SOCKETS`]: the index of its counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketId(pub u32);

/// Why the program could not be loaded or its maps not written.
#[derive(Debug, thiserror::Error)]
pub enum ProgramError {
    #[error(
        "loading the eBPF steering program was refused ({source}): run as root, or with CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN), which `sudo setcap cap_bpf,cap_perfmon+ep` on the binary gives (see the README); `--steering hash` needs none of them"
    )]
    Privilege {
        #[source]
        source: io::Error,
    },
    #[error(
        "this kernel cannot run the eBPF steering program ({op}: {source}): it needs Linux 5.14+ with BPF syscall, SK_REUSEPORT programs and REUSEPORT_SOCKARRAY maps; use `--steering hash` instead"
    )]
    Unsupported {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{op} failed: {detail}")]
    Other { op: &'static str, detail: String },
}

/// The loaded program and its maps. Dropping it closes our map and program fds; the program stays
/// attached to the group until the group's last socket closes (net/core/sock_reuseport.c
/// `reuseport_free_rcu`).
pub struct SteeringProgram {
    ebpf: Ebpf,
    program_name: &'static str,
    sockets: ReusePortSockArray<MapData>,
    config: Array<MapData, Config>,
    live_table: Array<MapData, u32>,
    slot_stats: PerCpuArray<MapData, SlotStats>,
    events: PerCpuArray<MapData, u64>,
    slot_socket: Array<MapData, u32>,
    socket_stats: Array<MapData, SocketStats>,
    socket_tags: SkStorage<MapData, SocketTag>,
    sticky_table: Array<MapData, u32>,
    probes: ReusePortSockArray<MapData>,
    probe_ports: HashMap<MapData, u32, u32>,
    /// Pending probes: slot → source port (network byte order).
    probing: std::collections::BTreeMap<u32, u32>,
    /// The held slots whose buckets the sticky table in the kernel leaves empty.
    sticky_skipped: BTreeSet<u32>,
    /// The socket ids dealt to sockets that are not gone.
    socket_ids: SocketIds,
    policy: Policy,
    sticky: StickyHash,
    /// Which slot owns each sticky bucket.
    sticky_slots: StickyTable,
    live: LiveSlots,
}

impl std::fmt::Debug for SteeringProgram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SteeringProgram")
            .field("program", &self.program_name)
            .field("policy", &self.policy)
            .field("live", &self.live)
            .finish_non_exhaustive()
    }
}

/// The program's own counters for one slot, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SlotCounters {
    /// Connections established on the slot's sockets, each counted once.
    pub connections: u64,
    /// Connections migrated to the slot from a closing socket.
    pub migrated: u64,
}

/// How often each fallback path ran, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventCounters {
    pub probed: u64,
    pub last_resort: u64,
    pub addr_unreadable: u64,
    pub sticky_moved: u64,
    pub not_a_connection: u64,
    /// Established connections migrated while `MOVED` was full: counted on the socket they left.
    pub move_unrecorded: u64,
}

impl SteeringProgram {
    /// Creates the maps, loads the selector (migrate-capable when the kernel allows), loads and
    /// attaches the connection counter, and fills the sticky table for `slots` slots.
    pub fn load(policy: Policy, slots: u32, sticky: StickyHash) -> Result<Self, ProgramError> {
        raise_memlock_limit();
        let mut ebpf = Ebpf::load(OBJECT).map_err(|e| classify("creating the eBPF maps", &e))?;
        let program_name = match policy.programs() {
            [] => PROGRAM_COUNT,
            selectors => load_program(&mut ebpf, selectors)?,
        };
        attach_counter(&mut ebpf)?;
        let mut program = Self {
            sockets: take_map(&mut ebpf, map_names::SOCKETS)?,
            config: take_map(&mut ebpf, map_names::CONFIG)?,
            live_table: take_map(&mut ebpf, map_names::LIVE)?,
            slot_stats: take_map(&mut ebpf, map_names::SLOT_STATS)?,
            events: take_map(&mut ebpf, map_names::EVENTS)?,
            slot_socket: take_map(&mut ebpf, map_names::SLOT_SOCKET)?,
            socket_stats: take_map(&mut ebpf, map_names::SOCKET_STATS)?,
            socket_tags: take_map(&mut ebpf, map_names::SOCKET_TAGS)?,
            sticky_table: take_map(&mut ebpf, map_names::STICKY)?,
            probes: take_map(&mut ebpf, map_names::PROBES)?,
            probe_ports: take_map(&mut ebpf, map_names::PROBE_PORTS)?,
            probing: std::collections::BTreeMap::new(),
            sticky_skipped: BTreeSet::new(),
            socket_ids: SocketIds::new(MAX_SOCKETS),
            ebpf,
            program_name,
            policy,
            sticky,
            sticky_slots: StickyTable::new(slots),
            live: LiveSlots::default(),
        };
        program.write_sticky_table()?;
        for slot in 0..MAX_SLOTS {
            program
                .slot_socket
                .set(slot, MAX_SOCKETS, 0)
                .map_err(|e| other("writing SLOT_SOCKET", &e))?;
        }
        program.write_config()?;
        Ok(program)
    }

    /// Adds `slot` to the sticky table: about 1/(N+1) of the client addresses move to it.
    pub fn sticky_add(&mut self, slot: u32) -> Result<(), ProgramError> {
        self.sticky_slots.add(slot);
        self.write_sticky_table()
    }

    /// Removes `slot` from the sticky table: only its addresses move.
    pub fn sticky_remove(&mut self, slot: u32) -> Result<(), ProgramError> {
        self.sticky_slots.remove(slot);
        self.write_sticky_table()
    }

    /// Writes the sticky table (bucket → slot). A bucket of a slot held out of the selection
    /// names no slot (`MAX_SLOTS`, past the socket array, whose lookup finds nothing:
    /// kernel/bpf/reuseport_array.c `reuseport_array_lookup_elem`), so the program sends its
    /// addresses to their fallback, as for an empty slot, until the slot serves again.
    fn write_sticky_table(&mut self) -> Result<(), ProgramError> {
        if self.policy != Policy::Sticky {
            return Ok(());
        }
        let skipped = self.live.skipped_slots();
        for (bucket, slot) in self.sticky_slots.entries() {
            let named = if skipped.contains(&slot) {
                MAX_SLOTS
            } else {
                slot
            };
            self.sticky_table
                .set(bucket, named, 0)
                .map_err(|e| other("writing the sticky table", &e))?;
        }
        self.sticky_skipped = skipped;
        Ok(())
    }

    /// The run counts and times of the selector and the connection counter.
    pub fn costs(&self) -> Result<[ProgramCost; 2], ProgramError> {
        let cost = |program: &'static str| -> Result<ProgramCost, ProgramError> {
            let info = self
                .ebpf
                .program(program)
                .ok_or_else(|| missing(program))?
                .info()
                .map_err(|e| other("reading a program's stats", &e))?;
            Ok(ProgramCost {
                program,
                runs: info.run_count(),
                run_time: info.run_time(),
            })
        };
        Ok([cost(self.program_name)?, cost(PROGRAM_COUNT)?])
    }

    /// What the program chooses by.
    #[must_use]
    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// How many slots are in the selection.
    #[must_use]
    pub fn serving(&self) -> u32 {
        self.live.len()
    }

    /// Whether queued connections of a closing socket are moved by this program.
    #[must_use]
    pub fn migrates(&self) -> bool {
        // Every program but the plain selector is loaded as `sk_reuseport/migrate`.
        self.program_name != PROGRAM_SELECT
    }

    /// Attaches the program to the reuseport group of `socket`, which must be listening: the
    /// program belongs to the group and a socket that joins later uses it. Attaching again
    /// replaces it with itself, which also covers a group that emptied and was made anew
    /// (`reuseport_attach_prog`, net/core/sock_reuseport.c).
    pub fn attach(&self, socket: BorrowedFd<'_>) -> Result<(), ProgramError> {
        if self.policy == Policy::CountOnly {
            return Ok(());
        }
        let program: &SkReuseport = self
            .ebpf
            .program(self.program_name)
            .ok_or_else(|| missing(self.program_name))?
            .try_into()
            .map_err(|e| other("looking up the steering program", &e))?;
        program
            .attach(socket)
            .map_err(|e| classify("attaching the program (SO_ATTACH_REUSEPORT_EBPF)", &e))
    }

    /// Gives a new listening socket of `slot` an id with fresh counters, and tags it with both,
    /// so that every connection it accepts carries them. Ids are dealt out in turn, skipping the
    /// ones of sockets not yet [released](Self::release) and any whose counters still show
    /// connections open (an unreadable count counts as open).
    pub fn tag(&mut self, slot: u32, socket: BorrowedFd<'_>) -> Result<SocketId, ProgramError> {
        let stats = &self.socket_stats;
        let id = self
            .socket_ids
            .take(|id| !stats.get(&id, 0).is_ok_and(|s| s.open == 0))
            .ok_or_else(|| ProgramError::Other {
                op: "choosing a socket id",
                detail: format!(
                    "all {MAX_SOCKETS} ids belong to sockets of the pool or to their open connections"
                ),
            })?;
        let tagged = self
            .socket_stats
            .set(id, SocketStats::default(), 0)
            .map_err(|e| other("resetting SOCKET_STATS", &e))
            .and_then(|()| self.retag(slot, socket, SocketId(id), 0));
        if let Err(err) = tagged {
            self.socket_ids.release(id);
            return Err(err);
        }
        Ok(SocketId(id))
    }

    /// The socket tagged `id` is gone (closed by its last holder): its id may be dealt again
    /// once its connections are closed too.
    pub fn release(&mut self, id: SocketId) {
        self.socket_ids.release(id.0);
    }

    /// Sends the connections from `port` (the supervisor's readiness probe) to `socket`, the
    /// starting socket of `slot` tagged `id`, and counts them apart on it.
    pub fn probe_begin(
        &mut self,
        slot: u32,
        socket: BorrowedFd<'_>,
        id: SocketId,
        port: u16,
    ) -> Result<(), ProgramError> {
        self.probe_end(slot, Some((socket, id)))?;
        let port = u32::from(port.to_be());
        self.retag(slot, socket, id, port)?;
        self.probes
            .set(slot, &socket.as_raw_fd(), 0)
            .map_err(|e| other("storing the starting socket in PROBES", &e))?;
        self.probe_ports
            .insert(port, slot, 0)
            .map_err(|e| other("writing PROBE_PORTS", &e))?;
        self.probing.insert(slot, port);
        self.write_config()
    }

    /// Ends `slot`'s pending probe, if any: its socket leaves `PROBES` (so that it can be stored
    /// in `SOCKETS`: a socket occupies one index of one such map at most), and its tag, when
    /// the socket is given, no longer names the probe's port.
    pub fn probe_end(
        &mut self,
        slot: u32,
        socket: Option<(BorrowedFd<'_>, SocketId)>,
    ) -> Result<(), ProgramError> {
        let Some(port) = self.probing.remove(&slot) else {
            return Ok(());
        };
        // The port first: a SYN from it that came in between would find it steered to an empty
        // index, and be reset.
        let _gone = self.probe_ports.remove(&port);
        let _already_empty = self.probes.clear_index(&slot);
        if let Some((socket, id)) = socket {
            self.retag(slot, socket, id, 0)?;
        }
        self.write_config()
    }

    /// Tags `socket` with its slot, id and probe port (0 for none).
    fn retag(
        &mut self,
        slot: u32,
        socket: BorrowedFd<'_>,
        id: SocketId,
        probe_port: u32,
    ) -> Result<(), ProgramError> {
        self.socket_tags
            .insert(
                &socket.as_raw_fd(),
                SocketTag {
                    slot,
                    id: id.0,
                    probe_port,
                },
                0,
            )
            .map_err(|e| other("tagging the socket (SOCKET_TAGS)", &e))
    }

    /// Makes `socket`, tagged `id`, `slot`'s socket in the selection, ending its probe first. If the slot has one, the
    /// update replaces it in place under the group's lock, so no connection ever finds the slot
    /// empty (`reuseport_array_update_common`, kernel/bpf/reuseport_array.c); the old socket
    /// stays in the group, listening, but is never selected again.
    pub fn serve(
        &mut self,
        slot: u32,
        socket: BorrowedFd<'_>,
        id: SocketId,
    ) -> Result<(), ProgramError> {
        self.probe_end(slot, Some((socket, id)))?;
        self.sockets
            .set(slot, &socket.as_raw_fd(), 0)
            .map_err(|e| other("storing the worker socket in SOCKETS", &e))?;
        self.slot_socket
            .set(slot, id.0, 0)
            .map_err(|e| other("writing SLOT_SOCKET", &e))?;
        if self.live.insert(slot) {
            self.write_live()?;
        }
        Ok(())
    }

    /// Holds `slot` out of the selection while its worker does not accept (`true`), or lets it
    /// back (`false`). Its socket stays in `SOCKETS`: a held slot's queue is left alone, and
    /// migrated if the worker dies. Unless every serving slot is held (then none is).
    pub fn hold(&mut self, slot: u32, held: bool) -> Result<(), ProgramError> {
        if self.live.hold(slot, held) {
            self.write_live()?;
        }
        Ok(())
    }

    /// Whether `slot` is held out of the selection now.
    #[must_use]
    pub fn skipped(&self, slot: u32) -> bool {
        self.live.skipped(slot)
    }

    /// Takes `slot` out of the selection: its serving worker exited, or the slot was scaled
    /// away. The kernel has already emptied its `SOCKETS` entry if the socket closed
    /// (`bpf_sk_reuseport_detach`); clearing it again is harmless. Never called for a worker
    /// that was replaced: its socket is no longer the slot's.
    pub fn remove(&mut self, slot: u32) -> Result<(), ProgramError> {
        // The live table first: a connection steered in between still finds the socket, instead
        // of an empty slot it would have to probe past.
        if self.live.remove(slot) {
            self.write_live()?;
        }
        let _already_empty = self.sockets.clear_index(&slot);
        self.slot_socket
            .set(slot, MAX_SOCKETS, 0)
            .map_err(|e| other("writing SLOT_SOCKET", &e))
    }

    /// The program's counters for `slot`.
    pub fn slot_counters(&self, slot: u32) -> Result<SlotCounters, ProgramError> {
        let per_cpu = self
            .slot_stats
            .get(&slot, 0)
            .map_err(|e| other("reading SLOT_STATS", &e))?;
        Ok(per_cpu
            .iter()
            .fold(SlotCounters::default(), |sum, s| SlotCounters {
                connections: sum.connections + s.connections,
                migrated: sum.migrated + s.migrated,
            }))
    }

    /// The counters of the socket tagged `id`.
    pub fn socket_counters(&self, id: SocketId) -> Result<SocketCounters, ProgramError> {
        let stats = self
            .socket_stats
            .get(&id.0, 0)
            .map_err(|e| other("reading SOCKET_STATS", &e))?;
        Ok(SocketCounters {
            open: stats.open.cast_signed(),
            connections: stats.connections,
            probes: stats.probes,
        })
    }

    /// The program's fallback counters.
    pub fn event_counters(&self) -> Result<EventCounters, ProgramError> {
        let read = |index: u32| -> Result<u64, ProgramError> {
            let per_cpu = self
                .events
                .get(&index, 0)
                .map_err(|e| other("reading EVENTS", &e))?;
            Ok(per_cpu.iter().sum())
        };
        Ok(EventCounters {
            probed: read(event::PROBED)?,
            last_resort: read(event::LAST_RESORT)?,
            addr_unreadable: read(event::ADDR_UNREADABLE)?,
            sticky_moved: read(event::STICKY_MOVED)?,
            not_a_connection: read(event::NOT_A_CONNECTION)?,
            move_unrecorded: read(event::MOVE_UNRECORDED)?,
        })
    }

    /// Writes the sticky table when the held slots changed, then the dense live table, then
    /// its length. A reader that runs in between sees a table whose entries may name a slot
    /// that just emptied; it skips it by probing on.
    fn write_live(&mut self) -> Result<(), ProgramError> {
        if self.policy == Policy::Sticky && self.live.skipped_slots() != self.sticky_skipped {
            self.write_sticky_table()?;
        }
        for (position, slot) in self.live.table() {
            self.live_table
                .set(position, slot, 0)
                .map_err(|e| other("writing the LIVE table", &e))?;
        }
        self.write_config()
    }

    fn write_config(&mut self) -> Result<(), ProgramError> {
        let config = Config {
            mode: match self.policy {
                Policy::RoundRobin => mode::ROUND_ROBIN,
                Policy::Sticky => mode::STICKY,
                Policy::LeastConn => mode::LEAST_CONN,
                Policy::FloorEmpty | Policy::FloorSelect | Policy::CountOnly => mode::ROUND_ROBIN,
            },
            live_count: self.live.selectable(),
            sticky: self.sticky,
            probing: u32::try_from(self.probing.len()).unwrap_or(u32::MAX),
        };
        self.config
            .set(0, config, 0)
            .map_err(|e| other("writing CONFIG", &e))
    }
}

/// Turns on the kernel's run-time stats for BPF programs while the returned fd is open
/// (`BPF_ENABLE_STATS`: reference-counted, off again when the last holder closes it; no sysctl).
pub fn enable_run_stats() -> Result<std::os::fd::OwnedFd, ProgramError> {
    aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .map_err(|e| classify("enabling BPF run-time stats (BPF_ENABLE_STATS)", &e))
}

/// Loads the first of `names` that the kernel accepts: the migrate-capable selector, or the
/// plain one where the kernel refuses the migrate attach type (before 5.14: EINVAL on
/// `expected_attach_type`).
fn load_program(ebpf: &mut Ebpf, names: &[&'static str]) -> Result<&'static str, ProgramError> {
    let mut first_error = None;
    for &name in names {
        let program: &mut SkReuseport = ebpf
            .program_mut(name)
            .ok_or_else(|| missing(name))?
            .try_into()
            .map_err(|e| other("looking up the steering program", &e))?;
        match program.load() {
            Ok(()) => {
                if name == PROGRAM_SELECT {
                    tracing::warn!(
                        "kernel has no SK_REUSEPORT migration (Linux < 5.14): connections queued on a worker that exits are reset"
                    );
                }
                return Ok(name);
            }
            Err(err) => {
                let classified = classify("loading the steering program", &err);
                if matches!(classified, ProgramError::Privilege { .. }) {
                    return Err(classified);
                }
                first_error.get_or_insert(classified);
            }
        }
    }
    Err(first_error.unwrap_or_else(|| missing(PROGRAM_SELECT)))
}

/// Loads the connection counter against the running kernel's BTF and attaches it to
/// `sock:inet_sock_set_state`. The link lives as long as `ebpf`, which the supervisor keeps.
fn attach_counter(ebpf: &mut Ebpf) -> Result<(), ProgramError> {
    let btf = Btf::from_sys_fs().map_err(|e| ProgramError::Unsupported {
        op: "reading the kernel's BTF (/sys/kernel/btf/vmlinux, CONFIG_DEBUG_INFO_BTF)",
        source: io::Error::other(e.to_string()),
    })?;
    let program: &mut BtfTracePoint = ebpf
        .program_mut(PROGRAM_COUNT)
        .ok_or_else(|| missing(PROGRAM_COUNT))?
        .try_into()
        .map_err(|e| other("looking up the connection counter", &e))?;
    program
        .load(COUNT_TRACEPOINT, &btf)
        .map_err(|e| classify("loading the connection counter (tp_btf)", &e))?;
    program.attach().map_err(|e| {
        classify(
            "attaching the connection counter to sock:inet_sock_set_state",
            &e,
        )
    })?;
    Ok(())
}

fn take_map<M>(ebpf: &mut Ebpf, name: &'static str) -> Result<M, ProgramError>
where
    M: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or_else(|| missing(name))?;
    M::try_from(map).map_err(|e| other("opening a steering map", &e))
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; later ones charge it to the memory
/// cgroup and ignore the limit (commit 97306be45fbe, "bpf: switch to memcg-based memory
/// accounting"), so nothing is done or logged there. Best effort on older kernels: if raising
/// fails, loading reports the real error.
fn raise_memlock_limit() {
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    if !charges_memlock(&release) {
        return;
    }
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads the struct we pass and nothing else.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &raw const unlimited) };
    if rc != 0 {
        tracing::debug!(error = %io::Error::last_os_error(), "could not raise RLIMIT_MEMLOCK");
    }
}

/// Whether a kernel of this release (`uname -r`) charges BPF memory to RLIMIT_MEMLOCK: before
/// 5.11, or when the release cannot be read.
fn charges_memlock(release: &str) -> bool {
    let mut numbers = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().ok());
    match (numbers.next().flatten(), numbers.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor) < (5, 11),
        _ => true,
    }
}

/// Sorts an aya error by the errno underneath it: missing privilege, missing kernel support,
/// or anything else.
fn classify(op: &'static str, err: &(dyn std::error::Error + 'static)) -> ProgramError {
    let mut source = Some(err);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<io::Error>()
            && let Some(errno) = io.raw_os_error()
        {
            let source = io::Error::from_raw_os_error(errno);
            return match errno {
                libc::EPERM | libc::EACCES => ProgramError::Privilege { source },
                // ENOTSUPP (524) is the kernel-internal "not supported" some BPF paths return.
                libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP | 524 => {
                    ProgramError::Unsupported { op, source }
                }
                _ => other(op, err),
            };
        }
        source = e.source();
    }
    other(op, err)
}

fn other(op: &'static str, err: &dyn std::fmt::Display) -> ProgramError {
    ProgramError::Other {
        op,
        detail: err.to_string(),
    }
}

fn missing(name: &str) -> ProgramError {
    ProgramError::Other {
        op: "reading the embedded eBPF object",
        detail: format!("it has no `{name}`; rebuild with `cargo xtask build`"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memlock_matters_before_5_11_only() {
        assert!(charges_memlock("5.10.0-28-amd64"));
        assert!(charges_memlock("4.19.0"));
        assert!(!charges_memlock("5.11.0"));
        assert!(!charges_memlock("6.18.44-fc-v782"));
        assert!(charges_memlock("garbage"));
    }
}
