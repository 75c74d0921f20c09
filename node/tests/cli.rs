//! The `strom` binary as a user runs it: `strom up` in the background, client
//! commands against it, restarts (SIGTERM and kill -9), bad input.

mod common;

use std::process::Command;

use common::{examples, http_fn, write_app, Up, HOST, STROM};

#[test]
fn t20_up_deploys_and_list_show_return_the_app_and_its_functions() {
    let data = tempfile::tempdir().unwrap();
    let up = Up::start(data.path(), &[&examples().join("hello-python")], &[]);
    assert!(up
        .stdout
        .iter()
        .any(|l| l.contains("Admin token (shown once")));
    let hello_url = format!("{}/api/hello/{{name?}}", up.http);
    assert!(
        up.stdout.iter().any(|l| l.contains(&hello_url)),
        "{:#?}",
        up.stdout
    );

    let apps = up.json(&["app", "list"]);
    assert_eq!(apps["apps"][0]["name"], "hello-python");
    assert_eq!(apps["apps"][0]["function_count"], 3);

    let show = up.json(&["app", "show", "hello-python"]);
    let functions = show["functions"].as_array().unwrap();
    let names: Vec<_> = functions
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["hello", "nightly", "secret"]);
    assert_eq!(functions[0]["trigger_type"], "httpTrigger");
    assert_eq!(functions[0]["methods"], serde_json::json!(["GET", "POST"]));
    assert_eq!(functions[0]["url"], hello_url.as_str());
    assert_eq!(functions[1]["trigger_type"], "timerTrigger");
    assert_eq!(functions[1]["schedule"], "0 30 2 * * *");

    assert_eq!(functions[2]["auth_level"], "function");
    assert!(
        !functions[2]["key"].as_str().unwrap().is_empty(),
        "the key to call it is shown"
    );
    let settings = up.json(&["app", "settings", "get", "hello-python"]);
    assert_eq!(
        settings["settings"]["GREETING"], "Hello",
        "local.settings.json Values applied"
    );

    let fns = up.json(&["fn", "list", "hello-python"]);
    assert_eq!(fns["functions"].as_array().unwrap().len(), 3);

    // `strom … | head`: a reader that goes away ends the command quietly.
    let mut child = Command::new(STROM)
        .args([
            "app",
            "show",
            "hello-python",
            "--server",
            &up.server,
            "--data-dir",
        ])
        .arg(data.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // closed before the answer comes back
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");

    let table = up.strom(&["app", "list"]);
    assert_eq!(table.code, 0);
    assert!(table.stdout.contains("hello-python"), "{}", table.stdout);

    let status = up.json(&["cluster", "status"]);
    assert_eq!(status["leader_id"], 1);
    assert_eq!(status["app_count"], 1);
    assert_eq!(status["members"][0]["voter"], true);
    up.stop();
}

#[test]
fn t21_restart_after_sigterm_and_kill9_keeps_everything_and_does_not_reinitialize() {
    let data = tempfile::tempdir().unwrap();
    let apps = tempfile::tempdir().unwrap();
    let app = apps.path().join("orders");
    write_app(&app, HOST, &[("list", &http_fn("orders"))]);

    let up = Up::start(data.path(), &[], &[]);
    let token = std::fs::read_to_string(data.path().join("admin.token")).unwrap();
    let deploy = up.strom(&["app", "deploy", app.to_str().unwrap()]);
    assert_eq!(deploy.code, 0, "{}", deploy.stderr);
    let set = up.strom(&["app", "settings", "set", "orders", "MODE=batch", "X=1"]);
    assert_eq!(set.code, 0, "{}", set.stderr);
    let cluster_id = up.json(&["cluster", "status"])["cluster_id"].clone();
    up.stop();

    let up = Up::start(data.path(), &[], &[]);
    assert!(
        up.stdout
            .iter()
            .any(|l| l.starts_with("Restarted into cluster")),
        "{:#?}",
        up.stdout
    );
    assert!(!up.stdout.iter().any(|l| l.contains("Admin token")));
    assert_eq!(up.json(&["cluster", "status"])["cluster_id"], cluster_id);
    assert_eq!(up.json(&["app", "list"])["apps"][0]["name"], "orders");
    // One more write, then kill -9 right after it was acknowledged.
    let set = up.strom(&["app", "settings", "set", "orders", "AFTER=restart"]);
    assert_eq!(set.code, 0, "{}", set.stderr);
    up.kill9();

    let up = Up::start(data.path(), &[], &[]);
    assert!(!up.stdout.iter().any(|l| l.contains("Admin token")));
    assert_eq!(up.json(&["cluster", "status"])["cluster_id"], cluster_id);
    let settings = up.json(&["app", "settings", "get", "orders"]);
    assert_eq!(settings["settings"]["MODE"], "batch");
    assert_eq!(settings["settings"]["AFTER"], "restart");
    assert_eq!(
        std::fs::read_to_string(data.path().join("admin.token")).unwrap(),
        token,
        "the admin token is unchanged"
    );
    assert_eq!(up.json(&["fn", "list"])["functions"][0]["name"], "list");
    up.stop();
}

