//! Checkpoints (issue 17): how long a checkpoint of 100 apps takes and how big it
//! is (local store), and the group's write throughput while checkpoints run
//! back to back, against the same load without them.

use super::*;
use strom_node::output::bytes as size;
use strom_proto::admin_v1::CreateCheckpointRequest;

const APPS: usize = 100;
const CLIENTS: usize = 64;

pub async fn run(builds: &Builds, seconds: f64) -> anyhow::Result<()> {
    let bins = builds.current.clone();
    let work = tempfile::tempdir()?;
    let handler = bins.join("strom-test-handler");
    let store = work.path().join("store");
    // Checkpoints only on demand: the periodic writer stays out of the way.
    let extra: Vec<String> = [
        "--checkpoint-store",
        &format!("local:{}", store.display()),
        "--checkpoint-every",
        "24h",
        "--checkpoint-every-entries",
        "100000000",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let group = StromGroup::start_with(&bins, work.path(), 3, &extra).await?;
    let group = &group;
    let write_app = work.path().join(WRITE_APP);
    write_app_dir(&write_app, &handler, "set")?;
    group.deploy(&write_app, WRITE_APP, 0).await?;
    let t = Instant::now();
    for i in 0..APPS {
        let name = format!("app-{i:03}");
        let dir = work.path().join(&name);
        write_app_dir(&dir, &handler, "f")?;
        // Each its own package.
        std::fs::write(dir.join("build.txt"), format!("{name}\n"))?;
        group.deploy(&dir, &name, 0).await?;
    }
    eprintln!("{APPS} apps deployed in {:.1} s", t.elapsed().as_secs_f64());

    let checkpoint = || async {
        let leader = group.leader().await?;
        let started = Instant::now();
        let r = group
            .client(leader)
            .await?
            .create_checkpoint(group.request(CreateCheckpointRequest {}))
            .await
            .context("CreateCheckpoint")?
            .into_inner();
        anyhow::Ok((started.elapsed(), r))
    };
    let touch = move |n: usize| async move {
        let leader = group.leader().await?;
        let mut w = group.writer(leader).await?;
        anyhow::ensure!(w.write("TOUCH", &n.to_string()).await, "a write failed");
        anyhow::Ok(())
    };
    out!(
        "Checkpoint of {} apps (local store on this disk, 3-member group; `strom cluster checkpoint`, client's view):",
        APPS + 1
    );
    out!();
    out!("| checkpoint | time ms | state | packages sent | packages referenced |");
    out!("|---|---:|---:|---:|---:|");
    let (took, first) = checkpoint().await?;
    let info = first.checkpoint.clone().context("no checkpoint answered")?;
    out!(
        "| first (every package sent) | {:.0} | {} | {} | {} ({}) |",
        took.as_secs_f64() * 1000.0,
        size(info.state_size),
        size(info.packages_size),
        info.packages,
        size(info.packages_size)
    );
    let mut times = Vec::new();
    for n in 0..5 {
        touch(n).await?;
        let (took, r) = checkpoint().await?;
        times.push(took.as_secs_f64() * 1000.0);
        if n == 4 {
            let info = r.checkpoint.context("no checkpoint answered")?;
            times.sort_by(f64::total_cmp);
            out!(
                "| next (packages already stored; median of 5) | {:.0} | {} | 0 B | {} ({}) |",
                times[2],
                size(info.state_size),
                info.packages,
                size(info.packages_size)
            );
        }
    }
    let stored = dir_size(&store);
    out!();
    out!(
        "The store holds {} after these {} checkpoints (retention keeps 10; each package once).",
        size(stored),
        times.len() + 1
    );
    out!();

    // Throughput with and without checkpoints running back to back.
    out!("Write throughput of the group ({CLIENTS} clients on the leader) without and with checkpoints running back to back:");
    out!();
    out!("| load | writes/s | p50 ms | p99 ms | errors | checkpoints written |");
    out!("|---|---:|---:|---:|---:|---:|");
    let without = commit_load(group, CLIENTS, seconds).await?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let counter = {
        let stop = stop.clone();
        let leader = group.leader().await?;
        let mut client = group.client(leader).await?;
        let auth = group.auth.clone();
        tokio::spawn(async move {
            let mut written = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let mut request = tonic::Request::new(CreateCheckpointRequest {});
                request.metadata_mut().insert("authorization", auth.clone());
                if client.create_checkpoint(request).await.is_ok() {
                    written += 1;
                }
            }
            written
        })
    };
    let with = commit_load(group, CLIENTS, seconds).await?;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let written = counter.await?;
    for (label, r, n) in [
        ("without checkpoints", &without, 0),
        ("with checkpoints back to back", &with, written),
    ] {
        out!(
            "| {label} | {:.0} | {:.2} | {:.2} | {} | {n} |",
            r.writes_per_s,
            r.p50_ms,
            r.p99_ms,
            r.errors
        );
    }
    out!();
    out!(
        "Ratio with / without: writes/s {:.2}×, p99 {:.2}×.",
        with.writes_per_s / without.writes_per_s,
        with.p99_ms / without.p99_ms
    );
    Ok(())
}

fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| {
            let p = e.path();
            if p.is_dir() {
                dir_size(&p)
            } else {
                e.metadata().map(|m| m.len()).unwrap_or(0)
            }
        })
        .sum()
}
