//! Deployment history and deployment credentials (protocol 8): what Kudu's
//! `/api/deployments` shows, kept in the replicated state so that every
//! management node answers the same and a deployment survives a leader change.
//!
//! One deployment of an app runs at a time: `BeginDeployment` is refused while
//! another is in progress and before that one's deadline (the node running it may
//! have died: past its deadline it is marked failed, "abandoned", by the next
//! begin). An ended deployment never changes again. Each app keeps its last
//! [`HISTORY`] deployments.

// Rejections are rare business outcomes, returned by value on purpose.
#![allow(clippy::result_large_err)]

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use strom_proto::command::{Command, DeployStatus, DeploymentStart, DeploymentUpdate, Rejection};
use strom_proto::ids::{NodeId, TokenHash, VersionId};
use strom_proto::version::Feature;

use crate::cluster_state::ClusterState;

/// Deployments kept per app (the newest).
pub const HISTORY: usize = 50;

/// An app name's publishing state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppDeployments {
    /// Oldest first; at most [`HISTORY`].
    pub history: Vec<DeploymentRecord>,
    /// The hash of the app's deployment credential, if one was made.
    pub credential: Option<TokenHash>,
}

impl AppDeployments {
    pub fn find(&self, id: &str) -> Option<&DeploymentRecord> {
        self.history.iter().find(|d| d.id == id)
    }

    /// The deployment in progress (at most one), whatever its deadline.
    pub fn in_progress(&self) -> Option<&DeploymentRecord> {
        self.history.iter().rev().find(|d| !d.status.is_complete())
    }

    /// The newest deployment.
    pub fn latest(&self) -> Option<&DeploymentRecord> {
        self.history.last()
    }

    /// When the newest successful deployment before `id` (or `id` itself) ended.
    pub fn last_success_end(&self, id: &str) -> Option<i64> {
        let upto = self.history.iter().position(|d| d.id == id)?;
        self.history[..=upto]
            .iter()
            .rev()
            .find(|d| d.status == DeployStatus::Success)
            .and_then(|d| d.end_ms)
    }
}

/// One deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentRecord {
    pub id: String,
    pub status: DeployStatus,
    pub status_text: String,
    pub author: String,
    pub deployer: String,
    pub message: String,
    pub node: NodeId,
    pub size_bytes: u64,
    pub received_ms: i64,
    pub end_ms: Option<i64>,
    pub deadline_ms: i64,
    pub version: Option<VersionId>,
    pub errors: Vec<String>,
    /// The version that served before this deployment's, given back if it fails.
    pub restore: Option<VersionId>,
}

impl DeploymentRecord {
    /// Whether it is still running at `now_ms` (in progress and before its
    /// deadline).
    pub fn is_running(&self, now_ms: i64) -> bool {
        !self.status.is_complete() && now_ms < self.deadline_ms
    }

    /// The record as seen at `now_ms`: one whose node never finished it and whose
    /// deadline passed reads as failed, abandoned.
    pub fn as_of(&self, now_ms: i64) -> DeploymentRecord {
        let mut d = self.clone();
        if !d.status.is_complete() && now_ms >= d.deadline_ms {
            d.abandon(d.deadline_ms);
        }
        d
    }

    fn abandon(&mut self, at_ms: i64) {
        self.status = DeployStatus::Failed;
        self.status_text = format!(
            "abandoned: node {} did not finish it by its deadline (it may have stopped or \
             been cut off)",
            self.node
        );
        self.end_ms = Some(at_ms);
    }
}

impl ClusterState {
    /// A failed deployment gives the app back the version that served before,
    /// unless someone deployed or rolled back since (only its own version is
    /// taken back).
    fn give_back(
        &mut self,
        app: &strom_proto::ids::AppName,
        own: Option<&VersionId>,
        restore: Option<&VersionId>,
        at_ms: i64,
    ) {
        let (Some(own), Some(restore)) = (own, restore) else {
            return;
        };
        if let Some(state) = self.apps.get_mut(app).map(Arc::make_mut) {
            if &state.active_version == own && state.version(restore).is_some() {
                state.active_version = restore.clone();
                state.updated_at_ms = at_ms;
                self.prune_timers();
            }
        }
    }

    /// Give up an unfinished deployment whose deadline passed: Failed, at its
    /// deadline, and the version that served before given back.
    fn abandon_deployment(&mut self, app: &strom_proto::ids::AppName, id: &str) {
        let Some(d) = self
            .deployments
            .get_mut(app)
            .and_then(|h| h.history.iter_mut().find(|d| d.id == id))
        else {
            return;
        };
        let at = d.deadline_ms;
        d.abandon(at);
        let (own, restore) = (d.version.clone(), d.restore.clone());
        self.give_back(app, own.as_ref(), restore.as_ref(), at);
    }

