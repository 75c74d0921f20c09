//! `strom-node`: the `strom` binary's library: CLI, client commands, and the wiring
//! of the roles into one process (`strom up`).

pub mod agent;
pub mod cli;
pub mod client;
pub mod cluster_view;
pub mod data_dir;
pub mod endpoints;
pub mod gateway;
pub mod key_admin;
pub mod lifecycle;
pub mod local_settings;
pub mod logging;
pub mod output;
pub mod publish_profile;
pub mod serve;
pub mod service;
pub mod traces;
pub mod unpacked;
pub mod up;
#[cfg(windows)]
pub mod windows_acl;
pub mod worker;

use clap::Parser;

/// What the node logs without `STROM_LOG`: warnings, the node's own info lines,
/// and its handlers' output (`strom_handler`: start-up lines such as "Listening
/// on …", stdout at info, stderr at warn). openraft's replication warns on every
/// failed heartbeat to an unreachable member (several lines a second): off, as
/// Strom logs a member's reachability once per change (`impl_raft_network`).
/// lapin (RabbitMQ) logs every closed channel at error level — a missing queue
/// once per depth read: off, as Strom logs each broker failure itself with the
/// app and queue it concerns (once per new error, and consumers per retry).
pub const DEFAULT_LOG_FILTER: &str = "warn,openraft::replication=off,openraft::engine::handler::replication_handler=off,strom_control_plane=info,strom_node=info,strom_handler=info,lapin=off";

/// Whether log lines carry ANSI colours: only on a terminal, and never with
/// `NO_COLOR` set (<https://no-color.org>).
pub fn log_colours(stderr_is_terminal: bool, no_color: bool) -> bool {
    stderr_is_terminal && !no_color
}

/// What every `strom` process needs before it runs a command (after its logging):
/// the TLS crypto provider and the metrics recorder.
pub fn prepare_process() -> Result<(), String> {
    // rustls is built with two crypto providers (ring for Strom's own TLS, which
    // names it everywhere; aws-lc-rs for tiberius): make ring the process default
    // so no library falls back to a guess.
    let _ = rustls::crypto::ring::default_provider().install_default();
    // The node's Prometheus metrics (`GET /metrics`); a client command records none.
    strom_control_plane::metrics::install()
}

/// The tokio runtime commands run on (`STROM_WORKER_THREADS` threads if set).
pub fn node_runtime() -> Result<tokio::runtime::Runtime, String> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = std::env::var("STROM_WORKER_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0)
    {
        builder.worker_threads(n);
    }
    builder
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))
}

/// Run the CLI; returns the process exit code.
pub async fn main_with_args(args: Vec<String>) -> i32 {
    let cli = match cli::Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return e.exit_code();
        }
    };
    let result = match cli.command {
        cli::Command::Up(a) => up::run(a).await,
        cli::Command::Serve(a) => serve::run(*a).await,
        cli::Command::App(c) => client::run_app(c).await,
        cli::Command::Fn(c) => client::run_fn(c).await,
        cli::Command::Cluster(c) => client::run_cluster(c).await,
        cli::Command::Node(c) => client::run_node_cmd(c).await,
        cli::Command::Image(c) => run_image(c).await,
        cli::Command::Service(c) => service::run(c).await,
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {}", e.message);
            e.code
        }
    }
}

async fn run_image(cmd: cli::ImageCommand) -> Result<(), client::CliError> {
    use strom_actors::image_build::{build_image, ImageBuild, ImageBuildError};
    use strom_actors::runtime::docker::DockerRuntime;
    let cli::ImageCommand::Build {
        app_dir,
        tag,
        base,
        pull,
    } = cmd;
    if !app_dir.join("host.json").is_file() {
        return Err(client::CliError::new(
            2,
            format!("{}: no host.json (not an app folder)", app_dir.display()),
        ));
    }
    let docker = DockerRuntime::new(Default::default())
        .client()
        .await
        .map_err(|e| client::CliError::new(5, e.to_string()))?;
    let opts = ImageBuild {
        app_dir,
        base,
        tag: tag.clone(),
        pull,
    };
    match build_image(&docker, &opts).await {
        Ok(id) => {
            output::say!("built {tag} ({id})");
            Ok(())
        }
        Err(e @ ImageBuildError::Input(_)) => Err(client::CliError::new(2, e.to_string())),
        Err(e @ ImageBuildError::Unreachable(_)) => Err(client::CliError::new(5, e.to_string())),
        Err(e @ ImageBuildError::Failed(_)) => Err(client::CliError::new(1, e.to_string())),
    }
}
