//! The load a chaos run puts on the cluster while faults happen, recorded in the
//! [`History`]:
//!
//! - writers: admin writes (settings, keys, deploys) on the `ledger` app through a
//!   random manager, each recorded with its outcome (acknowledged at a log index,
//!   refused, or unknown);
//! - callers: HTTP requests to the `web` app spread over every node's gateway;
//! - an observer asking every manager for its term, role and leader.
//!
//! The `ledger` app runs no instances (scale 0), so its writes exercise the
//! replicated state only; the `web` app serves the requests.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use strom_proto::admin_v1 as pb;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::cluster::{Cluster, HTTP_PORT};
use crate::history::{History, LeaderSeen, LedgerSeen, Request, Write, WriteKind};
use crate::session_client::SessionClient;

pub const LEDGER: &str = "ledger";
pub const LEDGER_FUNCTION: &str = "f";
pub const WEB: &str = "web";
/// Settings and keys each writer cycles through.
const SETTINGS_PER_CLIENT: u32 = 100;
const KEYS_PER_CLIENT: u32 = 30;

/// A node as the workload sees it: where to send to.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    pub ip: String,
    pub manager: bool,
}

/// What the workload needs to know about the cluster (a snapshot: addresses stay).
#[derive(Clone)]
pub struct Setup {
    pub targets: Vec<Target>,
    pub admin_token: String,
    /// The key the callers use on `web`.
    pub web_key: String,
    /// A folder with the ledger app (deploys add a marker file).
    pub ledger_dir: PathBuf,
}

impl Setup {
    pub fn of(cluster: &Cluster, web_key: String, ledger_dir: PathBuf) -> Setup {
        let targets = (0..cluster.nodes.len())
            .map(|i| Target {
                name: cluster.nodes[i].name.clone(),
                ip: cluster.ip(i),
                manager: cluster.nodes[i].role == crate::cluster::Role::Manager,
            })
            .collect();
        Setup {
            targets,
            admin_token: cluster.admin_token.clone(),
            web_key,
            ledger_dir,
        }
    }

    fn managers(&self) -> Vec<&Target> {
        self.targets.iter().filter(|t| t.manager).collect()
    }

    pub(crate) fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Ok(v) = format!("Bearer {}", self.admin_token).parse() {
            request.metadata_mut().insert("authorization", v);
        }
        request.set_timeout(Duration::from_secs(8));
        request
    }
}

/// Write the ledger app: a `host.json`, one HTTP function, a handler file that is
/// never run (the app has no instances).
pub fn write_ledger_app(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir.join(LEDGER_FUNCTION))?;
    std::fs::write(
        dir.join("host.json"),
        r#"{"version":"2.0","customHandler":{"description":{"defaultExecutablePath":"handler"},"enableForwardingHttpRequest":true}}"#,
    )?;
    std::fs::write(
        dir.join(LEDGER_FUNCTION).join("function.json"),
        r#"{"bindings":[{"type":"httpTrigger","direction":"in","name":"req","authLevel":"function","route":"ledger"},{"type":"http","direction":"out","name":"res"}]}"#,
    )?;
    let handler = dir.join("handler");
    std::fs::write(&handler, "#!/bin/false\n")?;
    // Its nodes are Linux containers: the handler must be executable there.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&handler, std::fs::Permissions::from_mode(0o755))?;
    }
    Ok(())
}

/// Zip `dir` with `marker` added, so every deploy is a new version.
pub(crate) fn ledger_package(dir: &Path, marker: &str) -> anyhow::Result<Vec<u8>> {
    let staging = tempfile::tempdir()?;
    for entry in ["host.json", "handler"] {
        std::fs::copy(dir.join(entry), staging.path().join(entry))?;
    }
    std::fs::create_dir_all(staging.path().join(LEDGER_FUNCTION))?;
    std::fs::copy(
        dir.join(LEDGER_FUNCTION).join("function.json"),
        staging.path().join(LEDGER_FUNCTION).join("function.json"),
    )?;
    std::fs::write(staging.path().join("marker.txt"), marker)?;
    Ok(strom_proto::manifest::pack_dir(staging.path())?)
}

/// Deploy a zip through manager `ip`; the response, or the gRPC status.
pub async fn deploy(
    setup: &Setup,
    ip: &str,
    app: &str,
    zip: Vec<u8>,
) -> Result<pb::DeployAppResponse, tonic::Status> {
    deploy_with(setup, ip, app, zip, HashMap::new()).await
}

