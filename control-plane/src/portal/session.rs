//! Portal sessions (issue 19): signed, stateless session cookies and the CSRF
//! tokens bound to them. Pure: the caller passes the time and the randomness.
//!
//! A session is `v1.<issued ms>.<last seen ms>.<nonce>` with an HMAC-SHA-256 over
//! it. The key is derived from the cluster's internal proof (a secret every member
//! knows, never printed) and the admin token's hash, so every management member
//! accepts a session another member issued (a session survives a leader change
//! without replicating anything), and rotating the admin token ends every session.
//! A session ends after [`IDLE`] without a request (each request within it slides
//! the window: the portal sets a refreshed cookie, [`refresh`]) and at the latest
//! [`MAX_AGE`] after sign-in. Sign-out clears the browser's cookie; a copy taken
//! before stays valid until it idles out (the cookie is `HttpOnly`, so page
//! scripts cannot read it) — rotate the admin token to end every session at once.
//! Nothing is stored: a node restart changes nothing.

use std::time::Duration;

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use strom_proto::ids::TokenHash;
use tonic::codegen::http;

/// The cookie's name.
pub const COOKIE: &str = "strom_session";
/// A session ends after this long without a request.
pub const IDLE: Duration = Duration::from_secs(30 * 60);
/// …and at the latest this long after sign-in.
pub const MAX_AGE: Duration = Duration::from_secs(12 * 60 * 60);
/// A request refreshes the cookie once the last one is this old.
pub const REFRESH_AFTER: Duration = Duration::from_secs(60);

const KEY_LABEL: &[u8] = b"strom portal session v1\n";
const VERSION: &str = "v1";

type HmacSha256 = Hmac<Sha256>;

/// The key sessions are signed with (never leaves the node).
#[derive(Clone)]
pub struct SessionKey([u8; 32]);

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKey(…)")
    }
}

impl SessionKey {
    /// The key of a cluster: from its internal proof and its admin token's hash.
    pub fn derive(proof: &str, admin_token_hash: &TokenHash) -> SessionKey {
        let digest = Sha256::new()
            .chain_update(KEY_LABEL)
            .chain_update(proof.as_bytes())
            .chain_update(b"\n")
            .chain_update(admin_token_hash.as_str().as_bytes())
            .finalize();
        SessionKey(digest.into())
    }

    fn mac(&self, parts: &[&[u8]]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("HMAC takes any key length");
        for p in parts {
            mac.update(p);
            mac.update(b"\n");
        }
        mac
    }
}

/// A signed-in browser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// Unix ms of the sign-in.
    pub issued_ms: i64,
    /// Unix ms of the request the cookie was last set on.
    pub seen_ms: i64,
    /// Random, per sign-in (hex): what the CSRF token is bound to.
    pub nonce: String,
}

/// Why a cookie is not a session (the portal shows the sign-in page, saying why).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("the session cookie is malformed")]
    Malformed,
    #[error("the session was not issued by this cluster or the admin token changed since")]
    BadSignature,
    #[error("the session ended after {} minutes without a request", IDLE.as_secs() / 60)]
    Idle,
    #[error("the session ended {} hours after sign-in", MAX_AGE.as_secs() / 3600)]
    Expired,
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A new session at `now_ms` with a random `nonce` (16 bytes from the OS), and
/// its cookie value.
pub fn issue(key: &SessionKey, now_ms: i64, nonce: [u8; 16]) -> (Session, String) {
    let session = Session {
        issued_ms: now_ms,
        seen_ms: now_ms,
        nonce: hex::encode(nonce),
    };
    let value = encode(key, &session);
    (session, value)
}

fn encode(key: &SessionKey, s: &Session) -> String {
    let body = format!("{VERSION}.{}.{}.{}", s.issued_ms, s.seen_ms, s.nonce);
    let tag = key
        .mac(&[b"session", body.as_bytes()])
        .finalize()
        .into_bytes();
    format!("{body}.{}", b64(&tag))
}

