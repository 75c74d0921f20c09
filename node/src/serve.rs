//! `strom serve`: a node of a cluster, configured by flags, `STROM_*` variables and an
//! optional TOML file, validated as a whole (every problem reported at once).

use std::net::SocketAddr;
use std::time::Duration;

use strom_proto::manifest::ZipLimits;

use crate::cli::ServeArgs;
use crate::client::CliError;
use strom_control_plane::checkpointer::CheckpointSettings;
use strom_control_plane::tls::NodeTls;

use crate::gateway::listener::HttpLimits;
use crate::up::{run_node, Capacity, NodeSettings, Start};

/// Seconds a node stays up, not ready, before it stops (`--shutdown-delay-secs`).
pub const DEFAULT_SHUTDOWN_DELAY_SECS: u64 = 5;

/// Fill what flags and variables left unset from the `--config` file.
pub fn merge_file(mut args: ServeArgs) -> Result<ServeArgs, String> {
    let Some(path) = args.config.clone() else {
        return Ok(args);
    };
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut table: toml::Table =
        toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut containers = toml::Table::new();
    for key in crate::cli::CONTAINER_KEYS {
        if let Some(v) = table.remove(key) {
            // Limits are checked as the app settings they default (text), so
            // `container-pids = 128` and `container-pids = "128"` mean the same.
            let v = match v {
                toml::Value::Integer(i) => toml::Value::String(i.to_string()),
                toml::Value::Float(f) => toml::Value::String(f.to_string()),
                other => other,
            };
            containers.insert(key.to_string(), v);
        }
    }
    let file: ServeArgs = table
        .try_into()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let file_containers: crate::cli::ContainerArgs = containers
        .try_into()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    args.containers = std::mem::take(&mut args.containers).or(file_containers);
    args.node_id = args.node_id.or(file.node_id);
    args.roles = args.roles.or(file.roles);
    args.data_dir = args.data_dir.or(file.data_dir);
    args.control_addr = args.control_addr.or(file.control_addr);
    args.http_addr = args.http_addr.or(file.http_addr);
    args.advertise_addr = args.advertise_addr.or(file.advertise_addr);
    args.bootstrap = args.bootstrap || file.bootstrap;
    args.join = args.join.or(file.join);
    args.join_token = args.join_token.or(file.join_token);
    args.startup_timeout_secs = args.startup_timeout_secs.or(file.startup_timeout_secs);
    args.advertise_http_addr = args.advertise_http_addr.or(file.advertise_http_addr);
    args.capacity_instances = args.capacity_instances.or(file.capacity_instances);
    args.capacity_memory_mb = args.capacity_memory_mb.or(file.capacity_memory_mb);
    args.labels = args.labels.or(file.labels);
    args.worker_lease_ms = args.worker_lease_ms.or(file.worker_lease_ms);
    args.keep_versions = args.keep_versions.or(file.keep_versions);
    args.app_domain = args.app_domain.or(file.app_domain);
    args.http_header_timeout_secs = args
        .http_header_timeout_secs
        .or(file.http_header_timeout_secs);
    args.http_body_timeout_secs = args.http_body_timeout_secs.or(file.http_body_timeout_secs);
    args.http_idle_timeout_secs = args.http_idle_timeout_secs.or(file.http_idle_timeout_secs);
    args.http_max_connections = args.http_max_connections.or(file.http_max_connections);
    args.tls_cert = args.tls_cert.or(file.tls_cert);
    args.tls_key = args.tls_key.or(file.tls_key);
    args.tls_ca = args.tls_ca.or(file.tls_ca);
    args.checkpoint_store = args.checkpoint_store.or(file.checkpoint_store);
    args.checkpoint_every_entries = args
        .checkpoint_every_entries
        .or(file.checkpoint_every_entries);
    args.checkpoint_every = args.checkpoint_every.or(file.checkpoint_every);
    args.checkpoint_keep = args.checkpoint_keep.or(file.checkpoint_keep);
    args.shutdown_delay_secs = args.shutdown_delay_secs.or(file.shutdown_delay_secs);
    args.otlp_endpoint = args.otlp_endpoint.or(file.otlp_endpoint);
    Ok(args)
}

