//! The CLI's way to the cluster: a list of management members (`--server a,b,c`,
//! `STROM_SERVER`, and the members learned into the client file), a dial
//! timeout and a deadline on every call, and client sessions so that a write
//! whose answer was lost is retried on another member and applied once.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use strom_control_plane::client_sessions::{SEQUENCE_METADATA, SESSION_METADATA};
use strom_proto::admin_v1 as pb;
use strom_proto::admin_v1::admin_service_client::AdminServiceClient;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, ClientTlsConfig};

use crate::cli::ClientArgs;
use crate::client::{check_server_url, status_error, Bearer, CliError, Client};

/// How long a connection to one member may take.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(2);
/// The call deadline when `--timeout` is not given.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);
/// An upload fails when no chunk went out for this long.
pub const PROGRESS_TIMEOUT: Duration = Duration::from_secs(15);
/// The least an upload waits for its answer once everything is sent.
pub const DEPLOY_ANSWER: Duration = Duration::from_secs(120);
/// The client file, next to `admin.token` in the data dir.
pub const CLIENT_FILE: &str = "client.json";
/// The client file is refreshed from the cluster when older than this.
const LEARN_EVERY: Duration = Duration::from_secs(60);

/// What the client file holds: the members the cluster last named.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClientFile {
    /// Control URLs of the management members.
    pub members: Vec<String>,
    /// When they were learned (Unix ms).
    pub learned_at_ms: i64,
}

/// Parse `--timeout`: seconds (`15`), or a duration (`500ms`, `2m`); `0` = none.
pub fn parse_timeout(text: &str) -> Result<Option<Duration>, String> {
    let text = text.trim();
    let d = match text.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => humantime::parse_duration(text)
            .map_err(|e| format!("`{text}`: {e} (seconds, or e.g. 500ms, 30s, 2m; 0 = none)"))?,
    };
    Ok((!d.is_zero()).then_some(d))
}

/// Split `--server a,b,c` into checked control URLs (no empty entry, no
/// duplicates), naming the bad entry.
pub fn parse_servers(list: &str) -> Result<Vec<String>, CliError> {
    let mut out: Vec<String> = Vec::new();
    for (i, raw) in list.split(',').enumerate() {
        let entry = raw.trim();
        if entry.is_empty() {
            return Err(CliError::new(
                2,
                format!(
                    "--server `{list}`: entry {} is empty; give control URLs separated by \
                     commas, like http://10.0.0.5:7171,http://10.0.0.6:7171",
                    i + 1
                ),
            ));
        }
        check_server_url(entry)?;
        let entry = entry.trim_end_matches('/').to_string();
        if !out.contains(&entry) {
            out.push(entry);
        }
    }
    Ok(out)
}

