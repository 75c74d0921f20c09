//! `strom up`: a single-node cluster in the foreground, on the embedded defaults
//! (local storage under the data dir, no external services).

use std::sync::Arc;
use std::time::Duration;

use strom_control_plane::admin_service::AdminApi;
use strom_control_plane::{control_server, Bootstrap, ManagementConfig, ManagementNode};
use strom_proto::ids::AppName;
use strom_proto::manifest::ZipLimits;
use tokio_util::sync::CancellationToken;

use crate::cli::UpArgs;
use crate::client::{default_app_name, pack, status_error, CliError};
use crate::output::print_functions;

/// The node id of the single node `strom up` runs.
pub const UP_NODE_ID: u64 = 1;

pub async fn run(args: UpArgs) -> Result<(), CliError> {
    std::fs::create_dir_all(&args.data_dir)
        .map_err(|e| CliError::new(2, format!("data dir {}: {e}", args.data_dir.display())))?;
    // Bind first: a taken port is reported before anything else happens.
    let listener = control_server::bind(args.control_addr)
        .await
        .map_err(|e| CliError::new(2, format!("control address {}: {e}", args.control_addr)))?;
    let control_addr = listener
        .local_addr()
        .map_err(|e| CliError::new(1, e.to_string()))?;

    let mut config = ManagementConfig::new(
        &args.data_dir,
        UP_NODE_ID,
        &control_addr.to_string(),
        &format!("http://{}", args.http_addr),
    );
    config.package_limits = ZipLimits {
        max_compressed_bytes: args.max_package_bytes,
        max_uncompressed_bytes: args.max_uncompressed_bytes,
        max_entries: args.max_package_entries,
        ..ZipLimits::default()
    };
    let node = ManagementNode::start(config)
        .await
        .map_err(|e| CliError::new(1, e.to_string()))?;
    let cancel = CancellationToken::new();
    let server = tokio::spawn(control_server::serve(
        node.clone(),
        listener,
        cancel.clone(),
    ));

    let bootstrap = node
        .bootstrap(Duration::from_secs(30))
        .await
        .map_err(|e| CliError::new(1, e.to_string()))?;

    println!(
        "strom {} — single-node cluster (management role)",
        env!("CARGO_PKG_VERSION")
    );
    println!("  data dir:  {}", args.data_dir.display());
    println!("  control:   http://{control_addr}  (gRPC admin API)");
    println!(
        "  functions: http://{}  (function URLs; this build has no worker role yet, so nothing serves them)",
        args.http_addr
    );
    match &bootstrap {
        Bootstrap::Created { admin_token } => {
            println!(
                "New cluster. Admin token (shown once; saved to {} with mode 0600):",
                args.data_dir.join("admin.token").display()
            );
            println!("  {admin_token}");
        }
        Bootstrap::Existing => {
            let view = node.read_local();
            println!(
                "Restarted into cluster {} at log index {}.",
                view.state
                    .cluster
                    .as_ref()
                    .map(|c| c.cluster_id.to_string())
                    .unwrap_or_default(),
                view.applied_index()
            );
        }
    }

    let result = deploy_dirs(&node, &args).await;
    if let Err(e) = result {
        cancel.cancel();
        let _ = server.await;
        node.shutdown().await;
        return Err(e);
    }
    print_running(&node);
    println!("Ready. Press Ctrl-C to stop.");

    let stop = shutdown_signal();
    tokio::select! {
        _ = stop => {}
        r = server => {
            node.shutdown().await;
            return match r {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(CliError::new(1, format!("control server: {e}"))),
                Err(e) => Err(CliError::new(1, format!("control server: {e}"))),
            };
        }
    }
    eprintln!("stopping…");
    cancel.cancel();
    node.shutdown().await;
    Ok(())
}

async fn deploy_dirs(node: &ManagementNode, args: &UpArgs) -> Result<(), CliError> {
    let api = Arc::new(AdminApi::new(node.clone()));
    for dir in &args.app_dirs {
        let name = default_app_name(dir)?;
        let app = AppName::parse(&name)
            .map_err(|e| CliError::new(2, format!("{}: {e}; rename the folder", dir.display())))?;
        let zip = pack(dir)?;
        let resp = api.deploy_bytes(app, zip).await.map_err(|s| {
            let mut e = status_error(s);
            e.message = format!("deploying {}: {}", dir.display(), e.message);
            e
        })?;
        if resp.changed {
            println!(
                "Deployed app `{}` version {}.",
                resp.app_name,
                &resp.version_id[..12]
            );
        }
    }
    Ok(())
}

fn print_running(node: &ManagementNode) {
    let view = node.read_local();
    if view.state.apps.is_empty() {
        println!("No apps yet: deploy one with `strom app deploy DIR`.");
        return;
    }
    let mut functions = Vec::new();
    for app in view.state.apps.values() {
        let manifest = &app.active().manifest;
        for f in &manifest.functions {
            functions.push(strom_control_plane::admin_service::function_info(
                &app.name,
                manifest,
                f,
                &app.settings,
                &node.config.public_http_url,
            ));
        }
    }
    print_functions(&functions, true);
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
