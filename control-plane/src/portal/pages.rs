//! The portal's pages (maud: every spliced value is HTML-escaped).

use bytes::Bytes;
use maud::{html, Markup, DOCTYPE};
use strom_proto::admin_v1 as pb;
use strom_proto::admin_v1::admin_service_server::AdminService;
use strom_proto::ids::AppName;
use tonic::codegen::http::{header, HeaderValue, Response, StatusCode};

use super::test_panel::TestResult;
use super::{assets, charts, Ctx, Flash, Problem};
use crate::admin_service::AdminApi;
use crate::management::now_ms;

type Body = tonic::body::Body;

/// A path segment, percent-encoded (names are checked, but never trusted).
pub fn path_escape(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

fn time(ms: i64) -> String {
    if ms <= 0 {
        return "—".into();
    }
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%SZ").to_string())
        .unwrap_or_else(|| "—".into())
}

fn ago(ms: i64) -> String {
    let s = (now_ms() - ms) / 1000;
    match s {
        i64::MIN..=-1 => format!("in {}", humanize(-s)),
        _ => format!("{} ago", humanize(s)),
    }
}

fn humanize(s: i64) -> String {
    match s {
        0..=119 => format!("{s} s"),
        120..=7199 => format!("{} min", s / 60),
        _ => format!("{} h", s / 3600),
    }
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

fn bytes(n: u64) -> String {
    match n {
        0..=9_999 => format!("{n} B"),
        10_000..=9_999_999 => format!("{:.1} KiB", n as f64 / 1024.0),
        _ => format!("{:.1} MiB", n as f64 / (1024.0 * 1024.0)),
    }
}

fn csrf(ctx: &Ctx) -> Markup {
    html! { input type="hidden" name="csrf" value=(ctx.csrf); }
}

fn flash(f: Option<&Flash>) -> Markup {
    html! {
        @match f {
            Some(Flash::Done(text)) => div.flash.done role="status" { (text) },
            Some(Flash::Error(p)) => div.flash.error role="alert" {
                strong { "Not done: " } (p.message)
                @if !p.details.is_empty() {
                    ul { @for d in &p.details { li { (d) } } }
                }
            },
            None => {},
        }
    }
}

/// The frame of every page.
fn layout(
    ctx: Option<&Ctx>,
    title: &str,
    section: &str,
    note: Option<&Flash>,
    content: Markup,
) -> Markup {
    let current = |s: &str| (s == section).then_some("page");
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                @if let Some(c) = ctx { meta name="csrf-token" content=(c.csrf); }
                title { (title) " · Strom" }
                link rel="stylesheet" href=(assets::css());
                script src=(assets::js()) defer {}
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    span.brand { "Strom" }
                    @if let Some(c) = ctx {
                        nav aria-label="Main" {
                            ul {
                                li { a href="/portal/cluster" aria-current=[current("cluster")] { "Cluster" } }
                                li { a href="/portal/apps" aria-current=[current("apps")] { "Apps" } }
                                li { a href="/portal/invocations" aria-current=[current("invocations")] { "Invocations" } }
                            }
                        }
                        form.inline method="post" action="/portal/signout" {
                            (csrf(c))
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main #main tabindex="-1" {
                    (flash(note))
                    (content)
                }
            }
        }
    }
}

/// The sign-in page (`why`: how the last session ended; `error`: the refusal).
pub fn sign_in(why: Option<&str>, error: Option<&str>) -> Markup {
    layout(
        None,
        "Sign in",
        "",
        None,
        html! {
            h1 { "Sign in to Strom" }
            @if let Some(w) = why { div.flash.done role="status" { (w) } }
            @if let Some(e) = error { div.flash.error role="alert" { strong { "Not signed in: " } (e) } }
            form.stack method="post" action="/portal/signin" {
                div.field {
                    label for="token" { "Admin token " span.hint { "(admin.token in the data dir of the node that created the cluster)" } }
                    input #token type="password" name="token" autocomplete="current-password" required autofocus;
                }
                div { button type="submit" { "Sign in" } }
            }
        },
    )
}

/// A page that only says what went wrong.
pub fn problem(ctx: &Ctx, p: &Problem) -> Markup {
    layout(
        Some(ctx),
        "Problem",
        "",
        None,
        html! {
            h1 { "Not done" }
            div.flash.error role="alert" {
                (p.message)
                @if !p.details.is_empty() { ul { @for d in &p.details { li { (d) } } } }
            }
            p { a href=(ctx.back) { "Back" } " · " a href="/portal/cluster" { "Cluster" } }
        },
    )
}

// --- cluster ---------------------------------------------------------------

