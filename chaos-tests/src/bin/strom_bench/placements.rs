//! Placements per second: the scheduler's pure `plan` over 1,000 simulated
//! workers, against a goal of 5,000 placements/s.

use super::*;

/// Simulated workers in the placement section, and the instances they must take.
const BENCH_WORKERS: u64 = 1_000;
const BENCH_INSTANCES: u32 = 10_000;
const PLACEMENTS_GOAL_PER_S: f64 = 5_000.0;
const REPETITIONS: usize = 9;

pub fn placements() -> anyhow::Result<()> {
    out!(
        "| placement scenario | workers | instances placed | best ms | median ms | placements/s | vs {PLACEMENTS_GOAL_PER_S:.0}/s goal |"
    );
    out!("|---|---:|---:|---:|---:|---:|---:|");
    for apps in [5_000u32, 1_000] {
        let scale = BENCH_INSTANCES / apps;
        let mut state = bench_cluster(apps, scale)?;
        let live = LiveView::default();

        let (changes, times) = time_plan(&state, &live);
        let placed: u32 = changes.iter().map(|c| c.instances).sum();
        if placed != BENCH_INSTANCES {
            bail!("{apps} apps × {scale}: placed {placed} of {BENCH_INSTANCES} instances");
        }
        print_placement_row(
            &format!("from scratch, {apps} apps × {scale}"),
            placed,
            &times,
        );

        apply(&mut state, ClusterCommand::Place { changes, at_ms: 2 })?;
        for node in 1..=10 {
            apply(
                &mut state,
                ClusterCommand::SetWorkerLiveness {
                    node,
                    up: false,
                    at_ms: 3,
                },
            )?;
        }
        let (changes, times) = time_plan(&state, &live);
        let (mut added, mut removed) = (0u32, 0u32);
        for c in &changes {
            let before = state.placed(&c.app, c.node);
            added += c.instances.saturating_sub(before);
            removed += before.saturating_sub(c.instances);
        }
        if added != removed || added == 0 {
            bail!("10 workers Down: {removed} instances removed but {added} re-placed");
        }
        print_placement_row(
            &format!("10 of {BENCH_WORKERS} workers Down, {apps} apps × {scale}"),
            added,
            &times,
        );
    }
    Ok(())
}

/// `plan` timed `REPETITIONS` times (it is pure: every run does the same work);
/// the changes of the last run and the sorted times in ms.
fn time_plan(
    state: &ClusterState,
    live: &LiveView,
) -> (Vec<strom_proto::command::PlacementChange>, Vec<f64>) {
    let mut times = Vec::with_capacity(REPETITIONS);
    let mut changes = Vec::new();
    for _ in 0..REPETITIONS {
        let start = Instant::now();
        changes = std::hint::black_box(scheduler::plan(state, live));
        times.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    (changes, times)
}

fn print_placement_row(scenario: &str, placed: u32, sorted_ms: &[f64]) {
    let best = sorted_ms[0];
    let median = sorted_ms[sorted_ms.len() / 2];
    let per_s = f64::from(placed) / (median / 1000.0);
    out!(
        "| {scenario} | {BENCH_WORKERS} | {placed} | {best:.2} | {median:.2} | {per_s:.0} | {:.1}× |",
        per_s / PLACEMENTS_GOAL_PER_S
    );
}

pub(crate) fn apply(state: &mut ClusterState, command: ClusterCommand) -> anyhow::Result<()> {
    match state.apply(&command) {
        CommandResult::Rejected(r) => bail!("{command:?} was rejected: {r}"),
        _ => Ok(()),
    }
}

/// `BENCH_WORKERS` Up workers (64 instances each, memory not limited) and `apps`
/// apps of `scale` instances each, nothing placed yet. One app is deployed through
/// `apply`; the rest are copies of it under other names, inserted directly, because
/// deploying thousands of apps one by one checks every pair of routes and would time
/// the set-up rather than the scheduler.
pub(crate) fn bench_cluster(apps: u32, scale: u32) -> anyhow::Result<ClusterState> {
    let mut state = ClusterState::default();
    apply(
        &mut state,
        ClusterCommand::InitCluster {
            cluster_id: ClusterId::new_random(),
            admin_token_hash: TokenHash::of("bench"),
            join_token_hash: TokenHash::of("bench"),
            at_ms: 1,
        },
    )?;
    for node in 1..=BENCH_WORKERS {
        apply(
            &mut state,
            ClusterCommand::RegisterWorker(Box::new(WorkerInfo {
                node,
                http_addr: format!("10.0.{}.{}:7071", node / 256, node % 256),
                capacity: WorkerCapacity {
                    instances: 64,
                    memory_mb: 0,
                },
                labels: Default::default(),
                build: "bench".into(),
                at_ms: 1,
            })),
        )?;
    }
    let template = AppName::parse("app-00000")?;
    apply(
        &mut state,
        ClusterCommand::DeployVersion(Box::new(DeployVersion {
            app: template.clone(),
            version: VersionId::of_bytes(b"bench"),
            size_bytes: 1,
            manifest: bench_manifest()?,
            at_ms: 1,
            initial_keys: InitialKeys {
                master: "m".into(),
                host_default: "h".into(),
                function_defaults: Default::default(),
            },
            settings: Default::default(),
        })),
    )?;
    apply(
        &mut state,
        ClusterCommand::SetScale {
            app: template.clone(),
            instances: scale,
            at_ms: 1,
        },
    )?;
    let app = state.apps[&template].clone();
    for i in 1..apps {
        let name = AppName::parse(&format!("app-{i:05}"))?;
        let mut copy = (*app).clone();
        copy.name = name.clone();
        state.apps.insert(name, std::sync::Arc::new(copy));
    }
    Ok(state)
}

fn bench_manifest() -> anyhow::Result<strom_proto::manifest::AppManifest> {
    let dir = tempfile::tempdir()?;
    std::fs::write(
        dir.path().join("host.json"),
        r#"{"version":"2.0","customHandler":{"description":{"defaultExecutablePath":"sh"}}}"#,
    )?;
    std::fs::create_dir(dir.path().join("f"))?;
    std::fs::write(
        dir.path().join("f/function.json"),
        r#"{"bindings":[{"type":"httpTrigger","direction":"in","name":"req","route":"f"},{"type":"http","direction":"out","name":"res"}]}"#,
    )?;
    let zip = pack_dir(dir.path())?;
    let pkg = AppPackage::from_zip_bytes(&zip, &ZipLimits::default())?;
    validate_app(&pkg, &Default::default())
        .map_err(|errors| anyhow::anyhow!("bench manifest is invalid: {errors:?}"))
}
