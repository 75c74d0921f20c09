use std::io::IsTerminal;

fn main() {
    // A handler being started: tie it to the node and become it (never returns on
    // success).
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(strom_actors::runtime::process::LAUNCH_ARG) {
        std::process::exit(strom_actors::runtime::process::run_launcher(&args[2..]));
    }
    // A Windows service: the Service Control Manager runs the node, which logs to
    // its data dir.
    #[cfg(windows)]
    if let Some(name) = strom_node::service::launched_as(&args) {
        std::process::exit(strom_node::service::run_service(name));
    }
    // `--log-level` wins over `STROM_LOG`; `--log-format` over `STROM_LOG_FORMAT`.
    let (filter, json) = strom_node::logging::filter_and_format(&args).unwrap_or_else(|e| {
        eprintln!("error: {e}");
        std::process::exit(2);
    });
    // Colour only for a person at a terminal: files and journald get plain text.
    let ansi = strom_node::log_colours(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").is_some(),
    );
    strom_node::logging::init(filter, json, ansi, std::io::stderr);
    if let Err(e) = strom_node::prepare_process() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
    let runtime = strom_node::node_runtime().unwrap_or_else(|e| {
        eprintln!("error: {e}");
        std::process::exit(1);
    });
    let code = runtime.block_on(strom_node::main_with_args(std::env::args().collect()));
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    std::process::exit(code);
}
