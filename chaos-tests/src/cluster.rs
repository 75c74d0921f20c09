//! A Strom cluster in Docker containers, driven through the Engine API (bollard).
//!
//! Each run gets its own bridge network with a fixed subnet (so a node keeps its
//! address across a kill, a reconnect or an upgrade), one named volume per node for
//! its data dir, and containers named `strom-chaos-<run>-<node>`. Nodes reach each
//! other by name (the network alias is the node's name); the harness reaches them at
//! their addresses on the bridge. Everything carries the label `strom-chaos.run`, and
//! [`teardown`] removes it all, also after a failed run; [`sweep_stale`] removes what
//! a run that died (its process gone) left.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bollard::models::{
    ContainerCreateBody, EndpointIpamConfig, EndpointSettings, HostConfig, Ipam, IpamConfig,
    NetworkConnectRequest, NetworkCreateRequest, NetworkDisconnectRequest, NetworkingConfig,
    VolumeCreateRequest,
};
use bollard::query_parameters::{
    BuildImageOptionsBuilder, CreateContainerOptionsBuilder, DownloadFromContainerOptionsBuilder,
    KillContainerOptionsBuilder, ListContainersOptionsBuilder, ListImagesOptionsBuilder,
    ListNetworksOptionsBuilder, ListVolumesOptionsBuilder, LogsOptionsBuilder,
    RemoveContainerOptionsBuilder, RemoveImageOptionsBuilder, RemoveVolumeOptionsBuilder,
    StopContainerOptionsBuilder,
};
use bollard::Docker;
use futures::StreamExt;
use strom_proto::admin_v1::admin_service_client::AdminServiceClient;
use strom_proto::admin_v1::GetClusterStatusResponse;
use tonic::transport::{Channel, Endpoint};

pub const LABEL_RUN: &str = "strom-chaos.run";
pub const LABEL_PID: &str = "strom-chaos.pid";
pub const CONTROL_PORT: u16 = 7171;
pub const HTTP_PORT: u16 = 7071;
/// Versions each app keeps: low, so that a run's deploys exercise retention.
pub const KEEP_VERSIONS: usize = 5;
/// The managers' checkpoint store, a folder in the shared folder.
pub const CHECKPOINTS: &str = "checkpoints";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Manager,
    Worker,
}

#[derive(Debug, Clone)]
pub struct Node {
    pub id: u64,
    /// `m1`…, `w1`…: the host name other nodes use.
    pub name: String,
    pub role: Role,
    /// Last octet of its address on the run's networks.
    pub octet: u8,
    /// The image of its current container.
    pub image: String,
}

/// The run's images: the build the cluster starts on, and the one a rolling upgrade
/// moves it to.
#[derive(Debug, Clone)]
pub struct Images {
    pub base: String,
    pub next: String,
}

pub struct Cluster {
    pub docker: Docker,
    pub run: String,
    pub nodes: Vec<Node>,
    pub images: Images,
    /// `a.b.c` of the main network's /24.
    prefix: String,
    network: String,
    /// The second network of a split, while one is in place.
    island: Option<(String, String)>,
    pub admin_token: String,
    pub join_token: String,
    pub log_filter: String,
    /// A host folder every node sees at `/shared` (the timer apps' run records,
    /// the managers' checkpoint store).
    pub shared: Option<std::path::PathBuf>,
}

/// A file of the image's root filesystem.
struct RootFile {
    path: String,
    data: Vec<u8>,
    mode: u32,
}

