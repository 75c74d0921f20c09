//! What client commands print: tables for people, JSON for scripts.
//!
//! Everything goes through [`say!`]: a reader that went away (`strom … | head`)
//! ends the command quietly instead of a "Broken pipe" panic (Rust ignores SIGPIPE,
//! and restoring it needs `unsafe`, which this workspace forbids).

/// `println!` that ends the process quietly (exit 0) when stdout's reader is gone.
macro_rules! say {
    () => {
        $crate::output::write_line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::output::write_line(format_args!($($arg)*))
    };
}
pub(crate) use say;

/// One line to stdout; a closed pipe ends the process (the reader wanted no more).
pub fn write_line(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let written = out.write_fmt(args).and_then(|()| out.write_all(b"\n"));
    if let Err(e) = written.and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: writing to stdout: {e}");
        std::process::exit(1);
    }
}

use std::collections::HashMap;
use std::io::IsTerminal;

use comfy_table::{presets::UTF8_BORDERS_ONLY, Table};
use serde::Serialize;
use strom_proto::admin_v1 as pb;

use crate::cli::Output;

pub struct Printer {
    output: Output,
    wide: bool,
}

/// Unix milliseconds as RFC 3339 (UTC, seconds).
pub fn format_time(ms: i64) -> String {
    if ms <= 0 {
        return "-".into();
    }
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY);
    t.set_header(header.iter().copied());
    t
}

/// A time `ms` milliseconds ago, as people read it (`4 minutes`).
pub fn age(ms: i64) -> indicatif::HumanDuration {
    indicatif::HumanDuration(std::time::Duration::from_millis(ms.max(0) as u64))
}

/// A size as people read it (`38.20 KiB`).
pub fn bytes(n: u64) -> indicatif::HumanBytes {
    indicatif::HumanBytes(n)
}

fn short(version: &str) -> &str {
    &version[..version.len().min(12)]
}

impl Printer {
    pub fn new(output: Output) -> Self {
        Printer {
            output,
            wide: false,
        }
    }

    /// As the client flags ask (`--output`, `--wide`).
    pub fn of(client: &crate::cli::ClientArgs) -> Self {
        Printer {
            output: client.output,
            wide: client.wide,
        }
    }

    /// Warnings a write answered with, one per line on stderr (tables only).
    pub fn warnings(&self, warnings: &[String]) {
        if self.output == Output::Table {
            for w in warnings {
                eprintln!("warning: {w}");
            }
        }
    }

    /// Progress bars only for people at a terminal.
    pub fn interactive(&self) -> bool {
        self.output == Output::Table && std::io::stderr().is_terminal()
    }

    fn json<T: Serialize>(&self, value: &T) -> bool {
        if self.output == Output::Json {
            say!(
                "{}",
                serde_json::to_string_pretty(value).expect("serializable")
            );
            true
        } else {
            false
        }
    }

    pub fn message<T: Serialize>(&self, text: &str, value: &T) {
        if !self.json(value) {
            say!("{text}");
        }
    }

    pub fn deployed(&self, r: &pb::DeployAppResponse) {
        if self.json(r) {
            return;
        }
        if r.changed {
            say!(
                "deployed app `{}` version {}",
                r.app_name,
                short(&r.version_id)
            );
        } else {
            say!(
                "app `{}` already runs version {} (nothing changed)",
                r.app_name,
                short(&r.version_id)
            );
        }
        print_functions(&r.functions, self.wide);
        self.warnings(&r.warnings);
    }

    pub fn apps(&self, r: &pb::ListAppsResponse) {
        if self.json(r) {
            return;
        }
        if r.apps.is_empty() {
            say!("no apps");
            return;
        }
        let mut t = table(&["APP", "ACTIVE VERSION", "VERSIONS", "FUNCTIONS", "UPDATED"]);
        for a in &r.apps {
            t.add_row(vec![
                a.name.clone(),
                short(&a.active_version).to_string(),
                a.version_count.to_string(),
                a.function_count.to_string(),
                format_time(a.updated_at_ms),
            ]);
        }
        say!("{t}");
    }

