//! The process runtime (the default): the handler runs as a child process, exactly
//! as the Azure host starts a custom handler.
//!
//! - Executable: `defaultExecutablePath`, made absolute when it exists under the app
//!   root, else looked up on `PATH`; `arguments` with `%SETTING%` expansion;
//!   `workingDirectory` relative to the app root (default: the app root).
//! - Environment: the node's, plus every app setting, plus
//!   `FUNCTIONS_CUSTOMHANDLER_PORT` (a free port), `FUNCTIONS_CUSTOMHANDLER_WORKER_ID`,
//!   `FUNCTIONS_APP_ROOT_PATH` and the legacy `FUNCTIONS_HTTPWORKER_PORT`/`_ID`.
//! - Own process group (Unix), so stop and cleanup reach the handler's children too:
//!   SIGTERM to the group, a grace period, then SIGKILL to the group. On Windows a
//!   Job Object of its own ([`super::job`]): kill-on-close (the handler dies with
//!   the node, even a killed one), a Ctrl-Break to its console process group, the
//!   grace period, then `TerminateJobObject`; `STROM_MEMORY_MB` and
//!   `STROM_CONTAINER_CPUS` are enforced by the job.
//! - Durable: a pid file per running instance under `<data-dir>/run/instances/`, so
//!   after the node itself was killed (`kill -9`) the next start kills the process
//!   groups it left behind ([`reap_orphans`]). The pid file records the process start
//!   time, so a recycled pid is never killed by mistake.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt};

use tokio::sync::{broadcast, watch};

use super::{
    ExitInfo, InstanceControl, InstanceRuntime, InstanceSpec, LineSplitter, LogLine, LogStream,
    RuntimeError, Started,
};

#[derive(Debug, Clone)]
pub struct ProcessRuntime {
    pid_dir: PathBuf,
    /// A program that runs `LAUNCH_ARG <node pid> -- <handler> <args…>` as
    /// [`run_launcher`] does (the `strom` binary itself): the handler then dies with
    /// the node, even after a `kill -9` of it (Linux).
    launcher: Option<PathBuf>,
}

/// The hidden first argument that makes the `strom` binary a handler launcher.
pub const LAUNCH_ARG: &str = "__strom-handler-launcher";

/// Become the handler: ask the kernel to kill this process when its parent (the
/// node) dies, make sure the node has not died already, then exec the handler in
/// place (same pid, process group, pipes, environment and folder). Returns only on
/// failure, with the exit code to use. `args`: `<node pid> -- <program> <args…>`.
#[cfg(target_os = "linux")]
pub fn run_launcher(args: &[String]) -> i32 {
    use std::os::unix::process::CommandExt;
    let (Some(parent), Some("--"), Some(program)) = (
        args.first().and_then(|p| p.parse::<i32>().ok()),
        args.get(1).map(String::as_str),
        args.get(2),
    ) else {
        eprintln!("strom handler launcher: usage: {LAUNCH_ARG} <node pid> -- <program> [args…]");
        return 2;
    };
    if let Err(e) = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL) {
        eprintln!("strom handler launcher: cannot tie the handler to the node: {e}");
        return 1;
    }
    // The node may have died before the signal was armed.
    if nix::unistd::getppid().as_raw() != parent {
        return 1;
    }
    let err = std::process::Command::new(program).args(&args[3..]).exec();
    eprintln!("cannot start `{program}`: {err}");
    127
}

#[cfg(not(target_os = "linux"))]
pub fn run_launcher(_args: &[String]) -> i32 {
    eprintln!("strom handler launcher: only on Linux");
    2
}

#[derive(Debug, Serialize, Deserialize)]
struct PidFile {
    pid: u32,
    /// Process start time in clock ticks since boot (Linux `/proc/<pid>/stat` field 22).
    start_ticks: Option<u64>,
    instance: String,
}

impl ProcessRuntime {
    /// `run_dir` holds the pid files (`<data-dir>/run/instances`).
    pub fn new(run_dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(run_dir)?;
        Ok(ProcessRuntime {
            pid_dir: run_dir.to_path_buf(),
            launcher: None,
        })
    }

    /// Start handlers through `launcher` (see [`ProcessRuntime::launcher`]); Linux
    /// only (elsewhere it is ignored, and the sweep at start cleans up).
    pub fn with_launcher(mut self, launcher: PathBuf) -> Self {
        if cfg!(target_os = "linux") {
            self.launcher = Some(launcher);
        }
        self
    }
}

