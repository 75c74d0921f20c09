//! The app zip: safe reading ([`AppPackage::from_zip_bytes`]), safe extraction
//! ([`extract_to`]) and packing a folder ([`pack_dir`]).
//!
//! Safety rules, applied identically when reading and extracting: no absolute paths, no
//! `..`, no NUL; `\` is a separator (zips made on Windows); symlinks must stay inside the
//! app (relative, `..` only as leading components and never above the root) and no entry
//! may live under a symlink; limits on entry count, compressed size, and *actual*
//! decompressed bytes (declared sizes are checked too but never trusted).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Cursor, Read, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::error::PackageError;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZipLimits {
    pub max_compressed_bytes: u64,
    pub max_uncompressed_bytes: u64,
    pub max_entries: u32,
    /// Per `host.json` / `function.json`.
    pub max_manifest_bytes: u64,
}

impl Default for ZipLimits {
    fn default() -> Self {
        Self {
            max_compressed_bytes: 256 << 20,
            max_uncompressed_bytes: 1 << 30,
            max_entries: 10_000,
            max_manifest_bytes: 1 << 20,
        }
    }
}

/// What validation needs from a zip: the file list and the manifests' bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppPackage {
    /// Normalised relative path (`/`-separated, no trailing `/`) → file info.
    pub files: BTreeMap<String, PackageFile>,
    pub host_json: Option<Vec<u8>>,
    /// Top-level folder name → its `function.json`.
    pub function_jsons: BTreeMap<String, Vec<u8>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageFile {
    /// Declared uncompressed size.
    pub size: u64,
    pub unix_mode: Option<u32>,
    pub is_dir: bool,
}

const S_IFMT: u32 = 0o170_000;
const S_IFLNK: u32 = 0o120_000;
const MAX_LINK_TARGET: u64 = 4096;

impl PackageFile {
    pub fn is_symlink(&self) -> bool {
        self.unix_mode.is_some_and(|m| m & S_IFMT == S_IFLNK)
    }
}

/// One central-directory entry after the path checks.
#[derive(Debug)]
struct Entry {
    index: usize,
    raw_name: String,
    path: String,
    is_dir: bool,
    is_symlink: bool,
    size: u64,
    unix_mode: Option<u32>,
}

type Archive<'a> = zip::ZipArchive<Cursor<&'a [u8]>>;

fn open<'a>(
    bytes: &'a [u8],
    limits: &ZipLimits,
) -> Result<(Archive<'a>, Vec<Entry>), PackageError> {
    if bytes.len() as u64 > limits.max_compressed_bytes {
        return Err(PackageError::TooLargeCompressed {
            size: bytes.len() as u64,
            limit: limits.max_compressed_bytes,
        });
    }
    let mut archive = zip::ZipArchive::new(Cursor::new(bytes))
        .map_err(|e| PackageError::NotZip(e.to_string()))?;
    if archive.len() as u64 > u64::from(limits.max_entries) {
        return Err(PackageError::TooManyEntries {
            count: archive.len() as u64,
            limit: limits.max_entries,
        });
    }
    if archive.has_duplicate_names() {
        return Err(PackageError::DuplicateEntry {
            entry: first_duplicate(bytes)
                .unwrap_or_else(|| "(a name the central directory lists twice)".into()),
        });
    }
    let mut entries = Vec::with_capacity(archive.len());
    let mut paths = BTreeSet::new();
    let mut declared: u64 = 0;
    for index in 0..archive.len() {
        let file = archive
            .by_index_raw(index)
            .map_err(|e| PackageError::NotZip(e.to_string()))?;
        let raw_name = String::from_utf8_lossy(file.name_raw()).into_owned();
        let path = normalize_entry_path(&raw_name)?;
        if file.encrypted() {
            return Err(PackageError::BadEntry {
                entry: raw_name,
                reason: "encrypted entries are not supported".into(),
            });
        }
        let is_symlink = file.unix_mode().is_some_and(|m| m & S_IFMT == S_IFLNK);
        let is_dir = file.is_dir() && !is_symlink;
        declared = declared.saturating_add(file.size());
        if declared > limits.max_uncompressed_bytes {
            return Err(PackageError::TooLargeUncompressed {
                limit: limits.max_uncompressed_bytes,
            });
        }
        if path.is_empty() {
            continue; // `./` and the like: the root itself
        }
        if !paths.insert(path.clone()) {
            return Err(PackageError::DuplicateEntry { entry: raw_name });
        }
        entries.push(Entry {
            index,
            raw_name,
            path,
            is_dir,
            is_symlink,
            size: file.size(),
            unix_mode: file.unix_mode(),
        });
    }
    let links: BTreeSet<&str> = entries
        .iter()
        .filter(|e| e.is_symlink)
        .map(|e| e.path.as_str())
        .collect();
    for e in &entries {
        let mut ancestor = e.path.as_str();
        while let Some((parent, _)) = ancestor.rsplit_once('/') {
            if links.contains(parent) {
                return Err(PackageError::UnsafePath {
                    entry: e.raw_name.clone(),
                    reason: format!("it is inside the symlink `{parent}`"),
                });
            }
            ancestor = parent;
        }
    }
    Ok((archive, entries))
}

