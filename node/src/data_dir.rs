//! The data dir holds secrets (tokens, keys and app settings in the Raft log,
//! `worker.json`): it is the node user's alone. The folder is 0700 and every file
//! and folder in it 0600/0700 — made so when it is created and on every start
//! (an older data dir is fixed, with a log line per path).
//!
//! On Windows the folder and everything in it are owned by the node's user, with a
//! protected ACL (nothing inherited from where it is, e.g. `C:\ProgramData`'s read
//! access for Users) that gives full control to SYSTEM, Administrators and the
//! node's user only: the counterpart of 0700 ([`crate::windows_acl`]).
//!
//! The unpacked packages under `apps/` are left readable (a container's non-root
//! user reads its bind-mounted version folder, which it reaches without passing
//! through the data dir); the 0700 data dir keeps other local users out of them.

use std::path::{Path, PathBuf};

/// `strom serve`'s data dir when none is given: `./.strom`; on Windows
/// `%ProgramData%\Strom` (where a service's state belongs).
pub fn default_for_serve() -> PathBuf {
    #[cfg(windows)]
    {
        let program_data =
            std::env::var_os("ProgramData").unwrap_or_else(|| r"C:\ProgramData".into());
        PathBuf::from(program_data).join("Strom")
    }
    #[cfg(not(windows))]
    {
        PathBuf::from("./.strom")
    }
}

/// Where the unpacked packages live, left as they are.
#[cfg(unix)]
const APPS: &str = "apps";

/// One path whose access was tightened: `(path, what it was, what it is)`, e.g.
/// `mode 0644`, `mode 0600` (on Windows, the folder's ACL in SDDL).
pub type Fixed = (PathBuf, String, String);

/// Create `dir` if needed and make it and everything in it (but `apps/`)
/// readable by its owner only. Returns what it changed.
#[cfg(unix)]
pub fn secure(dir: &Path) -> std::io::Result<Vec<Fixed>> {
    std::fs::create_dir_all(dir)?;
    let mut fixed = Vec::new();
    tighten(dir, 0o700, &mut fixed)?;
    walk(dir, &mut fixed)?;
    Ok(fixed)
}

/// Create `dir` if needed and give it the owner-only ACL, which everything in it
/// inherits. Returns what it changed.
#[cfg(windows)]
pub fn secure(dir: &Path) -> std::io::Result<Vec<Fixed>> {
    std::fs::create_dir_all(dir)?;
    Ok(crate::windows_acl::restrict(dir)?
        .map(|(was, now)| {
            (
                dir.to_path_buf(),
                format!("ACL {was}"),
                format!("ACL {now}"),
            )
        })
        .into_iter()
        .collect())
}

#[cfg(unix)]
fn mode(m: u32) -> String {
    format!("mode {m:04o}")
}

#[cfg(unix)]
fn walk(dir: &Path, fixed: &mut Vec<Fixed>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let path = entry.path();
        if kind.is_symlink() {
            continue;
        }
        if kind.is_dir() {
            if dir.join(APPS) == path {
                // The unpacked packages: see the module's note.
                tighten_only_others_write(&path, fixed)?;
                continue;
            }
            tighten(&path, 0o700, fixed)?;
            walk(&path, fixed)?;
        } else if kind.is_file() {
            tighten(&path, 0o600, fixed)?;
        }
    }
    Ok(())
}

#[cfg(unix)]
fn mode_of(path: &Path) -> std::io::Result<u32> {
    use std::os::unix::fs::PermissionsExt;
    Ok(std::fs::symlink_metadata(path)?.permissions().mode() & 0o7777)
}

/// Clear group and other bits; the owner keeps its own (and gets `owner_needs`).
#[cfg(unix)]
fn tighten(path: &Path, owner_needs: u32, fixed: &mut Vec<Fixed>) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = mode_of(path)?;
    if mode & 0o077 == 0 {
        return Ok(());
    }
    let new = (mode & 0o700) | owner_needs;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(new))?;
    fixed.push((path.to_path_buf(), self::mode(mode), self::mode(new)));
    Ok(())
}

/// `apps/` itself: no one but the owner may write to it.
#[cfg(unix)]
fn tighten_only_others_write(path: &Path, fixed: &mut Vec<Fixed>) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = mode_of(path)?;
    if mode & 0o022 != 0 {
        let new = mode & !0o022;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(new))?;
        fixed.push((path.to_path_buf(), self::mode(mode), self::mode(new)));
    }
    Ok(())
}

/// [`secure`], logging each path it fixed in an older data dir (a new one is
/// created closed, without a word).
pub fn secure_and_log(dir: &Path) -> std::io::Result<()> {
    let existed = dir.exists();
    let fixed = secure(dir)?;
    if !existed {
        return Ok(());
    }
    log_fixed(fixed);
    Ok(())
}

/// A log line per path [`secure`] fixed.
pub fn log_fixed(fixed: Vec<Fixed>) {
    for (path, old, new) in fixed {
        tracing::info!(
            "data dir: {} had {old}, now {new} (the data dir holds secrets)",
            path.display()
        );
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn set(p: &Path, m: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    }
    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn an_open_data_dir_is_closed_and_says_what_it_changed() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        std::fs::create_dir_all(dir.join("raft")).unwrap();
        std::fs::create_dir_all(dir.join("apps/web/v1")).unwrap();
        std::fs::write(dir.join("raft/log.redb"), "x").unwrap();
        std::fs::write(dir.join("worker.json"), "x").unwrap();
        std::fs::write(dir.join("apps/web/v1/handler.py"), "x").unwrap();
        set(&dir, 0o755);
        set(&dir.join("raft"), 0o755);
        set(&dir.join("raft/log.redb"), 0o644);
        set(&dir.join("worker.json"), 0o666);
        set(&dir.join("apps"), 0o777);
        set(&dir.join("apps/web/v1/handler.py"), 0o755);

        let fixed = secure(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("raft")), 0o700);
        assert_eq!(mode(&dir.join("raft/log.redb")), 0o600);
        assert_eq!(mode(&dir.join("worker.json")), 0o600);
        // Packages stay readable for a container's user; nobody else writes.
        assert_eq!(mode(&dir.join("apps")), 0o755);
        assert_eq!(mode(&dir.join("apps/web/v1/handler.py")), 0o755);
        let paths: Vec<_> = fixed.iter().map(|f| f.0.clone()).collect();
        assert!(paths.contains(&dir.join("raft/log.redb")), "{fixed:?}");
        assert!(fixed.contains(&(
            dir.join("worker.json"),
            "mode 0666".into(),
            "mode 0600".into()
        )));

        // A second start has nothing to fix.
        assert!(secure(&dir).unwrap().is_empty());
    }

    #[test]
    fn a_new_data_dir_is_created_closed() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b");
        secure(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
    }

    #[test]
    fn an_owner_executable_file_keeps_its_owner_bits() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("tool");
        std::fs::write(&f, "x").unwrap();
        set(&f, 0o755);
        secure(tmp.path()).unwrap();
        assert_eq!(mode(&f), 0o700);
    }
}