pub async fn cluster(ctx: &Ctx, done: Option<Flash>) -> Result<Markup, Problem> {
    let api = &ctx.api;
    // The leader's view when there is one; this member's own otherwise.
    let (status, stale) = match api
        .get_cluster_status(tonic::Request::new(pb::GetClusterStatusRequest {
            stale: false,
        }))
        .await
    {
        Ok(s) => (s.into_inner(), None),
        Err(e) => (
            api.get_cluster_status(tonic::Request::new(pb::GetClusterStatusRequest {
                stale: true,
            }))
            .await?
            .into_inner(),
            Some(e.message().to_string()),
        ),
    };
    let functions = api
        .list_functions(tonic::Request::new(pb::ListFunctionsRequest::default()))
        .await
        .map(|r| r.into_inner().functions)
        .unwrap_or_default();
    let alerts = alerts(&status, &functions, stale.as_deref());
    let hour = crate::invocation_history::global().last_hour(now_ms());
    let content = html! {
        h1 { "Cluster " code { (status.cluster_id) } }
        section aria-labelledby="alerts-h" {
            h2 #alerts-h { "Alerts" }
            @if alerts.is_empty() {
                p.ok { "No alerts: a leader, every worker up, no crash loops, timers on time." }
            } @else {
                ul.alerts { @for a in &alerts { li.bad { (a) } } }
            }
        }
        div.grid {
            div.card {
                h3 { "This node" }
                dl.facts {
                    dt { "Node" } dd { (status.node_id) " (" (status.state) ")" }
                    dt { "Leader" } dd { @match status.leader_id { Some(l) => (l), None => span.bad { "none" } } }
                    dt { "Term" } dd { (status.term) }
                    dt { "Applied / log" } dd { (status.last_applied_index) " / " (status.last_log_index) }
                    dt { "Build" } dd { (status.build_version) }
                    dt { "Protocol" } dd { (status.protocol) }
                    dt { "Apps" } dd { (status.app_count) }
                }
            }
            div.card {
                h3 { "Checkpoints" }
                @match &status.checkpoint {
                    None => p.muted { "Not configured (--checkpoint-store): the Raft group's own snapshots only." },
                    Some(c) => dl.facts {
                        dt { "Store" } dd { code { (c.store) } }
                        dt { "Last" } dd {
                            @match &c.last {
                                Some(l) => { (time(l.created_ms)) " (" (ago(l.created_ms)) "), index " (l.index) ", " (bytes(l.state_size + l.packages_size)) }
                                None => "none yet",
                            }
                        }
                        @if let Some(e) = &c.last_error {
                            dt { "Last error" } dd.bad { (e) @if let Some(at) = c.last_error_ms { " (" (ago(at)) ")" } }
                        }
                    },
                }
            }
        }
        section aria-labelledby="charts-h" {
            h2 #charts-h { "Invocations on this node, last hour" }
            (charts::hour(&hour))
        }
        section aria-labelledby="members-h" {
            h2 #members-h { "Management members" }
            div.table { table {
                thead { tr { th scope="col" { "Node" } th scope="col" { "Address" } th scope="col" { "Role" } th scope="col" { "Build" } th scope="col" { "Protocol" } th scope="col" { "Lag" } } }
                tbody { @for m in &status.members { tr {
                    td { (m.node_id) }
                    td { code { (m.address) } }
                    td { @if m.leader { strong { "leader" } } @else if m.voter { "voter" } @else { "learner" } }
                    td { (m.build.as_deref().unwrap_or("?")) }
                    td { @match m.protocol { Some(p) => (p), None => "?" } }
                    td { @match m.lag { Some(l) => { (l) " entries" }, None => "?" } }
                } } }
            } }
        }
        section aria-labelledby="workers-h" {
            h2 #workers-h { "Workers" }
            div.table { table {
                thead { tr { th scope="col" { "Node" } th scope="col" { "Address" } th scope="col" { "State" } th scope="col" { "Instances (ready/placed)" } th scope="col" { "Capacity" } th scope="col" .hide-narrow { "Labels" } th scope="col" { "Last heartbeat" } } }
                tbody { @for w in &status.workers { tr {
                    td { (w.node_id) }
                    td { code { (w.http_addr) } }
                    td { span class=(if w.status == "Up" { "ok" } else { "bad" }) { (w.status) } }
                    td { @match w.ready { Some(r) => (r), None => "?" } " / " (w.placed) }
                    td { (w.capacity_instances) " instances, " (w.capacity_memory_mb) " MiB" }
                    td.hide-narrow { @for (k, v) in &w.labels { code { (k) "=" (v) } " " } }
                    td { @match w.last_heartbeat_ms { Some(t) => { (humanize(t / 1000)) " ago" }, None => "—" } }
                } } }
            } }
        }
    };
    Ok(layout(
        Some(ctx),
        "Cluster",
        "cluster",
        done.as_ref(),
        content,
    ))
}

/// What needs an operator's eye.
fn alerts(
    status: &pb::GetClusterStatusResponse,
    functions: &[pb::FunctionInfo],
    stale: Option<&str>,
) -> Vec<String> {
    let mut out = Vec::new();
    if status.leader_id.is_none() {
        out.push(
            "No leader: the management group has no quorum; changes are refused until a \
             majority of members is up."
                .to_string(),
        );
    }
    if let Some(why) = stale {
        out.push(format!(
            "This page shows this member's own view (the leader could not be asked: {why})."
        ));
    }
    for w in &status.workers {
        if w.status == "Down" {
            out.push(format!(
                "Worker {} ({}) is down{}.",
                w.node_id,
                w.http_addr,
                w.last_heartbeat_ms
                    .map(|t| format!(": last heartbeat {} ago", humanize(t / 1000)))
                    .unwrap_or_default()
            ));
        }
    }
    for i in &status.instances {
        if i.state == "CrashLooping" {
            out.push(format!(
                "App {} is crash-looping on node {} (restarted {} times): {}",
                i.app_name, i.node_id, i.restarts, i.last_error
            ));
        }
    }
    let now = now_ms();
    for f in functions {
        let Some(t) = &f.timer else { continue };
        if !t.problem.is_empty() {
            out.push(format!(
                "Timer {}/{} does not run: {}",
                f.app_name, f.name, t.problem
            ));
        } else if !f.disabled && t.next_ms > 0 && t.next_ms < now - 60_000 && t.running.is_none() {
            out.push(format!(
                "Timer {}/{} is late: its run due {} has not started.",
                f.app_name,
                f.name,
                ago(t.next_ms)
            ));
        }
    }
    for r in &status.timer_runs {
        if r.attempt > 1 || !r.last_error.is_empty() {
            out.push(format!(
                "Timer {}/{} failed (attempt {}): {}",
                r.app_name, r.function_name, r.attempt, r.last_error
            ));
        }
    }
    if let Some(c) = &status.checkpoint {
        if let Some(e) = &c.last_error {
            out.push(format!("The last checkpoint failed: {e}"));
        }
    }
    out
}