/// The client file of a data dir, if it exists and reads.
pub fn read_client_file(data_dir: &Path) -> Option<ClientFile> {
    let text = std::fs::read_to_string(data_dir.join(CLIENT_FILE)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Write the client file (0600, atomically) if the data dir exists.
pub fn write_client_file(data_dir: &Path, file: &ClientFile) -> std::io::Result<()> {
    if !data_dir.is_dir() {
        return Ok(());
    }
    let bytes = serde_json::to_vec_pretty(file).map_err(std::io::Error::other)?;
    strom_control_plane::durable::write_durably(&data_dir.join(CLIENT_FILE), &bytes)
}

/// The endpoints to try, in order: the given ones, then members the client file
/// learned — only when it was learned from the same cluster (one of the given
/// endpoints is among its members), so a file of another cluster is never used.
pub fn endpoint_order(given: &[String], file: Option<&ClientFile>) -> Vec<String> {
    let mut out = given.to_vec();
    if let Some(f) = file {
        if given.iter().any(|g| f.members.contains(g)) {
            for m in &f.members {
                if !out.contains(m) {
                    out.push(m.clone());
                }
            }
        }
    }
    out
}

/// How an attempt on one member ended, when it did not answer.
#[derive(Debug)]
enum Miss {
    /// Could not connect: nothing was sent.
    Dial(String),
    /// Sent, and no answer came in time, or the connection broke: the write
    /// may or may not have happened.
    Silent(String),
    /// The member answered that it cannot serve now (no leader, shutting down).
    Unavailable(String),
}

impl Miss {
    fn why(&self) -> &str {
        match self {
            Miss::Dial(w) | Miss::Silent(w) | Miss::Unavailable(w) => w,
        }
    }
}

/// Why a call did not succeed.
pub enum Failure {
    /// A member answered with a refusal (it stands: bad input, not found, …).
    Refused(tonic::Status),
    /// No member answered.
    Unanswered(CliError),
}

impl Failure {
    fn into_cli(self) -> CliError {
        match self {
            Failure::Refused(status) => status_error(status),
            Failure::Unanswered(e) => e,
        }
    }
}

/// How a call may be sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A read (or an idempotent action): any member, as often as needed.
    Read,
    /// A write in the client's session: sent again after a lost answer (same
    /// session and sequence number), applied once.
    Write,
    /// An action outside the replicated state that must not run twice (invoking
    /// a function): sent to one member at most; only a failed dial moves on.
    Once,
}

/// How long an attempt may take.
#[derive(Clone)]
pub enum Deadline {
    /// The whole call (`--timeout`).
    Call,
    /// The call's first answer (a stream's headers; `--timeout`), not the
    /// stream after it.
    FirstAnswer,
    /// An upload: no progress for [`PROGRESS_TIMEOUT`], then `--timeout` for the
    /// answer once everything is sent.
    Progress(Arc<Progress>),
}

/// An upload's progress, as the stream of chunks reports it.
pub struct Progress {
    last: Mutex<Instant>,
    done: AtomicBool,
}

impl Progress {
    pub fn new() -> Arc<Progress> {
        Arc::new(Progress {
            last: Mutex::new(Instant::now()),
            done: AtomicBool::new(false),
        })
    }

    /// A chunk went out (`last`: it was the final one).
    pub fn advanced(&self, last: bool) {
        *self.last.lock().expect("progress lock") = Instant::now();
        if last {
            self.done.store(true, Ordering::SeqCst);
        }
    }

    fn restart(&self) {
        *self.last.lock().expect("progress lock") = Instant::now();
        self.done.store(false, Ordering::SeqCst);
    }

    fn since(&self) -> Duration {
        self.last.lock().expect("progress lock").elapsed()
    }
}

/// The cluster as the CLI reaches it.
pub struct Cluster {
    endpoints: Vec<String>,
    token: MetadataValue<tonic::metadata::Ascii>,
    tls: Option<ClientTlsConfig>,
    timeout: Option<Duration>,
    verbose: bool,
    data_dir: PathBuf,
    /// The client file as read at the start, then as this command wrote it.
    file: Option<ClientFile>,
    /// The member that answered last, and its connection.
    current: Option<(usize, Client)>,
    /// The session and the last sequence number used, once opened; `None`
    /// inside when the cluster has no sessions (an older build).
    session: Option<Option<(String, u64)>>,
}

impl Cluster {
    pub fn open(args: &ClientArgs) -> Result<Cluster, CliError> {
        let token = crate::client::read_token(args)?;
        let token: MetadataValue<_> = format!("Bearer {token}").parse().map_err(|_| {
            CliError::new(
                2,
                "the admin token contains characters not allowed in a header",
            )
        })?;
        let given = parse_servers(&args.server)?;
        let timeout =
            parse_timeout(&args.timeout).map_err(|e| CliError::new(2, format!("--timeout {e}")))?;
        let file = read_client_file(&args.data_dir);
        let endpoints = endpoint_order(&given, file.as_ref());
        let tls = if endpoints.iter().any(|e| e.starts_with("https://")) {
            let Some(path) = &args.ca_cert else {
                return Err(CliError::new(
                    2,
                    format!(
                        "--server {} uses TLS: give --ca-cert (the cluster CA, PEM) to verify it",
                        args.server
                    ),
                ));
            };
            let pem = std::fs::read(path)
                .map_err(|e| CliError::new(2, format!("--ca-cert {}: {e}", path.display())))?;
            Some(
                ClientTlsConfig::new().ca_certificate(tonic::transport::Certificate::from_pem(pem)),
            )
        } else {
            None
        };
        Ok(Cluster {
            endpoints,
            token,
            tls,
            timeout,
            verbose: args.verbose,
            data_dir: args.data_dir.clone(),
            file,
            current: None,
            session: None,
        })
    }

    /// The deadline of a call (`None`: wait forever).
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// The first endpoint (the one commands name in their output).
    pub fn first_endpoint(&self) -> &str {
        &self.endpoints[0]
    }

    fn note(&self, text: &str) {
        if self.verbose {
            eprintln!("strom: {text}");
        }
    }

    async fn dial(&self, url: &str) -> Result<Client, String> {
        let mut endpoint = Channel::from_shared(url.to_string())
            .map_err(|e| e.to_string())?
            .connect_timeout(DIAL_TIMEOUT)
            .tcp_nodelay(true);
        if let (true, Some(tls)) = (url.starts_with("https://"), &self.tls) {
            endpoint = endpoint
                .tls_config(tls.clone())
                .map_err(|e| e.to_string())?;
        }
        let channel = match tokio::time::timeout(DIAL_TIMEOUT, endpoint.connect()).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(strom_control_plane::tls::error_chain(&e)),
            Err(_) => return Err(format!("no connection in {}", secs(DIAL_TIMEOUT))),
        };
        Ok(
            AdminServiceClient::with_interceptor(channel, Bearer(self.token.clone()))
                .max_decoding_message_size(64 * 1024 * 1024),
        )
    }

    /// A read: tried on each member in turn until one answers.
    pub async fn read<Req, Resp, F, Fut>(&mut self, req: Req, f: F) -> Result<Resp, CliError>
    where
        Req: Clone,
        F: FnMut(Client, tonic::Request<Req>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        self.call(Kind::Read, Deadline::Call, req, f)
            .await
            .map(|r| r.into_inner())
    }

    /// A write, in the client's session: a write whose answer was lost is sent
    /// again (same session and number) to the next member, and applied once.
    pub async fn write<Req, Resp, F, Fut>(&mut self, req: Req, f: F) -> Result<Resp, CliError>
    where
        Req: Clone,
        F: FnMut(Client, tonic::Request<Req>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        self.call(Kind::Write, Deadline::Call, req, f)
            .await
            .map(|r| r.into_inner())
    }

    /// An action that must not run twice ([`Kind::Once`]).
    pub async fn once<Req, Resp, F, Fut>(&mut self, req: Req, f: F) -> Result<Resp, CliError>
    where
        Req: Clone,
        F: FnMut(Client, tonic::Request<Req>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        self.call(Kind::Once, Deadline::Call, req, f)
            .await
            .map(|r| r.into_inner())
    }

    /// A call whose response metadata matters (streams).
    pub async fn call<Req, Resp, F, Fut>(
        &mut self,
        kind: Kind,
        deadline: Deadline,
        req: Req,
        f: F,
    ) -> Result<tonic::Response<Resp>, CliError>
    where
        Req: Clone,
        F: FnMut(Client, tonic::Request<Req>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        let tag = match kind {
            Kind::Write => self.next_sequence().await?,
            Kind::Read | Kind::Once => None,
        };
        self.attempts(kind, deadline, tag, req, f)
            .await
            .map_err(Failure::into_cli)
    }

    /// Send the request to one member after another until one answers (each
    /// attempt within its deadline), then round again with a pause while
    /// `--timeout` has not passed since the first.
    async fn attempts<Req, Resp, F, Fut>(
        &mut self,
        kind: Kind,
        deadline: Deadline,
        tag: Option<(String, u64)>,
        req: Req,
        mut f: F,
    ) -> Result<tonic::Response<Resp>, Failure>
    where
        Req: Clone,
        F: FnMut(Client, tonic::Request<Req>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        let budget = self.timeout.unwrap_or(DEFAULT_TIMEOUT);
        let started = Instant::now();
        let mut tried: Vec<(String, Miss)> = Vec::new();
        let start_at = self.current.as_ref().map(|(i, _)| *i).unwrap_or(0);
        let n = self.endpoints.len();
        let mut round = 0u32;
        'rounds: loop {
            let before = tried.len();
            for step in 0..n {
                let i = (start_at + step) % n;
                let url = self.endpoints[i].clone();
                let client = match self.current.take() {
                    Some((j, c)) if j == i => c,
                    _ => match self.dial(&url).await {
                        Ok(c) => c,
                        Err(why) => {
                            self.note(&format!("{url}: cannot connect: {why}"));
                            tried.push((url, Miss::Dial(why)));
                            continue;
                        }
                    },
                };
                let mut request = tonic::Request::new(req.clone());
                if let (Deadline::Call, Some(t)) = (&deadline, self.timeout) {
                    request.set_timeout(t);
                }
                if let Some((session, seq)) = &tag {
                    let m = request.metadata_mut();
                    m.insert(SESSION_METADATA, session.parse().expect("hex is ASCII"));
                    m.insert(SEQUENCE_METADATA, seq.to_string().parse().expect("digits"));
                }
                if let Deadline::Progress(p) = &deadline {
                    p.restart();
                }
                let outcome = self
                    .within_deadline(&deadline, f(client.clone(), request))
                    .await;
                let miss = match outcome {
                    Ok(Ok(response)) => {
                        self.note(&format!("answered by {url}"));
                        self.current = Some((i, client));
                        self.learn(i).await;
                        return Ok(response);
                    }
                    Err(waited) => Miss::Silent(format!("no answer in {}", secs(waited))),
                    // tonic's own end of the `grpc-timeout` it sent.
                    Ok(Err(status))
                        if status.code() == tonic::Code::Cancelled
                            && status.message().contains("Timeout expired") =>
                    {
                        let waited = self.timeout.unwrap_or(DEFAULT_TIMEOUT);
                        Miss::Silent(format!("no answer in {}", secs(waited)))
                    }
                    Ok(Err(status)) => match classify(&status) {
                        Some(miss) => miss,
                        None => return Err(Failure::Refused(status)),
                    },
                };
                self.note(&format!("{url}: {}", miss.why()));
                let sent = !matches!(miss, Miss::Dial(_));
                tried.push((url, miss));
                // Without a session, a write that may have been applied is not sent again.
                if kind != Kind::Read && tag.is_none() && sent {
                    break 'rounds;
                }
            }
            round += 1;
            // Nobody listens at all: no point waiting (a cluster that is down,
            // or a wrong address); members that answered may soon serve again.
            let all_dials = tried[before..]
                .iter()
                .all(|(_, m)| matches!(m, Miss::Dial(_)));
            if started.elapsed() >= budget || all_dials {
                break;
            }
            let pause = Duration::from_millis(200 * 2u64.pow(round.min(4)))
                .min(budget.saturating_sub(started.elapsed()));
            self.note(&format!(
                "no member answered; trying again in {} ms",
                pause.as_millis()
            ));
            tokio::time::sleep(pause).await;
        }
        Err(Failure::Unanswered(self.unanswered(
            kind,
            tag.is_some(),
            &tried,
        )))
    }

    /// Run one attempt within its deadline; `Err(waited)` when it passed.
    async fn within_deadline<T>(
        &self,
        deadline: &Deadline,
        call: impl std::future::Future<Output = T>,
    ) -> Result<T, Duration> {
        match (deadline, self.timeout) {
            (Deadline::Call | Deadline::FirstAnswer, None) => Ok(call.await),
            (Deadline::Call | Deadline::FirstAnswer, Some(t)) => {
                tokio::time::timeout(t, call).await.map_err(|_| t)
            }
            (Deadline::Progress(p), answer) => {
                // Once all is sent, the cluster validates, stores and replicates
                // the package before it answers: that takes longer for a big one.
                let answer = answer.map(|t| t.max(DEPLOY_ANSWER));
                let watch = async {
                    loop {
                        tokio::time::sleep(Duration::from_millis(250)).await;
                        let idle = p.since();
                        if p.done.load(Ordering::SeqCst) {
                            if let Some(t) = answer {
                                if idle >= t {
                                    return t;
                                }
                            }
                        } else if idle >= PROGRESS_TIMEOUT {
                            return PROGRESS_TIMEOUT;
                        }
                    }
                };
                tokio::select! {
                    r = call => Ok(r),
                    waited = watch => Err(waited),
                }
            }
        }
    }

    /// The session and the next sequence number for a write, opening the session
    /// first; `None` when the cluster has none (an older build).
    async fn next_sequence(&mut self) -> Result<Option<(String, u64)>, CliError> {
        if self.session.is_none() {
            let opened = self
                .attempts(
                    Kind::Read,
                    Deadline::Call,
                    None,
                    pb::OpenSessionRequest {},
                    |mut c, r| async move { c.open_session(r).await },
                )
                .await;
            match opened {
                Ok(r) => {
                    let id = r.into_inner().session_id;
                    self.note(&format!("client session {id}"));
                    self.session = Some(Some((id, 0)));
                }
                // A cluster that is older (or still upgrading) has no sessions.
                Err(Failure::Refused(status))
                    if matches!(
                        status.code(),
                        tonic::Code::FailedPrecondition | tonic::Code::Unimplemented
                    ) =>
                {
                    self.note(&format!(
                        "no client session ({}): a write whose answer is lost is not sent again",
                        status.message()
                    ));
                    self.session = Some(None);
                }
                Err(e) => return Err(e.into_cli()),
            }
        }
        Ok(match &mut self.session {
            Some(Some((id, seq))) => {
                *seq += 1;
                Some((id.clone(), *seq))
            }
            _ => None,
        })
    }

    /// Keep the members the cluster names in the client file (when it is old).
    async fn learn(&mut self, answered: usize) {
        let fresh = self.file.as_ref().is_some_and(|f| {
            let age = strom_control_plane::management::now_ms() - f.learned_at_ms;
            (0..LEARN_EVERY.as_millis() as i64).contains(&age)
                && f.members.contains(&self.endpoints[answered])
        });
        if fresh || !self.data_dir.is_dir() {
            return;
        }
        let Some((_, client)) = &self.current else {
            return;
        };
        let mut client = client.clone();
        let mut request = tonic::Request::new(pb::ListMembersRequest {});
        request.set_timeout(DIAL_TIMEOUT);
        let listed = tokio::time::timeout(DIAL_TIMEOUT, client.list_members(request)).await;
        let Ok(Ok(listed)) = listed else {
            self.note("could not list the members (the client file is kept as it was)");
            return;
        };
        let scheme = if self.endpoints[answered].starts_with("https://") {
            "https"
        } else {
            "http"
        };
        let members: Vec<String> = listed
            .into_inner()
            .members
            .iter()
            .map(|m| format!("{scheme}://{}", m.address))
            .collect();
        let file = ClientFile {
            members,
            learned_at_ms: strom_control_plane::management::now_ms(),
        };
        match write_client_file(&self.data_dir, &file) {
            Ok(()) => self.note(&format!(
                "members {} kept in {}",
                file.members.join(","),
                self.data_dir.join(CLIENT_FILE).display()
            )),
            Err(e) => self.note(&format!("could not write the client file: {e}")),
        }
        self.file = Some(file);
    }

    /// Every member was tried and none answered.
    fn unanswered(&self, kind: Kind, in_session: bool, tried: &[(String, Miss)]) -> CliError {
        let maybe_applied = kind != Kind::Read
            && tried
                .iter()
                .any(|(_, m)| matches!(m, Miss::Silent(_) | Miss::Unavailable(_)));
        let outcome = if maybe_applied {
            if in_session {
                "\nThe write may have been applied (once at most: it was sent again only \
                 in its session); check the state before running the command again."
            } else {
                "\nOutcome unknown: the write may have been applied (the cluster has no client \
                 sessions, so it was not sent again); check the state before running it again."
            }
        } else {
            ""
        };
        // One member that never answered: name it, and what else to try.
        let mut distinct: Vec<&str> = Vec::new();
        for (url, _) in tried {
            if !distinct.contains(&url.as_str()) {
                distinct.push(url);
            }
        }
        let others: Vec<&String> = self
            .endpoints
            .iter()
            .filter(|e| !distinct.contains(&e.as_str()))
            .collect();
        if distinct.len() == 1 {
            if let Some(waited) = tried.iter().find_map(|(_, m)| match m {
                Miss::Silent(w) => w.strip_prefix("no answer in "),
                _ => None,
            }) {
                let others = if others.is_empty() {
                    "none known (give several with --server a,b,c)".to_string()
                } else {
                    others
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                return CliError::new(
                    5,
                    format!(
                        "no answer from {} in {waited}: the node may be frozen or overloaded; \
                         other members: {others}{outcome}",
                        distinct[0]
                    ),
                );
            }
        }
        let mut text = String::from("no member answered; tried:");
        let mut seen: Vec<(String, String)> = Vec::new();
        for (url, miss) in tried {
            let entry = (url.clone(), miss.why().to_string());
            if !seen.contains(&entry) {
                seen.push(entry);
            }
        }
        for (url, why) in seen {
            text.push_str(&format!("\n  {url}: {why}"));
        }
        if self.endpoints.len() == 1 {
            text.push_str("\n(is `strom up` running? give other members with --server a,b,c)");
        }
        text.push_str(outcome);
        CliError::new(5, text)
    }
}