/// The files of an image that runs `strom` (linked dynamically) on `FROM scratch`:
/// the binary (without debug info) and the shared libraries `ldd` names, at their
/// paths, plus an empty `/tmp`.
fn root_files(strom: &Path, work: &Path) -> anyhow::Result<Vec<RootFile>> {
    let stripped = work.join("strom");
    let status = std::process::Command::new("strip")
        .args(["--strip-debug", "-o"])
        .arg(&stripped)
        .arg(strom)
        .status();
    let binary = match status {
        Ok(s) if s.success() => std::fs::read(&stripped)?,
        _ => std::fs::read(strom).with_context(|| format!("reading {}", strom.display()))?,
    };
    let mut files = vec![RootFile {
        path: "strom".into(),
        data: binary,
        mode: 0o755,
    }];
    let ldd = std::process::Command::new("ldd")
        .arg(strom)
        .output()
        .context("running ldd (the image carries the binary's shared libraries)")?;
    let text = String::from_utf8_lossy(&ldd.stdout);
    for line in text.lines() {
        // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)` or
        // `/lib64/ld-linux-x86-64.so.2 (0x…)`; `linux-vdso.so.1` has no file.
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        let Some(path) = path.filter(|p| p.starts_with('/')) else {
            continue;
        };
        let real = std::fs::canonicalize(path).with_context(|| format!("library {path}"))?;
        files.push(RootFile {
            path: path.trim_start_matches('/').to_string(),
            data: std::fs::read(&real)?,
            mode: 0o755,
        });
    }
    Ok(files)
}

/// Build the run's two images from `strom` (`from` for the base when given: an older
/// build to upgrade from). The `next` image is labelled as the newer build.
pub async fn build_images(
    docker: &Docker,
    run: &str,
    strom: &Path,
    from: Option<&Path>,
    work: &Path,
) -> anyhow::Result<Images> {
    let images = Images {
        base: format!("strom-chaos:{run}-base"),
        next: format!("strom-chaos:{run}-next"),
    };
    for (tag, binary, build) in [
        (&images.base, from.unwrap_or(strom), "base"),
        (&images.next, strom, "next"),
    ] {
        let dir = work.join(build);
        std::fs::create_dir_all(&dir)?;
        let files = root_files(binary, &dir)?;
        let mut tar = tar::Builder::new(Vec::new());
        let dockerfile = format!(
            "FROM scratch\nCOPY rootfs/ /\nLABEL {LABEL_RUN}={run} strom-chaos.build={build}\nENTRYPOINT [\"/strom\"]\n"
        );
        let mut add = |path: &str, data: &[u8], mode: u32, dir: bool| -> anyhow::Result<()> {
            let mut header = tar::Header::new_gnu();
            header.set_mode(mode);
            header.set_mtime(0);
            if dir {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_size(0);
            } else {
                header.set_size(data.len() as u64);
            }
            tar.append_data(&mut header, path, data)?;
            Ok(())
        };
        add("Dockerfile", dockerfile.as_bytes(), 0o644, false)?;
        add("rootfs/tmp/", &[], 0o1777, true)?;
        add("rootfs/data/", &[], 0o755, true)?;
        for f in &files {
            add(&format!("rootfs/{}", f.path), &f.data, f.mode, false)?;
        }
        let context = tar.into_inner()?;
        let options = BuildImageOptionsBuilder::new()
            .dockerfile("Dockerfile")
            .t(tag)
            .rm(true)
            .forcerm(true)
            .build();
        let mut stream =
            docker.build_image(options, None, Some(bollard::body_full(context.into())));
        while let Some(step) = stream.next().await {
            let info = step.with_context(|| format!("building image {tag}"))?;
            if let Some(message) = info.error_detail.and_then(|d| d.message) {
                bail!("building image {tag}: {message}");
            }
        }
    }
    Ok(images)
}

fn labels(run: &str) -> HashMap<String, String> {
    HashMap::from([
        (LABEL_RUN.to_string(), run.to_string()),
        (LABEL_PID.to_string(), std::process::id().to_string()),
    ])
}

