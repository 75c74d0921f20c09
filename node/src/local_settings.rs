//! `local.settings.json`, as Azure Functions Core Tools reads it for `func start`:
//! `Values` become app settings, `Host.LocalHttpPort` the HTTP port. The file is
//! never deployed (it is excluded when packing).

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

#[derive(Debug, Default, PartialEq, Eq)]
pub struct LocalSettings {
    pub values: BTreeMap<String, String>,
    pub local_http_port: Option<u16>,
}

pub const FILE: &str = "local.settings.json";

/// Read `<app_dir>/local.settings.json` if it exists.
pub fn read(app_dir: &Path) -> Result<Option<LocalSettings>, String> {
    let path = app_dir.join(FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    parse(&bytes)
        .map(Some)
        .map_err(|e| format!("{}: {e}", path.display()))
}

pub fn parse(bytes: &[u8]) -> Result<LocalSettings, String> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let root: Value = serde_json::from_slice(bytes).map_err(|e| {
        format!(
            "invalid JSON at line {}, column {}: {e}",
            e.line(),
            e.column()
        )
    })?;
    let Value::Object(root) = root else {
        return Err("expected a JSON object".into());
    };
    let get = |key: &str| {
        root.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
    };
    if get("IsEncrypted") == Some(&Value::Bool(true)) {
        return Err("IsEncrypted: encrypted local settings are not supported; decrypt them with `func settings decrypt`".into());
    }
    let mut out = LocalSettings::default();
    match get("Values") {
        None | Some(Value::Null) => {}
        Some(Value::Object(values)) => {
            for (k, v) in values {
                let value = match v {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    Value::Null => String::new(),
                    _ => return Err(format!("Values.{k}: must be a string")),
                };
                out.values.insert(k.clone(), value);
            }
        }
        Some(_) => return Err("Values: must be an object".into()),
    }
    if let Some(Value::Object(host)) = get("Host") {
        let port = host
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("LocalHttpPort"))
            .map(|(_, v)| v);
        match port {
            None | Some(Value::Null) => {}
            Some(Value::Number(n)) => {
                let p = n
                    .as_u64()
                    .filter(|p| (1..=65535).contains(p))
                    .ok_or_else(|| format!("Host.LocalHttpPort: {n} is not a port"))?;
                out.local_http_port = Some(p as u16);
            }
            Some(Value::String(s)) => {
                out.local_http_port = Some(
                    s.parse()
                        .map_err(|_| format!("Host.LocalHttpPort: `{s}` is not a port"))?,
                );
            }
            Some(other) => return Err(format!("Host.LocalHttpPort: {other} is not a port")),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_and_port_are_read() {
        let s = parse(br#"{"IsEncrypted":false,"Values":{"A":"1","N":2,"B":true},"Host":{"LocalHttpPort":7075}}"#)
            .unwrap();
        assert_eq!(s.values["A"], "1");
        assert_eq!(s.values["N"], "2");
        assert_eq!(s.values["B"], "true");
        assert_eq!(s.local_http_port, Some(7075));
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        assert!(parse(b"{").unwrap_err().contains("line 1"));
        assert!(parse(br#"{"IsEncrypted":true}"#)
            .unwrap_err()
            .contains("encrypted"));
        assert!(parse(br#"{"Values":{"A":{"x":1}}}"#)
            .unwrap_err()
            .contains("Values.A"));
        assert!(parse(br#"{"Host":{"LocalHttpPort":70000}}"#)
            .unwrap_err()
            .contains("LocalHttpPort"));
    }
}
