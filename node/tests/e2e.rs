//! End to end through real processes: `strom up` with apps run by the Rust test
//! handler, called over HTTP like a user would.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{eventually, get, http, test_handler_host, write_app, Up};

fn http_binding(route: &str, auth: &str, methods: &str) -> String {
    format!(
        r#"{{"bindings":[{{"type":"httpTrigger","direction":"in","name":"req","authLevel":"{auth}","route":"{route}","methods":[{methods}]}},{{"type":"http","direction":"out","name":"res"}}]}}"#
    )
}

fn json_app(dir: &Path, extra_host: &str) {
    write_app(
        dir,
        &test_handler_host(extra_host),
        &[
            (
                "echo",
                &http_binding("items/{id:int}/{name?}", "anonymous", r#""get","post""#),
            ),
            ("keyed", &http_binding("keyed", "function", "")),
            ("adm", &http_binding("adm", "admin", "")),
            (
                "ret",
                r#"{"bindings":[{"type":"httpTrigger","direction":"in","name":"req","authLevel":"anonymous","route":"ret"},{"type":"http","direction":"out","name":"$return"}]}"#,
            ),
            (
                "nout",
                r#"{"bindings":[{"type":"httpTrigger","direction":"in","name":"req","authLevel":"anonymous","route":"nout"}]}"#,
            ),
        ],
    );
}

fn instances(up: &Up, app: &str) -> Vec<serde_json::Value> {
    up.json(&["app", "show", app])["instances"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn key(up: &Up, app: &str, function: &str, scope: &str) -> String {
    let keys = up.json(&["fn", "keys", app, function]);
    keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["scope"] == scope)
        .unwrap()["value"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn t40_json_mode_routes_params_constraints_keys_and_outputs() {
    let data = tempfile::tempdir().unwrap();
    let apps = tempfile::tempdir().unwrap();
    let app = apps.path().join("jsonapp");
    json_app(&app, "");
    let up = Up::start(data.path(), &[&app], &["--max-request-body-bytes", "1000"]);
    let base = up.http.clone();

    let r = get(&base, "/api/items/5/bob?x=1&x=2");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-test-handler"), Some("json"));
    let body = r.json();
    let req = &body["data"]["req"];
    assert_eq!(req["Params"], serde_json::json!({"id": "5", "name": "bob"}));
    assert_eq!(req["Query"]["x"], "1,2");
    assert_eq!(req["Method"], "GET");
    assert!(req["Url"]
        .as_str()
        .unwrap()
        .ends_with("/api/items/5/bob?x=1&x=2"));
    assert!(req.get("Body").is_none());
    let invocation_id = body["invocationId"].as_str().unwrap().to_string();
    assert_eq!(invocation_id.len(), 36);
    assert!(body["hostVersion"].as_str().unwrap().starts_with("4."));

    let r = http(
        "POST",
        &base,
        "/api/items/7",
        &[("content-type", "text/plain")],
        b"payload",
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["data"]["req"]["Body"], "payload");

    // Constraint violated, unknown route, wrong method.
    assert_eq!(get(&base, "/api/items/abc").status, 404);
    assert_eq!(get(&base, "/api/nothing").status, 404);
    let r = http("DELETE", &base, "/api/items/5", &[], b"");
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, POST"));

    // Keys.
    assert_eq!(get(&base, "/api/keyed").status, 401);
    assert_eq!(get(&base, "/api/keyed?code=wrong").status, 401);
    let fkey = key(&up, "jsonapp", "keyed", "function");
    let hkey = key(&up, "jsonapp", "keyed", "host");
    let mkey = key(&up, "jsonapp", "keyed", "master");
    assert_eq!(get(&base, &format!("/api/keyed?code={fkey}")).status, 200);
    assert_eq!(
        http(
            "GET",
            &base,
            "/api/keyed",
            &[("x-functions-key", &hkey)],
            b""
        )
        .status,
        200
    );
    assert_eq!(
        http(
            "GET",
            &base,
            "/api/keyed?code=wrong",
            &[("x-functions-key", &mkey)],
            b""
        )
        .status,
        200,
        "the header wins over ?code="
    );
    let other_fn_key = key(&up, "jsonapp", "echo", "function");
    assert_eq!(
        get(&base, &format!("/api/keyed?code={other_fn_key}")).status,
        401
    );
    assert_eq!(get(&base, &format!("/api/adm?code={fkey}")).status, 401);
    assert_eq!(get(&base, &format!("/api/adm?code={mkey}")).status, 200);

    // Key management: a named key set with a value, a generated one, deleted again.
    let chosen = "chosen-key-value-0123456789";
    let out = up.json(&[
        "fn", "set-key", "jsonapp", "keyed", "ops", "--value", chosen,
    ]);
    assert_eq!(out["key"]["value"], chosen);
    assert!(out["log_index"].as_u64().unwrap() > 0, "{out}");
    assert_eq!(get(&base, &format!("/api/keyed?code={chosen}")).status, 200);
    let generated = up.json(&["fn", "set-key", "jsonapp", "keyed", "gen"])["key"]["value"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(generated.len() >= 32, "{generated}");
    assert_eq!(
        get(&base, &format!("/api/keyed?code={generated}")).status,
        200
    );
    let out = up.strom(&["fn", "delete-key", "jsonapp", "keyed", "ops"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(get(&base, &format!("/api/keyed?code={chosen}")).status, 401);
    // Bad input names the problem, exits 2 and changes nothing.
    for (args, says) in [
        (
            vec!["fn", "set-key", "jsonapp", "keyed", "x", "--value", "short"],
            "16 to 128",
        ),
        (
            vec!["fn", "set-key", "jsonapp", "keyed", "_x"],
            "key name `_x`",
        ),
        (
            vec!["fn", "set-key", "jsonapp", "keyed", "x", "--scope", "odd"],
            "scope `odd`",
        ),
        (
            vec![
                "fn",
                "delete-key",
                "jsonapp",
                "keyed",
                "x",
                "--scope",
                "master",
            ],
            "master key",
        ),
    ] {
        let out = up.strom(&args);
        assert_eq!(out.code, 2, "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains(says), "{args:?}: {}", out.stderr);
    }
    let out = up.strom(&["fn", "delete-key", "jsonapp", "keyed", "ops"]);
    assert_eq!(out.code, 3, "a deleted key is not found: {}", out.stderr);
    let out = up.strom(&["fn", "set-key", "jsonapp", "nosuch", "x"]);
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert_eq!(
        get(&base, &format!("/api/keyed?code={generated}")).status,
        200
    );
    assert_eq!(get(&base, &format!("/api/keyed?code={fkey}")).status, 200);

    // Outputs: $return, no output binding, not JSON, failure, binary.
    let r = get(&base, "/api/ret?action=return");
    assert_eq!((r.status, r.text().as_str()), (201, "from return value"));
    assert_eq!(get(&base, "/api/nout").status, 204);
    assert_eq!(get(&base, "/api/items/1?action=no-output").status, 204);
    assert_eq!(get(&base, "/api/items/1?action=not-json").status, 500);
    assert_eq!(get(&base, "/api/items/1?action=fail").status, 500);
    assert_eq!(get(&base, "/api/items/1?action=status=418").status, 418);
    let r = get(&base, "/api/items/1?action=binary");
    assert_eq!(r.body, (0..=255u8).collect::<Vec<_>>());

    // App-scoped Host header.
    let r = http(
        "GET",
        &base,
        "/api/items/3",
        &[("host", "jsonapp.example.com")],
        b"",
    );
    assert_eq!(r.status, 200);

    // Limits: body and URL.
    let r = http("POST", &base, "/api/items/1", &[], &[b'x'; 2000]);
    assert_eq!(r.status, 413, "{}", r.text());
    let long = format!("/api/items/1?pad={}", "a".repeat(5000));
    assert_eq!(get(&base, &long).status, 414);

    // Invocation records: id, status, Logs and handler stdout/stderr lines.
    // Records are written shortly after the answer (trailing handler output is
    // collected for a moment first).
    let records: Vec<serde_json::Value> = eventually(Duration::from_secs(10), "records", || {
        let logs = up.strom_with(
            &["fn", "logs", "jsonapp", "--tail", "100"],
            &["--output", "json"],
        );
        assert_eq!(logs.code, 0, "{}", logs.stderr);
        let records: Vec<serde_json::Value> = logs
            .stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let has_fail = records.iter().any(|r| {
            r["status"] == "Failed"
                && r["http_status"] == 500
                && r["logs"].to_string().contains("about to fail")
        });
        let has_first = records.iter().any(|r| r["id"] == invocation_id.as_str());
        (has_fail && has_first).then_some(records)
    });
    let first = records
        .iter()
        .find(|r| r["id"] == invocation_id.as_str())
        .expect("recorded");
    assert_eq!(first["status"], "Succeeded");
    assert_eq!(first["function_name"], "echo");
    let texts: Vec<String> = first["logs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            format!(
                "{}:{}",
                l["source"].as_str().unwrap(),
                l["text"].as_str().unwrap()
            )
        })
        .collect();
    assert!(
        texts.contains(&"handler:echo echo".to_string()),
        "{texts:?}"
    );
    assert!(
        texts.contains(&format!("stdout:stdout {invocation_id}")),
        "{texts:?}"
    );
    assert!(
        texts.contains(&format!("stderr:stderr {invocation_id}")),
        "{texts:?}"
    );
    let failed = records
        .iter()
        .find(|r| {
            r["status"] == "Failed"
                && r["http_status"] == 500
                && r["logs"].to_string().contains("about to fail")
        })
        .expect("a failed invocation keeps the handler's Logs");
    assert!(failed["error"].as_str().unwrap().contains("500"));
    up.stop();
}

#[test]
fn t41_forwarding_mode_relays_the_original_request_and_response() {
    let data = tempfile::tempdir().unwrap();
    let apps = tempfile::tempdir().unwrap();
    let app = apps.path().join("fwdapp");
    write_app(
        &app,
        &test_handler_host(r#","enableForwardingHttpRequest":true"#),
        &[
            ("fwd", &http_binding("fwd/{*rest}", "anonymous", "")),
            (
                // Two outputs: not eligible for forwarding, stays in JSON mode.
                "mixed",
                r#"{"bindings":[{"type":"httpTrigger","direction":"in","name":"req","authLevel":"anonymous","route":"mixed"},{"type":"http","direction":"out","name":"res"},{"type":"queue","direction":"out","name":"q","queueName":"x"}]}"#,
            ),
        ],
    );
    let up = Up::start(data.path(), &[&app], &[]);
    let base = up.http.clone();
    let r = http(
        "PUT",
        &base,
        "/api/fwd/a/b?q=1&r=x%20y",
        &[("x-custom", "v")],
        b"raw body",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-test-handler"), Some("forwarded"));
    let b = r.json();
    assert_eq!(b["method"], "PUT");
    assert_eq!(
        b["path"], "/api/fwd/a/b",
        "the original path, prefix included"
    );
    assert_eq!(b["query"], "q=1&r=x%20y");
    assert_eq!(b["body"], "raw body");
    assert_eq!(b["headers"]["x-custom"], serde_json::json!(["v"]));
    assert_eq!(
        b["headers"]["x-azure-functions-invocationid"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert!(b["headers"]["x-azure-functions-hostversion"].is_array());
    // Any status is relayed as is.
    assert_eq!(get(&base, "/api/fwd/x?action=status=418").status, 418);
    // The other function of the app stays in JSON mode.
    let r = get(&base, "/api/mixed");
    assert_eq!(r.header("x-test-handler"), Some("json"));
    up.stop();
}

#[test]
fn t42_a_crashed_handler_is_restarted_and_the_restart_is_visible() {
    let data = tempfile::tempdir().unwrap();
    let apps = tempfile::tempdir().unwrap();
    let app = apps.path().join("crashy");
    json_app(&app, "");
    let up = Up::start(data.path(), &[&app], &[]);
    let base = up.http.clone();
    let before = get(&base, "/api/items/1").json()["pid"].clone();
    let r = get(&base, "/api/items/1?action=crash");
    assert_eq!(r.status, 500, "the crashing invocation fails: {}", r.text());
    // The restart is immediate (no backoff for a first failure) and visible.
    let restarts = eventually(Duration::from_secs(10), "the restart count", || {
        let i = instances(&up, "crashy");
        (i.len() == 1 && i[0]["restarts"] == 1 && i[0]["state"] == "Ready").then(|| i[0].clone())
    });
    // A new handler process answers. (A request sent in the few microseconds
    // before the gateway learns of the exit can still meet a stale keep-alive
    // connection and fail; see docs/architecture.md §5.)
    let r = get(&base, "/api/items/1");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_ne!(r.json()["pid"], before, "a new handler process answers");
    assert!(
        restarts["last_error"]
            .as_str()
            .unwrap()
            .contains("exited with code 1"),
        "{restarts}"
    );
    up.stop();
}

#[test]
fn t43_a_handler_that_exits_at_once_is_reported_crash_looping() {
    let data = tempfile::tempdir().unwrap();
    let apps = tempfile::tempdir().unwrap();
    let app = apps.path().join("loopy");
    json_app(&app, "");
    std::fs::write(
        app.join("local.settings.json"),
        r#"{"Values":{"TEST_HANDLER_MODE":"exit-at-once"}}"#,
    )
    .unwrap();
    let up = Up::start(data.path(), &[&app], &["--startup-timeout-secs", "5"]);
    let status = eventually(Duration::from_secs(30), "CrashLooping", || {
        let i = instances(&up, "loopy");
        i.iter()
            // Of the serving version, but serving nothing (never shown as serving).
            .find(|x| x["state"] == "CrashLooping" && x["serving"] != true)
            .cloned()
    });
    assert!(status["restarts"].as_u64().unwrap() > 5, "{status}");
    assert!(
        status["last_error"]
            .as_str()
            .unwrap()
            .contains("exited with code 3"),
        "{status}"
    );
    let r = get(&up.http, "/api/items/1");
    assert_eq!(r.status, 503);
    assert!(r.text().contains("crash-looping"), "{}", r.text());
    let table = up.strom(&["cluster", "status"]);
    assert!(table.stdout.contains("CrashLooping"), "{}", table.stdout);
    up.stop();
}

#[test]
fn t44_a_handler_that_never_becomes_ready_fails_its_start_up_limit() {
    let data = tempfile::tempdir().unwrap();
    let apps = tempfile::tempdir().unwrap();
    let app = apps.path().join("sleepy");
    json_app(&app, "");
    std::fs::write(
        app.join("local.settings.json"),
        r#"{"Values":{"TEST_HANDLER_MODE":"never-ready"}}"#,
    )
    .unwrap();
    let up = Up::start(data.path(), &[&app], &["--startup-timeout-secs", "1"]);
    let status = eventually(Duration::from_secs(20), "a failed start", || {
        let i = instances(&up, "sleepy");
        i.iter()
            .find(|x| x["restarts"].as_u64().unwrap_or(0) >= 1)
            .cloned()
    });
    assert!(
        status["last_error"]
            .as_str()
            .unwrap()
            .contains("start-up limit"),
        "{status}"
    );
    assert_ne!(status["state"], "Ready");
    let r = get(&up.http, "/api/items/1");
    assert_eq!(r.status, 503, "{}", r.text());
    up.stop();
}

#[test]
fn t45_function_timeout_answers_504_and_recycles_the_instance() {
    let data = tempfile::tempdir().unwrap();
    let apps = tempfile::tempdir().unwrap();
    let app = apps.path().join("slow");
    json_app(&app, r#"},"functionTimeout":"00:00:01","x":{"#);
    let up = Up::start(data.path(), &[&app], &[]);
    let base = up.http.clone();
    let r = get(&base, "/api/items/1?action=sleep=5000");
    assert_eq!(r.status, 504, "{}", r.text());
    let recycled = eventually(Duration::from_secs(10), "the recycled instance", || {
        let i = instances(&up, "slow");
        (i.len() == 1 && i[0]["restarts"] == 1 && i[0]["state"] == "Ready").then(|| i[0].clone())
    });
    assert!(
        recycled["last_error"]
            .as_str()
            .unwrap()
            .contains("functionTimeout"),
        "{recycled}"
    );
    assert_eq!(get(&base, "/api/items/1").status, 200);
    eventually(Duration::from_secs(10), "a TimedOut record", || {
        let logs = up.strom_with(&["fn", "logs", "slow", "echo"], &["--output", "json"]);
        logs.stdout.contains("\"TimedOut\"").then_some(())
    });
    up.stop();
}

fn serving_pids(up: &Up, app: &str) -> Vec<u64> {
    instances(up, app)
        .iter()
        .filter(|i| i["serving"] == true && i["state"] == "Ready")
        .map(|i| i["pid"].as_u64().unwrap())
        .collect()
}

#[test]
fn t46_redeploy_under_a_steady_request_stream_fails_no_request() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    let data = tempfile::tempdir().unwrap();
    let apps = tempfile::tempdir().unwrap();
    let app = apps.path().join("steady");
    json_app(&app, "");
    let up = Up::start(data.path(), &[&app], &[]);
    let v1 = up.json(&["app", "show", "steady"])["app"]["active_version"].clone();
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new((
        0u32,
        Vec::<String>::new(),
        std::collections::BTreeSet::new(),
    )));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (stop, seen, base) = (stop.clone(), seen.clone(), up.http.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let r = get(&base, "/api/items/1");
                    let mut s = seen.lock().unwrap();
                    s.0 += 1;
                    if r.status == 200 {
                        s.2.insert(r.json()["pid"].as_u64().unwrap());
                    } else {
                        s.1.push(format!("{} {}", r.status, r.text()));
                    }
                }
            })
        })
        .collect();
    let served = || seen.lock().unwrap().0;
    let stream_runs = |more: u32| {
        let from = served();
        eventually(Duration::from_secs(30), "the request stream", || {
            (served() >= from + more).then_some(())
        });
    };
    stream_runs(20);
    std::fs::write(app.join("v2.txt"), "a new version").unwrap();
    let d = up.strom(&["app", "deploy", app.to_str().unwrap()]);
    assert_eq!(d.code, 0, "{}", d.stderr);
    // The new version takes over and the old one is drained and stopped.
    eventually(
        Duration::from_secs(30),
        "the switch to the new version",
        || {
            let i = instances(&up, "steady");
            (i.len() == 1 && i[0]["version_id"] != v1 && i[0]["serving"] == true).then_some(())
        },
    );
    stream_runs(20);
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let (total, failures, pids) = &*seen.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} of {total} requests failed: {failures:?}",
        failures.len()
    );
    assert!(pids.len() >= 2, "both versions answered: {pids:?}");
    assert!(*total > 20, "the stream kept going: {total}");
    up.stop();
}

#[cfg(target_os = "linux")]
#[test]
fn t47_node_restart_serves_again_and_leaves_no_orphan_handlers() {
    let data = tempfile::tempdir().unwrap();
    let apps = tempfile::tempdir().unwrap();
    let app = apps.path().join("durable");
    json_app(&app, "");
    let up = Up::start(data.path(), &[&app], &[]);
    let pid = get(&up.http, "/api/items/1").json()["pid"]
        .as_u64()
        .unwrap();
    let alive = |pid: u64| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.contains(") Z "))
            .unwrap_or(false)
    };
    assert!(alive(pid));
    // A clean stop takes the handlers with it.
    up.stop();
    assert!(!alive(pid), "handler {pid} outlived a clean stop");

    let up = Up::start(data.path(), &[], &[]);
    let pid = get(&up.http, "/api/items/1").json()["pid"]
        .as_u64()
        .unwrap();
    up.kill9();
    // Its handler dies with it (parent-death signal; the restart would sweep it
    // otherwise).
    eventually(
        Duration::from_secs(10),
        "the handler to die with its node",
        || (!alive(pid)).then_some(()),
    );
    let up = Up::start(data.path(), &[], &[]);
    let r = get(&up.http, "/api/items/1");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_ne!(r.json()["pid"].as_u64().unwrap(), pid);
    up.stop();
}

#[test]
fn t48_scale_sets_the_number_of_instances() {
    let data = tempfile::tempdir().unwrap();
    let apps = tempfile::tempdir().unwrap();
    let app = apps.path().join("wide");
    json_app(&app, "");
    let up = Up::start(data.path(), &[&app], &[]);
    let out = up.strom(&["app", "scale", "wide", "2"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let pids = eventually(Duration::from_secs(20), "two Ready instances", || {
        let p = serving_pids(&up, "wide");
        (p.len() == 2).then_some(p)
    });
    let mut answered = std::collections::BTreeSet::new();
    for _ in 0..20 {
        answered.insert(
            get(&up.http, "/api/items/1").json()["pid"]
                .as_u64()
                .unwrap(),
        );
    }
    assert_eq!(
        answered.len(),
        2,
        "both instances take requests: {answered:?} of {pids:?}"
    );
    assert_eq!(up.strom(&["app", "scale", "wide", "1"]).code, 0);
    eventually(Duration::from_secs(20), "one instance", || {
        (instances(&up, "wide").len() == 1).then_some(())
    });
    assert_eq!(up.strom(&["app", "scale", "wide", "1000"]).code, 2);
    // Deleting the app stops its instances and its routes (and, checked on Linux,
    // its handler process).
    #[cfg_attr(not(target_os = "linux"), allow(unused_variables))]
    let pid = get(&up.http, "/api/items/1").json()["pid"]
        .as_u64()
        .unwrap();
    assert_eq!(up.strom(&["app", "delete", "wide"]).code, 0);
    eventually(Duration::from_secs(20), "the app gone", || {
        (get(&up.http, "/api/items/1").status == 404).then_some(())
    });
    #[cfg(target_os = "linux")]
    eventually(Duration::from_secs(20), "its handler stopped", || {
        (!std::path::Path::new(&format!("/proc/{pid}/cmdline")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| s.contains(") Z "))
                .unwrap_or(true))
        .then_some(())
    });
    up.stop();
}

#[test]
fn t49_max_outstanding_requests_answers_429() {
    let data = tempfile::tempdir().unwrap();
    let apps = tempfile::tempdir().unwrap();
    let app = apps.path().join("narrow");
    json_app(
        &app,
        r#"},"extensions":{"http":{"maxOutstandingRequests":1,"maxConcurrentRequests":1}},"x":{"#,
    );
    let up = Up::start(data.path(), &[&app], &[]);
    let base = up.http.clone();
    let slow = std::thread::spawn(move || get(&base, "/api/items/1?action=sleep=4000").status);
    // Let the slow request in first (a probe in flight would make *it* the 429).
    std::thread::sleep(Duration::from_millis(500));
    eventually(
        Duration::from_secs(20),
        "the slow request in flight",
        || {
            let r = get(&up.http, "/api/items/2");
            (r.status == 429).then_some(())
        },
    );
    assert_eq!(slow.join().unwrap(), 200);
    assert_eq!(get(&up.http, "/api/items/3").status, 200, "free again");
    up.stop();
}

#[test]
fn t50_fn_logs_follow_streams_new_invocations() {
    use std::io::{BufRead, BufReader};
    let data = tempfile::tempdir().unwrap();
    let apps = tempfile::tempdir().unwrap();
    let app = apps.path().join("tail");
    json_app(&app, "");
    let up = Up::start(data.path(), &[&app], &[]);
    let mut follower = std::process::Command::new(common::STROM)
        .args([
            "fn",
            "logs",
            "tail",
            "echo",
            "--follow",
            "--output",
            "json",
            "--server",
            &up.server,
            "--data-dir",
        ])
        .arg(data.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follower.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // Call until the follower (subscribed at some point) streams one of our calls.
    let mut ids = Vec::new();
    let line = eventually(Duration::from_secs(20), "a streamed invocation", || {
        let id = get(&up.http, "/api/items/9").json()["invocationId"]
            .as_str()
            .unwrap()
            .to_string();
        ids.push(id);
        rx.recv_timeout(Duration::from_millis(200)).ok()
    });
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert!(
        ids.iter().any(|id| v["id"] == id.as_str()),
        "{v} not among {ids:?}"
    );
    assert_eq!(v["status"], "Succeeded");
    let _ = follower.kill();
    let _ = follower.wait();
    up.stop();
}

#[test]
fn t51_a_crash_looping_new_version_leaves_the_old_one_serving() {
    let data = tempfile::tempdir().unwrap();
    let apps = tempfile::tempdir().unwrap();
    let app = apps.path().join("keeper");
    json_app(&app, "");
    let up = Up::start(data.path(), &[&app], &[]);
    let v1 = up.json(&["app", "show", "keeper"])["app"]["active_version"].clone();
    // v2 (new package and settings) exits at once, forever.
    std::fs::write(app.join("v2.txt"), "v2").unwrap();
    std::fs::write(
        app.join("local.settings.json"),
        r#"{"Values":{"TEST_HANDLER_MODE":"exit-at-once"}}"#,
    )
    .unwrap();
    let d = up.strom(&[
        "app",
        "deploy",
        app.to_str().unwrap(),
        "--publish-local-settings",
    ]);
    assert_eq!(d.code, 0, "{}", d.stderr);
    eventually(
        Duration::from_secs(30),
        "v2 crash-looping next to v1",
        || {
            let i = instances(&up, "keeper");
            let v2_looping = i.iter().any(|x| {
                x["version_id"] != v1 && x["state"] == "CrashLooping" && x["serving"] == false
            });
            let v1_serving = i
                .iter()
                .any(|x| x["version_id"] == v1 && x["serving"] == true);
            (v2_looping && v1_serving).then_some(())
        },
    );
    assert_eq!(
        get(&up.http, "/api/items/1").status,
        200,
        "v1 still answers"
    );
    // Even when v1's instance crashes and restarts, v1 stays the serving version.
    assert_eq!(get(&up.http, "/api/items/1?action=crash").status, 500);
    eventually(
        Duration::from_secs(10),
        "v1 restarted and still serving",
        || {
            instances(&up, "keeper")
                .iter()
                .any(|x| {
                    x["version_id"] == v1
                        && x["serving"] == true
                        && x["restarts"] == 1
                        && x["state"] == "Ready"
                })
                .then_some(())
        },
    );
    let r = get(&up.http, "/api/items/1");
    assert_eq!(r.status, 200, "{}", r.text());
    up.stop();
}

/// Disk does not grow forever: an app keeps its newest versions (`--keep-versions`),
/// the packages no version references leave the package store, and the unpacked
/// versions no instance uses leave the worker's disk; deleting the app removes the
/// rest.
#[test]
fn t52_old_versions_and_deleted_apps_leave_the_disks() {
    let data = tempfile::tempdir().unwrap();
    let apps = tempfile::tempdir().unwrap();
    let app = apps.path().join("rolling");
    json_app(&app, "");
    let up = Up::start(data.path(), &[], &["--keep-versions", "2"]);
    let blobs = data.path().join("blobs").join("sha256");
    let unpacked = data.path().join("apps").join("rolling");
    let names = |dir: &Path| -> Vec<String> {
        let mut n: Vec<String> = std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().to_string())
                    .filter(|n| !n.starts_with('.'))
                    .collect()
            })
            .unwrap_or_default();
        n.sort();
        n
    };
    let mut deployed = Vec::new();
    for n in 0..4 {
        std::fs::write(app.join("marker.txt"), format!("version {n}")).unwrap();
        let out = up.strom_with(
            &["app", "deploy", app.to_str().unwrap()],
            &["--output", "json"],
        );
        assert_eq!(out.code, 0, "{}", out.stderr);
        let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        deployed.push(v["version_id"].as_str().unwrap().to_string());
        eventually(Duration::from_secs(20), "the new version serving", || {
            (get(&up.http, "/api/items/1").status == 200
                && instances(&up, "rolling")
                    .iter()
                    .all(|i| i["version_id"] == deployed[n]))
            .then_some(())
        });
    }
    let kept: Vec<String> = deployed[2..].to_vec();
    let versions = eventually(Duration::from_secs(20), "two versions kept", || {
        let listed: Vec<String> = up.json(&["app", "show", "rolling"])["versions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["version_id"].as_str().unwrap().to_string())
            .collect();
        (listed.len() == 2).then_some(listed)
    });
    assert!(kept.iter().all(|k| versions.contains(k)), "{versions:?}");
    // A forgotten version cannot be rolled back to.
    let out = up.strom(&["app", "rollback", "rolling", &deployed[0][..12]]);
    assert_eq!(out.code, 3, "{}", out.stderr);
    let mut expected = kept.clone();
    expected.sort();
    eventually(Duration::from_secs(20), "only kept packages stored", || {
        (names(&blobs) == expected).then_some(())
    });
    eventually(
        Duration::from_secs(20),
        "only the running version unpacked",
        || (names(&unpacked) == vec![deployed[3].clone()]).then_some(()),
    );

    // Scaled to 0 and up again, the app keeps its active version unpacked (it was
    // removed when the instance stopped and unpacked again for the scale-up): a
    // file left in the unpacked folder is still there when it serves again.
    let marker = unpacked.join(&deployed[3]).join("still-unpacked");
    std::fs::write(&marker, "").unwrap();
    assert_eq!(up.strom(&["app", "scale", "rolling", "0"]).code, 0);
    eventually(Duration::from_secs(20), "no instance left", || {
        instances(&up, "rolling").is_empty().then_some(())
    });
    assert_eq!(up.strom(&["app", "scale", "rolling", "1"]).code, 0);
    eventually(Duration::from_secs(20), "serving again", || {
        (get(&up.http, "/api/items/1").status == 200).then_some(())
    });
    assert!(
        marker.exists(),
        "the unpacked version was removed and unpacked again"
    );

    assert_eq!(up.strom(&["app", "delete", "rolling"]).code, 0);
    eventually(Duration::from_secs(20), "no package left", || {
        names(&blobs).is_empty().then_some(())
    });
    eventually(Duration::from_secs(20), "nothing unpacked left", || {
        (!unpacked.exists()).then_some(())
    });
    up.stop();
}