#[test]
fn t22_bad_apps_are_refused_with_all_their_errors_and_change_nothing() {
    let data = tempfile::tempdir().unwrap();
    let apps = tempfile::tempdir().unwrap();
    let good = apps.path().join("shop");
    write_app(&good, HOST, &[("items", &http_fn("items/{id:int}"))]);
    let up = Up::start(data.path(), &[&good], &[]);
    let active = up.json(&["app", "show", "shop"])["app"]["active_version"].clone();

    let bad = apps.path().join("bad").join("shop");
    write_app(
        &bad,
        r#"{"version":"1.0","customHandler":{"description":{"defaultExecutablePath":"no-such-handler-xyz"}}}"#,
        &[
            ("1abc", &http_fn("x")),
            ("admin-fn", &http_fn("admin/things")),
            ("badroute", &http_fn("items/{id:int")),
            (
                "badcron",
                r#"{"bindings":[{"type":"timerTrigger","direction":"in","name":"t","schedule":"61 * * * * *"}]}"#,
            ),
            ("broken", "{ not json"),
        ],
    );
    let out = up.strom(&["app", "deploy", bad.to_str().unwrap()]);
    assert_eq!(out.code, 2, "invalid input exits with 2: {}", out.stderr);
    for expected in [
        "host.json: version",
        "no-such-handler-xyz",
        "1abc",
        "admin-fn/function.json: bindings[0].route",
        "badroute/function.json: bindings[0].route",
        "badcron/function.json: bindings[0].schedule",
        "broken/function.json",
    ] {
        assert!(
            out.stderr.contains(expected),
            "missing `{expected}` in:\n{}",
            out.stderr
        );
    }
    assert_eq!(
        up.json(&["app", "show", "shop"])["app"]["active_version"],
        active,
        "the previous version stays active"
    );

    // An empty app.
    let empty = apps.path().join("empty").join("shop");
    write_app(&empty, HOST, &[]);
    let out = up.strom(&["app", "deploy", empty.to_str().unwrap()]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("no functions"), "{}", out.stderr);

    // Overlapping routes with another app on the shared address.
    let other = apps.path().join("other");
    write_app(&other, HOST, &[("item", &http_fn("items/{key:int}"))]);
    let out = up.strom(&["app", "deploy", other.to_str().unwrap()]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("`shop`") && out.stderr.contains("`other`"),
        "{}",
        out.stderr
    );
    assert_eq!(
        up.json(&["app", "list"])["apps"].as_array().unwrap().len(),
        1
    );
    up.stop();
}

#[test]
fn t23_wrong_or_missing_admin_token_is_refused() {
    let data = tempfile::tempdir().unwrap();
    let up = Up::start(data.path(), &[], &[]);
    let out = up.strom_with(&["app", "list"], &["--token", "strom_wrong"]);
    assert_eq!(out.code, 4);
    assert!(out.stderr.contains("invalid admin token"), "{}", out.stderr);

    let elsewhere = tempfile::tempdir().unwrap();
    let out = Command::new(STROM)
        .args(["app", "list", "--server", &up.server, "--data-dir"])
        .arg(elsewhere.path())
        .env_remove("STROM_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no admin token"));

    let token = std::fs::read_to_string(data.path().join("admin.token")).unwrap();
    let out = Command::new(STROM)
        .args(["app", "list", "--server", &up.server, "--data-dir"])
        .arg(elsewhere.path())
        .env("STROM_TOKEN", token.trim())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    up.stop();
}