/// Whether `program` can be started: a path that exists, or a bare name on `PATH`
/// (through a launcher, a missing program would only show as an exit).
fn check_program(program: &Path) -> std::io::Result<()> {
    let bare = program.components().count() == 1 && !program.is_absolute();
    let found = if bare {
        program
            .to_str()
            .and_then(strom_proto::manifest::find_on_path)
            .is_some()
    } else if program.is_absolute() {
        program.is_file()
    } else {
        true // relative to the handler's folder: the launcher reports it
    };
    if found {
        Ok(())
    } else {
        Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no such file or command",
        ))
    }
}

/// A free TCP port on 127.0.0.1 (the host's `GetUnusedTcpPort`).
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

fn resolve_program(app_root: &Path, exe: &str) -> PathBuf {
    let candidate = app_root.join(exe);
    if Path::new(exe).is_relative() && candidate.is_file() {
        candidate
    } else {
        PathBuf::from(exe)
    }
}

#[async_trait::async_trait]
impl InstanceRuntime for ProcessRuntime {
    fn name(&self) -> &'static str {
        "process"
    }

    async fn start(&self, spec: &InstanceSpec) -> Result<Started, RuntimeError> {
        let port = free_port().map_err(RuntimeError::NoPort)?;
        // The handler starts in its own folder: every path it gets is absolute.
        let app_root =
            std::path::absolute(&spec.app_root).map_err(|source| RuntimeError::Spawn {
                program: spec.handler.default_executable_path.clone(),
                dir: spec.app_root.clone(),
                source,
            })?;
        let spec = &InstanceSpec {
            app_root,
            ..spec.clone()
        };
        let program = resolve_program(&spec.app_root, &spec.handler.default_executable_path);
        let args = spec.expanded_arguments();
        let dir = match &spec.handler.working_directory {
            Some(w) if !w.is_empty() => spec.app_root.join(w),
            _ => spec.app_root.clone(),
        };
        let mut cmd = match &self.launcher {
            Some(launcher) => {
                check_program(&program).map_err(|source| RuntimeError::Spawn {
                    program: program.display().to_string(),
                    dir: dir.clone(),
                    source,
                })?;
                let mut cmd = tokio::process::Command::new(launcher);
                cmd.arg(LAUNCH_ARG)
                    .arg(std::process::id().to_string())
                    .arg("--")
                    .arg(&program);
                cmd
            }
            None => tokio::process::Command::new(&program),
        };
        // Strom's own configuration (tokens, addresses) is not the handler's business.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("STROM_") {
                cmd.env_remove(&key);
            }
        }
        cmd.args(&args)
            .current_dir(&dir)
            .envs(&spec.settings)
            .envs(spec.host_env(port, &spec.app_root.to_string_lossy()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        #[cfg(unix)]
        cmd.process_group(0);
        #[cfg(windows)]
        cmd.creation_flags(super::job::NEW_PROCESS_GROUP);
        #[cfg(windows)]
        let limits = windows_limits(spec).map_err(|source| RuntimeError::Spawn {
            program: program.display().to_string(),
            dir: dir.clone(),
            source,
        })?;
        let mut child = cmd.spawn().map_err(|source| RuntimeError::Spawn {
            program: program.display().to_string(),
            dir: dir.clone(),
            source,
        })?;
        let pid = child.id();
        #[cfg(windows)]
        let job = {
            let job = windows_job(limits, &child).map_err(|source| RuntimeError::Spawn {
                program: program.display().to_string(),
                dir: dir.clone(),
                source,
            });
            match job {
                Ok(job) => std::sync::Arc::new(job),
                Err(e) => {
                    // A handler that cannot be contained does not run.
                    let _ = child.start_kill();
                    return Err(e);
                }
            }
        };
        let pid_path = pid.map(|p| self.pid_dir.join(format!("{p}.json")));
        if let (Some(pid), Some(path)) = (pid, &pid_path) {
            let record = PidFile {
                pid,
                start_ticks: process_start_ticks(pid),
                instance: spec.instance_id.clone(),
            };
            if let Err(e) = std::fs::write(path, serde_json::to_vec(&record).expect("plain struct"))
            {
                tracing::warn!("pid file {}: {e}", path.display());
            }
        }

        // Subscribed before the readers start: no line is missed.
        let (logs, lines) = broadcast::channel(1024);
        let mut readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            readers.push(spawn_reader(
                out,
                LogStream::Stdout,
                logs.clone(),
                spec.instance_id.clone(),
            ));
        }
        if let Some(err) = child.stderr.take() {
            readers.push(spawn_reader(
                err,
                LogStream::Stderr,
                logs.clone(),
                spec.instance_id.clone(),
            ));
        }
        let (exit_tx, exited) = watch::channel(None);
        // Only the control owns the job: dropping it unstopped (its instance gone
        // without a stop) closes the job, which ends the handler, as the node's
        // own end does.
        #[cfg(windows)]
        let job_of_task = std::sync::Arc::downgrade(&job);
        tokio::spawn(async move {
            let status = child.wait().await;
            let info = match status {
                Ok(s) => exit_info(s),
                Err(e) => ExitInfo::Other(format!("waiting for the handler failed: {e}")),
            };
            // The handler is gone; take down anything it left in its group.
            #[cfg(unix)]
            if let Some(pid) = pid {
                kill_group(pid, nix::sys::signal::Signal::SIGKILL);
            }
            #[cfg(windows)]
            if let Some(job) = job_of_task.upgrade() {
                let _ = job.terminate(1);
            }
            // Its last lines are read before its end is reported (a failure report
            // quotes them).
            let _ =
                tokio::time::timeout(Duration::from_secs(1), futures::future::join_all(readers))
                    .await;
            if let Some(path) = pid_path {
                let _ = std::fs::remove_file(path);
            }
            let _ = exit_tx.send(Some(info));
        });
        Ok(Started {
            endpoint: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            pid,
            logs,
            lines: Some(lines),
            exited: exited.clone(),
            control: Box::new(ProcessControl {
                pid,
                exited,
                #[cfg(windows)]
                job,
            }),
            not_ready_hint: None,
        })
    }
}

