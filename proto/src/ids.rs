//! Names and ids, parsed once at the edge and trusted inside.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Raft node id of a Strom node.
pub type NodeId = u64;

/// Why a name or id from outside was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} `{value}` is invalid: {reason}")]
pub struct InvalidId {
    pub what: &'static str,
    pub value: String,
    pub reason: String,
}

/// A function app's name. Like an Azure function app name it is a DNS label
/// (2–60 characters, letters, digits and `-`, not starting or ending with `-`),
/// so that `{app}.<domain>` routes to it; it is case-insensitive and kept lower-case.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AppName(String);

impl AppName {
    pub fn parse(raw: &str) -> Result<Self, InvalidId> {
        let err = |reason: &str| InvalidId {
            what: "app name",
            value: raw.to_string(),
            reason: reason.to_string(),
        };
        let name = raw.trim().to_ascii_lowercase();
        if name.len() < 2 || name.len() > 60 {
            return Err(err("must be 2 to 60 characters long"));
        }
        if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(err("only letters, digits and `-` are allowed"));
        }
        if name.starts_with('-') || name.ends_with('-') {
            return Err(err("must not start or end with `-`"));
        }
        Ok(AppName(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AppName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One immutable deployed package of an app, named by the SHA-256 of its zip
/// (64 lower-case hex digits).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct VersionId(String);

impl VersionId {
    /// The version id of a package: the SHA-256 of its bytes.
    pub fn of_bytes(bytes: &[u8]) -> Self {
        VersionId(hex::encode(Sha256::digest(bytes)))
    }

    /// From a finished hasher (for packages hashed while streaming).
    pub fn from_digest(digest: &[u8]) -> Self {
        VersionId(hex::encode(digest))
    }

    pub fn parse(raw: &str) -> Result<Self, InvalidId> {
        let v = raw.trim().to_ascii_lowercase();
        if v.len() != 64 || !v.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(InvalidId {
                what: "version id",
                value: raw.to_string(),
                reason: "must be 64 hex digits (a SHA-256)".into(),
            });
        }
        Ok(VersionId(v))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first 12 hex digits, for people.
    pub fn short(&self) -> &str {
        &self.0[..12]
    }
}

impl fmt::Display for VersionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The id of a cluster, chosen at bootstrap (a UUID).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ClusterId(String);

impl ClusterId {
    pub fn new_random() -> Self {
        ClusterId(uuid::Uuid::new_v4().to_string())
    }

    pub fn parse(raw: &str) -> Result<Self, InvalidId> {
        uuid::Uuid::parse_str(raw.trim())
            .map(|u| ClusterId(u.to_string()))
            .map_err(|e| InvalidId {
                what: "cluster id",
                value: raw.to_string(),
                reason: e.to_string(),
            })
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The SHA-256 of a secret token (admin or join token). Only hashes are replicated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TokenHash(String);

impl TokenHash {
    pub fn of(token: &str) -> Self {
        TokenHash(hex::encode(Sha256::digest(token.as_bytes())))
    }

    /// The hash, hex.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `token` hashes to this hash (compared in constant time).
    pub fn matches(&self, token: &str) -> bool {
        let other = Self::of(token);
        let (a, b) = (self.0.as_bytes(), other.0.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

/// A new invocation id (a random UUID, as Azure's).
pub fn new_invocation_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_names_are_dns_labels_kept_lower_case() {
        assert_eq!(AppName::parse("Orders-1").unwrap().as_str(), "orders-1");
        for bad in ["a", "-ab", "ab-", "a_b", "a.b", &"x".repeat(61), ""] {
            let e = AppName::parse(bad).unwrap_err();
            assert!(e.to_string().contains("app name"), "{e}");
        }
    }

    #[test]
    fn version_ids_are_sha256_hex() {
        let v = VersionId::of_bytes(b"hello");
        assert_eq!(
            v.as_str(),
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(v.short(), "2cf24dba5fb0");
        assert_eq!(VersionId::parse(&v.as_str().to_uppercase()).unwrap(), v);
        assert!(VersionId::parse("abc").is_err());
    }

    #[test]
    fn token_hash_matches_only_its_token() {
        let h = TokenHash::of("secret");
        assert!(h.matches("secret"));
        assert!(!h.matches("secreT"));
        assert!(!h.matches(""));
    }
}