/// Checks an entry name and returns it normalised (`/`, no `.`/empty components).
fn normalize_entry_path(raw: &str) -> Result<String, PackageError> {
    let unsafe_path = |reason: &str| PackageError::UnsafePath {
        entry: raw.to_string(),
        reason: reason.to_string(),
    };
    if raw.contains('\0') {
        return Err(unsafe_path("NUL in the name"));
    }
    let unified = raw.replace('\\', "/");
    if unified.starts_with('/') {
        return Err(unsafe_path("absolute paths are not allowed"));
    }
    let mut parts = Vec::new();
    for (i, c) in unified.split('/').enumerate() {
        if i == 0 && c.len() >= 2 && c.as_bytes()[1] == b':' {
            return Err(unsafe_path("absolute (drive) paths are not allowed"));
        }
        match c {
            "" | "." => {}
            ".." => return Err(unsafe_path("`..` is not allowed")),
            c => parts.push(c),
        }
    }
    Ok(parts.join("/"))
}

/// Checks a symlink target: relative, `..` only leading and never above the root, so the
/// link resolves inside the app even when it points through other (checked) links.
fn check_link_target(entry: &Entry, target: &str) -> Result<(), PackageError> {
    let bad = || PackageError::UnsafeSymlink {
        entry: entry.raw_name.clone(),
        target: target.to_string(),
    };
    let unified = target.replace('\\', "/");
    if unified.is_empty() || unified.contains('\0') || unified.starts_with('/') {
        return Err(bad());
    }
    if unified
        .split('/')
        .next()
        .is_some_and(|c| c.len() >= 2 && c.as_bytes()[1] == b':')
    {
        return Err(bad());
    }
    let depth = entry.path.matches('/').count();
    let mut ups = 0;
    let mut descended = false;
    for c in unified.split('/') {
        match c {
            "" | "." => {}
            ".." if descended => return Err(bad()),
            ".." => ups += 1,
            _ => descended = true,
        }
    }
    if ups > depth {
        return Err(bad());
    }
    Ok(())
}

/// Reads an entry's content through a cap, counting real bytes against the budget.
fn read_capped(
    archive: &mut Archive<'_>,
    entry: &Entry,
    cap: u64,
    total: &mut u64,
    limits: &ZipLimits,
    over_cap: impl FnOnce() -> PackageError,
) -> Result<Vec<u8>, PackageError> {
    let file = archive
        .by_index(entry.index)
        .map_err(|e| PackageError::BadEntry {
            entry: entry.raw_name.clone(),
            reason: e.to_string(),
        })?;
    let mut buf = Vec::new();
    file.take(cap + 1)
        .read_to_end(&mut buf)
        .map_err(|e| PackageError::BadEntry {
            entry: entry.raw_name.clone(),
            reason: e.to_string(),
        })?;
    *total = total.saturating_add(buf.len() as u64);
    if *total > limits.max_uncompressed_bytes {
        return Err(PackageError::TooLargeUncompressed {
            limit: limits.max_uncompressed_bytes,
        });
    }
    if buf.len() as u64 > cap {
        return Err(over_cap());
    }
    Ok(buf)
}

