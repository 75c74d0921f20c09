use tracing_subscriber::EnvFilter;

fn main() {
    let filter = EnvFilter::try_from_env("STROM_LOG")
        .unwrap_or_else(|_| EnvFilter::new("warn,strom_control_plane=info,strom_node=info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = std::env::var("STROM_WORKER_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0)
    {
        builder.worker_threads(n);
    }
    let runtime = builder.enable_all().build().expect("tokio runtime");
    let code = runtime.block_on(strom_node::main_with_args(std::env::args().collect()));
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    std::process::exit(code);
}
