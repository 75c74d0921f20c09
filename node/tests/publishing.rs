//! The publishing endpoint through the `strom` binary, called with curl as build
//! pipelines call Kudu: zip deploy (sync and async), the deployment history,
//! 409 while a deployment runs, per-app deployment credentials, and bad input
//! that changes nothing while the old version keeps serving.

// Unix only: not run on Windows yet (signals, `sh` handlers, Unix modes, or
// untried there); on Windows `.ci/windows/run` runs `e2e.rs` and the smoke test
// under Wine (docs/windows.md).
#![cfg(unix)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{curl, eventually, get, http, test_handler_host, write_app, Load, Up, TEST_HANDLER};

/// What curl got: status, headers (lower-case names) and body.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `curl -sS -i ARGS URL`.
fn curl_run(args: &[&str], url: &str) -> Answer {
    let out = curl()
        .expect("curl")
        .args(["-sS", "-i", "--max-time", "120"])
        .args(args)
        .arg(url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "curl {args:?} {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).replace("\r\n", "\n");
    // A 100 Continue comes before the answer.
    let mut rest = text.as_str();
    loop {
        let (head, body) = rest.split_once("\n\n").unwrap_or((rest, ""));
        if head.starts_with("HTTP/1.1 100") {
            rest = body;
            continue;
        }
        let mut lines = head.lines();
        let status = lines.next().unwrap().split_whitespace().nth(1).unwrap();
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        return Answer {
            status: status.parse().unwrap(),
            headers,
            body: body.to_string(),
        };
    }
}

/// An app run by the test handler: function `fn_name` at route `route`; with
/// `mode`, the handler starts through a script in the package that sets
/// `TEST_HANDLER_MODE` (so only this version starts that way).
fn app(dir: &Path, route: &str, mode: Option<&str>) -> Vec<u8> {
    let function = format!(
        r#"{{"bindings":[{{"type":"httpTrigger","direction":"in","name":"req","authLevel":"anonymous","route":"{route}","methods":["get"]}},{{"type":"http","direction":"out","name":"res"}}]}}"#
    );
    let host = match mode {
        None => test_handler_host(r#","enableForwardingHttpRequest":true"#),
        Some(_) => r#"{"version":"2.0","customHandler":{"description":{"defaultExecutablePath":"sh","arguments":["start.sh"]},"enableForwardingHttpRequest":true}}"#.to_string(),
    };
    write_app(dir, &host, &[(&route.replace('/', "-"), &function)]);
    if let Some(mode) = mode {
        std::fs::write(
            dir.join("start.sh"),
            format!("export TEST_HANDLER_MODE='{mode}'\nexec '{TEST_HANDLER}'\n"),
        )
        .unwrap();
    }
    strom_proto::manifest::pack_dir(dir).unwrap()
}

/// POST a zip to `url` with these credentials (`user:password`) and this
/// Content-Type (none: curl's default for --data-binary).
fn post_zip(user: Option<&str>, content_type: Option<&str>, zip: &Path, url: &str) -> Answer {
    let data = format!("@{}", zip.display());
    let mut args = vec!["--data-binary", &data];
    if let Some(u) = user {
        args.extend(["-u", u]);
    }
    let ct = content_type.map(|c| format!("Content-Type: {c}"));
    if let Some(ct) = &ct {
        args.extend(["-H", ct]);
    }
    curl_run(&args, url)
}

/// [`app`] packed into `dir/{name}.zip` (its folder `dir/{name}`).
fn app_zip(dir: &Path, name: &str, route: &str, mode: Option<&str>) -> PathBuf {
    let zip = app(&dir.join(name), route, mode);
    write(dir, &format!("{name}.zip"), &zip)
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn token(up: &Up) -> String {
    std::fs::read_to_string(up.data_dir.join("admin.token"))
        .unwrap()
        .trim()
        .to_string()
}

fn history(up: &Up, app: &str) -> Vec<serde_json::Value> {
    up.json(&["app", "deployments", app])["deployments"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[test]
fn zip_deploy_sync_and_async_serves_and_is_in_the_history() {
    let Some(_) = curl() else { return };
    let data = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    app(&files.path().join("web"), "v1", None);
    let up = Up::start(data.path(), &[&files.path().join("web")], &[]);
    assert_eq!(get(&up.http, "/api/v1").status, 200);
    let admin = format!("$strom:{}", token(&up));
    let scm = format!("{}/apps/web/scm", up.server);

    // Synchronous: 200 once the new version serves.
    let v2 = app_zip(files.path(), "v2", "v2", None);
    let r = post_zip(
        Some(&admin),
        Some("application/zip"),
        &v2,
        &format!("{scm}/api/zipdeploy?author=ada&deployer=pipeline&message=second"),
    );
    assert_eq!(r.status, 200, "{r:?}");
    let d = r.json();
    assert_eq!(d["status"], 4, "{d}");
    assert_eq!(d["complete"], true);
    assert_eq!(d["active"], true);
    assert_eq!(d["site_name"], "web");
    assert_eq!(
        get(&up.http, "/api/v2").status,
        200,
        "v2 serves when answered"
    );
    assert_eq!(get(&up.http, "/api/v1").status, 404);

    // Asynchronous (curl's default content type, as Kudu's documentation sends
    // it): 202 with Location, polled until status 4.
    let v3 = app_zip(files.path(), "v3", "v3", None);
    let r = post_zip(
        Some(&admin),
        None,
        &v3,
        &format!("{scm}/api/zipdeploy?isAsync=true&author=bob&message=third"),
    );
    assert_eq!(r.status, 202, "{r:?}");
    let location = r.header("location").expect("Location").to_string();
    assert!(
        location.ends_with("/apps/web/scm/api/deployments/latest"),
        "{location}"
    );
    assert!(r.header("retry-after").is_some());
    let id = r.json()["id"].as_str().unwrap().to_string();
    let done = eventually(Duration::from_secs(60), "the async deployment", || {
        let r = curl_run(&["-u", &admin], &location);
        match r.status {
            202 => {
                assert!(r.header("location").is_some());
                None
            }
            200 => Some(r.json()),
            other => panic!("polling: {other} {}", r.body),
        }
    });
    assert_eq!(done["id"], id.as_str());
    assert_eq!(done["status"], 4, "{done}");
    assert_eq!(done["author"], "bob");
    assert_eq!(get(&up.http, "/api/v3").status, 200);

    // By id, and the Host form of the app (`{app}.scm.<domain>`).
    let r = curl_run(
        &["-u", &admin, "-H", "Host: web.scm.example.test"],
        &format!("{}/api/deployments/{id}", up.server),
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["message"], "third");
    let r = curl_run(&["-u", &admin], &format!("{scm}/api/deployments/nope"));
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["code"], "DeploymentNotFound");

    // Newest first, every deploy (the first came through `strom up`).
    let list = curl_run(&["-u", &admin], &format!("{scm}/api/deployments")).json();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 3, "{list:?}");
    assert_eq!(list[0]["id"], id.as_str());
    assert_eq!(list[1]["author"], "ada");
    assert_eq!(list[1]["deployer"], "pipeline");
    assert_eq!(list[1]["active"], false);
    assert_eq!(list[2]["deployer"], "strom");
    let cli = history(&up, "web");
    assert_eq!(cli.len(), 3);
    assert_eq!(cli[0]["id"], id.as_str());
    assert_eq!(cli[0]["active"], true);
    up.stop();
}

#[test]
fn a_bad_deploy_changes_nothing_while_the_old_version_serves() {
    let Some(_) = curl() else { return };
    let data = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    app(&files.path().join("web"), "v1", None);
    let up = Up::start(
        data.path(),
        &[&files.path().join("web")],
        &["--max-package-bytes", "200000"],
    );
    let admin = format!("$strom:{}", token(&up));
    let scm = format!("{}/apps/web/scm", up.server);
    let active = || up.json(&["app", "show", "web"])["app"]["active_version"].clone();
    let before = active();
    let load = Load::start(std::slice::from_ref(&up.http), "/api/v1");
    load.wait_for(20);

    // Not an app: every error, naming file and JSON path.
    let bad_dir = files.path().join("bad");
    write_app(
        &bad_dir,
        r#"{"version":"1.0"}"#,
        &[(
            "f",
            r#"{"bindings":[{"type":"httpTrigger","direction":"in","name":"req","route":"x","methods":["FETCH!"]}]}"#,
        )],
    );
    let bad = write(
        files.path(),
        "bad.zip",
        &strom_proto::manifest::pack_dir(&bad_dir).unwrap(),
    );
    let r = post_zip(
        Some(&admin),
        Some("application/zip"),
        &bad,
        &format!("{scm}/api/zipdeploy?message=broken"),
    );
    assert_eq!(r.status, 400, "{r:?}");
    let e = r.json();
    assert_eq!(e["error"]["code"], "InvalidApp", "{e}");
    let details = e["error"]["details"]["errors"].as_array().unwrap().clone();
    assert!(
        details.iter().any(|d| d["file"] == "host.json"),
        "{details:?}"
    );
    assert!(
        details.iter().any(|d| d["file"] == "f/function.json"),
        "{details:?}"
    );
    assert_eq!(e["error"]["details"]["deployment"]["status"], 3);

    // A version that never starts: refused after its instances crash-loop, and
    // the version that served before is the active one again.
    let crashing = app_zip(files.path(), "crash", "v1", Some("exit-at-once"));
    let r = post_zip(
        Some(&admin),
        Some("application/zip"),
        &crashing,
        &format!("{scm}/api/zipdeploy"),
    );
    assert_eq!(r.status, 500, "{r:?}");
    assert_eq!(r.json()["error"]["code"], "DeploymentFailed");
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("does not start"),
        "{}",
        r.body
    );
    assert_eq!(active(), before, "the old version is active again");

    // A zip that reaches outside its folder (zip slip): refused, naming the entry.
    let slip = {
        use std::io::Write;
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let opts = zip::write::SimpleFileOptions::default();
        w.start_file("host.json", opts).unwrap();
        w.write_all(br#"{"version":"2.0"}"#).unwrap();
        w.start_file("../evil.sh", opts).unwrap();
        w.write_all(b"echo owned").unwrap();
        write(files.path(), "slip.zip", &w.finish().unwrap().into_inner())
    };
    let r = post_zip(
        Some(&admin),
        Some("application/zip"),
        &slip,
        &format!("{scm}/api/zipdeploy"),
    );
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.body.contains("evil.sh"), "{}", r.body);

    // Input refused before anything begins.
    let big = write(
        files.path(),
        "big.zip",
        &[b"PK\x03\x04".as_slice(), &vec![0u8; 300_000]].concat(),
    );
    let r = post_zip(
        Some(&admin),
        Some("application/zip"),
        &big,
        &format!("{scm}/api/zipdeploy"),
    );
    assert_eq!(
        (r.status, r.json()["error"]["code"].clone()),
        (413, "PackageTooLarge".into())
    );
    let not_zip = write(files.path(), "notzip", b"hello");
    let r = post_zip(
        Some(&admin),
        Some("application/zip"),
        &not_zip,
        &format!("{scm}/api/zipdeploy"),
    );
    assert_eq!(
        (r.status, r.json()["error"]["code"].clone()),
        (400, "NotAZip".into())
    );
    let r = post_zip(
        Some(&admin),
        Some("application/json"),
        &crashing,
        &format!("{scm}/api/zipdeploy"),
    );
    assert_eq!(r.status, 415, "{r:?}");
    let r = post_zip(
        None,
        Some("application/zip"),
        &crashing,
        &format!("{scm}/api/zipdeploy"),
    );
    assert_eq!(r.status, 401, "{r:?}");
    assert!(r.header("www-authenticate").unwrap().starts_with("Basic"));
    let data = format!("@{}", crashing.display());
    let r = curl_run(
        &[
            "-H",
            "Authorization: Basic %%%",
            "-H",
            "Content-Type: application/zip",
            "--data-binary",
            &data,
        ],
        &format!("{scm}/api/zipdeploy"),
    );
    assert_eq!(r.status, 401, "{r:?}");
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("malformed"));

    let (total, failed) = load.finish();
    assert!(
        failed.is_empty(),
        "{} of {total} failed: {failed:?}",
        failed.len()
    );
    assert_eq!(active(), before);
    // Only those that began are in the history (the invalid app, the zip slip,
    // the version that never started), each failed and saying why.
    let h = history(&up, "web");
    let failed: Vec<_> = h.iter().filter(|d| d["status"] == 3).collect();
    assert_eq!(failed.len(), 3, "{h:?}");
    assert!(failed
        .iter()
        .any(|d| d["message"] == "broken" && !d["errors"].as_array().unwrap().is_empty()));
    assert_eq!(h.len(), 4, "{h:?}");
    up.stop();
}

#[test]
fn one_deployment_at_a_time_and_credentials_only_for_their_app() {
    let Some(_) = curl() else { return };
    let data = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    app(&files.path().join("web"), "v1", None);
    app(&files.path().join("api"), "a1", None);
    let up = Up::start(
        data.path(),
        &[&files.path().join("web"), &files.path().join("api")],
        &[],
    );
    let scm = |app: &str| format!("{}/apps/{app}/scm", up.server);

    // A credential for web, shown once, then not again.
    let made = up.json(&["app", "credentials", "web"]);
    let user = made["user_name"].as_str().unwrap().to_string();
    let password = made["password"].as_str().unwrap().to_string();
    assert_eq!(user, "$web");
    assert!(password.len() >= 32);
    let again = up.json(&["app", "credentials", "web"]);
    assert_eq!(again["password"], "");
    assert_eq!(again["exists"], true);
    let web = format!("{user}:{password}");

    // A version that takes a while to start: a second deploy meanwhile gets 409.
    let slow = write(
        files.path(),
        "slow.zip",
        &app(
            &files.path().join("slow"),
            "v2",
            Some("ready-after-ms=4000"),
        ),
    );
    let r = post_zip(
        Some(&web),
        Some("application/zip"),
        &slow,
        &format!("{}/api/zipdeploy?isAsync=true&deployer=ci", scm("web")),
    );
    assert_eq!(r.status, 202, "{r:?}");
    let running = r.json()["id"].as_str().unwrap().to_string();
    let v3 = app_zip(files.path(), "v3", "v3", None);
    let r = post_zip(
        Some(&web),
        Some("application/zip"),
        &v3,
        &format!("{}/api/zipdeploy", scm("web")),
    );
    assert_eq!(r.status, 409, "{r:?}");
    assert!(r.body.contains(&running), "{}", r.body);
    // The admin API's deploy waits its turn too.
    let out = up.strom(&[
        "app",
        "deploy",
        files.path().join("v3").to_str().unwrap(),
        "--name",
        "web",
    ]);
    assert_ne!(out.code, 0, "{}", out.stdout);
    assert!(out.stderr.contains("in progress"), "{}", out.stderr);
    // …while the old version serves.
    assert_eq!(get(&up.http, "/api/v1").status, 200);
    let done = eventually(Duration::from_secs(60), "the slow deployment", || {
        let r = curl_run(
            &["-u", &web],
            &format!("{}/api/deployments/latest", scm("web")),
        );
        (r.status == 200).then(|| r.json())
    });
    assert_eq!(done["status"], 4, "{done}");
    assert_eq!(get(&up.http, "/api/v2").status, 200);

    // web's credential opens web only; it is no admin token.
    let r = post_zip(
        Some(&web),
        Some("application/zip"),
        &v3,
        &format!("{}/api/zipdeploy", scm("api")),
    );
    assert_eq!(r.status, 401, "{r:?}");
    let r = curl_run(
        &["-u", &format!("$api:{password}")],
        &format!("{}/api/deployments", scm("api")),
    );
    assert_eq!(r.status, 401);
    let r = http(
        "GET",
        &up.server,
        "/apps/api/scm/api/deployments",
        &[("authorization", &format!("Bearer {password}"))],
        b"",
    );
    assert_eq!(r.status, 401);
    // Rotated: the old one stops working at once.
    let rotated = up.json(&["app", "credentials", "web", "--rotate"]);
    let r = curl_run(&["-u", &web], &format!("{}/api/deployments", scm("web")));
    assert_eq!(r.status, 401);
    let r = curl_run(
        &[
            "-u",
            &format!("$web:{}", rotated["password"].as_str().unwrap()),
        ],
        &format!("{}/api/deployments", scm("web")),
    );
    assert_eq!(r.status, 200);
    // Deploying to a new name with the admin token creates the app.
    let admin = format!("$strom:{}", token(&up));
    let r = post_zip(
        Some(&admin),
        Some("application/zip"),
        &v3,
        &format!("{}/api/zipdeploy", scm("fresh")),
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(get_host(&up.http, "fresh.localhost", "/api/v3").status, 200);
    // A publish profile names the endpoint and a (new) credential, mode 0600.
    let profile = files.path().join("web.PublishSettings");
    let out = up.strom(&[
        "app",
        "publish-profile",
        "web",
        "--out",
        profile.to_str().unwrap(),
    ]);
    assert_ne!(out.code, 0, "a credential exists: --rotate is needed");
    let out = up.strom(&[
        "app",
        "publish-profile",
        "web",
        "--rotate",
        "--out",
        profile.to_str().unwrap(),
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let xml = std::fs::read_to_string(&profile).unwrap();
    let pwd = xml
        .split("userPWD=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    assert!(
        xml.contains(&format!("publishUrl=\"{}\"", scm("web"))),
        "{xml}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&profile).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    let r = curl_run(
        &["-u", &format!("$web:{pwd}")],
        &format!("{}/api/deployments", scm("web")),
    );
    assert_eq!(r.status, 200);
    up.stop();
}

fn get_host(base: &str, host: &str, path: &str) -> common::HttpResponse {
    http("GET", base, path, &[("host", host)], b"")
}

#[test]
fn a_deployment_cut_short_by_a_crash_is_failed_at_restart_and_the_old_version_kept() {
    let Some(_) = curl() else { return };
    let data = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    app(&files.path().join("web"), "v1", None);
    let up = Up::start(data.path(), &[&files.path().join("web")], &[]);
    let admin = format!("$strom:{}", token(&up));
    let scm = format!("{}/apps/web/scm", up.server);
    let before = up.json(&["app", "show", "web"])["app"]["active_version"].clone();
    let slow = write(
        files.path(),
        "slow.zip",
        &app(
            &files.path().join("slow"),
            "v2",
            Some("ready-after-ms=60000"),
        ),
    );
    let r = post_zip(
        Some(&admin),
        Some("application/zip"),
        &slow,
        &format!("{scm}/api/zipdeploy?isAsync=true"),
    );
    assert_eq!(r.status, 202, "{r:?}");
    let id = r.json()["id"].as_str().unwrap().to_string();
    eventually(Duration::from_secs(30), "the deployment deploying", || {
        let d = curl_run(&["-u", &admin], &format!("{scm}/api/deployments/{id}")).json();
        (d["status"] == 2).then_some(())
    });
    up.kill9();
    let up = Up::start(data.path(), &[], &[]);
    let d = eventually(Duration::from_secs(30), "the deployment failed", || {
        let d = curl_run(
            &["-u", &admin],
            &format!("{}/apps/web/scm/api/deployments/{id}", up.server),
        )
        .json();
        (d["status"] == 3).then_some(d)
    });
    assert!(
        d["status_text"].as_str().unwrap().contains("restarted"),
        "{d}"
    );
    assert_eq!(
        up.json(&["app", "show", "web"])["app"]["active_version"],
        before,
        "the version that served before is active again"
    );
    assert_eq!(get(&up.http, "/api/v1").status, 200);
    // The next deployment need not wait for the dead one's deadline.
    let v3 = app_zip(files.path(), "v3", "v3", None);
    let r = post_zip(
        Some(&admin),
        Some("application/zip"),
        &v3,
        &format!("{}/apps/web/scm/api/zipdeploy", up.server),
    );
    assert_eq!(r.status, 200, "{r:?}");
    up.stop();
}

#[test]
fn a_connection_that_sends_nothing_does_not_keep_its_slot_on_the_control_port() {
    use std::io::Read;
    let data = tempfile::tempdir().unwrap();
    let up = Up::start(data.path(), &[], &[]);
    let addr = up.server.trim_start_matches("http://").to_string();
    let mut idle = std::net::TcpStream::connect(&addr).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut buf = [0u8; 64];
    // Closed by the node (0 bytes or a reset), not by our read timeout.
    match idle.read(&mut buf) {
        Ok(0) => {}
        Ok(n) => panic!("unexpected bytes: {:?}", &buf[..n]),
        Err(e) => assert!(
            !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "the idle connection stayed open: {e}"
        ),
    }
    // A client that speaks is served.
    let r = http("GET", &up.server, "/apps/web/scm/api/deployments", &[], b"");
    assert_eq!(r.status, 401);
    up.stop();
}