/// Check the settings and return every problem at once.
pub fn validate(args: &ServeArgs) -> Result<NodeSettings, Vec<String>> {
    let mut problems = Vec::new();
    let node_id = match args.node_id {
        Some(0) => {
            problems.push("node-id: must be at least 1".to_string());
            0
        }
        Some(n) => n,
        None => {
            problems
                .push("node-id: required (--node-id, STROM_NODE_ID or node-id in --config)".into());
            0
        }
    };
    let roles = args
        .roles
        .clone()
        .unwrap_or_else(|| vec!["management".into(), "worker".into()]);
    let mut management = false;
    let mut worker = false;
    for r in &roles {
        match r.trim().to_ascii_lowercase().as_str() {
            "management" => management = true,
            "worker" => worker = true,
            other => problems.push(format!(
                "roles: unknown role `{other}` (management, worker)"
            )),
        }
    }
    if !management && worker && args.bootstrap {
        problems.push(
            "--bootstrap: a worker-only node cannot create a cluster; bootstrap a management node and --join it".into(),
        );
    }
    if !management && !worker {
        problems.push("roles: at least one role is needed".into());
    }
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(crate::data_dir::default_for_serve);
    let initialized =
        data_dir.join("raft").join("log.redb").is_file() || data_dir.join("worker.json").is_file();
    let start = match (&args.join, args.bootstrap) {
        (Some(_), true) => {
            problems.push("--bootstrap and --join: give one, not both".into());
            Start::Bootstrap
        }
        (Some(seeds), false) => {
            let seeds: Vec<String> = seeds
                .iter()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect();
            if seeds.is_empty() {
                problems.push("join: at least one control URL is needed".into());
            }
            let token = args.join_token.clone().unwrap_or_default();
            if token.trim().is_empty() && !initialized {
                problems.push(
                    "join-token: required to join (--join-token or STROM_JOIN_TOKEN; the first node's join.token)"
                        .into(),
                );
            }
            Start::Join {
                seeds,
                token: token.trim().to_string(),
            }
        }
        (None, true) => Start::Bootstrap,
        (None, false) if initialized && management => Start::Bootstrap,
        (None, false) if initialized => {
            problems.push(
                "join: a worker-only node needs --join with the management nodes' control URLs, also on a restart".into(),
            );
            Start::Bootstrap
        }
        (None, false) => {
            problems.push(format!(
                "{} holds no cluster yet: start the first node with --bootstrap, the others with --join URL",
                data_dir.display()
            ));
            Start::Bootstrap
        }
    };
    let control_addr = args
        .control_addr
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 7171)));
    let http_addr = args
        .http_addr
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 7071)));
    if let Some(a) = &args.advertise_addr {
        if a.parse::<SocketAddr>().is_err() && !a.contains(':') {
            problems.push(format!("advertise-addr: `{a}` is not host:port"));
        }
    }
    if let Some(a) = &args.advertise_http_addr {
        if a.parse::<SocketAddr>().is_err() && !a.contains(':') {
            problems.push(format!("advertise-http-addr: `{a}` is not host:port"));
        }
    }
    if worker && http_addr.ip().is_unspecified() && args.advertise_http_addr.is_none() {
        problems.push(format!(
            "advertise-http-addr: required when the HTTP address is {http_addr} (other gateways need a reachable address)"
        ));
    }
    let mut labels = std::collections::BTreeMap::new();
    for l in args.labels.iter().flatten() {
        let l = l.trim();
        if l.is_empty() {
            continue;
        }
        match l.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => {
                labels.insert(k.trim().to_string(), v.trim().to_string());
            }
            _ => problems.push(format!("labels: `{l}` is not key=value")),
        }
    }
    if args.capacity_instances == Some(0) {
        problems.push("capacity-instances: must be at least 1".into());
    }
    if args.worker_lease_ms.is_some_and(|ms| ms < 500) {
        problems.push("worker-lease-ms: must be at least 500".into());
    }
    let d = HttpLimits::default();
    let http = HttpLimits {
        header_read: secs(args.http_header_timeout_secs, d.header_read),
        body_read: secs(args.http_body_timeout_secs, d.body_read),
        idle: secs(args.http_idle_timeout_secs, d.idle),
        max_connections: args.http_max_connections.unwrap_or(d.max_connections),
    };
    problems.extend(http_problems(&http));
    if args.shutdown_delay_secs.is_some_and(|s| s > 300) {
        problems.push("shutdown-delay-secs: at most 300".into());
    }
    if args.keep_versions == Some(0) {
        problems.push("keep-versions: must be at least 1 (the active version)".into());
    }
    let app_domain = args
        .app_domain
        .clone()
        .unwrap_or_else(|| "localhost".into());
    if let Err(e) = strom_control_plane::management::check_app_domain(&app_domain) {
        problems.push(format!("app-domain: {e}"));
    }
    let tls = match (&args.tls_cert, &args.tls_key, &args.tls_ca) {
        (None, None, None) => None,
        (Some(cert), Some(key), Some(ca)) => match NodeTls::load(cert, key, ca) {
            Ok(t) => Some(t),
            Err(e) => {
                problems.push(e);
                None
            }
        },
        _ => {
            problems.push(
                "tls-cert, tls-key, tls-ca: give all three (this node's certificate and key, and the cluster CA) or none".into(),
            );
            None
        }
    };
    if management && control_addr.ip().is_unspecified() && args.advertise_addr.is_none() {
        problems.push(format!(
            "advertise-addr: required when the control address is {control_addr} (peers need a reachable address)"
        ));
    }
    let checkpoints = checkpoint_settings(args, management).unwrap_or_else(|p| {
        problems.extend(p);
        None
    });
    let containers = crate::worker::Containers::from_args(&args.containers).unwrap_or_else(|p| {
        problems.extend(p);
        Default::default()
    });
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(NodeSettings {
        containers,
        node_id,
        data_dir,
        control_addr,
        http_addr,
        advertise_addr: args.advertise_addr.clone(),
        advertise_http_addr: args.advertise_http_addr.clone(),
        start,
        management,
        worker,
        capacity: Capacity {
            instances: args.capacity_instances.unwrap_or(64),
            memory_mb: args.capacity_memory_mb.unwrap_or(0),
            labels,
        },
        worker_lease: Duration::from_millis(args.worker_lease_ms.unwrap_or(5000)),
        keep_versions: args
            .keep_versions
            .unwrap_or(strom_control_plane::retention::DEFAULT_KEEP),
        app_domain,
        wide: false,
        tls,
        startup_timeout: Duration::from_secs(args.startup_timeout_secs.unwrap_or(60)),
        shutdown_delay: Duration::from_secs(
            args.shutdown_delay_secs
                .unwrap_or(DEFAULT_SHUTDOWN_DELAY_SECS),
        ),
        max_request_body_bytes: 100 * 1024 * 1024,
        limits: ZipLimits::default(),
        http,
        checkpoints,
        otlp_endpoint: args.otlp_endpoint.clone().filter(|e| !e.trim().is_empty()),
    })
}

