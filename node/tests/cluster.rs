//! Three `strom serve` processes form a cluster: they join with the join token,
//! accept writes through any member, serve every app on every node, and keep going
//! when the leader is killed.

// Unix only: not run on Windows yet (signals, `sh` handlers, Unix modes, or
// untried there); on Windows `.ci/windows/run` runs `e2e.rs` and the smoke test
// under Wine (docs/windows.md).
#![cfg(unix)]

mod common;

use std::time::Duration;

use common::{eventually, free_port, get, http_fn, test_handler_host, write_app, Up};

#[test]
fn t80_three_nodes_join_serve_and_survive_a_leader_kill() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let n1 = Up::serve(dirs[0].path(), ports[0], &["--node-id", "1", "--bootstrap"]);
    let token = std::fs::read_to_string(dirs[0].path().join("join.token")).unwrap();
    let seed = format!("http://127.0.0.1:{}", ports[0]);
    let n2 = Up::serve(
        dirs[1].path(),
        ports[1],
        &[
            "--node-id",
            "2",
            "--join",
            &seed,
            "--join-token",
            token.trim(),
        ],
    );
    // The third joins through the second (a follower points it to the leader), with
    // its settings in a TOML file.
    let config = dirs[2].path().join("node.toml");
    std::fs::write(
        &config,
        format!(
            "node-id = 3\njoin = [\"http://127.0.0.1:{}\"]\njoin-token = \"{}\"\n",
            ports[1],
            token.trim()
        ),
    )
    .unwrap();
    let n3 = Up::serve(
        dirs[2].path(),
        ports[2],
        &["--config", config.to_str().unwrap()],
    );

    // Client commands use node 1's admin token with any node's control URL.
    let admin = std::fs::read_to_string(dirs[0].path().join("admin.token")).unwrap();
    let on = |n: &Up, args: &[&str]| -> serde_json::Value {
        let out = n.strom_with(args, &["--token", admin.trim(), "--output", "json"]);
        assert_eq!(out.code, 0, "{args:?}: {}", out.stderr);
        serde_json::from_str(&out.stdout).unwrap()
    };
    let members = on(&n3, &["cluster", "members"])["members"].clone();
    assert_eq!(members.as_array().unwrap().len(), 3, "{members}");
    assert!(members
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m["voter"] == true));

    // Deploy through a follower; every node serves the app on its own port.
    let apps = tempfile::tempdir().unwrap();
    let app = apps.path().join("everywhere");
    write_app(
        &app,
        &test_handler_host(""),
        &[("f", &http_fn("hello/{id:int}"))],
    );
    let out = n2.strom_with(
        &["app", "deploy", app.to_str().unwrap()],
        &["--token", admin.trim()],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    for n in [&n1, &n2, &n3] {
        let key = on(n, &["fn", "keys", "everywhere", "f"])["keys"][0]["value"]
            .as_str()
            .unwrap()
            .to_string();
        // Without a key: refused on every node, also where the request would be
        // sent to another node (checked before the body is read or forwarded).
        let r = eventually(
            Duration::from_secs(30),
            "the app routed on every node",
            || {
                let r = get(&n.http, "/api/hello/7");
                (r.status != 404 && r.status != 503).then_some(r)
            },
        );
        assert_eq!(r.status, 401, "{}", r.text());
        let r = eventually(Duration::from_secs(30), "the app on every node", || {
            let r = get(&n.http, &format!("/api/hello/7?code={key}"));
            (r.status == 200).then_some(r)
        });
        assert_eq!(r.json()["data"]["req"]["Params"]["id"], "7");
    }

    // A planned stop: drain the leader (through another node); leadership moves.
    let first = on(&n2, &["cluster", "status"])["leader_id"]
        .as_u64()
        .unwrap();
    let drained = on(&n3, &["node", "drain", &first.to_string()]);
    assert_eq!(drained["handed_over"], true, "{drained}");
    assert_ne!(drained["leader_id"], first);

    // Kill -9 the leader: the other two elect a new one and keep taking writes.
    let leader = on(&n2, &["cluster", "status"])["leader_id"]
        .as_u64()
        .unwrap();
    let mut nodes = vec![Some(n1), Some(n2), Some(n3)];
    nodes[(leader - 1) as usize].take().unwrap().kill9();
    // Its handlers outlive it (own process group) until it restarts; this test does
    // not restart it, so clean them up the way a restart would.
    let reaped = strom_actors::runtime::process::reap_orphans(
        &dirs[(leader - 1) as usize]
            .path()
            .join("run")
            .join("instances"),
    );
    // The scheduler places min(2, workers) instances: the leader ran one or none.
    assert!(reaped.len() <= 1, "the killed node's handlers: {reaped:?}");
    let rest: Vec<&Up> = nodes.iter().flatten().collect();
    eventually(Duration::from_secs(30), "a new leader", || {
        let out = rest[0].strom_with(
            &["cluster", "status"],
            &["--token", admin.trim(), "--output", "json"],
        );
        let v: serde_json::Value = serde_json::from_str(&out.stdout).ok()?;
        (out.code == 0 && v["leader_id"] != leader && v["leader_id"] != 0).then_some(())
    });
    let out = rest[1].strom_with(
        &["app", "settings", "set", "everywhere", "AFTER=failover"],
        &["--token", admin.trim()],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let settings = on(rest[0], &["app", "settings", "get", "everywhere"]);
    assert_eq!(settings["settings"]["AFTER"], "failover");
    for n in nodes.into_iter().flatten() {
        n.stop();
    }
}
