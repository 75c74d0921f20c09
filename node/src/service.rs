//! `strom service install|uninstall|start|stop`: a node as a Windows service.
//!
//! The service runs `strom.exe serve --config FILE --windows-service NAME` as
//! LocalSystem, started with Windows and restarted by the Service Control Manager
//! when it fails. In the service the node logs to `logs\strom.YYYY-MM-DD.log` in its
//! data dir (daily files, two weeks kept), reports "running" once it serves, and
//! stops on a service stop or a system shutdown as on Ctrl-C: not ready, drain,
//! hand over leadership, stop its handlers. Relative paths in the configuration are
//! taken from the configuration file's folder (a service starts in `System32`).

use std::path::{Path, PathBuf};

use crate::cli::{ServeArgs, ServiceArgs, ServiceCommand};
use crate::client::CliError;

/// The name given with `--windows-service NAME` when the process is started as
/// `strom serve … --windows-service NAME` (by the Service Control Manager).
pub fn launched_as(args: &[String]) -> Option<String> {
    if args.get(1).map(String::as_str) != Some("serve") {
        return None;
    }
    crate::logging::peek(args, "--windows-service")
}

/// The `--config` path in a service's command line as Windows keeps it
/// (`"C:\…\strom.exe" serve --config "C:\…\strom.toml" --windows-service Strom`).
pub fn config_in_command_line(line: &str) -> Option<PathBuf> {
    let mut words = split_command_line(line).into_iter();
    while let Some(w) = words.next() {
        if w == "--config" {
            return words.next().map(PathBuf::from);
        }
        if let Some(v) = w.strip_prefix("--config=") {
            return Some(PathBuf::from(v));
        }
    }
    None
}

/// Words of a Windows command line: split at spaces outside double quotes, quotes
/// removed (paths hold no quotes, so escapes need no handling).
fn split_command_line(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            ' ' | '\t' if !quoted => {
                if any {
                    words.push(std::mem::take(&mut word));
                    any = false;
                }
            }
            c => {
                word.push(c);
                any = true;
            }
        }
    }
    if any {
        words.push(word);
    }
    words
}

/// The configuration a service command means: `--config`, made absolute, or the
/// default `%ProgramData%\Strom\strom.toml`.
pub fn config_path(args: &ServiceArgs) -> Result<PathBuf, CliError> {
    let path = match &args.config {
        Some(p) => p.clone(),
        None => crate::data_dir::default_for_serve().join("strom.toml"),
    };
    std::path::absolute(&path)
        .map_err(|e| CliError::new(2, format!("--config {}: {e}", path.display())))
}

/// Read and check a node's configuration as the service will run it (relative
/// paths from the file's folder, where the service starts). Every problem is
/// reported at once.
pub fn check_config(config: &Path) -> Result<crate::up::NodeSettings, CliError> {
    if !config.is_file() {
        return Err(CliError::new(
            2,
            format!(
                "--config {}: no such file; write the node's configuration there (docs/windows.md, \"Install as a service\") or give --config",
                config.display()
            ),
        ));
    }
    let mut args = crate::serve::merge_file(ServeArgs {
        config: Some(config.to_path_buf()),
        ..ServeArgs::default()
    })
    .map_err(|e| CliError::new(2, e))?;
    let folder = config.parent().unwrap_or(Path::new("."));
    for path in [
        &mut args.data_dir,
        &mut args.tls_cert,
        &mut args.tls_key,
        &mut args.tls_ca,
    ]
    .into_iter()
    .flatten()
    {
        if path.is_relative() {
            *path = folder.join(&*path);
        }
    }
    crate::serve::validate(&args).map_err(|problems| {
        CliError::new(
            2,
            format!(
                "invalid node configuration in {}:\n  {}",
                config.display(),
                problems.join("\n  ")
            ),
        )
    })
}

/// Run a `strom service …` command.
pub async fn run(command: ServiceCommand) -> Result<(), CliError> {
    #[cfg(windows)]
    {
        tokio::task::spawn_blocking(move || windows::run(command))
            .await
            .map_err(|e| CliError::new(1, e.to_string()))?
    }
    #[cfg(not(windows))]
    {
        let _ = command;
        Err(CliError::new(
            2,
            "`strom service` manages a Windows service; on Linux run `strom serve` under systemd (docs/operations.md, \"A systemd unit\")",
        ))
    }
}