/// The session a cookie value holds at `now_ms`, if it is valid.
pub fn verify(key: &SessionKey, value: &str, now_ms: i64) -> Result<Session, SessionError> {
    let (body, tag) = value.rsplit_once('.').ok_or(SessionError::Malformed)?;
    let tag = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(tag)
        .map_err(|_| SessionError::Malformed)?;
    key.mac(&[b"session", body.as_bytes()])
        .verify_slice(&tag)
        .map_err(|_| SessionError::BadSignature)?;
    let mut fields = body.split('.');
    let (Some(VERSION), Some(issued), Some(seen), Some(nonce), None) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return Err(SessionError::Malformed);
    };
    let issued_ms: i64 = issued.parse().map_err(|_| SessionError::Malformed)?;
    let seen_ms: i64 = seen.parse().map_err(|_| SessionError::Malformed)?;
    if now_ms.saturating_sub(issued_ms) >= MAX_AGE.as_millis() as i64 {
        return Err(SessionError::Expired);
    }
    if now_ms.saturating_sub(seen_ms) >= IDLE.as_millis() as i64 {
        return Err(SessionError::Idle);
    }
    Ok(Session {
        issued_ms,
        seen_ms,
        nonce: nonce.to_string(),
    })
}

/// The refreshed cookie value for a request at `now_ms`, when the last one is
/// older than [`REFRESH_AFTER`] (the idle window slides; the sign-in time stays).
pub fn refresh(key: &SessionKey, session: &Session, now_ms: i64) -> Option<String> {
    (now_ms.saturating_sub(session.seen_ms) >= REFRESH_AFTER.as_millis() as i64).then(|| {
        encode(
            key,
            &Session {
                seen_ms: now_ms,
                ..session.clone()
            },
        )
    })
}

/// The CSRF token of a session: every form and action carries it.
pub fn csrf_token(key: &SessionKey, session: &Session) -> String {
    b64(&key
        .mac(&[b"csrf", session.nonce.as_bytes()])
        .finalize()
        .into_bytes())
}

/// Whether `presented` is the session's CSRF token (constant time).
pub fn csrf_ok(key: &SessionKey, session: &Session, presented: &str) -> bool {
    let Ok(tag) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(presented) else {
        return false;
    };
    key.mac(&[b"csrf", session.nonce.as_bytes()])
        .verify_slice(&tag)
        .is_ok()
}

/// `Set-Cookie` for a session: `HttpOnly`, `SameSite=Strict`, `Secure` under
/// TLS, the whole site, and a lifetime no longer than the session's.
pub fn set_cookie(value: &str, secure: bool) -> String {
    format!(
        "{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        MAX_AGE.as_secs(),
        if secure { "; Secure" } else { "" }
    )
}

/// `Set-Cookie` that removes the session (sign-out).
pub fn clear_cookie(secure: bool) -> String {
    format!(
        "{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{}",
        if secure { "; Secure" } else { "" }
    )
}

