//! A group of replicas under test (Strom's management nodes or etcd members) and a client's acknowledged write.

use super::*;

/// A client's connection to one member, able to do one kind of acknowledged write.
pub(super) enum Writer {
    Strom {
        client: AdminServiceClient<Channel>,
        auth: MetadataValue<Ascii>,
    },
    Etcd {
        client: HttpClient,
        put_url: String,
    },
}

impl Writer {
    /// Write `value` under `key`; true once the member acknowledged it.
    pub(super) async fn write(&mut self, key: &str, value: &str) -> bool {
        match self {
            Writer::Strom { client, auth } => {
                let mut request = tonic::Request::new(SetAppSettingsRequest {
                    name: WRITE_APP.into(),
                    set: HashMap::from([(key.to_string(), value.to_string())]),
                    remove: Vec::new(),
                });
                request.metadata_mut().insert("authorization", auth.clone());
                client.set_app_settings(request).await.is_ok()
            }
            Writer::Etcd { client, put_url } => {
                let b64 = base64::engine::general_purpose::STANDARD;
                let body = serde_json::json!({
                    "key": b64.encode(key),
                    "value": b64.encode(value),
                })
                .to_string();
                matches!(http_post(client, put_url, body).await, Ok((200, _)))
            }
        }
    }
}

pub(super) fn http_client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(usize::MAX)
        .build(connector)
}

pub(super) async fn http_post(
    client: &HttpClient,
    url: &str,
    body: String,
) -> anyhow::Result<(u16, Bytes)> {
    let request = hyper::Request::post(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))?;
    let response = client.request(request).await?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

/// A group of 3 replicas under test: Strom's management nodes or etcd members.
pub(super) trait Replicated {
    const NAME: &'static str;
    fn members(&self) -> usize;
    fn running(&self, member: usize) -> bool;
    /// Whether `member` says it is the leader (false when it does not answer in
    /// time).
    async fn is_leader(&self, member: usize) -> bool;
    /// The running member that says it leads, waiting up to 30 s for one.
    async fn leader(&self) -> anyhow::Result<usize> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            for m in (0..self.members()).filter(|m| self.running(*m)) {
                if self.is_leader(m).await {
                    return Ok(m);
                }
            }
            if Instant::now() > deadline {
                bail!("{}: no leader after 30 s", Self::NAME);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    /// A new client connection to `member`.
    async fn writer(&self, member: usize) -> anyhow::Result<Writer>;
    /// `kill -9` `member`.
    fn kill(&mut self, member: usize) -> anyhow::Result<()>;
    /// The process id of running `member`.
    fn pid(&self, member: usize) -> anyhow::Result<u32>;
    /// Send `signal` (`STOP`, `CONT`) to `member`'s process.
    fn signal(&self, member: usize, signal: &str) -> anyhow::Result<()> {
        let pid = self.pid(member)?;
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .context("running kill")?;
        if !status.success() {
            bail!("kill -{signal} {pid}: {status}");
        }
        Ok(())
    }
    /// Start `member` again on its data dir; return once it serves linearizable
    /// reads (it is a caught-up member again).
    async fn restart(&mut self, member: usize) -> anyhow::Result<()>;
}
