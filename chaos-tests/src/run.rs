//! One chaos run: build the images, start the cluster, deploy the apps, run the
//! workload while a seeded plan of faults happens, heal, check, tear down.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bollard::Docker;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use strom_proto::admin_v1 as pb;

use crate::checker::{self, NodeState};
use crate::cluster::{self, Cluster, Role};
use crate::history::{History, Outcome};
use crate::messages::{Messaging, Relay};
use crate::workload::{self, Setup, LEDGER, LEDGER_FUNCTION, WEB};

/// The timer apps' run record, in the shared folder.
const TIMER_RECORD: &str = "timers.jsonl";
/// The messaging app (with a broker).
const MQ: &str = "mq";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// A fixed set of faults in a seeded order, then a full rolling upgrade.
    Ci,
    /// Random faults (and rolling upgrades) until the duration is over.
    Soak,
    /// One rolling upgrade under load and nothing else (with `--from-binary`, from
    /// an older build to this one).
    Upgrade,
}

#[derive(Debug, Clone)]
pub struct Options {
    pub profile: Profile,
    pub seed: u64,
    pub duration: Duration,
    pub managers: usize,
    pub workers: usize,
    /// The `strom` binary the cluster is upgraded to (and starts on, without `from`).
    pub strom: PathBuf,
    /// An older `strom` binary to start the cluster on.
    pub from: Option<PathBuf>,
    /// Leave the containers running after the run (for a look at a failure).
    pub keep: bool,
    pub work: PathBuf,
    /// The static test handler the `web` app runs.
    pub handler: PathBuf,
    /// `strom-test-handler` (examples/test-handler), built with `strom` and
    /// linked against the same libraries the image carries for it: the `mq`
    /// app's handler (its JSON-mode echo answers each message with an output
    /// that carries it, and fails on request).
    pub echo_handler: PathBuf,
}

/// The faults a plan draws from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    KillLeader,
    KillFollower,
    KillWorker,
    PauseManager,
    PauseWorker,
    IsolateLeader,
    SplitLeaderMinority,
    CutWorker,
    RestartNode,
    /// The managers' checkpoint store is gone for a while (a file where its
    /// folder was): it impairs no node, so no write or request may fail.
    StoreUnavailable,
    /// The RabbitMQ broker restarted (every connection closed; durable queues
    /// and persistent messages kept).
    RestartBroker,
    /// One worker's connections to the broker cut, new ones refused, while it
    /// reaches everything else.
    CutWorkerFromBroker,
    RollingUpgrade,
}

impl FaultKind {
    /// The CI profile's faults (each once, in a seeded order; the upgrade last).
    pub const CI: [FaultKind; 11] = [
        FaultKind::KillLeader,
        FaultKind::IsolateLeader,
        FaultKind::KillWorker,
        FaultKind::PauseManager,
        FaultKind::SplitLeaderMinority,
        FaultKind::CutWorker,
        FaultKind::KillFollower,
        FaultKind::RestartNode,
        FaultKind::StoreUnavailable,
        FaultKind::RestartBroker,
        FaultKind::CutWorkerFromBroker,
    ];

    /// The soak's menu with weights.
    pub const SOAK: [(FaultKind, u32); 13] = [
        (FaultKind::KillLeader, 12),
        (FaultKind::KillFollower, 10),
        (FaultKind::KillWorker, 12),
        (FaultKind::PauseManager, 8),
        (FaultKind::PauseWorker, 6),
        (FaultKind::IsolateLeader, 12),
        (FaultKind::SplitLeaderMinority, 10),
        (FaultKind::CutWorker, 10),
        (FaultKind::RestartNode, 8),
        (FaultKind::StoreUnavailable, 4),
        (FaultKind::RestartBroker, 4),
        (FaultKind::CutWorkerFromBroker, 6),
        (FaultKind::RollingUpgrade, 2),
    ];
}

/// Run a whole chaos run; `Ok(true)` when every check passed.
pub async fn run(opts: Options) -> anyhow::Result<bool> {
    let docker = Docker::connect_with_defaults()
        .context("the chaos harness needs a Docker engine")?
        .negotiate_version()
        .await
        .context("the chaos harness needs a Docker engine (no answer)")?;
    docker
        .ping()
        .await
        .context("the chaos harness needs a Docker engine (no answer to ping)")?;
    for left in cluster::sweep_stale(&docker).await {
        println!("removed what an earlier run left: {left}");
    }
    let run_id = format!("{:08x}", opts.seed as u32 ^ std::process::id());
    println!(
        "chaos run {run_id}: profile {:?}, seed {}, {} managers + {} workers",
        opts.profile, opts.seed, opts.managers, opts.workers
    );
    println!("reproduce with: {}", reproduce(&opts));
    let started = Instant::now();
    // Teardown on every way out: success, failure, panic, Ctrl-C.
    let inner = tokio::spawn(run_inner(docker.clone(), run_id.clone(), opts.clone()));
    let abort = inner.abort_handle();
    let result = tokio::select! {
        r = inner => match r {
            Ok(r) => r,
            Err(e) if e.is_panic() => Err(anyhow::anyhow!("the harness panicked: {e}")),
            Err(e) => Err(anyhow::anyhow!("the harness stopped: {e}")),
        },
        _ = tokio::signal::ctrl_c() => {
            abort.abort();
            Err(anyhow::anyhow!("interrupted"))
        }
    };
    if opts.keep {
        println!(
            "--keep: containers of run {run_id} left running (label strom-chaos.run={run_id})"
        );
    } else {
        let removed = cluster::teardown(&docker, &run_id).await;
        println!(
            "teardown: removed {} containers, networks, volumes and images",
            removed.len()
        );
    }
    println!(
        "run took {:.0} s; reproduce with: {}",
        started.elapsed().as_secs_f64(),
        reproduce(&opts)
    );
    result
}

