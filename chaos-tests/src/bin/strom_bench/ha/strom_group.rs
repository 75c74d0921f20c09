//! A 3-node Strom management group of real processes on 127.0.0.1.

use super::*;

/// Strom management nodes (node id = index + 1), each started by `strom serve`.
pub(super) struct StromGroup {
    pub(super) bins: PathBuf,
    pub(super) dir: PathBuf,
    pub(super) nodes: Vec<Daemon>,
    pub(super) control_ports: Vec<u16>,
    pub(super) join_token: String,
    pub(super) admin_token: String,
    pub(super) auth: MetadataValue<Ascii>,
    /// Why starts of killed nodes failed (the node exited), and how often.
    pub(super) failed_starts: std::collections::BTreeMap<String, usize>,
    /// Restarts that needed more than one start.
    pub(super) retried_restarts: usize,
}

impl StromGroup {
    /// Bootstrap node 1, then join the others one by one.
    pub(super) async fn start(bins: &Path, dir: &Path, n: usize) -> anyhow::Result<StromGroup> {
        Self::start_with(bins, dir, n, &[]).await
    }

    /// As [`StromGroup::start`], every node with `extra` flags.
    pub(super) async fn start_with(
        bins: &Path,
        dir: &Path,
        n: usize,
        extra: &[String],
    ) -> anyhow::Result<StromGroup> {
        let control_ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let mut group = StromGroup {
            bins: bins.to_path_buf(),
            dir: dir.to_path_buf(),
            nodes: Vec::new(),
            control_ports,
            join_token: String::new(),
            admin_token: String::new(),
            auth: MetadataValue::from_static(""),
            failed_starts: Default::default(),
            retried_restarts: 0,
        };
        for i in 0..n {
            let data = dir.join(format!("strom-{}", i + 1));
            let mut args = vec![
                "serve".to_string(),
                "--node-id".into(),
                (i + 1).to_string(),
                "--roles".into(),
                "management".into(),
                "--data-dir".into(),
                data.display().to_string(),
                "--control-addr".into(),
                format!("127.0.0.1:{}", group.control_ports[i]),
                "--http-addr".into(),
                format!("127.0.0.1:{}", free_port()),
            ];
            args.extend(extra.iter().cloned());
            if i == 0 {
                args.push("--bootstrap".into());
            } else {
                args.extend([
                    "--join".into(),
                    group.url(0),
                    "--join-token".into(),
                    group.join_token.clone(),
                ]);
            }
            let mut node = Daemon::start(
                format!("strom node {}", i + 1),
                &bins.join("strom"),
                args,
                vec![("STROM_LOG", STROM_LOG), ("STROM_SHUTDOWN_DELAY_SECS", "0")],
                dir.join(format!("strom-{}.log", i + 1)),
            )?;
            node.wait_for_line("Ready.", Duration::from_secs(60))
                .await?;
            if i == 0 {
                let read = |file: &str| {
                    std::fs::read_to_string(data.join(file))
                        .map(|t| t.trim().to_string())
                        .with_context(|| format!("{}", data.join(file).display()))
                };
                group.join_token = read("join.token")?;
                group.admin_token = read("admin.token")?;
                group.auth = format!("Bearer {}", group.admin_token).parse()?;
            }
            group.nodes.push(node);
        }
        Ok(group)
    }

