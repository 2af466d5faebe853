//! How new connections reach workers: the in-kernel program (round-robin, sticky or
//! least-conn), the kernel's own SO_REUSEPORT hash, or one socket shared by every worker.

mod live;
mod program;
mod socket_ids;
mod sticky;

use std::os::fd::BorrowedFd;

pub use live::LiveSlots;
pub use program::{
    EventCounters, Policy, ProgramCost, ProgramError, SlotCounters, SocketCounters, SocketId,
    SteeringProgram, enable_run_stats,
};
pub use sticky::StickyTable;

use cluster_common::StickyHash;

use crate::{
    cli::{SteeringMode, StickyPrefix},
    listener::Sharing,
};

/// The steering in force for a pool.
#[derive(Debug)]
pub enum Steering {
    /// The eBPF program picks the socket. Boxed: it is large and there is one per pool.
    Program(Box<SteeringProgram>),
    /// Every worker has its own socket; the kernel hashes the 4-tuple over the group. With the
    /// connection counter (no selector) where health checks want it and BPF is allowed.
    KernelHash(Option<Box<SteeringProgram>>),
    /// One socket; whichever worker accepts first gets the connection.
    Shared,
}

impl Steering {
    /// Sets up the steering for `mode` and `slots` slots; loads the program when the mode uses
    /// it. Sticky mode hashes addresses over `prefix` with a key drawn at random now, so no two
    /// pools map addresses alike. Under `hash`, `count` loads the connection counter alone, if
    /// the kernel lets this process (without it the pool runs, and health checks are off).
    pub fn new(
        mode: SteeringMode,
        slots: u32,
        prefix: StickyPrefix,
        count: bool,
    ) -> Result<Self, ProgramError> {
        let policy = match mode {
            SteeringMode::RoundRobin => Policy::RoundRobin,
            SteeringMode::Sticky => Policy::Sticky,
            SteeringMode::LeastConn => Policy::LeastConn,
            SteeringMode::FloorEmpty => Policy::FloorEmpty,
            SteeringMode::FloorSelect => Policy::FloorSelect,
            SteeringMode::Hash if count => {
                return Ok(Self::KernelHash(
                    match SteeringProgram::load(Policy::CountOnly, slots, StickyHash::default()) {
                        Ok(counter) => Some(Box::new(counter)),
                        Err(err) => {
                            tracing::warn!(error = %err, "--steering hash: cannot load the connection counter, so stalled and hung workers are not detected (--hang-timeout 0 silences this)");
                            None
                        }
                    },
                ));
            }
            SteeringMode::Hash => return Ok(Self::KernelHash(None)),
            SteeringMode::Shared => return Ok(Self::Shared),
        };
        let sticky = StickyHash {
            key: random_key().map_err(|source| ProgramError::Other {
                op: "drawing the sticky hash key (getrandom)",
                detail: source.to_string(),
            })?,
            v4_prefix: prefix.v4,
            v6_prefix: prefix.v6,
        };
        Ok(Self::Program(Box::new(SteeringProgram::load(
            policy, slots, sticky,
        )?)))
    }

    /// How worker sockets are shared under this steering.
    #[must_use]
    pub fn sharing(&self) -> Sharing {
        match self {
            Self::Program(_) | Self::KernelHash(_) => Sharing::ReusePort,
            Self::Shared => Sharing::Exclusive,
        }
    }

    /// A new socket of `slot` is listening: make sure the group it joined runs the program, and
    /// tag it so its connections are counted. Returns its id where a program counts.
    pub fn socket_listening(
        &mut self,
        slot: u32,
        socket: BorrowedFd<'_>,
    ) -> Result<Option<SocketId>, ProgramError> {
        match self {
            Self::Program(program) => {
                program.attach(socket)?;
                program.tag(slot, socket).map(Some)
            }
            Self::KernelHash(Some(counter)) => counter.tag(slot, socket).map(Some),
            Self::KernelHash(None) | Self::Shared => Ok(None),
        }
    }

    /// The socket tagged `id` is gone: its id may be dealt to a new socket once no connection
    /// of it is left open.
    pub fn socket_closed(&mut self, id: SocketId) {
        match self {
            Self::Program(program) | Self::KernelHash(Some(program)) => program.release(id),
            Self::KernelHash(None) | Self::Shared => {}
        }
    }

    /// `socket` (tagged `id`) becomes `slot`'s serving socket, in place of any it had: steer
    /// `slot`'s connections to it. Without a program there is nothing to write: under `hash` a
    /// socket shares the load as soon as it listens, and `shared` has one socket.
    pub fn serve(
        &mut self,
        slot: u32,
        socket: BorrowedFd<'_>,
        id: Option<SocketId>,
    ) -> Result<(), ProgramError> {
        match (self, id) {
            (Self::Program(program), Some(id)) => program.serve(slot, socket, id),
            _ => Ok(()),
        }
    }

    /// `slot` has no serving socket any more: steer nothing to it.
    pub fn unserve(&mut self, slot: u32) -> Result<(), ProgramError> {
        match self {
            Self::Program(program) => program.remove(slot),
            Self::KernelHash(_) | Self::Shared => Ok(()),
        }
    }

    /// Holds `slot` out of the selection (`true`: its worker stopped accepting) or lets it back.
    /// Only a program can skip a socket: under `hash` and `shared` nothing changes.
    pub fn hold(&mut self, slot: u32, held: bool) -> Result<(), ProgramError> {
        match self {
            Self::Program(program) => program.hold(slot, held),
            Self::KernelHash(_) | Self::Shared => Ok(()),
        }
    }

    /// `slot` joins (`true`) or leaves the sticky table.
    pub fn sticky_member(&mut self, slot: u32, member: bool) -> Result<(), ProgramError> {
        match self {
            Self::Program(program) if member => program.sticky_add(slot),
            Self::Program(program) => program.sticky_remove(slot),
            Self::KernelHash(_) | Self::Shared => Ok(()),
        }
    }

    /// The program that can steer readiness probes, when this steering has one: not under
    /// `hash` or `shared` (no program), nor under the cost floors (which read no map).
    pub fn prober(&mut self) -> Option<&mut SteeringProgram> {
        match self {
            Self::Program(program) if !program.policy().is_floor() => Some(program),
            _ => None,
        }
    }

    /// The program, when this steering has one.
    #[must_use]
    pub fn program(&self) -> Option<&SteeringProgram> {
        match self {
            Self::Program(program) => Some(program),
            Self::KernelHash(_) | Self::Shared => None,
        }
    }

    /// What counts each socket's connections: the program, or under `hash` the counter alone.
    #[must_use]
    pub fn counter(&self) -> Option<&SteeringProgram> {
        match self {
            Self::Program(program) | Self::KernelHash(Some(program)) => Some(program),
            Self::KernelHash(None) | Self::Shared => None,
        }
    }
}

/// A secret for the sticky hash, from the kernel's random source.
fn random_key() -> std::io::Result<[u32; 2]> {
    let mut bytes = [0u8; 8];
    // SAFETY: getrandom writes at most `bytes.len()` bytes into `bytes`.
    let got = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if usize::try_from(got).ok() != Some(bytes.len()) {
        return Err(std::io::Error::last_os_error());
    }
    let (low, high) = bytes.split_at(4);
    Ok([
        u32::from_ne_bytes(low.try_into().unwrap_or_default()),
        u32::from_ne_bytes(high.try_into().unwrap_or_default()),
    ])
}