pub fn reproduce(opts: &Options) -> String {
    let mut cmd = format!(
        "cargo run -p strom-chaos-tests -- --profile {} --seed {}",
        match opts.profile {
            Profile::Ci => "ci",
            Profile::Soak => "soak",
            Profile::Upgrade => "upgrade",
        },
        opts.seed
    );
    if opts.profile == Profile::Soak {
        cmd.push_str(&format!(
            " --duration {}",
            humantime::format_duration(opts.duration)
        ));
    }
    if let Some(from) = &opts.from {
        cmd.push_str(&format!(" --from-binary {}", from.display()));
    }
    cmd
}

struct Chaos {
    cluster: Cluster,
    history: History,
    rng: StdRng,
    web_key: String,
    http: workload::HttpClient,
    /// When the checkpoint store came back after `StoreUnavailable` (Unix ms).
    store_back_ms: Option<i64>,
    /// The broker, when the run has one.
    broker: Option<Broker>,
}

/// The messaging part's broker: its URL on the host, the command that restarts
/// it, the relay the containers reach it through, and the queues.
struct Broker {
    url: String,
    restart: String,
    relay: Relay,
    input: String,
    output: String,
}

async fn run_inner(docker: Docker, run_id: String, opts: Options) -> anyhow::Result<bool> {
    let work = opts.work.join(&run_id);
    std::fs::create_dir_all(&work)?;
    let t = Instant::now();
    let images =
        cluster::build_images(&docker, &run_id, &opts.strom, opts.from.as_deref(), &work).await?;
    println!(
        "images {} and {} built in {:.1} s",
        images.base,
        images.next,
        t.elapsed().as_secs_f64()
    );
    let mut cluster = Cluster::create(docker, &run_id, images, opts.managers, opts.workers).await?;
    // The timer apps' handlers record their runs here (every node sees it).
    let shared = work.join("shared");
    std::fs::create_dir_all(&shared)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777))?;
    }
    cluster.shared = Some(shared.clone());
    let t = Instant::now();
    cluster.start_all().await?;
    println!(
        "{} nodes started in {:.1} s",
        cluster.nodes.len(),
        t.elapsed().as_secs_f64()
    );
    // The broker, reached from the containers through a relay on the gateway.
    let relay_stop = tokio_util::sync::CancellationToken::new();
    let _relay_guard = relay_stop.clone().drop_guard();
    let broker = match crate::messages::broker_from_env()? {
        Some(_) if opts.from.is_some() => {
            println!("--from-binary: the run has no messaging app (an older build may not run it)");
            None
        }
        Some((url, restart)) => {
            let endpoint = crate::messages::endpoint(&url)?;
            let upstream = tokio::net::lookup_host((endpoint.host.as_str(), endpoint.port))
                .await?
                .next()
                .context("STROM_RABBITMQ_URL: the host resolves to no address")?;
            let gateway: std::net::IpAddr = cluster.gateway_ip().parse()?;
            let relay = Relay::start(gateway, upstream, relay_stop.clone()).await?;
            let (input, output) = Messaging::declare(&url, &run_id).await?;
            println!(
                "RabbitMQ: the containers reach the broker at {} (a relay to {upstream})",
                relay.addr
            );
            Some(Broker {
                url,
                restart,
                relay,
                input,
                output,
            })
        }
        None => None,
    };
    let history = History::new();
    let web_key = format!("chaos-web-key-{:016x}", opts.seed);
    let mut chaos = Chaos {
        cluster,
        history: history.clone(),
        rng: StdRng::seed_from_u64(opts.seed),
        web_key: web_key.clone(),
        http: workload::http_client(),
        store_back_ms: None,
        broker,
    };
    chaos
        .deploy_apps(&work, &opts.handler, &opts.echo_handler)
        .await?;
    chaos.wait_healthy(Duration::from_secs(120)).await?;
    history.note("cluster ready, workload starting");
    let setup = Arc::new(Setup::of(&chaos.cluster, web_key, work.join("ledger")));
    let load = workload::start(setup, history.clone(), opts.seed, 3, 4);
    let messaging = chaos.broker.as_ref().map(|b| {
        Messaging::start(
            b.url.clone(),
            b.input.clone(),
            b.output.clone(),
            history.clone(),
        )
    });
    // Quiet time first: the baseline of the run.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let plan_result = match opts.profile {
        Profile::Ci => chaos.ci_plan().await,
        Profile::Soak => chaos.soak_plan(opts.duration).await,
        Profile::Upgrade => chaos.fault(FaultKind::RollingUpgrade, Duration::ZERO).await,
    };
    if let Err(e) = &plan_result {
        history.note(format!("the plan stopped: {e:#}"));
    }
    // Heal whatever is left, then let the workload see the healed cluster.
    chaos.heal_everything().await;
    let healthy = chaos.wait_healthy(Duration::from_secs(120)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    load.stop().await;
    history.note("workload stopped");
    if let Some(m) = messaging {
        let seen = m.finish(&history, Duration::from_secs(120)).await;
        history.note(format!(
            "messages: {} published, {} handlings read, {} poisoned",
            seen.published.len(),
            seen.handled.len(),
            seen.poisoned.len()
        ));
        history.lock().messages = Some(seen);
    }
    // A plan that stopped early still gets its history checked (what it did run
    // must hold), and fails the run.
    healthy.context("the cluster did not become healthy after the faults were healed")?;
    let states = chaos.read_states().await?;
    {
        let text = std::fs::read_to_string(shared.join(TIMER_RECORD)).unwrap_or_default();
        let events: Vec<_> = text
            .lines()
            .filter_map(crate::history::TimerEvent::parse)
            .collect();
        history.lock().timer_events = events;
    }
    let workers: Vec<String> = chaos
        .cluster
        .workers()
        .map(|i| chaos.cluster.nodes[i].name.clone())
        .collect();
    let checkpoints = check_checkpoints(&shared, chaos.store_back_ms).await;
    let records = history.lock();
    let verdicts = checker::check_all(&records, &states, &workers, crate::cluster::KEEP_VERSIONS);
    println!();
    println!("{}", summary(&records));
    println!();
    let mut passed = true;
    for v in &verdicts {
        println!(
            "{} {}: {}",
            if v.passed() { "PASS" } else { "FAIL" },
            v.check,
            v.summary
        );
        for (at, text) in v.violations.iter().take(10) {
            passed = false;
            println!("  - {text}");
            println!("    history around {:.1}s:", *at as f64 / 1000.0);
            println!("{}", checker::context(&records, *at, 2000));
        }
        if v.violations.len() > 10 {
            println!("  … and {} more", v.violations.len() - 10);
        }
        passed &= v.passed();
    }
    println!(
        "{} checkpoints: {}",
        if checkpoints.is_ok() { "PASS" } else { "FAIL" },
        checkpoints.as_ref().unwrap_or_else(|e| e)
    );
    passed &= checkpoints.is_ok();
    if let Err(e) = plan_result {
        println!("FAIL the plan: it stopped early: {e:#}");
        passed = false;
    }
    Ok(passed)
}