/// Reads an entry's whole content (and drops it): its real size must be what its
/// header declares, within the budget, and its CRC-32 must match (the zip reader
/// checks it at the end). A package that passes this unpacks.
fn verify_content(
    archive: &mut Archive<'_>,
    entry: &Entry,
    total: &mut u64,
    limits: &ZipLimits,
) -> Result<(), PackageError> {
    let bad = |reason: String| PackageError::BadEntry {
        entry: entry.raw_name.clone(),
        reason,
    };
    let mut file = archive
        .by_index(entry.index)
        .map_err(|e| bad(e.to_string()))?;
    let declared = entry.size;
    let budget = limits.max_uncompressed_bytes.saturating_sub(*total);
    let read = std::io::copy(
        &mut (&mut file).take(declared.min(budget).saturating_add(1)),
        &mut std::io::sink(),
    )
    .map_err(|e| bad(format!("its data is corrupt ({e})")))?;
    *total = total.saturating_add(read);
    if *total > limits.max_uncompressed_bytes {
        return Err(PackageError::TooLargeUncompressed {
            limit: limits.max_uncompressed_bytes,
        });
    }
    if read > declared {
        return Err(bad(format!(
            "it holds more than the {declared} bytes its header declares"
        )));
    }
    if read < declared {
        return Err(bad(format!(
            "it holds {read} bytes, but its header declares {declared}"
        )));
    }
    Ok(())
}

impl AppPackage {
    /// Reads the file list and the manifests of an app zip, refusing unsafe or oversized
    /// archives. Only `host.json` at the root and `<folder>/function.json` are read.
    pub fn from_zip_bytes(bytes: &[u8], limits: &ZipLimits) -> Result<AppPackage, PackageError> {
        let (mut archive, entries) = open(bytes, limits)?;
        let mut pkg = AppPackage {
            files: BTreeMap::new(),
            host_json: None,
            function_jsons: BTreeMap::new(),
        };
        let mut total = 0u64;
        for entry in &entries {
            if entry.is_symlink {
                let target = read_capped(
                    &mut archive,
                    entry,
                    MAX_LINK_TARGET,
                    &mut total,
                    limits,
                    || PackageError::BadEntry {
                        entry: entry.raw_name.clone(),
                        reason: "symlink target is too long".into(),
                    },
                )?;
                check_link_target(entry, &String::from_utf8_lossy(&target))?;
            } else if !entry.is_dir {
                let parts: Vec<&str> = entry.path.split('/').collect();
                let is_manifest = matches!(parts.as_slice(), ["host.json"] | [_, "function.json"]);
                if is_manifest {
                    let content = read_capped(
                        &mut archive,
                        entry,
                        limits.max_manifest_bytes,
                        &mut total,
                        limits,
                        || PackageError::ManifestTooLarge {
                            entry: entry.raw_name.clone(),
                            limit: limits.max_manifest_bytes,
                        },
                    )?;
                    match parts.as_slice() {
                        [_, _] => {
                            pkg.function_jsons.insert(parts[0].to_string(), content);
                        }
                        _ => pkg.host_json = Some(content),
                    }
                } else {
                    verify_content(&mut archive, entry, &mut total, limits)?;
                }
            }
            pkg.files.insert(
                entry.path.clone(),
                PackageFile {
                    size: entry.size,
                    unix_mode: entry.unix_mode,
                    is_dir: entry.is_dir,
                },
            );
        }
        Ok(pkg)
    }

    /// Whether `path` (package-relative, `/`-separated) is a file (or link) in the package.
    pub fn has_file(&self, path: &str) -> bool {
        let path = path.trim_start_matches("./");
        self.files.get(path).is_some_and(|f| !f.is_dir)
    }
}

