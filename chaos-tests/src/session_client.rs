//! The writers' admin client, used as an operator's script would use `strom`:
//! every management member in a list, a deadline on each attempt, and a client
//! session (admin.proto), so that a write whose answer was lost is sent again —
//! same session, same sequence number — to the next member, and applied once.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use strom_proto::admin_v1 as pb;
use tonic::transport::Channel;

use crate::history::{Outcome, WriteKind};
use crate::workload::{Setup, Target, LEDGER, LEDGER_FUNCTION};

type Admin = pb::admin_service_client::AdminServiceClient<Channel>;

/// How long one attempt on one member may take (a deploy uploads a package).
const ATTEMPT: Duration = Duration::from_secs(3);
const DEPLOY_ATTEMPT: Duration = Duration::from_secs(8);
/// How long a write is tried, over every member, before it counts as unknown.
const BUDGET: Duration = Duration::from_secs(12);

/// A write's end, as the client saw it.
pub struct Sent {
    pub outcome: Outcome,
    /// The member that answered (or the last one tried).
    pub node: String,
    /// Attempts made (1: the first member answered).
    pub attempts: u32,
}

/// How one attempt ended without an answer that stands.
enum Miss {
    /// No connection: nothing was sent.
    Dial(String),
    /// Sent, and no answer (deadline, connection lost, unavailable): it may
    /// have been applied.
    Unanswered(String),
}

/// Why an attempt did not succeed.
enum Failed {
    /// An answer that stands.
    Refused(tonic::Status),
    /// Go on to the next member.
    Miss(Miss),
}

pub struct SessionClient {
    members: Vec<Target>,
    channels: Vec<Option<Channel>>,
    /// The member that answered last: the first to try next.
    current: usize,
    session: Option<String>,
    seq: u64,
    /// Writes left before trying to open a session again, after the cluster
    /// said it has none (older members during an upgrade from protocol 9).
    without_sessions: u32,
}

impl SessionClient {
    /// A client of `members`, trying `first` first.
    pub fn new(members: Vec<Target>, first: usize) -> SessionClient {
        let n = members.len();
        SessionClient {
            members,
            channels: vec![None; n],
            current: first % n.max(1),
            session: None,
            seq: 0,
            without_sessions: 0,
        }
    }

    async fn admin(&mut self, i: usize) -> Result<Admin, String> {
        if let Some(c) = &self.channels[i] {
            return Ok(Admin::new(c.clone()).max_decoding_message_size(64 << 20));
        }
        let url = format!(
            "http://{}:{}",
            self.members[i].ip,
            crate::cluster::CONTROL_PORT
        );
        let endpoint = tonic::transport::Endpoint::from_shared(url)
            .map_err(|e| e.to_string())?
            .connect_timeout(Duration::from_millis(700));
        let channel = tokio::time::timeout(Duration::from_secs(1), endpoint.connect())
            .await
            .map_err(|_| "no connection in 1 s".to_string())?
            .map_err(|e| format!("connect: {e}"))?;
        self.channels[i] = Some(channel.clone());
        Ok(Admin::new(channel).max_decoding_message_size(64 << 20))
    }