fn spawn_reader<R: AsyncRead + Unpin + Send + 'static>(
    mut reader: R,
    stream: LogStream,
    tx: broadcast::Sender<LogLine>,
    instance: String,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut lines = LineSplitter::new(stream, tx, instance);
        let mut buf = vec![0u8; 8192];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => lines.push(&buf[..n]),
            }
        }
        lines.finish();
    })
}

#[cfg(unix)]
fn exit_info(status: std::process::ExitStatus) -> ExitInfo {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => ExitInfo::Code(c),
        (None, Some(s)) => ExitInfo::Signal(s),
        _ => ExitInfo::Other(status.to_string()),
    }
}

#[cfg(not(unix))]
fn exit_info(status: std::process::ExitStatus) -> ExitInfo {
    match status.code() {
        Some(c) => ExitInfo::Code(c),
        None => ExitInfo::Other(status.to_string()),
    }
}

#[cfg(unix)]
fn kill_group(pgid: u32, signal: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid as i32), signal);
}

/// The limits of the app's runtime settings, for its handler's Job Object.
#[cfg(windows)]
fn windows_limits(spec: &InstanceSpec) -> std::io::Result<super::job::Limits> {
    let settings = strom_proto::runtime_settings::RuntimeSettings::parse(&spec.settings)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    Ok(super::job::Limits::new(
        settings.memory_mb,
        settings.nano_cpus,
        cpus,
    ))
}

/// The handler's Job Object, with `limits`, the handler in it.
#[cfg(windows)]
fn windows_job(
    limits: super::job::Limits,
    child: &tokio::process::Child,
) -> std::io::Result<super::job::Job> {
    let job = super::job::Job::new(limits)?;
    let handle = child
        .raw_handle()
        .ok_or_else(|| std::io::Error::other("the handler exited before it joined its job"))?;
    job.assign(handle)?;
    Ok(job)
}

struct ProcessControl {
    /// The process group to signal (Unix), the console process group (Windows).
    pid: Option<u32>,
    exited: watch::Receiver<Option<ExitInfo>>,
    /// Everything the handler started (Windows).
    #[cfg(windows)]
    job: std::sync::Arc<super::job::Job>,
}

async fn wait_exit(
    rx: &mut watch::Receiver<Option<ExitInfo>>,
    limit: Duration,
) -> Option<ExitInfo> {
    let waited = tokio::time::timeout(limit, rx.wait_for(|e| e.is_some())).await;
    match waited {
        Ok(Ok(v)) => v.clone(),
        _ => None,
    }
}