    pub fn app(&self, r: &pb::GetAppResponse) {
        if self.json(r) {
            return;
        }
        let Some(a) = &r.app else { return };
        say!("app:            {}", a.name);
        say!("active version: {}", a.active_version);
        say!("created:        {}", format_time(a.created_at_ms));
        say!("updated:        {}", format_time(a.updated_at_ms));
        say!("route prefix:   /{}", r.route_prefix);
        if !a.url.is_empty() {
            say!("own address:    {}", a.url);
        }
        say!();
        let mut t = table(&["VERSION", "DEPLOYED", "SIZE", "FUNCTIONS", "ACTIVE"]);
        for v in &r.versions {
            t.add_row(vec![
                short(&v.version_id).to_string(),
                format_time(v.deployed_at_ms),
                format!("{} B", v.size_bytes),
                v.function_count.to_string(),
                if v.active { "*".into() } else { String::new() },
            ]);
        }
        say!("{t}");
        say!();
        print_functions(&r.functions, self.wide);
        if !r.instances.is_empty() {
            say!();
            print_instances(&r.instances);
        }
    }

    pub fn members(&self, r: &pb::GetClusterStatusResponse) {
        // An object, like every other command's JSON (room for more fields).
        let object = serde_json::json!({"leader_id": r.leader_id, "members": r.members});
        if self.json(&object) {
            return;
        }
        let mut t = table(&["MEMBER", "ADDRESS", "ROLE", "LEADER"]);
        for m in &r.members {
            t.add_row(vec![
                m.node_id.to_string(),
                m.address.clone(),
                if m.voter { "voter" } else { "learner" }.to_string(),
                if Some(m.node_id) == r.leader_id {
                    "*".into()
                } else {
                    String::new()
                },
            ]);
        }
        say!("{t}");
    }

    pub fn keys(&self, r: &pb::ListFunctionKeysResponse) {
        if self.json(r) {
            return;
        }
        if !r.auth_level.is_empty() {
            say!("auth level: {}", r.auth_level);
        }
        let mut t = table(&["SCOPE", "NAME", "VALUE"]);
        for k in &r.keys {
            t.add_row(vec![k.scope.clone(), k.name.clone(), k.value.clone()]);
        }
        say!("{t}");
    }

    pub fn deployments(&self, r: &pb::ListDeploymentsResponse) {
        if self.json(r) {
            return;
        }
        if r.deployments.is_empty() {
            say!("no deployments yet");
            return;
        }
        let mut t = table(&[
            "ID", "STATUS", "RECEIVED", "DEPLOYER", "AUTHOR", "VERSION", "DETAILS",
        ]);
        for d in &r.deployments {
            let status =
                strom_proto::command::DeployStatus::from_code(d.status).map_or("?", |s| s.as_str());
            let mut details = d.status_text.clone();
            for e in &d.errors {
                details.push_str("\n  ");
                details.push_str(e);
            }
            if !d.message.is_empty() {
                details = format!("\"{}\" — {details}", d.message);
            }
            t.add_row(vec![
                d.id.chars().take(12).collect::<String>(),
                format!("{status}{}", if d.active { " (active)" } else { "" }),
                d.received_time.clone(),
                d.deployer.clone(),
                d.author.clone(),
                d.version_id.chars().take(12).collect::<String>(),
                details,
            ]);
        }
        say!("{t}");
    }

    pub fn key_set(&self, r: &pb::SetFunctionKeyResponse) {
        if self.json(r) {
            return;
        }
        if let Some(k) = &r.key {
            say!("{} key `{}`: {}", k.scope, k.name, k.value);
        }
    }

    /// One invocation: a JSON line, or a header line and its logs.
    pub fn invocation(&self, i: &pb::InvocationInfo) {
        if self.output == Output::Json {
            say!("{}", serde_json::to_string(i).expect("serializable"));
            return;
        }
        say!(
            "{} node {} {}/{} {} {} {} {:.1} ms id={}{}",
            format_time_ms(i.started_at_ms),
            i.node_id,
            i.app_name,
            i.function_name,
            if i.trigger.is_empty() {
                "http"
            } else {
                &i.trigger
            },
            i.status,
            i.http_status,
            i.duration_us as f64 / 1000.0,
            i.id,
            if i.error.is_empty() {
                String::new()
            } else {
                format!(" error: {}", i.error)
            }
        );
        for l in &i.logs {
            say!("    [{}] {}", l.source, l.text);
        }
    }

    pub fn functions<T: Serialize>(&self, functions: &[pb::FunctionInfo], whole: &T) {
        if self.json(whole) {
            return;
        }
        if functions.is_empty() {
            say!("no functions");
            return;
        }
        print_functions(functions, self.wide);
    }