/// The managers kept checkpointing: the store holds whole checkpoints, and one
/// written after the store came back from being unavailable.
async fn check_checkpoints(shared: &Path, back_ms: Option<i64>) -> Result<String, String> {
    use strom_control_plane::checkpoint::{local::LocalStore, CheckpointStore};
    let store =
        LocalStore::open(&shared.join(crate::cluster::CHECKPOINTS)).map_err(|e| e.to_string())?;
    let all = store.list(None).await.map_err(|e| e.to_string())?;
    let newest = all.first().ok_or("the store holds no checkpoint")?;
    store
        .read(&newest.id)
        .await
        .map_err(|e| format!("the newest checkpoint does not read back: {e}"))?;
    match back_ms {
        Some(back) if newest.created_ms < back => Err(format!(
            "none written after the store came back (newest {} at {})",
            newest.id, newest.created_ms
        )),
        Some(back) => Ok(format!(
            "{} kept; the newest ({}) {:.1} s after the store came back",
            all.len(),
            newest.id,
            (newest.created_ms - back) as f64 / 1000.0
        )),
        None => Ok(format!("{} kept; the newest {}", all.len(), newest.id)),
    }
}

/// Counts for the report: faults by kind, writes by outcome, requests by result,
/// and the longest stretch without an acknowledged write per fault.
pub fn summary(records: &crate::history::Records) -> String {
    let mut out = String::new();
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    for f in &records.faults {
        let kind = f.what.split(':').next().unwrap_or(&f.what).to_string();
        *kinds.entry(kind).or_default() += 1;
    }
    out.push_str(&format!("faults: {}\n", records.faults.len()));
    for (k, n) in &kinds {
        out.push_str(&format!("  {n:>4} × {k}\n"));
    }
    let (mut acked, mut refused, mut unknown) = (0, 0, 0);
    for w in &records.writes {
        match w.outcome {
            Outcome::Acked { .. } => acked += 1,
            Outcome::Refused(_) => refused += 1,
            Outcome::Unknown(_) => unknown += 1,
        }
    }
    let resent = records.writes.iter().filter(|w| w.attempts > 1).count();
    out.push_str(&format!(
        "writes: {} ({acked} acknowledged, {refused} refused, {unknown} unknown; {resent} went \
         on to another member)\n",
        records.writes.len()
    ));
    let ok = records
        .requests
        .iter()
        .filter(|r| matches!(r.result, Ok(s) if (200..300).contains(&s)))
        .count();
    out.push_str(&format!(
        "requests: {} ({ok} succeeded, {} failed)\n",
        records.requests.len(),
        records.requests.len() - ok
    ));
    // Write unavailability: the longest gap between acknowledgements during each fault.
    let mut acks: Vec<u64> = records
        .writes
        .iter()
        .filter(|w| matches!(w.outcome, Outcome::Acked { .. }))
        .map(|w| w.end_ms)
        .collect();
    acks.sort_unstable();
    let mut gaps: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for f in &records.faults {
        let end = f.settled_ms.unwrap_or(u64::MAX);
        let inside: Vec<u64> = acks
            .iter()
            .copied()
            .filter(|&t| t >= f.start_ms && t <= end)
            .collect();
        let mut points = vec![f.start_ms];
        points.extend(inside);
        points.push(end.min(f.start_ms + 600_000));
        let gap = points.windows(2).map(|p| p[1] - p[0]).max().unwrap_or(0);
        let kind = f.what.split(':').next().unwrap_or(&f.what).to_string();
        gaps.entry(kind).or_default().push(gap);
    }
    out.push_str("longest time without an acknowledged write, per fault (median / max):\n");
    for (k, mut g) in gaps {
        g.sort_unstable();
        out.push_str(&format!(
            "  {k}: {:.1} s / {:.1} s\n",
            g[g.len() / 2] as f64 / 1000.0,
            g[g.len() - 1] as f64 / 1000.0
        ));
    }
    out.trim_end().to_string()
}

