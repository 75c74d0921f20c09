//! Which deployment of an app serves on this node, which ones drain, and whether
//! the serving one can take requests: make-before-break as pure decisions over
//! plain facts, made by the node supervisor after every change.
//!
//! - A new deployment (new version, or changed settings) starts next to the
//!   serving one; traffic switches only once all its wanted instances are Ready.
//! - The old deployment keeps serving until then, even while one of its own
//!   instances restarts; if the new one never becomes Ready (a crash loop), the
//!   old one keeps serving. Draining is final.
//! - Every deployment that is neither desired nor serving drains (all of them,
//!   when the node shuts down).

use std::collections::BTreeMap;

use strom_proto::instances::{InstanceState, InstanceStatus};

/// What the decision needs to know of one deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeployFacts {
    /// Instances it should run.
    pub wanted: u32,
    /// Instances Ready now.
    pub ready: u32,
    pub draining: bool,
}

/// The outcome for one app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan<K> {
    /// The deployment whose Ready instances take the app's requests.
    pub serving: Option<K>,
    /// Deployments to drain now (not draining yet).
    pub drain: Vec<K>,
}

/// Decide for one app: `desired` is what the cluster wants here (if anything),
/// `serving` what served until now.
pub fn plan<K: Ord + Clone>(
    desired: Option<&K>,
    serving: Option<&K>,
    deploys: &BTreeMap<K, DeployFacts>,
    shutting_down: bool,
) -> Plan<K> {
    let serving = desired.map(|d| {
        let new_ready = deploys
            .get(d)
            .is_some_and(|x| x.wanted > 0 && x.ready >= x.wanted);
        let old_serving = serving
            .filter(|s| *s != d)
            .filter(|s| deploys.get(*s).is_some_and(|x| !x.draining));
        match (new_ready, old_serving) {
            (false, Some(old)) => old.clone(),
            _ => d.clone(),
        }
    });
    let drain = deploys
        .iter()
        .filter(|(_, x)| !x.draining)
        .filter(|(k, _)| shutting_down || (Some(*k) != serving.as_ref() && Some(*k) != desired))
        .map(|(k, _)| k.clone())
        .collect();
    Plan { serving, drain }
}

/// Why the serving deployment cannot take requests (they fail fast with 503):
/// scaled to zero, or every instance crash-looping with none Ready.
pub fn unavailable(
    app: &str,
    wanted: u32,
    ready: usize,
    statuses: &[InstanceStatus],
) -> Option<String> {
    if wanted == 0 {
        return Some(format!("app `{app}` is scaled to 0 instances"));
    }
    let crash_looping = ready == 0
        && !statuses.is_empty()
        && statuses
            .iter()
            .all(|s| s.state == InstanceState::CrashLooping);
    crash_looping.then(|| {
        let why = statuses
            .iter()
            .find_map(|s| s.last_error.clone())
            .unwrap_or_default();
        format!("app `{app}` is crash-looping on this node: {why}")
    })
}

