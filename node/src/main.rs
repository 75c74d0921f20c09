use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

fn main() {
    // A handler being started: tie it to the node and become it (never returns on
    // success).
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(strom_actors::runtime::process::LAUNCH_ARG) {
        std::process::exit(strom_actors::runtime::process::run_launcher(&args[2..]));
    }
    // `--log-level` wins over `STROM_LOG`; `--log-format` over `STROM_LOG_FORMAT`.
    let filter = match strom_node::logging::peek(&args, "--log-level") {
        Some(level) => EnvFilter::try_new(&level).unwrap_or_else(|e| {
            eprintln!("error: --log-level `{level}`: {e}");
            std::process::exit(2);
        }),
        None => EnvFilter::try_from_env("STROM_LOG")
            .unwrap_or_else(|_| EnvFilter::new(strom_node::DEFAULT_LOG_FILTER)),
    };
    let format = strom_node::logging::peek(&args, "--log-format")
        .or_else(|| std::env::var("STROM_LOG_FORMAT").ok())
        .unwrap_or_else(|| "text".into());
    let json = match format.as_str() {
        "text" => false,
        "json" => true,
        other => {
            eprintln!("error: --log-format `{other}`: use text or json");
            std::process::exit(2);
        }
    };
    // Colour only for a person at a terminal: files and journald get plain text.
    let ansi = !json
        && strom_node::log_colours(
            std::io::stderr().is_terminal(),
            std::env::var_os("NO_COLOR").is_some(),
        );
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .event_format(strom_node::logging::Lines {
            json,
            text: tracing_subscriber::fmt::format().with_ansi(ansi),
        })
        .init();
    // rustls is built with two crypto providers (ring for Strom's own TLS, which
    // names it everywhere; aws-lc-rs for tiberius): make ring the process default
    // so no library falls back to a guess.
    let _ = rustls::crypto::ring::default_provider().install_default();
    // The node's Prometheus metrics (`GET /metrics`); a client command records none.
    if let Err(e) = strom_control_plane::metrics::install() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
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
