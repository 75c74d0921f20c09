//! Windows Job Objects for the process runtime: each handler runs in a job of its
//! own, so that
//!
//! - it dies with its node, even when the node is killed (`JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE`:
//!   Windows closes the node's handles when it ends, and closing the last handle
//!   of the job ends every process in it, the handler's children too);
//! - a stop reaches all of it (`TerminateJobObject`, after a console Ctrl-Break to
//!   the handler's process group and the grace period);
//! - `STROM_MEMORY_MB` and `STROM_CONTAINER_CPUS` are enforced (job memory limit,
//!   hard-capped CPU rate), as the Docker runtime enforces them on Linux.
//!
//! The only `unsafe` of the runtime: calls into `kernel32` through `windows-sys`
//! (no maintained safe wrapper covers CPU rates and termination; `win32job` stops at
//! the extended limits). Each call's safety is stated where it is made.

#![allow(unsafe_code)]

use std::io;
use std::os::windows::io::{AsRawHandle, FromRawHandle, OwnedHandle, RawHandle};

use windows_sys::Win32::System::Console::{
    AllocConsole, GenerateConsoleCtrlEvent, CTRL_BREAK_EVENT,
};
use windows_sys::Win32::System::JobObjects::{
    AssignProcessToJobObject, CreateJobObjectW, JobObjectCpuRateControlInformation,
    JobObjectExtendedLimitInformation, SetInformationJobObject, TerminateJobObject,
    JOBOBJECTINFOCLASS, JOBOBJECT_CPU_RATE_CONTROL_INFORMATION,
    JOBOBJECT_EXTENDED_LIMIT_INFORMATION, JOB_OBJECT_CPU_RATE_CONTROL_ENABLE,
    JOB_OBJECT_CPU_RATE_CONTROL_HARD_CAP, JOB_OBJECT_LIMIT_JOB_MEMORY,
    JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE,
};

/// `CREATE_NEW_PROCESS_GROUP`: the handler leads a console process group of its
/// own, which a Ctrl-Break can be sent to without reaching the node.
pub const NEW_PROCESS_GROUP: u32 = windows_sys::Win32::System::Threading::CREATE_NEW_PROCESS_GROUP;

/// What a job enforces, from the app's runtime settings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of committed memory for the whole job.
    pub memory_bytes: Option<u64>,
    /// Share of the whole machine in 1/100 of a percent (1..=10000), hard-capped.
    pub cpu_rate: Option<u32>,
}

impl Limits {
    /// `memory_mb` (0 = none) and `nano_cpus` (CPUs × 10⁹) on a machine of `cpus`.
    pub fn new(memory_mb: Option<u64>, nano_cpus: Option<i64>, cpus: usize) -> Limits {
        let cpu_rate = nano_cpus.filter(|n| *n > 0).map(|n| {
            let share = n as f64 / 1e9 / cpus.max(1) as f64;
            (share * 10_000.0).round().clamp(1.0, 10_000.0) as u32
        });
        Limits {
            memory_bytes: memory_mb.filter(|m| *m > 0).map(|m| m * 1024 * 1024),
            cpu_rate,
        }
    }
}

/// A job object; dropping it closes its handle, which ends every process still in
/// it (kill-on-close).
#[derive(Debug)]
pub struct Job {
    handle: OwnedHandle,
}

fn check(ok: i32) -> io::Result<()> {
    if ok == 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl Job {
    /// A new anonymous job with kill-on-close and `limits`.
    pub fn new(limits: Limits) -> io::Result<Job> {
        // SAFETY: both arguments may be null (default security, no name); the
        // result is a new handle we own, or null on failure.
        let raw = unsafe { CreateJobObjectW(std::ptr::null(), std::ptr::null()) };
        if raw.is_null() {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a valid job handle that nothing else owns.
        let job = Job {
            handle: unsafe { OwnedHandle::from_raw_handle(raw as RawHandle) },
        };
        let mut info = JOBOBJECT_EXTENDED_LIMIT_INFORMATION::default();
        info.BasicLimitInformation.LimitFlags = JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE;
        if let Some(bytes) = limits.memory_bytes {
            info.BasicLimitInformation.LimitFlags |= JOB_OBJECT_LIMIT_JOB_MEMORY;
            info.JobMemoryLimit = usize::try_from(bytes).unwrap_or(usize::MAX);
        }
        job.set(JobObjectExtendedLimitInformation, &info)?;
        if let Some(rate) = limits.cpu_rate {
            let mut cpu = JOBOBJECT_CPU_RATE_CONTROL_INFORMATION {
                ControlFlags: JOB_OBJECT_CPU_RATE_CONTROL_ENABLE
                    | JOB_OBJECT_CPU_RATE_CONTROL_HARD_CAP,
                ..Default::default()
            };
            cpu.Anonymous.CpuRate = rate;
            job.set(JobObjectCpuRateControlInformation, &cpu)
                // Refused by Windows before 8 / Server 2012, and by Wine 8.
                .map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("CPU rate limit (STROM_CONTAINER_CPUS): {e}"),
                    )
                })?;
        }
        Ok(job)
    }

    fn raw(&self) -> windows_sys::Win32::Foundation::HANDLE {
        self.handle.as_raw_handle() as _
    }

    /// Set one class of the job's information. `info` must be the structure that
    /// `class` names (the two callers above pair them as the Windows docs say).
    fn set<T>(&self, class: JOBOBJECTINFOCLASS, info: &T) -> io::Result<()> {
        // SAFETY: the pointer and size describe `info`, alive for the call, of the
        // type `class` requires; the handle is owned by `self`.
        check(unsafe {
            SetInformationJobObject(
                self.raw(),
                class,
                (info as *const T).cast(),
                std::mem::size_of::<T>() as u32,
            )
        })
    }

    /// Put a process (by its handle) in the job; its children started after this
    /// are in it too.
    pub fn assign(&self, process: RawHandle) -> io::Result<()> {
        // SAFETY: both handles are valid for the duration of the call: ours is owned
        // by `self`, the process handle by its `Child`, which the caller holds.
        check(unsafe { AssignProcessToJobObject(self.raw(), process as _) })
    }

    /// End every process in the job with `exit_code`.
    pub fn terminate(&self, exit_code: u32) -> io::Result<()> {
        // SAFETY: the handle is owned by `self` and valid.
        check(unsafe { TerminateJobObject(self.raw(), exit_code) })
    }
}