    /// Send one write until a member answers or [`BUDGET`] has passed.
    pub async fn write(&mut self, setup: &Setup, tag: &str, kind: &WriteKind) -> Sent {
        let started = Instant::now();
        let n = self.members.len();
        let mut attempts = 0;
        let mut maybe_sent = false;
        let mut last = (self.members[self.current].name.clone(), String::new());
        let mut numbered = false;
        let mut round = 0u32;
        while started.elapsed() < BUDGET {
            for step in 0..n {
                if started.elapsed() >= BUDGET {
                    break;
                }
                let i = (self.current + step) % n;
                let name = self.members[i].name.clone();
                attempts += 1;
                let result = self.attempt(setup, i, tag, kind, &mut numbered).await;
                match result {
                    Ok(index_version) => {
                        self.current = i;
                        let (index, version) = index_version;
                        return Sent {
                            outcome: Outcome::Acked { index, version },
                            node: name,
                            attempts,
                        };
                    }
                    Err(Failed::Refused(status)) => {
                        // An answer that stands; after an unanswered attempt of the
                        // same write it may still be that one's doing (a deploy in
                        // progress), so it is not a refusal then.
                        let text = format!("{:?}: {}", status.code(), status.message());
                        if status.message().starts_with("outcome unknown") {
                            // The session was forgotten (or is unknown): a new one.
                            self.session = None;
                        }
                        let outcome = if maybe_sent {
                            Outcome::Unknown(format!("after an unanswered attempt: {text}"))
                        } else {
                            Outcome::Refused(text)
                        };
                        return Sent {
                            outcome,
                            node: name,
                            attempts,
                        };
                    }
                    Err(Failed::Miss(Miss::Dial(why))) => {
                        self.channels[i] = None;
                        last = (name, why);
                    }
                    Err(Failed::Miss(Miss::Unanswered(why))) => {
                        maybe_sent = true;
                        // A frozen member's connection stays open: a new one next time.
                        self.channels[i] = None;
                        last = (name, why);
                    }
                }
                // Without a session, a write that may have gone out is not sent again.
                if maybe_sent && self.session.is_none() {
                    return Sent {
                        outcome: Outcome::Unknown(last.1),
                        node: last.0,
                        attempts,
                    };
                }
            }
            round += 1;
            let pause = Duration::from_millis(100 * u64::from(round.min(5)));
            tokio::time::sleep(pause).await;
        }
        let outcome = if maybe_sent {
            Outcome::Unknown(format!("no answer in {} s: {}", BUDGET.as_secs(), last.1))
        } else {
            Outcome::Refused(format!("no member reachable: {}", last.1))
        };
        Sent {
            outcome,
            node: last.0,
            attempts,
        }
    }

    /// One attempt on member `i`: the log index (and version) it was applied at, or why not.
    async fn attempt(
        &mut self,
        setup: &Setup,
        i: usize,
        tag: &str,
        kind: &WriteKind,
        numbered: &mut bool,
    ) -> Result<(u64, Option<String>), Failed> {
        let mut admin = self
            .admin(i)
            .await
            .map_err(|e| Failed::Miss(Miss::Dial(e)))?;
        if self.session.is_none() && self.without_sessions > 0 {
            if !*numbered {
                self.without_sessions -= 1;
                *numbered = true;
            }
            return self.send(&mut admin, setup, tag, kind, None).await;
        }
        if self.session.is_none() {
            let open = setup.request(pb::OpenSessionRequest {});
            match tokio::time::timeout(ATTEMPT, admin.open_session(open)).await {
                Ok(Ok(r)) => {
                    self.session = Some(r.into_inner().session_id);
                    self.seq = 0;
                    *numbered = false;
                }
                // A cluster still below protocol 10 (an upgrade from an older
                // build): writes without a session (never resent once they may
                // have gone out) for a while, then a new try.
                Ok(Err(s))
                    if matches!(
                        s.code(),
                        tonic::Code::FailedPrecondition | tonic::Code::Unimplemented
                    ) =>
                {
                    self.without_sessions = 50;
                    *numbered = true;
                    return self.send(&mut admin, setup, tag, kind, None).await;
                }
                Ok(Err(s)) if is_refusal(&s) => return Err(Failed::Refused(s)),
                // Opening a session applies nothing a retry could repeat.
                Ok(Err(s)) => return Err(Failed::Miss(Miss::Dial(s.message().to_string()))),
                Err(_) => {
                    return Err(Failed::Miss(Miss::Dial(
                        "no answer opening a session".into(),
                    )))
                }
            }
        }
        if !*numbered {
            self.seq += 1;
            *numbered = true;
        }
        let session = self.session.clone().expect("opened above");
        let seq = self.seq;
        self.send(&mut admin, setup, tag, kind, Some((session, seq)))
            .await
    }

