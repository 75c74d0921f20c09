//! A server process a benchmark started, restartable, stopped when dropped.

use super::*;

/// A server process this section started, with what it takes to start it again
/// (same program, arguments and data dir). Its stdout and stderr go to `log`,
/// rewritten at every start. Dropping it stops it: SIGTERM, SIGKILL after 5 s.
pub(super) struct Daemon {
    pub(super) name: String,
    pub(super) program: PathBuf,
    pub(super) args: Vec<String>,
    pub(super) env: Vec<(&'static str, &'static str)>,
    pub(super) log: PathBuf,
    pub(super) child: Option<Child>,
}

impl Daemon {
    pub(super) fn start(
        name: String,
        program: &Path,
        args: Vec<String>,
        env: Vec<(&'static str, &'static str)>,
        log: PathBuf,
    ) -> anyhow::Result<Daemon> {
        let mut daemon = Daemon {
            name,
            program: program.to_path_buf(),
            args,
            env,
            log,
            child: None,
        };
        daemon.spawn()?;
        Ok(daemon)
    }

    pub(super) fn spawn(&mut self) -> anyhow::Result<()> {
        let out = File::create(&self.log).with_context(|| self.log.display().to_string())?;
        let child = Command::new(&self.program)
            .args(&self.args)
            .envs(self.env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {}: {}", self.name, self.program.display()))?;
        self.child = Some(child);
        Ok(())
    }

    pub(super) fn running(&self) -> bool {
        self.child.is_some()
    }

    pub(super) fn pid(&self) -> anyhow::Result<u32> {
        self.child
            .as_ref()
            .map(Child::id)
            .with_context(|| format!("{} is not running", self.name))
    }

    /// `kill -9`, and reap it.
    pub(super) fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// An error with the end of its output if it has exited.
    pub(super) fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(child) = &mut self.child {
            if let Some(status) = child.try_wait()? {
                self.child = None;
                bail!("{} exited ({status}):\n{}", self.name, self.log_tail());
            }
        }
        Ok(())
    }

    pub(super) fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Wait until its output has a line starting with `prefix`.
    pub(super) async fn wait_for_line(
        &mut self,
        prefix: &str,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            if text.lines().any(|l| l.starts_with(prefix)) {
                return Ok(());
            }
            self.check_alive()?;
            if Instant::now() > deadline {
                bail!(
                    "{}: no `{prefix}` line after {timeout:?}:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}