/// The checkpoint flags: the store opened (not connected), the cadence checked.
fn checkpoint_settings(
    args: &ServeArgs,
    management: bool,
) -> Result<Option<CheckpointSettings>, Vec<String>> {
    use strom_control_plane::checkpointer as cp;
    let mut problems = Vec::new();
    let Some(spec) = &args.checkpoint_store else {
        for (given, flag) in [
            (
                args.checkpoint_every_entries.is_some(),
                "checkpoint-every-entries",
            ),
            (args.checkpoint_every.is_some(), "checkpoint-every"),
            (args.checkpoint_keep.is_some(), "checkpoint-keep"),
        ] {
            if given {
                problems.push(format!("{flag}: needs --checkpoint-store"));
            }
        }
        return if problems.is_empty() {
            Ok(None)
        } else {
            Err(problems)
        };
    };
    if !management {
        problems.push("checkpoint-store: only a management node writes checkpoints".into());
    }
    let every_entries = args
        .checkpoint_every_entries
        .unwrap_or(cp::DEFAULT_EVERY_ENTRIES);
    if every_entries == 0 {
        problems.push("checkpoint-every-entries: must be at least 1".into());
    }
    let every = match &args.checkpoint_every {
        None => cp::DEFAULT_EVERY,
        Some(text) => match humantime::parse_duration(text) {
            Ok(d) if d >= Duration::from_secs(1) => d,
            Ok(_) => {
                problems.push(format!("checkpoint-every: `{text}` is under a second"));
                cp::DEFAULT_EVERY
            }
            Err(e) => {
                problems.push(format!(
                    "checkpoint-every: `{text}` is not a duration ({e}; e.g. 15m, 1h)"
                ));
                cp::DEFAULT_EVERY
            }
        },
    };
    let keep = args.checkpoint_keep.unwrap_or(cp::DEFAULT_KEEP);
    if keep == 0 {
        problems.push("checkpoint-keep: must be at least 1".into());
    }
    let store = match strom_control_plane::checkpoint::open_store(spec) {
        Ok(s) => Some(s),
        Err(e) => {
            problems.push(format!("checkpoint-store: {e}"));
            None
        }
    };
    match store {
        Some(store) if problems.is_empty() => Ok(Some(CheckpointSettings {
            store,
            every_entries,
            every,
            keep,
        })),
        _ => Err(problems),
    }
}

