//! `cluster`: a supervisor that forks a pool of workers, each with its own SO_REUSEPORT
//! listening socket, and an eBPF `sk_reuseport` program that picks the worker for every new
//! connection inside the kernel.
//!
//! - [`cli`]: the command line.
//! - [`supervisor`]: the worker pool and its event loop; [`supervisor::spawn`] starts workers.
//! - [`steering`]: the program in the kernel and the other steering modes.
//! - [`listener`]: creating the listening sockets.
//! - [`handoff`]: the names of the socket hand-off to workers.
//! - [`commands`]: the subcommands that talk to a running supervisor.
//! - [`control`]: the control socket and the subcommands' client.
//! - [`notify`]: readiness notifications (sd_notify protocol) from workers.
//! - [`worker`]: the built-in demo HTTP worker.

pub mod cli;
pub mod commands;
pub mod control;
pub mod cpus;
pub mod handoff;
pub mod listener;
pub mod notify;
pub mod steering;
pub mod supervisor;
pub mod telemetry;
pub mod worker;