// --- apps --------------------------------------------------------------------

fn upload_form(app: Option<&AppName>) -> Markup {
    let action = app
        .map(|a| format!("/portal/apps/{}/deploy", a.as_str()))
        .unwrap_or_else(|| "/portal/apps/new/deploy".into());
    html! {
        form.stack method="post" action=(action) data-upload="1" {
            @if app.is_none() {
                div.field {
                    label for="new-app" { "App name " span.hint { "(letters, digits and hyphens)" } }
                    input #new-app type="text" name="app" required autocomplete="off";
                }
            }
            div.field {
                label for=(format!("zip-{}", app.map(|a| a.as_str()).unwrap_or("new"))) { "Package " span.hint { "(a .zip of the app folder: host.json and one folder per function)" } }
                input id=(format!("zip-{}", app.map(|a| a.as_str()).unwrap_or("new"))) type="file" name="zip" accept=".zip,application/zip" required;
            }
            progress hidden max="1" value="0" aria-label="Upload progress" {}
            p data-status="1" role="status" aria-live="polite" {}
            div { button type="submit" { "Deploy" } }
        }
    }
}

pub async fn apps(ctx: &Ctx, done: Option<Flash>) -> Result<Markup, Problem> {
    let api = &ctx.api;
    let list = api
        .list_apps(tonic::Request::new(pb::ListAppsRequest {}))
        .await?
        .into_inner();
    let status = api
        .get_cluster_status(tonic::Request::new(pb::GetClusterStatusRequest {
            stale: true,
        }))
        .await?
        .into_inner();
    let content = html! {
        h1 { "Apps" }
        @if list.apps.is_empty() {
            p.muted { "No apps yet: deploy one below, or with strom app deploy." }
        } @else {
            div.table { table {
                thead { tr { th scope="col" { "App" } th scope="col" { "Status" } th scope="col" { "Active version" } th scope="col" { "Functions" } th scope="col" .hide-narrow { "Versions" } th scope="col" .hide-narrow { "Updated" } th scope="col" .hide-narrow { "Address" } } }
                tbody { @for a in &list.apps { tr {
                    td { a href=(format!("/portal/apps/{}", path_escape(&a.name))) { (a.name) } }
                    td { (app_status(&status, &a.name)) }
                    td { code { (short(&a.active_version)) } }
                    td { (a.function_count) }
                    td.hide-narrow { (a.version_count) }
                    td.hide-narrow { (ago(a.updated_at_ms)) }
                    td.hide-narrow { code { (a.url) } }
                } } }
            } }
        }
        section aria-labelledby="new-h" {
            h2 #new-h { "Deploy a new app" }
            (upload_form(None))
        }
    };
    Ok(layout(Some(ctx), "Apps", "apps", done.as_ref(), content))
}

/// "serving 2/2", "starting 0/1", "scaled to 0", "crash-looping".
fn app_status(status: &pb::GetClusterStatusResponse, app: &str) -> Markup {
    let crash = status
        .instances
        .iter()
        .any(|i| i.app_name == app && i.state == "CrashLooping");
    let placement = status.placements.iter().find(|p| p.app_name == app);
    let desired = placement.map(|p| p.desired).unwrap_or(0);
    let ready: u32 = placement
        .map(|p| p.nodes.iter().map(|n| n.ready.unwrap_or(0)).sum())
        .unwrap_or(0);
    html! {
        @if crash { span.bad { "crash-looping" } }
        @else if desired == 0 { span.muted { "scaled to 0" } }
        @else if ready >= desired { span.ok { "serving " (ready) "/" (desired) } }
        @else { span.warn { "starting " (ready) "/" (desired) } }
    }
}

fn masked(value: &str) -> String {
    if value.is_empty() {
        "(empty)".into()
    } else {
        "••••••••".into()
    }
}