fn secs(value: Option<u64>, default: Duration) -> Duration {
    value.map(Duration::from_secs).unwrap_or(default)
}

/// What is wrong with the function port's limits (each names its flag).
pub fn http_problems(http: &HttpLimits) -> Vec<String> {
    let mut problems = Vec::new();
    for (flag, value) in [
        ("http-header-timeout-secs", http.header_read),
        ("http-body-timeout-secs", http.body_read),
        ("http-idle-timeout-secs", http.idle),
    ] {
        if value.is_zero() {
            problems.push(format!("{flag}: must be at least 1"));
        }
    }
    if http.max_connections == 0 {
        problems.push("http-max-connections: must be at least 1".to_string());
    }
    problems
}

pub async fn run(args: ServeArgs) -> Result<(), CliError> {
    #[cfg(not(windows))]
    if args.windows_service.is_some() {
        return Err(CliError::new(
            2,
            "--windows-service: only on Windows, where `strom service install` sets it",
        ));
    }
    let args = merge_file(args).map_err(|e| CliError::new(2, e))?;
    let settings = validate(&args).map_err(|problems| {
        CliError::new(
            2,
            format!("invalid node configuration:\n  {}", problems.join("\n  ")),
        )
    })?;
    let title = match (settings.management, settings.worker) {
        (true, true) => "cluster node (management, worker)",
        (true, false) => "cluster node (management)",
        _ => "cluster node (worker)",
    };
    run_node(settings, Vec::new(), title).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn every_problem_is_reported_at_once() {
        let args = ServeArgs {
            node_id: Some(0),
            roles: Some(vec!["worker".into(), "gpu".into()]),
            bootstrap: true,
            join: Some(vec!["127.0.0.1:1".into()]),
            data_dir: Some(PathBuf::from("/nonexistent/strom-test")),
            ..ServeArgs::default()
        };
        let mut args = args;
        args.containers = crate::cli::ContainerArgs {
            default_runtime: Some("podman".into()),
            container_cpus: Some("lots".into()),
            container_memory_mb: Some("2".into()),
            container_isolation: Some("hyperv".into()),
            ..Default::default()
        };
        let problems = validate(&args).unwrap_err();
        let text = problems.join("\n");
        for expected in [
            "node-id",
            "unknown role `gpu`",
            "worker-only",
            "not both",
            "default-runtime: `podman` is not a runtime",
            "container-cpus: `lots`",
            "container-memory-mb: `2`",
            if cfg!(windows) {
                ""
            } else {
                "container-isolation: only Windows containers"
            },
        ] {
            // worker-only: it cannot bootstrap.
            assert!(text.contains(expected), "missing {expected} in:\n{text}");
        }
        let args = ServeArgs {
            node_id: Some(2),
            join: Some(vec!["127.0.0.1:1".into()]),
            data_dir: Some(PathBuf::from("/nonexistent/strom-test")),
            ..ServeArgs::default()
        };
        let text = validate(&args).unwrap_err().join("\n");
        assert!(text.contains("join-token: required"), "{text}");
        let args = ServeArgs {
            node_id: Some(2),
            data_dir: Some(PathBuf::from("/nonexistent/strom-test")),
            ..ServeArgs::default()
        };
        let text = validate(&args).unwrap_err().join("\n");
        assert!(text.contains("--bootstrap"), "{text}");
    }

    #[test]
    fn the_file_fills_what_flags_leave_unset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(
            &path,
            "node-id = 3\nroles = [\"management\"]\njoin = [\"http://10.0.0.1:7171\"]\njoin-token = \"t\"\ncontrol-addr = \"127.0.0.1:7300\"\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(path.clone()),
            node_id: Some(5),
            ..ServeArgs::default()
        };
        let merged = merge_file(args).unwrap();
        assert_eq!(merged.node_id, Some(5), "the flag wins");
        assert_eq!(merged.join_token.as_deref(), Some("t"));
        let settings = validate(&merged).unwrap();
        assert!(!settings.worker);
        assert_eq!(settings.control_addr.port(), 7300);
        assert!(
            matches!(settings.start, Start::Join { ref seeds, .. } if seeds == &["http://10.0.0.1:7171"])
        );

        // Container defaults sit beside the other keys; bad ones are named.
        std::fs::write(
            &path,
            "node-id = 4\nbootstrap = true\ndefault-runtime = \"docker\"\ncontainer-image = \"base:1\"\ncontainer-allow-pull = true\ncontainer-pids = 128\ncontainer-cpus = 0.5\n",
        )
        .unwrap();
        let merged = merge_file(ServeArgs {
            config: Some(path.clone()),
            containers: crate::cli::ContainerArgs {
                container_image: Some("flag:2".into()),
                ..Default::default()
            },
            ..ServeArgs::default()
        })
        .unwrap();
        let settings = validate(&merged).unwrap();
        let c = &settings.containers;
        assert_eq!(
            c.default_runtime,
            strom_proto::runtime_settings::RuntimeKind::Docker
        );
        assert_eq!(c.defaults.image.as_deref(), Some("flag:2"), "the flag wins");
        assert_eq!(c.defaults.pids, Some(128), "numbers need no quotes");
        assert_eq!(c.defaults.nano_cpus, Some(500_000_000));
        assert!(c.allow_pull);
        std::fs::write(&path, "node-id = 1\ncontainer-cpus = \"x\"\n").unwrap();
        let merged = merge_file(ServeArgs {
            config: Some(path.clone()),
            ..ServeArgs::default()
        })
        .unwrap();
        let text = validate(&merged).unwrap_err().join("\n");
        assert!(text.contains("container-cpus: `x`"), "{text}");

        std::fs::write(&path, "node-id = 1\nnodeid = 2\n").unwrap();
        let err = merge_file(ServeArgs {
            config: Some(path),
            ..ServeArgs::default()
        })
        .unwrap_err();
        assert!(err.contains("nodeid"), "{err}");
    }
}
