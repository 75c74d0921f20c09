use tracing_subscriber::EnvFilter;

fn main() {
    let filter = EnvFilter::try_from_env("STROM_LOG")
        .unwrap_or_else(|_| EnvFilter::new("warn,strom_control_plane=info,strom_node=info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let code = runtime.block_on(strom_node::main_with_args(std::env::args().collect()));
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    std::process::exit(code);
}
