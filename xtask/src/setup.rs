//! Toolchain bootstrap: the nightly toolchain with `rust-src`, and a bpf-linker built against
//! that nightly's own libLLVM (bpf-linker must use the LLVM that rustc emits bitcode for; see
//! the bpf-linker README, <https://github.com/aya-rs/bpf-linker>). Idempotent and quick when all is
//! there; notices a changed nightly because the linker is kept per nightly commit and LLVM.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

const BPF_LINKER_VERSION: &str = "0.13.0";
/// LLVM major versions bpf-linker 0.13 has a cargo feature for.
const SUPPORTED_LLVM: [u32; 3] = [21, 22, 23];

/// What `setup` made sure of.
#[derive(Debug)]
pub struct Toolchain {
    /// The directory holding `bpf-linker`; put it first on PATH.
    pub linker_dir: PathBuf,
}

/// Makes sure the eBPF build can run; builds bpf-linker when it is missing.
pub fn ensure() -> Result<Toolchain> {
    let rustup_ok = Command::new("rustup")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !rustup_ok {
        bail!(
            "rustup is not installed: install it from https://rustup.rs, then run `cargo xtask setup`"
        );
    }
    let nightly = Nightly::query()?;
    ensure_rust_src(&nightly)?;
    let linker_dir = ensure_bpf_linker(&nightly)?;
    Ok(Toolchain { linker_dir })
}

/// Facts about the installed nightly toolchain.
struct Nightly {
    sysroot: PathBuf,
    commit: String,
    llvm: String,
    llvm_major: u32,
}

impl Nightly {
    fn query() -> Result<Self> {
        let missing = "the nightly toolchain is not installed: run `rustup toolchain install nightly --component rust-src`";
        let verbose = capture(Command::new("rustup").args(["run", "nightly", "rustc", "-vV"]))
            .context(missing)?;
        let field = |name: &str| {
            verbose
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_owned())
        };
        let llvm =
            field("LLVM version:").context("`rustc +nightly -vV` printed no LLVM version")?;
        let commit = field("commit-hash:").unwrap_or_else(|| "unknown".into());
        let llvm_major = llvm
            .split('.')
            .next()
            .and_then(|m| m.parse().ok())
            .with_context(|| format!("cannot read the LLVM major version from {llvm:?}"))?;
        let sysroot =
            capture(Command::new("rustup").args(["run", "nightly", "rustc", "--print", "sysroot"]))
                .context(missing)?;
        Ok(Self {
            sysroot: PathBuf::from(sysroot.trim()),
            commit,
            llvm,
            llvm_major,
        })
    }

    /// The toolchain's own LLVM shared library (`libLLVM.so.<ver>-rust-<rustc>`).
    fn libllvm(&self) -> Result<PathBuf> {
        let lib = self.sysroot.join("lib");
        let entries = fs::read_dir(&lib).with_context(|| format!("reading {}", lib.display()))?;
        entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("libLLVM") && n.contains(".so"))
            })
            .with_context(|| {
                format!(
                    "no libLLVM shared library in {}; reinstall the nightly toolchain",
                    lib.display()
                )
            })
    }
}

fn ensure_rust_src(nightly: &Nightly) -> Result<()> {
    let core = nightly.sysroot.join("lib/rustlib/src/rust/library/core");
    if core.is_dir() {
        return Ok(());
    }
    eprintln!("setup: adding rust-src to the nightly toolchain (needed for -Z build-std=core)");
    run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
        .context(
            "installing rust-src failed: run `rustup component add rust-src --toolchain nightly`",
        )
}

