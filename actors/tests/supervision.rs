//! The supervisor tree's decisions, in virtual time: the real node supervisor,
//! app supervisors and instance actors over the fake runtime (behind the same
//! trait as the process and Docker runtimes), with tokio's clock paused — minutes
//! of backoff and drains run in milliseconds, and nothing waits on a wall clock.
//!
//! Make-before-break, a crash-looping new version, crash loops with backoff,
//! drains with a request in flight, a drain during a slow start, rescaling.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorRef};
use strom_actors::restart_policy::RestartPolicy;
use strom_actors::runtime::fake::{Behaviour, FakeRuntime};
use strom_actors::runtime::ExitInfo;
use strom_actors::{Assignment, Lifecycle, NodeArgs, NodeMsg, NodeSupervisor, RoutingTable};
use strom_proto::ids::{AppName, VersionId};
use strom_proto::instances::{InstanceState, InstanceStatus};
use strom_proto::manifest::{AppManifest, CustomHandler, HostConfig};
use tokio::sync::watch;

struct Tree {
    node: ActorRef<NodeMsg>,
    fake: FakeRuntime,
    routing: RoutingTable,
    status: watch::Receiver<Arc<Vec<InstanceStatus>>>,
}

fn lifecycle() -> Lifecycle {
    Lifecycle {
        startup_timeout: Duration::from_secs(60),
        stop_grace: Duration::from_secs(10),
        drain_timeout: Duration::from_secs(30),
        restart: RestartPolicy {
            max_restarts: 5,
            period: Duration::from_secs(60),
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(30),
            jitter: 0.0,
        },
    }
}

fn app() -> AppName {
    AppName::parse("web").unwrap()
}

fn version(n: u8) -> VersionId {
    VersionId::of_bytes(&[n])
}

fn manifest() -> Arc<AppManifest> {
    Arc::new(AppManifest {
        host: HostConfig {
            version: "2.0".into(),
            custom_handler: CustomHandler {
                default_executable_path: "handler".into(),
                arguments: vec![],
                working_directory: None,
                enable_forwarding_http_request: false,
            },
            function_timeout_ms: None,
            route_prefix: "api".into(),
            max_concurrent_requests: None,
            max_outstanding_requests: None,
            log_levels: vec![],
        },
        functions: vec![],
    })
}

fn assignment(v: u8, instances: u32) -> Assignment {
    Assignment {
        app: app(),
        version: version(v),
        app_root: PathBuf::from("/nonexistent"),
        manifest: manifest(),
        http_worker: false,
        messaging: Default::default(),
        settings: BTreeMap::new(),
        instances,
    }
}

impl Tree {
    async fn new() -> Tree {
        let fake = FakeRuntime::new();
        let routing = RoutingTable::default();
        let (tx, status) = watch::channel(Arc::new(Vec::new()));
        let (node, _) = Actor::spawn(
            None,
            NodeSupervisor,
            NodeArgs {
                runtime: Arc::new(fake.clone()),
                lifecycle: lifecycle(),
                routing: routing.clone(),
                status: tx,
            },
        )
        .await
        .unwrap();
        Tree {
            node,
            fake,
            routing,
            status,
        }
    }

    fn assign(&self, a: Vec<Assignment>) {
        self.node.send_message(NodeMsg::Assign(a)).unwrap();
    }

    /// The serving version and its Ready endpoints' instance ids.
    fn serving(&self) -> Option<(VersionId, Vec<String>)> {
        let s = self.routing.load();
        s.apps.get(&app()).map(|a| {
            (
                a.version.clone(),
                a.endpoints.iter().map(|e| e.instance_id.clone()).collect(),
            )
        })
    }

    fn statuses(&self) -> Vec<InstanceStatus> {
        self.status.borrow().to_vec()
    }

    fn running_versions(&self) -> Vec<VersionId> {
        self.fake.running().into_iter().map(|i| i.version).collect()
    }

