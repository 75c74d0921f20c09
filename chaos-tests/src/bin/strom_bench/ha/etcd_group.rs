//! An etcd cluster of real processes on 127.0.0.1, loaded through its JSON gateway.

use super::*;

/// etcd members `e1`…, all on 127.0.0.1 with their own data dirs.
pub(super) struct EtcdGroup {
    pub(super) members: Vec<Daemon>,
    pub(super) client_urls: Vec<String>,
    pub(super) http: HttpClient,
}

impl EtcdGroup {
    pub(super) async fn start(etcd: &Path, dir: &Path, n: usize) -> anyhow::Result<EtcdGroup> {
        let client_urls: Vec<String> = (0..n)
            .map(|_| format!("http://127.0.0.1:{}", free_port()))
            .collect();
        let peer_urls: Vec<String> = (0..n)
            .map(|_| format!("http://127.0.0.1:{}", free_port()))
            .collect();
        let initial_cluster = peer_urls
            .iter()
            .enumerate()
            .map(|(i, url)| format!("e{}={url}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let mut members = Vec::new();
        for i in 0..n {
            let args = [
                "--name",
                &format!("e{}", i + 1),
                "--data-dir",
                &dir.join(format!("etcd-{}", i + 1)).display().to_string(),
                "--listen-client-urls",
                &client_urls[i],
                "--advertise-client-urls",
                &client_urls[i],
                "--listen-peer-urls",
                &peer_urls[i],
                "--initial-advertise-peer-urls",
                &peer_urls[i],
                "--initial-cluster",
                &initial_cluster,
                "--initial-cluster-state",
                "new",
                "--initial-cluster-token",
                "strom-bench",
                "--logger",
                "zap",
                "--log-level",
                "error",
            ]
            .map(String::from)
            .to_vec();
            members.push(Daemon::start(
                format!("etcd member {}", i + 1),
                etcd,
                args,
                Vec::new(),
                dir.join(format!("etcd-{}.log", i + 1)),
            )?);
        }
        let mut group = EtcdGroup {
            members,
            client_urls,
            http: http_client(),
        };
        for i in 0..n {
            group.wait_linearizable(i).await?;
        }
        Ok(group)
    }

    /// Wait until member `i` answers a linearizable read (it has a leader and has
    /// applied everything committed before the read).
    pub(super) async fn wait_linearizable(&mut self, i: usize) -> anyhow::Result<()> {
        let url = format!("{}/v3/kv/range", self.client_urls[i]);
        let body = r#"{"key":"cmVhZHk="}"#;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let read = tokio::time::timeout(
                Duration::from_secs(2),
                http_post(&self.http, &url, body.into()),
            );
            if let Ok(Ok((200, _))) = read.await {
                return Ok(());
            }
            self.members[i].check_alive()?;
            if Instant::now() > deadline {
                bail!(
                    "etcd member {}: no linearizable read after 60 s:\n{}",
                    i + 1,
                    self.members[i].log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Replicated for EtcdGroup {
    const NAME: &'static str = "etcd";

    fn members(&self) -> usize {
        self.members.len()
    }

    fn running(&self, member: usize) -> bool {
        self.members[member].running()
    }

    async fn is_leader(&self, member: usize) -> bool {
        let url = format!("{}/v3/maintenance/status", self.client_urls[member]);
        let status = tokio::time::timeout(STATUS_TIMEOUT, http_post(&self.http, &url, "{}".into()));
        let Ok(Ok((200, body))) = status.await else {
            return false;
        };
        let Ok(status) = serde_json::from_slice::<serde_json::Value>(&body) else {
            return false;
        };
        let leader = status["leader"].as_str().unwrap_or("0");
        leader != "0" && status["header"]["member_id"].as_str() == Some(leader)
    }

    async fn writer(&self, member: usize) -> anyhow::Result<Writer> {
        Ok(Writer::Etcd {
            client: http_client(),
            put_url: format!("{}/v3/kv/put", self.client_urls[member]),
        })
    }

    fn kill(&mut self, member: usize) -> anyhow::Result<()> {
        self.members[member].kill()
    }

    fn pid(&self, member: usize) -> anyhow::Result<u32> {
        self.members[member].pid()
    }

    async fn restart(&mut self, member: usize) -> anyhow::Result<()> {
        // `--initial-cluster-state new` is ignored once the data dir holds a member.
        self.members[member].spawn()?;
        self.wait_linearizable(member).await
    }
}
