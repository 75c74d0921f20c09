//! `--perf DIR`: CPU profiles of Strom while a measurement runs, for flame graphs.
//! `perf record` samples the named processes (499 Hz, call stacks unwound from
//! DWARF, so a release build without frame pointers works) into `DIR/NAME.data`;
//! when `inferno-collapse-perf` and `inferno-flamegraph` are installed
//! (`cargo install inferno`), the samples are folded into `DIR/NAME.svg`.
//! Profiled measurements run slower (perf copies each sample's stack): a run with
//! `--perf` is for profiles, not figures.
//!
//! Profiled: the gateway at 32 connections (forwarding and JSON mode) and a
//! 3-member commit at 1 and 64 clients (all three members in one profile).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

static DIR: OnceLock<PathBuf> = OnceLock::new();

/// Profile into `dir` from now on.
pub fn profile_into(dir: PathBuf) -> anyhow::Result<()> {
    std::fs::create_dir_all(&dir)?;
    let perf = Command::new("perf")
        .arg("--version")
        .stdout(Stdio::null())
        .status();
    if !perf.is_ok_and(|s| s.success()) {
        anyhow::bail!("--perf: `perf` not found (Debian: apt-get install linux-perf)");
    }
    let _ = DIR.set(dir);
    Ok(())
}

/// A `perf record` under way.
pub struct Recording {
    child: Child,
    name: String,
}

/// Start recording `pids` as `name`, when `--perf` was given.
pub fn start(name: &str, pids: &[u32]) -> Option<Recording> {
    let dir = DIR.get()?;
    let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
    let data = dir.join(format!("{name}.data"));
    let _ = std::fs::remove_file(&data);
    let child = Command::new("perf")
        .args(["record", "-F", "499", "--call-graph", "dwarf,16384", "-p"])
        .arg(pids.join(","))
        .arg("-o")
        .arg(&data)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    match child {
        Ok(child) => {
            // perf writes its file's header once it has attached.
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while !data.is_file() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            Some(Recording {
                child,
                name: name.to_string(),
            })
        }
        Err(e) => {
            eprintln!("--perf: starting perf record for {name}: {e}");
            None
        }
    }
}

impl Recording {
    /// Stop recording, and draw the flame graph if inferno is installed.
    pub fn finish(mut self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        let dir = DIR.get().expect("recording only with --perf");
        let data = dir.join(format!("{}.data", self.name));
        let svg = dir.join(format!("{}.svg", self.name));
        let folded = Command::new("sh")
            .arg("-c")
            .arg(
                r#"perf script -i "$1" 2>/dev/null | inferno-collapse-perf | inferno-flamegraph --title "$2" --width 1600 > "$3""#,
            )
            .arg("sh")
            .arg(&data)
            .arg(&self.name)
            .arg(&svg)
            .status();
        match folded {
            Ok(s) if s.success() => eprintln!("--perf: {}", svg.display()),
            _ => eprintln!(
                "--perf: {} kept; no flame graph (cargo install inferno)",
                data.display()
            ),
        }
    }
}