#[async_trait::async_trait]
impl InstanceControl for ProcessControl {
    async fn stop(&mut self, grace: Duration) -> ExitInfo {
        if let Some(info) = self.exited.borrow().clone() {
            return info;
        }
        #[cfg(unix)]
        if let Some(pid) = self.pid {
            kill_group(pid, nix::sys::signal::Signal::SIGTERM);
        }
        // Windows: a Ctrl-Break that cannot be sent (no console shared with the
        // handler, or Wine: ERROR_INVALID_ACCESS) tells the handler nothing, so
        // there is no grace period to wait out.
        #[cfg(windows)]
        let grace = match self.pid.map(super::job::ctrl_break) {
            Some(Ok(())) => grace,
            Some(Err(e)) => {
                tracing::debug!(pid = ?self.pid, "no Ctrl-Break to the handler ({e}): ending its job");
                Duration::ZERO
            }
            None => Duration::ZERO,
        };
        if let Some(info) = wait_exit(&mut self.exited, grace).await {
            return info;
        }
        #[cfg(unix)]
        if let Some(pid) = self.pid {
            kill_group(pid, nix::sys::signal::Signal::SIGKILL);
        }
        #[cfg(windows)]
        if let Err(e) = self.job.terminate(1) {
            tracing::warn!(pid = ?self.pid, "terminating the handler's job: {e}");
        }
        wait_exit(&mut self.exited, Duration::from_secs(10))
            .await
            .unwrap_or_else(|| ExitInfo::Other("did not exit after it was killed".into()))
    }
}

/// Process start time in clock ticks since boot, to recognise a pid later.
#[cfg(target_os = "linux")]
fn process_start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; fields after it follow `) `.
    let after = &stat[stat.rfind(')')? + 2..];
    after.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(not(target_os = "linux"))]
fn process_start_ticks(_pid: u32) -> Option<u64> {
    None
}

/// Kill the process groups of handlers a previous run of this node left behind
/// (after `kill -9` of the node, or a crash). Returns the pids killed.
pub fn reap_orphans(run_dir: &Path) -> Vec<u32> {
    let mut killed = Vec::new();
    let Ok(entries) = std::fs::read_dir(run_dir) else {
        return killed;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let record: Option<PidFile> = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        if let Some(r) = record {
            let alive_same = r.start_ticks.is_some() && process_start_ticks(r.pid) == r.start_ticks;
            if alive_same {
                #[cfg(unix)]
                kill_group(r.pid, nix::sys::signal::Signal::SIGKILL);
                tracing::warn!(pid = r.pid, instance = %r.instance, "killed a handler left over from a previous run");
                killed.push(r.pid);
            }
        }
        let _ = std::fs::remove_file(&path);
    }
    killed
}

#[cfg(all(test, windows))]
mod windows_tests {
    use super::*;
    use std::collections::BTreeMap;
    use strom_proto::ids::{AppName, VersionId};
    use strom_proto::manifest::CustomHandler;

    /// `ping` (on every Windows and in Wine) stands in for a handler that runs until
    /// stopped; it shrugs off Ctrl-Break, so a stop must end it through its job.
    fn spec(root: &Path) -> InstanceSpec {
        InstanceSpec {
            app: AppName::parse("win-test").unwrap(),
            version: VersionId::of_bytes(b"v1"),
            instance_id: "win-test-1".into(),
            app_root: root.to_path_buf(),
            handler: CustomHandler {
                default_executable_path: "ping.exe".into(),
                arguments: vec!["-n".into(), "120".into(), "127.0.0.1".into()],
                working_directory: None,
                enable_forwarding_http_request: false,
            },
            settings: BTreeMap::from([("STROM_MEMORY_MB".to_string(), "64".to_string())]),
        }
    }

    #[tokio::test]
    async fn a_handler_runs_in_its_job_and_a_stop_ends_it() {
        let run = tempfile::tempdir().unwrap();
        let root = tempfile::tempdir().unwrap();
        let runtime = ProcessRuntime::new(run.path()).unwrap();
        let mut started = runtime.start(&spec(root.path())).await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(started.exited.borrow().is_none(), "still running");
        let info = started.control.stop(Duration::from_millis(500)).await;
        assert_eq!(info, ExitInfo::Code(1), "ended by TerminateJobObject");
        assert!(started.exited.borrow().is_some());
        // Its pid file is gone with it.
        assert_eq!(std::fs::read_dir(run.path()).unwrap().count(), 0);
    }

    /// Refused before anything is spawned (nothing to clean up, no pid file).
    #[tokio::test]
    async fn bad_runtime_settings_start_nothing() {
        let run = tempfile::tempdir().unwrap();
        let root = tempfile::tempdir().unwrap();
        let mut spec = spec(root.path());
        spec.settings
            .insert("STROM_MEMORY_MB".to_string(), "lots".to_string());
        let runtime = ProcessRuntime::new(run.path()).unwrap();
        let e = runtime.start(&spec).await.err().expect("refused");
        assert!(e.to_string().contains("STROM_MEMORY_MB"), "{e}");
        assert_eq!(std::fs::read_dir(run.path()).unwrap().count(), 0);
    }
}