#[test]
fn t24_rollback_activates_the_earlier_version() {
    let data = tempfile::tempdir().unwrap();
    let apps = tempfile::tempdir().unwrap();
    let app = apps.path().join("billing");
    write_app(&app, HOST, &[("v1fn", &http_fn("one"))]);
    let up = Up::start(data.path(), &[&app], &[]);
    let v1 = up.json(&["app", "show", "billing"])["app"]["active_version"]
        .as_str()
        .unwrap()
        .to_string();

    std::fs::remove_dir_all(app.join("v1fn")).unwrap();
    write_app(&app, HOST, &[("v2fn", &http_fn("two"))]);
    let d = up.json(&["app", "deploy", app.to_str().unwrap()]);
    assert_eq!(d["changed"], true);
    assert_eq!(d["functions"][0]["name"], "v2fn");
    let show = up.json(&["app", "show", "billing"]);
    assert_eq!(show["versions"].as_array().unwrap().len(), 2);

    let out = up.strom(&["app", "rollback", "billing", &v1[..10]]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let show = up.json(&["app", "show", "billing"]);
    assert_eq!(show["app"]["active_version"], v1.as_str());
    assert_eq!(show["functions"][0]["name"], "v1fn");

    let out = up.strom(&["app", "rollback", "billing", "0000000000"]);
    assert_eq!(out.code, 3, "{}", out.stderr);
    let out = up.strom(&["app", "rollback", "nope", &v1]);
    assert_eq!(out.code, 3, "{}", out.stderr);
    up.stop();
}

#[test]
fn t25_oversized_uploads_are_refused_by_the_configured_limit() {
    let data = tempfile::tempdir().unwrap();
    let apps = tempfile::tempdir().unwrap();
    let app = apps.path().join("big");
    write_app(&app, HOST, &[("f", &http_fn("big"))]);
    // Incompressible filler so the zip itself is large.
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let filler: Vec<u8> = (0..400_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect();
    std::fs::write(app.join("blob.bin"), filler).unwrap();
    let up = Up::start(data.path(), &[], &["--max-package-bytes", "100000"]);
    let out = up.strom(&["app", "deploy", app.to_str().unwrap()]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("upload limit of 100000 bytes"),
        "{}",
        out.stderr
    );
    assert_eq!(
        up.json(&["app", "list"])["apps"].as_array().unwrap().len(),
        0
    );
    up.stop();
}

#[test]
fn t26_usage_errors_exit_non_zero_with_a_reason() {
    let out = Command::new(STROM)
        .args(["app", "deploy", "/definitely/not/here"])
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    let out = Command::new(STROM)
        .args([
            "app",
            "list",
            "--server",
            "http://127.0.0.1:1",
            "--token",
            "x",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(5));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach"));
}

#[test]
fn t27_local_settings_host_port_is_honoured_unless_http_addr_is_given() {
    let data = tempfile::tempdir().unwrap();
    let apps = tempfile::tempdir().unwrap();
    let app = apps.path().join("porty");
    write_app(&app, HOST, &[("f", &http_fn("porty"))]);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(
        app.join("local.settings.json"),
        format!(
            r#"{{"IsEncrypted":false,"Values":{{"K":"v"}},"Host":{{"LocalHttpPort":{port}}}}}"#
        ),
    )
    .unwrap();
    let up = Up::start_with(data.path(), &[&app], &[], false);
    assert_eq!(up.http, format!("http://127.0.0.1:{port}"));
    let settings = up.json(&["app", "settings", "get", "porty"]);
    assert_eq!(settings["settings"]["K"], "v");
    // The file itself is not deployed.
    let bad = apps.path().join("bad").join("porty");
    write_app(&bad, HOST, &[("f", &http_fn("porty"))]);
    std::fs::write(bad.join("local.settings.json"), "{ nope").unwrap();
    let out = up.strom(&["app", "deploy", bad.to_str().unwrap()]);
    assert_eq!(
        out.code, 0,
        "an unread local.settings.json is not part of the package: {}",
        out.stderr
    );
    let out = up.strom(&[
        "app",
        "deploy",
        bad.to_str().unwrap(),
        "--publish-local-settings",
    ]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("local.settings.json"), "{}", out.stderr);
    up.stop();
}

#[test]
fn t28_cluster_members_and_the_last_voter_cannot_be_removed() {
    let data = tempfile::tempdir().unwrap();
    let up = Up::start(data.path(), &[], &[]);
    let members = up.json(&["cluster", "members"]);
    assert_eq!(members[0]["node_id"], 1);
    assert_eq!(members[0]["voter"], true);
    let workers = |up: &Up| {
        up.json(&["cluster", "status"])["workers"]
            .as_array()
            .map(|w| w.iter().map(|w| w["node_id"].clone()).collect::<Vec<_>>())
            .unwrap_or_default()
    };
    assert_eq!(workers(&up), vec![serde_json::json!(1)]);
    let out = up.strom(&["cluster", "remove-member", "1"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("only voter"), "{}", out.stderr);
    // A refused command changes nothing: the node's worker is still registered.
    assert_eq!(workers(&up), vec![serde_json::json!(1)]);
    let out = up.strom(&["cluster", "remove-member", "7"]);
    assert_eq!(out.code, 3, "{}", out.stderr);
    up.stop();
}
