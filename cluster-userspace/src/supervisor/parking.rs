//! The parking listener: one socket of the reuseport group that the supervisor holds and never
//! puts in the selection, so that a closing socket always has a successor.
//!
//! When the last listener of a group closes, the kernel resets whatever is queued on it: a
//! migration needs a listening target (net/core/sock_reuseport.c `reuseport_migrate_sock`;
//! `TCPMigrateReqFailure` counts the losses). With the parking socket there always is one. While
//! some worker serves, the program never picks it. While none serves, the program selects
//! nothing and the kernel hashes new connections over the group, so some wait here, and
//! connections queued on a starting worker that is killed migrate here. Once a worker serves
//! again, the parking socket is replaced by a fresh one and closed, and what waited on it
//! migrates to the serving workers.
//!
//! Only with a program: under `hash` the kernel would hash connections onto it with nothing to
//! move them on, and `shared` has one socket anyway.

use std::{net::SocketAddr, os::fd::AsFd as _};

use socket2::Socket;
use tracing::{debug, warn};

use crate::{
    listener::{self, ListenError, Sharing},
    steering::{ProgramError, SteeringProgram},
};

/// The parking socket, and whether connections may be waiting on it.
#[derive(Debug)]
pub struct Parking {
    socket: Socket,
    /// No worker has served since the socket was opened, so connections may be queued on it.
    may_hold_connections: bool,
}

/// Why the parking socket could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ParkingError {
    #[error(transparent)]
    Listen(#[from] ListenError),
    #[error(transparent)]
    Program(#[from] ProgramError),
}

impl Parking {
    /// Opens the parking socket, which also creates the reuseport group, and attaches the
    /// program to it. Until a worker serves, connections may wait here.
    pub fn open(
        addr: SocketAddr,
        backlog: u32,
        program: &SteeringProgram,
    ) -> Result<Self, ParkingError> {
        let socket = listener::open(addr, backlog, Sharing::ReusePort)?;
        program.attach(socket.as_fd())?;
        Ok(Self {
            socket,
            may_hold_connections: true,
        })
    }

    /// No worker serves any more: new connections may land here until one does.
    pub fn no_one_serving(&mut self) {
        self.may_hold_connections = true;
    }

    /// A worker serves: if connections may be waiting here, open a successor and close this
    /// socket, so that they migrate to the serving workers. On failure the old socket stays
    /// (what waits on it is moved the next time).
    pub fn someone_serving(&mut self, addr: SocketAddr, backlog: u32) {
        if !self.may_hold_connections {
            return;
        }
        match listener::open(addr, backlog, Sharing::ReusePort) {
            Ok(successor) => {
                // Dropping the old socket closes it; its queue migrates.
                drop(std::mem::replace(&mut self.socket, successor));
                self.may_hold_connections = false;
                debug!(addr = %addr, "parking socket replaced; what waited on it migrates");
            }
            Err(err) => {
                warn!(addr = %addr, error = %err, "could not replace the parking socket; connections waiting on it stay there for now");
            }
        }
    }
}
