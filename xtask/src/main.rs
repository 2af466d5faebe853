//! `cargo xtask`: project tasks. `setup` installs what the eBPF build needs; `build`, `run`,
//! `lint` and `test` run it first, then cargo with bpf-linker on PATH.

mod setup;

use std::{
    env,
    ffi::OsString,
    os::unix::process::CommandExt as _,
    path::PathBuf,
    process::{Command, ExitCode},
};

use anyhow::{Context as _, Result, bail};

const USAGE: &str = "usage: cargo xtask <command>

commands:
  setup                 install what the eBPF build needs (nightly rust-src, bpf-linker)
  build [--release]     build everything
  run [--debug] -- ARGS build (release unless --debug) and run `cluster run ARGS`
  lint                  clippy (host crates and the eBPF crate) and rustdoc, warnings denied
  test [ARGS]           build and run every test (the integration tests need root)";

fn main() -> ExitCode {
    match run(env::args_os().skip(1).collect()) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Vec<OsString>) -> Result<ExitCode> {
    let (command, rest) = args
        .split_first()
        .map_or(("", &[][..]), |(c, r)| (c.to_str().unwrap_or("?"), r));
    match command {
        "setup" => {
            let toolchain = setup::ensure()?;
            eprintln!(
                "setup: ready; bpf-linker is in {}",
                toolchain.linker_dir.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        "build" => {
            let mut cargo = cargo_with_linker()?;
            cargo
                .args(["build", "--workspace", "--exclude", "cluster-ebpf"])
                .args(rest);
            setup::run(&mut cargo)?;
            Ok(ExitCode::SUCCESS)
        }
        "run" => run_cluster(rest),
        "lint" => lint(),
        "test" => test(rest),
        "" | "help" | "-h" | "--help" => {
            eprintln!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        other => bail!("unknown command `{other}`\n\n{USAGE}"),
    }
}

/// Builds the `cluster` binary and replaces this process with `cluster run ARGS`, so signals
/// (Ctrl-C) and the exit status are the supervisor's own.
fn run_cluster(args: &[OsString]) -> Result<ExitCode> {
    let debug = args.first().is_some_and(|a| a == "--debug");
    let args = if debug { &args[1..] } else { args };
    let args = match args.first() {
        Some(first) if first == "--" => &args[1..],
        _ => args,
    };
    let mut cargo = cargo_with_linker()?;
    cargo.args([
        "build",
        "--package",
        "cluster-userspace",
        "--bin",
        "cluster",
    ]);
    if !debug {
        cargo.arg("--release");
    }
    setup::run(&mut cargo)?;
    let binary = target_dir()?
        .join(if debug { "debug" } else { "release" })
        .join("cluster");
    let err = Command::new(&binary).arg("run").args(args).exec();
    Err(err).with_context(|| format!("could not start {}", binary.display()))
}

fn lint() -> Result<ExitCode> {
    let mut host = cargo_with_linker()?;
    host.args([
        "clippy",
        "--workspace",
        "--exclude",
        "cluster-ebpf",
        "--all-targets",
    ])
    .args(["--", "--deny", "warnings"]);
    setup::run(&mut host)?;
    let mut ebpf = nightly_cargo_with_linker()?;
    ebpf.args(["clippy", "--package", "cluster-ebpf"])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .args(["--", "--deny", "warnings"]);
    setup::run(&mut ebpf)?;
    let mut doc = cargo_with_linker()?;
    doc.args([
        "doc",
        "--no-deps",
        "--workspace",
        "--exclude",
        "cluster-ebpf",
    ])
    .env("RUSTDOCFLAGS", "--deny warnings");
    setup::run(&mut doc)?;
    Ok(ExitCode::SUCCESS)
}

/// Builds the `cluster` binary the integration tests start, then runs every test.
fn test(args: &[OsString]) -> Result<ExitCode> {
    let mut build = cargo_with_linker()?;
    build.args([
        "build",
        "--package",
        "cluster-userspace",
        "--bin",
        "cluster",
    ]);
    setup::run(&mut build)?;
    let mut cargo = cargo_with_linker()?;
    cargo
        .args(["test", "--workspace", "--exclude", "cluster-ebpf"])
        .args(args);
    setup::run(&mut cargo)?;
    Ok(ExitCode::SUCCESS)
}

/// `cargo`, run from the workspace root, with the bootstrapped bpf-linker first on PATH.
fn cargo_with_linker() -> Result<Command> {
    let cargo = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    with_linker(cargo)
}

/// The nightly toolchain's `cargo`, for the eBPF crate.
fn nightly_cargo_with_linker() -> Result<Command> {
    let mut cargo = Command::new("rustup");
    cargo.args(["run", "nightly", "cargo"]);
    for key in ["RUSTC", "RUSTC_WRAPPER", "RUSTUP_TOOLCHAIN", "CARGO"] {
        cargo.env_remove(key);
    }
    with_linker(cargo)
}

fn with_linker(mut cargo: Command) -> Result<Command> {
    let toolchain = setup::ensure()?;
    let mut path = vec![toolchain.linker_dir];
    path.extend(env::split_paths(&env::var_os("PATH").unwrap_or_default()));
    cargo.current_dir(workspace_root()?).env(
        "PATH",
        env::join_paths(path).context("PATH contains a `:` in a directory name")?,
    );
    Ok(cargo)
}

fn workspace_root() -> Result<PathBuf> {
    let manifest = env::var_os("CARGO_MANIFEST_DIR").context("run this through `cargo xtask`")?;
    PathBuf::from(manifest)
        .parent()
        .map(PathBuf::from)
        .context("xtask has no parent directory")
}

fn target_dir() -> Result<PathBuf> {
    Ok(env::var_os("CARGO_TARGET_DIR").map_or(workspace_root()?.join("target"), PathBuf::from))
}
