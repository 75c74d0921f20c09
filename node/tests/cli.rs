//! The `strom` binary as a user runs it: `strom up` in the background, client
//! commands against it, restarts (SIGTERM and kill -9), bad input.

// Unix only: not run on Windows yet (signals, `sh` handlers, Unix modes, or
// untried there); on Windows `.ci/windows/run` runs `e2e.rs` and the smoke test
// under Wine (docs/windows.md).
#![cfg(unix)]

mod common;

use std::process::Command;

use std::time::Duration;

use common::{eventually, examples, get, http, http_fn, write_app, Up, HOST, STROM};

/// An app run by the Rust test handler: one anonymous HTTP function `f` at `/api/f`.
fn handler_app(app: &std::path::Path) {
    write_app(
        app,
        &common::test_handler_host(""),
        &[(
            "f",
            r#"{"bindings":[{"type":"httpTrigger","direction":"in","name":"req","authLevel":"anonymous","route":"f"},{"type":"http","direction":"out","name":"res"}]}"#,
        )],
    );
}

/// [`handler_app`] with a function key required.
fn keyed_handler_app(app: &std::path::Path) {
    write_app(app, &common::test_handler_host(""), &[("f", &http_fn("f"))]);
}

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
    let port = up.http.rsplit(':').next().unwrap();
    assert_eq!(
        functions[0]["app_url"],
        format!("http://hello-python.localhost:{port}/api/hello/{{name?}}")
    );
    assert_eq!(
        show["app"]["url"],
        format!("http://hello-python.localhost:{port}")
    );
    assert_eq!(functions[1]["trigger_type"], "timerTrigger");
    assert_eq!(functions[2]["auth_level"], "function");
    assert!(
        !functions[2]["key"].as_str().unwrap().is_empty(),
        "the key to call it is shown"
    );
    // The first screen fits 100 columns; --wide shows whole keys.
    let widest = up.stdout.iter().map(|l| l.chars().count()).max().unwrap();
    assert!(widest <= 100, "{widest} columns: {:#?}", up.stdout);
    let key = functions[2]["key"].as_str().unwrap();
    assert!(!up.stdout.iter().any(|l| l.contains(key)));
    let wide = up.strom(&["fn", "list", "hello-python", "--wide"]);
    assert!(wide.stdout.contains(key), "{}", wide.stdout);
    let narrow = up.strom(&["fn", "list", "hello-python"]);
    assert!(!narrow.stdout.contains(key), "{}", narrow.stdout);
    assert!(
        narrow
            .stdout
            .contains("own address http://hello-python.localhost:"),
        "{}",
        narrow.stdout
    );
    let settings = up.json(&["app", "settings", "get", "hello-python"]);
    assert_eq!(
        settings["settings"]["GREETING"], "Hello",
        "local.settings.json Values applied"
    );

    let fns = up.json(&["fn", "list", "hello-python"]);
    assert_eq!(fns["functions"].as_array().unwrap().len(), 3);
    // The sample's timer runs now on request, and its status shows the next tick.
    let out = up.strom(&["fn", "invoke", "hello-python", "nightly"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let nightly = fns["functions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "nightly")
        .unwrap();
    assert_eq!(
        nightly["timer"]["schedule"], "0 30 2 * * * (UTC)",
        "{nightly}"
    );

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

    // A route another app has too is no error: a warning names both apps and
    // where each is still reached.
    let other = apps.path().join("other");
    write_app(&other, HOST, &[("item", &http_fn("items/{key:int}"))]);
    let out = up.strom(&["app", "deploy", other.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("warning: app `other`'s function `item` and app `shop`'s")
            && out.stderr.contains("http://other.localhost:")
            && out.stderr.contains("http://shop.localhost:"),
        "{}",
        out.stderr
    );
    assert_eq!(
        up.json(&["app", "list"])["apps"].as_array().unwrap().len(),
        2
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
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no member answered; tried:\n  http://127.0.0.1:1: ")
            && stderr.contains("is `strom up` running?"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("tcp connect error: tcp connect error"),
        "{stderr}"
    );
    for (server, says) in [
        ("127.0.0.1:7171", "give a URL like http://127.0.0.1:7171"),
        ("ftp://127.0.0.1:7171", "not a scheme Strom speaks"),
    ] {
        let out = Command::new(STROM)
            .args(["app", "list", "--server", server, "--token", "x"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{server}: {stderr}");
        assert!(stderr.contains(says), "{server}: {stderr}");
    }
    // The function port given by mistake.
    let data = tempfile::tempdir().unwrap();
    let up = Up::start(data.path(), &[], &[]);
    let out = common::cli(
        &up.http,
        &["app", "list"],
        &["--data-dir", data.path().to_str().unwrap()],
    );
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("function port"), "{}", out.stderr);
    up.stop();
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
    assert!(members.is_object(), "{members}");
    assert_eq!(members["leader_id"], 1);
    assert_eq!(members["members"][0]["node_id"], 1);
    assert_eq!(members["members"][0]["voter"], true);
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

#[test]
fn t29_a_ready_made_zip_deploys_and_special_files_are_refused() {
    let data = tempfile::tempdir().unwrap();
    let up = Up::start(data.path(), &[], &[]);
    let files = tempfile::tempdir().unwrap();
    let zip = files.path().join("Zipped.zip");
    std::fs::write(&zip, strom_testkit::apps::app_zip("zipped")).unwrap();
    let out = up.strom(&["app", "deploy", zip.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    // Named after the file, as a folder is named after itself.
    let show = up.json(&["app", "show", "zipped"]);
    assert_eq!(show["functions"][0]["name"], "f");

    // Not a zip: a clear error, nothing deployed.
    let text = files.path().join("notes.zip");
    std::fs::write(&text, "hello").unwrap();
    let out = up.strom(&["app", "deploy", text.to_str().unwrap()]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("not a zip file"), "{}", out.stderr);
    let out = up.strom(&[
        "app",
        "deploy",
        zip.to_str().unwrap(),
        "--publish-local-settings",
    ]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("needs an app folder"), "{}", out.stderr);

    // A FIFO in an app folder is refused at once (it used to hang the deploy).
    #[cfg(unix)]
    {
        let app = files.path().join("piped");
        write_app(&app, HOST, &[("f", &http_fn("piped"))]);
        let made = Command::new("mkfifo")
            .arg(app.join("pipe"))
            .status()
            .unwrap();
        assert!(made.success());
        let out = up.strom(&["app", "deploy", app.to_str().unwrap()]);
        assert_eq!(out.code, 2, "{}", out.stderr);
        assert!(
            out.stderr.contains("`pipe`") && out.stderr.contains("special file"),
            "{}",
            out.stderr
        );
    }
    let apps = up.json(&["app", "list"]);
    assert_eq!(apps["apps"].as_array().unwrap().len(), 1, "{apps}");
    up.stop();
}

#[test]
fn t30_logs_to_a_file_are_plain_and_show_handler_output() {
    use std::io::{BufRead, BufReader};
    let data = tempfile::tempdir().unwrap();
    let apps = tempfile::tempdir().unwrap();
    let app = apps.path().join("logged");
    handler_app(&app);
    let log = data.path().join("node.log");
    let mut child = Command::new(STROM)
        .arg("up")
        .arg(&app)
        .arg("--data-dir")
        .arg(data.path().join("d"))
        .args([
            "--control-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
        ])
        .env_remove("STROM_LOG")
        .env_remove("NO_COLOR")
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut http = None;
    for line in BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
    {
        if let Some(rest) = line.trim().strip_prefix("functions:") {
            http = rest.split_whitespace().next().map(str::to_string);
        }
        if line.starts_with("Ready.") {
            break;
        }
    }
    let r = common::get(&http.unwrap(), "/api/f");
    assert_eq!(r.status, 200, "{}", r.text());
    let id = r
        .header("x-azure-functions-invocationid")
        .map(str::to_string);
    let text = common::eventually(
        std::time::Duration::from_secs(10),
        "the handler's line in the log",
        || {
            let text = std::fs::read_to_string(&log).ok()?;
            text.contains("stdout ").then_some(text)
        },
    );
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    assert!(
        !text.contains('\u{1b}'),
        "no colour codes in a file: {text}"
    );
    assert!(text.contains("strom_handler"), "{text}");
    if let Some(id) = id {
        assert!(text.contains(&format!("stdout {id}")), "{text}");
    }
}

#[test]
fn t31_up_with_an_invalid_app_creates_nothing() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().join("node");
    let apps = tempfile::tempdir().unwrap();
    let bad = apps.path().join("bad");
    write_app(
        &bad,
        HOST,
        &[("f", &http_fn("items/{id:int")), ("g", "{ not json")],
    );
    let out = Command::new(STROM)
        .arg("up")
        .arg(&bad)
        .arg("--data-dir")
        .arg(&dir)
        .args([
            "--control-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stdout}\n{stderr}");
    // Every problem at once, naming file and JSON path.
    assert!(stderr.contains("f/function.json"), "{stderr}");
    assert!(stderr.contains("g/function.json"), "{stderr}");
    assert!(!stdout.contains("Admin token"), "{stdout}");
    assert!(!dir.join("node.json").exists());
    assert!(!dir.join("admin.token").exists());
}

#[test]
fn t32_fn_logs_names_unknown_apps_and_says_why_a_follow_ended() {
    let data = tempfile::tempdir().unwrap();
    let apps = tempfile::tempdir().unwrap();
    let app = apps.path().join("logs");
    handler_app(&app);
    let up = Up::start(data.path(), &[&app], &[]);
    for args in [
        &["fn", "logs", "nosuch"][..],
        &["fn", "logs", "logs", "nofn"],
    ] {
        let out = up.strom(args);
        assert_eq!(out.code, 3, "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains("not found"), "{}", out.stderr);
    }
    let r = common::get(&up.http, "/api/f");
    assert_eq!(r.status, 200, "{}", r.text());
    let lines = |extra: &[&str]| {
        let mut args = vec!["fn", "logs", "logs", "f", "--output", "json"];
        args.extend_from_slice(extra);
        let out = up.strom_with(&args, &[]);
        assert_eq!(out.code, 0, "{}", out.stderr);
        out.stdout.lines().count()
    };
    // The record is written once its grace for trailing output is over.
    common::eventually(std::time::Duration::from_secs(10), "the record", || {
        (lines(&[]) == 1).then_some(())
    });
    assert_eq!(lines(&["--tail", "0"]), 0);

    // A follower is told that the node went away, and exits non-zero.
    let mut follow = Command::new(STROM)
        .args(["fn", "logs", "logs", "--follow", "--tail", "1"])
        .args(["--output", "json", "--server", &up.server, "--data-dir"])
        .arg(data.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Following once the backlog (the one record) has come through.
    let mut first = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(follow.stdout.take().unwrap()),
        &mut first,
    )
    .unwrap();
    assert!(first.contains("\"id\""), "{first}");
    up.stop();
    let out = follow.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{stderr}");
    assert!(stderr.contains("the node is stopping"), "{stderr}");
}

#[test]
fn t33_up_reports_an_app_that_is_not_ready_and_never_shows_it_serving() {
    let data = tempfile::tempdir().unwrap();
    let apps = tempfile::tempdir().unwrap();
    let app = apps.path().join("boom");
    write_app(
        &app,
        r#"{"version":"2.0","customHandler":{"description":{"defaultExecutablePath":"sh","arguments":["-c","echo boom >&2; exit 3"]}}}"#,
        &[("f", &http_fn("f"))],
    );
    let up = Up::start(data.path(), &[&app], &["--startup-timeout-secs", "3"]);
    assert!(
        up.stdout
            .iter()
            .any(|l| l.starts_with("app `boom`: NOT ready") && l.contains("boom")),
        "{:#?}",
        up.stdout
    );
    let last = up.stdout.last().unwrap();
    assert!(
        last.starts_with("Started, but 1 app is not ready"),
        "{:#?}",
        up.stdout
    );
    let show = up.json(&["app", "show", "boom"]);
    let instances = show["instances"].as_array().cloned().unwrap_or_default();
    assert!(!instances.is_empty(), "{show}");
    for i in &instances {
        assert_ne!(i["serving"], true, "a failing instance serves nothing: {i}");
    }
    up.stop();
}

#[test]
fn t34_a_restart_applies_local_settings_only_when_the_file_changed() {
    let data = tempfile::tempdir().unwrap();
    let apps = tempfile::tempdir().unwrap();
    let app = apps.path().join("keep");
    write_app(&app, HOST, &[("f", &http_fn("keep"))]);
    let file = app.join("local.settings.json");
    std::fs::write(&file, r#"{"Values":{"K":"from-file"}}"#).unwrap();
    let get = |up: &Up| up.json(&["app", "settings", "get", "keep"])["settings"]["K"].clone();

    let up = Up::start(data.path(), &[&app], &[]);
    assert_eq!(get(&up), "from-file");
    let out = up.strom(&["app", "settings", "set", "keep", "K=set-since"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    up.stop();

    // Same file: the setting changed since is kept, and the node says why.
    let up = Up::start(data.path(), &[&app], &[]);
    assert_eq!(get(&up), "set-since");
    assert!(
        up.stdout
            .iter()
            .any(|l| l.contains("local.settings.json unchanged")),
        "{:#?}",
        up.stdout
    );
    up.stop();

    // A changed file is applied, as a new deploy would.
    std::fs::write(&file, r#"{"Values":{"K":"edited"}}"#).unwrap();
    let up = Up::start(data.path(), &[&app], &[]);
    assert_eq!(get(&up), "edited");
    up.stop();
}

#[test]
fn t35_unsupported_outputs_are_named_and_their_values_recorded_as_dropped() {
    let data = tempfile::tempdir().unwrap();
    let apps = tempfile::tempdir().unwrap();
    let app = apps.path().join("outs");
    write_app(
        &app,
        &common::test_handler_host(""),
        &[(
            "f",
            r#"{"bindings":[{"type":"httpTrigger","direction":"in","name":"req","authLevel":"anonymous","route":"f"},{"type":"http","direction":"out","name":"res"},{"type":"queue","direction":"out","name":"$return","queueName":"q"}]}"#,
        )],
    );
    let up = Up::start(data.path(), &[&app], &[]);
    let fns = up.json(&["fn", "list", "outs"]);
    let f = &fns["functions"][0];
    assert_eq!(f["supported"], true, "it serves: {f}");
    assert!(
        f["unsupported_reasons"][0]
            .as_str()
            .unwrap()
            .contains("output `$return` (queue) is not supported"),
        "{f}"
    );
    let r = common::get(&up.http, "/api/f?action=return");
    assert_eq!(r.status, 201, "{}", r.text());
    common::eventually(
        std::time::Duration::from_secs(10),
        "the drop recorded",
        || {
            let out = up.strom_with(&["fn", "logs", "outs", "f", "--output", "json"], &[]);
            assert_eq!(out.code, 0, "{}", out.stderr);
            out.stdout
                .contains(
                    "output `$return` (queue) is not supported on this cluster: value dropped",
                )
                .then_some(())
        },
    );
    up.stop();
}

#[cfg(target_os = "linux")]
#[test]
fn t36_handlers_die_with_a_killed_node() {
    let data = tempfile::tempdir().unwrap();
    let apps = tempfile::tempdir().unwrap();
    let app = apps.path().join("orphan");
    keyed_handler_app(&app);
    let up = Up::start(data.path(), &[&app], &[]);
    // Instances are reported with the worker's heartbeats.
    let pids: Vec<u64> = common::eventually(
        std::time::Duration::from_secs(10),
        "the instance's pid",
        || {
            let pids: Vec<u64> = up.json(&["app", "show", "orphan"])["instances"]
                .as_array()?
                .iter()
                .filter_map(|i| i["pid"].as_u64())
                .filter(|p| *p > 0)
                .collect();
            (!pids.is_empty()).then_some(pids)
        },
    );
    let alive = |pid: u64| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.contains(") Z "))
            .unwrap_or(false)
    };
    assert!(pids.iter().all(|p| alive(*p)));
    up.kill9();
    common::eventually(
        std::time::Duration::from_secs(10),
        "the handlers to die with their node",
        || pids.iter().all(|p| !alive(*p)).then_some(()),
    );
}

#[test]
fn t37_output_lines_land_in_one_record_only() {
    let data = tempfile::tempdir().unwrap();
    let apps = tempfile::tempdir().unwrap();
    let app = apps.path().join("lines");
    handler_app(&app);
    let up = Up::start(data.path(), &[&app], &[]);
    let base = up.http.clone();
    // Sequential calls a few ms apart: each record holds exactly its own lines.
    for _ in 0..3 {
        assert_eq!(common::get(&base, "/api/f").status, 200);
        std::thread::sleep(std::time::Duration::from_millis(8));
    }
    // Concurrent calls on the one instance.
    let calls: Vec<_> = (0..9)
        .map(|_| {
            let base = base.clone();
            std::thread::spawn(move || common::get(&base, "/api/f?action=sleep=300").status)
        })
        .collect();
    for c in calls {
        assert_eq!(c.join().unwrap(), 200);
    }
    let records: Vec<serde_json::Value> =
        common::eventually(std::time::Duration::from_secs(10), "12 records", || {
            let out = up.strom_with(
                &[
                    "fn", "logs", "lines", "f", "--tail", "100", "--output", "json",
                ],
                &[],
            );
            let records: Vec<serde_json::Value> = out
                .stdout
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect();
            (records.len() == 12).then_some(records)
        });
    let ids: Vec<String> = records
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    let all_lines: Vec<String> = records
        .iter()
        .flat_map(|r| r["logs"].as_array().cloned().unwrap_or_default())
        .filter(|l| l["source"] == "stdout")
        .map(|l| l["text"].as_str().unwrap().to_string())
        .collect();
    for id in &ids {
        let copies = all_lines
            .iter()
            .filter(|t| t.contains(&format!("stdout {id}")))
            .count();
        assert_eq!(
            copies, 1,
            "the line of {id} is in exactly one record: {all_lines:#?}"
        );
    }
    up.stop();
}

#[test]
fn t38_a_version_that_cannot_be_unpacked_is_shown_with_its_reason() {
    let data = tempfile::tempdir().unwrap();
    let apps = tempfile::tempdir().unwrap();
    let app = apps.path().join("broken");
    keyed_handler_app(&app);
    let up = Up::start(data.path(), &[&app], &[]);
    let version = up.json(&["app", "show", "broken"])["app"]["active_version"]
        .as_str()
        .unwrap()
        .to_string();
    up.stop();
    // The unpacked folder is gone and the stored package no longer matches its
    // hash (a disk fault): the worker cannot unpack the version on restart.
    std::fs::remove_dir_all(data.path().join("apps").join("broken").join(&version)).unwrap();
    let blob = data.path().join("blobs").join("sha256").join(&version);
    let mut bytes = std::fs::read(&blob).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&blob, bytes).unwrap();

    let up = Up::start(data.path(), &[], &["--startup-timeout-secs", "2"]);
    let failing = common::eventually(
        std::time::Duration::from_secs(20),
        "the unpack failure in app show",
        || {
            up.json(&["app", "show", "broken"])["instances"]
                .as_array()?
                .iter()
                .find(|i| {
                    i["state"] == "CrashLooping"
                        && i["last_error"]
                            .as_str()
                            .is_some_and(|e| e.contains("cannot unpack version"))
                })
                .cloned()
        },
    );
    assert_ne!(failing["serving"], true, "{failing}");
    let status = up.strom(&["cluster", "status"]);
    assert!(status.stdout.contains("cannot unpack"), "{}", status.stdout);
    up.stop();
}

/// Copy the hello-python sample to `dir`, greeting with `greeting`.
fn hello_python_as(dir: &std::path::Path, greeting: &str) {
    let sample = examples().join("hello-python");
    for entry in walk(&sample) {
        let to = dir.join(entry.strip_prefix(&sample).unwrap());
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(&entry, &to).unwrap();
    }
    std::fs::write(
        dir.join("local.settings.json"),
        format!(r#"{{"Values":{{"GREETING":"{greeting}"}}}}"#),
    )
    .unwrap();
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[test]
fn t39_apps_with_the_same_routes_answer_at_their_own_addresses() {
    let data = tempfile::tempdir().unwrap();
    let apps = tempfile::tempdir().unwrap();
    let (alpha, beta) = (apps.path().join("alpha"), apps.path().join("beta"));
    hello_python_as(&alpha, "Hello");
    hello_python_as(&beta, "Hi from beta");
    let up = Up::start(data.path(), &[&alpha, &beta], &[]);
    let port = up.http.rsplit(':').next().unwrap().to_string();
    let stdout = up.stdout.join("\n");
    for expected in [
        "Warning: app `beta`'s function `hello` and app `alpha`'s function `hello`",
        &format!("app `alpha` (own address http://alpha.localhost:{port})"),
        &format!("app `beta` (own address http://beta.localhost:{port})"),
        &format!("http://beta.localhost:{port}/api/hello/{{name?}}"),
        "`hello` is not on the shared address: beta/hello has the same route",
    ] {
        assert!(stdout.contains(expected), "no `{expected}` in:\n{stdout}");
    }

    let at = |host: &str| {
        let host = format!("{host}:{port}");
        http("GET", &up.http, "/api/hello/ada", &[("Host", &host)], b"")
    };
    let alpha_says = at("alpha.localhost");
    assert_eq!(
        (alpha_says.status, alpha_says.text().as_str()),
        (200, "Hello, ada!")
    );
    let beta_says = at("beta.localhost");
    assert_eq!(
        (beta_says.status, beta_says.text().as_str()),
        (200, "Hi from beta, ada!")
    );
    // The shared address serves neither, and says where each one is.
    let shared = get(&up.http, "/api/hello/ada");
    assert_eq!(shared.status, 404);
    let message = shared.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        message.contains("(`alpha`, `beta`)")
            && message.contains(&format!("http://alpha.localhost:{port}/api/hello/ada")),
        "{message}"
    );
    let fns = up.json(&["fn", "list", "alpha"]);
    let hello = &fns["functions"][0];
    assert_eq!(hello["shared_with"], serde_json::json!(["beta/hello"]));
    assert_eq!(hello["url"], hello["app_url"]);

    // Once `beta` is gone, the shared address serves `alpha`'s route again.
    let out = up.strom(&["app", "delete", "beta"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    eventually(
        Duration::from_secs(10),
        "the shared address serves alpha",
        || {
            let r = get(&up.http, "/api/hello/ada");
            (r.status == 200 && r.text() == "Hello, ada!").then_some(())
        },
    );
    let fns = up.json(&["fn", "list", "alpha"]);
    assert_eq!(
        fns["functions"][0]["url"],
        format!("{}/api/hello/{{name?}}", up.http)
    );
    up.stop();
}

#[test]
fn t40_a_legacy_http_worker_app_runs_its_worker_path_and_gets_requests_at_the_function_name() {
    // The shape of the Azure host's sample/HttpWorker: `httpWorker` section,
    // `defaultWorkerPath`, requests forwarded to /{FunctionName}.
    let data = tempfile::tempdir().unwrap();
    let up = Up::start(data.path(), &[&examples().join("http-worker")], &[]);
    let r = get(&up.http, "/api/hello?name=ada");
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "Hello, ada! (the worker got /hello?name=ada)")
    );
    let r = http("POST", &up.http, "/api/hello", &[], b"data");
    assert_eq!((r.status, r.text().as_str()), (200, "got 'data' at /hello"));
    up.stop();
}

#[test]
fn t41_admin_invoke_runs_a_timer_function_now_with_the_master_key() {
    let data = tempfile::tempdir().unwrap();
    let apps = tempfile::tempdir().unwrap();
    let app = apps.path().join("jobs");
    write_app(
        &app,
        r#"{"version":"2.0","customHandler":{"description":{"defaultExecutablePath":"python3","arguments":["handler.py"]}}}"#,
        &[(
            "tick",
            r#"{"bindings":[{"type":"timerTrigger","direction":"in","name":"myTimer","schedule":"0 0 0 1 1 *"}]}"#,
        )],
    );
    std::fs::write(
        app.join("handler.py"),
        r#"import json, os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", "0"); self.end_headers()
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        timer = body["Data"]["myTimer"]
        log = "ran %s past_due=%s id=%s" % (self.path, timer["IsPastDue"], self.headers["X-Azure-Functions-InvocationId"])
        out = json.dumps({"Outputs": {}, "Logs": [log]}).encode()
        self.send_response(500 if os.environ.get("FAIL") else 200); self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out))); self.end_headers(); self.wfile.write(out)
    def log_message(self, *a): pass
ThreadingHTTPServer(("127.0.0.1", int(os.environ["FUNCTIONS_CUSTOMHANDLER_PORT"])), H).serve_forever()
"#,
    )
    .unwrap();
    let up = Up::start(data.path(), &[&app], &[]);
    let keys = up.json(&["fn", "keys", "jobs", "tick"]);
    let master = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["scope"] == "master")
        .unwrap()["value"]
        .as_str()
        .unwrap()
        .to_string();
    // Without the master key: refused, nothing runs.
    let r = http(
        "POST",
        &up.http,
        "/admin/functions/tick",
        &[],
        br#"{"input":""}"#,
    );
    assert_eq!(r.status, 401, "{}", r.text());
    // With it (Azure's call): 202, and the handler runs it with the timer value.
    let r = http(
        "POST",
        &up.http,
        "/admin/functions/tick",
        &[
            ("x-functions-key", &master),
            ("Content-Type", "application/json"),
        ],
        br#"{"input":"ignored for timers"}"#,
    );
    assert_eq!(r.status, 202, "{}", r.text());
    let id = r.header("x-ms-invocation-id").unwrap().to_string();
    let record = eventually(Duration::from_secs(10), "the invocation's record", || {
        let out = up.strom(&["fn", "logs", "jobs", "tick", "--output", "json"]);
        out.stdout
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|r| r["id"] == id.as_str())
    });
    assert_eq!(record["status"], "Succeeded", "{record}");
    assert_eq!(record["trigger"], "admin", "{record}");
    let logs = record["logs"].to_string();
    assert!(
        logs.contains(&format!("ran /tick past_due=False id={id}")),
        "{record}"
    );
    // The app's own path base works for clients that cannot set Host.
    let r = http(
        "POST",
        &up.http,
        "/apps/jobs/admin/functions/tick",
        &[("x-functions-key", &master)],
        b"",
    );
    assert_eq!(r.status, 202, "{}", r.text());

    // Azure's host status: the master key; Running while the app is served.
    let r = http(
        "GET",
        &up.http,
        "/apps/jobs/admin/host/status",
        &[("x-functions-key", &master)],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let host = r.json();
    assert_eq!(host["state"], "Running", "{host}");
    assert_eq!(host["id"], "jobs", "{host}");
    assert!(
        host["version"].as_str().unwrap().starts_with("4."),
        "{host}"
    );
    assert!(host["errors"].as_array().unwrap().is_empty(), "{host}");
    let r = http("GET", &up.http, "/admin/host/status", &[], b"");
    assert_eq!(r.status, 401, "{}", r.text());

    // `strom fn invoke` runs it and waits for its outcome.
    let out = up.strom(&["fn", "invoke", "jobs", "tick"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("jobs/tick succeeded in"),
        "{}",
        out.stdout
    );
    let out = up.strom(&["fn", "invoke", "jobs", "nope"]);
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(out.stderr.contains("no function `nope`"), "{}", out.stderr);
    let out = up.strom(&["fn", "invoke", "jobs", "tick", "--input", "{not json"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    // A run that fails: exit 1, and the handler's answer named.
    let out = up.strom(&["app", "settings", "set", "jobs", "FAIL=1"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let out = eventually(Duration::from_secs(20), "a failing run", || {
        let out = up.strom(&["fn", "invoke", "jobs", "tick"]);
        (out.code == 1).then_some(out)
    });
    assert!(
        out.stdout.contains("jobs/tick failed after"),
        "{}",
        out.stdout
    );
    let invoked = up.json(&["fn", "invoke", "jobs", "tick", "--no-wait"]);
    assert_eq!(invoked["finished"], false, "{invoked}");
    assert!(!invoked["invocation_id"].as_str().unwrap_or("").is_empty());
    up.stop();
}

#[test]
fn t42_a_failing_timer_run_is_retried_by_its_policy_with_retry_context() {
    let data = tempfile::tempdir().unwrap();
    let apps = tempfile::tempdir().unwrap();
    let calls = apps.path().join("calls.jsonl");
    let app = apps.path().join("jobs");
    // Runs once at deploy (runOnStartup); fails until its second retry.
    write_app(
        &app,
        r#"{"version":"2.0","customHandler":{"description":{"defaultExecutablePath":"python3","arguments":["handler.py"]}},
            "retry":{"strategy":"fixedDelay","maxRetryCount":3,"delayInterval":"00:00:02"}}"#,
        &[(
            "nightly",
            r#"{"bindings":[{"type":"timerTrigger","direction":"in","name":"t","schedule":"0 0 3 * * *","runOnStartup":true}]}"#,
        )],
    );
    std::fs::write(
        app.join("handler.py"),
        r#"import json, os, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", "0"); self.end_headers()
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        retry = body["Metadata"].get("RetryContext")
        with open(os.environ["CALLS"], "a") as f:
            f.write(json.dumps({"at": time.time(), "id": self.headers["X-Azure-Functions-InvocationId"], "retry": retry}) + "\n")
        ok = retry is not None and retry["RetryCount"] >= 2
        out = json.dumps({"Outputs": {}, "Logs": ["attempt %s" % retry["RetryCount"]]}).encode()
        self.send_response(200 if ok else 500); self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out))); self.end_headers(); self.wfile.write(out)
    def log_message(self, *a): pass
ThreadingHTTPServer(("127.0.0.1", int(os.environ["FUNCTIONS_CUSTOMHANDLER_PORT"])), H).serve_forever()
"#,
    )
    .unwrap();
    let settings = serde_json::json!({"Values": {"CALLS": calls.to_str().unwrap()}});
    std::fs::write(app.join("local.settings.json"), settings.to_string()).unwrap();
    let up = Up::start(data.path(), &[&app], &[]);
    let read = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(&calls)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    };
    // While it waits for a retry, `cluster status` shows it.
    let retrying = eventually(Duration::from_secs(20), "a retry in cluster status", || {
        let s = up.json(&["cluster", "status"]);
        let runs = s["timer_runs"].as_array()?;
        runs.iter()
            .find(|r| r["attempt"].as_u64().unwrap_or(0) >= 1)
            .cloned()
    });
    assert_eq!(retrying["function_name"], "nightly", "{retrying}");
    assert!(
        retrying["last_error"].as_str().unwrap().contains("500"),
        "{retrying}"
    );
    let status = eventually(Duration::from_secs(30), "the run to succeed", || {
        let list = up.json(&["fn", "list", "jobs"]);
        let last = &list["functions"][0]["timer"]["last_run"];
        (last["succeeded"] == true).then(|| list.clone())
    });
    let seen = read();
    assert_eq!(seen.len(), 3, "three attempts: {seen:?}");
    let counts: Vec<u64> = seen
        .iter()
        .map(|c| c["retry"]["RetryCount"].as_u64().unwrap())
        .collect();
    assert_eq!(counts, vec![0, 1, 2]);
    assert!(seen.iter().all(|c| c["retry"]["MaxRetryCount"] == 3));
    assert!(seen[0]["retry"]["Exception"].is_null());
    assert!(
        seen[1]["retry"]["Exception"]["Message"]
            .as_str()
            .unwrap_or("")
            .contains("500"),
        "{seen:?}"
    );
    let ids: std::collections::BTreeSet<&str> =
        seen.iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 3, "each attempt has its own id");
    for pair in seen.windows(2) {
        let gap = pair[1]["at"].as_f64().unwrap() - pair[0]["at"].as_f64().unwrap();
        assert!(gap >= 2.0, "retries wait their delay (2 s): {gap}");
    }
    let last = &status["functions"][0]["timer"]["last_run"];
    assert_eq!(last["invocation_id"], seen[2]["id"], "{status}");
    // Each attempt is in `strom fn logs`, as a timer run, failed twice then succeeded
    // (a record is written shortly after its answer, once its output lines are in).
    let (logs, mut runs) = eventually(Duration::from_secs(10), "three records", || {
        let logs = up.strom(&["fn", "logs", "jobs", "nightly", "--output", "json"]);
        let runs: Vec<serde_json::Value> = logs
            .stdout
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        (runs.len() >= 3).then_some((logs, runs))
    });
    runs.sort_by_key(|r| r["started_at_ms"].as_i64());
    let statuses: Vec<(&str, &str)> = runs
        .iter()
        .map(|r| {
            (
                r["trigger"].as_str().unwrap(),
                r["status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        statuses,
        [
            ("timer", "Failed"),
            ("timer", "Failed"),
            ("timer", "Succeeded")
        ],
        "{}",
        logs.stdout
    );
    up.stop();
}

#[test]
fn t43_a_scale_to_zero_batch_app_starts_for_its_runs_and_stops_when_idle() {
    let data = tempfile::tempdir().unwrap();
    let apps = tempfile::tempdir().unwrap();
    let record = apps.path().join("runs.jsonl");
    let app = apps.path().join("batch");
    write_app(
        &app,
        &common::test_handler_host(""),
        &[(
            "job",
            r#"{"bindings":[{"type":"timerTrigger","direction":"in","name":"t","schedule":"*/6 * * * * *","useMonitor":true}]}"#,
        )],
    );
    let settings = serde_json::json!({"Values": {
        "TEST_HANDLER_RECORD": record.to_str().unwrap(),
        "STROM_SCALE_TO_ZERO": "true",
        "STROM_IDLE_STOP": "00:00:01",
    }});
    std::fs::write(app.join("local.settings.json"), settings.to_string()).unwrap();
    let up = Up::start(data.path(), &[&app], &[]);
    let instances = || -> usize {
        let s = up.json(&["cluster", "status"]);
        s["instances"]
            .as_array()
            .map_or(0, |a| a.iter().filter(|i| i["app_name"] == "batch").count())
    };
    let starts = || -> Vec<u64> {
        std::fs::read_to_string(&record)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["event"] == "start")
            .filter_map(|v| v["pid"].as_u64())
            .collect()
    };
    // Between runs: no instance.
    eventually(Duration::from_secs(20), "no instance between runs", || {
        (instances() == 0).then_some(())
    });
    // A tick starts one, runs on it, and it stops again after the idle time.
    eventually(Duration::from_secs(20), "a run", || {
        (!starts().is_empty()).then_some(())
    });
    eventually(Duration::from_secs(20), "stopped when idle", || {
        (instances() == 0).then_some(())
    });
    // The next tick starts a new instance (a new handler process).
    eventually(Duration::from_secs(20), "a second run", || {
        (starts().len() >= 2).then_some(())
    });
    let pids = starts();
    assert_ne!(pids[0], pids[1], "each run on a fresh instance: {pids:?}");
    // Every run succeeded; its duration includes the cold start.
    let list = up.json(&["fn", "list", "batch"]);
    let last = &list["functions"][0]["timer"]["last_run"];
    assert_eq!(last["succeeded"], true, "{list}");
    assert!(last["duration_ms"].as_u64().unwrap() > 0, "{list}");
    // Between runs it cannot be invoked on demand: refused at once, saying why.
    eventually(Duration::from_secs(20), "idle again", || {
        (instances() == 0).then_some(())
    });
    let out = up.strom(&["fn", "invoke", "batch", "job"]);
    if out.code != 0 {
        assert_eq!(out.code, 2, "{}", out.stderr);
        assert!(out.stderr.contains("scales to zero"), "{}", out.stderr);
    }
    // The setting is refused for an app with HTTP functions, naming them.
    let web = apps.path().join("web");
    write_app(
        &web,
        &common::test_handler_host(""),
        &[("hello", &http_fn("hello"))],
    );
    let out = up.strom(&["app", "deploy", web.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let out = up.strom(&["app", "settings", "set", "web", "STROM_SCALE_TO_ZERO=true"]);
    assert_eq!(out.code, 2, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("HTTP functions (hello)"),
        "{}",
        out.stderr
    );
    let out = up.strom(&["app", "settings", "set", "batch", "STROM_IDLE_STOP=soon"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("STROM_IDLE_STOP"), "{}", out.stderr);
    up.stop();
}