    pub(super) fn url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.control_ports[i])
    }

    pub(super) fn urls(&self) -> String {
        (0..self.control_ports.len())
            .map(|i| self.url(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub(super) async fn client(&self, i: usize) -> anyhow::Result<AdminServiceClient<Channel>> {
        let channel = Endpoint::from_shared(self.url(i))?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(1))
            .connect()
            .await
            .with_context(|| format!("connecting to {}", self.url(i)))?;
        Ok(AdminServiceClient::new(channel))
    }

    pub(super) fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request
            .metadata_mut()
            .insert("authorization", self.auth.clone());
        request
    }

    /// Node `i`'s status, or an error after 2 s.
    pub(super) async fn status(
        &self,
        i: usize,
        stale: bool,
    ) -> anyhow::Result<GetClusterStatusResponse> {
        let call = async {
            let mut client = self.client(i).await?;
            let request = self.request(GetClusterStatusRequest { stale });
            anyhow::Ok(client.get_cluster_status(request).await?.into_inner())
        };
        tokio::time::timeout(Duration::from_secs(2), call)
            .await
            .context("status timed out")?
    }

    /// Deploy the app in `dir` through the CLI (a zip upload), then set its scale.
    pub(super) async fn deploy(&self, dir: &Path, name: &str, scale: u32) -> anyhow::Result<()> {
        let leader = self.leader().await?;
        let out = Command::new(self.bins.join("strom"))
            .args(["app", "deploy"])
            .arg(dir)
            .args(["--name", name, "--server", &self.url(leader), "--token"])
            .arg(&self.admin_token)
            .output()?;
        if !out.status.success() {
            bail!(
                "strom app deploy {name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let request = self.request(ScaleAppRequest {
            name: name.into(),
            instances: scale,
        });
        self.client(leader)
            .await?
            .scale_app(request)
            .await
            .with_context(|| format!("scaling {name} to {scale}"))?;
        Ok(())
    }

    /// A worker-only node joining through every management node.
    pub(super) async fn start_worker(&self, id: u64) -> anyhow::Result<Daemon> {
        let args = vec![
            "serve".to_string(),
            "--node-id".into(),
            id.to_string(),
            "--roles".into(),
            "worker".into(),
            "--data-dir".into(),
            self.dir.join(format!("strom-{id}")).display().to_string(),
            "--control-addr".into(),
            format!("127.0.0.1:{}", free_port()),
            "--http-addr".into(),
            format!("127.0.0.1:{}", free_port()),
            "--join".into(),
            self.urls(),
            "--join-token".into(),
            self.join_token.clone(),
        ];
        let mut worker = Daemon::start(
            format!("strom worker {id}"),
            &self.bins.join("strom"),
            args,
            vec![("STROM_LOG", STROM_LOG), ("STROM_SHUTDOWN_DELAY_SECS", "0")],
            self.dir.join(format!("strom-{id}.log")),
        )?;
        worker
            .wait_for_line("Ready.", Duration::from_secs(60))
            .await?;
        Ok(worker)
    }

    /// The pid of `app`'s instance on worker `node` once the leader hears it Ready.
    pub(super) async fn wait_instance(&self, app: &str, node: u64) -> anyhow::Result<u32> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let leader = self.leader().await?;
            if let Ok(status) = self.status(leader, true).await {
                let ready = status.instances.iter().find(|i| {
                    i.app_name == app && i.node_id == node && i.state == "Ready" && i.pid != 0
                });
                if let Some(instance) = ready {
                    return Ok(instance.pid);
                }
            }
            if Instant::now() > deadline {
                bail!("{app}: no Ready instance on worker {node} after 60 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Replicated for StromGroup {
    const NAME: &'static str = "strom";

    fn members(&self) -> usize {
        self.nodes.len()
    }

    fn running(&self, member: usize) -> bool {
        self.nodes[member].running()
    }

    async fn is_leader(&self, member: usize) -> bool {
        let status = tokio::time::timeout(STATUS_TIMEOUT, self.status(member, true));
        matches!(status.await, Ok(Ok(s)) if s.state == "leader")
    }

    async fn writer(&self, member: usize) -> anyhow::Result<Writer> {
        Ok(Writer::Strom {
            client: self.client(member).await?,
            auth: self.auth.clone(),
        })
    }

    fn kill(&mut self, member: usize) -> anyhow::Result<()> {
        self.nodes[member].kill()
    }

    fn pid(&self, member: usize) -> anyhow::Result<u32> {
        self.nodes[member].pid()
    }

    async fn restart(&mut self, member: usize) -> anyhow::Result<()> {
        // A start can fail (the node exits at once): tried again every second
        // for up to a minute, each failure recorded for the report.
        let give_up = Instant::now() + Duration::from_secs(60);
        let mut failures = 0;
        loop {
            let node = &mut self.nodes[member];
            node.spawn()?;
            match node.wait_for_line("Ready.", Duration::from_secs(60)).await {
                Ok(()) => break,
                Err(e) if Instant::now() < give_up && !node.running() => {
                    failures += 1;
                    let reason = e.to_string();
                    let reason = reason.lines().last().unwrap_or_default().trim();
                    *self
                        .failed_starts
                        .entry(format!("node {}: {reason}", member + 1))
                        .or_default() += 1;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => return Err(e),
            }
        }
        if failures > 0 {
            self.retried_restarts += 1;
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.status(member, false).await {
                Ok(status) if status.leader_id.is_some() => return Ok(()),
                _ if Instant::now() > deadline => {
                    bail!(
                        "strom node {}: not caught up 30 s after a restart",
                        member + 1
                    )
                }
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }
}