impl Chaos {
    fn note(&self, text: impl Into<String>) {
        self.history.note(text);
    }

    fn name(&self, i: usize) -> String {
        self.cluster.nodes[i].name.clone()
    }

    /// Deploy `web` (the test handler; the callers' key; one instance per worker),
    /// the timer apps `ticks` and `slow` (their runs recorded in the shared
    /// folder, checked at the end) and `ledger` (never placed: the writers' target).
    async fn deploy_apps(
        &mut self,
        work: &Path,
        handler: &Path,
        echo_handler: &Path,
    ) -> anyhow::Result<()> {
        let web = work.join("web");
        std::fs::create_dir_all(web.join("hello"))?;
        std::fs::write(
            web.join("host.json"),
            r#"{"version":"2.0","customHandler":{"description":{"defaultExecutablePath":"handler"},"enableForwardingHttpRequest":true}}"#,
        )?;
        std::fs::write(
            web.join("hello").join("function.json"),
            r#"{"bindings":[{"type":"httpTrigger","direction":"in","name":"req","authLevel":"function","methods":["get","post"],"route":"hello/{*rest}"},{"type":"http","direction":"out","name":"res"}]}"#,
        )?;
        std::fs::copy(handler, web.join("handler"))?;
        let ledger = work.join("ledger");
        workload::write_ledger_app(&ledger)?;
        let leader = self.leader().await?;
        let setup = Setup::of(&self.cluster, self.web_key.clone(), ledger.clone());
        let ip = self.cluster.ip(leader);
        let zip = strom_proto::manifest::pack_dir(&web)?;
        workload::deploy(&setup, &ip, WEB, zip)
            .await
            .context("deploying the web app")?;
        let mut client = self.cluster.client(leader).await?;
        client
            .set_function_key(self.cluster.request(pb::SetFunctionKeyRequest {
                app_name: WEB.into(),
                function_name: "hello".into(),
                scope: "function".into(),
                name: "chaos".into(),
                value: self.web_key.clone(),
            }))
            .await
            .context("setting the web app's key")?;
        client
            .scale_app(self.cluster.request(pb::ScaleAppRequest {
                name: WEB.into(),
                instances: self.cluster.workers().count() as u32,
            }))
            .await
            .context("scaling web")?;
        // Two timer apps, every 2 s (missed ticks caught up): `tick` runs 0.3 s,
        // `slow` 3 s, longer than its period.
        for (app, function, action) in [
            ("ticks", "tick", "sleep=300"),
            ("slow", "slow", "sleep=3000"),
        ] {
            let dir = work.join(app);
            std::fs::create_dir_all(dir.join(function))?;
            std::fs::write(
                dir.join("host.json"),
                r#"{"version":"2.0","customHandler":{"description":{"defaultExecutablePath":"handler"}}}"#,
            )?;
            std::fs::write(
                dir.join(function).join("function.json"),
                r#"{"bindings":[{"type":"timerTrigger","direction":"in","name":"timer","schedule":"*/2 * * * * *","useMonitor":true}]}"#,
            )?;
            std::fs::copy(handler, dir.join("handler"))?;
            let settings = HashMap::from([
                (
                    "TEST_HANDLER_RECORD".to_string(),
                    format!("/shared/{TIMER_RECORD}"),
                ),
                ("TEST_HANDLER_ACTION".to_string(), action.to_string()),
            ]);
            let zip = strom_proto::manifest::pack_dir(&dir)?;
            workload::deploy_with(&setup, &ip, app, zip, settings)
                .await
                .with_context(|| format!("deploying the timer app {app}"))?;
        }
        if let Some(b) = &self.broker {
            // `mq`: the test handler's echo on each message, its answer sent on as
            // an output message (confirmed before the acknowledgement), on every
            // worker.
            let dir = work.join(MQ);
            std::fs::create_dir_all(dir.join("consume"))?;
            std::fs::write(
                dir.join("host.json"),
                r#"{"version":"2.0","customHandler":{"description":{"defaultExecutablePath":"handler"}},"extensions":{"rabbitMQ":{"prefetchCount":10}}}"#,
            )?;
            std::fs::write(
                dir.join("consume").join("function.json"),
                serde_json::json!({"bindings": [
                    {"type": "rabbitMQTrigger", "direction": "in", "name": "msg",
                     "queueName": b.input, "connectionStringSetting": "Mq"},
                    {"type": "rabbitMQ", "direction": "out", "name": "res",
                     "queueName": b.output, "connectionStringSetting": "Mq"},
                ],
                // Azure's default attempts, as a policy: each attempt's
                // `RetryContext` tells a retry from a first handling.
                "retry": {"strategy": "fixedDelay", "maxRetryCount": 4, "delayInterval": "00:00:01"}})
                .to_string(),
            )?;
            std::fs::copy(echo_handler, dir.join("handler"))?;
            let settings = HashMap::from([(
                "Mq".to_string(),
                crate::messages::url_via(&b.url, b.relay.addr)?,
            )]);
            let zip = strom_proto::manifest::pack_dir(&dir)?;
            workload::deploy_with(&setup, &ip, MQ, zip, settings)
                .await
                .context("deploying the messaging app")?;
            client
                .scale_app(self.cluster.request(pb::ScaleAppRequest {
                    name: MQ.into(),
                    instances: self.cluster.workers().count() as u32,
                }))
                .await
                .context("scaling mq")?;
        }
        let zip = strom_proto::manifest::pack_dir(&ledger)?;
        workload::deploy(&setup, &ip, LEDGER, zip)
            .await
            .context("deploying the ledger app")?;
        client
            .scale_app(self.cluster.request(pb::ScaleAppRequest {
                name: LEDGER.into(),
                instances: 0,
            }))
            .await
            .context("scaling ledger to 0")?;
        Ok(())
    }