/// Extracts an app zip into `dest` (absent or empty), with the same checks as
/// [`AppPackage::from_zip_bytes`], counting real bytes. Files keep their unix permission
/// bits (without setuid/setgid/sticky) on unix. Blocking: run it on a blocking thread.
pub fn extract_to(bytes: &[u8], dest: &Path, limits: &ZipLimits) -> Result<(), PackageError> {
    let (mut archive, entries) = open(bytes, limits)?;
    if dest.exists() {
        let mut listing =
            std::fs::read_dir(dest).map_err(|e| PackageError::io(dest.display(), e))?;
        if listing.next().is_some() {
            return Err(PackageError::DestinationNotEmpty(
                dest.display().to_string(),
            ));
        }
    }
    std::fs::create_dir_all(dest).map_err(|e| PackageError::io(dest.display(), e))?;
    let mut total = 0u64;
    for entry in &entries {
        let target = dest.join(&entry.path);
        if entry.is_dir {
            std::fs::create_dir_all(&target).map_err(|e| PackageError::io(target.display(), e))?;
            set_mode(&target, entry.unix_mode)?;
            continue;
        }
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(|e| PackageError::io(parent.display(), e))?;
        }
        if entry.is_symlink {
            let link = read_capped(
                &mut archive,
                entry,
                MAX_LINK_TARGET,
                &mut total,
                limits,
                || PackageError::BadEntry {
                    entry: entry.raw_name.clone(),
                    reason: "symlink target is too long".into(),
                },
            )?;
            let link = String::from_utf8_lossy(&link).replace('\\', "/");
            check_link_target(entry, &link)?;
            make_symlink(&link, &target)?;
            continue;
        }
        let file = archive
            .by_index(entry.index)
            .map_err(|e| PackageError::BadEntry {
                entry: entry.raw_name.clone(),
                reason: e.to_string(),
            })?;
        let budget = limits.max_uncompressed_bytes.saturating_sub(total);
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&target)
            .map_err(|e| PackageError::io(target.display(), e))?;
        let written =
            std::io::copy(&mut file.take(budget.saturating_add(1)), &mut out).map_err(|e| {
                PackageError::BadEntry {
                    entry: entry.raw_name.clone(),
                    reason: e.to_string(),
                }
            })?;
        total = total.saturating_add(written);
        if total > limits.max_uncompressed_bytes {
            return Err(PackageError::TooLargeUncompressed {
                limit: limits.max_uncompressed_bytes,
            });
        }
        out.flush()
            .map_err(|e| PackageError::io(target.display(), e))?;
        drop(out);
        set_mode(&target, entry.unix_mode)?;
    }
    Ok(())
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: Option<u32>) -> Result<(), PackageError> {
    use std::os::unix::fs::PermissionsExt;
    let Some(mode) = mode else { return Ok(()) };
    let perm = std::fs::Permissions::from_mode(mode & 0o777);
    std::fs::set_permissions(path, perm).map_err(|e| PackageError::io(path.display(), e))
}

#[cfg(not(unix))]
fn set_mode(_path: &Path, _mode: Option<u32>) -> Result<(), PackageError> {
    Ok(())
}

#[cfg(unix)]
fn make_symlink(target: &str, link: &Path) -> Result<(), PackageError> {
    std::os::unix::fs::symlink(target, link).map_err(|e| PackageError::io(link.display(), e))
}

#[cfg(not(unix))]
fn make_symlink(_target: &str, _link: &Path) -> Result<(), PackageError> {
    // Windows symlinks need privileges; the handler's own files never depend on them there.
    Ok(())
}

/// Zips `dir` the way `func pack` would: `.funcignore` (gitignore syntax) honoured,
/// `.gitignore` not; deflate; unix permissions kept (the handler stays executable);
/// `/` separators; sorted, timestamp-free entries so the same folder gives the same bytes.
/// Symlinks are stored as links if they stay inside `dir`, and refused otherwise.
/// `local.settings.json` at the root is always left out, as Core Tools does.
/// The first entry name that occurs twice, read from the local headers in order
/// (`ZipArchive` keeps one entry per name, so it cannot say which).
fn first_duplicate(bytes: &[u8]) -> Option<String> {
    let mut reader = Cursor::new(bytes);
    let mut seen = BTreeSet::new();
    while let Ok(Some(file)) = zip::read::read_zipfile_from_stream(&mut reader) {
        let name = String::from_utf8_lossy(file.name_raw()).into_owned();
        if !seen.insert(name.clone()) {
            return Some(name);
        }
    }
    None
}

