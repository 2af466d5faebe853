//! Builds the eBPF steering program (`cluster-ebpf`) from source and leaves the object in
//! `OUT_DIR/cluster-steering`, where `steering::program` embeds it.
//!
//! This does what `aya_build::build_ebpf` does, with one difference that needs it written out:
//! aya-build sets `CARGO_ENCODED_RUSTFLAGS` itself, so it cannot pass `-C target-cpu=v3`, and the
//! round-robin counter needs that CPU's fetching atomic add (BPF ISA v3, `BPF_FETCH`:
//! <https://www.kernel.org/doc/html/latest/bpf/standardization/instruction-set.html>).
//!
//! Needs the nightly toolchain with `rust-src` and `bpf-linker` on PATH; `cargo xtask setup`
//! provides both and every `cargo xtask` command puts the linker on PATH.

use std::{
    env,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

const EBPF_PACKAGE: &str = "cluster-ebpf";
const EBPF_BIN: &str = "cluster-steering";
const BPF_TARGET: &str = "bpfel-unknown-none";

fn main() -> ExitCode {
    match build() {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            // One line that cargo shows as the build error.
            println!("cargo::error={message}");
            ExitCode::FAILURE
        }
    }
}

fn build() -> Result<(), String> {
    let manifest_dir = PathBuf::from(env_var("CARGO_MANIFEST_DIR")?);
    let workspace = manifest_dir
        .parent()
        .ok_or("CARGO_MANIFEST_DIR has no parent")?;
    for dir in ["cluster-ebpf", "cluster-common"] {
        println!("cargo::rerun-if-changed={}", workspace.join(dir).display());
    }

    // Rerun when what the eBPF build runs changes: the linker and the nightly compiler, as
    // resolved now. Not on PATH itself: a new shell, an activated virtualenv or plain `cargo`
    // after `cargo xtask` changes PATH without changing either, and must not rebuild.
    let linker = find_on_path("bpf-linker").or_else(cached_linker).ok_or(
        "bpf-linker is not on PATH nor in the cache: run `cargo xtask setup`, or build with `cargo xtask build|run|test`",
    )?;
    let rustup = find_on_path("rustup").ok_or(
        "rustup is not on PATH: install rustup (https://rustup.rs), then run `cargo xtask setup`",
    )?;
    let nightly_rustc = nightly_rustc(&rustup)?;
    for input in [&linker, &nightly_rustc] {
        println!("cargo::rerun-if-changed={}", input.display());
    }

    let out_dir = PathBuf::from(env_var("OUT_DIR")?);
    let target_dir = env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace.join("target"), PathBuf::from)
        .join("ebpf");
    let arch = env_var("CARGO_CFG_TARGET_ARCH")?;
    let rustflags = [
        format!("--cfg=bpf_target_arch=\"{arch}\""),
        "-Cdebuginfo=2".into(),
        "-Clink-arg=--btf".into(),
        "-Ctarget-cpu=v3".into(),
    ]
    .join("\x1f");

    let mut cargo = Command::new(rustup);
    cargo
        .args([
            "run",
            "nightly",
            "cargo",
            "build",
            "--package",
            EBPF_PACKAGE,
        ])
        .args(["--bins", "--release", "--target", BPF_TARGET])
        .args(["-Z", "build-std=core", "--target-dir"])
        .arg(&target_dir)
        .current_dir(workspace)
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags)
        .env("PATH", path_with(&linker)?);
    // The outer (stable) build's settings must not leak into the nightly one.
    for key in [
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "RUSTUP_TOOLCHAIN",
    ] {
        cargo.env_remove(key);
    }
    let output = cargo
        .output()
        .map_err(|e| format!("running `rustup run nightly cargo build` failed: {e}"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        for line in stderr.lines() {
            println!("cargo::warning={line}");
        }
        let reason = stderr
            .lines()
            .find(|l| l.starts_with("error"))
            .unwrap_or("see the warnings above");
        return Err(format!(
            "building the eBPF program failed ({reason}); `cargo xtask setup` installs what it needs"
        ));
    }
    let object = target_dir.join(BPF_TARGET).join("release").join(EBPF_BIN);
    copy(&object, &out_dir.join(EBPF_BIN))
}

fn copy(from: &Path, to: &Path) -> Result<(), String> {
    std::fs::copy(from, to)
        .map(|_| ())
        .map_err(|e| format!("copying {} to {}: {e}", from.display(), to.display()))
}

fn env_var(key: &str) -> Result<String, String> {
    env::var(key).map_err(|_| format!("{key} is not set (is this run by cargo?)"))
}

/// The nightly toolchain's `rustc` (`rustup which`): a new nightly replaces this file.
fn nightly_rustc(rustup: &Path) -> Result<PathBuf, String> {
    let output = Command::new(rustup)
        .args(["which", "--toolchain", "nightly", "rustc"])
        .output()
        .map_err(|e| format!("running `rustup which` failed: {e}"))?;
    if !output.status.success() {
        return Err("the nightly toolchain is not installed: run `cargo xtask setup`".to_owned());
    }
    let path = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    Ok(PathBuf::from(path))
}

/// The bpf-linker `cargo xtask setup` built, in `$XDG_CACHE_HOME/cluster` or
/// `~/.cache/cluster` (xtask/src/setup.rs), for a plain `cargo build` that lacks it on PATH.
fn cached_linker() -> Option<PathBuf> {
    let cache = env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?
        .join("cluster/bpf-linker");
    let mut found: Vec<PathBuf> = std::fs::read_dir(cache)
        .ok()?
        .filter_map(|e| Some(e.ok()?.path().join("bin/bpf-linker")))
        .filter(|p| p.is_file())
        .collect();
    // One per nightly; the newest build is the likeliest match.
    found.sort_by_key(|p| p.metadata().and_then(|m| m.modified()).ok());
    found.pop()
}

/// PATH with the linker's directory first, for the nested eBPF build.
fn path_with(linker: &Path) -> Result<std::ffi::OsString, String> {
    let dir = linker.parent().ok_or("bpf-linker has no directory")?;
    let current = env::var_os("PATH").unwrap_or_default();
    let dirs = std::iter::once(dir.to_path_buf()).chain(env::split_paths(&current));
    env::join_paths(dirs).map_err(|e| format!("a PATH entry cannot be joined: {e}"))
}

fn find_on_path(program: &str) -> Option<PathBuf> {
    env::split_paths(&env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}
