//! Where control sockets live: `$XDG_RUNTIME_DIR/cluster/PID.sock`, or `/run/cluster/PID.sock`
//! for root without `XDG_RUNTIME_DIR` (`/tmp/cluster-UID/` for other users without it), in a
//! directory of mode 0700; and finding the one a subcommand talks to.

use std::{
    fs,
    os::unix::fs::{DirBuilderExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use nix::unistd::{Pid, Uid};

use super::ControlError;

/// The directory of this user's control sockets.
#[must_use]
pub fn runtime_dir() -> PathBuf {
    let base = match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ if Uid::effective().is_root() => PathBuf::from("/run"),
        _ => return std::env::temp_dir().join(format!("cluster-{}", Uid::effective())),
    };
    base.join("cluster")
}

/// The control socket of the supervisor `pid` in the default place.
#[must_use]
pub fn socket_of(pid: Pid) -> PathBuf {
    runtime_dir().join(format!("{pid}.sock"))
}

/// Creates `dir` (mode 0700) if it is missing, and checks that it is a real directory of this
/// user that no one else can enter: another user could otherwise pre-create it (in /tmp) and
/// replace the sockets in it.
pub fn ensure_private_dir(dir: &Path) -> Result<(), ControlError> {
    match fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        Ok(()) => {}
        Err(source) => {
            return Err(ControlError::Io {
                op: "creating the directory",
                path: dir.to_owned(),
                source,
            });
        }
    }
    let meta = fs::symlink_metadata(dir).map_err(|source| ControlError::Io {
        op: "checking the directory",
        path: dir.to_owned(),
        source,
    })?;
    let unsafe_dir = |reason: &str| ControlError::Io {
        op: "checking the directory",
        path: dir.to_owned(),
        source: std::io::Error::other(format!(
            "{reason}; remove it, or set XDG_RUNTIME_DIR to a directory of your own"
        )),
    };
    if !meta.is_dir() {
        return Err(unsafe_dir("it is not a directory (a symlink?)"));
    }
    if std::os::unix::fs::MetadataExt::uid(&meta) != Uid::effective().as_raw() {
        return Err(unsafe_dir("it belongs to another user"));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(|source| {
            ControlError::Io {
                op: "making the directory private (chmod 0700)",
                path: dir.to_owned(),
                source,
            }
        })?;
    }
    Ok(())
}

/// The control socket a subcommand talks to: `--control`, else `--pid`'s, else the only live
/// one in the runtime directory.
pub fn find(control: Option<&Path>, pid: Option<i32>) -> Result<PathBuf, ControlError> {
    if let Some(path) = control {
        return Ok(path.to_owned());
    }
    if let Some(pid) = pid {
        return Ok(socket_of(Pid::from_raw(pid)));
    }
    let dir = runtime_dir();
    let mut live = running(&dir);
    match live.len() {
        0 => Err(ControlError::NoneRunning { dir }),
        1 => Ok(live.remove(0).1),
        _ => Err(ControlError::Several {
            found: live
                .iter()
                .map(|(pid, path)| format!("pid {pid} at {}", path.display()))
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

/// `(pid, socket)` of every supervisor in `dir` whose process is alive, by pid.
fn running(dir: &Path) -> Vec<(i32, PathBuf)> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut live: Vec<(i32, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let path = entry.path();
            let pid: i32 = path
                .file_name()?
                .to_str()?
                .strip_suffix(".sock")?
                .parse()
                .ok()?;
            // Signal 0 checks that the process exists (EPERM: it does, as another user).
            let alive = !matches!(
                nix::sys::signal::kill(Pid::from_raw(pid), None),
                Err(nix::errno::Errno::ESRCH)
            );
            alive.then_some((pid, path))
        })
        .collect();
    live.sort();
    live
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_only_live_supervisor_and_skips_dead_ones() {
        let dir = std::env::temp_dir().join(format!("cluster-paths-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let me = std::process::id();
        fs::write(dir.join(format!("{me}.sock")), b"").unwrap();
        // Pids above the kernel's pid_max are never alive.
        fs::write(dir.join("2147483646.sock"), b"").unwrap();
        fs::write(dir.join("notes.txt"), b"").unwrap();
        let live = running(&dir);
        assert_eq!(
            live,
            vec![(i32::try_from(me).unwrap(), dir.join(format!("{me}.sock")))]
        );
        fs::write(dir.join("1.sock"), b"").unwrap();
        assert_eq!(running(&dir).len(), 2, "pid 1 is alive");
        fs::remove_dir_all(&dir).unwrap();
        assert!(running(&dir).is_empty());
    }

    #[test]
    fn the_private_directory_is_made_private_and_a_symlink_is_refused() {
        let base =
            std::env::temp_dir().join(format!("cluster-private-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        fs::create_dir_all(&base).unwrap();
        let open = base.join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
        ensure_private_dir(&open).unwrap();
        assert_eq!(
            fs::metadata(&open).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let link = base.join("link");
        std::os::unix::fs::symlink(&open, &link).unwrap();
        let err = ensure_private_dir(&link).unwrap_err().to_string();
        assert!(err.contains("not a directory"), "{err}");
        fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn explicit_choices_win() {
        let path = Path::new("/somewhere/x.sock");
        assert_eq!(find(Some(path), Some(5)).unwrap(), path);
        assert!(find(None, Some(42)).unwrap().ends_with("42.sock"));
    }
}