    pub fn settings<T: Serialize>(&self, settings: &HashMap<String, String>, whole: &T) {
        if self.json(whole) {
            return;
        }
        let mut keys: Vec<_> = settings.keys().collect();
        keys.sort();
        if keys.is_empty() {
            say!("no settings");
        }
        for k in keys {
            say!("{k}={}", settings[k]);
        }
    }

    /// `strom cluster checkpoints`: one row per checkpoint (and, verified, whether
    /// it reads back whole).
    pub fn checkpoints(
        &self,
        store: &str,
        rows: &[(
            strom_control_plane::checkpoint::CheckpointMeta,
            Option<Result<(), String>>,
        )],
    ) {
        #[derive(Serialize)]
        struct Row<'a> {
            id: &'a str,
            cluster_id: &'a str,
            term: u64,
            index: u64,
            created_ms: i64,
            state_size: u64,
            packages: usize,
            packages_size: u64,
            verified: Option<bool>,
            error: Option<&'a str>,
        }
        let json: Vec<Row> = rows
            .iter()
            .map(|(m, v)| Row {
                id: &m.id,
                cluster_id: &m.cluster_id,
                term: m.term,
                index: m.index,
                created_ms: m.created_ms,
                state_size: m.state_size,
                packages: m.packages.len(),
                packages_size: m.packages.iter().map(|p| p.size).sum(),
                verified: v.as_ref().map(|r| r.is_ok()),
                error: v
                    .as_ref()
                    .and_then(|r| r.as_ref().err().map(String::as_str)),
            })
            .collect();
        if self.json(&json) {
            return;
        }
        if rows.is_empty() {
            say!("no checkpoints in {store}");
            return;
        }
        let now = strom_control_plane::management::now_ms();
        let mut t = table(&[
            "CHECKPOINT",
            "CLUSTER",
            "TERM",
            "INDEX",
            "TAKEN",
            "SIZE",
            "PACKAGES",
            "VERIFIED",
        ]);
        for r in &json {
            t.add_row(vec![
                r.id.to_string(),
                r.cluster_id.to_string(),
                r.term.to_string(),
                r.index.to_string(),
                format!("{} ago", age(now - r.created_ms)),
                bytes(r.state_size).to_string(),
                format!("{} ({})", r.packages, bytes(r.packages_size)),
                match (r.verified, r.error) {
                    (None, _) => "-".into(),
                    (Some(true), _) => "yes".into(),
                    (Some(false), e) => format!("NO: {}", e.unwrap_or_default()),
                },
            ]);
        }
        say!("{t}");
    }

    /// What `strom cluster restore` did, and what to do next.
    pub fn restored(
        &self,
        restored: &strom_control_plane::restore::Restored,
        data_dir: &std::path::Path,
        node_id: u64,
        advertise_addr: &str,
    ) {
        for (id, why) in &restored.skipped {
            eprintln!("warning: skipped checkpoint {id}: {why}");
        }
        say!(
            "restored checkpoint {} (term {}, index {}) of cluster {} into {}: {} apps, {} packages",
            restored.checkpoint.id,
            restored.checkpoint.term,
            restored.checkpoint.index,
            restored.cluster_id,
            data_dir.display(),
            restored.apps,
            restored.packages
        );
        say!(
            "join token: {} ({})",
            restored.join_token_path.display(),
            if restored.new_join_token {
                "new: other nodes join with it"
            } else {
                "the cluster's own"
            }
        );
        say!("admin token: the cluster's own, unchanged");
        say!(
            "start it with: strom serve --data-dir {} --node-id {node_id} --advertise-addr {advertise_addr}",
            data_dir.display()
        );
    }

    pub fn status(&self, r: &pb::GetClusterStatusResponse) {
        if self.json(r) {
            return;
        }
        say!("cluster:      {}", r.cluster_id);
        say!("node:         {} ({})", r.node_id, r.state);
        say!(
            "leader:       {}",
            r.leader_id
                .map(|l| l.to_string())
                .unwrap_or_else(|| "none".into())
        );
        say!("term:         {}", r.term);
        say!(
            "applied:      {} (last log {})",
            r.last_applied_index,
            r.last_log_index
        );
        say!("apps:         {}", r.app_count);
        say!(
            "build:        {} (cluster protocol {})",
            r.build_version,
            r.protocol
        );
        match &r.checkpoint {
            None => say!("checkpoints:  not configured (--checkpoint-store)"),
            Some(c) => {
                let now = strom_control_plane::management::now_ms();
                match &c.last {
                    Some(l) => say!(
                        "checkpoint:   {} (term {}, index {}; {} ago; {} state + {} in {} packages) in {}",
                        l.id,
                        l.term,
                        l.index,
                        age(now - l.created_ms),
                        bytes(l.state_size),
                        bytes(l.packages_size),
                        l.packages,
                        c.store
                    ),
                    None => say!("checkpoint:   none yet in {}", c.store),
                }
                if let (Some(e), Some(at)) = (&c.last_error, c.last_error_ms) {
                    say!("  last error ({} ago): {e}", age(now - at));
                }
            }
        }
        if !r.live {
            say!(
                "(no leader answered: worker heartbeats and instances of other nodes are unknown)"
            );
        }
        say!();
        let mut t = table(&[
            "MEMBER", "ADDRESS", "ROLE", "LEADER", "BUILD", "PROTOCOL", "MATCHED", "LAG",
        ]);
        for m in &r.members {
            t.add_row(vec![
                m.node_id.to_string(),
                m.address.clone(),
                if m.voter { "voter" } else { "learner" }.to_string(),
                if m.leader { "*".into() } else { String::new() },
                or_dash(m.build.as_deref().unwrap_or("")),
                known(m.protocol),
                known(m.matched_index),
                known(m.lag),
            ]);
        }
        say!("{t}");
        if !r.workers.is_empty() {
            let mut t = table(&[
                "WORKER",
                "ADDRESS",
                "STATUS",
                "PLACED",
                "READY",
                "CAPACITY",
                "LABELS",
                "LAST HEARTBEAT",
                "BUILD",
            ]);
            for w in &r.workers {
                let mut labels: Vec<String> =
                    w.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                labels.sort();
                t.add_row(vec![
                    w.node_id.to_string(),
                    w.http_addr.clone(),
                    w.status.clone(),
                    w.placed.to_string(),
                    known(w.ready),
                    if w.capacity_memory_mb == 0 {
                        format!("{} inst", w.capacity_instances)
                    } else {
                        format!(
                            "{} inst, {} MiB",
                            w.capacity_instances, w.capacity_memory_mb
                        )
                    },
                    or_dash(&labels.join(",")),
                    match w.last_heartbeat_ms {
                        Some(ms) => format!("{:.1} s ago", ms as f64 / 1000.0),
                        None => "-".into(),
                    },
                    or_dash(&w.build),
                ]);
            }
            say!("{t}");
        }
        if !r.placements.is_empty() {
            let mut t = table(&["APP", "DESIRED", "PLACEMENT (node: instances/ready)"]);
            for p in &r.placements {
                let nodes: Vec<String> = p
                    .nodes
                    .iter()
                    .map(|n| format!("{}: {}/{}", n.node_id, n.instances, known(n.ready)))
                    .collect();
                t.add_row(vec![
                    p.app_name.clone(),
                    p.desired.to_string(),
                    if nodes.is_empty() {
                        "not placed".into()
                    } else {
                        nodes.join(", ")
                    },
                ]);
            }
            say!("{t}");
        }
        if !r.timer_runs.is_empty() {
            let mut t = table(&["TIMER", "TICK (UTC)", "ATTEMPT", "STATE", "INVOCATION"]);
            for run in &r.timer_runs {
                let tick = run.run.as_ref().map_or(0, |r| r.tick_ms);
                let now_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as i64);
                let state = if run.retry_at_ms > now_ms {
                    format!(
                        "retry at {} after: {}",
                        timer_time(run.retry_at_ms, "UTC"),
                        run.last_error
                    )
                } else if run.attempt > 0 {
                    format!("running (retry after: {})", run.last_error)
                } else {
                    "running".into()
                };
                t.add_row(vec![
                    format!("{}/{}", run.app_name, run.function_name),
                    timer_time(tick, "UTC"),
                    run.attempt.to_string(),
                    state,
                    run.run
                        .as_ref()
                        .map(|r| r.invocation_id.clone())
                        .unwrap_or_default(),
                ]);
            }
            say!("{t}");
        }
        if !r.instances.is_empty() {
            print_instances(&r.instances);
        }
    }
}