/// [`deploy`] with app settings set together with the version.
pub async fn deploy_with(
    setup: &Setup,
    ip: &str,
    app: &str,
    zip: Vec<u8>,
    settings: HashMap<String, String>,
) -> Result<pb::DeployAppResponse, tonic::Status> {
    let url = format!("http://{ip}:{}", crate::cluster::CONTROL_PORT);
    let channel = tonic::transport::Endpoint::from_shared(url)
        .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?
        .connect_timeout(Duration::from_millis(700))
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut client = pb::admin_service_client::AdminServiceClient::new(channel);
    let request = setup.request(tokio_stream::iter(deploy_chunks(app, zip, settings)));
    client.deploy_app(request).await.map(|r| r.into_inner())
}

/// A package as DeployApp's chunks (the first names the app and the settings).
pub(crate) fn deploy_chunks(
    app: &str,
    zip: Vec<u8>,
    settings: HashMap<String, String>,
) -> Vec<pb::DeployAppChunk> {
    let total = zip.len() as u64;
    zip.chunks(256 << 10)
        .enumerate()
        .map(|(i, data)| pb::DeployAppChunk {
            app_name: if i == 0 {
                app.to_string()
            } else {
                String::new()
            },
            total_size: if i == 0 { total } else { 0 },
            settings: if i == 0 {
                settings.clone()
            } else {
                HashMap::new()
            },
            data: data.to_vec(),
        })
        .collect()
}

pub struct Running {
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// Stop every task and wait for the calls in flight to be recorded.
    pub async fn stop(self) {
        self.stop.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Start `writers` writers, `callers` HTTP callers and the leader observer.
pub fn start(
    setup: Arc<Setup>,
    history: History,
    seed: u64,
    writers: usize,
    callers: usize,
) -> Running {
    let stop = CancellationToken::new();
    let mut tasks = Vec::new();
    for client in 0..writers {
        tasks.push(tokio::spawn(writer(
            setup.clone(),
            history.clone(),
            StdRng::seed_from_u64(seed.wrapping_add(client as u64 * 7919)),
            client,
            stop.clone(),
        )));
    }
    for client in 0..callers {
        tasks.push(tokio::spawn(caller(
            setup.clone(),
            history.clone(),
            client,
            stop.clone(),
        )));
    }
    tasks.push(tokio::spawn(observer(setup, history, stop.clone())));
    Running { stop, tasks }
}

async fn writer(
    setup: Arc<Setup>,
    history: History,
    mut rng: StdRng,
    client: usize,
    stop: CancellationToken,
) {
    let managers: Vec<Target> = setup.managers().into_iter().cloned().collect();
    // Every manager in the list, as an operator's script would give them, from
    // a random first one; a write goes on to the next on no answer.
    let first = rng.random_range(0..managers.len());
    let mut admin = SessionClient::new(managers, first);
    let mut n = 0u64;
    while !stop.is_cancelled() {
        n += 1;
        let tag = format!("c{client}-{n}");
        let roll: u32 = rng.random_range(0..100);
        // Settings and keys are registers from a bounded set per client (each value
        // unique), so the state stays small however long the run.
        let kind = if roll < 72 {
            WriteKind::Setting {
                key: format!(
                    "CHAOS_C{client}_{}",
                    rng.random_range(0..SETTINGS_PER_CLIENT)
                ),
                value: format!("{tag}-{:08x}", rng.random::<u32>()),
            }
        } else if roll < 86 {
            WriteKind::PutKey {
                name: format!("k-c{client}-{}", rng.random_range(0..KEYS_PER_CLIENT)),
                value: format!("value-{tag}-{:016x}", rng.random::<u64>()),
            }
        } else if roll < 98 {
            WriteKind::DeleteKey {
                name: format!("k-c{client}-{}", rng.random_range(0..KEYS_PER_CLIENT)),
            }
        } else {
            WriteKind::Deploy {
                marker: format!("{tag}-{:016x}", rng.random::<u64>()),
            }
        };
        let start_ms = history.now_ms();
        // A stop ends nothing in flight early: the write is left to finish.
        let sent = admin.write(&setup, &tag, &kind).await;
        let end_ms = history.now_ms();
        history.lock().writes.push(Write {
            client,
            tag,
            kind,
            node: sent.node,
            start_ms,
            end_ms,
            outcome: sent.outcome,
            attempts: sent.attempts,
        });
        let pause = rng.random_range(30..120);
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(pause)) => {}
            _ = stop.cancelled() => {}
        }
    }
}

