//! `strom-node`: the `strom` binary's library: CLI, client commands, and the wiring
//! of the roles into one process (`strom up`).

pub mod agent;
pub mod cli;
pub mod client;
pub mod gateway;
pub mod local_settings;
pub mod output;
pub mod serve;
pub mod up;
pub mod worker;

use clap::Parser;

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
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {}", e.message);
            e.code
        }
    }
}