/// A value the server may not know: `-` when absent.
fn known<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_string()
    }
}

/// Unix milliseconds as RFC 3339 with milliseconds.
pub fn format_time_ms(ms: i64) -> String {
    if ms <= 0 {
        return "-".into();
    }
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

pub fn print_instances(instances: &[pb::InstanceInfo]) {
    let mut t = table(&[
        "APP",
        "VERSION",
        "SLOT",
        "NODE",
        "STATE",
        "RESTARTS",
        "PID",
        "SERVING",
        "LAST ERROR",
    ]);
    for i in instances {
        t.add_row(vec![
            i.app_name.clone(),
            short(&i.version_id).to_string(),
            i.slot.to_string(),
            i.node_id.to_string(),
            i.state.clone(),
            i.restarts.to_string(),
            if i.pid == 0 {
                "-".into()
            } else {
                i.pid.to_string()
            },
            if i.serving {
                "yes".into()
            } else {
                String::new()
            },
            i.last_error.clone(),
        ]);
    }
    say!("{t}");
}

/// The width function listings fit without `--wide`.
pub const NARROW_COLUMNS: u16 = 100;

/// Functions grouped by app: a line naming the app and its own address, then its
/// functions. Unless `wide`, the table fits [`NARROW_COLUMNS`] columns: the trigger
/// and its methods share a column, keys are shortened (`strom fn keys` shows them
/// whole), URLs never wrap, and routes another app shares are noted below.
pub fn print_functions(functions: &[pb::FunctionInfo], wide: bool) {
    let mut apps: Vec<&str> = Vec::new();
    for f in functions {
        if !apps.contains(&f.app_name.as_str()) {
            apps.push(&f.app_name);
        }
    }
    let mut shortened = false;
    for (i, app) in apps.iter().enumerate() {
        if i > 0 {
            say!();
        }
        let mine: Vec<&pb::FunctionInfo> =
            functions.iter().filter(|f| f.app_name == *app).collect();
        match mine.iter().find_map(|f| own_address(&f.app_url)) {
            Some(own) => say!("app `{app}` (own address {own}):"),
            None => say!("app `{app}`:"),
        }
        let t = if wide {
            wide_function_table(&mine)
        } else {
            let (t, short) = narrow_function_table(&mine);
            shortened |= short;
            t
        };
        say!("{t}");
        if !wide {
            for f in mine.iter().filter(|f| !f.shared_with.is_empty()) {
                say!(
                    "  `{}` is not on the shared address: {} has the same route",
                    f.name,
                    f.shared_with.join(", ")
                );
            }
        }
    }
    if shortened {
        say!("(keys shortened: `strom fn keys APP FUNCTION` or --wide shows them)");
    }
}

fn url_or_schedule(f: &pb::FunctionInfo) -> String {
    if !f.queue_name.is_empty() {
        return format!("queue {}", f.queue_name);
    }
    match &f.timer {
        _ if !f.url.is_empty() => f.url.clone(),
        // As the cluster runs it: `%Setting%` resolved, with its zone.
        Some(t) if t.problem.is_empty() => t.schedule.clone(),
        _ => f.schedule.clone(),
    }
}

/// A time of a timer, in its zone (`2026-12-06 02:30:00`).
fn timer_time(ms: i64, zone: &str) -> String {
    let zone: chrono_tz::Tz = zone.parse().unwrap_or(chrono_tz::Tz::UTC);
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| {
            t.with_timezone(&zone)
                .format("%Y-%m-%d %H:%M:%S")
                .to_string()
        })
        .unwrap_or_default()
}