    /// The manager that says it leads and that the others follow, within 60 s.
    async fn leader(&self) -> anyhow::Result<usize> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            for m in self.cluster.managers() {
                if let Ok(s) = self.cluster.status(m, true).await {
                    if s.state == "leader" {
                        return Ok(m);
                    }
                }
            }
            if Instant::now() > deadline {
                bail!("no leader within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Until every manager agrees on a leader, every worker is Up, `web` has all
    /// its instances Ready, and every gateway serves it.
    async fn wait_healthy(&self, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        let mut why;
        loop {
            why = match self.health().await {
                Ok(()) => return Ok(()),
                Err(e) => e.to_string(),
            };
            if Instant::now() > deadline {
                let mut logs = String::new();
                for i in 0..self.cluster.nodes.len() {
                    logs.push_str(&format!(
                        "--- {} ---\n{}\n",
                        self.name(i),
                        self.cluster.log_tail(i, 15).await
                    ));
                }
                bail!("not healthy after {limit:?}: {why}\n{logs}");
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    async fn health(&self) -> anyhow::Result<()> {
        let mut leader_ids = Vec::new();
        for m in self.cluster.managers() {
            let s = self
                .cluster
                .status(m, true)
                .await
                .with_context(|| format!("{} does not answer", self.name(m)))?;
            let leader = match s.leader_id {
                Some(l) if s.state == "leader" || s.state == "follower" => l,
                _ => bail!(
                    "{} is {} with leader {:?}",
                    self.name(m),
                    s.state,
                    s.leader_id
                ),
            };
            leader_ids.push(leader);
        }
        leader_ids.dedup();
        if leader_ids.len() != 1 {
            bail!("managers name different leaders: {leader_ids:?}");
        }
        let leader = self
            .cluster
            .index_of(leader_ids[0])
            .context("leader id unknown")?;
        let s = self.cluster.status(leader, false).await?;
        let managers = self.cluster.managers().count();
        if s.members.iter().filter(|m| m.voter).count() != managers {
            bail!(
                "{} voters, not {managers}",
                s.members.iter().filter(|m| m.voter).count()
            );
        }
        for w in self.cluster.workers() {
            let id = self.cluster.nodes[w].id;
            match s.workers.iter().find(|x| x.node_id == id) {
                Some(x) if x.status == "Up" => {}
                Some(x) => bail!("worker {} is {}", self.name(w), x.status),
                None => bail!("worker {} is not registered", self.name(w)),
            }
        }
        let web = s
            .placements
            .iter()
            .find(|p| p.app_name == WEB)
            .context("web has no placement")?;
        let ready: u32 = web.nodes.iter().filter_map(|n| n.ready).sum();
        if ready < web.desired {
            bail!("web: {ready} of {} instances ready", web.desired);
        }
        for i in 0..self.cluster.nodes.len() {
            let r = workload::get(
                &self.http,
                &self.cluster.ip(i),
                "/api/hello/probe",
                &self.web_key,
                Duration::from_secs(3),
            )
            .await;
            if r != Ok(200) {
                bail!("the gateway of {} answers {r:?}", self.name(i));
            }
        }
        Ok(())
    }

    fn random_manager_except(&mut self, except: usize) -> usize {
        let others: Vec<usize> = self.cluster.managers().filter(|&m| m != except).collect();
        others[self.rng.random_range(0..others.len())]
    }

    fn random_worker(&mut self) -> usize {
        let workers: Vec<usize> = self.cluster.workers().collect();
        workers[self.rng.random_range(0..workers.len())]
    }

    fn hold(&mut self, profile_max_ms: u64) -> Duration {
        Duration::from_millis(self.rng.random_range(2_000..=profile_max_ms))
    }

    async fn ci_plan(&mut self) -> anyhow::Result<()> {
        let mut faults = FaultKind::CI.to_vec();
        faults.shuffle(&mut self.rng);
        for kind in faults {
            let hold = self.hold(6_000);
            self.fault(kind, hold).await?;
            let quiet = self.rng.random_range(500..2_000);
            tokio::time::sleep(Duration::from_millis(quiet)).await;
        }
        self.fault(FaultKind::RollingUpgrade, Duration::ZERO).await
    }

    async fn soak_plan(&mut self, duration: Duration) -> anyhow::Result<()> {
        let end = Instant::now() + duration;
        let total: u32 = FaultKind::SOAK.iter().map(|(_, w)| w).sum();
        while Instant::now() < end {
            let mut pick = self.rng.random_range(0..total);
            let mut kind = FaultKind::SOAK[0].0;
            for (k, w) in FaultKind::SOAK {
                if pick < w {
                    kind = k;
                    break;
                }
                pick -= w;
            }
            let hold = self.hold(10_000);
            self.fault(kind, hold).await?;
            let quiet = self.rng.random_range(500..5_000);
            tokio::time::sleep(Duration::from_millis(quiet)).await;
        }
        Ok(())
    }

    /// Inject one fault, hold it, undo it, and wait until the cluster is healthy.
    async fn fault(&mut self, kind: FaultKind, hold: Duration) -> anyhow::Result<()> {
        let leader = self.leader().await?;
        match kind {
            FaultKind::KillLeader | FaultKind::KillFollower | FaultKind::KillWorker => {
                let i = match kind {
                    FaultKind::KillLeader => leader,
                    FaultKind::KillFollower => self.random_manager_except(leader),
                    _ => self.random_worker(),
                };
                let label = match kind {
                    FaultKind::KillLeader => "kill -9 leader",
                    FaultKind::KillFollower => "kill -9 follower",
                    _ => "kill -9 worker",
                };
                let f = self
                    .history
                    .fault(format!("{label}: {}", self.name(i)), vec![self.name(i)]);
                self.cluster.kill(i).await?;
                tokio::time::sleep(hold).await;
                self.cluster.restart(i).await?;
                self.history.healed(f);
                self.settle(f).await
            }
            FaultKind::PauseManager | FaultKind::PauseWorker => {
                let i = if kind == FaultKind::PauseManager {
                    let m: Vec<usize> = self.cluster.managers().collect();
                    m[self.rng.random_range(0..m.len())]
                } else {
                    self.random_worker()
                };
                let role = if i == leader {
                    "leader"
                } else if kind == FaultKind::PauseManager {
                    "follower"
                } else {
                    "worker"
                };
                let f = self.history.fault(
                    format!("pause {role}: {}", self.name(i)),
                    vec![self.name(i)],
                );
                if let Err(e) = self.cluster.pause(i).await {
                    // The engine could not freeze the container (its freezer fails
                    // under heavy load). The node was never frozen, so this fault did
                    // not happen: it impairs nothing (a request that failed then
                    // is not excused by it), and the run goes on.
                    self.history.skipped(f, &format!("{e:#}"));
                    return self.wait_healthy(Duration::from_secs(120)).await;
                }
                tokio::time::sleep(hold).await;
                self.cluster.unpause(i).await?;
                self.history.healed(f);
                self.settle(f).await
            }
            FaultKind::IsolateLeader | FaultKind::CutWorker => {
                let (i, label) = if kind == FaultKind::IsolateLeader {
                    (leader, "isolate leader")
                } else {
                    (self.random_worker(), "cut worker")
                };
                let f = self
                    .history
                    .fault(format!("{label}: {}", self.name(i)), vec![self.name(i)]);
                self.cluster.disconnect(i).await?;
                tokio::time::sleep(hold).await;
                self.cluster.reconnect(i).await?;
                self.history.healed(f);
                self.settle(f).await
            }
            FaultKind::SplitLeaderMinority => {
                let managers = self.cluster.managers().count();
                let minority_size = (managers - 1) / 2;
                let mut minority = vec![leader];
                while minority.len() < minority_size.max(1) {
                    let m = self.random_manager_except(leader);
                    if !minority.contains(&m) {
                        minority.push(m);
                    }
                }
                let names: Vec<String> = minority.iter().map(|&i| self.name(i)).collect();
                let f = self.history.fault(
                    format!("split: {} | rest (leader in the minority)", names.join(",")),
                    names,
                );
                self.cluster.split(&minority).await?;
                tokio::time::sleep(hold).await;
                self.cluster.heal_split(&minority).await?;
                self.history.healed(f);
                self.settle(f).await
            }
            FaultKind::RestartNode => {
                let i = self.rng.random_range(0..self.cluster.nodes.len());
                let f = self.history.fault(
                    format!("restart (SIGTERM, same data): {}", self.name(i)),
                    vec![self.name(i)],
                );
                let name = self.cluster.container(i);
                self.cluster
                    .docker
                    .stop_container(
                        &name,
                        Some(
                            bollard::query_parameters::StopContainerOptionsBuilder::new()
                                .t(30)
                                .build(),
                        ),
                    )
                    .await
                    .with_context(|| format!("stopping {name}"))?;
                self.cluster.restart(i).await?;
                self.history.healed(f);
                self.settle(f).await
            }
            FaultKind::StoreUnavailable => {
                let shared = self
                    .cluster
                    .shared
                    .clone()
                    .context("no shared folder for the checkpoint store")?;
                let store = shared.join(crate::cluster::CHECKPOINTS);
                let away = shared.join(format!("{}.away", crate::cluster::CHECKPOINTS));
                std::fs::create_dir_all(&store)?;
                let f = self
                    .history
                    .fault("checkpoint store unavailable".to_string(), vec![]);
                std::fs::rename(&store, &away).context("moving the store away")?;
                std::fs::write(&store, "the checkpoint store is unavailable")?;
                tokio::time::sleep(hold).await;
                std::fs::remove_file(&store)?;
                std::fs::rename(&away, &store).context("putting the store back")?;
                self.store_back_ms = Some(strom_control_plane::management::now_ms());
                self.history.healed(f);
                self.settle(f).await
            }
            FaultKind::RestartBroker | FaultKind::CutWorkerFromBroker => {
                let Some((relay, restart)) = self
                    .broker
                    .as_ref()
                    .map(|b| (b.relay.clone(), b.restart.clone()))
                else {
                    let f = self.history.fault(format!("{kind:?}"), vec![]);
                    self.history.skipped(f, "the run has no broker");
                    return Ok(());
                };
                if kind == FaultKind::RestartBroker {
                    // No node is impaired: the broker is not part of the cluster.
                    let f = self.history.fault("restart broker".to_string(), vec![]);
                    let out = tokio::time::timeout(
                        Duration::from_secs(120),
                        tokio::process::Command::new("sh")
                            .arg("-c")
                            .arg(&restart)
                            .output(),
                    )
                    .await
                    .context("the broker restart took over 120 s")?
                    .context("running STROM_RABBITMQ_RESTART")?;
                    if !out.status.success() {
                        bail!(
                            "STROM_RABBITMQ_RESTART failed ({}): {}",
                            out.status,
                            String::from_utf8_lossy(&out.stderr).trim()
                        );
                    }
                    self.history.healed(f);
                    self.settle(f).await
                } else {
                    let i = self.random_worker();
                    let ip: std::net::IpAddr = self.cluster.ip(i).parse()?;
                    // The worker serves HTTP throughout: not impaired.
                    let f = self
                        .history
                        .fault(format!("cut worker from broker: {}", self.name(i)), vec![]);
                    relay.cut(ip);
                    tokio::time::sleep(hold).await;
                    relay.heal(ip);
                    self.history.healed(f);
                    self.settle(f).await
                }
            }
            FaultKind::RollingUpgrade => self.rolling_upgrade().await,
        }
    }

    /// Wait for health after fault `f` was undone, and record when it came.
    async fn settle(&mut self, f: usize) -> anyhow::Result<()> {
        self.wait_healthy(Duration::from_secs(120)).await?;
        self.history.settled(f);
        Ok(())
    }

    /// Replace every node, one at a time, with a container of the other image:
    /// followers first, the leader after them (drained: it hands leadership over),
    /// then the workers (drained: their instances move first, make-before-break).
    async fn rolling_upgrade(&mut self) -> anyhow::Result<()> {
        let target = if self.cluster.nodes[0].image == self.cluster.images.base {
            self.cluster.images.next.clone()
        } else {
            self.cluster.images.base.clone()
        };
        self.note(format!("rolling upgrade to {target} starts"));
        let leader = self.leader().await?;
        let mut order: Vec<usize> = self.cluster.managers().filter(|&m| m != leader).collect();
        order.push(leader);
        order.extend(self.cluster.workers());
        for i in order {
            let name = self.name(i);
            let id = self.cluster.nodes[i].id;
            let f = self
                .history
                .fault(format!("upgrade: {name}"), vec![name.clone()]);
            let drained = self.drain(i).await?;
            self.note(format!(
                "drained {name}: leader now {}, handed over: {}",
                drained
                    .leader_id
                    .map(|l| l.to_string())
                    .unwrap_or("unknown".into()),
                drained.handed_over
            ));
            if self.cluster.nodes[i].role == Role::Worker {
                self.wait_worker_empty(id).await?;
            }
            self.cluster
                .stop_and_remove(i, Duration::from_secs(30))
                .await?;
            self.cluster.nodes[i].image = target.clone();
            self.cluster.start_new(i, false).await?;
            self.history.healed(f);
            if self.cluster.nodes[i].role == Role::Worker {
                self.wait_worker_registered(id).await?;
                self.uncordon(i).await?;
            } else {
                self.cluster
                    .wait_manager(i, Duration::from_secs(60))
                    .await?;
            }
            self.settle(f).await?;
        }
        self.note(format!("rolling upgrade to {target} done"));
        Ok(())
    }

    /// `strom node drain` node `i` through another manager.
    async fn drain(&mut self, i: usize) -> anyhow::Result<pb::DrainNodeResponse> {
        self.node_command(i, true)
            .await?
            .context("a drain answers with the leader")
    }

    /// `strom node uncordon` worker `i` through another manager.
    async fn uncordon(&mut self, i: usize) -> anyhow::Result<()> {
        self.node_command(i, false).await.map(|_| ())
    }

    /// Drain (`drain`) or uncordon node `i` through a random other manager, asked
    /// again (as an operator's script would) while the answer is "unavailable";
    /// each retry is noted in the history. A drain returns its answer.
    async fn node_command(
        &mut self,
        i: usize,
        drain: bool,
    ) -> anyhow::Result<Option<pb::DrainNodeResponse>> {
        let what = if drain { "drain" } else { "uncordon" };
        let name = self.name(i);
        let id = self.cluster.nodes[i].id;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let via = self.random_manager_except(i);
            let answer = match self.cluster.client(via).await {
                Ok(mut client) => {
                    let sent = if drain {
                        client
                            .drain_node(self.cluster.request(pb::DrainNodeRequest { node_id: id }))
                            .await
                            .map(|r| Some(r.into_inner()))
                    } else {
                        client
                            .uncordon_node(
                                self.cluster.request(pb::CordonNodeRequest { node_id: id }),
                            )
                            .await
                            .map(|_| None)
                    };
                    sent.map_err(|s| (s.code() == tonic::Code::Unavailable, s.to_string()))
                }
                Err(e) => Err((true, e.to_string())),
            };
            match answer {
                Ok(r) => return Ok(r),
                Err((true, why)) if Instant::now() < deadline => {
                    self.note(format!(
                        "{what} of {name} through {}: {why}; asking again",
                        self.name(via)
                    ));
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err((_, why)) => bail!("{what} of {name}: {why}"),
            }
        }
    }

    /// Until the leader reports nothing placed on worker `id`.
    async fn wait_worker_empty(&self, id: u64) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let leader = self.leader().await?;
            if let Ok(s) = self.cluster.status(leader, false).await {
                if s.workers.iter().any(|w| w.node_id == id && w.placed == 0) {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("worker {id} still has instances placed 90 s after its drain");
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// Until the leader hears worker `id` (restarted) again.
    async fn wait_worker_registered(&self, id: u64) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let leader = self.leader().await?;
            if let Ok(s) = self.cluster.status(leader, false).await {
                if s.workers
                    .iter()
                    .any(|w| w.node_id == id && w.last_heartbeat_ms.is_some_and(|ms| ms < 1500))
                {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("worker {id} did not come back within 90 s of its upgrade");
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// Undo anything a failed plan left: unpause, reconnect, start.
    async fn heal_everything(&mut self) {
        if let Some(b) = &self.broker {
            b.relay.heal_all();
        }
        self.cluster.heal_all().await;
    }

    /// What every manager holds of the ledger app, read through that manager.
    async fn read_states(&self) -> anyhow::Result<Vec<NodeState>> {
        let mut states = Vec::new();
        for m in self.cluster.managers() {
            let name = self.name(m);
            let mut c = self.cluster.client(m).await?;
            let settings = c
                .get_app_settings(self.cluster.request(pb::GetAppSettingsRequest {
                    name: LEDGER.into(),
                }))
                .await
                .with_context(|| format!("{name}: settings"))?
                .into_inner();
            let keys = c
                .list_function_keys(self.cluster.request(pb::ListFunctionKeysRequest {
                    app_name: LEDGER.into(),
                    function_name: LEDGER_FUNCTION.into(),
                }))
                .await
                .with_context(|| format!("{name}: keys"))?
                .into_inner();
            let app = c
                .get_app(self.cluster.request(pb::GetAppRequest {
                    name: LEDGER.into(),
                }))
                .await
                .with_context(|| format!("{name}: app"))?
                .into_inner();
            states.push(NodeState {
                node: name,
                settings: settings.settings.into_iter().collect(),
                keys: keys
                    .keys
                    .into_iter()
                    .filter(|k| k.scope == "function")
                    .map(|k| (k.name, k.value))
                    .collect(),
                versions: app.versions.into_iter().map(|v| v.version_id).collect(),
            });
        }
        Ok(states)
    }
}