/// Remove the portal's session cookie from a request's `Cookie` headers.
///
/// A browser sends a host's cookies to every port of it, so an admin signed in to
/// the portal would hand the session to any function they call on the same host:
/// every gateway removes it before a request goes anywhere (other cookies are kept).
/// Cheap when there is no such cookie: one header lookup.
pub fn strip_from(headers: &mut http::HeaderMap) {
    const NAMED: &[u8] = b"strom_session=";
    let has = headers
        .get_all(http::header::COOKIE)
        .iter()
        .any(|v| v.as_bytes().windows(NAMED.len()).any(|w| w == NAMED));
    if !has {
        return;
    }
    let kept: Vec<http::HeaderValue> = headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| {
            // A header that is not text and holds the name goes as a whole.
            let text = v.to_str().ok()?;
            let rest: Vec<&str> = text
                .split(';')
                .map(str::trim)
                .filter(|c| {
                    !c.is_empty() && c.split_once('=').map(|(n, _)| n.trim()) != Some(COOKIE)
                })
                .collect();
            (!rest.is_empty())
                .then(|| http::HeaderValue::from_str(&rest.join("; ")).ok())
                .flatten()
        })
        .collect();
    headers.remove(http::header::COOKIE);
    for v in kept {
        headers.append(http::header::COOKIE, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_cookie_never_reaches_a_function() {
        let mut h = http::HeaderMap::new();
        h.append(
            http::header::COOKIE,
            http::HeaderValue::from_static("a=1; strom_session=v1.x.y; b=2"),
        );
        h.append(
            http::header::COOKIE,
            http::HeaderValue::from_static("strom_session=z"),
        );
        h.append(http::header::COOKIE, http::HeaderValue::from_static("c=3"));
        strip_from(&mut h);
        let left: Vec<_> = h.get_all(http::header::COOKIE).iter().collect();
        assert_eq!(left, ["a=1; b=2", "c=3"]);
        // Other cookies, even with a similar name, are left alone.
        let mut h = http::HeaderMap::new();
        h.insert(
            http::header::COOKIE,
            http::HeaderValue::from_static("strom_session_x=1"),
        );
        strip_from(&mut h);
        assert_eq!(h[http::header::COOKIE], "strom_session_x=1");
    }

    const MIN: i64 = 60_000;

    fn key(admin: &str) -> SessionKey {
        SessionKey::derive("proof-of-the-cluster", &TokenHash::of(admin))
    }

    #[test]
    fn a_session_is_valid_on_every_member_until_it_idles_or_ages_out() {
        let k = key("admin");
        let (s, cookie) = issue(&k, 1_000_000, [7; 16]);
        // Another member derives the same key from the same facts.
        assert_eq!(
            verify(&key("admin"), &cookie, 1_000_000 + MIN),
            Ok(s.clone())
        );
        assert_eq!(
            verify(&k, &cookie, 1_000_000 + 30 * MIN),
            Err(SessionError::Idle)
        );
        // Requests slide the idle window, not the sign-in time.
        let mut now = 1_000_000;
        let mut cookie = cookie;
        let mut session = s;
        for _ in 0..(12 * 60 / 20) {
            now += 20 * MIN;
            match verify(&k, &cookie, now) {
                Ok(current) => {
                    session = current;
                    if let Some(c) = refresh(&k, &session, now) {
                        cookie = c;
                    }
                }
                Err(e) => {
                    assert_eq!(e, SessionError::Expired);
                    assert!(now - session.issued_ms >= MAX_AGE.as_millis() as i64);
                    return;
                }
            }
        }
        panic!("a session outlived MAX_AGE");
    }

    #[test]
    fn forged_tampered_and_foreign_sessions_are_refused() {
        let k = key("admin");
        let (_, cookie) = issue(&k, 0, [1; 16]);
        // Another cluster, or the same after the admin token was rotated.
        assert_eq!(
            verify(&key("rotated"), &cookie, 1),
            Err(SessionError::BadSignature)
        );
        let other = SessionKey::derive("another cluster", &TokenHash::of("admin"));
        assert_eq!(verify(&other, &cookie, 1), Err(SessionError::BadSignature));
        // A later "last seen" written by hand.
        let (body, tag) = cookie.rsplit_once('.').unwrap();
        let forged = format!("{}.{tag}", body.replacen(".0.", ".1.", 1));
        assert_eq!(verify(&k, &forged, 1), Err(SessionError::BadSignature));
        for junk in ["", "v1", "a.b", "v1.0.0.x.!!!", "<script>.x"] {
            assert!(verify(&k, junk, 1).is_err(), "{junk}");
        }
        // A refresh is not needed for every request.
        let (s, _) = issue(&k, 0, [1; 16]);
        assert_eq!(refresh(&k, &s, 59_999), None);
        assert!(refresh(&k, &s, 60_000).is_some());
    }

    #[test]
    fn csrf_tokens_belong_to_one_session() {
        let k = key("admin");
        let (a, _) = issue(&k, 0, [1; 16]);
        let (b, _) = issue(&k, 0, [2; 16]);
        let token = csrf_token(&k, &a);
        assert!(csrf_ok(&k, &a, &token));
        assert!(!csrf_ok(&k, &b, &token));
        assert!(!csrf_ok(&key("rotated"), &a, &token));
        assert!(!csrf_ok(&k, &a, ""));
        assert!(!csrf_ok(&k, &a, "not base64 at all!"));
    }

    #[test]
    fn the_cookie_is_http_only_same_site_strict_and_secure_under_tls() {
        let c = set_cookie("v", true);
        for attribute in ["HttpOnly", "SameSite=Strict", "Secure", "Path=/"] {
            assert!(c.contains(attribute), "{c}");
        }
        assert!(!set_cookie("v", false).contains("Secure"));
        assert!(clear_cookie(false).contains("Max-Age=0"));
    }
}