    /// Send the write once to `admin`, in the session when there is one.
    async fn send(
        &self,
        admin: &mut Admin,
        setup: &Setup,
        tag: &str,
        kind: &WriteKind,
        session: Option<(String, u64)>,
    ) -> Result<(u64, Option<String>), Failed> {
        let limit = match kind {
            WriteKind::Deploy { .. } => DEPLOY_ATTEMPT,
            _ => ATTEMPT,
        };
        let call = async {
            match kind {
                WriteKind::Setting { key, value } => {
                    let set = HashMap::from([
                        (key.clone(), value.clone()),
                        ("CHAOS_LAST".to_string(), tag.to_string()),
                    ]);
                    let mut r = setup.request(pb::SetAppSettingsRequest {
                        name: LEDGER.into(),
                        set,
                        remove: Vec::new(),
                    });
                    r.set_timeout(limit);
                    admin
                        .set_app_settings(in_session(r, &session))
                        .await
                        .map(|r| (r.into_inner().log_index, None))
                }
                WriteKind::PutKey { name, value } => {
                    let mut r = setup.request(pb::SetFunctionKeyRequest {
                        app_name: LEDGER.into(),
                        function_name: LEDGER_FUNCTION.into(),
                        scope: "function".into(),
                        name: name.clone(),
                        value: value.clone(),
                    });
                    r.set_timeout(limit);
                    admin
                        .set_function_key(in_session(r, &session))
                        .await
                        .map(|r| (r.into_inner().log_index, None))
                }
                WriteKind::DeleteKey { name } => {
                    let mut r = setup.request(pb::DeleteFunctionKeyRequest {
                        app_name: LEDGER.into(),
                        function_name: LEDGER_FUNCTION.into(),
                        scope: "function".into(),
                        name: name.clone(),
                    });
                    r.set_timeout(limit);
                    admin
                        .delete_function_key(in_session(r, &session))
                        .await
                        .map(|r| (r.into_inner().log_index, None))
                }
                WriteKind::Deploy { marker } => {
                    let zip = crate::workload::ledger_package(&setup.ledger_dir, marker)
                        .map_err(|e| tonic::Status::invalid_argument(format!("packaging: {e}")))?;
                    let chunks = crate::workload::deploy_chunks(LEDGER, zip, HashMap::new());
                    let r = in_session(setup.request(tokio_stream::iter(chunks)), &session);
                    admin.deploy_app(r).await.map(|r| {
                        let r = r.into_inner();
                        (r.log_index, Some(r.version_id))
                    })
                }
            }
        };
        match tokio::time::timeout(limit, call).await {
            Err(_) => Err(Failed::Miss(Miss::Unanswered(format!(
                "no answer in {} s",
                limit.as_secs()
            )))),
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(s)) if is_refusal(&s) => Err(Failed::Refused(s)),
            Ok(Err(s)) => Err(Failed::Miss(Miss::Unanswered(format!(
                "{:?}: {}",
                s.code(),
                s.message()
            )))),
        }
    }
}

/// `request` as write `seq` of client session `id`, if there is a session.
fn in_session<T>(
    mut request: tonic::Request<T>,
    session: &Option<(String, u64)>,
) -> tonic::Request<T> {
    if let Some((id, seq)) = session {
        let m = request.metadata_mut();
        m.insert("strom-session", id.parse().expect("hex"));
        m.insert("strom-sequence", seq.to_string().parse().expect("digits"));
    }
    request
}

/// An answer that stands (bad input, not found, refused by the state machine);
/// anything else (unavailable, deadline, a broken connection) may go to another
/// member.
fn is_refusal(status: &tonic::Status) -> bool {
    use tonic::Code::*;
    matches!(
        status.code(),
        InvalidArgument
            | NotFound
            | AlreadyExists
            | PermissionDenied
            | Unauthenticated
            | FailedPrecondition
            | OutOfRange
            | Unimplemented
            | Aborted
    )
}
