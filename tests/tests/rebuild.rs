//! Building again with another PATH (a new shell, an activated virtualenv, plain `cargo` after
//! `cargo xtask`) compiles nothing: the build script reruns only when the bpf-linker or the
//! nightly compiler it resolved changes, not on PATH itself.

use std::{env, path::PathBuf, process::Command};

#[test]
fn a_build_with_another_path_compiles_nothing() {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the workspace")
        .to_owned();
    // The binary under test is in <target>/<profile>/; its build is what must be fresh.
    let binary = cluster_tests::cluster_binary();
    let target_dir = binary
        .parent()
        .and_then(|profile| profile.parent())
        .expect("target/<profile>/cluster");
    // PATH without the bpf-linker that `cargo xtask` put first, plus a directory that does not
    // exist, as a new shell or plain `cargo` would have it.
    let path = env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = env::split_paths(&path)
        .filter(|dir| !dir.join("bpf-linker").exists())
        .collect();
    dirs.push(PathBuf::from("/nonexistent-cluster-test-path"));
    let output = Command::new(&cargo)
        .current_dir(&workspace)
        .args([
            "build",
            "--package",
            "cluster-userspace",
            "--bin",
            "cluster",
        ])
        .args(["--profile", "dev", "--target-dir"])
        .arg(target_dir)
        .env("PATH", env::join_paths(dirs).unwrap())
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .expect("run cargo");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        !stderr.contains("Compiling"),
        "a PATH change rebuilt something:\n{stderr}"
    );
}