    pub(crate) fn apply_deployment(&mut self, command: &Command) -> Result<bool, Rejection> {
        self.needs(Feature::Publishing, "deployment history")?;
        match command {
            Command::BeginDeployment(start) => self.begin_deployment(start),
            Command::UpdateDeployment(update) => self.update_deployment(update),
            Command::DeployVersionFor { deployment, deploy } => {
                let running = self
                    .deployments
                    .get(&deploy.app)
                    .and_then(|h| h.find(deployment))
                    .is_some_and(|d| d.is_running(deploy.at_ms));
                if !running {
                    return Err(Rejection::DeploymentEnded {
                        app: deploy.app.clone(),
                        id: deployment.clone(),
                    });
                }
                let changed = self.deploy(deploy)?;
                if let Some(d) = self
                    .deployments
                    .get_mut(&deploy.app)
                    .and_then(|h| h.history.iter_mut().find(|d| &d.id == deployment))
                {
                    d.version = Some(deploy.version.clone());
                }
                Ok(changed)
            }
            Command::SetDeployCredential {
                app, credential, ..
            } => {
                self.app(app)?;
                let entry = self.deployments.entry(app.clone()).or_default();
                if &entry.credential == credential {
                    return Ok(false);
                }
                entry.credential = credential.clone();
                Ok(true)
            }
            _ => Err(Rejection::NotYetEnabled {
                what: "a command that is not a deployment's".into(),
                needs: u32::MAX,
                speaks: self.protocol(),
            }),
        }
    }

    fn begin_deployment(&mut self, start: &DeploymentStart) -> Result<bool, Rejection> {
        let entry = self.deployments.entry(start.app.clone()).or_default();
        if entry.find(&start.id).is_some() {
            return Ok(false);
        }
        if let Some(running) = entry.history.iter().find(|d| d.is_running(start.at_ms)) {
            return Err(Rejection::DeploymentInProgress {
                app: start.app.clone(),
                id: running.id.clone(),
            });
        }
        let stale: Vec<String> = entry
            .history
            .iter()
            .filter(|d| !d.status.is_complete())
            .map(|d| d.id.clone())
            .collect();
        for id in stale {
            self.abandon_deployment(&start.app, &id);
        }
        let entry = self.deployments.entry(start.app.clone()).or_default();
        entry.history.push(DeploymentRecord {
            id: start.id.clone(),
            status: DeployStatus::Pending,
            status_text: "received".into(),
            author: start.author.clone(),
            deployer: start.deployer.clone(),
            message: start.message.clone(),
            node: start.node,
            size_bytes: start.size_bytes,
            received_ms: start.at_ms,
            end_ms: None,
            deadline_ms: start.deadline_ms,
            version: None,
            errors: Vec::new(),
            restore: None,
        });
        if entry.history.len() > HISTORY {
            let extra = entry.history.len() - HISTORY;
            entry.history.drain(..extra);
        }
        Ok(true)
    }

