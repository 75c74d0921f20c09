//! Version retention: which of an app's versions the leader forgets, so that the
//! state and the disks do not grow with every deploy. Pure.
//!
//! An app keeps its newest `keep` versions (by deploy order) and always its active
//! one (after a rollback to an old version, that one too). What is forgotten
//! cannot be rolled back to; its package is then removed from every node
//! (`blob_gc`) and from every worker's disk.

use strom_proto::ids::{AppName, VersionId};

use crate::cluster_state::{AppState, ClusterState};

/// Versions kept per app unless `--keep-versions` says otherwise.
pub const DEFAULT_KEEP: usize = 10;

/// The versions of `app` beyond its newest `keep` (at least 1), never the active one.
pub fn excess(app: &AppState, keep: usize) -> Vec<VersionId> {
    let keep = keep.max(1);
    let n = app.versions.len();
    if n <= keep {
        return Vec::new();
    }
    app.versions[..n - keep]
        .iter()
        .filter(|v| v.id != app.active_version)
        .map(|v| v.id.clone())
        .collect()
}

/// Every app with versions to forget, and which.
pub fn plan(state: &ClusterState, keep: usize) -> Vec<(AppName, Vec<VersionId>)> {
    state
        .apps
        .values()
        .map(|a| (a.name.clone(), excess(a, keep)))
        .filter(|(_, v)| !v.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use strom_proto::command::Command;

    use super::*;
    use crate::cluster_state::tests::{app, deploy, http, initialized, manifest, version};

    fn deployed(n: u8) -> ClusterState {
        let mut s = initialized();
        for v in 1..=n {
            let m = manifest("api", &[("a", &http("a", r#""get""#))]);
            s.apply(&deploy("web", v, m, i64::from(v)));
        }
        s
    }

    #[test]
    fn the_newest_versions_are_kept_and_the_rest_forgotten() {
        let mut s = deployed(5);
        assert!(plan(&s, 5).is_empty());
        let forget = plan(&s, 3);
        assert_eq!(forget, vec![(app("web"), vec![version(1), version(2)])]);
        let (name, versions) = forget[0].clone();
        s.apply(&Command::ForgetVersions {
            app: name,
            versions,
            at_ms: 9,
        });
        let kept: Vec<_> = s.apps[&app("web")]
            .versions
            .iter()
            .map(|v| v.id.clone())
            .collect();
        assert_eq!(kept, vec![version(3), version(4), version(5)]);
        assert!(plan(&s, 3).is_empty(), "nothing more to forget");
    }

    #[test]
    fn the_active_version_is_never_forgotten() {
        let mut s = deployed(4);
        // A rollback to the oldest version.
        s.apply(&Command::ActivateVersion {
            app: app("web"),
            version: version(1),
            at_ms: 10,
        });
        assert_eq!(plan(&s, 2), vec![(app("web"), vec![version(2)])]);
        // Even when asked to.
        s.apply(&Command::ForgetVersions {
            app: app("web"),
            versions: vec![version(1), version(2)],
            at_ms: 11,
        });
        let st = &s.apps[&app("web")];
        assert!(st.version(&version(1)).is_some());
        assert_eq!(st.active().id, version(1));
        assert!(st.version(&version(2)).is_none());
        // A keep of 0 means 1: the newest.
        assert_eq!(excess(st, 0), vec![version(3)]);
    }
}
