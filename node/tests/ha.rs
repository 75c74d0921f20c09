//! High availability with real `strom serve` processes on 127.0.0.1: three
//! management nodes and separate worker nodes. Leader loss under writes, worker loss
//! and return, a worker drained under load, quorum loss, and membership changes with
//! restarts.

// Unix only: not run on Windows yet (signals, `sh` handlers, Unix modes, or
// untried there); on Windows `.ci/windows/run` runs `e2e.rs` and the smoke test
// under Wine (docs/windows.md).
#![cfg(unix)]

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{eventually, free_port, get, write_app, Load, Out, Up};

fn anonymous_fn(route: &str) -> String {
    format!(
        r#"{{"bindings":[{{"type":"httpTrigger","direction":"in","name":"req","authLevel":"anonymous","route":"{route}"}},{{"type":"http","direction":"out","name":"res"}}]}}"#
    )
}

/// A client command against `server` with the admin token.
fn cli(server: &str, token: &str, args: &[&str]) -> Out {
    common::cli(server, args, &["--token", token])
}

fn json(server: &str, token: &str, args: &[&str]) -> Option<serde_json::Value> {
    let mut all = args.to_vec();
    all.extend(["--output", "json"]);
    let out = cli(server, token, &all);
    if out.code != 0 {
        return None;
    }
    serde_json::from_str(&out.stdout).ok()
}

