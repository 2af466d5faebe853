//! The control protocol: a client connects, writes one request as a JSON object on one line,
//! and reads one answer line; then the supervisor closes the connection.
//!
//! ```text
//! {"command":"status"}                    {"ok":true,"status":{...}}
//! {"command":"reload"}                    {"ok":true,"replaced":4}   (once the reload ended)
//! {"command":"drain","slot":2}            {"ok":true,"replaced":1}
//! {"command":"scale","workers":8}         {"ok":true}
//! {"command":"stop"}                      {"ok":true}
//! {"command":"broadcast","message":{..}}  {"ok":true,"delivered":4}
//! {"command":"send","slot":1,"message":1} {"ok":true,"delivered":1}
//! anything else                           {"ok":false,"error":"..."}
//! ```

use serde::{Deserialize, Serialize};

/// The longest request line accepted, newline included.
pub const MAX_REQUEST: usize = 64 * 1024;

/// One request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Status,
    Reload,
    Stop,
    Scale {
        workers: u32,
    },
    Drain {
        slot: u32,
    },
    Broadcast {
        message: serde_json::Value,
    },
    Send {
        slot: u32,
        message: serde_json::Value,
    },
}

/// One answer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<PoolStatus>,
    /// Slots whose worker a reload or drain replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaced: Option<u32>,
    /// Workers a message was written to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered: Option<u32>,
}

impl Answer {
    #[must_use]
    pub fn ok() -> Self {
        Self {
            ok: true,
            ..Self::default()
        }
    }

    #[must_use]
    pub fn error(reason: impl Into<String>) -> Self {
        Self {
            ok: false,
            error: Some(reason.into()),
            ..Self::default()
        }
    }
}

/// The pool as `cluster status` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolStatus {
    pub supervisor_pid: i32,
    pub addr: String,
    pub steering: String,
    /// Slots.
    pub workers: u32,
    /// Slots with a serving worker.
    pub serving: u32,
    pub reloading: bool,
    pub rows: Vec<WorkerRow>,
    /// The kernel's run stats of the selector and the connection counter since they were
    /// loaded, with `--bpf-stats` only (empty otherwise).
    #[serde(default)]
    pub programs: Vec<ProgramStats>,
    /// The reloads that ended since the start.
    #[serde(default)]
    pub reloads: Reloads,
}

/// How the reloads ended (a reload, SIGHUP or SIGUSR2, `cluster reload`, `cluster drain`, or a
/// replacement for `--max-memory`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reloads {
    /// Reloads that replaced every slot they were asked for.
    pub finished: u32,
    /// Reloads stopped by a replacement that never became ready.
    pub failed: u32,
    /// The last one's replaced slots and, if it failed, why.
    pub last: Option<ReloadEnd>,
}

/// How one reload ended.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadEnd {
    pub replaced: u32,
    pub error: Option<String>,
}

/// What the kernel counted for one loaded program (`bpf_prog_info` `run_cnt`, `run_time_ns`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgramStats {
    pub program: String,
    pub runs: u64,
    pub run_time_ns: u64,
}

/// One worker, or a slot waiting to restart its worker (`pid` and `phase` `restarting`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerRow {
    pub slot: u32,
    pub pid: Option<i32>,
    /// `starting`, `serving`, `stalled` (serving, but held out of the selection: it stopped
    /// accepting), `draining`, `stopping`, or for a slot without a worker `restarting`, or
    /// `failed` once it gave up.
    pub phase: String,
    pub uptime_s: Option<u64>,
    /// Workers started in the slot after one exited (reload replacements are not restarts).
    pub restarts: u32,
    /// Connections open on the worker's socket now (queued ones included).
    pub open: Option<i64>,
    /// Connections waiting in its socket's accept queue at the last health check (every 0.25 s),
    /// where stalls are watched.
    #[serde(default)]
    pub queued: Option<u32>,
    /// Connections established on the worker's socket since it started.
    pub connections: Option<u64>,
    /// Connections the program steered to the slot, over all its workers.
    pub steered: Option<u64>,
    /// Connections migrated to the slot from closing sockets.
    pub migrated: Option<u64>,
    /// Resident memory of the worker process.
    pub rss_bytes: Option<u64>,
}