/// Send Ctrl-Break to the console process group led by `pid` (started with
/// [`NEW_PROCESS_GROUP`]): the Windows counterpart of SIGTERM, which console
/// programs (Node.js, Python, .NET, Go) handle as a request to stop.
pub fn ctrl_break(pid: u32) -> io::Result<()> {
    // SAFETY: no pointers; an unknown group is an error return, not undefined.
    check(unsafe { GenerateConsoleCtrlEvent(CTRL_BREAK_EVENT, pid) })
}

/// Whether process `pid` is running: it exists, this process may wait on it, and it
/// has not exited (for tests and diagnostics; a pid can be reused).
pub fn running(pid: u32) -> bool {
    use windows_sys::Win32::Foundation::{CloseHandle, WAIT_TIMEOUT};
    use windows_sys::Win32::System::Threading::{
        OpenProcess, WaitForSingleObject, PROCESS_SYNCHRONIZE,
    };
    // SAFETY: no pointers; a pid that names no process is a null return.
    let handle = unsafe { OpenProcess(PROCESS_SYNCHRONIZE, 0, pid) };
    if handle.is_null() {
        return false;
    }
    // SAFETY: `handle` is the valid process handle opened above; a zero timeout
    // only polls whether the process has ended.
    let waited = unsafe { WaitForSingleObject(handle, 0) };
    // SAFETY: `handle` was opened above and is closed once, here.
    unsafe { CloseHandle(handle) };
    waited == WAIT_TIMEOUT
}

/// Whether this runs under Wine (which CI tests with; it lacks some of what Windows
/// enforces): Wine keeps stand-ins of its own programs in system32, Windows has no
/// winecfg.
pub fn under_wine() -> bool {
    std::path::Path::new(r"C:\windows\system32\winecfg.exe").exists()
}

/// Give this process a console (hidden: a service has no desktop) that the handlers
/// it starts share, so that [`ctrl_break`] reaches them. A node run from a console
/// has one already; a Windows service has none. Fails if the process has one.
pub fn alloc_console() -> io::Result<()> {
    // SAFETY: no arguments; failure is an error return.
    check(unsafe { AllocConsole() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_come_from_the_runtime_settings() {
        assert_eq!(Limits::new(None, None, 4), Limits::default());
        assert_eq!(Limits::new(Some(0), Some(0), 4), Limits::default());
        let l = Limits::new(Some(256), Some(500_000_000), 2);
        assert_eq!(l.memory_bytes, Some(256 * 1024 * 1024));
        assert_eq!(l.cpu_rate, Some(2_500), "half a CPU of two: 25 %");
        // More CPUs than the machine has: the whole machine.
        assert_eq!(
            Limits::new(None, Some(8_000_000_000), 2).cpu_rate,
            Some(10_000)
        );
    }

    /// `cmd.exe` reading commands from a pipe we keep open: it runs until killed.
    fn waiting_process() -> (std::process::Child, std::process::ChildStdin) {
        let mut child = std::process::Command::new("cmd.exe")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        (child, stdin)
    }

    fn ends_within(child: &mut std::process::Child, limit: std::time::Duration) -> bool {
        let start = std::time::Instant::now();
        while start.elapsed() < limit {
            if child.try_wait().unwrap().is_some() {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        false
    }

    #[test]
    fn a_job_ends_its_processes_when_terminated_and_when_dropped() {
        // (A memory limit is accepted by Wine 8 but not enforced; not asserted here.)
        let job = Job::new(Limits::new(Some(64), None, 2)).unwrap();
        let (mut first, _stdin) = waiting_process();
        job.assign(first.as_raw_handle()).unwrap();
        assert!(first.try_wait().unwrap().is_none(), "it waits for input");
        job.terminate(42).unwrap();
        assert_eq!(first.wait().unwrap().code(), Some(42));

        let job = Job::new(Limits::default()).unwrap();
        let (mut second, _stdin) = waiting_process();
        job.assign(second.as_raw_handle()).unwrap();
        drop(job);
        assert!(
            ends_within(&mut second, std::time::Duration::from_secs(10)),
            "killed when its job's last handle closed"
        );
    }

    #[test]
    fn a_cpu_rate_is_set_or_its_refusal_named() {
        let job = Job::new(Limits::new(None, Some(500_000_000), 2));
        if under_wine() {
            // Wine 8 refuses CPU rate control (ERROR_INVALID_PARAMETER).
            let e = job.unwrap_err();
            assert!(e.to_string().contains("STROM_CONTAINER_CPUS"), "{e}");
        } else {
            job.unwrap();
        }
    }
}
