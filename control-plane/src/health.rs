//! Health endpoints for load balancers and orchestrators (issue 18): `GET /healthz`
//! (the process answers) and `GET /readyz` (this node can do its job) on the
//! control port and on the function port, without a key.
//!
//! A node holds one [`Health`]; each role adds its check (`management`: a voter
//! or learner in a group with a known leader; `worker`: registered with a live
//! lease; `gateway`: a route table loaded and every app it routes placed on a
//! worker that is up). The control port answers with the management check, the
//! function port with the gateway's and the worker's. A stopping node answers
//! not-ready at once, while it still serves, for the configured delay before it
//! stops accepting work (a load balancer notices and sends no new requests).
//! Bodies are JSON saying why: `{"ready": false, "node_id": 3, "checks":
//! {"management": {"ready": false, "detail": "no known leader (term 7, candidate)"}}}`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use http_body_util::Full;
pub use tonic::codegen::http::Method;
use tonic::codegen::http::{header, Request, Response, StatusCode};

use crate::management::ManagementNode;

/// One check's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub ready: bool,
    pub detail: String,
}

impl Check {
    pub fn ready(detail: impl Into<String>) -> Check {
        Check {
            ready: true,
            detail: detail.into(),
        }
    }

    pub fn not_ready(detail: impl Into<String>) -> Check {
        Check {
            ready: false,
            detail: detail.into(),
        }
    }
}

type CheckFn = Box<dyn Fn() -> Check + Send + Sync>;

/// A node's health: its checks and whether it is stopping.
pub struct Health {
    node_id: u64,
    stopping: AtomicBool,
    checks: RwLock<BTreeMap<&'static str, CheckFn>>,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field("node_id", &self.node_id)
            .field("stopping", &self.stopping.load(Ordering::Relaxed))
            .finish()
    }
}

/// Which checks a port answers with.
pub const CONTROL_PORT_CHECKS: &[&str] = &["management"];
pub const FUNCTION_PORT_CHECKS: &[&str] = &["gateway", "worker"];

impl Health {
    pub fn new(node_id: u64) -> Arc<Health> {
        Arc::new(Health {
            node_id,
            stopping: AtomicBool::new(false),
            checks: RwLock::new(BTreeMap::new()),
        })
    }

    /// Add (or replace) a role's check.
    pub fn set_check(&self, name: &'static str, check: impl Fn() -> Check + Send + Sync + 'static) {
        self.checks
            .write()
            .expect("health checks")
            .insert(name, Box::new(check));
    }

    /// The node is stopping: not ready from now on.
    pub fn stopping(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    /// `/readyz` over the checks named (those this node has), as (ready, JSON).
    pub fn readiness(&self, names: &[&str]) -> (bool, serde_json::Value) {
        let checks = self.checks.read().expect("health checks");
        let mut out = serde_json::Map::new();
        let mut ready = true;
        if self.stopping.load(Ordering::Relaxed) {
            ready = false;
            out.insert(
                "node".into(),
                serde_json::json!({"ready": false, "detail": "stopping: still serving until the shutdown delay ends; send no new work"}),
            );
        }
        for name in names {
            if let Some(check) = checks.get(name) {
                let c = check();
                ready &= c.ready;
                out.insert(
                    name.to_string(),
                    serde_json::json!({"ready": c.ready, "detail": c.detail}),
                );
            }
        }
        (
            ready,
            serde_json::json!({"ready": ready, "node_id": self.node_id, "checks": out}),
        )
    }

    /// The answer to a health request on a port with checks `names`, or `None`
    /// when `method`/`path` is not one.
    pub fn answer(
        &self,
        method: &Method,
        path: &str,
        names: &[&str],
    ) -> Option<(StatusCode, String)> {
        if method != Method::GET && method != Method::HEAD {
            return None;
        }
        match path {
            "/healthz" => Some((
                StatusCode::OK,
                serde_json::json!({"alive": true, "node_id": self.node_id}).to_string(),
            )),
            "/readyz" => {
                let (ready, body) = self.readiness(names);
                let status = if ready {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                Some((status, body.to_string()))
            }
            _ => None,
        }
    }
}

/// The management role's check: a voter or learner in a group with a known leader.
pub fn management_check(node: &ManagementNode) -> Check {
    let m = node.raft.metrics().borrow().clone();
    let me = node.config.node_id;
    let membership = m.membership_config.membership();
    let voter = membership.voter_ids().any(|v| v == me);
    let member = voter || membership.learner_ids().any(|l| l == me);
    if !member {
        return Check::not_ready("not a member of the management group (yet)");
    }
    let role = if voter { "voter" } else { "learner" };
    // A leader counts only while a majority acknowledged it recently.
    if m.current_leader == Some(me) && m.state == openraft::ServerState::Leader {
        let fresh = (node.config.heartbeat * 10).as_millis() as u64;
        if let Some(since) = crate::management::stale_quorum(&m, fresh) {
            return Check::not_ready(format!(
                "leader with no known quorum: no majority has answered for {} (term {})",
                since
                    .map(|ms| format!("{ms} ms"))
                    .unwrap_or_else(|| "ever".into()),
                m.current_term
            ));
        }
    }
    match m.current_leader {
        Some(leader) => Check::ready(format!(
            "{role} in term {}, leader {leader}",
            m.current_term
        )),
        None => Check::not_ready(format!(
            "{role} with no known leader (term {}, {:?})",
            m.current_term, m.state
        )),
    }
}

/// The control port's answer to a health request (the publishing layer, which
/// answers the port's plain HTTP, asks first), or `None` when it is not one.
pub fn control_port_answer<B>(health: &Health, request: &Request<B>) -> Option<Response<Body>> {
    let (status, body) =
        health.answer(request.method(), request.uri().path(), CONTROL_PORT_CHECKS)?;
    let body = if request.method() == Method::HEAD {
        String::new()
    } else {
        body
    };
    let mut response = Response::new(Body::new(Full::new(Bytes::from(body))));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    Some(response)
}

type Body = tonic::body::Body;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_is_every_check_of_the_port_and_not_stopping() {
        let health = Health::new(3);
        let (ready, body) = health.readiness(FUNCTION_PORT_CHECKS);
        assert!(ready, "no checks yet: ready ({body})");
        health.set_check("gateway", || Check::ready("routes loaded"));
        health.set_check("worker", || Check::not_ready("no lease"));
        health.set_check("management", || Check::ready("voter"));
        let (ready, body) = health.readiness(FUNCTION_PORT_CHECKS);
        assert!(!ready);
        assert_eq!(body["checks"]["worker"]["detail"], "no lease");
        assert_eq!(body["node_id"], 3);
        assert!(body["checks"].get("management").is_none(), "{body}");
        let (status, _) = health
            .answer(&Method::GET, "/readyz", CONTROL_PORT_CHECKS)
            .unwrap();
        assert_eq!(status, StatusCode::OK);
        health.stopping();
        let (status, body) = health
            .answer(&Method::GET, "/readyz", CONTROL_PORT_CHECKS)
            .unwrap();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("stopping"), "{body}");
        // Alive while stopping; other paths and methods are not health requests.
        let (status, _) = health
            .answer(&Method::HEAD, "/healthz", CONTROL_PORT_CHECKS)
            .unwrap();
        assert_eq!(status, StatusCode::OK);
        assert!(health.answer(&Method::POST, "/healthz", &[]).is_none());
        assert!(health.answer(&Method::GET, "/api/healthz", &[]).is_none());
    }
}