    fn update_deployment(&mut self, u: &DeploymentUpdate) -> Result<bool, Rejection> {
        let not_found = || Rejection::DeploymentNotFound {
            app: u.app.clone(),
            id: u.id.clone(),
        };
        let record = self
            .deployments
            .get(&u.app)
            .and_then(|e| e.find(&u.id))
            .ok_or_else(not_found)?;
        if record.status.is_complete() {
            return Ok(false);
        }
        // Too late: the deployment was given up when its deadline passed.
        if u.at_ms >= record.deadline_ms {
            self.abandon_deployment(&u.app, &u.id);
            return Ok(true);
        }
        let own_version = record.version.clone().or_else(|| u.version.clone());
        let restore = u.restore.clone().or_else(|| record.restore.clone());
        if u.status == DeployStatus::Failed {
            self.give_back(&u.app, own_version.as_ref(), restore.as_ref(), u.at_ms);
        }
        let record = self
            .deployments
            .get_mut(&u.app)
            .and_then(|e| e.history.iter_mut().find(|d| d.id == u.id))
            .ok_or_else(not_found)?;
        record.status = u.status;
        record.status_text = u.status_text.clone();
        if u.version.is_some() {
            record.version = u.version.clone();
        }
        if !u.errors.is_empty() {
            record.errors = u.errors.clone();
        }
        if u.restore.is_some() {
            record.restore = u.restore.clone();
        }
        if let Some(deadline) = u.deadline_ms {
            record.deadline_ms = record.deadline_ms.max(deadline);
        }
        if u.status.is_complete() {
            record.end_ms = Some(u.at_ms);
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strom_proto::command::CommandResult;
    use strom_proto::ids::AppName;

    fn app() -> AppName {
        AppName::parse("batch").unwrap()
    }

    fn start(id: &str, at_ms: i64) -> Command {
        Command::BeginDeployment(Box::new(DeploymentStart {
            app: app(),
            id: id.into(),
            author: "ada".into(),
            deployer: "curl".into(),
            message: "fix".into(),
            node: 1,
            size_bytes: 10,
            deadline_ms: at_ms + 1000,
            at_ms,
        }))
    }

    fn update(id: &str, status: DeployStatus, at_ms: i64) -> Command {
        Command::UpdateDeployment(Box::new(DeploymentUpdate {
            app: app(),
            id: id.into(),
            status,
            status_text: status.as_str().into(),
            version: None,
            errors: Vec::new(),
            restore: None,
            deadline_ms: None,
            at_ms,
        }))
    }

    fn state() -> ClusterState {
        let mut s = crate::timer_records::tests::with_timer_app();
        s.protocol = 8;
        s
    }

    #[test]
    fn one_deployment_of_an_app_at_a_time_until_it_ends() {
        let mut s = state();
        assert_eq!(s.apply(&start("a", 0)), CommandResult::Applied);
        let refused = s.clone();
        assert!(matches!(
            s.apply(&start("b", 10)),
            CommandResult::Rejected(Rejection::DeploymentInProgress { ref id, .. }) if id == "a"
        ));
        assert_eq!(s, refused, "a refused begin changes nothing");
        assert_eq!(
            s.apply(&update("a", DeployStatus::Success, 20)),
            CommandResult::Applied
        );
        assert_eq!(s.apply(&start("b", 30)), CommandResult::Applied);
        let h = &s.deployments[&app()].history;
        assert_eq!(
            h.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_eq!(h[0].end_ms, Some(20));
        assert_eq!(s.deployments[&app()].last_success_end("b"), Some(20));
    }

    #[test]
    fn an_ended_deployment_never_changes_again() {
        let mut s = state();
        s.apply(&start("a", 0));
        s.apply(&update("a", DeployStatus::Failed, 5));
        assert_eq!(
            s.apply(&update("a", DeployStatus::Success, 6)),
            CommandResult::Unchanged
        );
        assert_eq!(
            s.deployments[&app()].history[0].status,
            DeployStatus::Failed
        );
    }

    #[test]
    fn a_deployment_past_its_deadline_is_abandoned_by_the_next() {
        let mut s = state();
        s.apply(&start("a", 0));
        let a = &s.deployments[&app()].history[0];
        assert_eq!(a.as_of(999).status, DeployStatus::Pending);
        assert_eq!(a.as_of(1000).status, DeployStatus::Failed);
        assert_eq!(s.apply(&start("b", 1000)), CommandResult::Applied);
        let a = &s.deployments[&app()].history[0];
        assert_eq!(a.status, DeployStatus::Failed);
        assert!(a.status_text.contains("abandoned"), "{}", a.status_text);
    }

    #[test]
    fn a_late_step_or_version_changes_nothing_but_the_abandonment() {
        let mut s = state();
        s.apply(&start("a", 0));
        // A step renews the deadline; one after it is too late.
        let mut step = update("a", DeployStatus::Deploying, 900);
        if let Command::UpdateDeployment(u) = &mut step {
            u.deadline_ms = Some(5000);
        }
        assert_eq!(s.apply(&step), CommandResult::Applied);
        assert!(s.deployments[&app()].history[0].is_running(4999));
        let mut v = s.apps[&app()].versions[0].clone();
        v.id = VersionId::of_bytes(b"late");
        let deploy_for = |at_ms| Command::DeployVersionFor {
            deployment: "a".into(),
            deploy: Box::new(strom_proto::command::DeployVersion {
                app: app(),
                version: v.id.clone(),
                size_bytes: 1,
                manifest: v.manifest.clone(),
                at_ms,
                initial_keys: strom_proto::command::InitialKeys {
                    master: "m".repeat(20),
                    host_default: "h".repeat(20),
                    function_defaults: Default::default(),
                },
                settings: Default::default(),
            }),
        };
        let before = s.clone();
        assert!(matches!(
            s.apply(&deploy_for(5000)),
            CommandResult::Rejected(Rejection::DeploymentEnded { .. })
        ));
        assert_eq!(s, before, "a version too late changes nothing");
        assert_eq!(s.apply(&deploy_for(4000)), CommandResult::Applied);
        assert_eq!(s.apps[&app()].active_version, v.id);
        // A success after the deadline is the abandonment instead.
        assert_eq!(
            s.apply(&update("a", DeployStatus::Success, 6000)),
            CommandResult::Applied
        );
        let a = &s.deployments[&app()].history[0];
        assert_eq!(a.status, DeployStatus::Failed);
        assert_eq!(a.end_ms, Some(5000));
    }

    #[test]
    fn an_abandoned_deployment_gives_back_the_version_before() {
        let mut s = state();
        let before = s.apps[&app()].active_version.clone();
        let mut newer = s.apps[&app()].versions[0].clone();
        newer.id = VersionId::of_bytes(b"newer");
        Arc::make_mut(s.apps.get_mut(&app()).unwrap())
            .versions
            .push(newer.clone());
        s.apply(&start("a", 0));
        let mut step = update("a", DeployStatus::Deploying, 10);
        if let Command::UpdateDeployment(u) = &mut step {
            u.version = Some(newer.id.clone());
            u.restore = Some(before.clone());
        }
        s.apply(&step);
        Arc::make_mut(s.apps.get_mut(&app()).unwrap()).active_version = newer.id.clone();
        // Its node never comes back; the next deployment begins after the deadline.
        assert_eq!(s.apply(&start("b", 2000)), CommandResult::Applied);
        assert_eq!(s.apps[&app()].active_version, before);
        assert_eq!(
            s.deployments[&app()].history[0].status,
            DeployStatus::Failed
        );
    }

    #[test]
    fn the_history_keeps_the_newest_fifty() {
        let mut s = state();
        for i in 0..60 {
            s.apply(&start(&format!("d{i}"), i * 10));
            s.apply(&update(&format!("d{i}"), DeployStatus::Success, i * 10 + 1));
        }
        let h = &s.deployments[&app()].history;
        assert_eq!(h.len(), HISTORY);
        assert_eq!(h[0].id, "d10");
        assert_eq!(s.deployments[&app()].latest().unwrap().id, "d59");
    }

    #[test]
    fn a_failed_deployment_restores_only_its_own_version() {
        let mut s = state();
        let before = s.apps[&app()].active_version.clone();
        let mut newer = s.apps[&app()].versions[0].clone();
        newer.id = VersionId::of_bytes(b"newer");
        Arc::make_mut(s.apps.get_mut(&app()).unwrap())
            .versions
            .push(newer.clone());
        Arc::make_mut(s.apps.get_mut(&app()).unwrap()).active_version = newer.id.clone();
        s.apply(&start("a", 0));
        let fail = |restore: Option<VersionId>| {
            Command::UpdateDeployment(Box::new(DeploymentUpdate {
                app: app(),
                id: "a".into(),
                status: DeployStatus::Failed,
                status_text: "did not start".into(),
                version: Some(newer.id.clone()),
                errors: vec![],
                restore,
                deadline_ms: None,
                at_ms: 5,
            }))
        };
        let mut other = s.clone();
        // Someone rolled back meanwhile: the deployment's version is not active.
        Arc::make_mut(other.apps.get_mut(&app()).unwrap()).active_version = before.clone();
        Arc::make_mut(other.apps.get_mut(&app()).unwrap())
            .versions
            .push({
                let mut v = newer.clone();
                v.id = VersionId::of_bytes(b"third");
                v
            });
        Arc::make_mut(other.apps.get_mut(&app()).unwrap()).active_version =
            VersionId::of_bytes(b"third");
        other.apply(&fail(Some(before.clone())));
        assert_eq!(
            other.apps[&app()].active_version,
            VersionId::of_bytes(b"third")
        );
        s.apply(&fail(Some(before.clone())));
        assert_eq!(s.apps[&app()].active_version, before);
    }

    #[test]
    fn deployments_wait_for_protocol_8_and_go_with_the_app() {
        let mut s = state();
        s.protocol = 7;
        assert!(matches!(
            s.apply(&start("a", 0)),
            CommandResult::Rejected(Rejection::NotYetEnabled { needs: 8, .. })
        ));
        s.protocol = 8;
        s.apply(&start("a", 0));
        s.apply(&Command::DeleteApp {
            app: app(),
            at_ms: 1,
        });
        assert!(s.deployments.is_empty());
    }
}
