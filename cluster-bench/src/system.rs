//! The machine and software a bench ran on: kernel release, CPU model and count, versions.

use std::{fs, path::Path, process::Command};

use crate::results::System;

/// Reads what is known about this machine and `cluster` at `binary`; unknown parts say so.
#[must_use]
pub fn describe(binary: &Path) -> System {
    let kernel = nix::sys::utsname::uname().map_or_else(
        |_| "unknown".to_owned(),
        |u| u.release().to_string_lossy().into_owned(),
    );
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|rest| rest.split_once(':'))
        .map_or_else(
            || "unknown".to_owned(),
            |(_, model)| model.trim().to_owned(),
        );
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let cluster_version = Command::new(binary)
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map_or_else(
            || "unknown".to_owned(),
            |o| String::from_utf8_lossy(&o.stdout).trim().to_owned(),
        );
    let tcp_migrate_req = fs::read_to_string(Path::new("/proc/sys/net/ipv4/tcp_migrate_req"))
        .ok()
        .map(|value| value.trim() != "0");
    System {
        kernel,
        tcp_migrate_req,
        cpu_model,
        cpus,
        cluster_version,
        bench_version: env!("CARGO_PKG_VERSION").to_owned(),
    }
}