/// Create a bridge network on a free /24 of 172.30.0.0/16; returns its `a.b.c`.
async fn create_network(docker: &Docker, name: &str, run: &str) -> anyhow::Result<String> {
    let mut last = String::new();
    let start = (std::process::id() % 250) as u16;
    for i in 0..250u16 {
        let third = (start + i) % 250 + 1;
        let prefix = format!("172.30.{third}");
        let request = NetworkCreateRequest {
            name: name.to_string(),
            driver: Some("bridge".into()),
            ipam: Some(Ipam {
                config: Some(vec![IpamConfig {
                    subnet: Some(format!("{prefix}.0/24")),
                    gateway: Some(format!("{prefix}.1")),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            labels: Some(labels(run)),
            ..Default::default()
        };
        match docker.create_network(request).await {
            Ok(_) => return Ok(prefix),
            Err(e) => last = e.to_string(),
        }
    }
    bail!("no free /24 in 172.30.0.0/16 for network {name}: {last}")
}

impl Cluster {
    /// Create the network and volumes; no node runs yet.
    pub async fn create(
        docker: Docker,
        run: &str,
        images: Images,
        managers: usize,
        workers: usize,
    ) -> anyhow::Result<Cluster> {
        let network = format!("strom-chaos-{run}");
        let prefix = create_network(&docker, &network, run).await?;
        let mut nodes = Vec::new();
        for i in 0..managers {
            nodes.push(Node {
                id: i as u64 + 1,
                name: format!("m{}", i + 1),
                role: Role::Manager,
                octet: 10 + i as u8,
                image: images.base.clone(),
            });
        }
        for i in 0..workers {
            nodes.push(Node {
                id: 11 + i as u64,
                name: format!("w{}", i + 1),
                role: Role::Worker,
                octet: 50 + i as u8,
                image: images.base.clone(),
            });
        }
        for node in &nodes {
            docker
                .create_volume(VolumeCreateRequest {
                    name: Some(format!("strom-chaos-{run}-{}", node.name)),
                    labels: Some(labels(run)),
                    ..Default::default()
                })
                .await
                .with_context(|| format!("creating the volume of {}", node.name))?;
        }
        Ok(Cluster {
            docker,
            run: run.to_string(),
            nodes,
            images,
            prefix,
            network,
            island: None,
            admin_token: String::new(),
            join_token: String::new(),
            log_filter: "info,openraft=warn".into(),
            shared: None,
        })
    }

    /// The host's address on the main network (its gateway).
    pub fn gateway_ip(&self) -> String {
        format!("{}.1", self.prefix)
    }

    pub fn container(&self, i: usize) -> String {
        format!("strom-chaos-{}-{}", self.run, self.nodes[i].name)
    }

    pub fn ip(&self, i: usize) -> String {
        format!("{}.{}", self.prefix, self.nodes[i].octet)
    }

    /// Where node `i`'s address is now: the island while it is on one.
    pub fn reachable_ip(&self, i: usize, on_island: bool) -> String {
        match (&self.island, on_island) {
            (Some((_, prefix)), true) => format!("{prefix}.{}", self.nodes[i].octet),
            _ => self.ip(i),
        }
    }

    pub fn managers(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.nodes.len()).filter(|&i| self.nodes[i].role == Role::Manager)
    }

    pub fn workers(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.nodes.len()).filter(|&i| self.nodes[i].role == Role::Worker)
    }

    pub fn index_of(&self, id: u64) -> Option<usize> {
        self.nodes.iter().position(|n| n.id == id)
    }

    fn join_urls(&self) -> String {
        self.managers()
            .map(|m| format!("http://{}:{CONTROL_PORT}", self.nodes[m].name))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn args(&self, i: usize, bootstrap: bool) -> Vec<String> {
        let node = &self.nodes[i];
        let mut args: Vec<String> = vec![
            "serve".into(),
            "--node-id".into(),
            node.id.to_string(),
            "--data-dir".into(),
            "/data".into(),
            "--http-addr".into(),
            format!("0.0.0.0:{HTTP_PORT}"),
            "--advertise-http-addr".into(),
            format!("{}:{HTTP_PORT}", node.name),
            "--worker-lease-ms".into(),
            "3000".into(),
        ];
        match node.role {
            Role::Manager => args.extend([
                "--roles".into(),
                "management".into(),
                "--control-addr".into(),
                format!("0.0.0.0:{CONTROL_PORT}"),
                "--advertise-addr".into(),
                format!("{}:{CONTROL_PORT}", node.name),
            ]),
            Role::Worker => args.extend(["--roles".into(), "worker".into()]),
        }
        if bootstrap {
            args.push("--bootstrap".into());
        } else {
            args.extend([
                "--join".into(),
                self.join_urls(),
                "--join-token".into(),
                self.join_token.clone(),
            ]);
        }
        args
    }

    /// Create and start node `i`'s container (a new one: first start or upgrade).
    pub async fn start_new(&self, i: usize, bootstrap: bool) -> anyhow::Result<()> {
        let node = &self.nodes[i];
        let name = self.container(i);
        let endpoint = EndpointSettings {
            ipam_config: Some(EndpointIpamConfig {
                ipv4_address: Some(self.ip(i)),
                ..Default::default()
            }),
            aliases: Some(vec![node.name.clone()]),
            ..Default::default()
        };
        let body = ContainerCreateBody {
            image: Some(node.image.clone()),
            cmd: Some(self.args(i, bootstrap)),
            hostname: Some(node.name.clone()),
            env: Some(
                vec![
                    format!("STROM_LOG={}", self.log_filter),
                    "STROM_WORKER_THREADS=2".into(),
                    // A variable, not a flag: an older build (`--from-binary`) ignores it.
                    format!("STROM_KEEP_VERSIONS={KEEP_VERSIONS}"),
                    // No load balancer watches `/readyz` here: a short not-ready grace.
                    "STROM_SHUTDOWN_DELAY_SECS=1".into(),
                ]
                .into_iter()
                // Managers checkpoint to the shared folder, often (variables too).
                .chain(
                    (node.role == Role::Manager && self.shared.is_some())
                        .then(|| {
                            [
                                format!("STROM_CHECKPOINT_STORE=local:/shared/{CHECKPOINTS}"),
                                "STROM_CHECKPOINT_EVERY=2s".to_string(),
                                "STROM_CHECKPOINT_EVERY_ENTRIES=200".to_string(),
                            ]
                        })
                        .into_iter()
                        .flatten(),
                )
                .collect(),
            ),
            labels: Some(labels(&self.run)),
            host_config: Some(HostConfig {
                binds: Some(
                    std::iter::once(format!("strom-chaos-{}-{}:/data", self.run, node.name))
                        .chain(
                            self.shared
                                .iter()
                                .map(|dir| format!("{}:/shared", dir.display())),
                        )
                        .collect(),
                ),
                network_mode: Some(self.network.clone()),
                init: Some(true),
                ..Default::default()
            }),
            networking_config: Some(NetworkingConfig {
                endpoints_config: Some(HashMap::from([(self.network.clone(), endpoint)])),
            }),
            ..Default::default()
        };
        self.docker
            .create_container(
                Some(CreateContainerOptionsBuilder::new().name(&name).build()),
                body,
            )
            .await
            .with_context(|| format!("creating container {name}"))?;
        self.docker
            .start_container(&name, None)
            .await
            .with_context(|| format!("starting container {name}"))?;
        Ok(())
    }

    /// Start the stopped (killed) container of node `i` again: same data, same address.
    pub async fn restart(&self, i: usize) -> anyhow::Result<()> {
        let name = self.container(i);
        self.docker
            .start_container(&name, None)
            .await
            .with_context(|| format!("restarting {name}"))
    }

    pub async fn kill(&self, i: usize) -> anyhow::Result<()> {
        let name = self.container(i);
        self.docker
            .kill_container(
                &name,
                Some(KillContainerOptionsBuilder::new().signal("KILL").build()),
            )
            .await
            .with_context(|| format!("kill -9 {name}"))
    }

    /// Freeze node `i`. The engine's cgroup freezer can fail transiently under heavy
    /// load ("unable to freeze"); that is retried a few times before giving up.
    pub async fn pause(&self, i: usize) -> anyhow::Result<()> {
        let name = self.container(i);
        self.retry_engine(|| self.docker.pause_container(&name))
            .await
            .with_context(|| format!("pausing {name}"))
    }

    pub async fn unpause(&self, i: usize) -> anyhow::Result<()> {
        let name = self.container(i);
        self.retry_engine(|| self.docker.unpause_container(&name))
            .await
            .with_context(|| format!("unpausing {name}"))
    }

    /// Run an engine call up to five times, 500 ms apart, returning the last error.
    async fn retry_engine<F, Fut>(&self, call: F) -> Result<(), bollard::errors::Error>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<(), bollard::errors::Error>>,
    {
        let mut attempt = 1;
        loop {
            match call().await {
                Ok(()) => return Ok(()),
                Err(e) if attempt >= 5 => return Err(e),
                Err(_) => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }

    /// Take node `i` off the network: no traffic in or out.
    pub async fn disconnect(&self, i: usize) -> anyhow::Result<()> {
        self.disconnect_from(i, &self.network).await
    }

    async fn disconnect_from(&self, i: usize, network: &str) -> anyhow::Result<()> {
        self.docker
            .disconnect_network(
                network,
                NetworkDisconnectRequest {
                    container: self.container(i),
                    force: Some(true),
                },
            )
            .await
            .with_context(|| format!("disconnecting {} from {network}", self.nodes[i].name))
    }

    /// Put node `i` back, at its own address.
    pub async fn reconnect(&self, i: usize) -> anyhow::Result<()> {
        self.connect(i, &self.network, &self.ip(i)).await
    }

    async fn connect(&self, i: usize, network: &str, ip: &str) -> anyhow::Result<()> {
        self.docker
            .connect_network(
                network,
                NetworkConnectRequest {
                    container: self.container(i),
                    endpoint_config: Some(EndpointSettings {
                        ipam_config: Some(EndpointIpamConfig {
                            ipv4_address: Some(ip.to_string()),
                            ..Default::default()
                        }),
                        aliases: Some(vec![self.nodes[i].name.clone()]),
                        ..Default::default()
                    }),
                },
            )
            .await
            .with_context(|| format!("connecting {} to {network}", self.nodes[i].name))
    }

    /// Split the cluster: `minority` moves to a network of its own, where its nodes
    /// still reach each other by name, and nothing else.
    pub async fn split(&mut self, minority: &[usize]) -> anyhow::Result<()> {
        if self.island.is_some() {
            bail!("a split is already in place");
        }
        let name = format!("strom-chaos-{}-island", self.run);
        let prefix = create_network(&self.docker, &name, &self.run).await?;
        self.island = Some((name.clone(), prefix.clone()));
        for &i in minority {
            self.disconnect(i).await?;
            let ip = format!("{prefix}.{}", self.nodes[i].octet);
            self.connect(i, &name, &ip).await?;
        }
        Ok(())
    }

    /// Undo [`Cluster::split`]: every node back on the main network.
    pub async fn heal_split(&mut self, minority: &[usize]) -> anyhow::Result<()> {
        let Some((name, _)) = self.island.clone() else {
            return Ok(());
        };
        for &i in minority {
            self.disconnect_from(i, &name).await?;
            self.reconnect(i).await?;
        }
        self.docker
            .remove_network(&name)
            .await
            .with_context(|| format!("removing {name}"))?;
        self.island = None;
        Ok(())
    }

    /// Undo whatever a failed plan left in place (best effort): every node off the
    /// island, unpaused, on the main network, started.
    pub async fn heal_all(&mut self) {
        let island = self.island.take();
        for i in 0..self.nodes.len() {
            if let Some((name, _)) = &island {
                let _ = self.disconnect_from(i, name).await;
            }
            let _ = self.unpause(i).await;
            let _ = self.reconnect(i).await;
            let _ = self.restart(i).await;
        }
        if let Some((name, _)) = island {
            let _ = self.docker.remove_network(&name).await;
        }
    }

    /// Stop node `i` gracefully (SIGTERM, then SIGKILL after `grace`) and remove its
    /// container; its volume stays.
    pub async fn stop_and_remove(&self, i: usize, grace: Duration) -> anyhow::Result<()> {
        let name = self.container(i);
        self.docker
            .stop_container(
                &name,
                Some(
                    StopContainerOptionsBuilder::new()
                        .t(grace.as_secs() as i32)
                        .build(),
                ),
            )
            .await
            .with_context(|| format!("stopping {name}"))?;
        self.docker
            .remove_container(
                &name,
                Some(RemoveContainerOptionsBuilder::new().force(true).build()),
            )
            .await
            .with_context(|| format!("removing {name}"))
    }

    /// A file from node `i`'s container.
    pub async fn read_file(&self, i: usize, path: &str) -> anyhow::Result<String> {
        let name = self.container(i);
        let mut stream = self.docker.download_from_container(
            &name,
            Some(
                DownloadFromContainerOptionsBuilder::new()
                    .path(path)
                    .build(),
            ),
        );
        let mut bytes = Vec::new();
        while let Some(chunk) = stream.next().await {
            bytes.extend_from_slice(&chunk.with_context(|| format!("{name}:{path}"))?);
        }
        let mut archive = tar::Archive::new(bytes.as_slice());
        let Some(entry) = archive.entries()?.next() else {
            bail!("{name}:{path}: empty archive")
        };
        let mut text = String::new();
        std::io::Read::read_to_string(&mut entry?, &mut text)?;
        Ok(text.trim().to_string())
    }

    /// The last `lines` lines of node `i`'s output.
    pub async fn log_tail(&self, i: usize, lines: usize) -> String {
        let name = self.container(i);
        let mut stream = self.docker.logs(
            &name,
            Some(
                LogsOptionsBuilder::new()
                    .stdout(true)
                    .stderr(true)
                    .tail(&lines.to_string())
                    .build(),
            ),
        );
        let mut text = String::new();
        while let Some(Ok(chunk)) = stream.next().await {
            text.push_str(&chunk.to_string());
        }
        text
    }

    /// An admin API client of manager `i` (the request still needs the token).
    pub async fn client(&self, i: usize) -> anyhow::Result<AdminServiceClient<Channel>> {
        self.client_at(&self.ip(i)).await
    }

    pub async fn client_at(&self, ip: &str) -> anyhow::Result<AdminServiceClient<Channel>> {
        let url = format!("http://{ip}:{CONTROL_PORT}");
        let channel = Endpoint::from_shared(url.clone())?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_millis(700))
            .timeout(Duration::from_secs(8))
            .connect()
            .await
            .with_context(|| format!("connecting to {url}"))?;
        Ok(AdminServiceClient::new(channel)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20))
    }

    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Ok(v) = format!("Bearer {}", self.admin_token).parse() {
            request.metadata_mut().insert("authorization", v);
        }
        request
    }

    /// Manager `i`'s status (`stale`: its local view), within 2 s.
    pub async fn status(&self, i: usize, stale: bool) -> anyhow::Result<GetClusterStatusResponse> {
        let call = async {
            let mut client = self.client(i).await?;
            let request = self.request(strom_proto::admin_v1::GetClusterStatusRequest { stale });
            anyhow::Ok(client.get_cluster_status(request).await?.into_inner())
        };
        tokio::time::timeout(Duration::from_secs(2), call)
            .await
            .context("status timed out")?
    }

    /// Bootstrap `m1`, read its tokens, then start every other node and wait until
    /// each has joined.
    pub async fn start_all(&mut self) -> anyhow::Result<()> {
        self.start_new(0, true).await?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match (
                self.read_file(0, "/data/admin.token").await,
                self.read_file(0, "/data/join.token").await,
            ) {
                (Ok(admin), Ok(join)) if !admin.is_empty() && !join.is_empty() => {
                    self.admin_token = admin;
                    self.join_token = join;
                    break;
                }
                _ if Instant::now() > deadline => {
                    bail!(
                        "m1 wrote no tokens within 60 s; its log:\n{}",
                        self.log_tail(0, 40).await
                    )
                }
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
        self.wait_manager(0, Duration::from_secs(60)).await?;
        for i in 1..self.nodes.len() {
            self.start_new(i, false).await?;
            if self.nodes[i].role == Role::Manager {
                self.wait_manager(i, Duration::from_secs(60)).await?;
            }
        }
        Ok(())
    }

    /// Until manager `i` answers with a leader it knows.
    pub async fn wait_manager(&self, i: usize, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            match self.status(i, true).await {
                Ok(s) if s.leader_id.is_some() && s.state != "learner" => return Ok(()),
                _ if Instant::now() > deadline => bail!(
                    "{} did not rejoin within {limit:?}; its log:\n{}",
                    self.nodes[i].name,
                    self.log_tail(i, 40).await
                ),
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }
}

/// Remove every container, network, volume and image of `run`.
pub async fn teardown(docker: &Docker, run: &str) -> Vec<String> {
    remove_labelled(docker, &format!("{LABEL_RUN}={run}")).await
}

/// Remove what runs whose process is gone left behind (a harness killed before it
/// could clean up). Runs of live processes on this machine are left alone.
pub async fn sweep_stale(docker: &Docker) -> Vec<String> {
    let mut runs: HashMap<String, String> = HashMap::new();
    if let Ok(list) = docker
        .list_containers(Some(
            ListContainersOptionsBuilder::new()
                .all(true)
                .filters(&HashMap::from([("label", vec![LABEL_RUN])]))
                .build(),
        ))
        .await
    {
        for c in list {
            let labels = c.labels.unwrap_or_default();
            if let (Some(run), Some(pid)) = (labels.get(LABEL_RUN), labels.get(LABEL_PID)) {
                runs.insert(run.clone(), pid.clone());
            }
        }
    }
    if let Ok(list) = docker
        .list_networks(Some(
            ListNetworksOptionsBuilder::new()
                .filters(&HashMap::from([("label", vec![LABEL_RUN])]))
                .build(),
        ))
        .await
    {
        for n in list {
            let labels = n.labels.unwrap_or_default();
            if let (Some(run), Some(pid)) = (labels.get(LABEL_RUN), labels.get(LABEL_PID)) {
                runs.insert(run.clone(), pid.clone());
            }
        }
    }
    let mut removed = Vec::new();
    for (run, pid) in runs {
        if !Path::new(&format!("/proc/{pid}")).exists() {
            removed.extend(teardown(docker, &run).await);
        }
    }
    removed
}

async fn remove_labelled(docker: &Docker, filter: &str) -> Vec<String> {
    let filters = HashMap::from([("label", vec![filter])]);
    let mut removed = Vec::new();
    if let Ok(list) = docker
        .list_containers(Some(
            ListContainersOptionsBuilder::new()
                .all(true)
                .filters(&filters)
                .build(),
        ))
        .await
    {
        for c in list {
            let Some(id) = c.id else { continue };
            // A paused container must be unpaused before it can be killed.
            let _ = docker.unpause_container(&id).await;
            if docker
                .remove_container(
                    &id,
                    Some(RemoveContainerOptionsBuilder::new().force(true).build()),
                )
                .await
                .is_ok()
            {
                removed.push(format!(
                    "container {}",
                    c.names.unwrap_or_default().join(",")
                ));
            }
        }
    }
    if let Ok(list) = docker
        .list_networks(Some(
            ListNetworksOptionsBuilder::new().filters(&filters).build(),
        ))
        .await
    {
        for n in list {
            if let Some(name) = n.name {
                if docker.remove_network(&name).await.is_ok() {
                    removed.push(format!("network {name}"));
                }
            }
        }
    }
    if let Ok(list) = docker
        .list_volumes(Some(
            ListVolumesOptionsBuilder::new().filters(&filters).build(),
        ))
        .await
    {
        for v in list.volumes.unwrap_or_default() {
            if docker
                .remove_volume(
                    &v.name,
                    Some(RemoveVolumeOptionsBuilder::new().force(true).build()),
                )
                .await
                .is_ok()
            {
                removed.push(format!("volume {}", v.name));
            }
        }
    }
    if let Ok(list) = docker
        .list_images(Some(
            ListImagesOptionsBuilder::new().filters(&filters).build(),
        ))
        .await
    {
        for image in list {
            for tag in image.repo_tags {
                if docker
                    .remove_image(
                        &tag,
                        Some(RemoveImageOptionsBuilder::new().force(true).build()),
                        None,
                    )
                    .await
                    .is_ok()
                {
                    removed.push(format!("image {tag}"));
                }
            }
        }
    }
    removed
}
