//! The app folder as containers see it: bind-mounted read-only (a Windows path
//! without its `\\?\` prefix), readable by the container's non-root user.

use std::path::{Path, PathBuf};

/// Windows' canonical paths carry the `\\?\` prefix, which bind mounts refuse.
pub(super) fn plain_path(p: PathBuf) -> PathBuf {
    match p.to_str().and_then(|s| s.strip_prefix(r"\\?\")) {
        Some(rest) => PathBuf::from(rest),
        None => p,
    }
}

/// Files readable and folders enterable by everyone (the container's user is not
/// their owner); executables stay executable.
#[cfg(unix)]
pub fn open_up(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fn walk(path: &Path) -> std::io::Result<()> {
        let meta = std::fs::symlink_metadata(path)?;
        if meta.file_type().is_symlink() {
            return Ok(());
        }
        let mode = meta.permissions().mode() & 0o7777;
        let wanted = if meta.is_dir() || mode & 0o111 != 0 {
            mode | 0o555
        } else {
            mode | 0o444
        };
        if wanted != mode {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(wanted))?;
        }
        if meta.is_dir() {
            for entry in std::fs::read_dir(path)? {
                walk(&entry?.path())?;
            }
        }
        Ok(())
    }
    walk(dir)
}

#[cfg(not(unix))]
pub fn open_up(_dir: &Path) -> std::io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_paths_lose_their_verbatim_prefix() {
        assert_eq!(
            plain_path(PathBuf::from(r"\\?\C:\data\apps\x")),
            PathBuf::from(r"C:\data\apps\x")
        );
    }

    #[cfg(unix)]
    #[test]
    fn unpacked_files_are_opened_to_the_container_user() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        std::fs::write(sub.join("data"), b"x").unwrap();
        std::fs::write(sub.join("run"), b"x").unwrap();
        let set =
            |p: &Path, m| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
        set(&sub.join("data"), 0o600);
        set(&sub.join("run"), 0o700);
        set(&sub, 0o700);
        open_up(dir.path()).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&sub), 0o755);
        assert_eq!(mode(&sub.join("data")), 0o644);
        assert_eq!(mode(&sub.join("run")), 0o755);
    }
}
