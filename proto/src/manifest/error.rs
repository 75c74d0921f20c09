//! Errors of the app model: [`ManifestError`] for a problem at a place in a manifest file,
//! [`PackageError`] for a problem with the zip itself.

use std::fmt;

use serde::{Deserialize, Serialize};

/// One problem found in an app package: which file, where in it, and what is wrong.
///
/// Validation collects all of them at once so a user fixes a package in one round trip.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestError {
    /// Package-relative file name (`host.json`, `orders/function.json`), or `(package)`
    /// for problems with the package as a whole.
    pub file: String,
    /// JSON path inside the file (`bindings[1].route`); empty when the whole file is meant.
    pub json_path: String,
    /// What is wrong, quoting the offending value.
    pub message: String,
}

/// The `file` of errors that concern the package as a whole.
pub const PACKAGE_FILE: &str = "(package)";

impl ManifestError {
    pub fn new(
        file: impl Into<String>,
        json_path: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            file: file.into(),
            json_path: json_path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.json_path.is_empty() {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(f, "{}: {}: {}", self.file, self.json_path, self.message)
        }
    }
}

impl std::error::Error for ManifestError {}

/// A problem with the zip archive itself (as opposed to its manifests).
#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    #[error("unsafe path `{entry}`: {reason}")]
    UnsafePath { entry: String, reason: String },
    #[error("symlink `{entry}` points outside the app (`{target}`)")]
    UnsafeSymlink { entry: String, target: String },
    #[error("too many entries: {count} (limit {limit})")]
    TooManyEntries { count: u64, limit: u32 },
    #[error("package is larger than {limit} bytes uncompressed")]
    TooLargeUncompressed { limit: u64 },
    #[error("package is {size} bytes compressed (limit {limit})")]
    TooLargeCompressed { size: u64, limit: u64 },
    #[error("`{entry}` is larger than {limit} bytes")]
    ManifestTooLarge { entry: String, limit: u64 },
    #[error("duplicate entry `{entry}`")]
    DuplicateEntry { entry: String },
    #[error("not a zip archive: {0}")]
    NotZip(String),
    #[error("cannot read entry `{entry}`: {reason}")]
    BadEntry { entry: String, reason: String },
    #[error("destination `{0}` exists and is not empty")]
    DestinationNotEmpty(String),
    #[error("I/O error on `{path}`: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl PackageError {
    pub(crate) fn io(path: impl fmt::Display, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_string(),
            source,
        }
    }

    /// The zip entry the error is about, if it is about one.
    pub fn entry(&self) -> Option<&str> {
        match self {
            Self::UnsafePath { entry, .. }
            | Self::UnsafeSymlink { entry, .. }
            | Self::ManifestTooLarge { entry, .. }
            | Self::DuplicateEntry { entry }
            | Self::BadEntry { entry, .. } => Some(entry),
            _ => None,
        }
    }
}

impl From<PackageError> for ManifestError {
    fn from(e: PackageError) -> Self {
        let file = e.entry().unwrap_or(PACKAGE_FILE).to_string();
        ManifestError::new(file, "", e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_omits_empty_path() {
        let e = ManifestError::new(
            "orders/function.json",
            "bindings[1].route",
            "`{id:int` is not closed",
        );
        assert_eq!(
            e.to_string(),
            "orders/function.json: bindings[1].route: `{id:int` is not closed"
        );
        let e = ManifestError::new("host.json", "", "missing");
        assert_eq!(e.to_string(), "host.json: missing");
    }

    #[test]
    fn package_error_converts_with_entry_or_package() {
        let m: ManifestError = PackageError::UnsafePath {
            entry: "../evil".into(),
            reason: "`..` is not allowed".into(),
        }
        .into();
        assert_eq!(m.file, "../evil");
        let m: ManifestError = PackageError::TooManyEntries { count: 5, limit: 4 }.into();
        assert_eq!(m.file, PACKAGE_FILE);
        assert!(m.message.contains("limit 4"));
    }
}