pub type HttpClient = Client<HttpConnector, Empty<Bytes>>;

pub fn http_client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(Duration::from_secs(1)));
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector)
}

/// GET `path` on node `ip`'s gateway with the key: the status, or why there is none.
pub async fn get(
    client: &HttpClient,
    ip: &str,
    path: &str,
    key: &str,
    limit: Duration,
) -> Result<u16, String> {
    let request = hyper::Request::get(format!("http://{ip}:{HTTP_PORT}{path}"))
        .header("x-functions-key", key)
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let call = async {
        let response = client.request(request).await.map_err(|e| {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                text.push_str(&format!(": {s}"));
                source = s.source();
            }
            text
        })?;
        let status = response.status().as_u16();
        // Read the whole answer: a response cut off half-way is a failure.
        response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("reading the body: {e}"))?;
        Ok(status)
    };
    match tokio::time::timeout(limit, call).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer in {limit:?}")),
    }
}

async fn caller(setup: Arc<Setup>, history: History, client: usize, stop: CancellationToken) {
    let http = http_client();
    let mut n = 0usize;
    while !stop.is_cancelled() {
        // Every node in turn, offset per caller.
        let target = &setup.targets[(n + client) % setup.targets.len()];
        n += 1;
        let start_ms = history.now_ms();
        let result = get(
            &http,
            &target.ip,
            &format!("/api/hello/c{client}-{n}"),
            &setup.web_key,
            Duration::from_secs(10),
        )
        .await;
        let end_ms = history.now_ms();
        history.lock().requests.push(Request {
            client,
            node: target.name.clone(),
            start_ms,
            end_ms,
            result,
        });
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            _ = stop.cancelled() => {}
        }
    }
}

async fn observer(setup: Arc<Setup>, history: History, stop: CancellationToken) {
    let managers: Vec<Target> = setup.managers().into_iter().cloned().collect();
    // The ledger's settings each manager showed last: only changes are recorded.
    let seen: Arc<std::sync::Mutex<HashMap<String, HashMap<String, String>>>> = Arc::default();
    while !stop.is_cancelled() {
        let asks = managers.iter().map(|m| {
            let setup = setup.clone();
            let history = history.clone();
            let m = m.clone();
            let seen = seen.clone();
            async move {
                let url = format!("http://{}:{}", m.ip, crate::cluster::CONTROL_PORT);
                let connect = async {
                    let channel = tonic::transport::Endpoint::from_shared(url)?
                        .connect_timeout(Duration::from_millis(500))
                        .connect()
                        .await?;
                    anyhow::Ok(pb::admin_service_client::AdminServiceClient::new(channel))
                };
                let Ok(Ok(mut c)) = tokio::time::timeout(Duration::from_secs(1), connect).await
                else {
                    return;
                };
                let status = c
                    .get_cluster_status(setup.request(pb::GetClusterStatusRequest { stale: true }));
                if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_secs(1), status).await {
                    let s = s.into_inner();
                    history.lock().leaders.push(LeaderSeen {
                        at_ms: history.now_ms(),
                        node: m.name.clone(),
                        node_id: s.node_id,
                        term: s.term,
                        state: s.state,
                        leader_id: s.leader_id.unwrap_or(0),
                    });
                }
                // The applied history of the ledger's registers, as this manager
                // shows it (a linearizable read): each change.
                let read = async {
                    let r = c
                        .get_app_settings(setup.request(pb::GetAppSettingsRequest {
                            name: LEDGER.into(),
                        }))
                        .await?;
                    anyhow::Ok(r.into_inner().settings)
                };
                if let Ok(Ok(settings)) = tokio::time::timeout(Duration::from_secs(1), read).await {
                    let at_ms = history.now_ms();
                    let mut seen = seen.lock().expect("seen lock");
                    let last = seen.entry(m.name.clone()).or_default();
                    let mut changes = Vec::new();
                    for (key, value) in settings {
                        if key.starts_with("CHAOS_") && last.get(&key) != Some(&value) {
                            last.insert(key.clone(), value.clone());
                            changes.push(LedgerSeen {
                                at_ms,
                                node: m.name.clone(),
                                key,
                                value,
                            });
                        }
                    }
                    history.lock().ledger_seen.extend(changes);
                }
            }
        });
        futures::future::join_all(asks).await;
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(150)) => {}
            _ = stop.cancelled() => {}
        }
    }
}