/// (node, instances, ready) of an app's placement in `cluster status`.
fn placement(status: &serde_json::Value, app: &str) -> Vec<(u64, u64, u64)> {
    status["placements"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["app_name"] == app)
        .flat_map(|p| p["nodes"].as_array().cloned().unwrap_or_default())
        .map(|n| {
            (
                n["node_id"].as_u64().unwrap_or(0),
                n["instances"].as_u64().unwrap_or(0),
                n["ready"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

fn worker_status(status: &serde_json::Value, node: u64) -> String {
    status["workers"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|w| w["node_id"] == node)
        .and_then(|w| w["status"].as_str())
        .unwrap_or("")
        .to_string()
}

fn deploy_web(server: &str, token: &str, dir: &Path, name: &str) {
    let app = dir.join(name);
    write_app(
        &app,
        &common::test_handler_host(""),
        &[("hello", &anonymous_fn(&format!("{name}/{{id:int}}")))],
    );
    let out = cli(server, token, &["app", "deploy", app.to_str().unwrap()]);
    assert_eq!(out.code, 0, "deploy {name}: {}", out.stderr);
}

/// `app deploy DIR --publish-local-settings` with `settings` as the folder's
/// local.settings.json.
fn deploy_with_settings(server: &str, token: &str, app: &Path, settings: &serde_json::Value) {
    std::fs::write(app.join("local.settings.json"), settings.to_string()).unwrap();
    let out = cli(
        server,
        token,
        &[
            "app",
            "deploy",
            app.to_str().unwrap(),
            "--publish-local-settings",
        ],
    );
    assert_eq!(out.code, 0, "deploy: {}", out.stderr);
}

struct Cluster {
    dirs: Vec<tempfile::TempDir>,
    ports: Vec<u16>,
    token: String,
}

impl Cluster {
    fn new(n: usize) -> Cluster {
        Cluster {
            dirs: (0..n).map(|_| tempfile::tempdir().unwrap()).collect(),
            ports: (0..n).map(|_| free_port()).collect(),
            token: String::new(),
        }
    }

    fn url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.ports[i])
    }

    fn seeds(&self, managers: &[usize]) -> String {
        managers
            .iter()
            .map(|i| self.url(*i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Node `i` has id `i + 1`.
    fn start(&self, i: usize, roles: &str, start: &[&str]) -> Up {
        let id = (i + 1).to_string();
        let mut args = vec![
            "--node-id",
            &id,
            "--roles",
            roles,
            "--worker-lease-ms",
            "2000",
        ];
        args.extend(start);
        Up::serve(self.dirs[i].path(), self.ports[i], &args)
    }

    fn bootstrap(&mut self, i: usize) -> Up {
        let up = self.start(i, "management", &["--bootstrap"]);
        self.token = std::fs::read_to_string(self.dirs[i].path().join("join.token"))
            .unwrap()
            .trim()
            .to_string();
        up
    }

    fn join(&self, i: usize, roles: &str, seeds: &str) -> Up {
        self.start(i, roles, &["--join", seeds, "--join-token", &self.token])
    }

    /// Nodes 1–3 management, 4–5 workers.
    fn three_managers_two_workers() -> (Cluster, [Up; 5]) {
        let mut c = Cluster::new(5);
        let m1 = c.bootstrap(0);
        let m2 = c.join(1, "management", &c.seeds(&[0]));
        let m3 = c.join(2, "management", &c.seeds(&[1]));
        let seeds = c.seeds(&[0, 1, 2]);
        let w4 = c.join(3, "worker", &seeds);
        let w5 = c.join(4, "worker", &seeds);
        (c, [m1, m2, m3, w4, w5])
    }

    /// Nodes 1–3 management, 4 a worker; app `web` deployed (its folder lives as
    /// long as the returned temp dir).
    fn three_managers_a_worker_and_web() -> (Cluster, String, [Up; 4], tempfile::TempDir) {
        let mut c = Cluster::new(4);
        let m1 = c.bootstrap(0);
        let admin = c.admin();
        let m2 = c.join(1, "management", &c.seeds(&[0]));
        let m3 = c.join(2, "management", &c.seeds(&[0]));
        let w4 = c.join(3, "worker", &c.seeds(&[0, 1, 2]));
        let apps = tempfile::tempdir().unwrap();
        deploy_web(&m1.server, &admin, apps.path(), "web");
        (c, admin, [m1, m2, m3, w4], apps)
    }

    fn admin(&self) -> String {
        std::fs::read_to_string(self.dirs[0].path().join("admin.token"))
            .unwrap()
            .trim()
            .to_string()
    }
}

#[test]
fn t90_three_managers_two_workers_survive_leader_loss_worker_loss_and_a_drain() {
    let (c, [m1, m2, m3, w4, w5]) = Cluster::three_managers_two_workers();
    let seeds = c.seeds(&[0, 1, 2]);
    let admin = c.admin();
    let apps = tempfile::tempdir().unwrap();
    deploy_web(&m2.server, &admin, apps.path(), "web");

    // The default scale: min(2, workers), one instance on each worker.
    eventually(Duration::from_secs(30), "web on both workers", || {
        let s = json(&m3.server, &admin, &["cluster", "status"])?;
        let p = placement(&s, "web");
        (p == vec![(4, 1, 1), (5, 1, 1)]).then_some(())
    });
    // Every node's gateway serves it: the workers' own, and the management nodes'
    // (which only route).
    for n in [&m1, &m2, &m3, &w4, &w5] {
        let r = get(&n.http, "/api/web/1");
        assert_eq!(r.status, 200, "{}: {}", n.http, r.text());
    }

    // --- Kill -9 the leader while a client writes settings continuously. ---
    deploy_web(&m2.server, &admin, apps.path(), "ledger");
    let out = cli(&m2.server, &admin, &["app", "scale", "ledger", "0"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let status = json(&m1.server, &admin, &["cluster", "status"]).unwrap();
    let leader = status["leader_id"].as_u64().unwrap();
    let mut managers = vec![Some(m1), Some(m2), Some(m3)];
    let killed = managers[(leader - 1) as usize].take().unwrap();
    let survivors: Vec<String> = managers
        .iter()
        .flatten()
        .map(|m| m.server.clone())
        .collect();
    let mut gateways: Vec<String> = managers.iter().flatten().map(|m| m.http.clone()).collect();
    gateways.extend([w4.http.clone(), w5.http.clone()]);
    let load = Load::start(&gateways, "/api/web/1");

    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let writer = {
        let (stop, acked, admin) = (stop.clone(), acked.clone(), admin.clone());
        let servers = survivors.clone();
        std::thread::spawn(move || {
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let server = &servers[i % servers.len()];
                let kv = format!("K{i}=v{i}");
                let out = cli(server, &admin, &["app", "settings", "set", "ledger", &kv]);
                if out.code == 0 {
                    acked.lock().unwrap().push(i);
                }
                i += 1;
            }
            i
        })
    };
    // Writes are being acknowledged before the kill.
    eventually(Duration::from_secs(30), "writes before the kill", || {
        (acked.lock().unwrap().len() >= 3).then_some(())
    });
    killed.kill9();
    eventually(Duration::from_secs(30), "a new leader", || {
        let s = json(&survivors[0], &admin, &["cluster", "status"])?;
        let l = s["leader_id"].as_u64()?;
        (l != 0 && l != leader).then_some(())
    });
    // Writes continue under the new leader.
    let before = acked.lock().unwrap().len();
    eventually(Duration::from_secs(30), "writes after the failover", || {
        (acked.lock().unwrap().len() >= before + 5).then_some(())
    });
    stop.store(true, Ordering::Relaxed);
    let attempted = writer.join().unwrap();
    let acked: Vec<usize> = acked.lock().unwrap().clone();
    assert!(!acked.is_empty() && attempted >= acked.len());
    // Every acknowledged write is present on every surviving node.
    for server in &survivors {
        let settings = json(server, &admin, &["app", "settings", "get", "ledger"]).unwrap();
        for i in &acked {
            assert_eq!(
                settings["settings"][format!("K{i}")],
                format!("v{i}"),
                "acknowledged write K{i} missing on {server}"
            );
        }
    }
    let (total, failed) = load.finish();
    assert!(total > 20, "the load ran ({total} requests)");
    assert!(
        failed.is_empty(),
        "requests failed during the leader failover ({} of {total}): {failed:?}",
        failed.len()
    );

    // --- Kill a worker: its apps are served by the other worker. ---
    let mgmt = survivors[0].clone();
    // `solo` runs one instance, on worker 4 (the scheduler's tie-break: lowest id).
    deploy_web(&mgmt, &admin, apps.path(), "solo");
    let out = cli(&mgmt, &admin, &["app", "scale", "solo", "1"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    eventually(Duration::from_secs(30), "solo on worker 4", || {
        let s = json(&mgmt, &admin, &["cluster", "status"])?;
        (placement(&s, "solo") == vec![(4, 1, 1)]).then_some(())
    });
    let mut gateways: Vec<String> = managers.iter().flatten().map(|m| m.http.clone()).collect();
    gateways.push(w5.http.clone());
    let load = Load::start(&gateways, "/api/web/1");
    load.wait_for(20);
    w4.kill9();
    eventually(Duration::from_secs(20), "worker 4 Down", || {
        let s = json(&mgmt, &admin, &["cluster", "status"])?;
        (worker_status(&s, 4) == "Down" && placement(&s, "web") == vec![(5, 1, 1)]).then_some(())
    });
    // Within the lease and a start: `solo` is placed on worker 5 and served.
    eventually(
        Duration::from_secs(20),
        "solo re-placed on worker 5",
        || {
            let s = json(&mgmt, &admin, &["cluster", "status"])?;
            (placement(&s, "solo") == vec![(5, 1, 1)]).then_some(())
        },
    );
    for gw in &gateways {
        let r = get(gw, "/api/solo/1");
        assert_eq!(r.status, 200, "solo through {gw}: {}", r.text());
    }
    load.wait_for(20);
    let (total, failed) = load.finish();
    // A GET already sent to the killed worker is idempotent: it is re-sent to the
    // other worker. Nothing fails (t92: a POST would get a 502).
    assert!(
        failed.is_empty(),
        "requests failed after the worker kill ({} of {total}): {failed:?}",
        failed.len()
    );

    // Restart it with its data: it is placed again, and no surplus instance remains.
    let w4 = c.join(3, "worker", &seeds);
    let status = eventually(Duration::from_secs(30), "web on both workers again", || {
        let s = json(&mgmt, &admin, &["cluster", "status"])?;
        (worker_status(&s, 4) == "Up" && placement(&s, "web") == vec![(4, 1, 1), (5, 1, 1)])
            .then_some(s)
    });
    let _ = status;
    eventually(Duration::from_secs(30), "exactly two web instances", || {
        let s = json(&mgmt, &admin, &["cluster", "status"])?;
        let web: Vec<&serde_json::Value> = s["instances"]
            .as_array()?
            .iter()
            .filter(|i| i["app_name"] == "web")
            .collect();
        let nodes: BTreeSet<u64> = web.iter().filter_map(|i| i["node_id"].as_u64()).collect();
        // `solo` stays where it was re-placed: one instance, nothing on worker 4.
        let solo: Vec<u64> = s["instances"]
            .as_array()?
            .iter()
            .filter(|i| i["app_name"] == "solo")
            .filter_map(|i| i["node_id"].as_u64())
            .collect();
        (web.len() == 2 && nodes == BTreeSet::from([4, 5]) && solo == vec![5]).then_some(())
    });

    // --- Drain a worker under load: no request fails. ---
    let mut gateways: Vec<String> = managers.iter().flatten().map(|m| m.http.clone()).collect();
    gateways.extend([w4.http.clone(), w5.http.clone()]);
    let load = Load::start(&gateways, "/api/web/1");
    let solo_load = Load::start(&gateways[..1], "/api/solo/1");
    load.wait_for(20);
    let drained = json(&mgmt, &admin, &["node", "drain", "5"]).unwrap();
    assert_eq!(drained["worker_draining"], true, "{drained}");
    eventually(Duration::from_secs(30), "web moved off worker 5", || {
        let s = json(&mgmt, &admin, &["cluster", "status"])?;
        let on5 = s["instances"].as_array()?.iter().any(|i| i["node_id"] == 5);
        (worker_status(&s, 5) == "Draining"
            && placement(&s, "web") == vec![(4, 1, 1)]
            && placement(&s, "solo") == vec![(4, 1, 1)]
            && !on5)
            .then_some(())
    });
    load.wait_for(20);
    let (total, mut failed) = load.finish();
    let (solo_total, solo_failed) = solo_load.finish();
    failed.extend(solo_failed);
    assert!(
        failed.is_empty(),
        "requests failed during the drain ({} of {}): {failed:?}",
        failed.len(),
        total + solo_total
    );
    let out = cli(&mgmt, &admin, &["node", "uncordon", "5"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    eventually(Duration::from_secs(30), "worker 5 used again", || {
        let s = json(&mgmt, &admin, &["cluster", "status"])?;
        (placement(&s, "web") == vec![(4, 1, 1), (5, 1, 1)]).then_some(())
    });
    for up in managers.into_iter().flatten().chain([w4, w5]) {
        up.stop();
    }
}

#[test]
fn t92_a_frozen_worker_costs_a_get_a_retry_and_a_post_a_502() {
    let mut c = Cluster::new(3);
    let m1 = c.bootstrap(0);
    let seeds = c.seeds(&[0]);
    let w2 = c.join(1, "worker", &seeds);
    let w3 = c.join(2, "worker", &seeds);
    let admin = c.admin();
    let apps = tempfile::tempdir().unwrap();
    deploy_web(&m1.server, &admin, apps.path(), "web");
    let out = cli(&m1.server, &admin, &["app", "scale", "web", "1"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let host = eventually(Duration::from_secs(30), "web on one worker", || {
        let s = json(&m1.server, &admin, &["cluster", "status"])?;
        match placement(&s, "web").as_slice() {
            [(node, 1, 1)] => Some(*node),
            _ => None,
        }
    });
    let (frozen, other) = if host == 2 { (&w2, 3) } else { (&w3, 2) };
    // The management node only routes: its hop connection to the worker is open.
    assert_eq!(get(&m1.http, "/api/web/1").status, 200);

    // Freeze the worker (SIGSTOP): its connections stay open and answer nothing.
    let pid = frozen.child.id().to_string();
    let signal = |sig: &str| {
        let status = std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap();
        assert!(status.success());
    };
    signal("-STOP");
    let base = m1.http.clone();
    let post = std::thread::spawn(move || {
        common::http(
            "POST",
            &base,
            "/api/web/2",
            &[("content-type", "text/plain")],
            b"x",
        )
    });
    let r = get(&m1.http, "/api/web/3");
    // The GET is re-sent once the frozen hop is given up (keepalive), to the other
    // worker as soon as it runs the app.
    assert_eq!(r.status, 200, "GET: {}", r.text());
    // The POST may have reached the frozen handler: it fails, naming the hop.
    let p = post.join().unwrap();
    assert_eq!(p.status, 502, "POST: {}", p.text());
    assert!(p.text().contains("failed after sending"), "{}", p.text());
    let s = json(&m1.server, &admin, &["cluster", "status"]).unwrap();
    assert_eq!(placement(&s, "web"), vec![(other, 1, 1)], "{s}");
    signal("-CONT");
    for up in [m1, w2, w3] {
        up.stop();
    }
}

#[test]
fn t91_quorum_loss_stops_writes_not_requests_and_membership_changes_survive_restarts() {
    let mut c = Cluster::new(6);
    let m1 = c.bootstrap(0);
    let m2 = c.join(1, "management", &c.seeds(&[0]));
    let m3 = c.join(2, "management", &c.seeds(&[0]));
    let w4 = c.join(3, "worker", &c.seeds(&[0, 1, 2]));
    let admin = c.admin();
    let apps = tempfile::tempdir().unwrap();
    deploy_web(&m1.server, &admin, apps.path(), "web");
    eventually(Duration::from_secs(30), "web served", || {
        (get(&w4.http, "/api/web/1").status == 200).then_some(())
    });
    let cluster_id =
        json(&m1.server, &admin, &["cluster", "status"]).unwrap()["cluster_id"].clone();

    // Kill 2 of 3 management nodes: writes fail clearly; requests are still served.
    m2.kill9();
    m3.kill9();
    let out = cli(
        &m1.server,
        &admin,
        &["app", "settings", "set", "web", "A=1"],
    );
    assert_eq!(out.code, 5, "unavailable: {} {}", out.stdout, out.stderr);
    assert!(out.stderr.contains("no quorum"), "{}", out.stderr);
    let out = cli(&m1.server, &admin, &["app", "list"]);
    assert_eq!(out.code, 5, "a fresh read without quorum: {}", out.stderr);
    assert!(out.stderr.contains("no quorum"), "{}", out.stderr);
    for gw in [&w4.http, &m1.http] {
        let r = get(gw, "/api/web/1");
        assert_eq!(r.status, 200, "{gw} without quorum: {}", r.text());
    }

    // Restart one: writes work again.
    let m2 = c.join(1, "management", &c.seeds(&[0]));
    eventually(Duration::from_secs(30), "writes with quorum again", || {
        (cli(
            &m1.server,
            &admin,
            &["app", "settings", "set", "web", "A=2"],
        )
        .code
            == 0)
            .then_some(())
    });

    // Add a 4th and a 5th management node, then remove the dead one.
    let m5 = c.join(4, "management", &c.seeds(&[0, 1]));
    let m6 = c.join(5, "management", &c.seeds(&[1]));
    let out = cli(&m5.server, &admin, &["cluster", "remove-member", "3"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let voters = |server: &str| -> Option<BTreeSet<u64>> {
        let members = json(server, &admin, &["cluster", "members"])?;
        Some(
            members["members"]
                .as_array()?
                .iter()
                .filter(|m| m["voter"] == true)
                .filter_map(|m| m["node_id"].as_u64())
                .collect(),
        )
    };
    let expected = BTreeSet::from([1, 2, 5, 6]);
    assert_eq!(voters(&m6.server), Some(expected.clone()));

    // Restart every management node with its data: same cluster, same members, no
    // re-initialization (the admin token still works).
    // Node 1 (started with --bootstrap) is killed, possibly while it leads, and
    // comes back with the same flags: a restart, never a new cluster.
    m1.kill9();
    let m1 = c.start(0, "management", &["--bootstrap"]);
    assert!(
        m1.stdout.iter().any(|l| l.contains("Restarted into")),
        "{:?}",
        m1.stdout
    );
    m2.stop();
    let m2 = c.join(1, "management", &c.seeds(&[0]));
    for m in [&m1, &m2, &m5, &m6] {
        let v = eventually(Duration::from_secs(30), "members after restarts", || {
            voters(&m.server)
        });
        assert_eq!(v, expected, "on {}", m.server);
        let s = json(&m.server, &admin, &["cluster", "status"]).unwrap();
        assert_eq!(s["cluster_id"], cluster_id);
    }
    let settings = json(&m6.server, &admin, &["app", "settings", "get", "web"]).unwrap();
    assert_eq!(settings["settings"]["A"], "2");
    assert_eq!(get(&w4.http, "/api/web/1").status, 200);
    for up in [m1, m2, m5, m6, w4] {
        up.stop();
    }
}

/// One line of the test handler's `TEST_HANDLER_RECORD` file.
#[derive(Debug, Clone)]
struct Event {
    start: bool,
    id: String,
    pid: u64,
    at_ms: u64,
    /// Start lines: the tick (`ScheduleStatus.Next`) and `IsPastDue`.
    tick: String,
    past_due: bool,
}

fn read_events(path: &Path) -> Vec<Event> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut events: Vec<Event> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| Event {
            start: v["event"] == "start",
            id: v["invocationId"].as_str().unwrap_or("").to_string(),
            pid: v["pid"].as_u64().unwrap_or(0),
            at_ms: v["atMs"].as_u64().unwrap_or(0),
            tick: v["data"]["t"]["ScheduleStatus"]["Next"]
                .as_str()
                .unwrap_or("")
                .to_string(),
            past_due: v["data"]["t"]["IsPastDue"] == true,
        })
        .collect();
    events.sort_by_key(|e| (e.at_ms, e.start));
    events
}

/// The timer rules over a handler's record: one invocation id per tick (a tick
/// sent again keeps its id), no two runs of different ticks at once, and
/// consecutive ticks `period_ms` apart unless the earlier run was past due (the
/// ticks of an outage collapse into it). Returns the ticks, in order.
fn check_ticks(events: &[Event], period_ms: i64) -> Vec<(i64, bool)> {
    use std::collections::BTreeMap;
    let mut by_tick: BTreeMap<i64, (String, bool)> = BTreeMap::new();
    let mut active: Vec<(String, u64)> = Vec::new();
    for e in events {
        if e.start {
            // A start of the same id again is a re-dispatch: the earlier one was lost.
            active.retain(|(id, _)| *id != e.id);
            assert!(
                active.is_empty(),
                "run {} started at {} while {active:?} still ran",
                e.id,
                e.at_ms
            );
            active.push((e.id.clone(), e.pid));
            let tick = chrono_ms(&e.tick);
            let known = by_tick.entry(tick).or_insert((e.id.clone(), e.past_due));
            assert_eq!(known.0, e.id, "tick {} ran with two invocation ids", e.tick);
        } else {
            active.retain(|(id, pid)| !(*id == e.id && *pid == e.pid));
        }
    }
    let ticks: Vec<(i64, bool)> = by_tick.iter().map(|(t, (_, p))| (*t, *p)).collect();
    for pair in ticks.windows(2) {
        let ((a, past_due), (b, _)) = (pair[0], pair[1]);
        assert!(
            b - a == period_ms || (past_due && b - a > period_ms),
            "ticks {a} and {b}: {} ms apart, and the run of {a} was not past due (ticks {ticks:?})",
            b - a
        );
    }
    ticks
}

/// Wait until `n` more runs have ended (on any worker) than have now.
fn more_runs_end(record: &Path, n: usize) {
    let ended = || read_events(record).iter().filter(|e| !e.start).count();
    let target = ended() + n;
    eventually(Duration::from_secs(30), "more timer runs ending", || {
        (ended() >= target).then_some(())
    });
}

/// RFC 3339 → Unix ms.
fn chrono_ms(s: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("tick `{s}`: {e}"))
        .timestamp_millis()
}

#[test]
fn t93_a_two_second_timer_runs_every_tick_once_through_leader_worker_and_quorum_loss() {
    let (c, [m1, m2, m3, w4, w5]) = Cluster::three_managers_two_workers();
    let seeds = c.seeds(&[0, 1, 2]);
    let admin = c.admin();
    let apps = tempfile::tempdir().unwrap();
    let record = apps.path().join("ticks.jsonl");
    let app = apps.path().join("ticks");
    // Every 2 s, runs of 1.2 s (a worker killed at a random moment likely cuts
    // one off); missed ticks are caught up (useMonitor).
    write_app(
        &app,
        &common::test_handler_host(""),
        &[(
            "tick",
            r#"{"bindings":[{"type":"timerTrigger","direction":"in","name":"t","schedule":"*/2 * * * * *","useMonitor":true}]}"#,
        )],
    );
    let settings = serde_json::json!({"Values": {
        "TEST_HANDLER_RECORD": record.to_str().unwrap(),
        "TEST_HANDLER_ACTION": "sleep=1200",
    }});
    deploy_with_settings(&m2.server, &admin, &app, &settings);
    eventually(Duration::from_secs(30), "the first ticks", || {
        (read_events(&record).iter().filter(|e| !e.start).count() >= 2).then_some(())
    });

    let leader = |servers: &[&str]| -> u64 {
        eventually(Duration::from_secs(30), "a leader", || {
            servers.iter().find_map(|s| {
                json(s, &admin, &["cluster", "status"])?["leader_id"]
                    .as_u64()
                    .filter(|l| *l != 0)
            })
        })
    };
    let mut managers = vec![Some(m1), Some(m2), Some(m3)];
    // Kill the leader twice (the first one comes back in between).
    for round in 0..2 {
        more_runs_end(&record, 2);
        let servers: Vec<String> = managers
            .iter()
            .flatten()
            .map(|m| m.server.clone())
            .collect();
        let refs: Vec<&str> = servers.iter().map(String::as_str).collect();
        let old = leader(&refs);
        managers[(old - 1) as usize].take().unwrap().kill9();
        let survivors: Vec<String> = managers
            .iter()
            .flatten()
            .map(|m| m.server.clone())
            .collect();
        let refs: Vec<&str> = survivors.iter().map(String::as_str).collect();
        eventually(Duration::from_secs(30), "a new leader", || {
            (leader(&refs) != old).then_some(())
        });
        if round == 0 {
            // The new leader runs ticks before the old one comes back.
            more_runs_end(&record, 2);
            let i = (old - 1) as usize;
            managers[i] = Some(c.join(i, "management", &seeds));
        }
    }
    // Kill the worker while it runs a tick: the run is sent to the other worker
    // with the same invocation id.
    let mgmt = managers.iter().flatten().next().unwrap().server.clone();
    let victim_node = eventually(Duration::from_secs(30), "a run going on", || {
        let events = read_events(&record);
        let last = events.last()?;
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_millis() as u64;
        if !last.start || now_ms.saturating_sub(last.at_ms) > 300 {
            std::thread::sleep(Duration::from_millis(20));
            return None;
        }
        let status = json(&mgmt, &admin, &["cluster", "status"])?;
        status["instances"]
            .as_array()?
            .iter()
            .find(|i| i["pid"].as_u64() == Some(last.pid))?["node_id"]
            .as_u64()
    });
    let (victim, survivor) = if victim_node == 5 { (w5, w4) } else { (w4, w5) };
    victim.kill9();
    // The cut-off run is sent again and ends on the survivor, and the next one.
    more_runs_end(&record, 2);

    // No quorum for a while (two managers stopped): the ticks it missed run as one
    // past-due run once a leader is back.
    let up: Vec<usize> = (0..3).filter(|i| managers[*i].is_some()).collect();
    for i in &up[..2] {
        managers[*i].take().unwrap().kill9();
    }
    // The outage itself: long enough for several 2 s ticks to be missed.
    std::thread::sleep(Duration::from_secs(7));
    for i in &up[..2] {
        managers[*i] = Some(c.join(*i, "management", &seeds));
    }
    let servers: Vec<String> = managers
        .iter()
        .flatten()
        .map(|m| m.server.clone())
        .collect();
    let refs: Vec<&str> = servers.iter().map(String::as_str).collect();
    leader(&refs);
    let resumed = read_events(&record).len();
    eventually(
        Duration::from_secs(60),
        "ticks after the outage, 40 s in all",
        || {
            let events = read_events(&record);
            let span = events.last()?.at_ms - events.first()?.at_ms;
            (events.len() >= resumed + 6 && span >= 40_000).then_some(())
        },
    );
    let status = json(&servers[0], &admin, &["fn", "list", "ticks"]);
    for up in managers.into_iter().flatten().chain([survivor]) {
        up.stop();
    }

    let events = read_events(&record);
    let ticks = check_ticks(&events, 2000);
    let starts = events.iter().filter(|e| e.start).count();
    eprintln!(
        "{} ticks, {} past due, {} runs sent again after a worker loss: {ticks:?}",
        ticks.len(),
        ticks.iter().filter(|(_, p)| *p).count(),
        starts - ticks.len()
    );
    assert!(ticks.len() >= 15, "{} ticks ran: {ticks:?}", ticks.len());
    assert!(
        starts > ticks.len(),
        "the run cut off with its worker was sent again (same id)"
    );
    assert!(
        ticks.iter().any(|(_, past_due)| *past_due),
        "the ticks missed without a quorum ran as one past-due run: {ticks:?}"
    );
    // The timer's status is shown (its last run and next tick).
    let status = status.expect("fn list --output json");
    let timer = &status["functions"][0]["timer"];
    assert!(timer["next_ms"].as_i64().unwrap_or(0) > 0, "{status}");
    assert!(timer["last_run"]["succeeded"] == true, "{status}");
}

/// A key's status on every gateway: the function called with `?code=`.
fn key_status(gateways: &[String], code: &str) -> Vec<u16> {
    gateways
        .iter()
        .map(|g| get(g, &format!("/api/keyed/1?code={code}")).status)
        .collect()
}

/// Until every gateway answers `want` with this key (at most a second: the
/// key management API's promise once a write is answered).
fn within_a_second(gateways: &[String], code: &str, want: u16, what: &str) {
    eventually(Duration::from_secs(1), what, || {
        key_status(gateways, code)
            .iter()
            .all(|s| *s == want)
            .then_some(())
    });
}

#[test]
fn t94_the_key_management_api_on_any_node_changes_keys_on_every_node() {
    let (c, [m1, m2, m3, w4, w5]) = Cluster::three_managers_two_workers();
    let admin = c.admin();
    let apps = tempfile::tempdir().unwrap();
    let app = apps.path().join("keyed");
    write_app(
        &app,
        &common::test_handler_host(""),
        &[(
            "keyed",
            r#"{"bindings":[{"type":"httpTrigger","direction":"in","name":"req","authLevel":"function","route":"keyed/{id:int}"},{"type":"http","direction":"out","name":"res"}]}"#,
        )],
    );
    let out = cli(
        &m2.server,
        &admin,
        &["app", "deploy", app.to_str().unwrap()],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let keys = json(&m1.server, &admin, &["app", "keys", "keyed"]).unwrap();
    let master = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["scope"] == "master")
        .unwrap()["value"]
        .as_str()
        .unwrap()
        .to_string();
    let gateways: Vec<String> = [&m1, &m2, &m3, &w4, &w5]
        .iter()
        .map(|n| n.http.clone())
        .collect();
    eventually(Duration::from_secs(30), "keyed served everywhere", || {
        let r = get(&w4.http, &format!("/api/keyed/1?code={master}"));
        (r.status == 200).then_some(())
    });
    let with_master = [("x-functions-key", master.as_str())];
    let body = |v: &str| format!(r#"{{"name":"ci","value":"{v}"}}"#);

    // Created through a worker-only node (its gateway proposes to the managers).
    let first = "ci-first-value-0123456789";
    let r = common::http(
        "PUT",
        &w4.http,
        "/admin/functions/keyed/keys/ci",
        &with_master,
        body(first).as_bytes(),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["value"], first);
    within_a_second(&gateways, first, 200, "the new key works everywhere");

    // Rotated through a follower's function port: the old value stops working.
    let second = "ci-second-value-0123456789";
    let r = common::http(
        "PUT",
        &m3.http,
        "/admin/functions/keyed/keys/ci",
        &with_master,
        body(second).as_bytes(),
    );
    assert_eq!(r.status, 200, "replaced: {}", r.text());
    within_a_second(&gateways, first, 401, "the old value is refused everywhere");
    within_a_second(&gateways, second, 200, "the new value works everywhere");

    // Listed on another worker; deleted with the admin token on a manager.
    let r = common::http(
        "GET",
        &w5.http,
        "/admin/functions/keyed/keys",
        &with_master,
        b"",
    );
    assert_eq!(r.status, 200);
    assert!(
        r.json()["keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["name"] == "ci" && k["value"] == second),
        "{}",
        r.text()
    );
    let bearer = format!("Bearer {admin}");
    let r = common::http(
        "DELETE",
        &m1.http,
        "/admin/functions/keyed/keys/ci",
        &[("authorization", bearer.as_str())],
        b"",
    );
    assert_eq!(r.status, 204, "{}", r.text());
    within_a_second(
        &gateways,
        second,
        401,
        "the deleted key is refused everywhere",
    );
    // A worker cannot check the admin token; a wrong key changes nothing.
    let r = common::http(
        "DELETE",
        &w4.http,
        "/admin/host/keys/default",
        &[("authorization", bearer.as_str())],
        b"",
    );
    assert_eq!(r.status, 401, "{}", r.text());
    let r = common::http(
        "DELETE",
        &m2.http,
        "/admin/host/keys/default",
        &[("x-functions-key", "not-the-master-key-000")],
        b"",
    );
    assert_eq!(r.status, 401);
    let r = common::http(
        "PUT",
        &w5.http,
        "/admin/host/keys/bad%20name",
        &with_master,
        br#"{"value":"a-good-value-0123456789"}"#,
    );
    assert_eq!(r.status, 400, "{}", r.text());
    let host = json(&m2.server, &admin, &["app", "keys", "keyed"]).unwrap();
    assert!(
        host["keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["scope"] == "host" && k["name"] == "default"),
        "{host}"
    );
    for n in [m1, m2, m3, w4, w5] {
        n.stop();
    }
}

/// A process killed (and reaped) when the test ends, however it ends.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Copy a directory tree (a node's data dir, after the node is gone).
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Empty a directory (a node's data dir destroyed).
fn destroy(dir: &Path) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            std::fs::remove_dir_all(&path).unwrap();
        } else {
            std::fs::remove_file(&path).unwrap();
        }
    }
}

#[test]
fn t96_a_cluster_comes_back_from_a_checkpoint_after_every_node_is_lost() {
    let store_dir = tempfile::tempdir().unwrap();
    let store_path = store_dir.path().join("store");
    let store = format!("local:{}", store_path.display());
    // 0: the first manager, 1: its worker; 2–4: the cluster restored (a manager
    // from the checkpoint, a second manager and a worker joining it).
    let mut c = Cluster::new(5);
    let m1 = c.start(
        0,
        "management",
        &[
            "--bootstrap",
            "--checkpoint-store",
            &store,
            "--checkpoint-every",
            "1h",
        ],
    );
    c.token = std::fs::read_to_string(c.dirs[0].path().join("join.token"))
        .unwrap()
        .trim()
        .to_string();
    let admin = c.admin();
    let w2 = c.join(1, "worker", &c.seeds(&[0]));

    // An HTTP app with a setting and a key of its own; a 3 s timer recording runs.
    let apps = tempfile::tempdir().unwrap();
    let web = apps.path().join("web");
    write_app(
        &web,
        &common::test_handler_host(""),
        &[("hello", &common::http_fn("web/{id:int}"))],
    );
    let record = apps.path().join("ticks.jsonl");
    let ticks = apps.path().join("ticks");
    write_app(
        &ticks,
        &common::test_handler_host(""),
        &[(
            "tick",
            r#"{"bindings":[{"type":"timerTrigger","direction":"in","name":"t","schedule":"*/3 * * * * *","useMonitor":true}]}"#,
        )],
    );
    let settings = serde_json::json!({"Values": {
        "TEST_HANDLER_RECORD": record.to_str().unwrap(),
        "TEST_HANDLER_ACTION": "sleep=200",
    }});
    std::fs::write(ticks.join("local.settings.json"), settings.to_string()).unwrap();
    for args in [
        vec!["app", "deploy", web.to_str().unwrap()],
        vec![
            "app",
            "deploy",
            ticks.to_str().unwrap(),
            "--publish-local-settings",
        ],
        vec!["app", "settings", "set", "web", "GREETING=hello"],
        vec![
            "fn",
            "set-key",
            "web",
            "hello",
            "ops",
            "--value",
            "ops-key-0123456789abcdef",
        ],
    ] {
        let out = cli(&m1.server, &admin, &args);
        assert_eq!(out.code, 0, "{args:?}: {}", out.stderr);
    }
    let serves = |http: &str| {
        eventually(Duration::from_secs(30), "web serves with its key", || {
            (get(http, "/api/web/1?code=ops-key-0123456789abcdef").status == 200).then_some(())
        })
    };
    serves(&m1.http);
    more_runs_end(&record, 2);

    // Just after a run ended (well before the next tick): a checkpoint, a change,
    // a second checkpoint; then every node is lost.
    eventually(Duration::from_secs(30), "a run just ended", || {
        let events = read_events(&record);
        let last = events.last()?;
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_millis() as u64;
        if last.start || now_ms.saturating_sub(last.at_ms) > 300 {
            std::thread::sleep(Duration::from_millis(20));
            return None;
        }
        Some(())
    });
    let first = json(&m1.server, &admin, &["cluster", "checkpoint"]).expect("checkpoint");
    let first_id = first["checkpoint"]["id"].as_str().unwrap().to_string();
    let out = cli(
        &m1.server,
        &admin,
        &["app", "settings", "set", "web", "AFTER=first"],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let second = json(&m1.server, &admin, &["cluster", "checkpoint"]).expect("checkpoint");
    let second_id = second["checkpoint"]["id"].as_str().unwrap().to_string();
    assert_ne!(first_id, second_id);
    assert!(
        second["checkpoint"]["packages"].as_u64() == Some(2),
        "{second}"
    );
    let status = json(&m1.server, &admin, &["cluster", "status"]).unwrap();
    assert_eq!(
        status["checkpoint"]["last"]["id"],
        second_id.as_str(),
        "{status}"
    );
    m1.kill9();
    w2.kill9();
    strom_actors::runtime::process::reap_orphans(&c.dirs[1].path().join("run").join("instances"));
    let old_node = tempfile::tempdir().unwrap();
    copy_tree(c.dirs[0].path(), old_node.path());
    destroy(c.dirs[0].path());
    destroy(c.dirs[1].path());
    // Long enough for a tick to be missed.
    std::thread::sleep(Duration::from_secs(3));

    // The newest checkpoint is damaged: the restore says so and uses the one before.
    let state = store_path
        .join("checkpoints")
        .join(format!("{second_id}.state"));
    let mut bytes = std::fs::read(&state).unwrap();
    bytes[10] ^= 0xff;
    std::fs::write(&state, bytes).unwrap();
    let restore = |dir: &Path, extra: &[&str]| {
        let out = std::process::Command::new(common::STROM)
            .args(["cluster", "restore", "--from", &store, "--data-dir"])
            .arg(dir)
            .args(["--node-id", "1", "--advertise-addr"])
            .arg(format!("127.0.0.1:{}", c.ports[2]))
            .args(extra)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // Into a data dir that is not empty: refused, nothing changed.
    let (code, _, err) = restore(old_node.path(), &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("is not empty"), "{err}");
    assert!(old_node.path().join("raft").join("log.redb").is_file());
    let (code, out, err) = restore(c.dirs[2].path(), &[]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains(&first_id), "{out}");
    assert!(
        err.contains(&format!("skipped checkpoint {second_id}")) && err.contains("corrupt"),
        "{err}"
    );

    // The restored manager starts; a second manager and a worker join it with the
    // new join token. The admin token is the cluster's own.
    let m1b = Up::serve(
        c.dirs[2].path(),
        c.ports[2],
        &[
            "--node-id",
            "1",
            "--worker-lease-ms",
            "2000",
            "--checkpoint-store",
            &store,
            "--checkpoint-every",
            "2s",
        ],
    );
    c.token = std::fs::read_to_string(c.dirs[2].path().join("join.token"))
        .unwrap()
        .trim()
        .to_string();
    let seed = c.seeds(&[2]);
    let m2b = c.start(
        3,
        "management",
        &[
            "--join",
            &seed,
            "--join-token",
            &c.token,
            "--checkpoint-store",
            &store,
            "--checkpoint-every",
            "2s",
        ],
    );
    let w3b = c.join(4, "worker", &c.seeds(&[2, 3]));
    serves(&m2b.http);
    serves(&m1b.http);
    let settings = json(&m2b.server, &admin, &["app", "settings", "get", "web"]).unwrap();
    assert_eq!(settings["settings"]["GREETING"], "hello", "{settings}");
    assert!(
        settings["settings"].get("AFTER").is_none(),
        "the damaged checkpoint was not used: {settings}"
    );
    // Timers go on: every tick once (the ones missed while no node ran late, or
    // as one past-due run), none twice.
    more_runs_end(&record, 3);
    let ticks = check_ticks(&read_events(&record), 3000);
    assert!(ticks.len() >= 5, "{ticks:?}");

    // The restored cluster checkpoints in a later term.
    let newest = eventually(
        Duration::from_secs(30),
        "a checkpoint of the restored cluster",
        || {
            let s = json(&m2b.server, &admin, &["cluster", "status"])?;
            let last = &s["checkpoint"]["last"];
            (last["term"].as_u64()? > second["checkpoint"]["term"].as_u64()?)
                .then(|| last["id"].as_str().unwrap().to_string())
        },
    );

    // The store goes away (a file where its folder was): writes and serving go
    // on; the status names the error; once it is back, checkpoints resume.
    let away = store_dir.path().join("away");
    std::fs::rename(&store_path, &away).unwrap();
    std::fs::write(&store_path, "not a folder").unwrap();
    for i in 0..5 {
        let out = cli(
            &m2b.server,
            &admin,
            &["app", "settings", "set", "web", &format!("DURING={i}")],
        );
        assert_eq!(
            out.code, 0,
            "a write while the store is away: {}",
            out.stderr
        );
        assert_eq!(
            get(&m1b.http, "/api/web/1?code=ops-key-0123456789abcdef").status,
            200
        );
    }
    eventually(
        Duration::from_secs(30),
        "the store's error in the status",
        || {
            let s = json(&m1b.server, &admin, &["cluster", "status"])?;
            s["checkpoint"]["last_error"].as_str().map(str::to_string)
        },
    );
    let out = cli(&m1b.server, &admin, &["cluster", "checkpoint"]);
    assert_ne!(out.code, 0, "no checkpoint without a store");
    std::fs::remove_file(&store_path).unwrap();
    std::fs::rename(&away, &store_path).unwrap();
    eventually(Duration::from_secs(60), "checkpoints again", || {
        let s = json(&m1b.server, &admin, &["cluster", "status"])?;
        let c = &s["checkpoint"];
        (c["last"]["id"] != newest.as_str() && c["last_error"].is_null()).then_some(())
    });

    // Leadership moves (node 1 drained): the new leader (node 4) goes on
    // checkpointing from the store's newest.
    let before = json(&m2b.server, &admin, &["cluster", "status"]).unwrap()["checkpoint"]["last"]
        ["id"]
        .as_str()
        .unwrap()
        .to_string();
    let drained = cli(
        &m2b.server,
        &admin,
        &["node", "drain", "1", "--output", "json"],
    );
    assert_eq!(drained.code, 0, "{}\n{}", drained.stdout, drained.stderr);
    let drained: serde_json::Value = serde_json::from_str(&drained.stdout).unwrap();
    assert_eq!(drained["leader_id"], 4, "{drained}");
    let out = cli(
        &m2b.server,
        &admin,
        &["app", "settings", "set", "web", "LEADER=4"],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    eventually(
        Duration::from_secs(30),
        "a checkpoint by the new leader",
        || {
            let s = json(&m1b.server, &admin, &["cluster", "status"])?;
            let c = &s["checkpoint"];
            (c["node_id"] == 4 && c["last"]["id"] != before.as_str()).then_some(())
        },
    );

    // A node of the lost cluster comes back (its old data dir): it leads its old
    // group again, but its checkpoint is older than the restored cluster's, and
    // refused.
    let old = Up::serve(
        old_node.path(),
        free_port(),
        &["--node-id", "1", "--checkpoint-store", &store],
    );
    let out = cli(&old.server, &admin, &["cluster", "checkpoint"]);
    assert_ne!(out.code, 0, "{}", out.stdout);
    assert!(out.stderr.contains("not newer"), "{}", out.stderr);
    old.kill9();
    strom_actors::runtime::process::reap_orphans(&old_node.path().join("run").join("instances"));
    for up in [m1b, m2b, w3b] {
        up.stop();
    }
}

/// Wait until `base`'s `/readyz` answers 503 with `check` saying `says`.
fn not_ready_because(base: &str, check: &str, says: &str, within: Duration, what: &str) {
    let body = eventually(within, what, || {
        let (status, body) = readyz(base);
        (status == 503).then_some(body)
    });
    let detail = body["checks"][check]["detail"].as_str().unwrap_or_default();
    assert!(detail.contains(says), "{body}");
}

/// `/readyz` of a port: (status, body).
fn readyz(base: &str) -> (u16, serde_json::Value) {
    let r = get(base, "/readyz");
    (
        r.status,
        serde_json::from_str(&r.text()).unwrap_or_default(),
    )
}

#[test]
fn t97_readiness_follows_the_leader_the_workers_and_a_stop() {
    let mut c = Cluster::new(4);
    let m1 = c.bootstrap(0);
    let admin = c.admin();
    let m2 = c.join(1, "management", &c.seeds(&[0]));
    let m3 = c.start(
        2,
        "management",
        &[
            "--join",
            &c.seeds(&[0]),
            "--join-token",
            &c.token,
            "--shutdown-delay-secs",
            "4",
        ],
    );
    let w4 = c.join(3, "worker", &c.seeds(&[0, 1, 2]));
    let apps = tempfile::tempdir().unwrap();
    deploy_web(&m1.server, &admin, apps.path(), "web");

    // Everyone ready: the control ports (management), the function ports
    // (gateway, and the worker's lease); alive without a key.
    for m in [&m1, &m2, &m3] {
        let (status, body) = readyz(&m.server);
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["checks"]["management"]["ready"], true, "{body}");
        assert_eq!(get(&m.server, "/healthz").status, 200);
    }
    eventually(
        Duration::from_secs(30),
        "the worker's gateway ready",
        || {
            let (status, body) = readyz(&w4.http);
            (status == 200 && body["checks"]["worker"]["ready"] == true).then_some(())
        },
    );
    eventually(Duration::from_secs(30), "m1's gateway routes web", || {
        let (status, body) = readyz(&m1.http);
        (status == 200
            && body["checks"]["gateway"]["detail"]
                .as_str()?
                .contains("routes 1 app"))
        .then_some(())
    });

    // A worker drained for a planned stop turns not-ready (a load balancer
    // stops sending to it), and ready again when uncordoned.
    let out = cli(&m1.server, &admin, &["node", "drain", "4"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    not_ready_because(
        &w4.http,
        "gateway",
        "draining",
        Duration::from_secs(30),
        "w4 not ready while draining",
    );
    let out = cli(&m1.server, &admin, &["node", "uncordon", "4"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    eventually(Duration::from_secs(30), "w4 ready again", || {
        (readyz(&w4.http).0 == 200).then_some(())
    });

    // The only worker is lost: gateways say which app they cannot reach.
    w4.kill9();
    strom_actors::runtime::process::reap_orphans(&c.dirs[3].path().join("run").join("instances"));
    not_ready_because(
        &m1.http,
        "gateway",
        "web",
        Duration::from_secs(30),
        "m1's gateway not ready",
    );
    assert_eq!(get(&m1.http, "/healthz").status, 200, "alive all the same");

    // A stopping node is not ready for its shutdown delay while it still answers.
    let pid = m3.child.id().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    not_ready_because(
        &m3.server,
        "node",
        "stopping",
        Duration::from_secs(3),
        "m3 not ready while stopping",
    );
    assert_eq!(get(&m3.server, "/healthz").status, 200, "still answering");
    let out = cli(
        &m1.server,
        &admin,
        &["app", "settings", "set", "web", "DURING=stop"],
    );
    assert_eq!(out.code, 0, "writes go on meanwhile: {}", out.stderr);
    m3.stop();

    // Two of three managers gone: the last has no leader, and says so.
    m2.kill9();
    // ("no known leader", or "no known quorum" if it was the leader)
    not_ready_because(
        &m1.server,
        "management",
        "no known",
        Duration::from_secs(30),
        "m1 without a leader",
    );
    m1.kill9();
}

#[test]
fn t98_a_new_clusters_admin_token_exists_before_its_control_port_opens() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _child = Killed(
        std::process::Command::new(common::STROM)
            .args(["serve", "--bootstrap", "--node-id", "1", "--data-dir"])
            .arg(dir.path())
            .args(["--control-addr", &format!("127.0.0.1:{port}")])
            .args(["--http-addr", "127.0.0.1:0"])
            .env("STROM_SHUTDOWN_DELAY_SECS", "0")
            .env("STROM_LOG", "error")
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            // The moment the port opens, a script can use the CLI.
            let token = std::fs::read_to_string(dir.path().join("admin.token")).unwrap();
            assert!(!token.trim().is_empty());
            let out = common::cli(
                &format!("http://127.0.0.1:{port}"),
                &["cluster", "status"],
                &["--data-dir", dir.path().to_str().unwrap()],
            );
            assert_eq!(out.code, 0, "{}", out.stderr);
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the port never opened"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn t99_fn_logs_through_any_manager_shows_every_workers_invocations() {
    let (c, [m1, m2, m3, w4, w5]) = Cluster::three_managers_two_workers();
    let admin = c.admin();
    let apps = tempfile::tempdir().unwrap();
    deploy_web(&m2.server, &admin, apps.path(), "web");
    let out = cli(&m1.server, &admin, &["app", "scale", "web", "2"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    // Each worker serves its own calls (a Ready instance here): records on both.
    // (A 200 alone does not say so: a worker without a Ready instance hops.)
    eventually(
        Duration::from_secs(30),
        "a Ready instance on each worker",
        || {
            let s = json(&m1.server, &admin, &["cluster", "status"])?;
            (placement(&s, "web") == vec![(4, 1, 1), (5, 1, 1)]).then_some(())
        },
    );
    for w in [&w4, &w5] {
        eventually(Duration::from_secs(30), "web served on each worker", || {
            (get(&w.http, "/api/web/0").status == 200).then_some(())
        });
    }
    for i in 1..=3 {
        for w in [&w4, &w5] {
            assert_eq!(get(&w.http, &format!("/api/web/{i}")).status, 200);
        }
    }
    let logs = |server: &str, extra: &[&str]| -> (Vec<serde_json::Value>, String) {
        let mut args = vec!["fn", "logs", "web", "--tail", "100", "--output", "json"];
        args.extend(extra);
        let out = cli(server, &admin, &args);
        assert_eq!(out.code, 0, "{args:?}: {}", out.stderr);
        let records = out
            .stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        (records, out.stderr)
    };
    // Through a management-only node: both workers' records, in time order (the
    // records are written when each call's output grace ends: wait for all).
    let records = eventually(Duration::from_secs(15), "every record", || {
        let (r, _) = logs(&m1.server, &[]);
        (r.len() >= 8).then_some(r)
    });
    let nodes: BTreeSet<u64> = records
        .iter()
        .map(|r| r["node_id"].as_u64().unwrap())
        .collect();
    assert_eq!(nodes, BTreeSet::from([4, 5]), "{records:?}");
    let times: Vec<i64> = records
        .iter()
        .map(|r| r["started_at_ms"].as_i64().unwrap())
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "in order: {times:?}"
    );
    // Filters: one node, one invocation, a status, a time.
    let (only4, _) = logs(&m3.server, &["--node", "4"]);
    assert!(!only4.is_empty() && only4.iter().all(|r| r["node_id"] == 4));
    let id = records[0]["id"].as_str().unwrap();
    let (one, _) = logs(&m2.server, &["--invocation", id]);
    assert_eq!(one.len(), 1, "{one:?}");
    assert_eq!(one[0]["id"], id);
    let (failed, _) = logs(&m1.server, &["--status", "failed"]);
    assert!(failed.is_empty(), "{failed:?}");
    let (recent, _) = logs(&m1.server, &["--since", "1h"]);
    assert_eq!(recent.len(), records.len());
    let out = cli(
        &m1.server,
        &admin,
        &["fn", "logs", "web", "--status", "maybe"],
    );
    assert_eq!(out.code, 2, "{}", out.stderr);

    // A client cannot ask a worker for its records (nodes only).
    let r = get(&w4.http, "/.strom/invocations?app=web");
    assert_eq!(r.status, 404, "{}", r.text());
    // A worker that is gone is named; the others' records still come.
    w5.kill9();
    strom_actors::runtime::process::reap_orphans(&c.dirs[4].path().join("run").join("instances"));
    let (rest, stderr) = logs(&m1.server, &[]);
    assert!(stderr.contains("node 5"), "{stderr}");
    assert!(rest.iter().all(|r| r["node_id"] == 4), "{rest:?}");
    assert!(!rest.is_empty());
    for up in [m1, m2, m3, w4] {
        up.stop();
    }
}

#[test]
fn t100_a_worker_cut_off_from_every_manager_logs_it_once_not_every_retry() {
    let mut c = Cluster::new(2);
    let m1 = c.bootstrap(0);
    let http = free_port();
    let log = c.dirs[1].path().join("stderr.log");
    let _worker = Killed(
        std::process::Command::new(common::STROM)
            .args(["serve", "--node-id", "2", "--roles", "worker", "--join"])
            .arg(c.url(0))
            .args(["--join-token", &c.token, "--data-dir"])
            .arg(c.dirs[1].path().join("data"))
            .args(["--http-addr", &format!("127.0.0.1:{http}")])
            .env("STROM_SHUTDOWN_DELAY_SECS", "0")
            .env_remove("STROM_LOG")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let base = format!("http://127.0.0.1:{http}");
    eventually(Duration::from_secs(30), "the worker ready", || {
        (common::try_get(&base, "/readyz").is_ok_and(|r| r.status == 200)).then_some(())
    });
    m1.kill9();
    // Several seconds of retries (every 500 ms) without a management node.
    std::thread::sleep(Duration::from_secs(5));
    let text = std::fs::read_to_string(&log).unwrap();
    let lines = text.lines().filter(|l| l.contains("state watch")).count();
    assert!(
        (1..=2).contains(&lines),
        "{lines} state-watch lines:\n{text}"
    );
    // Every line says which node wrote it.
    assert!(
        text.lines()
            .filter(|l| l.contains("state watch"))
            .all(|l| l.starts_with("node=2 ")),
        "{text}"
    );
}

/// One authenticated scrape of `/metrics` on a port, parsed strictly and checked
/// by promtool.
fn scrape(base: &str, token: &str) -> strom_testkit::prometheus::Scrape {
    let r = common::http(
        "GET",
        base,
        "/metrics",
        &[("Authorization", &format!("Bearer {token}"))],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let text = r.text();
    strom_testkit::prometheus::promtool(&["check", "metrics"], text.as_bytes())
        .unwrap_or_else(|e| panic!("{e}\n{text}"));
    strom_testkit::prometheus::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

#[test]
fn t101_metrics_need_a_token_parse_and_move_with_invocations_restarts_and_leader_changes() {
    let (c, admin, [m1, m2, m3, w4], _apps) = Cluster::three_managers_a_worker_and_web();

    // Every node keeps the same read-only token, owner-only; it is never printed.
    let token = std::fs::read_to_string(c.dirs[0].path().join("metrics.token")).unwrap();
    let token = token.trim();
    for d in &c.dirs {
        let path = d.path().join("metrics.token");
        assert_eq!(std::fs::read_to_string(&path).unwrap().trim(), token);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", path.display());
        }
    }
    for up in [&m1, &m2, &m3, &w4] {
        assert!(up.stdout.iter().all(|l| !l.contains(token)));
    }
    // No token, a wrong one, a client's key: refused on both ports.
    for (base, headers) in [
        (&m1.server, vec![]),
        (&w4.http, vec![]),
        (
            &m1.server,
            vec![("Authorization", "Bearer strom-metrics-wrong")],
        ),
        (&w4.http, vec![("x-functions-key", "anything")]),
    ] {
        let r = common::http("GET", base, "/metrics", &headers, b"");
        assert_eq!(r.status, 401, "{base} {headers:?}: {}", r.text());
        assert!(r.header("www-authenticate").is_some());
    }
    // The admin token reads too, where the node can check it.
    let r = common::http(
        "GET",
        &m1.server,
        "/metrics",
        &[("Authorization", &format!("Bearer {admin}"))],
        b"",
    );
    assert_eq!(r.status, 200);

    // Invocations on the worker count there, by app, function, trigger, status.
    eventually(Duration::from_secs(30), "web served on the worker", || {
        (get(&w4.http, "/api/web/0").status == 200).then_some(())
    });
    let invocations = |s: &strom_testkit::prometheus::Scrape, status: &str| {
        s.sum(
            "strom_invocations_total",
            &[
                ("app", "web"),
                ("function", "hello"),
                ("trigger", "http"),
                ("status", status),
            ],
        )
        .unwrap_or(0.0)
    };
    // (Records, and so metrics, are written after each call's output grace.)
    let before = eventually(Duration::from_secs(10), "the first call counted", || {
        let s = scrape(&w4.http, token);
        (invocations(&s, "succeeded") >= 1.0).then_some(s)
    });
    for i in 1..=3 {
        assert_eq!(get(&w4.http, &format!("/api/web/{i}")).status, 200);
    }
    let after = eventually(Duration::from_secs(10), "3 more invocations", || {
        let s = scrape(&w4.http, token);
        (invocations(&s, "succeeded") >= invocations(&before, "succeeded") + 3.0).then_some(s)
    });
    assert_eq!(
        invocations(&after, "succeeded"),
        invocations(&before, "succeeded") + 3.0
    );
    let count = |s: &strom_testkit::prometheus::Scrape, name: &str| {
        s.sum(name, &[("app", "web")]).unwrap_or(0.0)
    };
    assert!(
        count(&after, "strom_invocation_duration_seconds_count")
            >= invocations(&after, "succeeded")
    );
    assert!(count(&after, "strom_instance_cold_start_seconds_count") >= 1.0);
    assert_eq!(
        after.sum("strom_instances", &[("app", "web"), ("state", "ready")]),
        Some(1.0)
    );
    assert!(
        after
            .sum("strom_gateway_responses_total", &[("code", "200")])
            .unwrap()
            >= 4.0
    );

    // A handler that crashes: a failed invocation, a restart.
    let restarts = count(&after, "strom_instance_restarts_total");
    assert_eq!(get(&w4.http, "/api/web/9?action=crash").status, 500);
    let crashed = eventually(Duration::from_secs(10), "the restart counted", || {
        let s = scrape(&w4.http, token);
        (count(&s, "strom_instance_restarts_total") == restarts + 1.0
            && invocations(&s, "failed") == invocations(&before, "failed") + 1.0)
            .then_some(s)
    });
    assert!(crashed.sum("strom_gateway_responses_total", &[("code", "500")]) >= Some(1.0));

    // The management group: one leader, every worker up, then a leader change.
    let managers = [&m1, &m2, &m3];
    let group = eventually(Duration::from_secs(10), "one leader, a worker up", || {
        let scrapes: Vec<_> = managers.iter().map(|m| scrape(&m.server, token)).collect();
        let leaders: f64 = scrapes
            .iter()
            .map(|s| s.sum("strom_raft_is_leader", &[]).unwrap())
            .sum();
        let up = scrapes[1].sum("strom_workers", &[("state", "up")]);
        // A worker's first heartbeat comes a fifth of its lease after it registered,
        // which can be after everything above on a fast run.
        let heartbeats = scrapes[0].sum("strom_worker_heartbeats_total", &[("worker", "4")]);
        (leaders == 1.0 && up == Some(1.0) && heartbeats > Some(0.0)).then_some(scrapes)
    });
    assert_eq!(
        group[0].sum("strom_raft_is_leader", &[]),
        Some(1.0),
        "m1 bootstrapped"
    );
    assert!(group[0].sum("strom_raft_proposal_duration_seconds_count", &[]) > Some(0.0));
    let term = group[1].sum("strom_raft_term", &[]).unwrap();
    let changes = group[1]
        .sum("strom_raft_leader_changes_total", &[])
        .unwrap_or(0.0);
    m1.kill9();
    eventually(Duration::from_secs(30), "a new leader, counted", || {
        let s = scrape(&m2.server, token);
        (s.sum("strom_raft_term", &[]).unwrap() > term
            && s.sum("strom_raft_leader_changes_total", &[]).unwrap_or(0.0) > changes
            && s.sum("strom_raft_has_leader", &[]) == Some(1.0))
        .then_some(())
    });
    // The survivors saw the leader's process gone (its connection closed, its port
    // refusing) and elected at once, not after the leader lease ran out.
    let crash_elections: f64 = [&m2, &m3]
        .iter()
        .map(|m| {
            scrape(&m.server, token)
                .sum("strom_raft_crash_elections_total", &[])
                .unwrap_or(0.0)
        })
        .sum();
    assert!(
        crash_elections >= 1.0,
        "no survivor started an election on the leader's crash"
    );
    for up in [m2, m3, w4] {
        up.stop();
    }
}

/// The spans an in-test OTLP collector received.
#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<ReceivedSpan>>>);

#[derive(Debug, Clone)]
struct ReceivedSpan {
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
    attributes: std::collections::BTreeMap<String, String>,
}

#[tonic::async_trait]
impl opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceService
    for Collector
{
    async fn export(
        &self,
        request: tonic::Request<
            opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest,
        >,
    ) -> Result<
        tonic::Response<
            opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse,
        >,
        tonic::Status,
    > {
        use opentelemetry_proto::tonic::common::v1::any_value::Value;
        let mut spans = self.0.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            for ss in rs.scope_spans {
                for s in ss.spans {
                    let attributes = s
                        .attributes
                        .iter()
                        .map(|kv| {
                            let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                                Some(Value::StringValue(s)) => s.clone(),
                                Some(Value::IntValue(i)) => i.to_string(),
                                Some(other) => format!("{other:?}"),
                                None => String::new(),
                            };
                            (kv.key.clone(), v)
                        })
                        .collect();
                    spans.push(ReceivedSpan {
                        name: s.name,
                        trace_id: hex(&s.trace_id),
                        span_id: hex(&s.span_id),
                        parent: hex(&s.parent_span_id),
                        attributes,
                    });
                }
            }
        }
        Ok(tonic::Response::new(Default::default()))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Collector {
    /// Serve OTLP/gRPC on a free port of 127.0.0.1 (in a thread of its own).
    fn start() -> (Collector, u16) {
        let collector = Collector::default();
        let port = free_port();
        let service = opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceServiceServer::new(collector.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async move {
                tonic::transport::Server::builder()
                    .add_service(service)
                    .serve(format!("127.0.0.1:{port}").parse().unwrap())
                    .await
                    .unwrap();
            });
        });
        (collector, port)
    }

    fn trace(&self, trace_id: &str) -> Vec<ReceivedSpan> {
        let spans = self.0.lock().unwrap();
        spans
            .iter()
            .filter(|s| s.trace_id == trace_id)
            .cloned()
            .collect()
    }
}

/// (trace id, parent span id) of a W3C `traceparent`.
fn traceparent(value: &str) -> (String, String) {
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "{value}");
    assert_eq!((parts[0], parts[1].len(), parts[2].len()), ("00", 32, 16));
    (parts[1].to_string(), parts[2].to_string())
}

/// The spans of one invocation that entered at node 1 and ran on node 2, in
/// order, each the parent of the next: gateway (1) → hop → gateway (2) → invoke,
/// the last the parent the handler was given.
fn check_chain(spans: &[ReceivedSpan], caller_parent: &str, handler_parent: &str) {
    let find = |name: &str, node: &str| {
        spans
            .iter()
            .find(|s| {
                s.name == name
                    && s.attributes.get("strom.node_id").map(String::as_str) == Some(node)
            })
            .unwrap_or_else(|| panic!("no {name} span of node {node}: {spans:#?}"))
    };
    let entry = find("gateway", "1");
    let hop = find("hop", "1");
    let worker = find("gateway", "2");
    let invoke = find("invoke", "2");
    assert_eq!(entry.parent, caller_parent, "{spans:#?}");
    assert_eq!(hop.parent, entry.span_id);
    assert_eq!(worker.parent, hop.span_id);
    assert_eq!(invoke.parent, worker.span_id);
    assert_eq!(invoke.span_id, handler_parent);
    assert!(
        invoke.attributes.contains_key("faas.invocation_id"),
        "{invoke:?}"
    );
}

#[test]
fn t102_a_trace_follows_an_invocation_through_gateway_hop_and_instance_to_the_handler() {
    let (collector, port) = Collector::start();
    let endpoint = format!("http://127.0.0.1:{port}");
    let mut c = Cluster::new(2);
    let id = "1";
    let m1 = Up::serve(
        c.dirs[0].path(),
        c.ports[0],
        &[
            "--node-id",
            id,
            "--roles",
            "management",
            "--bootstrap",
            "--otlp-endpoint",
            &endpoint,
        ],
    );
    c.token = std::fs::read_to_string(c.dirs[0].path().join("join.token"))
        .unwrap()
        .trim()
        .to_string();
    let admin = c.admin();
    let w2 = c.start(
        1,
        "worker",
        &[
            "--join",
            &c.seeds(&[0]),
            "--join-token",
            &c.token,
            "--otlp-endpoint",
            &endpoint,
        ],
    );
    // A forwarding-mode app and a JSON-mode app, both on the worker only.
    let apps = tempfile::tempdir().unwrap();
    let fwd = apps.path().join("fwd");
    write_app(
        &fwd,
        &common::test_handler_host(r#","enableForwardingHttpRequest":true"#),
        &[("hello", &anonymous_fn("fwd/{id:int}"))],
    );
    let out = cli(
        &m1.server,
        &admin,
        &["app", "deploy", fwd.to_str().unwrap()],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    deploy_web(&m1.server, &admin, apps.path(), "web");
    for path in ["/api/fwd/0", "/api/web/0"] {
        eventually(Duration::from_secs(30), "served through the hop", || {
            (get(&m1.http, path).status == 200).then_some(())
        });
    }

    // Forwarding mode, with the caller's context: the handler gets the invoke
    // span's, in the caller's trace.
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let r = common::http(
        "GET",
        &m1.http,
        "/api/fwd/1",
        &[(
            "traceparent",
            &format!("00-{caller_trace}-{caller_span}-01"),
        )],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = r.json()["headers"]["traceparent"][0]
        .as_str()
        .unwrap()
        .to_string();
    let (trace_id, handler_parent) = traceparent(&seen);
    assert_eq!(trace_id, caller_trace);
    assert_ne!(handler_parent, caller_span);
    let spans = eventually(Duration::from_secs(30), "the forwarded trace", || {
        let spans = collector.trace(caller_trace);
        (spans.len() >= 4).then_some(spans)
    });
    check_chain(&spans, caller_span, &handler_parent);

    // JSON mode, no caller context: a new trace, and the handler's request carries it.
    let r = get(&m1.http, "/api/web/1");
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    let seen = body["traceparent"]
        .as_str()
        .unwrap_or_else(|| panic!("{body}"));
    let (trace_id, handler_parent) = traceparent(seen);
    let spans = eventually(Duration::from_secs(30), "the JSON-mode trace", || {
        let spans = collector.trace(&trace_id);
        (spans.len() >= 4).then_some(spans)
    });
    check_chain(&spans, "", &handler_parent);

    // Admin writes: a span per write, with the command and its log index.
    let out = cli(
        &m1.server,
        &admin,
        &["app", "settings", "set", "web", "A=1"],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let writes = || -> Vec<ReceivedSpan> {
        let spans = collector.0.lock().unwrap();
        spans
            .iter()
            .filter(|s| s.name == "raft write")
            .cloned()
            .collect()
    };
    let write = eventually(Duration::from_secs(30), "a raft write span", || {
        writes().into_iter().find(|s| {
            s.attributes.get("strom.command").map(String::as_str) == Some("SetAppSettings")
        })
    });
    assert!(
        write.attributes.contains_key("strom.log_index"),
        "{write:?}"
    );

    // A timer run: the leader's `timer` span, the hop to the worker, the worker's
    // gateway and invoke spans, one trace.
    let tick = apps.path().join("tick");
    write_app(
        &tick,
        &common::test_handler_host(""),
        &[(
            "beat",
            r#"{"bindings":[{"type":"timerTrigger","direction":"in","name":"timer","schedule":"*/2 * * * * *"}]}"#,
        )],
    );
    let out = cli(
        &m1.server,
        &admin,
        &["app", "deploy", tick.to_str().unwrap()],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let spans = eventually(Duration::from_secs(60), "a traced timer run", || {
        let all = collector.0.lock().unwrap().clone();
        let timer = all.iter().find(|s| {
            s.name == "timer" && s.attributes.get("faas.name").map(String::as_str) == Some("beat")
        })?;
        let trace: Vec<ReceivedSpan> = all
            .iter()
            .filter(|s| s.trace_id == timer.trace_id)
            .cloned()
            .collect();
        trace.iter().any(|s| s.name == "invoke").then_some(trace)
    });
    let by = |name: &str| spans.iter().find(|s| s.name == name).unwrap();
    let (timer, hop, gateway, invoke) = (by("timer"), by("hop"), by("gateway"), by("invoke"));
    assert_eq!(timer.parent, "", "a timer run starts its own trace");
    assert_eq!(hop.parent, timer.span_id);
    assert_eq!(gateway.parent, hop.span_id);
    assert_eq!(invoke.parent, gateway.span_id);
    assert_eq!(invoke.attributes["faas.trigger"], "timer");
    w2.stop();
    m1.stop();
}

/// A portal form post with a session cookie (and the page's Origin, as a browser
/// sends it).
fn portal_post(base: &str, path: &str, cookie: &str, form: &str) -> common::HttpResponse {
    common::http(
        "POST",
        base,
        path,
        &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Cookie", cookie),
            ("Origin", base),
        ],
        form.as_bytes(),
    )
}

fn portal_get(base: &str, path: &str, cookie: &str) -> common::HttpResponse {
    common::http("GET", base, path, &[("Cookie", cookie)], b"")
}

/// The page's CSRF token (its `<meta name="csrf-token">`).
fn csrf_of(page: &str) -> String {
    let after = page
        .split("name=\"csrf-token\" content=\"")
        .nth(1)
        .expect("a signed-in page holds its CSRF token");
    after.split('"').next().unwrap().to_string()
}

#[test]
fn t103_a_portal_session_works_on_every_manager_and_outlives_the_leader() {
    let (_cluster, admin, [m1, m2, m3, w4], _apps) = Cluster::three_managers_a_worker_and_web();

    // A wrong token gives no session; the right one does, on the leader.
    let wrong = portal_post(&m1.server, "/portal/signin", "", "token=strom_wrong");
    assert_eq!(wrong.status, 401);
    assert!(wrong.header("set-cookie").is_none());
    assert!(
        wrong.text().contains("not this cluster&#39;s admin token")
            || wrong.text().contains("not this cluster's admin token")
    );
    let signed = portal_post(&m1.server, "/portal/signin", "", &format!("token={admin}"));
    assert_eq!(signed.status, 303, "{}", signed.text());
    let set_cookie = signed.header("set-cookie").unwrap().to_string();
    assert!(set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"));
    let cookie = set_cookie.split(';').next().unwrap().to_string();

    // Followers accept it: nothing is replicated, every manager checks the signature.
    for up in [&m2, &m3] {
        let page = portal_get(&up.server, "/portal/cluster", &cookie);
        assert_eq!(page.status, 200, "{}: {}", up.server, page.text());
        assert!(page.text().contains("Management members"));
    }
    // Without it, or with a forged one: the sign-in page, saying why.
    let none = portal_get(&m2.server, "/portal/apps", "");
    assert_eq!(none.status, 303);
    let forged = portal_get(&m2.server, "/portal/apps", &format!("{cookie}x"));
    assert_eq!(forged.status, 303);
    assert_eq!(
        forged.header("location"),
        Some("/portal/signin?why=invalid")
    );

    // A post without the page's CSRF token, or from another site, changes nothing.
    let page = portal_get(&m2.server, "/portal/apps/web", &cookie);
    let csrf = csrf_of(&page.text());
    let missing = portal_post(
        &m2.server,
        "/portal/apps/web/settings",
        &cookie,
        "name=A&value=1",
    );
    assert_eq!(missing.status, 403);
    let cross = common::http(
        "POST",
        &m2.server,
        "/portal/apps/web/settings",
        &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Cookie", &cookie),
            ("Origin", "http://evil.example"),
        ],
        format!("csrf={csrf}&name=A&value=1").as_bytes(),
    );
    assert_eq!(cross.status, 403);
    let settings = cli(&m3.server, &admin, &["app", "settings", "get", "web"]);
    assert!(!settings.stdout.contains("A=1"), "{}", settings.stdout);

    // The leader dies: the same session, on a survivor, still reads and writes.
    m1.kill9();
    let written = eventually(
        Duration::from_secs(30),
        "a write through the portal after the leader's death",
        || {
            let r = portal_post(
                &m2.server,
                "/portal/apps/web/settings",
                &cookie,
                &format!("csrf={csrf}&name=AFTER_FAILOVER&value=yes"),
            );
            (r.status == 303).then_some(r)
        },
    );
    assert_eq!(
        written.header("location"),
        Some("/portal/apps/web?done=settings")
    );
    let settings = cli(&m3.server, &admin, &["app", "settings", "get", "web"]);
    assert!(
        settings.stdout.contains("AFTER_FAILOVER=yes"),
        "{}",
        settings.stdout
    );
    let page = portal_get(&m3.server, "/portal/cluster", &cookie);
    assert_eq!(page.status, 200);
    w4.stop();
}

/// A consumer app that answers each message with `{"id", "redelivered"}` to its
/// output queue: the test's record of every handling.
const RECORDING_HANDLER: &str = r#"import json, os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        payload = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        data, meta = payload.get("Data") or {}, payload.get("Metadata") or {}
        msg = data.get("msg") or {}
        out = {"id": msg.get("id"), "redelivered": bool(meta.get("Redelivered"))}
        body = json.dumps({"Outputs": {}, "Logs": [], "ReturnValue": out}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

ThreadingHTTPServer(("127.0.0.1", int(os.environ["FUNCTIONS_CUSTOMHANDLER_PORT"])), Handler).serve_forever()
"#;

/// The issue's proof: 2,000 messages published at a steady rate through a
/// cluster of three managers and two workers, one worker killed and the broker
/// restarted mid-run. Every message handled (its output confirmed before its
/// acknowledgement, so the output queue is the record), a second handling only
/// of a message the broker redelivered, nothing poisoned, nothing left; and the
/// app's scale follows its queue from zero and back.
#[test]
fn t104_rabbitmq_messages_survive_a_worker_kill_and_a_broker_restart_and_scale_follows_the_queue() {
    let Some(url) = strom_testkit::broker::rabbitmq_or_skip("t104") else {
        return;
    };
    let restart = std::env::var("STROM_RABBITMQ_RESTART").ok();
    if restart.is_none() {
        assert!(
            std::env::var("STROM_REQUIRE_RABBITMQ").is_err(),
            "STROM_REQUIRE_RABBITMQ=1 but STROM_RABBITMQ_RESTART is not set (.ci/rabbitmq writes it)"
        );
        eprintln!("t104: STROM_RABBITMQ_RESTART is not set: the broker is not restarted");
    }
    use strom_testkit::broker::Broker;
    let broker = Broker::connect(&url);
    let s = format!("{}-{}", std::process::id(), free_port());
    let (jobs, done) = (format!("jobs-{s}"), format!("done-{s}"));
    broker.declare(&jobs);
    broker.declare(&done);

    let (c, [m1, m2, m3, w4, w5]) = Cluster::three_managers_two_workers();
    let admin = c.admin();
    let apps = tempfile::tempdir().unwrap();
    let app = apps.path().join("consumer");
    let trigger = format!(
        r#"{{"bindings":[{{"type":"rabbitMQTrigger","direction":"in","name":"msg","queueName":"{jobs}","connectionStringSetting":"Mq"}},
            {{"type":"rabbitMQ","direction":"out","name":"$return","queueName":"{done}","connectionStringSetting":"Mq"}}]}}"#
    );
    write_app(
        &app,
        r#"{"version":"2.0","customHandler":{"description":{"defaultExecutablePath":"python3","arguments":["handler.py"]}},
            "extensions":{"rabbitMQ":{"prefetchCount":10}}}"#,
        &[("record", &trigger)],
    );
    std::fs::write(app.join("handler.py"), RECORDING_HANDLER).unwrap();
    let settings = serde_json::json!({"IsEncrypted": false, "Values": {
        "FUNCTIONS_WORKER_RUNTIME": "custom",
        "Mq": url,
        "STROM_SCALE_TO_ZERO": "true",
        "STROM_MAX_SCALE": "4",
        "STROM_TARGET_QUEUE_LENGTH": "20",
        "STROM_SCALE_DOWN_COOLDOWN": "00:00:05",
    }});
    deploy_with_settings(&m1.server, &admin, &app, &settings);
    let queue = |server: &str| -> serde_json::Value {
        json(server, &admin, &["fn", "list", "consumer"])
            .and_then(|f| f["functions"].get(0).map(|f| f["queue"].clone()))
            .unwrap_or_default()
    };
    eventually(Duration::from_secs(30), "scale 0 on an empty queue", || {
        let q = queue(&m2.server);
        (q["scale"] == 0 && q["ready"] == 0).then_some(())
    });

    // The producer: 2,000 numbered messages, 100 a second, each confirmed by the
    // broker (a publish the broker did not confirm is sent again).
    const TOTAL: u64 = 2000;
    let published = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let producer = {
        let (url, jobs, published) = (url.clone(), jobs.clone(), published.clone());
        std::thread::spawn(move || {
            let mut client: Option<Broker> = None;
            let mut id = 0;
            while id < TOTAL {
                let start = std::time::Instant::now();
                if client.is_none() {
                    client = Broker::try_connect(&url).ok();
                }
                let sent = client
                    .as_ref()
                    .map(|b| b.try_publish(&jobs, format!(r#"{{"id":{id}}}"#).as_bytes()));
                match sent {
                    Some(Ok(())) => {
                        id += 1;
                        published.store(id, Ordering::Relaxed);
                        std::thread::sleep(
                            Duration::from_millis(10).saturating_sub(start.elapsed()),
                        );
                    }
                    _ => {
                        client = None;
                        std::thread::sleep(Duration::from_millis(200));
                    }
                }
            }
        })
    };

    // Handlings, read from the output queue as they come.
    let mut handled: Vec<(u64, bool)> = Vec::new();
    let read = |broker: &Broker, handled: &mut Vec<(u64, bool)>| {
        for got in broker.drain(&done) {
            let v: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
            handled.push((v["id"].as_u64().unwrap(), v["redelivered"] == true));
        }
    };
    let mut peak_scale = 0;
    eventually(Duration::from_secs(120), "500 handled", || {
        read(&broker, &mut handled);
        peak_scale = peak_scale.max(queue(&m3.server)["scale"].as_u64().unwrap_or(0));
        (handled.len() >= 500).then_some(())
    });
    // A worker dies with messages in hand.
    w5.kill9();
    eventually(Duration::from_secs(120), "1,000 handled", || {
        read(&broker, &mut handled);
        peak_scale = peak_scale.max(queue(&m3.server)["scale"].as_u64().unwrap_or(0));
        (handled.len() >= 1000).then_some(())
    });
    // The broker restarts: every connection closed, unacknowledged messages back.
    let mut broker = broker;
    if let Some(cmd) = &restart {
        let status = std::process::Command::new("sh")
            .args(["-c", cmd])
            .status()
            .unwrap();
        assert!(status.success(), "{cmd}: {status}");
        broker = eventually(Duration::from_secs(30), "the broker back", || {
            Broker::try_connect(&url).ok()
        });
    }
    producer.join().unwrap();
    assert_eq!(published.load(Ordering::Relaxed), TOTAL);
    let ids = eventually(Duration::from_secs(180), "every message handled", || {
        read(&broker, &mut handled);
        let ids: BTreeSet<u64> = handled.iter().map(|(id, _)| *id).collect();
        (ids.len() as u64 == TOTAL).then_some(ids)
    });
    assert_eq!(ids, (0..TOTAL).collect::<BTreeSet<u64>>(), "none lost");
    // A second handling only of a message the broker gave again.
    let mut times: std::collections::BTreeMap<u64, (usize, bool)> = Default::default();
    for (id, redelivered) in &handled {
        let e = times.entry(*id).or_default();
        e.0 += 1;
        e.1 |= *redelivered;
    }
    let twice: Vec<u64> = times
        .iter()
        .filter(|(_, (n, _))| *n > 1)
        .map(|(id, _)| *id)
        .collect();
    let unexplained: Vec<u64> = times
        .iter()
        .filter(|(_, (n, redelivered))| *n > 1 && !*redelivered)
        .map(|(id, _)| *id)
        .collect();
    assert!(
        unexplained.is_empty(),
        "handled twice without a redelivery: {unexplained:?}"
    );
    eprintln!(
        "t104: {} handlings of {TOTAL} messages, {} handled twice (redelivered), peak scale {peak_scale}",
        handled.len(),
        twice.len()
    );
    assert!(peak_scale >= 1, "the queue scaled the app up");
    assert_eq!(
        broker.count(&format!("{jobs}-poison")),
        0,
        "nothing poisoned"
    );

    // Drained: back to zero instances after the cool-down.
    // (Once in six runs here it took over 60 s — cause not found yet; the
    // message shows the trigger's state if it happens again.)
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let q = queue(&m1.server);
        let s = json(&m1.server, &admin, &["cluster", "status"]).unwrap_or_default();
        let placed: u64 = placement(&s, "consumer").iter().map(|p| p.1).sum();
        if q["scale"] == 0 && placed == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not back to zero within 120 s: {q}, placed {placed}; {}",
            s["placements"]
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(broker.count(&jobs), 0, "every message acknowledged");
    for q in [&jobs, &done, &format!("{jobs}-poison")] {
        broker.delete(q);
    }
    for n in [m1, m2, m3, w4] {
        n.stop();
    }
}

/// A client command with a data dir of its own (its `client.json`), a token
/// and extra flags; returns the output and how long it took.
fn timed_cli(servers: &str, token: &str, home: &Path, args: &[&str]) -> (Out, Duration) {
    let started = std::time::Instant::now();
    let extra = ["--token", token, "--data-dir", home.to_str().unwrap()];
    let out = common::cli(servers, args, &extra);
    (out, started.elapsed())
}

fn signal(up: &Up, sig: &str) {
    let status = std::process::Command::new("kill")
        .args([sig, &up.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {sig}");
}

/// The leader's index among `servers`, as the first that answers says.
fn leader_index(servers: &[&str], admin: &str) -> usize {
    eventually(Duration::from_secs(30), "a leader", || {
        let s = servers
            .iter()
            .find_map(|s| json(s, admin, &["cluster", "status"]))?;
        let id = s["leader_id"].as_u64()?;
        Some(id as usize - 1)
    })
}

#[test]
fn t105_a_frozen_member_fails_a_call_within_its_deadline_and_the_next_member_answers() {
    let (c, admin, [m1, m2, m3, w4], _apps) = Cluster::three_managers_a_worker_and_web();
    let home = tempfile::tempdir().unwrap();
    let servers = [m1.server.as_str(), m2.server.as_str(), m3.server.as_str()];
    let ups = [&m1, &m2, &m3];
    let leader = leader_index(&servers, &admin);
    // The CLI learns the members into its client file (0600, next to the token).
    let (out, _) = timed_cli(
        servers[leader],
        &admin,
        home.path(),
        &["cluster", "members"],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let file: serde_json::Value =
        serde_json::from_slice(&std::fs::read(home.path().join("client.json")).unwrap()).unwrap();
    let learned: BTreeSet<String> = file["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap().to_string())
        .collect();
    assert_eq!(learned, servers.iter().map(|s| s.to_string()).collect());
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(home.path().join("client.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    // A frozen follower (SIGSTOP: its port accepts, nothing answers).
    let f = (leader + 1) % 3;
    let live = (leader + 2) % 3;
    signal(ups[f], "-STOP");
    let alone = tempfile::tempdir().unwrap();
    let (out, took) = timed_cli(
        servers[f],
        &admin,
        alone.path(),
        &["cluster", "status", "--timeout", "2"],
    );
    assert_eq!(out.code, 5, "{}", out.stderr);
    assert!(
        out.stderr
            .contains(&format!("no answer from {} in 2 s", servers[f]))
            && out.stderr.contains("frozen or overloaded"),
        "{}",
        out.stderr
    );
    assert!(took < Duration::from_secs(30), "waited {took:?}");
    // With the learned members the same command goes on to a live one.
    let (out, _) = timed_cli(
        servers[f],
        &admin,
        home.path(),
        &["cluster", "status", "--timeout", "2", "--verbose"],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.contains("answered by"), "{}", out.stderr);
    // A list naming the frozen one first: answered by the live one.
    let list = format!("{},{}", servers[f], servers[live]);
    let (out, _) = timed_cli(
        &list,
        &admin,
        alone.path(),
        &["cluster", "status", "--timeout", "2", "-v"],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr
            .contains(&format!("{}: no answer in 2 s", servers[f]))
            && out
                .stderr
                .contains(&format!("answered by {}", servers[live])),
        "{}",
        out.stderr
    );
    // Writes too (in a session: the frozen member may have had the request).
    let (out, _) = timed_cli(
        &list,
        &admin,
        alone.path(),
        &["app", "settings", "set", "web", "F=1", "--timeout", "2"],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    signal(ups[f], "-CONT");

    // The leader frozen: a write through the list waits for the election, on
    // another member, and is applied.
    signal(ups[leader], "-STOP");
    let (out, took) = timed_cli(
        &c.seeds(&[leader, f, live]),
        &admin,
        alone.path(),
        &[
            "app",
            "settings",
            "set",
            "web",
            "L=1",
            "--timeout",
            "5",
            "-v",
        ],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(took < Duration::from_secs(60), "waited {took:?}");
    let settings = json(servers[live], &admin, &["app", "settings", "get", "web"]).unwrap();
    assert_eq!(settings["settings"]["L"], "1", "{settings}");
    signal(ups[leader], "-CONT");

    // The worker frozen: calls that ask every worker (status, invocation logs)
    // answer within their deadline, naming it.
    signal(&w4, "-STOP");
    let (out, took) = timed_cli(
        servers[live],
        &admin,
        alone.path(),
        &["cluster", "status", "--timeout", "20"],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(took < Duration::from_secs(20), "waited {took:?}");
    let (out, took) = timed_cli(
        servers[live],
        &admin,
        alone.path(),
        &["fn", "logs", "web", "--timeout", "20"],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.contains("node 4 was not asked"),
        "{}",
        out.stderr
    );
    assert!(took < Duration::from_secs(20), "waited {took:?}");
    signal(&w4, "-CONT");
    for up in [m1, m2, m3, w4] {
        up.stop();
    }
}

/// A TCP proxy in front of `target` that passes everything until the server
/// answers HTTP/2 stream `drop_stream`; then it runs `meanwhile` (another
/// client's write), and closes both sides: the answer is lost after the
/// write was committed. Returns the proxy's URL.
fn answer_dropping_proxy(
    target: &str,
    drop_stream: u32,
    meanwhile: impl FnOnce() + Send + 'static,
) -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let target = target.trim_start_matches("http://").to_string();
    std::thread::spawn(move || {
        let mut meanwhile = Some(meanwhile);
        for client in listener.incoming() {
            let Ok(mut client) = client else { return };
            let Ok(mut server) = std::net::TcpStream::connect(&target) else {
                return;
            };
            let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut c2, &mut s2);
                let _ = s2.shutdown(std::net::Shutdown::Write);
            });
            // Server to client, frame by frame (9-byte headers).
            loop {
                let mut header = [0u8; 9];
                if server.read_exact(&mut header).is_err() {
                    break;
                }
                let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
                let kind = header[3];
                let stream =
                    u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
                let mut body = vec![0u8; len];
                if server.read_exact(&mut body).is_err() {
                    break;
                }
                // A HEADERS frame of the stream to drop: the handler has finished.
                if kind == 1 && stream == drop_stream {
                    if let Some(f) = meanwhile.take() {
                        f();
                    }
                    let _ = client.shutdown(std::net::Shutdown::Both);
                    let _ = server.shutdown(std::net::Shutdown::Both);
                    break;
                }
                if client.write_all(&header).is_err() || client.write_all(&body).is_err() {
                    break;
                }
            }
        }
    });
    url
}

#[test]
fn t106_a_write_whose_answer_is_lost_is_retried_on_another_member_and_applied_once() {
    let (_c, admin, [m1, m2, m3, w4], _apps) = Cluster::three_managers_a_worker_and_web();
    let home = tempfile::tempdir().unwrap();
    // The CLI's calls on its first connection: OpenSession (stream 1), learning
    // the members (3), the write (5). The proxy loses the write's answer, and
    // before the CLI sends it again another client sets the same setting.
    let (m3_server, other_admin) = (m3.server.clone(), admin.clone());
    let proxy = answer_dropping_proxy(&m2.server, 5, move || {
        let out = cli(
            &m3_server,
            &other_admin,
            &["app", "settings", "set", "web", "OWNER=second"],
        );
        assert_eq!(out.code, 0, "{}", out.stderr);
    });
    let (out, _) = timed_cli(
        &format!("{proxy},{}", m1.server),
        &admin,
        home.path(),
        &[
            "app",
            "settings",
            "set",
            "web",
            "OWNER=first",
            "--timeout",
            "10",
            "-v",
        ],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!("{proxy}: connection lost"))
            && out.stderr.contains(&format!("answered by {}", m1.server)),
        "{}",
        out.stderr
    );
    // Applied once: the retry did not undo the later write.
    for server in [&m1.server, &m3.server] {
        let s = json(server, &admin, &["app", "settings", "get", "web"]).unwrap();
        assert_eq!(s["settings"]["OWNER"], "second", "on {server}: {s}");
    }

    // The session rules, as any gRPC client meets them.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use strom_proto::admin_v1 as pb;
        let mut c = pb::admin_service_client::AdminServiceClient::connect(m1.server.clone())
            .await
            .unwrap();
        let bearer: tonic::metadata::MetadataValue<_> = format!("Bearer {admin}").parse().unwrap();
        let request = |body: pb::ScaleAppRequest, session: &str, seq: &str| {
            let mut r = tonic::Request::new(body);
            r.metadata_mut().insert("authorization", bearer.clone());
            if !session.is_empty() {
                r.metadata_mut()
                    .insert("strom-session", session.parse().unwrap());
                r.metadata_mut()
                    .insert("strom-sequence", seq.parse().unwrap());
            }
            r
        };
        let mut open = tonic::Request::new(pb::OpenSessionRequest {});
        open.metadata_mut().insert("authorization", bearer.clone());
        let session = c.open_session(open).await.unwrap().into_inner().session_id;
        let scale = |n| pb::ScaleAppRequest {
            name: "web".into(),
            instances: n,
        };
        let first = c
            .scale_app(request(scale(2), &session, "1"))
            .await
            .unwrap()
            .into_inner();
        // The retry answers the first outcome (its log index), applied once.
        let again = c
            .scale_app(request(scale(2), &session, "1"))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(again.log_index, first.log_index);
        let refused = |r: Result<tonic::Response<pb::ScaleAppResponse>, tonic::Status>| {
            r.map(|_| ()).unwrap_err()
        };
        let e = refused(c.scale_app(request(scale(3), &session, "1")).await);
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains("used for another request"), "{e:?}");
        let e = refused(c.scale_app(request(scale(3), &session, "5000")).await);
        assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
        assert!(e.message().contains("too far ahead"), "{e:?}");
        let e = refused(c.scale_app(request(scale(3), &"a".repeat(32), "1")).await);
        assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
        assert!(e.message().starts_with("outcome unknown"), "{e:?}");
        let e = refused(c.scale_app(request(scale(3), "not-a-session", "1")).await);
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
        // Nothing of the refused ones was applied.
        let mut get = tonic::Request::new(pb::GetAppRequest { name: "web".into() });
        get.metadata_mut().insert("authorization", bearer.clone());
        assert_eq!(c.get_app(get).await.unwrap().into_inner().scale, 2);
        // Without a session: as always.
        let plain = c.scale_app(request(scale(1), "", "")).await.unwrap();
        assert!(plain.into_inner().log_index > first.log_index);
    });
    for up in [m1, m2, m3, w4] {
        up.stop();
    }
}

#[test]
fn t107_a_write_loop_through_a_rolling_restart_of_every_member_never_fails_or_repeats() {
    let (c, admin, [m1, m2, m3, w4], _apps) = Cluster::three_managers_a_worker_and_web();
    let home = tempfile::tempdir().unwrap();
    let list = c.seeds(&[0, 1, 2]);
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(Mutex::new(Vec::<(u64, i32, String)>::new()));
    let writer = {
        let (stop, written, admin, list) =
            (stop.clone(), written.clone(), admin.clone(), list.clone());
        let home = home.path().to_path_buf();
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                let (out, _) = timed_cli(
                    &list,
                    &admin,
                    &home,
                    &[
                        "app",
                        "settings",
                        "set",
                        "web",
                        &format!("N={i}"),
                        "--timeout",
                        "5",
                    ],
                );
                written.lock().unwrap().push((i, out.code, out.stderr));
            }
        })
    };
    let ups = [m1, m2, m3];
    let servers: Vec<String> = ups.iter().map(|u| u.server.clone()).collect();
    let server_refs: Vec<&str> = servers.iter().map(String::as_str).collect();
    let leader = leader_index(&server_refs, &admin);
    // Followers first, the leader last; each drained (hands over leadership),
    // stopped and started again with its data, as an upgrade would.
    let mut order: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    order.push(leader);
    let mut ups: Vec<Option<Up>> = ups.into_iter().map(Some).collect();
    // Each phase lasts until the loop has written a few more times (with the
    // member up, down, and back).
    let more_writes = |phase: &str| {
        let before = written.lock().unwrap().len();
        eventually(Duration::from_secs(60), phase, || {
            (written.lock().unwrap().len() >= before + 5).then_some(())
        });
    };
    more_writes("writes before the restarts");
    for i in order {
        let out = cli(
            &servers[(i + 1) % 3],
            &admin,
            &["node", "drain", &(i + 1).to_string()],
        );
        assert_eq!(out.code, 0, "drain {}: {}", i + 1, out.stderr);
        ups[i].take().unwrap().stop();
        more_writes("writes while a member is down");
        ups[i] = Some(if i == 0 {
            c.start(0, "management", &["--bootstrap"])
        } else {
            c.join(i, "management", &c.seeds(&[0]))
        });
        more_writes("writes after it is back");
    }
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    let written = written.lock().unwrap();
    let failed: Vec<_> = written.iter().filter(|(_, code, _)| *code != 0).collect();
    assert!(failed.is_empty(), "failed writes: {failed:#?}");
    assert!(written.len() > 10, "only {} writes", written.len());
    // No write applied again after a later one: the last one stands everywhere.
    let last = written.last().unwrap().0.to_string();
    for s in &servers {
        let got = eventually(Duration::from_secs(10), "settings", || {
            json(s, &admin, &["app", "settings", "get", "web"])
        });
        assert_eq!(got["settings"]["N"], last.as_str(), "on {s}: {got}");
    }
    eprintln!(
        "{} writes through the rolling restart, none failed",
        written.len()
    );
    for up in ups.into_iter().flatten() {
        up.stop();
    }
    w4.stop();
}
