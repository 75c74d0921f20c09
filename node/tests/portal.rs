//! The management portal in a real browser: headless Chromium driven over
//! WebDriver (Debian's `chromium` and `chromium-driver`) against a real `strom
//! up`, as an operator uses it — sign in, see the app, deploy a new version by
//! upload and see it active, rotate a key, run the test panel and see the
//! response and its logs, see an invocation appear live, roll back, refuse a
//! wrong token, forged CSRF tokens and bad uploads, show script payloads as text,
//! fit a phone's width, and (with axe-core) have no WCAG 2.1 A/AA violations.
//!
//! Screenshots are saved to `$STROM_ARTIFACTS/portal` (default: the target
//! dir's `portal-screenshots`). CI (`.ci/run`) installs the browser and axe-core
//! and sets `STROM_REQUIRE_BROWSER=1`; elsewhere a missing browser skips the
//! test with a message.

// Unix only: not run on Windows yet (signals, `sh` handlers, Unix modes, or
// untried there); on Windows `.ci/windows/run` runs `e2e.rs` and the smoke test
// under Wine (docs/windows.md).
#![cfg(unix)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{free_port, http, test_handler_host, write_app, Up};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

/// A chromedriver process, killed on drop.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn required() -> bool {
    std::env::var_os("STROM_REQUIRE_BROWSER").is_some()
}

