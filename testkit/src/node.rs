//! A running `strom` process (`strom up` or `strom serve`) and client commands.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A binary of this build: `target/<profile>/<name>`, next to the running test or
/// benchmark (cargo builds a package's binaries before its integration tests).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the running executable");
    let mut dir = exe.parent().expect("its folder").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(path.is_file(), "{} is not built", path.display());
    path
}

/// The `strom` binary of this build.
pub fn strom_bin() -> PathBuf {
    binary("strom")
}

/// The repository's `examples/` folder.
pub fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

/// A running `strom up`.
pub struct Up {
    pub child: Child,
    pub server: String,
    pub http: String,
    pub stdout: Vec<String>,
    pub data_dir: PathBuf,
}

impl Up {
    pub fn start(data_dir: &Path, apps: &[&Path], extra: &[&str]) -> Up {
        Self::start_with(data_dir, apps, extra, true)
    }

    /// `pick_http_port`: pass `--http-addr 127.0.0.1:0` (else Strom chooses).
    pub fn start_with(data_dir: &Path, apps: &[&Path], extra: &[&str], pick_http_port: bool) -> Up {
        let mut cmd = Command::new(strom_bin());
        cmd.arg("up")
            .args(apps)
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--control-addr", "127.0.0.1:0"])
            .args(if pick_http_port {
                &["--http-addr", "127.0.0.1:0"][..]
            } else {
                &[][..]
            })
            .args(extra);
        Self::spawn(cmd, data_dir)
    }

    /// `strom serve` with these arguments (data dir and ports added).
    pub fn serve(data_dir: &Path, control_port: u16, args: &[&str]) -> Up {
        let mut cmd = Command::new(strom_bin());
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--control-addr", &format!("127.0.0.1:{control_port}")])
            .args(["--http-addr", "127.0.0.1:0"])
            .args(args);
        // Tests stop nodes often: no not-ready grace unless a test asks for one.
        if !args.contains(&"--shutdown-delay-secs") {
            cmd.env("STROM_SHUTDOWN_DELAY_SECS", "0");
        }
        Self::spawn(cmd, data_dir)
    }

    fn spawn(mut cmd: Command, data_dir: &Path) -> Up {
        cmd.env("STROM_LOG", "error,openraft=off")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("spawn strom");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut lines = Vec::new();
        let mut server = None;
        let mut http = None;
        loop {
            match rx.recv_timeout(Duration::from_secs(60)) {
                Ok(line) => {
                    if let Some(rest) = line.trim().strip_prefix("control:") {
                        server = rest.split_whitespace().next().map(str::to_string);
                    }
                    if let Some(rest) = line.trim().strip_prefix("functions:") {
                        http = rest.split_whitespace().next().map(str::to_string);
                    }
                    // "Ready." or, with an app that is not ready, "Started, but …".
                    let ready = line.starts_with("Ready.") || line.starts_with("Started, but");
                    lines.push(line);
                    if ready {
                        break;
                    }
                }
                Err(_) => panic!("strom up did not become ready; output so far: {lines:#?}"),
            }
        }
        Up {
            child,
            // A worker-only node has no control port.
            server: server.unwrap_or_default(),
            http: http.expect("strom up prints its function address"),
            stdout: lines,
            data_dir: data_dir.to_path_buf(),
        }
    }

    pub fn strom(&self, args: &[&str]) -> Out {
        self.strom_with(args, &[])
    }

    /// A client command against this node, with its data dir (so its admin token).
    pub fn strom_with(&self, args: &[&str], extra: &[&str]) -> Out {
        let data_dir = self.data_dir.to_string_lossy();
        let mut extra_args = vec!["--data-dir", data_dir.as_ref()];
        extra_args.extend_from_slice(extra);
        cli(&self.server, args, &extra_args)
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.strom_with(args, &["--output", "json"]);
        assert_eq!(out.code, 0, "{args:?}: {}", out.stderr);
        serde_json::from_str(&out.stdout).expect("json output")
    }

    pub fn stop(mut self) {
        #[cfg(unix)]
        {
            let _ = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status();
        }
        // Windows has no SIGTERM for a process of another console group: the node
        // is terminated, and its graceful stop is tested through Ctrl-C and the
        // service's stop (`.ci/windows/smoke`).
        #[cfg(not(unix))]
        let _ = self.child.kill();
        let deadline = std::time::Instant::now() + Duration::from_secs(90);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("strom did not stop within 90 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        #[cfg(unix)]
        assert!(
            status.success(),
            "strom up exits cleanly on SIGTERM: {status:?}"
        );
        #[cfg(not(unix))]
        let _ = status;
    }

    pub fn kill9(mut self) {
        self.child.kill().unwrap(); // SIGKILL
        let _ = self.child.wait();
    }
}

impl Drop for Up {
    /// A test that fails midway still stops the node cleanly (SIGTERM), so its
    /// handlers do not outlive the test; SIGKILL only if it does not stop in time.
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        #[cfg(unix)]
        {
            let _ = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status();
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while std::time::Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client command against `server` (control URL) with extra arguments.
pub fn cli(server: &str, args: &[&str], extra: &[&str]) -> Out {
    let out = Command::new(strom_bin())
        .args(args)
        .args(["--server", server])
        .args(extra)
        .output()
        .expect("run strom");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}