/// Whether a failed call is worth another member: `None` for an answer that
/// stands (a refusal: bad input, not found, denied).
fn classify(status: &tonic::Status) -> Option<Miss> {
    use tonic::Code;
    let message = status.message();
    match status.code() {
        Code::Unavailable => {
            // A transport failure is tonic's Unavailable too: the request may have gone out.
            if message.contains("transport error") || message.contains("connection") {
                Some(Miss::Silent(format!("connection lost: {message}")))
            } else {
                Some(Miss::Unavailable(message.to_string()))
            }
        }
        Code::DeadlineExceeded => Some(Miss::Silent(format!("deadline exceeded: {message}"))),
        Code::Cancelled | Code::Unknown
            if message.contains("transport") || message.contains("h2") =>
        {
            Some(Miss::Silent(format!("connection lost: {message}")))
        }
        _ => None,
    }
}

fn secs(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{} ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_lists_name_the_bad_entry() {
        assert_eq!(
            parse_servers("http://a:1, http://b:2/,http://a:1").unwrap(),
            vec!["http://a:1".to_string(), "http://b:2".to_string()]
        );
        let e = parse_servers("http://a:1,,http://b:2").unwrap_err();
        assert_eq!(e.code, 2);
        assert!(e.message.contains("entry 2 is empty"), "{}", e.message);
        let e = parse_servers("http://a:1,b:2").unwrap_err();
        assert!(
            e.message.contains("`b:2`") && e.message.contains("no scheme"),
            "{}",
            e.message
        );
    }

    #[test]
    fn timeouts_are_seconds_or_durations_and_zero_is_none() {
        assert_eq!(parse_timeout("15").unwrap(), Some(Duration::from_secs(15)));
        assert_eq!(
            parse_timeout("500ms").unwrap(),
            Some(Duration::from_millis(500))
        );
        assert_eq!(parse_timeout("0").unwrap(), None);
        assert!(parse_timeout("soon").unwrap_err().contains("`soon`"));
    }

    #[test]
    fn learned_members_follow_the_given_ones_only_for_the_same_cluster() {
        let file = ClientFile {
            members: vec![
                "http://a:1".into(),
                "http://b:1".into(),
                "http://c:1".into(),
            ],
            learned_at_ms: 1,
        };
        assert_eq!(
            endpoint_order(&["http://b:1".into()], Some(&file)),
            vec!["http://b:1", "http://a:1", "http://c:1"]
        );
        // Another cluster's file is not used.
        assert_eq!(
            endpoint_order(&["http://x:1".into()], Some(&file)),
            vec!["http://x:1"]
        );
        assert_eq!(
            endpoint_order(&["http://x:1".into()], None),
            vec!["http://x:1"]
        );
    }

    #[cfg(unix)]
    #[test]
    fn the_client_file_is_private_and_reads_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = ClientFile {
            members: vec!["http://127.0.0.1:7171".into()],
            learned_at_ms: 42,
        };
        write_client_file(dir.path(), &file).unwrap();
        let mode = std::fs::metadata(dir.path().join(CLIENT_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(read_client_file(dir.path()), Some(file.clone()));
        // No data dir: nothing is written (and nothing fails).
        write_client_file(&dir.path().join("missing"), &file).unwrap();
        assert!(!dir.path().join("missing").exists());
    }

    #[test]
    fn only_unavailable_and_lost_answers_move_to_another_member() {
        assert!(matches!(
            classify(&tonic::Status::unavailable("no leader")),
            Some(Miss::Unavailable(_))
        ));
        assert!(matches!(
            classify(&tonic::Status::unavailable(
                "error trying to connect: transport error"
            )),
            Some(Miss::Silent(_))
        ));
        assert!(matches!(
            classify(&tonic::Status::deadline_exceeded("Timeout expired")),
            Some(Miss::Silent(_))
        ));
        for refusal in [
            tonic::Status::invalid_argument("bad"),
            tonic::Status::not_found("x"),
            tonic::Status::unauthenticated("x"),
            tonic::Status::failed_precondition("outcome unknown: client session expired"),
        ] {
            assert!(classify(&refusal).is_none(), "{refusal:?}");
        }
    }
}