/// A RabbitMQ trigger's state, for the status column: its consumers, the
/// messages they hold, the queue's depth, the app's scale on it, and why any
/// consumer does not consume.
pub fn queue_notes(q: &pb::QueueTriggerStatus) -> Vec<String> {
    let mut notes = Vec::new();
    let plural = |n: u32| if n == 1 { "" } else { "s" };
    notes.push(match (q.consumers, q.consuming) {
        (0, _) if q.scale == Some(0) => "no instance (scaled to zero)".to_string(),
        (0, _) => "no consumer (no Ready instance)".to_string(),
        (n, c) if n == c => format!("consuming on {n} instance{}", plural(n)),
        (n, 0) => format!("{n} consumer{} not connected", plural(n)),
        (n, c) => format!("consuming on {c} of {n} instances"),
    });
    if q.in_flight > 0 {
        notes.push(format!("{} in flight", q.in_flight));
    }
    match q.ready {
        Some(n) => notes.push(format!("{n} waiting")),
        None if !q.depth_error.is_empty() => {
            notes.push(format!("queue depth unknown: {}", q.depth_error))
        }
        None => {}
    }
    if let Some(n) = q.scale {
        notes.push(format!("scale {n} on queue depth"));
    }
    notes.extend(q.errors.iter().cloned());
    notes
}