#[cfg(windows)]
pub use windows::run_service;

#[cfg(windows)]
mod windows {
    use std::ffi::{OsStr, OsString};
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU8, Ordering};
    use std::sync::OnceLock;
    use std::time::{Duration, Instant};

    use windows_service::service::{
        ServiceAccess, ServiceAction, ServiceActionType, ServiceControl, ServiceControlAccept,
        ServiceErrorControl, ServiceExitCode, ServiceFailureActions, ServiceFailureResetPeriod,
        ServiceInfo, ServiceStartType, ServiceState, ServiceStatus, ServiceType,
    };
    use windows_service::service_control_handler::{
        self, ServiceControlHandlerResult, ServiceStatusHandle,
    };
    use windows_service::service_manager::{ServiceManager, ServiceManagerAccess};

    use super::*;

    const ERROR_ACCESS_DENIED: i32 = 5;
    const ERROR_SERVICE_ALREADY_RUNNING: i32 = 1056;
    const ERROR_SERVICE_DOES_NOT_EXIST: i32 = 1060;
    const ERROR_SERVICE_CANNOT_ACCEPT_CTRL: i32 = 1061;
    const ERROR_SERVICE_NOT_ACTIVE: i32 = 1062;
    const ERROR_SERVICE_EXISTS: i32 = 1073;

    fn os_code(e: &windows_service::Error) -> Option<i32> {
        match e {
            windows_service::Error::Winapi(io) => io.raw_os_error(),
            _ => None,
        }
    }

    /// A Service Control Manager error as the operator should read it.
    fn scm_error(what: &str, name: &str, e: windows_service::Error) -> CliError {
        match os_code(&e) {
            Some(ERROR_ACCESS_DENIED) => CliError::new(
                4,
                format!("{what} service {name}: access denied; run it from an elevated prompt (as Administrator)"),
            ),
            Some(ERROR_SERVICE_DOES_NOT_EXIST) => CliError::new(
                3,
                format!("{what} service {name}: no such service; install it with `strom service install --config FILE --name {name}`"),
            ),
            _ => {
                let detail = match &e {
                    windows_service::Error::Winapi(io) => io.to_string(),
                    other => other.to_string(),
                };
                CliError::new(1, format!("{what} service {name}: {detail}"))
            }
        }
    }

    fn manager(access: ServiceManagerAccess, name: &str) -> Result<ServiceManager, CliError> {
        ServiceManager::local_computer(None::<&str>, access)
            .map_err(|e| scm_error("the Service Control Manager, for", name, e))
    }

    pub fn run(command: ServiceCommand) -> Result<(), CliError> {
        match command {
            ServiceCommand::Install(a) => install(&a),
            ServiceCommand::Uninstall(a) => uninstall(&a),
            ServiceCommand::Start(a) => start(&a),
            ServiceCommand::Stop(a) => stop(&a),
        }
    }

    fn install(args: &ServiceArgs) -> Result<(), CliError> {
        let config = config_path(args)?;
        let settings = check_config(&config)?;
        let data_dir = std::path::absolute(&settings.data_dir)
            .map_err(|e| CliError::new(2, format!("data-dir: {e}")))?;
        let exe = std::env::current_exe()
            .map_err(|e| CliError::new(1, format!("this program's path: {e}")))?;
        let scm = manager(
            ServiceManagerAccess::CONNECT | ServiceManagerAccess::CREATE_SERVICE,
            &args.name,
        )?;
        let info = ServiceInfo {
            name: OsString::from(&args.name),
            display_name: OsString::from(format!("Strom node ({})", args.name)),
            service_type: ServiceType::OWN_PROCESS,
            start_type: ServiceStartType::AutoStart,
            error_control: ServiceErrorControl::Normal,
            executable_path: exe.clone(),
            launch_arguments: vec![
                "serve".into(),
                "--config".into(),
                config.clone().into_os_string(),
                "--windows-service".into(),
                OsString::from(&args.name),
            ],
            dependencies: vec![],
            account_name: None, // LocalSystem
            account_password: None,
        };
        // START too: failure actions that restart the service need it.
        let access = ServiceAccess::CHANGE_CONFIG | ServiceAccess::START | ServiceAccess::DELETE;
        let service = scm.create_service(&info, access).map_err(|e| {
            if os_code(&e) == Some(ERROR_SERVICE_EXISTS) {
                CliError::new(
                    2,
                    format!(
                        "service {}: already installed; `strom service uninstall --name {0}` first, or give another --name",
                        args.name
                    ),
                )
            } else {
                scm_error("install", &args.name, e)
            }
        })?;
        let configured = configure(&service, &args.name, settings.shutdown_delay).and_then(|_| {
            crate::data_dir::secure(&data_dir)
                .map(|_| ())
                .map_err(|e| CliError::new(1, format!("data dir {}: {e}", data_dir.display())))
        });
        if let Err(mut e) = configured {
            // Refused: leave nothing registered.
            if let Err(d) = service.delete() {
                e.message.push_str(&format!(
                    "\nand removing the half-installed service failed: {}; remove it with `sc.exe delete {}`",
                    scm_error("remove", &args.name, d).message,
                    args.name
                ));
            }
            return Err(e);
        }
        println!("installed service {}", args.name);
        println!(
            "  runs:      {} serve --config {} (as LocalSystem, started with Windows, restarted on failure)",
            exe.display(),
            config.display()
        );
        println!(
            "  data dir:  {} (SYSTEM and Administrators only)",
            data_dir.display()
        );
        println!("  logs:      {}", data_dir.join("logs").display());
        println!("start it with `strom service start --name {}`", args.name);
        Ok(())
    }

    /// The service's description, what Windows does when it fails (restart it — a
    /// crash, or an exit with an error — after 5 s, then 30 s, then every minute;
    /// the count starts over after a day), and how long it may take to stop when
    /// Windows shuts down. A Windows that does not know a setting (Wine) gets a
    /// warning, not a refusal.
    fn configure(
        service: &windows_service::service::Service,
        name: &str,
        shutdown_delay: Duration,
    ) -> Result<(), CliError> {
        const ERROR_INVALID_LEVEL: i32 = 124;
        let tolerate = |what: &str, result: windows_service::Result<()>| match result {
            Ok(()) => Ok(()),
            Err(e) if os_code(&e) == Some(ERROR_INVALID_LEVEL) => {
                eprintln!(
                    "warning: service {name}: this Windows does not support the setting `{what}`; left out"
                );
                Ok(())
            }
            Err(e) => Err(scm_error(&format!("configure ({what})"), name, e)),
        };
        tolerate(
            "description",
            service.set_description(
                "Strom: runs Azure Functions apps (custom handlers) on this cluster's nodes",
            ),
        )?;
        tolerate(
            "restart on failure",
            service.update_failure_actions(ServiceFailureActions {
                reset_period: ServiceFailureResetPeriod::After(Duration::from_secs(86_400)),
                reboot_msg: None,
                command: None,
                actions: Some(
                    [5, 30, 60]
                        .into_iter()
                        .map(|secs| ServiceAction {
                            action_type: ServiceActionType::Restart,
                            delay: Duration::from_secs(secs),
                        })
                        .collect(),
                ),
            }),
        )?;
        tolerate(
            "restart after an exit with an error",
            service.set_failure_actions_on_non_crash_failures(true),
        )?;
        // When Windows shuts down, time for a whole graceful stop (the default
        // pre-shutdown time is 10 s on current Windows).
        tolerate(
            "pre-shutdown time",
            service.set_preshutdown_timeout(shutdown_delay + STOP_WORK),
        )
    }

    /// The installed service, checked against `--config` when given.
    fn open(
        args: &ServiceArgs,
        access: ServiceAccess,
    ) -> Result<(windows_service::service::Service, Option<PathBuf>), CliError> {
        let scm = manager(ServiceManagerAccess::CONNECT, &args.name)?;
        let service = scm
            .open_service(&args.name, access | ServiceAccess::QUERY_CONFIG)
            .map_err(|e| scm_error("open", &args.name, e))?;
        let line = service
            .query_config()
            .map_err(|e| scm_error("read", &args.name, e))?
            .executable_path;
        let installed = config_in_command_line(&line.to_string_lossy());
        if let Some(given) = &args.config {
            let given = std::path::absolute(given).unwrap_or_else(|_| given.clone());
            let same = installed
                .as_deref()
                .is_some_and(|i| i.as_os_str().eq_ignore_ascii_case(given.as_os_str()));
            if !same {
                return Err(CliError::new(
                    2,
                    format!(
                        "--config {}: service {} runs {}; give its --name or leave --config out",
                        given.display(),
                        args.name,
                        installed
                            .as_deref()
                            .map(|p| p.display().to_string())
                            .unwrap_or_else(|| "no strom configuration".into())
                    ),
                ));
            }
        }
        Ok((service, installed))
    }

    /// Where the service's node logs, for messages.
    fn logs_of(config: Option<&Path>) -> String {
        config
            .and_then(|c| check_config(c).ok())
            .map(|s| {
                std::path::absolute(s.data_dir.join("logs"))
                    .unwrap_or_else(|_| s.data_dir.join("logs"))
                    .display()
                    .to_string()
            })
            .unwrap_or_else(|| "the logs folder of its data dir".into())
    }

    /// Poll the service until `until` holds for its state, within `timeout`.
    fn wait(
        service: &windows_service::service::Service,
        name: &str,
        timeout: Duration,
        until: impl Fn(ServiceState) -> bool,
    ) -> Result<ServiceStatus, CliError> {
        let deadline = Instant::now() + timeout;
        loop {
            let status = service
                .query_status()
                .map_err(|e| scm_error("query", name, e))?;
            if until(status.current_state) {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                return Err(CliError::new(
                    5,
                    format!(
                        "service {name}: still {:?} after {} s; see `sc.exe query {name}` and its log",
                        status.current_state,
                        timeout.as_secs()
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn exit_code_text(code: &ServiceExitCode) -> String {
        match code {
            ServiceExitCode::Win32(c) => format!("Windows error {c}"),
            ServiceExitCode::ServiceSpecific(c) => match c {
                2 => format!("exit code {c}: invalid command line or configuration"),
                3 => format!("exit code {c}: its data dir or logs folder could not be created"),
                c => format!("exit code {c}"),
            },
        }
    }

    fn start(args: &ServiceArgs) -> Result<(), CliError> {
        let (service, config) = open(args, ServiceAccess::START | ServiceAccess::QUERY_STATUS)?;
        match service.start::<&OsStr>(&[]) {
            Ok(()) => {}
            Err(e) if os_code(&e) == Some(ERROR_SERVICE_ALREADY_RUNNING) => {
                let state = service
                    .query_status()
                    .map_err(|e| scm_error("query", &args.name, e))?
                    .current_state;
                if state == ServiceState::StopPending {
                    return Err(CliError::new(
                        1,
                        format!(
                            "service {} is stopping; start it again once it has stopped",
                            args.name
                        ),
                    ));
                }
                println!("service {} is already running", args.name);
                return Ok(());
            }
            Err(e) => return Err(scm_error("start", &args.name, e)),
        }
        let status = wait(
            &service,
            &args.name,
            Duration::from_secs(args.timeout),
            |s| s == ServiceState::Running || s == ServiceState::Stopped,
        )?;
        if status.current_state == ServiceState::Stopped {
            return Err(CliError::new(
                1,
                format!(
                    "service {}: stopped while starting ({}); see its log in {}",
                    args.name,
                    exit_code_text(&status.exit_code),
                    logs_of(config.as_deref())
                ),
            ));
        }
        println!(
            "service {} is running (logs in {})",
            args.name,
            logs_of(config.as_deref())
        );
        Ok(())
    }

    /// Ask the service to stop and wait until it has; `Ok(false)` if it was not
    /// running.
    fn stop_and_wait(
        service: &windows_service::service::Service,
        args: &ServiceArgs,
    ) -> Result<bool, CliError> {
        let timeout = Duration::from_secs(args.timeout);
        match service.stop() {
            Ok(_) => {}
            Err(e) if os_code(&e) == Some(ERROR_SERVICE_NOT_ACTIVE) => return Ok(false),
            // Starting or stopping: it takes no stop now.
            Err(e) if os_code(&e) == Some(ERROR_SERVICE_CANNOT_ACCEPT_CTRL) => {
                let status = service
                    .query_status()
                    .map_err(|e| scm_error("query", &args.name, e))?;
                match status.current_state {
                    ServiceState::StartPending => {
                        eprintln!(
                            "service {} is starting; it is stopped once it runs…",
                            args.name
                        );
                        let now = wait(service, &args.name, timeout, |s| {
                            s == ServiceState::Running || s == ServiceState::Stopped
                        })?;
                        if now.current_state == ServiceState::Stopped {
                            return Ok(true);
                        }
                        service
                            .stop()
                            .map_err(|e| scm_error("stop", &args.name, e))?;
                    }
                    ServiceState::StopPending => {}
                    ServiceState::Stopped => return Ok(false),
                    _ => return Err(scm_error("stop", &args.name, e)),
                }
            }
            Err(e) => return Err(scm_error("stop", &args.name, e)),
        }
        eprintln!(
            "stopping service {} (draining its requests, handing over leadership)…",
            args.name
        );
        let status = wait(service, &args.name, timeout, |s| s == ServiceState::Stopped)?;
        if status.exit_code != ServiceExitCode::Win32(0) {
            eprintln!(
                "service {} stopped with {}",
                args.name,
                exit_code_text(&status.exit_code)
            );
        }
        Ok(true)
    }

    fn stop(args: &ServiceArgs) -> Result<(), CliError> {
        let (service, _) = open(args, ServiceAccess::STOP | ServiceAccess::QUERY_STATUS)?;
        if stop_and_wait(&service, args)? {
            println!("service {} stopped", args.name);
        } else {
            println!("service {} is not running", args.name);
        }
        Ok(())
    }

    fn uninstall(args: &ServiceArgs) -> Result<(), CliError> {
        let (service, config) = open(
            args,
            ServiceAccess::STOP | ServiceAccess::QUERY_STATUS | ServiceAccess::DELETE,
        )?;
        stop_and_wait(&service, args)?;
        service
            .delete()
            .map_err(|e| scm_error("uninstall", &args.name, e))?;
        println!(
            "uninstalled service {} (its data dir is kept{})",
            args.name,
            config
                .and_then(|c| check_config(&c).ok())
                .map(|s| format!(": {}", s.data_dir.display()))
                .unwrap_or_default()
        );
        Ok(())
    }

    // ---- the service process -------------------------------------------------

    static NAME: OnceLock<String> = OnceLock::new();
    static STATUS: OnceLock<ServiceStatusHandle> = OnceLock::new();
    static EXIT: AtomicI32 = AtomicI32::new(0);
    /// Where the service is: [`STARTING`], [`RUNNING`], [`STOPPING`], [`STOPPED`];
    /// changed, and reported, only under [`REPORTING`], so no pending status ever
    /// follows the final "stopped".
    static PHASE: AtomicU8 = AtomicU8::new(STARTING);
    const STARTING: u8 = 0;
    const RUNNING: u8 = 1;
    const STOPPING: u8 = 2;
    const STOPPED: u8 = 3;
    static REPORTING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    /// Pending reports so far (a pending state's checkpoint must grow).
    static CHECKPOINT: AtomicU32 = AtomicU32::new(0);
    /// How long a stop may show progress: the shutdown delay, the drain (30 s), the
    /// handlers' grace (10 s) and kill wait (10 s), the hand-over (5 s), with room.
    /// A stop that takes longer stops advancing its checkpoint, so Windows sees it
    /// hang.
    static STOP_BUDGET: OnceLock<Duration> = OnceLock::new();
    const STOP_WORK: Duration = Duration::from_secs(90);

    windows_service::define_windows_service!(ffi_service_main, service_main);

    /// `strom serve … --windows-service NAME`: hand the thread to the Service
    /// Control Manager, which runs the node in [`service_main`]. Returns the exit
    /// code.
    pub fn run_service(name: String) -> i32 {
        let _ = NAME.set(name.clone());
        match windows_service::service_dispatcher::start(&name, ffi_service_main) {
            Ok(()) => EXIT.load(Ordering::SeqCst),
            Err(e) => {
                eprintln!(
                    "error: --windows-service: only the Service Control Manager starts this (`strom service start --name {name}`); to run a node in this console, leave the flag out ({e})"
                );
                2
            }
        }
    }

    /// Tell Windows where the service is (call under [`REPORTING`]).
    fn report(state: ServiceState, exit: ServiceExitCode) {
        let Some(handle) = STATUS.get() else { return };
        let pending = matches!(
            state,
            ServiceState::StartPending | ServiceState::StopPending
        );
        let controls_accepted = match state {
            ServiceState::Running => ServiceControlAccept::STOP | ServiceControlAccept::PRESHUTDOWN,
            _ => ServiceControlAccept::empty(),
        };
        let _ = handle.set_service_status(ServiceStatus {
            service_type: ServiceType::OWN_PROCESS,
            current_state: state,
            controls_accepted,
            exit_code: exit,
            checkpoint: if pending {
                CHECKPOINT.fetch_add(1, Ordering::SeqCst) + 1
            } else {
                0
            },
            wait_hint: if pending {
                Duration::from_secs(30)
            } else {
                Duration::ZERO
            },
            process_id: None,
        });
    }

    /// Move to `phase` (unless stopped already) and report it.
    fn enter(phase: u8, state: ServiceState, exit: ServiceExitCode) {
        let _reporting = REPORTING.lock();
        if PHASE.load(Ordering::SeqCst) == STOPPED {
            return;
        }
        PHASE.store(phase, Ordering::SeqCst);
        report(state, exit);
    }

    /// While starting or stopping, a new checkpoint every 5 s, so Windows sees
    /// progress (a stop only within its budget).
    fn report_progress() {
        let mut stopping_since = None;
        loop {
            std::thread::sleep(Duration::from_secs(5));
            let _reporting = REPORTING.lock();
            match PHASE.load(Ordering::SeqCst) {
                STARTING => report(ServiceState::StartPending, ServiceExitCode::Win32(0)),
                STOPPING => {
                    let since = *stopping_since.get_or_insert_with(Instant::now);
                    let budget = STOP_BUDGET.get().copied().unwrap_or(STOP_WORK);
                    if since.elapsed() < budget {
                        report(ServiceState::StopPending, ServiceExitCode::Win32(0));
                    }
                }
                STOPPED => return,
                _ => {}
            }
        }
    }

    // A plain function, not a capturing closure: windows-service frees the
    // handler's context after a stop, yet Windows may still call it (interrogate).
    fn on_control(control: ServiceControl) -> ServiceControlHandlerResult {
        match control {
            ServiceControl::Stop | ServiceControl::Preshutdown | ServiceControl::Shutdown => {
                enter(
                    STOPPING,
                    ServiceState::StopPending,
                    ServiceExitCode::Win32(0),
                );
                crate::lifecycle::request_stop();
                ServiceControlHandlerResult::NoError
            }
            ServiceControl::Interrogate => ServiceControlHandlerResult::NoError,
            _ => ServiceControlHandlerResult::NotImplemented,
        }
    }

    fn service_main(_arguments: Vec<OsString>) {
        let name = NAME.get().cloned().unwrap_or_default();
        let Ok(handle) = service_control_handler::register(&name, on_control) else {
            EXIT.store(1, Ordering::SeqCst);
            return;
        };
        let _ = STATUS.set(handle);
        enter(
            STARTING,
            ServiceState::StartPending,
            ServiceExitCode::Win32(0),
        );
        std::thread::spawn(report_progress);
        let code = serve();
        EXIT.store(code, Ordering::SeqCst);
        let exit = match code {
            0 => ServiceExitCode::Win32(0),
            c => ServiceExitCode::ServiceSpecific(c as u32),
        };
        let _reporting = REPORTING.lock();
        PHASE.store(STOPPED, Ordering::SeqCst);
        report(ServiceState::Stopped, exit);
    }

    /// The node, as `strom serve` runs it, with its log in the data dir.
    fn serve() -> i32 {
        let raw: Vec<String> = std::env::args().collect();
        let args = match <crate::cli::Cli as clap::Parser>::try_parse_from(&raw) {
            Ok(crate::cli::Cli {
                command: crate::cli::Command::Serve(a),
                ..
            }) => *a,
            _ => return 2,
        };
        // Relative paths in the configuration: from its folder.
        if let Some(folder) = args.config.as_deref().and_then(Path::parent) {
            let _ = std::env::set_current_dir(folder);
        }
        let file = crate::serve::merge_file(ServeArgs {
            config: args.config.clone(),
            ..ServeArgs::default()
        })
        .ok();
        let delay = args
            .shutdown_delay_secs
            .or(file.as_ref().and_then(|f| f.shutdown_delay_secs))
            .unwrap_or(crate::serve::DEFAULT_SHUTDOWN_DELAY_SECS);
        let _ = STOP_BUDGET.set(Duration::from_secs(delay) + STOP_WORK);
        let data_dir = args
            .data_dir
            .clone()
            .or(file.and_then(|f| f.data_dir))
            .unwrap_or_else(crate::data_dir::default_for_serve);
        let logs = data_dir.join("logs");
        let existed = data_dir.exists();
        let fixed = match crate::data_dir::secure(&data_dir)
            .and_then(|fixed| std::fs::create_dir_all(&logs).map(|_| fixed))
        {
            Ok(fixed) => fixed,
            Err(e) => {
                // Nowhere to log: the exit code (3, which `strom service start`
                // explains) and the Service Control Manager's event are what the
                // operator sees; the error goes to the (hidden) console.
                eprintln!("data dir {}: {e}", data_dir.display());
                return 3;
            }
        };
        let appender = match tracing_appender::rolling::Builder::new()
            .rotation(tracing_appender::rolling::Rotation::DAILY)
            .filename_prefix("strom")
            .filename_suffix("log")
            .max_log_files(14)
            .build(&logs)
        {
            Ok(a) => a,
            Err(_) => return 3,
        };
        let (filter, json) = match crate::logging::filter_and_format(&raw) {
            Ok(f) => f,
            Err(_) => return 2,
        };
        crate::logging::init(filter, json, false, appender);
        tracing::info!(
            "service {name} starting: {}",
            raw.join(" "),
            name = NAME.get().map(String::as_str).unwrap_or("")
        );
        // What securing an older data dir changed (a new one is made closed).
        if existed {
            crate::data_dir::log_fixed(fixed);
        }
        if let Err(e) = crate::prepare_process() {
            tracing::error!("{e}");
            return 1;
        }
        // Console handlers stop gracefully on a Ctrl-Break, which needs a console
        // shared with them; a service has none.
        if let Err(e) = strom_actors::runtime::job::alloc_console() {
            tracing::warn!(
                "no console for the handlers ({e}): a stop ends them without a Ctrl-Break"
            );
        }
        let runtime = match crate::node_runtime() {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("{e}");
                return 1;
            }
        };
        let code = runtime.block_on(async move {
            tokio::spawn(async {
                crate::lifecycle::wait_started().await;
                let _reporting = REPORTING.lock();
                if PHASE.load(Ordering::SeqCst) == STARTING {
                    PHASE.store(RUNNING, Ordering::SeqCst);
                    report(ServiceState::Running, ServiceExitCode::Win32(0));
                }
            });
            match crate::serve::run(args).await {
                Ok(()) => 0,
                Err(e) => {
                    tracing::error!("{}", e.message);
                    e.code
                }
            }
        });
        runtime.shutdown_timeout(Duration::from_secs(2));
        tracing::info!("service stopped (exit code {code})");
        code
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_is_found_in_the_command_line_windows_keeps() {
        assert_eq!(
            config_in_command_line(
                r#""C:\Program Files\Strom\strom.exe" serve --config "C:\ProgramData\Strom\node 1.toml" --windows-service Strom"#
            ),
            Some(PathBuf::from(r"C:\ProgramData\Strom\node 1.toml"))
        );
        assert_eq!(
            config_in_command_line(r"C:\strom.exe serve --config=C:\s.toml"),
            Some(PathBuf::from(r"C:\s.toml"))
        );
        assert_eq!(config_in_command_line(r"C:\other.exe --run"), None);
    }

    #[test]
    fn only_serve_with_the_flag_is_a_service_launch() {
        let args = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        assert_eq!(
            launched_as(&args("strom serve --config c.toml --windows-service Strom")).as_deref(),
            Some("Strom")
        );
        assert_eq!(launched_as(&args("strom serve --config c.toml")), None);
        assert_eq!(launched_as(&args("strom up --windows-service x")), None);
    }

    #[test]
    fn a_missing_or_invalid_configuration_is_refused_before_anything_is_registered() {
        let tmp = tempfile::tempdir().unwrap();
        let missing = tmp.path().join("strom.toml");
        let e = check_config(&missing).unwrap_err();
        assert_eq!(e.code, 2);
        assert!(e.message.contains("no such file"), "{}", e.message);

        std::fs::write(&missing, "node-id = 0\nroles = [\"chef\"]\n").unwrap();
        let e = check_config(&missing).unwrap_err();
        assert!(
            e.message.contains("node-id: must be at least 1"),
            "{}",
            e.message
        );
        assert!(e.message.contains("unknown role `chef`"), "{}", e.message);

        // Relative paths are the file's folder's.
        std::fs::write(
            &missing,
            "node-id = 1\nbootstrap = true\ndata-dir = \"data\"\n",
        )
        .unwrap();
        let settings = check_config(&missing).unwrap();
        assert_eq!(settings.data_dir, tmp.path().join("data"));
    }
}