pub fn pack_dir(dir: &Path) -> Result<Vec<u8>, PackageError> {
    let mut items: Vec<(String, std::fs::Metadata, std::path::PathBuf)> = Vec::new();
    let walker = ignore::WalkBuilder::new(dir)
        .standard_filters(false)
        .add_custom_ignore_filename(".funcignore")
        .follow_links(false)
        .build();
    for result in walker {
        let entry = result.map_err(|e| PackageError::Io {
            path: dir.display().to_string(),
            source: std::io::Error::other(e.to_string()),
        })?;
        let rel = entry.path().strip_prefix(dir).map_err(|e| {
            PackageError::io(entry.path().display(), std::io::Error::other(e.to_string()))
        })?;
        let rel: Vec<String> = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        // Never published (Core Tools keeps it local): it holds local secrets.
        if rel.is_empty() || (rel.len() == 1 && rel[0].eq_ignore_ascii_case("local.settings.json"))
        {
            continue;
        }
        let meta = std::fs::symlink_metadata(entry.path())
            .map_err(|e| PackageError::io(entry.path().display(), e))?;
        items.push((rel.join("/"), meta, entry.path().to_path_buf()));
    }
    items.sort_by(|a, b| a.0.cmp(&b.0));

    let mut writer = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let zip_err = |name: &str, e: zip::result::ZipError| PackageError::BadEntry {
        entry: name.to_string(),
        reason: e.to_string(),
    };
    for (name, meta, path) in &items {
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .last_modified_time(zip::DateTime::default())
            // Unix modes on every platform (zip writes DOS entries on Windows,
            // whose modes a Linux worker would read as 0o664: no handler to run).
            .system(zip::System::Unix)
            .unix_permissions(permissions(meta))
            .large_file(meta.len() >= u64::from(u32::MAX));
        if meta.file_type().is_symlink() {
            let target =
                std::fs::read_link(path).map_err(|e| PackageError::io(path.display(), e))?;
            let target = target.to_string_lossy().replace('\\', "/");
            let probe = Entry {
                index: 0,
                raw_name: name.clone(),
                path: name.clone(),
                is_dir: false,
                is_symlink: true,
                size: 0,
                unix_mode: None,
            };
            check_link_target(&probe, &target)?;
            writer
                .add_symlink(name, &target, options)
                .map_err(|e| zip_err(name, e))?;
        } else if meta.is_dir() {
            writer
                .add_directory(format!("{name}/"), options)
                .map_err(|e| zip_err(name, e))?;
        } else if !meta.is_file() {
            // A FIFO would block the read forever; sockets and devices are no app.
            return Err(PackageError::BadEntry {
                entry: name.clone(),
                reason: "a special file (FIFO, socket or device) cannot be packaged".into(),
            });
        } else {
            writer
                .start_file(name, options)
                .map_err(|e| zip_err(name, e))?;
            let mut f =
                std::fs::File::open(path).map_err(|e| PackageError::io(path.display(), e))?;
            std::io::copy(&mut f, &mut writer).map_err(|e| PackageError::io(path.display(), e))?;
        }
    }
    let cursor = writer.finish().map_err(|e| zip_err("(package)", e))?;
    Ok(cursor.into_inner())
}

#[cfg(unix)]
fn permissions(meta: &std::fs::Metadata) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o777
}

