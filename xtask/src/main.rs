//! `cargo xtask`: project tasks. `setup` installs what the eBPF build needs; `build`, `run`,
//! `load`, `lint` and `test` run it first, then cargo with bpf-linker on PATH.

mod setup;

use std::{
    env,
    ffi::{OsStr, OsString},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context as _, Result, bail};

const USAGE: &str = "usage: cargo xtask <command>

commands:
  setup                 install what the eBPF build needs (nightly rust-src, bpf-linker)
  build [ARGS]          build the host crates (the eBPF program is built by their build.rs)
  run [--debug] -- ARGS build (release unless --debug) and run `cluster run ARGS`
  load URL [ARGS]       build (release) and run the load generator `cluster-load URL ARGS`
                        (`cargo xtask load --help` lists its options)
  lint                  clippy (host crates and the eBPF crate) and rustdoc, warnings denied
  test [ARGS]           build and run every test (the integration tests need root)
  cost [ARGS]           the bench's decision cost alone (`bench --cost-only ARGS`; `--modes`
                        narrows it): what each steering program costs per decision, beside the
                        floors (root)
  bench [--quick] [ARGS]
                        build (release) and run the bench `cluster-bench ARGS`: every steering
                        mode side by side, report and plots (root; `cargo xtask bench --help`)";

/// Selects every crate built for the host: all but the eBPF crate, which only builds for the
/// BPF target.
const HOST_CRATES: [&str; 3] = ["--workspace", "--exclude", "cluster-ebpf"];

