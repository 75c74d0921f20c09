//! Durable file writes, one path for every store (blobs, snapshots, node files,
//! checkpoints): write a temporary file in the target's folder, flush it, then put
//! it in the target's place durably:
//!
//! - **Unix**: `rename`, then a flush (`fsync`) of the folder, so the new name
//!   survives a crash or a power loss once the call returned;
//! - **Windows**: `MoveFileExW` with `MOVEFILE_REPLACE_EXISTING |
//!   MOVEFILE_WRITE_THROUGH`, which returns only when the move is on disk. Windows
//!   cannot open a folder as a file to flush it (`Access denied`), so the Unix way
//!   does not work there.
//!
//! Both through `atomicwrites::replace_atomic`. A reader sees the old file or the
//! whole new one; a crash leaves at most a `.tmp…` file beside it, which every
//! store's listing skips.

use std::io::Write;
use std::path::Path;

/// Write `bytes` to `dir/name` atomically and durably (see [`write_durably`]).
pub fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    write_durably(&dir.join(name), bytes)
}

/// Write `bytes` to `path` atomically and durably. The file is readable by its owner
/// only: 0600 on Unix; on Windows it takes the folder's ACL (an owner-only ACL on the
/// data dir is issue 21's work, not done yet).
pub fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new().prefix(".tmp").tempfile_in(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    // Closed before the move (Windows moves a closed file); kept, so tempfile
    // neither deletes it nor leaves its "temporary" attribute on the result.
    let tmp = tmp.into_temp_path().keep().map_err(|e| e.error)?;
    atomicwrites::replace_atomic(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// Create `path` (and missing parents) readable by its owner only (0700 on Unix):
/// for folders that hold secrets. A folder that exists is left as it is.
pub fn private_dir(path: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_replaces_the_whole_file_owner_only_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        write_durably(&path, b"first, longer contents").unwrap();
        write_atomically(dir.path(), "state", b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["state"]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn a_failed_move_leaves_the_old_file_and_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        // The target is a non-empty folder: the move fails on every platform.
        let target = dir.path().join("taken");
        std::fs::create_dir(&target).unwrap();
        std::fs::write(target.join("inside"), b"x").unwrap();
        assert!(write_durably(&target, b"new").is_err());
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names, ["taken"]);
        assert_eq!(std::fs::read(target.join("inside")).unwrap(), b"x");
    }
}
