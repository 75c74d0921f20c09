//! Walking a `serde_json::Value` by hand, so every problem is reported with its JSON path
//! and all problems of a file are collected in one pass.
//!
//! Property names are matched case-insensitively (the Functions host reads its JSON with
//! case-insensitive binders); paths in messages use the documented spelling.

use serde_json::{Map, Value};

use super::error::ManifestError;

/// Errors found so far in one file.
#[derive(Debug)]
pub(crate) struct Report {
    file: String,
    errors: Vec<ManifestError>,
}

pub(crate) fn key_path(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

pub(crate) fn index_path(parent: &str, index: usize) -> String {
    format!("{parent}[{index}]")
}

/// Case-insensitive property lookup; an exact match wins over a case-insensitive one.
pub(crate) fn get<'v>(obj: &'v Map<String, Value>, key: &str) -> Option<&'v Value> {
    obj.get(key).or_else(|| {
        obj.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
    })
}

/// "a number (3)", "a string (\"get\")", … for messages.
pub(crate) fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".to_string(),
        Value::Bool(b) => format!("a boolean ({b})"),
        Value::Number(n) => format!("a number ({n})"),
        Value::String(s) => format!("a string ({s:?})"),
        Value::Array(_) => "an array".to_string(),
        Value::Object(_) => "an object".to_string(),
    }
}

/// Parses a JSON document, tolerating a UTF-8 byte order mark. A syntax error becomes one
/// error with line and column.
pub(crate) fn parse_document(bytes: &[u8], file: &str) -> Result<Value, ManifestError> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    serde_json::from_slice(bytes).map_err(|e| {
        ManifestError::new(
            file,
            "",
            format!(
                "invalid JSON at line {}, column {}: {}",
                e.line(),
                e.column(),
                strip_position(&e.to_string())
            ),
        )
    })
}

/// serde_json appends " at line X column Y" to its messages; we already say where.
fn strip_position(msg: &str) -> &str {
    match msg.rfind(" at line ") {
        Some(i) => &msg[..i],
        None => msg,
    }
}

impl Report {
    pub(crate) fn new(file: impl Into<String>) -> Self {
        Self {
            file: file.into(),
            errors: Vec::new(),
        }
    }

    pub(crate) fn err(&mut self, path: &str, message: impl Into<String>) {
        self.errors
            .push(ManifestError::new(self.file.clone(), path, message));
    }

    pub(crate) fn push(&mut self, error: ManifestError) {
        self.errors.push(error);
    }

    pub(crate) fn into_errors(self) -> Vec<ManifestError> {
        self.errors
    }

    /// `Ok(value)` if no error was recorded, else every recorded error.
    pub(crate) fn finish<T>(self, value: Option<T>) -> Result<T, Vec<ManifestError>> {
        match value {
            Some(v) if self.errors.is_empty() => Ok(v),
            _ => Err(self.errors),
        }
    }

    pub(crate) fn object<'v>(
        &mut self,
        v: &'v Value,
        path: &str,
    ) -> Option<&'v Map<String, Value>> {
        match v {
            Value::Object(m) => Some(m),
            other => {
                let what = if path.is_empty() {
                    "the document"
                } else {
                    "value"
                };
                self.err(
                    path,
                    format!("{what} must be an object, found {}", describe(other)),
                );
                None
            }
        }
    }

    /// An optional object property: absent or null → `None` without error.
    pub(crate) fn opt_object<'v>(
        &mut self,
        obj: &'v Map<String, Value>,
        parent: &str,
        key: &str,
    ) -> Option<&'v Map<String, Value>> {
        match get(obj, key) {
            None | Some(Value::Null) => None,
            Some(v) => self.object(v, &key_path(parent, key)),
        }
    }

    /// An optional string property: absent or null → `None`; another type → error.
    pub(crate) fn opt_string(
        &mut self,
        obj: &Map<String, Value>,
        parent: &str,
        key: &str,
    ) -> Option<String> {
        match get(obj, key) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => {
                self.err(
                    &key_path(parent, key),
                    format!("expected a string, found {}", describe(other)),
                );
                None
            }
        }
    }

    /// A required, non-empty string property.
    pub(crate) fn req_string(
        &mut self,
        obj: &Map<String, Value>,
        parent: &str,
        key: &str,
    ) -> Option<String> {
        match get(obj, key) {
            None | Some(Value::Null) => {
                self.err(&key_path(parent, key), "required");
                None
            }
            Some(Value::String(s)) if s.trim().is_empty() => {
                self.err(&key_path(parent, key), "must not be empty");
                None
            }
            Some(_) => self.opt_string(obj, parent, key),
        }
    }

    /// An optional boolean; `"true"`/`"false"` strings are accepted as the host's JSON
    /// binder accepts them.
    pub(crate) fn opt_bool(
        &mut self,
        obj: &Map<String, Value>,
        parent: &str,
        key: &str,
    ) -> Option<bool> {
        match get(obj, key) {
            None | Some(Value::Null) => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => Some(true),
            Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => Some(false),
            Some(other) => {
                self.err(
                    &key_path(parent, key),
                    format!("expected true or false, found {}", describe(other)),
                );
                None
            }
        }
    }

    /// An optional integer; numeric strings are accepted like the host's JSON binder does.
    pub(crate) fn opt_i64(
        &mut self,
        obj: &Map<String, Value>,
        parent: &str,
        key: &str,
    ) -> Option<i64> {
        let v = get(obj, key)?;
        let parsed = match v {
            Value::Null => return None,
            Value::Number(n) => n.as_i64(),
            Value::String(s) => s.trim().parse::<i64>().ok(),
            _ => None,
        };
        if parsed.is_none() {
            self.err(
                &key_path(parent, key),
                format!("expected an integer, found {}", describe(v)),
            );
        }
        parsed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_json_reports_line_and_column() {
        let err = parse_document(b"{\n  \"a\": 1,\n  \"b\" 2\n}", "host.json").unwrap_err();
        assert_eq!(err.file, "host.json");
        assert_eq!(err.json_path, "");
        assert!(err.message.contains("line 3, column 7"), "{}", err.message);
    }

    #[test]
    fn bom_is_stripped_and_keys_are_case_insensitive() {
        let v = parse_document(b"\xEF\xBB\xBF{\"Version\": \"2.0\"}", "host.json").unwrap();
        let obj = v.as_object().unwrap();
        let mut r = Report::new("host.json");
        assert_eq!(r.req_string(obj, "", "version").as_deref(), Some("2.0"));
        assert_eq!(r.req_string(obj, "a", "missing"), None);
        assert_eq!(
            r.into_errors()[0].to_string(),
            "host.json: a.missing: required"
        );
    }
}