fn main() -> ExitCode {
    match run(env::args_os().skip(1).collect()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Vec<OsString>) -> Result<()> {
    let (command, rest) = args
        .split_first()
        .map_or(("", &[][..]), |(c, r)| (c.to_str().unwrap_or("?"), r));
    if matches!(command, "" | "help" | "-h" | "--help") {
        eprintln!("{USAGE}");
        return Ok(());
    }
    if !matches!(
        command,
        "setup" | "build" | "run" | "load" | "lint" | "test" | "cost" | "bench"
    ) {
        bail!("unknown command `{command}`\n\n{USAGE}");
    }
    let tasks = Tasks::new()?;
    match command {
        "setup" => {
            eprintln!(
                "setup: ready; bpf-linker is in {}",
                tasks.linker_dir.display()
            );
            Ok(())
        }
        "build" => setup::run(tasks.cargo("build").args(HOST_CRATES).args(rest)),
        "run" => tasks.run_cluster(rest),
        "load" => tasks.run_load(rest),
        "bench" => tasks.run_bench(rest),
        "lint" => tasks.lint(),
        "cost" => {
            // With every mode asked for (the default), the cost covers the in-kernel ones; a
            // `--modes` given narrows it.
            let mut args = vec![OsString::from("--cost-only")];
            args.extend(rest.iter().cloned());
            tasks.run_bench(&args)
        }
        _ => tasks.test(rest),
    }
}

/// The toolchain made ready once, and the commands run with it.
struct Tasks {
    linker_dir: PathBuf,
    root: PathBuf,
}

impl Tasks {
    fn new() -> Result<Self> {
        let manifest =
            env::var_os("CARGO_MANIFEST_DIR").context("run this through `cargo xtask`")?;
        let root = PathBuf::from(manifest)
            .parent()
            .map(PathBuf::from)
            .context("xtask has no parent directory")?;
        Ok(Self {
            linker_dir: setup::ensure()?.linker_dir,
            root,
        })
    }

    /// `cargo SUBCOMMAND` from the workspace root, with bpf-linker first on PATH.
    fn cargo(&self, subcommand: &str) -> Command {
        let mut cargo = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
        cargo.arg(subcommand);
        self.with_linker(cargo)
    }

    /// The nightly toolchain's `cargo SUBCOMMAND`, for the eBPF crate.
    fn nightly_cargo(&self, subcommand: &str) -> Command {
        let mut cargo = Command::new("rustup");
        cargo.args(["run", "nightly", "cargo", subcommand]);
        for key in ["RUSTC", "RUSTC_WRAPPER", "RUSTUP_TOOLCHAIN", "CARGO"] {
            cargo.env_remove(key);
        }
        self.with_linker(cargo)
    }

    fn with_linker(&self, mut cargo: Command) -> Command {
        let path = env::var_os("PATH").unwrap_or_default();
        let mut dirs = vec![self.linker_dir.clone()];
        dirs.extend(env::split_paths(&path));
        // A PATH entry with a `:` cannot be joined; keep PATH as it is then (the build script
        // names the fix if bpf-linker is not found).
        let joined = env::join_paths(dirs).unwrap_or(path);
        cargo.current_dir(&self.root).env("PATH", joined);
        cargo
    }

    /// Builds the `cluster` binary with `profile` and returns its path.
    fn build_cluster(&self, profile: &str) -> Result<PathBuf> {
        self.build_binary("cluster-userspace", "cluster", profile)
    }

    /// Builds binary `bin` of `package` with `profile` and returns its path.
    fn build_binary(&self, package: &str, bin: &str, profile: &str) -> Result<PathBuf> {
        let mut cargo = self.cargo("build");
        cargo.args(["--package", package, "--bin", bin, "--profile", profile]);
        setup::run(&mut cargo)?;
        let target =
            env::var_os("CARGO_TARGET_DIR").map_or(self.root.join("target"), PathBuf::from);
        // Cargo puts the `dev` profile in `debug/`.
        let dir = if profile == "dev" { "debug" } else { profile };
        Ok(target.join(dir).join(bin))
    }

    /// Builds `cluster` and replaces this process with `cluster run ARGS`, so signals (Ctrl-C)
    /// and the exit status are the supervisor's own.
    fn run_cluster(&self, args: &[OsString]) -> Result<()> {
        let debug = args.first().is_some_and(|a| a == "--debug");
        let args = if debug { &args[1..] } else { args };
        let args = args.strip_prefix(&[OsString::from("--")]).unwrap_or(args);
        let binary = self.build_cluster(if debug { "dev" } else { "release" })?;
        exec(Command::new(binary).arg("run").args(args))
    }

    /// Builds the load generator in release and replaces this process with `cluster-load ARGS`,
    /// so its output, Ctrl-C and exit status (2 for a bad command line) are its own.
    fn run_load(&self, args: &[OsString]) -> Result<()> {
        let args = args.strip_prefix(&[OsString::from("--")]).unwrap_or(args);
        let binary = self.build_binary("cluster-load", "cluster-load", "release")?;
        exec(Command::new(binary).args(args))
    }

    /// Builds `cluster` and the bench in release and replaces this process with
    /// `cluster-bench --cluster PATH ARGS`, so its output, Ctrl-C and exit status are its own.
    fn run_bench(&self, args: &[OsString]) -> Result<()> {
        let args = args.strip_prefix(&[OsString::from("--")]).unwrap_or(args);
        let cluster = self.build_cluster("release")?;
        let binary = self.build_binary("cluster-bench", "cluster-bench", "release")?;
        exec(
            Command::new(binary)
                .arg("--cluster")
                .arg(cluster)
                .args(args),
        )
    }

    fn lint(&self) -> Result<()> {
        let deny = [
            OsStr::new("--"),
            OsStr::new("--deny"),
            OsStr::new("warnings"),
        ];
        setup::run(
            self.cargo("clippy")
                .args(HOST_CRATES)
                .arg("--all-targets")
                .args(deny),
        )?;
        setup::run(
            self.nightly_cargo("clippy")
                .args([
                    "--package",
                    "cluster-ebpf",
                    "--target",
                    "bpfel-unknown-none",
                ])
                .args(["-Z", "build-std=core"])
                .args(deny),
        )?;
        setup::run(
            self.cargo("doc")
                .arg("--no-deps")
                .args(HOST_CRATES)
                .env("RUSTDOCFLAGS", "--deny warnings"),
        )
    }

    /// Installs the programs the tests use, builds the `cluster` and `cluster-bench` binaries
    /// the integration tests start, then runs every test.
    fn test(&self, args: &[OsString]) -> Result<()> {
        setup::ensure_test_tools()?;
        self.build_cluster("dev")?;
        self.build_binary("cluster-bench", "cluster-bench", "dev")?;
        setup::run(
            self.cargo("test")
                .arg("--no-fail-fast")
                .args(HOST_CRATES)
                .args(args),
        )
    }
}

/// Replaces this process with `command`; returns only if it could not be started.
fn exec(command: &mut Command) -> Result<()> {
    let err = command.exec();
    Err(err).with_context(|| {
        format!(
            "could not start {}",
            Path::new(command.get_program()).display()
        )
    })
}
