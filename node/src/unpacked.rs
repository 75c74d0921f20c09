//! The app versions a worker has unpacked: `<data-dir>/apps/<app>/<version>/`,
//! unpacked once (into a temp folder renamed into place, so a present folder is
//! complete; readable by the containers' non-root user), and removed once no
//! assignment and no instance uses it (a version replaced, forgotten or moved
//! away, an app deleted) — so a worker's disk does not grow with every deploy.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use strom_proto::ids::{AppName, VersionId};
use strom_proto::manifest::{extract_to, ZipLimits};

use crate::agent::Packages;

/// One unpacked version.
pub type Unpacked = (AppName, VersionId);

/// The unpacked folder of a version, unpacking it first if needed.
pub async fn unpacked(
    apps_dir: &Path,
    app: &AppName,
    version: &VersionId,
    packages: &Packages,
    limits: &ZipLimits,
) -> anyhow::Result<PathBuf> {
    let app_dir = apps_dir.join(app.as_str());
    let target = app_dir.join(version.as_str());
    if target.is_dir() {
        return Ok(target);
    }
    // Local, or fetched from a management node (hash verified).
    let bytes = packages.get(version, limits.max_compressed_bytes).await?;
    let limits = limits.clone();
    let target2 = target.clone();
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        std::fs::create_dir_all(&app_dir)?;
        let tmp = tempfile::Builder::new()
            .prefix(".unpacking-")
            .tempdir_in(&app_dir)?;
        extract_to(&bytes, tmp.path(), &limits)?;
        // A container's non-root user reads the mounted folder: the temp folder is
        // private (0700), and a package may carry private modes.
        strom_actors::runtime::docker::open_up(tmp.path())?;
        std::fs::rename(tmp.keep(), &target2)?;
        Ok(())
    })
    .await??;
    Ok(target)
}

/// The versions unpacked under `apps_dir` (temp folders and other names skipped).
pub fn on_disk(apps_dir: &Path) -> Vec<Unpacked> {
    let mut out = Vec::new();
    let Ok(apps) = std::fs::read_dir(apps_dir) else {
        return out;
    };
    for app in apps.flatten() {
        let Some(name) = app
            .file_name()
            .to_str()
            .and_then(|n| AppName::parse(n).ok())
        else {
            continue;
        };
        let Ok(versions) = std::fs::read_dir(app.path()) else {
            continue;
        };
        for v in versions.flatten() {
            if let Some(version) = v
                .file_name()
                .to_str()
                .and_then(|n| VersionId::parse(n).ok())
            {
                out.push((name.clone(), version));
            }
        }
    }
    out
}

/// What may go: unpacked, and neither assigned nor run by any instance.
pub fn unused(on_disk: &[Unpacked], in_use: &HashSet<Unpacked>) -> Vec<Unpacked> {
    on_disk
        .iter()
        .filter(|u| !in_use.contains(*u))
        .cloned()
        .collect()
}

/// Remove the unpacked versions nothing uses (and an app folder left empty).
pub async fn collect(apps_dir: &Path, in_use: HashSet<Unpacked>) {
    let apps_dir = apps_dir.to_path_buf();
    let removed = tokio::task::spawn_blocking(move || {
        let mut removed = Vec::new();
        for (app, version) in unused(&on_disk(&apps_dir), &in_use) {
            let app_dir = apps_dir.join(app.as_str());
            let dir = app_dir.join(version.as_str());
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => removed.push(format!("{app}/{}", version.short())),
                Err(e) => tracing::warn!("removing {}: {e}", dir.display()),
            }
            // Only if empty (a temp folder of an unpacking in progress stays).
            let _ = std::fs::remove_dir(&app_dir);
        }
        removed
    })
    .await
    .unwrap_or_default();
    if !removed.is_empty() {
        tracing::info!(?removed, "removed unpacked versions nothing uses");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(app: &str, v: u8) -> Unpacked {
        (AppName::parse(app).unwrap(), VersionId::of_bytes(&[v]))
    }

    #[test]
    fn only_versions_nothing_uses_go() {
        let disk = [u("web", 1), u("web", 2), u("batch", 1)];
        // web 2 is assigned; batch 1 still has a draining instance.
        let in_use = HashSet::from([u("web", 2), u("batch", 1)]);
        assert_eq!(unused(&disk, &in_use), vec![u("web", 1)]);
    }

    #[tokio::test]
    async fn collecting_removes_the_folders_and_keeps_what_is_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let place = |app: &str, v: u8| {
            let p = dir
                .path()
                .join(app)
                .join(VersionId::of_bytes(&[v]).as_str());
            std::fs::create_dir_all(&p).unwrap();
            std::fs::write(p.join("host.json"), "{}").unwrap();
        };
        place("web", 1);
        place("web", 2);
        place("old", 1);
        std::fs::create_dir_all(dir.path().join("web").join(".unpacking-x")).unwrap();
        let mut found = on_disk(dir.path());
        found.sort();
        assert_eq!(found.len(), 3, "{found:?}");
        collect(dir.path(), HashSet::from([u("web", 2)])).await;
        assert_eq!(on_disk(dir.path()), vec![u("web", 2)]);
        assert!(
            !dir.path().join("old").exists(),
            "an emptied app folder goes"
        );
        assert!(dir.path().join("web").join(".unpacking-x").exists());
    }
}