    async fn until<T>(&self, what: &str, mut f: impl FnMut(&Tree) -> Option<T>) -> T {
        // Up to ten virtual minutes.
        for _ in 0..120_000 {
            if let Some(t) = f(self) {
                return t;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("never happened: {what}; statuses: {:#?}", self.statuses());
    }

    async fn serving_ready(&self, v: u8, n: usize) -> Vec<String> {
        self.until(&format!("version {v} serving with {n} Ready"), |t| {
            t.serving()
                .filter(|(ver, eps)| *ver == version(v) && eps.len() == n)
                .map(|(_, eps)| eps)
        })
        .await
    }
}

#[tokio::test(start_paused = true)]
async fn a_new_version_takes_traffic_only_once_ready_and_the_old_one_then_drains() {
    let t = Tree::new().await;
    t.assign(vec![assignment(1, 2)]);
    t.serving_ready(1, 2).await;

    // Watch every routing snapshot from now on: the app must never be without
    // Ready endpoints.
    let gap = Arc::new(AtomicBool::new(false));
    let watcher = {
        let routing = t.routing.clone();
        let gap = gap.clone();
        tokio::spawn(async move {
            loop {
                routing.changed().await;
                let s = routing.load();
                if s.apps.get(&app()).is_none_or(|a| a.endpoints.is_empty()) {
                    gap.store(true, Ordering::SeqCst);
                }
            }
        })
    };
    t.fake.behave(
        &app(),
        &version(2),
        Behaviour::SlowStart(Duration::from_secs(20)),
    );
    t.assign(vec![assignment(2, 2)]);
    // Twenty virtual seconds of starting: version 1 serves throughout.
    tokio::time::sleep(Duration::from_secs(19)).await;
    assert_eq!(t.serving().unwrap().0, version(1));
    assert_eq!(t.running_versions().len(), 2);
    t.serving_ready(2, 2).await;
    t.until("version 1 stopped", |t| {
        t.running_versions()
            .iter()
            .all(|v| *v == version(2))
            .then_some(())
    })
    .await;
    assert!(
        !gap.load(Ordering::SeqCst),
        "a moment without Ready endpoints"
    );
    watcher.abort();
}

#[tokio::test(start_paused = true)]
async fn a_crash_looping_new_version_leaves_the_old_one_serving() {
    let t = Tree::new().await;
    t.assign(vec![assignment(1, 1)]);
    let old = t.serving_ready(1, 1).await;
    t.fake.behave(&app(), &version(2), Behaviour::ExitAtOnce(3));
    t.assign(vec![assignment(2, 1)]);
    t.until("version 2 crash-looping", |t| {
        t.statuses()
            .iter()
            .any(|s| s.version == version(2) && s.state == InstanceState::CrashLooping)
            .then_some(())
    })
    .await;
    // Minutes later, the old instance still serves.
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(t.serving(), Some((version(1), old)));
    let v2 = t
        .statuses()
        .into_iter()
        .find(|s| s.version == version(2))
        .unwrap();
    assert!(!v2.serving);
    assert!(
        v2.last_error.unwrap().contains("code 3"),
        "the reason is reported"
    );
}

#[tokio::test(start_paused = true)]
async fn a_crash_loop_backs_off_and_keeps_retrying() {
    let t = Tree::new().await;
    t.fake.behave(&app(), &version(1), Behaviour::ExitAtOnce(1));
    t.assign(vec![assignment(1, 1)]);
    t.until("crash-looping", |t| {
        t.statuses()
            .iter()
            .any(|s| s.state == InstanceState::CrashLooping)
            .then_some(())
    })
    .await;
    let unavailable = t.routing.load().apps[&app()].unavailable.clone().unwrap();
    assert!(unavailable.contains("crash-looping"), "{unavailable}");
    // Ten virtual minutes: retried at the 30 s cap, never given up.
    let before = t.fake.starts();
    tokio::time::sleep(Duration::from_secs(600)).await;
    let retries = t.fake.starts() - before;
    assert!(
        (15..=25).contains(&retries),
        "about one retry per 30 s over 600 s, got {retries}"
    );
    // The handler is fixed: the next retry brings it back.
    t.fake.behave(&app(), &version(1), Behaviour::Healthy);
    t.serving_ready(1, 1).await;
    assert!(t.routing.load().apps[&app()].unavailable.is_none());
}

#[tokio::test(start_paused = true)]
async fn a_crashed_instance_is_replaced_at_once() {
    let t = Tree::new().await;
    t.assign(vec![assignment(1, 2)]);
    let eps = t.serving_ready(1, 2).await;
    t.fake.crash(&eps[0], ExitInfo::Signal(9));
    let after = t
        .until("a replacement Ready", |t| {
            t.serving()
                .map(|(_, e)| e)
                .filter(|e| e.len() == 2 && !e.contains(&eps[0]))
        })
        .await;
    assert!(after.contains(&eps[1]), "the other instance was untouched");
    let replaced = t.statuses().into_iter().find(|s| s.restarts == 1).unwrap();
    assert!(
        replaced.last_error.unwrap().contains("signal 9"),
        "the crash is reported"
    );
}

#[tokio::test(start_paused = true)]
async fn a_drain_waits_for_the_request_in_flight() {
    let t = Tree::new().await;
    t.assign(vec![assignment(1, 1)]);
    t.serving_ready(1, 1).await;
    let endpoint = t.routing.load().apps[&app()].endpoints[0].clone();
    let request = endpoint.begin();
    t.assign(vec![]); // the app leaves this node
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(t.fake.running().len(), 1, "stopped under a request");
    assert!(t
        .statuses()
        .iter()
        .all(|s| s.state == InstanceState::Draining));
    drop(request);
    t.until("stopped once idle", |t| {
        t.fake.running().is_empty().then_some(())
    })
    .await;
    t.until("forgotten", |t| t.statuses().is_empty().then_some(()))
        .await;
}

#[tokio::test(start_paused = true)]
async fn a_drain_does_not_wait_behind_a_slow_start() {
    let t = Tree::new().await;
    t.fake.behave(
        &app(),
        &version(1),
        Behaviour::SlowStart(Duration::from_secs(600)),
    );
    t.assign(vec![assignment(1, 3)]);
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The three starts run at once, not one after another.
    assert_eq!(t.fake.starts(), 3);
    let began = tokio::time::Instant::now();
    ractor::call_t!(t.node, NodeMsg::Shutdown, 5_000).expect("the shutdown finished");
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "waited {:?}",
        began.elapsed()
    );
    assert!(t.fake.running().is_empty(), "nothing was left running");
    tokio::time::sleep(Duration::from_secs(900)).await;
    assert!(
        t.fake.all().is_empty(),
        "the abandoned starts never finished"
    );
}

#[tokio::test(start_paused = true)]
async fn rescaling_adds_and_retires_instances() {
    let t = Tree::new().await;
    t.assign(vec![assignment(1, 3)]);
    let three = t.serving_ready(1, 3).await;
    t.assign(vec![assignment(1, 1)]);
    let one = t.serving_ready(1, 1).await;
    assert!(
        three.contains(&one[0]),
        "scaling down keeps the lowest slot"
    );
    t.until("two stopped", |t| {
        (t.fake.running().len() == 1).then_some(())
    })
    .await;
    t.assign(vec![assignment(1, 2)]);
    let two = t.serving_ready(1, 2).await;
    assert!(two.contains(&one[0]), "scaling up keeps what runs");
    assert_eq!(t.fake.running().len(), 2);
}