/// Windows has no executable bit to read: every file is recorded 0o755, so a
/// package zipped on Windows runs on a Linux worker whichever file is its handler.
#[cfg(not(unix))]
fn permissions(_meta: &std::fs::Metadata) -> u32 {
    0o755
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use zip::write::SimpleFileOptions;

    /// Builds a zip in memory: `(name, content)`; a name ending in `/` is a directory and
    /// `(name, "->target")` is a symlink.
    pub(crate) fn zip_of(files: &[(&str, &str)]) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        for (name, content) in files {
            let opts = SimpleFileOptions::default()
                .system(zip::System::Unix)
                .unix_permissions(0o755);
            if let Some(target) = content.strip_prefix("->") {
                w.add_symlink(*name, target, opts).unwrap();
            } else if name.ends_with('/') {
                w.add_directory(*name, opts).unwrap();
            } else {
                w.start_file(*name, opts).unwrap();
                w.write_all(content.as_bytes()).unwrap();
            }
        }
        w.finish().unwrap().into_inner()
    }

    fn read(files: &[(&str, &str)]) -> Result<AppPackage, PackageError> {
        AppPackage::from_zip_bytes(&zip_of(files), &ZipLimits::default())
    }

    #[test]
    fn reads_manifests_and_file_list() {
        let pkg = read(&[
            ("host.json", "{}"),
            ("handler", "#!/bin/sh"),
            ("hello/", ""),
            ("hello/function.json", "{\"bindings\":[]}"),
            ("lib\\util.txt", "x"),
            ("deep/nested/function.json", "ignored"),
            ("link", "->lib/util.txt"),
            ("bin/up", "->../handler"),
        ])
        .unwrap();
        assert_eq!(pkg.host_json.as_deref(), Some(&b"{}"[..]));
        assert_eq!(pkg.function_jsons.keys().collect::<Vec<_>>(), vec!["hello"]);
        assert!(
            pkg.has_file("handler") && pkg.has_file("./handler") && pkg.has_file("lib/util.txt")
        );
        assert!(pkg.files["hello"].is_dir);
        assert!(pkg.files["link"].is_symlink());
        assert_eq!(
            pkg.files["handler"].unix_mode.map(|m| m & 0o777),
            Some(0o755)
        );
    }

    #[test]
    fn refuses_unsafe_paths_and_links() {
        for (files, entry) in [
            (vec![("../evil", "x")], "../evil"),
            (vec![("/abs", "x")], "/abs"),
            (vec![("a\\..\\..\\evil", "x")], "a\\..\\..\\evil"),
            (vec![("C:\\windows\\x", "x")], "C:\\windows\\x"),
            (vec![("a/passwd", "->../../etc/passwd")], "a/passwd"),
            (vec![("abs", "->/etc/passwd")], "abs"),
            (vec![("a/b", "->x/../../y")], "a/b"),
            (vec![("l", "->sub"), ("l/x", "y")], "l/x"),
        ] {
            let err = read(&files).expect_err(entry);
            assert_eq!(err.entry(), Some(entry), "{err}");
            let dir = tempfile::tempdir().unwrap();
            let err = extract_to(
                &zip_of(&files),
                &dir.path().join("out"),
                &ZipLimits::default(),
            )
            .expect_err(entry);
            assert_eq!(err.entry(), Some(entry), "{err}");
            assert!(!dir.path().join("etc").exists() && !dir.path().join("evil").exists());
        }
    }

    #[test]
    fn limits() {
        let many: Vec<(String, String)> =
            (0..11).map(|i| (format!("f{i}"), String::new())).collect();
        let many: Vec<(&str, &str)> = many.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        let limits = ZipLimits {
            max_entries: 10,
            ..ZipLimits::default()
        };
        let err = AppPackage::from_zip_bytes(&zip_of(&many), &limits).unwrap_err();
        assert!(
            matches!(
                err,
                PackageError::TooManyEntries {
                    count: 11,
                    limit: 10
                }
            ),
            "{err}"
        );

        let bytes = zip_of(&[("a", "hello")]);
        let limits = ZipLimits {
            max_compressed_bytes: 10,
            ..ZipLimits::default()
        };
        let err = AppPackage::from_zip_bytes(&bytes, &limits).unwrap_err();
        assert!(err.to_string().contains("(limit 10)"), "{err}");

        let err = AppPackage::from_zip_bytes(b"not a zip", &ZipLimits::default()).unwrap_err();
        assert!(matches!(err, PackageError::NotZip(_)));

        let big = "x".repeat(2000);
        let limits = ZipLimits {
            max_manifest_bytes: 1000,
            ..ZipLimits::default()
        };
        let err = AppPackage::from_zip_bytes(&zip_of(&[("host.json", &big)]), &limits).unwrap_err();
        assert!(
            matches!(err, PackageError::ManifestTooLarge { limit: 1000, .. }),
            "{err}"
        );
    }

    /// A zip bomb: 50 MB of zeros whose headers claim a tiny size must not get past a
    /// 1 MB limit, in reading or in extraction.
    #[test]
    fn zip_bomb_is_refused_on_real_bytes() {
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let opts =
            SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
        for name in ["host.json"] {
            w.start_file(name, opts).unwrap();
            let chunk = vec![0u8; 1 << 20];
            for _ in 0..50 {
                w.write_all(&chunk).unwrap();
            }
        }
        let mut bytes = w.finish().unwrap().into_inner();
        assert!(
            bytes.len() < 1 << 20,
            "compressed is small: {}",
            bytes.len()
        );
        let limits = ZipLimits {
            max_uncompressed_bytes: 1 << 20,
            max_manifest_bytes: 1 << 20,
            ..ZipLimits::default()
        };
        let err = AppPackage::from_zip_bytes(&bytes, &limits).unwrap_err();
        assert!(
            matches!(err, PackageError::TooLargeUncompressed { limit } if limit == 1 << 20),
            "{err}"
        );

        // Lie about sizes in the central directory (uncompressed size = 1 byte).
        lie_about_sizes(&mut bytes);
        let err = AppPackage::from_zip_bytes(&bytes, &limits).unwrap_err();
        assert!(
            matches!(
                err,
                PackageError::ManifestTooLarge { .. }
                    | PackageError::TooLargeUncompressed { .. }
                    | PackageError::BadEntry { .. }
            ),
            "{err}"
        );
        let dir = tempfile::tempdir().unwrap();
        let err = extract_to(&bytes, &dir.path().join("out"), &limits).unwrap_err();
        assert!(
            matches!(
                err,
                PackageError::TooLargeUncompressed { .. } | PackageError::BadEntry { .. }
            ),
            "{err}"
        );
        let written: u64 = std::fs::read_dir(dir.path().join("out"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
                    .sum()
            })
            .unwrap_or(0);
        assert!(written <= (1 << 20) + 1, "wrote {written}");
    }

    /// Sets the declared uncompressed size of every central-directory and local header to 1.
    fn lie_about_sizes(bytes: &mut [u8]) {
        let mut i = 0;
        while i + 46 <= bytes.len() {
            match &bytes[i..i + 4] {
                [0x50, 0x4b, 0x01, 0x02] => {
                    bytes[i + 24..i + 28].copy_from_slice(&1u32.to_le_bytes())
                }
                [0x50, 0x4b, 0x03, 0x04] => {
                    bytes[i + 22..i + 26].copy_from_slice(&1u32.to_le_bytes())
                }
                _ => {}
            }
            i += 1;
        }
    }

    #[test]
    fn extract_keeps_modes_and_inner_links() {
        let bytes = zip_of(&[
            ("handler", "#!/bin/sh\necho hi\n"),
            ("bin/", ""),
            ("bin/h", "->../handler"),
        ]);
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("app");
        extract_to(&bytes, &out, &ZipLimits::default()).unwrap();
        assert_eq!(
            std::fs::read_to_string(out.join("handler")).unwrap(),
            "#!/bin/sh\necho hi\n"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(out.join("handler"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o755);
            assert_eq!(
                std::fs::read_to_string(out.join("bin/h")).unwrap(),
                "#!/bin/sh\necho hi\n"
            );
        }
        let err = extract_to(&bytes, &out, &ZipLimits::default()).unwrap_err();
        assert!(matches!(err, PackageError::DestinationNotEmpty(_)), "{err}");
    }

    #[test]
    fn pack_dir_round_trip_honours_funcignore() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::write(root.join(".funcignore"), "*.log\nsecrets/\n").unwrap();
        std::fs::write(root.join(".gitignore"), "host.json\n").unwrap();
        std::fs::write(root.join("host.json"), "{}").unwrap();
        std::fs::write(root.join("debug.log"), "noise").unwrap();
        std::fs::create_dir_all(root.join("secrets")).unwrap();
        std::fs::write(root.join("secrets/key"), "k").unwrap();
        std::fs::create_dir_all(root.join("hello")).unwrap();
        std::fs::write(root.join("hello/function.json"), "{}").unwrap();
        std::fs::write(root.join("handler"), "#!/bin/sh").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(root.join("handler"), std::fs::Permissions::from_mode(0o755))
                .unwrap();
        }
        let bytes = pack_dir(root).unwrap();
        assert_eq!(bytes, pack_dir(root).unwrap(), "deterministic");
        let pkg = AppPackage::from_zip_bytes(&bytes, &ZipLimits::default()).unwrap();
        let names: Vec<&str> = pkg.files.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            vec![
                ".funcignore",
                ".gitignore",
                "handler",
                "hello",
                "hello/function.json",
                "host.json"
            ]
        );
        assert!(pkg.host_json.is_some());
        // Recorded as a Unix mode on every platform (on Windows: 0o755).
        assert_eq!(
            pkg.files["handler"].unix_mode.map(|m| m & 0o777),
            Some(0o755)
        );

        #[cfg(unix)]
        {
            std::os::unix::fs::symlink("/etc/passwd", root.join("escape")).unwrap();
            let err = pack_dir(root).unwrap_err();
            assert!(matches!(err, PackageError::UnsafeSymlink { .. }), "{err}");
        }
    }

    #[test]
    fn a_duplicate_entry_is_named() {
        let mut bytes = zip_of(&[("host.json", "{}"), ("a.txt", "1"), ("b.txt", "2")]);
        // Rename `b.txt` to `a.txt` in its local and central headers.
        let (from, to) = (b"b.txt", b"a.txt");
        let mut i = 0;
        while i + from.len() <= bytes.len() {
            if &bytes[i..i + from.len()] == from {
                bytes[i..i + from.len()].copy_from_slice(to);
            }
            i += 1;
        }
        let err = AppPackage::from_zip_bytes(&bytes, &ZipLimits::default()).unwrap_err();
        assert!(
            matches!(&err, PackageError::DuplicateEntry { entry } if entry == "a.txt"),
            "{err}"
        );
        assert_eq!(err.to_string(), "duplicate entry `a.txt`");
    }

    #[cfg(unix)]
    #[test]
    fn a_fifo_in_the_folder_is_refused_not_read() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("host.json"), "{}").unwrap();
        let fifo = dir.path().join("pipe");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let err = pack_dir(dir.path()).unwrap_err();
        assert!(
            matches!(&err, PackageError::BadEntry { entry, .. } if entry == "pipe"),
            "{err}"
        );
        assert!(err.to_string().contains("special file"), "{err}");
    }

    #[test]
    fn a_corrupt_entry_is_refused_at_validation() {
        let data = "x".repeat(4000);
        let good = zip_of(&[("host.json", "{}"), ("big.txt", &data)]);
        AppPackage::from_zip_bytes(&good, &ZipLimits::default()).unwrap();

        // Flip a byte of big.txt's compressed data: it no longer inflates to its CRC.
        let mut bad = good.clone();
        let at = data_start(&bad, b"big.txt") + 1;
        bad[at] ^= 0x55;
        let err = AppPackage::from_zip_bytes(&bad, &ZipLimits::default()).unwrap_err();
        assert!(
            matches!(&err, PackageError::BadEntry { entry, .. } if entry == "big.txt"),
            "{err}"
        );
    }

    #[test]
    fn a_bomb_that_lies_about_its_size_is_refused_at_validation() {
        // An entry that inflates to far more than the size its headers declare.
        let data = "0".repeat(200_000);
        let mut bytes = zip_of(&[("host.json", "{}"), ("bomb.bin", &data)]);
        // Patch the declared uncompressed size (local header at offset 22, central
        // header at offset 24 after their signatures) to 1000.
        patch_sizes(&mut bytes, b"bomb.bin", 1000);
        let err = AppPackage::from_zip_bytes(&bytes, &ZipLimits::default()).unwrap_err();
        assert!(
            matches!(&err, PackageError::BadEntry { entry, .. } if entry == "bomb.bin"),
            "{err}"
        );
    }

    /// Where `name`'s data starts (after its local header, name and extra field).
    fn data_start(bytes: &[u8], name: &[u8]) -> usize {
        (0..bytes.len() - 30)
            .find(|&i| {
                &bytes[i..i + 4] == b"PK\x03\x04" && {
                    let n = u16::from_le_bytes([bytes[i + 26], bytes[i + 27]]) as usize;
                    &bytes[i + 30..i + 30 + n] == name
                }
            })
            .map(|i| {
                let n = u16::from_le_bytes([bytes[i + 26], bytes[i + 27]]) as usize;
                let extra = u16::from_le_bytes([bytes[i + 28], bytes[i + 29]]) as usize;
                i + 30 + n + extra
            })
            .expect("a local header for the name")
    }

    /// Sets the uncompressed size of `name` in its local and central headers.
    fn patch_sizes(bytes: &mut [u8], name: &[u8], size: u32) {
        let le = size.to_le_bytes();
        let mut i = 0;
        while i + 4 <= bytes.len() {
            let sig = &bytes[i..i + 4];
            if sig == b"PK\x03\x04" {
                let n = u16::from_le_bytes([bytes[i + 26], bytes[i + 27]]) as usize;
                if &bytes[i + 30..i + 30 + n] == name {
                    bytes[i + 22..i + 26].copy_from_slice(&le);
                }
            } else if sig == b"PK\x01\x02" {
                let n = u16::from_le_bytes([bytes[i + 28], bytes[i + 29]]) as usize;
                if &bytes[i + 46..i + 46 + n] == name {
                    bytes[i + 24..i + 28].copy_from_slice(&le);
                }
            }
            i += 1;
        }
    }
}
