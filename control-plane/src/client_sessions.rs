//! Client sessions on the admin API (cluster protocol 10): a mutating request
//! that carries `strom-session` and `strom-sequence` metadata is proposed as a
//! [`Command::InSession`] write, which the state machine applies once and
//! answers again, unchanged, to a retry (admin.proto describes the contract).

use sha2::{Digest, Sha256};
use strom_proto::command::{is_session_id, Command, SessionWrite};
use tonic::metadata::MetadataMap;
use tonic::Status;

/// The metadata entry naming the client's session.
pub const SESSION_METADATA: &str = "strom-session";
/// The metadata entry with the request's sequence number in its session.
pub const SEQUENCE_METADATA: &str = "strom-sequence";

/// A mutating request's place in its client's session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteTag {
    pub session: String,
    pub seq: u64,
    /// Hex SHA-256 of the method and the request body.
    pub fingerprint: String,
}

impl WriteTag {
    /// The tag of a unary request, `None` when it carries no session.
    pub fn of<T: prost::Message>(
        metadata: &MetadataMap,
        method: &str,
        body: &T,
    ) -> Result<Option<WriteTag>, Status> {
        WriteTag::of_parts(metadata, method, &[&body.encode_to_vec()])
    }

    /// The tag of a request whose body is `parts` (an upload: name, settings, bytes).
    pub fn of_parts(
        metadata: &MetadataMap,
        method: &str,
        parts: &[&[u8]],
    ) -> Result<Option<WriteTag>, Status> {
        let text = |key: &str| -> Result<Option<String>, Status> {
            match metadata.get(key) {
                None => Ok(None),
                Some(v) => v
                    .to_str()
                    .map(|s| Some(s.trim().to_string()))
                    .map_err(|_| Status::invalid_argument(format!("{key}: not printable ASCII"))),
            }
        };
        let (session, seq) = match (text(SESSION_METADATA)?, text(SEQUENCE_METADATA)?) {
            (None, None) => return Ok(None),
            (Some(_), None) => {
                return Err(Status::invalid_argument(format!(
                    "{SESSION_METADATA} is given without {SEQUENCE_METADATA}: a session's \
                     request needs its sequence number"
                )))
            }
            (None, Some(_)) => {
                return Err(Status::invalid_argument(format!(
                    "{SEQUENCE_METADATA} is given without {SESSION_METADATA}"
                )))
            }
            (Some(session), Some(seq)) => (session, seq),
        };
        if !is_session_id(&session) {
            return Err(Status::invalid_argument(format!(
                "{SESSION_METADATA} `{session}`: not a session id (32 lower-case hex digits, \
                 as OpenSession answers it)"
            )));
        }
        let seq = match seq.parse::<u64>() {
            Ok(n) if n >= 1 => n,
            _ => {
                return Err(Status::invalid_argument(format!(
                    "{SEQUENCE_METADATA} `{seq}`: not a sequence number (a whole number from 1)"
                )))
            }
        };
        let mut hash = Sha256::new();
        hash.update(method.as_bytes());
        for part in parts {
            hash.update((part.len() as u64).to_le_bytes());
            hash.update(part);
        }
        Ok(Some(WriteTag {
            session,
            seq,
            fingerprint: hex::encode(hash.finalize()),
        }))
    }

    /// `command` as this request's session write.
    pub fn wrap(&self, command: Command, at_ms: i64) -> Command {
        Command::InSession(Box::new(SessionWrite {
            session: self.session.clone(),
            seq: self.seq,
            fingerprint: self.fingerprint.clone(),
            command,
            at_ms,
        }))
    }
}

/// A new session id: 128 random bits, hex.
pub fn new_session_id() -> String {
    let bytes: [u8; 16] = rand::random();
    hex::encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use strom_proto::admin_v1 as pb;

    fn metadata(pairs: &[(&'static str, &str)]) -> MetadataMap {
        let mut m = MetadataMap::new();
        for (k, v) in pairs {
            m.insert(*k, v.parse().unwrap());
        }
        m
    }

    const ID: &str = "00112233445566778899aabbccddeeff";

    #[test]
    fn requests_without_a_session_are_untagged() {
        let body = pb::ScaleAppRequest {
            name: "api".into(),
            instances: 2,
        };
        assert_eq!(
            WriteTag::of(&metadata(&[]), "ScaleApp", &body).unwrap(),
            None
        );
    }

    #[test]
    fn the_fingerprint_tells_requests_apart() {
        let m = metadata(&[(SESSION_METADATA, ID), (SEQUENCE_METADATA, "7")]);
        let scale = |n| pb::ScaleAppRequest {
            name: "api".into(),
            instances: n,
        };
        let a = WriteTag::of(&m, "ScaleApp", &scale(2)).unwrap().unwrap();
        assert_eq!((a.session.as_str(), a.seq), (ID, 7));
        let again = WriteTag::of(&m, "ScaleApp", &scale(2)).unwrap().unwrap();
        assert_eq!(a, again, "a retry has the same fingerprint");
        let other = WriteTag::of(&m, "ScaleApp", &scale(3)).unwrap().unwrap();
        assert_ne!(a.fingerprint, other.fingerprint);
        let method = WriteTag::of(&m, "Other", &scale(2)).unwrap().unwrap();
        assert_ne!(a.fingerprint, method.fingerprint);
        // Parts are length-framed: moving a byte between them is another request.
        let p1 = WriteTag::of_parts(&m, "DeployApp", &[b"ab", b"c"]).unwrap();
        let p2 = WriteTag::of_parts(&m, "DeployApp", &[b"a", b"bc"]).unwrap();
        assert_ne!(p1, p2);
    }

    #[test]
    fn malformed_sessions_and_sequences_are_invalid_arguments() {
        let body = pb::DeleteAppRequest { name: "x".into() };
        for (pairs, why) in [
            (vec![(SESSION_METADATA, ID)], "without strom-sequence"),
            (vec![(SEQUENCE_METADATA, "1")], "without strom-session"),
            (
                vec![(SESSION_METADATA, "ABC"), (SEQUENCE_METADATA, "1")],
                "not a session id",
            ),
            (
                vec![
                    (SESSION_METADATA, &ID.to_uppercase()),
                    (SEQUENCE_METADATA, "1"),
                ],
                "not a session id",
            ),
            (
                vec![(SESSION_METADATA, ID), (SEQUENCE_METADATA, "0")],
                "not a sequence number",
            ),
            (
                vec![(SESSION_METADATA, ID), (SEQUENCE_METADATA, "-3")],
                "not a sequence number",
            ),
        ] {
            let e = WriteTag::of(&metadata(&pairs), "DeleteApp", &body).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{pairs:?}");
            assert!(e.message().contains(why), "{pairs:?}: {}", e.message());
        }
    }

    #[test]
    fn session_ids_are_new_and_well_formed() {
        let (a, b) = (new_session_id(), new_session_id());
        assert!(is_session_id(&a) && is_session_id(&b));
        assert_ne!(a, b);
    }
}