/// chromedriver on a free port, or None (with a message) where it is missing.
fn chromedriver() -> Option<Driver> {
    let found = ["chromedriver", "/usr/bin/chromedriver"]
        .into_iter()
        .find(|b| {
            Command::new(b)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        });
    let Some(binary) = found else {
        assert!(
            !required(),
            "chromedriver is required (STROM_REQUIRE_BROWSER=1; .ci/run installs chromium-driver)"
        );
        eprintln!(
            "skipped: chromedriver is not installed (apt-get install chromium chromium-driver)"
        );
        return None;
    };
    let port = free_port();
    let child = Command::new(binary)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let driver = Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    common::eventually(Duration::from_secs(20), "chromedriver listens", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
    Some(driver)
}

async fn browser(driver: &Driver) -> Client {
    let caps = json!({
        "goog:chromeOptions": {
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,900"]
        }
    });
    let serde_json::Value::Object(caps) = caps else {
        unreachable!()
    };
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a Chromium session (is chromium installed?)")
}

fn artifacts() -> PathBuf {
    let dir = match std::env::var_os("STROM_ARTIFACTS") {
        Some(d) => PathBuf::from(d).join("portal"),
        None => {
            let exe = std::env::current_exe().unwrap();
            exe.parent()
                .and_then(Path::parent)
                .unwrap()
                .join("portal-screenshots")
        }
    };
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn shot(c: &Client, name: &str) {
    let png = c.screenshot().await.expect("screenshot");
    std::fs::write(artifacts().join(format!("{name}.png")), png).unwrap();
}

async fn text(c: &Client, css: &str) -> String {
    // Retried: an element of a page that is being replaced goes stale.
    let mut last = String::new();
    for _ in 0..100 {
        match c.find(Locator::Css(css)).await {
            Ok(e) => match e.text().await {
                Ok(t) => return t,
                Err(err) => last = err.to_string(),
            },
            Err(err) => last = err.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("{css}: {last}");
}

async fn js(c: &Client, script: &str) -> Value {
    c.execute(script, vec![]).await.expect(script)
}

/// Poll until `script` returns something truthy (20 s).
async fn until(c: &Client, what: &str, script: &str) -> Value {
    for _ in 0..100 {
        let v = js(c, script).await;
        if !matches!(v, Value::Null | Value::Bool(false)) && v != json!("") {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("{what}: not within 20 s ({script})");
}

async fn click(c: &Client, css: &str) {
    c.wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .click()
        .await
        .unwrap_or_else(|e| panic!("click {css}: {e}"));
}

async fn fill(c: &Client, css: &str, value: &str) {
    let e = c
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"));
    e.clear().await.unwrap();
    e.send_keys(value).await.unwrap();
}

/// Submit the form at `css` with its submit button and wait for the page the
/// answer shows (a new document).
async fn submit(c: &Client, css: &str) {
    js(c, "window.__before_submit = true; return null").await;
    click(c, &format!("{css} button[type=submit]")).await;
    until(
        c,
        &format!("the answer to {css}"),
        "return window.__before_submit === undefined && document.readyState === 'complete'",
    )
    .await;
}

/// Start the zip upload of the form at `css` (the page's script posts it).
async fn upload(c: &Client, file: &Path) {
    let input = c.find(Locator::Css("#zip-web")).await.unwrap();
    input.send_keys(file.to_str().unwrap()).await.unwrap();
    click(c, "form[data-upload] button[type=submit]").await;
}

async fn follow(c: &Client, css: &str) {
    js(c, "window.__before_submit = true; return null").await;
    click(c, css).await;
    until(
        c,
        &format!("the page of {css}"),
        "return window.__before_submit === undefined && document.readyState === 'complete'",
    )
    .await;
}

/// axe-core (when `STROM_AXE_JS` names its script; CI always) finds no WCAG 2.1
/// A/AA violation on the current page.
async fn accessible(c: &Client, page: &str) {
    let Some(path) = std::env::var_os("STROM_AXE_JS") else {
        assert!(
            !required(),
            "STROM_AXE_JS must name axe.min.js in CI (.ci/run fetches it)"
        );
        eprintln!("axe-core not checked on {page}: STROM_AXE_JS is not set");
        return;
    };
    let source = std::fs::read_to_string(&path).expect("axe.min.js");
    c.execute(&source, vec![]).await.expect("load axe-core");
    let violations = c
        .execute_async(
            "const done = arguments[arguments.length - 1];
             axe.run(document, {runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa']}})
                .then(r => done(r.violations.map(v => ({id: v.id, help: v.help,
                    nodes: v.nodes.map(n => n.html).slice(0, 3)}))))
                .catch(e => done([{id: 'axe-error', help: String(e)}]));",
            vec![],
        )
        .await
        .expect("run axe-core");
    assert_eq!(violations, json!([]), "accessibility violations on {page}");
}

/// What the current page weighs and how soon it drew (measured, never asserted):
/// the document and every asset it loaded (bytes on the wire, uncompressed) and
/// Chromium's first contentful paint since navigation start.
async fn measure(c: &Client, view: &str, table: &mut Vec<Value>) {
    let m = until(
        c,
        "paint timing",
        "const nav = performance.getEntriesByType('navigation')[0];
         const fcp = performance.getEntriesByName('first-contentful-paint')[0];
         if (!nav || !fcp || nav.loadEventEnd === 0) return null;
         const assets = performance.getEntriesByType('resource')
             .filter(r => r.name.includes('/assets/'));
         return {document: nav.decodedBodySize,
                 assets: assets.reduce((n, r) => n + r.decodedBodySize, 0),
                 assets_transferred: assets.reduce((n, r) => n + r.transferSize, 0),
                 first_contentful_paint_ms: Math.round(fcp.startTime),
                 response_end_ms: Math.round(nav.responseEnd)};",
    )
    .await;
    let mut m = m;
    m["view"] = json!(view);
    table.push(m);
}

fn zip_of(dir: &Path) -> PathBuf {
    let zip = strom_proto::manifest::pack_dir(dir).unwrap();
    let path = dir.with_extension("zip");
    std::fs::write(&path, zip).unwrap();
    path
}

const SCRIPT: &str = "<script>window.__pwned=1</script><img src=x onerror=window.__pwned=2>";

#[test]
fn the_portal_in_a_real_browser() {
    let Some(driver) = chromedriver() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let v1 = tmp.path().join("web");
    let host = test_handler_host("");
    let function = r#"{"bindings":[{"type":"httpTrigger","direction":"in","name":"req","authLevel":"function","methods":["get","post"],"route":"hello"},{"type":"http","direction":"out","name":"res"}]}"#;
    let timer = r#"{"bindings":[{"type":"timerTrigger","direction":"in","name":"t","schedule":"0 0 0 1 1 *"}]}"#;
    write_app(&v1, &host, &[("hello", function), ("tick", timer)]);
    let v2 = tmp.path().join("web-v2");
    write_app(
        &v2,
        &host,
        &[("hello", function), ("second", &common::http_fn("second"))],
    );
    let v2_zip = zip_of(&v2);
    let not_zip = tmp.path().join("notes.zip");
    std::fs::write(&not_zip, "this is not a zip").unwrap();
    // A zip's first bytes, but larger than the limit this node takes.
    let too_large = tmp.path().join("large.zip");
    let mut large = b"PK\x03\x04".to_vec();
    large.resize(300_000, 0);
    std::fs::write(&too_large, large).unwrap();
    let up = Up::start(
        &tmp.path().join("data"),
        &[&v1],
        &["--max-package-bytes", "200000"],
    );
    let token = std::fs::read_to_string(up.data_dir.join("admin.token"))
        .unwrap()
        .trim()
        .to_string();
    let portal = up.server.clone();
    let functions = up.http.clone();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let up = &up;
    runtime.block_on(async move {
        let c = browser(&driver).await;
        let mut weights = Vec::new();

        // A wrong token is refused, on the page, and gives no session.
        c.goto(&format!("{portal}/")).await.unwrap();
        assert_eq!(c.title().await.unwrap(), "Sign in · Strom");
        accessible(&c, "sign-in").await;
        measure(&c, "sign-in", &mut weights).await;
        fill(&c, "#token", "strom_not-the-token").await;
        submit(&c, "form").await;
        let refused = text(&c, ".flash.error").await;
        assert!(refused.contains("not this cluster's admin token"), "{refused}");
        assert!(c.get_all_cookies().await.unwrap().is_empty());
        shot(&c, "signin-refused").await;

        // Sign in with the keyboard alone (the token field has the focus; Enter
        // submits): the cluster at a glance, with an HttpOnly, SameSite=Strict
        // session. There, the first Tab reaches the skip link.
        c.goto(&format!("{portal}/portal/signin")).await.unwrap();
        assert_eq!(js(&c, "return document.activeElement.id").await, json!("token"));
        js(&c, "window.__before_submit = true; return null").await;
        let field = c.find(Locator::Css("#token")).await.unwrap();
        field.send_keys(&(token.clone() + &fantoccini::key::Key::Enter.to_string())).await.unwrap();
        until(&c, "the page after signing in", "return window.__before_submit === undefined && document.readyState === 'complete'").await;
        {
            use fantoccini::actions::{InputSource, KeyAction, KeyActions};
            let tab = '\u{e004}'; // WebDriver's Tab key
            let press = KeyActions::new("keyboard".into())
                .then(KeyAction::Down { value: tab })
                .then(KeyAction::Up { value: tab });
            c.perform_actions(press).await.unwrap();
        }
        assert_eq!(js(&c, "return document.activeElement.textContent").await, json!("Skip to content"));
        assert!(text(&c, "h1").await.starts_with("Cluster"));
        let cookie = c.get_named_cookie("strom_session").await.unwrap();
        assert_eq!(cookie.http_only(), Some(true));
        assert_eq!(format!("{:?}", cookie.same_site()), "Some(Strict)");
        let page = text(&c, "main").await;
        for says in ["This node", "Management members", "Workers", "Invocations per second", "No alerts"] {
            assert!(page.contains(says), "cluster page lacks {says}: {page}");
        }
        accessible(&c, "cluster").await;
        measure(&c, "cluster", &mut weights).await;
        shot(&c, "cluster").await;

        // The app, in the list and on its page.
        follow(&c, "nav a[href='/portal/apps']").await;
        let list = text(&c, "main table").await;
        assert!(list.contains("web"), "{list}");
        accessible(&c, "apps").await;
        measure(&c, "apps", &mut weights).await;
        follow(&c, "main table a[href='/portal/apps/web']").await;
        assert_eq!(text(&c, "h1").await, "App web");
        let first_version = js(&c, "return document.querySelector('#versions-h').parentElement.querySelector('tbody code').textContent").await;
        accessible(&c, "app").await;
        measure(&c, "app", &mut weights).await;

        // A bad upload: a clear message, nothing changed.
        upload(&c, &not_zip).await;
        until(&c, "the refused upload is explained", "const s = document.querySelector('[data-status]'); return s.classList.contains('bad') && s.textContent").await;
        let said = text(&c, "[data-status]").await;
        assert!(said.contains("not a zip"), "{said}");
        upload(&c, &too_large).await;
        until(&c, "the refused upload is explained", "const s = document.querySelector('[data-status]'); return s.classList.contains('bad') && s.textContent.includes('limit') && s.textContent").await;
        assert_eq!(c.find_all(Locator::Css("#versions-h ~ div tbody tr")).await.unwrap().len(), 1);

        // Deploy a new version by upload: it becomes active with its new function.
        upload(&c, &v2_zip).await;
        until(&c, "the new version is active", "return location.search.includes('done=deployed')").await;
        assert!(text(&c, ".flash.done").await.contains("Deployed"));
        let functions_table = text(&c, "#functions-h ~ div table").await;
        assert!(functions_table.contains("second"), "{functions_table}");
        let history = text(&c, "#history-h ~ div table").await;
        assert!(history.contains("web-v2.zip") && history.contains("serves on 1 worker"), "{history}");
        shot(&c, "app-deployed").await;

        // Settings: script payloads shown as text; an invalid name refused.
        fill(&c, "#set-name", "GREETING").await;
        fill(&c, "#set-value", SCRIPT).await;
        submit(&c, "form[action='/portal/apps/web/settings']:not(.inline)").await;
        until(&c, "the setting is saved", "return location.search.includes('done=settings')").await;
        c.goto(&format!("{portal}/portal/apps/web?reveal=GREETING#settings")).await.unwrap();
        let row = text(&c, "#settings table").await;
        assert!(row.contains(SCRIPT), "{row}");
        fill(&c, "#set-name", "bad name<b>x</b>").await;
        fill(&c, "#set-value", "1").await;
        submit(&c, "form[action='/portal/apps/web/settings']:not(.inline)").await;
        let refused = text(&c, ".flash.error").await;
        assert!(refused.contains("bad name<b>x</b>"), "the name is named, as text: {refused}");
        let settings = up.json(&["app", "settings", "get", "web"]);
        assert!(!settings.to_string().contains("bad name"), "{settings}");

        // A forged or missing CSRF token changes nothing.
        let status = c
            .execute_async(
                "const done = arguments[0];
                 fetch('/portal/apps/web/scale', {method: 'POST',
                    headers: {'Content-Type': 'application/x-www-form-urlencoded'},
                    body: 'instances=0&csrf=forged'}).then(r => done(r.status));",
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(status, json!(403));
        let shown = up.json(&["app", "show", "web"]);
        assert_ne!(shown["scale"], json!(0), "{shown}");

        // Roll back to the first version: `second` is gone again.
        follow(&c, &format!("form[action='/portal/apps/web/rollback'] input[value^='{}'] + button", first_version.as_str().unwrap())).await;
        until(&c, "rolled back", "return location.search.includes('done=rolledback')").await;
        let functions_table = text(&c, "#functions-h ~ div table").await;
        assert!(!functions_table.contains("second"), "{functions_table}");

        // Rotate the function's key: the old one stops opening the function.
        c.goto(&format!("{portal}/portal/apps/web/functions/hello?reveal=all#keys")).await.unwrap();
        accessible(&c, "function").await;
        measure(&c, "function", &mut weights).await;
        let old_key = js(&c, "return [...document.querySelectorAll('#keys tbody tr')].find(r => r.cells[1].textContent === 'function').cells[2].querySelector('code').textContent").await;
        let old_key = old_key.as_str().unwrap().to_string();
        follow(&c, "#keys tbody tr:first-child form[action$='/keys'] button").await;
        until(&c, "the key is rotated", "return location.search.includes('done=key')").await;
        let new_key = js(&c, "return [...document.querySelectorAll('#keys tbody tr')].find(r => r.cells[1].textContent === 'function').cells[2].querySelector('code').textContent").await;
        let new_key = new_key.as_str().unwrap().to_string();
        assert_ne!(old_key, new_key);
        let (f, o, n) = (functions.clone(), old_key.clone(), new_key.clone());
        let (old_status, new_status) = tokio::task::spawn_blocking(move || {
            (
                http("GET", &f, "/api/hello", &[("x-functions-key", &o)], b"").status,
                http("GET", &f, "/api/hello", &[("x-functions-key", &n)], b"").status,
            )
        })
        .await
        .unwrap();
        assert_eq!((old_status, new_status), (401, 200));

        // The browser sends the portal's cookies to the function port too (same
        // host): the gateway passes the others, never the session.
        js(&c, "document.cookie = 'visible=1; path=/'; return null").await;
        c.goto(&format!("{functions}/api/hello?code={new_key}")).await.unwrap();
        let echoed = text(&c, "body").await;
        assert!(echoed.contains("visible=1"), "the browser sent its cookies: {echoed}");
        assert!(!echoed.contains("strom_session"), "{echoed}");
        c.goto(&format!("{portal}/portal/apps/web/functions/hello?reveal=all#keys")).await.unwrap();

        // The test panel: the response, as text, and that invocation's logs.
        fill(&c, "#t-headers", &format!("X-Evil: {SCRIPT}")).await;
        fill(&c, "#t-body", "hello from the panel").await;
        c.find(Locator::Css("#t-method")).await.unwrap().select_by_value("POST").await.unwrap();
        submit(&c, "#test form").await;
        assert_eq!(text(&c, "#test-status").await, "200");
        let body = text(&c, "#test-body").await;
        assert!(body.contains(SCRIPT) && body.contains("hello from the panel"), "{body}");
        let handler_logs = text(&c, "#test-result pre[data-source='handler']").await;
        assert!(handler_logs.contains("echo hello"), "{handler_logs}");
        let invocation = text(&c, "#test-result dd a code").await;
        let stdout = text(&c, "#test-result pre[data-source='stdout']").await;
        assert_eq!(stdout.trim(), format!("stdout {invocation}"));
        assert_eq!(js(&c, "return window.__pwned === undefined && document.querySelectorAll('main script, main img').length === 0").await, json!(true));
        c.find(Locator::Css("#test-result")).await.unwrap().screenshot().await.map(|png| {
            std::fs::write(artifacts().join("function-test-result.png"), png).unwrap()
        }).unwrap();
        shot(&c, "function-test-panel").await;

        // Create a key with a chosen value, then delete it.
        fill(&c, "#key-name", "ci-key").await;
        fill(&c, "#key-value", "ci-key-value-0123456789abcdef").await;
        submit(&c, "form[action$='/keys']:not(.inline)").await;
        assert!(text(&c, ".flash.done").await.contains("Key saved"));
        let keys = text(&c, "#keys table").await;
        assert!(keys.contains("ci-key") && keys.contains("ci-key-value-0123456789abcdef"), "the new key is shown once: {keys}");
        let f = functions.clone();
        let with_new = tokio::task::spawn_blocking(move || {
            http("GET", &f, "/api/hello", &[("x-functions-key", "ci-key-value-0123456789abcdef")], b"").status
        }).await.unwrap();
        assert_eq!(with_new, 200);
        follow(&c, "form[action$='/deletekey'] button[aria-label='Delete key ci-key']").await;
        assert!(text(&c, ".flash.done").await.contains("Key deleted"));
        assert!(!text(&c, "#keys table").await.contains("ci-key"));

        // Disable, then enable the function.
        follow(&c, "form[action$='/disable'] button").await;
        assert!(text(&c, ".flash.done").await.contains("disabled"));
        let settings = up.json(&["app", "settings", "get", "web"]);
        assert!(settings.to_string().contains("AzureWebJobs.hello.Disabled"), "{settings}");
        follow(&c, "form[action$='/enable'] button").await;
        assert!(text(&c, ".flash.done").await.contains("enabled"));
        let settings = up.json(&["app", "settings", "get", "web"]);
        assert!(!settings.to_string().contains("AzureWebJobs.hello.Disabled"), "{settings}");

        // A timer: its schedule and next run, and "Run now".
        c.goto(&format!("{portal}/portal/apps/web/functions/tick")).await.unwrap();
        let timer = text(&c, "#timer-h + dl").await;
        assert!(timer.contains("Schedule") && timer.contains("Next run") && timer.contains("2027-01-01"), "{timer}");
        submit(&c, "form[action$='/run']").await;
        let ran = text(&c, ".flash").await;
        assert!(ran.contains("Ran tick now: succeeded"), "{ran}");
        shot(&c, "function-timer").await;

        // Invocations, live: a call made now appears at the top without a reload.
        c.goto(&format!("{portal}/portal/invocations?app=web")).await.unwrap();
        until(&c, "the stream is live", "return document.getElementById('stream-state').textContent.startsWith('Live')").await;
        accessible(&c, "invocations").await;
        measure(&c, "invocations", &mut weights).await;
        let before = js(&c, "return document.querySelectorAll('table[data-stream] tbody tr').length").await;
        let f = functions.clone();
        let answer = tokio::task::spawn_blocking(move || {
            http("GET", &f, "/api/hello?live=1", &[("x-functions-key", &new_key)], b"")
        })
        .await
        .unwrap();
        assert_eq!(answer.status, 200);
        let id = answer.json()["invocationId"].as_str().map(str::to_string);
        until(&c, "the new invocation appears live", &format!(
            "return document.querySelectorAll('table[data-stream] tbody tr').length > {before}"
        )).await;
        if let Some(id) = id {
            until(&c, "the row is that invocation", &format!(
                "return !!document.querySelector('table[data-stream] tbody tr[data-id=\"{id}\"]')"
            )).await;
        }
        shot(&c, "invocations-live").await;

        // One invocation's detail: its logs, stdout and stderr.
        follow(&c, "table[data-stream] tbody tr:first-child a").await;
        let id = text(&c, "main dd a code").await;
        assert_eq!(text(&c, "pre[data-source='stdout']").await.trim(), format!("stdout {id}"));
        assert_eq!(text(&c, "pre[data-source='stderr']").await.trim(), format!("stderr {id}"));
        accessible(&c, "invocation").await;
        shot(&c, "invocation").await;

        // The charts, after this traffic.
        c.goto(&format!("{portal}/portal/cluster")).await.unwrap();
        let charts = text(&c, "#charts-h + div").await;
        assert!(!charts.contains("invocations/s: last 0.00 /s, peak 0.00 /s"), "{charts}");
        assert!(!charts.contains("p50: no data"), "{charts}");
        shot(&c, "cluster-with-traffic").await;

        // At a phone's width the page does not scroll sideways.
        c.set_window_size(390, 844).await.unwrap();
        c.goto(&format!("{portal}/portal/apps/web")).await.unwrap();
        let wide = js(&c, "return document.documentElement.scrollWidth").await;
        assert!(wide.as_u64().unwrap() <= 390, "the page is {wide} px wide at 390 px");
        shot(&c, "app-phone").await;
        c.goto(&format!("{portal}/portal/cluster")).await.unwrap();
        let wide = js(&c, "return document.documentElement.scrollWidth").await;
        assert!(wide.as_u64().unwrap() <= 390, "the cluster page is {wide} px wide at 390 px");
        shot(&c, "cluster-phone").await;
        c.set_window_size(1280, 900).await.unwrap();

        // Delete, with the app's name typed: a mistyped name deletes nothing.
        c.goto(&format!("{portal}/portal/apps/web")).await.unwrap();
        fill(&c, "#confirm", "wbe").await;
        submit(&c, "form[action='/portal/apps/web/delete']").await;
        let refused = text(&c, ".flash.error").await;
        assert!(refused.contains("type its name `web` exactly"), "{refused}");
        assert_eq!(up.json(&["app", "list"]).to_string().matches("\"web\"").count(), 1);
        fill(&c, "#confirm", "web").await;
        submit(&c, "form[action='/portal/apps/web/delete']").await;
        assert!(text(&c, ".flash.done").await.contains("App deleted"));
        assert!(text(&c, "main").await.contains("No apps yet"));

        // Sign out: the session cookie is gone, pages ask to sign in.
        submit(&c, "header form").await;
        assert!(text(&c, ".flash.done").await.contains("signed out"));
        c.goto(&format!("{portal}/portal/apps")).await.unwrap();
        assert_eq!(c.title().await.unwrap(), "Sign in · Strom");
        c.close().await.unwrap();
        let report = serde_json::to_string_pretty(&weights).unwrap();
        std::fs::write(artifacts().join("page-weights.json"), &report).unwrap();
        println!("page weight and first contentful paint per view:\n{report}");
    });
}
