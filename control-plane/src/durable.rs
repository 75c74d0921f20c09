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