/// A timer's runs, for the status column: not scheduled (why), running, next,
/// last (its times in the timer's zone).
pub fn timer_notes(t: &pb::TimerStatus) -> Vec<String> {
    let mut notes = Vec::new();
    if !t.problem.is_empty() {
        notes.push(format!("not scheduled: {}", t.problem));
        return notes;
    }
    let at = |ms| timer_time(ms, &t.time_zone);
    if let Some(r) = &t.running {
        notes.push(format!(
            "running the {} tick{} (id {})",
            at(r.tick_ms),
            if r.past_due { ", past due" } else { "" },
            r.invocation_id
        ));
    }
    if t.next_ms > 0 {
        notes.push(format!("next {}", at(t.next_ms)));
    }
    if let Some(r) = &t.last_run {
        if r.succeeded {
            notes.push(format!(
                "last {} succeeded ({} ms)",
                at(r.tick_ms),
                r.duration_ms
            ));
        } else {
            notes.push(format!("last {} failed: {}", at(r.tick_ms), r.error));
        }
    }
    notes
}

fn methods(f: &pb::FunctionInfo) -> String {
    if f.methods.is_empty() && f.trigger_type == "httpTrigger" {
        "*".into()
    } else {
        f.methods.join(",")
    }
}

fn narrow_function_table(functions: &[&pb::FunctionInfo]) -> (Table, bool) {
    use comfy_table::{ColumnConstraint, ContentArrangement};
    let mut shortened = false;
    let mut t = table(&["FUNCTION", "TRIGGER", "URL / SCHEDULE", "KEY", "STATUS"]);
    t.set_content_arrangement(ContentArrangement::Dynamic);
    t.set_width(NARROW_COLUMNS);
    for f in functions {
        let key = match f.key.char_indices().nth(8) {
            Some((cut, _)) => {
                shortened = true;
                format!("{}…", &f.key[..cut])
            }
            None => f.key.clone(),
        };
        t.add_row(vec![
            f.name.clone(),
            match f.trigger_type.as_str() {
                "httpTrigger" => format!("http {}", methods(f)),
                "timerTrigger" => "timer".into(),
                other => other.to_string(),
            },
            url_or_schedule(f),
            match f.auth_level.as_str() {
                "admin" => format!("master {key}"),
                _ => key,
            },
            function_status(f, false),
        ]);
    }
    // A URL or key that wraps cannot be copied: only the status wraps.
    for i in 0..4 {
        if let Some(c) = t.column_mut(i) {
            c.set_constraint(ColumnConstraint::ContentWidth);
        }
    }
    (t, shortened)
}

fn wide_function_table(functions: &[&pb::FunctionInfo]) -> Table {
    let mut t = table(&[
        "FUNCTION",
        "TRIGGER",
        "AUTH",
        "METHODS",
        "URL / SCHEDULE",
        "KEY",
        "STATUS",
    ]);
    for f in functions {
        t.add_row(vec![
            f.name.clone(),
            f.trigger_type.clone(),
            f.auth_level.clone(),
            methods(f),
            url_or_schedule(f),
            f.key.clone(),
            function_status(f, true),
        ]);
    }
    t
}

/// `scheme://authority` of a function's URL at its app's own address.
fn own_address(app_url: &str) -> Option<String> {
    let (scheme, rest) = app_url.split_once("://")?;
    let authority = rest.split('/').next()?;
    Some(format!("{scheme}://{authority}"))
}

fn function_status(f: &pb::FunctionInfo, with_shared: bool) -> String {
    let mut notes: Vec<String> = Vec::new();
    if with_shared && !f.shared_with.is_empty() {
        notes.push(format!(
            "not on the shared address: {} has the route too",
            f.shared_with.join(", ")
        ));
    }
    notes.extend(f.unsupported_reasons.iter().cloned());
    if let Some(t) = &f.timer {
        if !f.disabled {
            notes.extend(timer_notes(t));
        }
    }
    let mut failing = false;
    if let Some(q) = &f.queue {
        if f.supported && !f.disabled {
            notes.extend(queue_notes(q));
            failing = q.consumers > 0 && q.consuming == 0 && !q.errors.is_empty();
        }
    }
    let state = if !f.supported {
        "not supported"
    } else if f.disabled {
        "disabled"
    } else if failing {
        "not consuming"
    } else {
        "ok"
    };
    if notes.is_empty() {
        state.into()
    } else if f.supported && !f.disabled && !failing {
        format!("ok; {}", notes.join("; "))
    } else {
        format!("{state}: {}", notes.join("; "))
    }
}
