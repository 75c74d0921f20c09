//! Durable file writes: write to a temporary file in the same folder, flush it,
//! rename it into place, flush the folder. A reader sees the old file or the whole
//! new one, also after a crash.

use std::io::Write;
use std::path::Path;

/// Write `bytes` to `dir/name` atomically and durably.
pub fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(dir.join(name)).map_err(|e| e.error)?;
    std::fs::File::open(dir)?.sync_all()
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