/// Returns the directory of a working bpf-linker for this nightly, building it if needed.
fn ensure_bpf_linker(nightly: &Nightly) -> Result<PathBuf> {
    if !SUPPORTED_LLVM.contains(&nightly.llvm_major) {
        bail!(
            "the nightly toolchain uses LLVM {}, but bpf-linker {BPF_LINKER_VERSION} supports LLVM {SUPPORTED_LLVM:?}: install a matching nightly with `rustup toolchain install nightly-<date>`",
            nightly.llvm
        );
    }
    let short_commit: String = nightly.commit.chars().take(12).collect();
    let home = cache_dir()?
        .join("bpf-linker")
        .join(format!("llvm{}-{short_commit}", nightly.llvm));
    let bin_dir = home.join("bin");
    let linker = bin_dir.join("bpf-linker");
    if linker_works(&linker) {
        return Ok(bin_dir);
    }

    // bpf-linker links libLLVM dynamically and finds it through LLVM_PREFIX/lib; its binary
    // keeps an rpath to that directory, so the directory lives next to the binary for good.
    let llvm_lib = home.join("llvm/lib");
    fs::create_dir_all(&llvm_lib).with_context(|| format!("creating {}", llvm_lib.display()))?;
    let libllvm = nightly.libllvm()?;
    let versioned = libllvm
        .file_name()
        .context("libLLVM path has no file name")?;
    for name in [Path::new("libLLVM.so"), Path::new(versioned)] {
        let link = llvm_lib.join(name);
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(&libllvm, &link)
            .with_context(|| format!("linking {} to {}", link.display(), libllvm.display()))?;
    }
    eprintln!(
        "setup: building bpf-linker {BPF_LINKER_VERSION} against the nightly's LLVM {} into {} (takes a few minutes, once per nightly)",
        nightly.llvm,
        home.display()
    );
    run(Command::new("cargo")
        .args([
            "install",
            "bpf-linker",
            "--locked",
            "--version",
            BPF_LINKER_VERSION,
        ])
        .args(["--no-default-features", "--features"])
        .arg(format!("llvm-{}", nightly.llvm_major))
        .arg("--root")
        .arg(&home)
        .env("LLVM_PREFIX", home.join("llvm")))
    .context("building bpf-linker failed (see the cargo output above)")?;
    if !linker_works(&linker) {
        bail!(
            "the freshly built {} does not run; delete {} and run `cargo xtask setup` again",
            linker.display(),
            home.display()
        );
    }
    eprintln!("setup: bpf-linker ready");
    Ok(bin_dir)
}

fn linker_works(linker: &Path) -> bool {
    linker.is_file()
        && Command::new(linker)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}

/// `$XDG_CACHE_HOME/cluster`, else `~/.cache/cluster`: outside the work tree so `cargo clean`
/// and fresh clones on the same machine reuse the linker.
fn cache_dir() -> Result<PathBuf> {
    if let Some(dir) = env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir).join("cluster"));
    }
    let home = env::var_os("HOME").context("HOME is not set: set HOME or XDG_CACHE_HOME")?;
    Ok(PathBuf::from(home).join(".cache/cluster"))
}

/// Programs the integration tests run, with the Debian package of each.
const TEST_TOOLS: [(&str, &str); 6] = [
    ("ip", "iproute2"),
    ("setcap", "libcap2-bin"),
    ("setpriv", "util-linux"),
    ("systemd-notify", "systemd"),
    ("python3", "python3"),
    ("node", "nodejs"),
];

/// Installs the programs the integration tests need, with apt-get, when some are missing and
/// this runs as root; otherwise says which packages to install. The tests themselves install
/// nothing, and fail naming what is missing.
pub fn ensure_test_tools() -> Result<()> {
    let missing: Vec<&str> = TEST_TOOLS
        .iter()
        .filter(|(program, _)| !on_path(program))
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let root = capture(Command::new("id").arg("-u")).is_ok_and(|uid| uid.trim() == "0");
    if !root || !on_path("apt-get") {
        eprintln!(
            "test: missing packages {}: install them (as root `cargo xtask test` does with apt-get)",
            missing.join(" ")
        );
        return Ok(());
    }
    eprintln!("test: installing {} with apt-get", missing.join(" "));
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
    .with_context(|| format!("installing {} failed", missing.join(" ")))
}

/// Whether `program` is on PATH or in the sbin directories root has on PATH.
fn on_path(program: &str) -> bool {
    let path = env::var_os("PATH").unwrap_or_default();
    env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .any(|dir| dir.join(program).is_file())
}

/// Runs a command with inherited output; fails on a non-zero exit.
pub fn run(command: &mut Command) -> Result<()> {
    let status = command
        .status()
        .with_context(|| format!("could not start {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed with {status}");
    }
    Ok(())
}

fn capture(command: &mut Command) -> Result<String> {
    let output = command
        .stderr(Stdio::null())
        .output()
        .with_context(|| format!("could not start {command:?}"))?;
    if !output.status.success() {
        bail!("{command:?} failed with {}", output.status);
    }
    String::from_utf8(output.stdout).context("non-UTF-8 output")
}