pub async fn app(
    ctx: &Ctx,
    app: &AppName,
    reveal: Option<&str>,
    note: Option<Flash>,
) -> Result<Markup, Problem> {
    let api = &ctx.api;
    let got = api
        .get_app(tonic::Request::new(pb::GetAppRequest {
            name: app.to_string(),
        }))
        .await?
        .into_inner();
    let deployments = api
        .list_deployments(tonic::Request::new(pb::ListDeploymentsRequest {
            app_name: app.to_string(),
        }))
        .await
        .map(|r| r.into_inner().deployments)
        .unwrap_or_default();
    let settings = api
        .get_app_settings(tonic::Request::new(pb::GetAppSettingsRequest {
            name: app.to_string(),
        }))
        .await?
        .into_inner()
        .settings;
    let settings: std::collections::BTreeMap<_, _> = settings.into_iter().collect();
    let status = api
        .get_cluster_status(tonic::Request::new(pb::GetClusterStatusRequest {
            stale: true,
        }))
        .await?
        .into_inner();
    let summary = got.app.clone().unwrap_or_default();
    let base = format!("/portal/apps/{}", path_escape(app.as_str()));
    let shown = |name: &str| reveal == Some("all") || reveal == Some(name);
    let content = html! {
        h1 { "App " (app.as_str()) }
        dl.facts {
            dt { "Status" } dd { (app_status(&status, app.as_str())) }
            dt { "Address" } dd { code { (summary.url) } " " button.secondary type="button" data-copy=(summary.url) { "Copy" } }
            dt { "Active version" } dd { code { (summary.active_version) } }
            dt { "Instances wanted" } dd { (got.scale) }
            dt { "Route prefix" } dd { code { "/" (got.route_prefix) } }
        }
        section aria-labelledby="functions-h" {
            h2 #functions-h { "Functions" }
            div.table { table {
                thead { tr { th scope="col" { "Function" } th scope="col" { "Trigger" } th scope="col" { "Route or schedule" } th scope="col" { "State" } } }
                tbody { @for f in &got.functions { tr {
                    td { a href=(format!("{base}/functions/{}", path_escape(&f.name))) { (f.name) } }
                    td { (f.trigger_type) }
                    td { @if !f.schedule.is_empty() { code { (f.schedule) } } @else { code { (f.methods.join(",")) " " (f.route) } } }
                    td { @if !f.supported { span.warn { "not supported" } } @else if f.disabled { span.warn { "disabled" } } @else { span.ok { "enabled" } } }
                } } }
            } }
        }
        section aria-labelledby="deploy-h" {
            h2 #deploy-h { "Deploy a new version" }
            (upload_form(Some(app)))
        }
        section aria-labelledby="history-h" {
            h2 #history-h { "Deployment history" }
            @if deployments.is_empty() { p.muted { "No deployments recorded." } }
            @else { div.table { table {
                thead { tr { th scope="col" { "Deployment" } th scope="col" { "Status" } th scope="col" { "Message" } th scope="col" .hide-narrow { "By" } th scope="col" { "Received" } th scope="col" .hide-narrow { "Version" } } }
                tbody { @for d in &deployments { tr {
                    td { code { (short(&d.id)) } @if d.active { " " strong { "(active)" } } }
                    td { span class=(if d.status == 4 { "ok" } else if d.status == 3 { "bad" } else { "warn" }) { (d.status_text) }
                         @if !d.errors.is_empty() { ul { @for e in &d.errors { li { (e) } } } } }
                    td { (d.message) }
                    td.hide-narrow { (d.deployer) @if !d.author.is_empty() { " (" (d.author) ")" } }
                    td { (d.received_time) }
                    td.hide-narrow { code { (short(&d.version_id)) } }
                } } }
            } } }
        }
        section aria-labelledby="versions-h" {
            h2 #versions-h { "Versions" }
            div.table { table {
                thead { tr { th scope="col" { "Version" } th scope="col" { "Deployed" } th scope="col" .hide-narrow { "Size" } th scope="col" { "Functions" } th scope="col" { "" } } }
                tbody { @for v in &got.versions { tr {
                    td { code { (short(&v.version_id)) } }
                    td { (time(v.deployed_at_ms)) }
                    td.hide-narrow { (bytes(v.size_bytes)) }
                    td { (v.function_count) }
                    td { @if v.active { strong { "active" } } @else {
                        form.inline method="post" action=(format!("{base}/rollback")) {
                            (csrf(ctx))
                            input type="hidden" name="version" value=(v.version_id);
                            button.secondary type="submit" aria-label=(format!("Roll back to version {}", short(&v.version_id))) { "Roll back to this" }
                        }
                    } }
                } } }
            } }
        }
        section aria-labelledby="instances-h" {
            h2 #instances-h { "Instances" }
            @if got.instances.is_empty() { p.muted { "No instances." } }
            @else { div.table { table {
                thead { tr { th scope="col" { "Node" } th scope="col" { "Slot" } th scope="col" { "State" } th scope="col" { "Version" } th scope="col" { "Restarts" } th scope="col" .hide-narrow { "Last error" } } }
                tbody { @for i in &got.instances { tr {
                    td { (i.node_id) } td { (i.slot) }
                    td { span class=(if i.state == "Ready" { "ok" } else if i.state == "CrashLooping" { "bad" } else { "warn" }) { (i.state) } }
                    td { code { (short(&i.version_id)) } }
                    td { (i.restarts) }
                    td.hide-narrow { (i.last_error) }
                } } }
            } } }
        }
        section #settings aria-labelledby="settings-h" {
            h2 #settings-h { "Settings" }
            p.muted { "Values are hidden until revealed. " a href=(format!("{base}?reveal=all#settings")) { "Reveal all" } }
            @if settings.is_empty() { p.muted { "No settings." } }
            @else { div.table { table {
                thead { tr { th scope="col" { "Name" } th scope="col" { "Value" } th scope="col" { "" } } }
                tbody { @for (k, v) in &settings { tr {
                    td { code { (k) } }
                    td { @if shown(k) { code { (v) } } @else {
                        span aria-label="hidden value" { (masked(v)) } " "
                        a href=(format!("{base}?reveal={}#settings", path_escape(k))) { "Reveal" span.sr-only { " " (k) } }
                    } }
                    td { form.inline method="post" action=(format!("{base}/settings")) {
                        (csrf(ctx))
                        input type="hidden" name="remove" value=(k);
                        button.secondary type="submit" aria-label=(format!("Remove setting {k}")) { "Remove" }
                    } }
                } } }
            } } }
            h3 { "Set a setting" }
            form.row method="post" action=(format!("{base}/settings")) {
                (csrf(ctx))
                div.field { label for="set-name" { "Name" } input #set-name type="text" name="name" required autocomplete="off"; }
                div.field { label for="set-value" { "Value" } input #set-value type="password" name="value" autocomplete="off"; }
                div { button type="submit" { "Save" } }
            }
            h3 { "Import local.settings.json" }
            form.stack method="post" action=(format!("{base}/import")) {
                (csrf(ctx))
                div.field {
                    label for="ls-file" { "File " span.hint { "(its Values become settings; others are kept)" } }
                    input #ls-file type="file" accept=".json,application/json" data-read-into="ls-text";
                }
                div.field {
                    label for="ls-text" { "Contents" }
                    textarea #ls-text name="local_settings" rows="5" required {}
                }
                div { button type="submit" { "Import" } }
            }
        }
        section aria-labelledby="scale-h" {
            h2 #scale-h { "Scale" }
            form.row method="post" action=(format!("{base}/scale")) {
                (csrf(ctx))
                div.field { label for="scale-n" { "Instances" } input #scale-n type="number" name="instances" min="0" max="1000" value=(got.scale) required; }
                div { button type="submit" { "Scale" } }
            }
        }
        section aria-labelledby="delete-h" {
            h2 #delete-h { "Delete" }
            form.row method="post" action=(format!("{base}/delete")) {
                (csrf(ctx))
                div.field {
                    label for="confirm" { "Type " code { (app.as_str()) } " to delete the app, every version and its settings and keys" }
                    input #confirm type="text" name="confirm" required autocomplete="off";
                }
                div { button.danger type="submit" { "Delete app" } }
            }
        }
    };
    Ok(layout(
        Some(ctx),
        &format!("App {app}"),
        "apps",
        note.as_ref(),
        content,
    ))
}

// --- functions ------------------------------------------------------------------

/// A function of an app's active version, by name (case-insensitive).
pub async fn function_info(
    api: &AdminApi,
    app: &AppName,
    function: &str,
) -> Result<pb::FunctionInfo, Problem> {
    api.list_functions(tonic::Request::new(pb::ListFunctionsRequest {
        app_name: app.to_string(),
    }))
    .await?
    .into_inner()
    .functions
    .into_iter()
    .find(|f| f.name.eq_ignore_ascii_case(function))
    .ok_or_else(|| {
        Problem::new(
            StatusCode::NOT_FOUND,
            format!("app `{app}` has no function `{function}`"),
        )
    })
}

pub async fn function(
    ctx: &Ctx,
    app: &AppName,
    function: &str,
    reveal: Option<&str>,
    note: Option<Flash>,
    result: Option<TestResult>,
) -> Result<Markup, Problem> {
    let api = &ctx.api;
    let f = function_info(api, app, function).await?;
    let keys = api
        .list_function_keys(tonic::Request::new(pb::ListFunctionKeysRequest {
            app_name: app.to_string(),
            function_name: f.name.clone(),
        }))
        .await?
        .into_inner();
    let recent = api
        .list_invocations(tonic::Request::new(pb::ListInvocationsRequest {
            app_name: app.to_string(),
            function_name: f.name.clone(),
            limit: Some(20),
            ..Default::default()
        }))
        .await
        .map(|r| r.into_inner().invocations)
        .unwrap_or_default();
    let base = format!(
        "/portal/apps/{}/functions/{}",
        path_escape(app.as_str()),
        path_escape(&f.name)
    );
    let http = f.trigger_type == "httpTrigger";
    let default_path = f
        .url
        .split_once("://")
        .and_then(|(_, rest)| rest.find('/').map(|i| rest[i..].to_string()))
        .unwrap_or_else(|| "/".into());
    let content = html! {
        p { a href=(format!("/portal/apps/{}", path_escape(app.as_str()))) { "← App " (app.as_str()) } }
        h1 { "Function " (f.name) }
        dl.facts {
            dt { "Trigger" } dd { (f.trigger_type) }
            @if http {
                dt { "Methods" } dd { (if f.methods.is_empty() { "any".to_string() } else { f.methods.join(", ") }) }
                dt { "Auth level" } dd { (f.auth_level) }
                dt { "URL" } dd { code { (f.url) } " " button.secondary type="button" data-copy=(f.url) { "Copy" } }
                @if !f.app_url.is_empty() && f.app_url != f.url {
                    dt { "At the app's address" } dd { code { (f.app_url) } " " button.secondary type="button" data-copy=(f.app_url) { "Copy" } }
                }
            }
            dt { "State" } dd {
                @if f.disabled { span.warn { "disabled" } } @else { span.ok { "enabled" } }
                " "
                form.inline method="post" action=(format!("{base}/{}", if f.disabled { "enable" } else { "disable" })) {
                    (csrf(ctx))
                    button.secondary type="submit" { @if f.disabled { "Enable" } @else { "Disable" } }
                }
            }
        }
        @if !f.unsupported_reasons.is_empty() {
            ul { @for r in &f.unsupported_reasons { li.warn { (r) } } }
        }
        @if let Some(t) = &f.timer {
            section aria-labelledby="timer-h" {
                h2 #timer-h { "Timer" }
                dl.facts {
                    dt { "Schedule" } dd { code { (t.schedule) } @if !t.time_zone.is_empty() { " (" (t.time_zone) ")" } }
                    @if !t.problem.is_empty() { dt { "Problem" } dd.bad { (t.problem) } }
                    dt { "Next run" } dd { @if t.next_ms > 0 { (time(t.next_ms)) " (" (ago(t.next_ms)) ")" } @else { "—" } }
                    dt { "Last run" } dd { @match &t.last_run {
                        Some(r) => { (time(r.at_ms)) ": " @if r.succeeded { span.ok { "succeeded" } } @else { span.bad { "failed" } " " (r.error) } " in " (r.duration_ms) " ms" }
                        None => "none yet",
                    } }
                    @if let Some(r) = &t.running { dt { "Running" } dd { "since " (ago(r.at_ms)) } }
                }
                form method="post" action=(format!("{base}/run")) {
                    (csrf(ctx))
                    button type="submit" { "Run now" }
                }
            }
        }
        section #keys aria-labelledby="keys-h" {
            h2 #keys-h { "Keys" }
            @if http && f.auth_level == "anonymous" { p.muted { "This function is anonymous: it needs no key." } }
            div.table { table {
                thead { tr { th scope="col" { "Name" } th scope="col" { "Scope" } th scope="col" { "Value" } th scope="col" { "" } } }
                tbody { @for k in &keys.keys {
                    @let id = format!("{}:{}", k.scope, path_escape(&k.name));
                    tr {
                        td { code { (k.name) } }
                        td { (k.scope) }
                        td { @if reveal == Some("all") || reveal == Some(id.as_str()) {
                                code { (k.value) } " " button.secondary type="button" data-copy=(k.value) { "Copy" }
                            } @else {
                                (masked(&k.value)) " "
                                a href=(format!("{base}?reveal={}#keys", path_escape(&id))) { "Show" span.sr-only { " key " (k.name) } }
                            } }
                        td {
                            form.inline method="post" action=(format!("{base}/keys")) {
                                (csrf(ctx))
                                input type="hidden" name="scope" value=(k.scope);
                                input type="hidden" name="name" value=(k.name);
                                button.secondary type="submit" aria-label=(format!("Rotate key {}", k.name)) { "Rotate" }
                            }
                            @if k.scope != "master" {
                                " "
                                form.inline method="post" action=(format!("{base}/deletekey")) {
                                    (csrf(ctx))
                                    input type="hidden" name="scope" value=(k.scope);
                                    input type="hidden" name="name" value=(k.name);
                                    button.secondary type="submit" aria-label=(format!("Delete key {}", k.name)) { "Delete" }
                                }
                            }
                        }
                    }
                } }
            } }
            h3 { "Create a key" }
            form.row method="post" action=(format!("{base}/keys")) {
                (csrf(ctx))
                div.field { label for="key-scope" { "Scope" }
                    select #key-scope name="scope" { option value="function" { "this function" } option value="host" { "every function (host key)" } } }
                div.field { label for="key-name" { "Name" } input #key-name type="text" name="name" required autocomplete="off"; }
                div.field { label for="key-value" { "Value " span.hint { "(empty: a random one)" } } input #key-value type="password" name="value" autocomplete="off"; }
                div { button type="submit" { "Create" } }
            }
        }
        @if http {
            section #test aria-labelledby="test-h" {
                h2 #test-h { "Test" }
                form.stack method="post" action=(format!("{base}/test#test")) {
                    (csrf(ctx))
                    div.field { label for="t-method" { "Method" }
                        select #t-method name="method" {
                            @for m in ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"] {
                                option value=(m) selected[result.as_ref().map(|r| r.method == m).unwrap_or(m == "GET")] { (m) }
                            }
                        } }
                    div.field { label for="t-path" { "Path " span.hint { "(replace {…} route parameters)" } } input #t-path type="text" name="path" required value=(default_path); }
                    div.field { label for="t-query" { "Query " span.hint { "(name=value&…)" } } input #t-query type="text" name="query"; }
                    div.field { label for="t-headers" { "Headers " span.hint { "(one Name: value per line; the function's key is added unless you give one)" } } textarea #t-headers name="headers" rows="3" {} }
                    div.field { label for="t-body" { "Body" } textarea #t-body name="body" rows="4" {} }
                    div { button type="submit" { "Send" } }
                }
                @if let Some(r) = &result { (test_result(r)) }
            }
        }
        section aria-labelledby="recent-h" {
            h2 #recent-h { "Recent invocations" }
            (invocation_table(&recent, None))
            p { a href=(format!("/portal/invocations?app={}&function={}", path_escape(app.as_str()), path_escape(&f.name))) { "Live invocations of this function" } }
        }
    };
    Ok(layout(
        Some(ctx),
        &format!("{} · {}", f.name, app),
        "apps",
        note.as_ref(),
        content,
    ))
}

fn test_result(r: &TestResult) -> Markup {
    html! {
        div #test-result.card aria-live="polite" {
            h3 { "Response" }
            dl.facts {
                dt { "Request" } dd { code { (r.method) " " (r.url) } }
                dt { "Status" } dd { span class=(if r.status < 400 { "ok" } else { "bad" }) #test-status { (r.status) } }
                dt { "Duration" } dd { (format!("{:.1}", r.duration_ms)) " ms" }
            }
            h3 { "Headers" }
            div.table { table { tbody { @for (n, v) in &r.headers { tr { th scope="row" { code { (n) } } td { code { (v) } } } } } } }
            h3 { "Body" }
            @if let Some(n) = &r.body_note { p.muted { (n) } }
            pre #test-body { (r.body) }
            h3 { "Invocation" }
            @if let Some(n) = &r.invocation_note { p.muted { (n) } }
            @if let Some(i) = &r.invocation { (invocation_detail(i)) }
        }
    }
}

// --- invocations ------------------------------------------------------------------

/// Live invocation streams open on this node at most.
pub const MAX_STREAMS: usize = 64;
static STREAMS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// One of the [`MAX_STREAMS`] slots, given back when dropped.
struct StreamSlot;

impl StreamSlot {
    fn take() -> Option<StreamSlot> {
        use std::sync::atomic::Ordering;
        STREAMS
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_STREAMS).then_some(n + 1)
            })
            .ok()
            .map(|_| StreamSlot)
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        STREAMS.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

pub struct InvocationFilter {
    pub app: String,
    pub function: String,
    pub status: String,
}

impl InvocationFilter {
    fn request(&self) -> pb::ListInvocationsRequest {
        pb::ListInvocationsRequest {
            app_name: self.app.trim().to_string(),
            function_name: self.function.trim().to_string(),
            status: self.status.trim().to_string(),
            limit: Some(100),
            ..Default::default()
        }
    }

    fn query(&self) -> String {
        format!(
            "app={}&function={}&status={}",
            path_escape(self.app.trim()),
            path_escape(self.function.trim()),
            path_escape(self.status.trim())
        )
    }
}

fn duration(us: u64) -> String {
    format!("{:.1} ms", us as f64 / 1000.0)
}

fn invocation_table(list: &[pb::InvocationInfo], stream: Option<&str>) -> Markup {
    html! {
        div.table { table data-stream=[stream] {
            thead { tr { th scope="col" { "Started" } th scope="col" { "App" } th scope="col" { "Function" } th scope="col" { "Trigger" } th scope="col" { "Status" } th scope="col" { "HTTP" } th scope="col" { "Duration" } th scope="col" .hide-narrow { "Node" } } }
            tbody { @for i in list.iter().rev() { tr data-id=(i.id) {
                td { a href=(format!("/portal/invocations/{}", path_escape(&i.id))) { (time(i.started_at_ms)) } }
                td { (i.app_name) }
                td { (i.function_name) }
                td { (i.trigger) }
                td class=(if i.status == "Succeeded" { "ok" } else { "bad" }) { (i.status) }
                td { @if i.http_status > 0 { (i.http_status) } }
                td { (duration(i.duration_us)) }
                td.hide-narrow { "node " (i.node_id) }
            } } }
        } }
    }
}

pub async fn invocations(ctx: &Ctx, filter: &InvocationFilter) -> Result<Markup, Problem> {
    let (list, error) = match ctx
        .api
        .list_invocations(tonic::Request::new(filter.request()))
        .await
    {
        Ok(r) => (r.into_inner().invocations, None),
        Err(e) => (Vec::new(), Some(Flash::Error(Problem::of_status(&e)))),
    };
    let stream = format!("/portal/invocations/stream?{}", filter.query());
    let content = html! {
        h1 { "Invocations" }
        form.row method="get" action="/portal/invocations" {
            div.field { label for="f-app" { "App" } input #f-app type="text" name="app" value=(filter.app); }
            div.field { label for="f-function" { "Function" } input #f-function type="text" name="function" value=(filter.function); }
            div.field { label for="f-status" { "Status" }
                select #f-status name="status" {
                    @for (v, t) in [("", "any"), ("succeeded", "succeeded"), ("failed", "failed or timed out"), ("timedout", "timed out")] {
                        option value=(v) selected[filter.status.eq_ignore_ascii_case(v)] { (t) }
                    }
                } }
            div { button type="submit" { "Filter" } }
        }
        p #stream-state role="status" aria-live="polite" .muted { "Newest first. The list follows new invocations across the cluster while this page is open." }
        @if error.is_none() { (invocation_table(&list, Some(&stream))) }
    };
    Ok(layout(
        Some(ctx),
        "Invocations",
        "invocations",
        error.as_ref(),
        content,
    ))
}

fn invocation_detail(i: &pb::InvocationInfo) -> Markup {
    html! {
        dl.facts {
            dt { "Invocation" } dd { a href=(format!("/portal/invocations/{}", path_escape(&i.id))) { code { (i.id) } } }
            dt { "Function" } dd { (i.app_name) " / " (i.function_name) " (" (i.trigger) ")" }
            dt { "Started" } dd { (time(i.started_at_ms)) }
            dt { "Duration" } dd { (duration(i.duration_us)) }
            dt { "Status" } dd { span class=(if i.status == "Succeeded" { "ok" } else { "bad" }) { (i.status) } @if i.http_status > 0 { " (HTTP " (i.http_status) ")" } }
            @if !i.error.is_empty() { dt { "Error" } dd.bad { (i.error) } }
            dt { "Ran on" } dd { "node " (i.node_id) ", instance " code { (i.instance_id) } }
        }
        @for (source, title) in [("handler", "Logs"), ("stdout", "stdout"), ("stderr", "stderr")] {
            @let lines: Vec<&str> = i.logs.iter().filter(|l| l.source == source).map(|l| l.text.as_str()).collect();
            h3 { (title) }
            @if lines.is_empty() { p.muted { "none" } } @else { pre.logs data-source=(source) { (lines.join("\n")) } }
        }
    }
}

pub async fn invocation(ctx: &Ctx, id: &str) -> Result<Markup, Problem> {
    let found = ctx
        .api
        .list_invocations(tonic::Request::new(pb::ListInvocationsRequest {
            invocation_id: id.to_string(),
            limit: Some(1),
            ..Default::default()
        }))
        .await?
        .into_inner()
        .invocations
        .into_iter()
        .next()
        .ok_or_else(|| {
            Problem::new(
                StatusCode::NOT_FOUND,
                format!(
                    "no invocation `{id}` on any reachable node (records are kept in memory, \
                     the newest per node)"
                ),
            )
        })?;
    Ok(layout(
        Some(ctx),
        "Invocation",
        "invocations",
        None,
        html! { h1 { "Invocation" } (invocation_detail(&found)) },
    ))
}

/// `GET /portal/invocations/stream`: server-sent events, one `invocation` event
/// per new record across the cluster (the admin API's follow), a comment every
/// 15 s to keep proxies from closing an idle stream.
///
/// A stream ends with its session: at the session's idle deadline as of its start
/// (the browser reconnects, which is a request of the signed-in page and slides
/// the session) or its 12 hours, and within 15 s of the admin token changing. At
/// most [`MAX_STREAMS`] are open on a node at once.
pub async fn invocation_stream(
    ctx: &Ctx,
    filter: &InvocationFilter,
    ends_at_ms: i64,
) -> Result<Response<Body>, Problem> {
    use tokio_stream::StreamExt;
    let Some(slot) = StreamSlot::take() else {
        return Err(Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "{MAX_STREAMS} live streams are open on this node: close a tab or try another node"
            ),
        ));
    };
    let signed_by = super::admin_token_hash(&ctx.api);
    let api = ctx.api.clone();
    let mut request = filter.request();
    request.follow = true;
    request.limit = Some(50);
    request.since_ms = Some(now_ms() - 60_000);
    let mut stream = ctx
        .api
        .stream_invocations(tonic::Request::new(request))
        .await?
        .into_inner();
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        let _slot = slot;
        let mut keepalive = tokio::time::interval(std::time::Duration::from_secs(15));
        loop {
            let chunk = tokio::select! {
                _ = tx.closed() => return,
                _ = keepalive.tick() => {
                    let same_token = super::admin_token_hash(&api) == signed_by;
                    if !same_token || now_ms() >= ends_at_ms {
                        return;
                    }
                    Bytes::from_static(b": keepalive\n\n")
                }
                item = stream.next() => match item {
                    Some(Ok(i)) => {
                        let data = serde_json::json!({
                            "id": i.id,
                            "app": i.app_name,
                            "function": i.function_name,
                            "trigger": i.trigger,
                            "status": i.status,
                            "http_status": i.http_status,
                            "duration": duration(i.duration_us),
                            "started": time(i.started_at_ms),
                            "node": i.node_id,
                        });
                        Bytes::from(format!("event: invocation\ndata: {data}\n\n"))
                    }
                    // The node is stopping (or the follow failed): the browser
                    // reconnects, to this node or another.
                    _ => return,
                },
            };
            if tx.send(chunk).await.is_err() {
                return;
            }
        }
    });
    let merged = tokio_stream::wrappers::ReceiverStream::new(rx)
        .map(|b| Ok::<_, tonic::Status>(http_body::Frame::data(b)));
    let mut r = Response::new(Body::new(http_body_util::StreamBody::new(merged)));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy() -> pb::GetClusterStatusResponse {
        pb::GetClusterStatusResponse {
            leader_id: Some(1),
            workers: vec![pb::WorkerStatus {
                node_id: 4,
                http_addr: "10.0.0.4:7071".into(),
                status: "Up".into(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn timer(next_ms: i64, problem: &str) -> pb::FunctionInfo {
        pb::FunctionInfo {
            app_name: "jobs".into(),
            name: "nightly".into(),
            timer: Some(pb::TimerStatus {
                schedule: "0 0 2 * * *".into(),
                next_ms,
                problem: problem.into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_healthy_cluster_has_no_alerts() {
        let on_time = timer(now_ms() + 60_000, "");
        assert!(alerts(&healthy(), &[on_time], None).is_empty());
    }

    #[test]
    fn every_kind_of_trouble_is_an_alert() {
        let mut s = healthy();
        s.leader_id = None;
        s.workers[0].status = "Down".into();
        s.workers[0].last_heartbeat_ms = Some(125_000);
        s.instances.push(pb::InstanceInfo {
            app_name: "web".into(),
            node_id: 4,
            state: "CrashLooping".into(),
            restarts: 7,
            last_error: "exit status 3".into(),
            ..Default::default()
        });
        s.timer_runs.push(pb::TimerRunInfo {
            app_name: "jobs".into(),
            function_name: "hourly".into(),
            attempt: 2,
            last_error: "HTTP 500".into(),
            ..Default::default()
        });
        s.checkpoint = Some(pb::CheckpointStatus {
            last_error: Some("login failed".into()),
            ..Default::default()
        });
        let late = timer(now_ms() - 5 * 60_000, "");
        let broken = pb::FunctionInfo {
            name: "broken".into(),
            ..timer(0, "%SCHEDULE% is not set")
        };
        let all = alerts(&s, &[late, broken], Some("no leader")).join("\n");
        for says in [
            "No leader",
            "this member's own view",
            "Worker 4 (10.0.0.4:7071) is down: last heartbeat 2 min ago",
            "App web is crash-looping on node 4 (restarted 7 times): exit status 3",
            "Timer jobs/nightly is late",
            "Timer jobs/broken does not run: %SCHEDULE% is not set",
            "Timer jobs/hourly failed (attempt 2): HTTP 500",
            "The last checkpoint failed: login failed",
        ] {
            assert!(all.contains(says), "missing {says:?} in:\n{all}");
        }
    }

    #[test]
    fn a_disabled_or_running_timer_is_not_late() {
        let mut disabled = timer(now_ms() - 5 * 60_000, "");
        disabled.disabled = true;
        let mut running = timer(now_ms() - 5 * 60_000, "");
        running.timer.as_mut().unwrap().running = Some(pb::TimerRunStatus::default());
        assert!(alerts(&healthy(), &[disabled, running], None).is_empty());
    }

    #[test]
    fn app_status_reads_the_placement() {
        let mut s = healthy();
        s.placements.push(pb::AppPlacement {
            app_name: "web".into(),
            desired: 2,
            nodes: vec![pb::NodeInstances {
                node_id: 4,
                instances: 2,
                ready: Some(1),
            }],
        });
        assert!(app_status(&s, "web").into_string().contains("starting 1/2"));
        s.placements[0].nodes[0].ready = Some(2);
        assert!(app_status(&s, "web").into_string().contains("serving 2/2"));
        assert!(app_status(&s, "other")
            .into_string()
            .contains("scaled to 0"));
    }
}