/// [`unavailable`], said of the newest deployment when one is on its way (a new
/// version or new settings): its error if it fails too, else that it is starting
/// — never only the old deployment's error, which the change may have fixed.
pub fn unavailable_with_newer(
    app: &str,
    serving_unavailable: Option<String>,
    newer: Option<&[InstanceStatus]>,
) -> Option<String> {
    let old = serving_unavailable?;
    let Some(newer) = newer else {
        return Some(old);
    };
    let newest_error = newer.iter().find_map(InstanceStatus::failure);
    Some(match newest_error {
        Some(e) => format!("app `{app}`: its newest deployment fails on this node: {e}"),
        None => format!(
            "app `{app}`: its newest deployment is starting on this node (the one before it is crash-looping)"
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(wanted: u32, ready: u32, draining: bool) -> DeployFacts {
        DeployFacts {
            wanted,
            ready,
            draining,
        }
    }

    fn status(state: InstanceState, error: Option<&str>) -> InstanceStatus {
        InstanceStatus {
            app: strom_proto::ids::AppName::parse("web").unwrap(),
            version: strom_proto::ids::VersionId::of_bytes(b"v"),
            slot: 0,
            instance_id: "i".into(),
            state,
            restarts: 3,
            pid: None,
            last_error: error.map(str::to_string),
            serving: false,
        }
    }

    #[test]
    fn a_503_quotes_the_newest_deployment() {
        let old = Some("app `web` is crash-looping on this node: old error".to_string());
        assert_eq!(unavailable_with_newer("web", old.clone(), None), old);
        assert_eq!(unavailable_with_newer("web", None, Some(&[])), None);
        let starting = [status(InstanceState::Starting, None)];
        let msg = unavailable_with_newer("web", old.clone(), Some(&starting)).unwrap();
        assert!(msg.contains("newest deployment is starting"), "{msg}");
        assert!(!msg.contains("old error"), "{msg}");
        let failing = [status(InstanceState::Restarting, Some("new error"))];
        let msg = unavailable_with_newer("web", old, Some(&failing)).unwrap();
        assert!(
            msg.contains("new error") && !msg.contains("old error"),
            "{msg}"
        );
    }

    #[test]
    fn the_old_version_serves_until_the_new_one_is_all_ready() {
        let mut deploys = BTreeMap::from([("v1", facts(2, 2, false)), ("v2", facts(2, 1, false))]);
        let p = plan(Some(&"v2"), Some(&"v1"), &deploys, false);
        assert_eq!(p.serving, Some("v1"));
        assert!(p.drain.is_empty(), "nothing drains before the switch");
        // Even while one of the old one's own instances restarts.
        deploys.insert("v1", facts(2, 1, false));
        assert_eq!(
            plan(Some(&"v2"), Some(&"v1"), &deploys, false).serving,
            Some("v1")
        );
        // All new instances Ready: switch, then drain the old one.
        deploys.insert("v2", facts(2, 2, false));
        let p = plan(Some(&"v2"), Some(&"v1"), &deploys, false);
        assert_eq!(p.serving, Some("v2"));
        assert_eq!(p.drain, vec!["v1"]);
    }

    #[test]
    fn a_draining_deployment_never_serves_again() {
        let deploys = BTreeMap::from([("v1", facts(2, 2, true)), ("v2", facts(2, 0, false))]);
        let p = plan(Some(&"v2"), Some(&"v1"), &deploys, false);
        assert_eq!(p.serving, Some("v2"));
        assert!(p.drain.is_empty(), "already draining");
    }

    #[test]
    fn an_app_that_leaves_drains_and_a_shutdown_drains_everything() {
        let deploys = BTreeMap::from([("v1", facts(1, 1, false))]);
        let p = plan(None, Some(&"v1"), &deploys, false);
        assert_eq!(p.serving, None);
        assert_eq!(p.drain, vec!["v1"]);
        let p = plan(Some(&"v1"), Some(&"v1"), &deploys, true);
        assert_eq!(p.drain, vec!["v1"]);
    }

    #[test]
    fn a_new_app_serves_its_first_deployment_at_once() {
        let deploys = BTreeMap::from([("v1", facts(1, 0, false))]);
        let p = plan(Some(&"v1"), None, &deploys, false);
        assert_eq!(p.serving, Some("v1"));
        assert!(p.drain.is_empty());
    }

    #[test]
    fn scaled_to_zero_or_all_crash_looping_is_unavailable() {
        assert!(unavailable("a", 0, 0, &[]).unwrap().contains("scaled to 0"));
        let status = |state, err: &str| InstanceStatus {
            app: strom_proto::ids::AppName::parse("ab").unwrap(),
            version: strom_proto::ids::VersionId::of_bytes(b"x"),
            slot: 0,
            instance_id: "i".into(),
            state,
            restarts: 5,
            pid: None,
            last_error: Some(err.into()),
            serving: true,
        };
        let looping = [status(InstanceState::CrashLooping, "exit 3")];
        assert!(unavailable("ab", 1, 0, &looping)
            .unwrap()
            .contains("exit 3"));
        // One instance still Ready, or one merely restarting: available.
        assert_eq!(unavailable("ab", 1, 1, &looping), None);
        let mixed = [
            status(InstanceState::CrashLooping, "x"),
            status(InstanceState::Restarting, "y"),
        ];
        assert_eq!(unavailable("ab", 2, 0, &mixed), None);
        // Nothing reported yet (starting): not unavailable.
        assert_eq!(unavailable("ab", 1, 0, &[]), None);
    }
}
