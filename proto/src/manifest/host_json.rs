//! `host.json`: the app-wide settings Strom honours (custom handler, timeout, HTTP
//! prefix and limits, log levels). Unknown sections are ignored, as Azure ignores them.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::error::ManifestError;
use super::json_walk::{describe, get, key_path, parse_document, Report};
use super::timespan::parse_timespan_ms;

pub const HOST_JSON: &str = "host.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostConfig {
    pub version: String,
    pub custom_handler: CustomHandler,
    /// `None` = unbounded (`"-1"` or absent).
    pub function_timeout_ms: Option<u64>,
    /// Default `api`; stored without leading/trailing `/`; may be empty.
    pub route_prefix: String,
    /// `None` = unbounded (`-1` or absent).
    pub max_concurrent_requests: Option<u32>,
    pub max_outstanding_requests: Option<u32>,
    /// `logging.logLevel` entries, as written.
    pub log_levels: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomHandler {
    pub default_executable_path: String,
    pub arguments: Vec<String>,
    pub working_directory: Option<String>,
    pub enable_forwarding_http_request: bool,
}

const LOG_LEVELS: [&str; 7] = [
    "Trace",
    "Debug",
    "Information",
    "Warning",
    "Error",
    "Critical",
    "None",
];

impl HostConfig {
    /// Parses `host.json`, returning every problem found.
    pub fn from_json(bytes: &[u8]) -> Result<HostConfig, Vec<ManifestError>> {
        parse_host(bytes).map(|(h, _)| h)
    }
}

/// Parses `host.json`; also returns which section held the handler (`customHandler` or
/// the legacy `httpWorker`) so later errors can point at it.
pub(crate) fn parse_host(bytes: &[u8]) -> Result<(HostConfig, &'static str), Vec<ManifestError>> {
    let doc = parse_document(bytes, HOST_JSON).map_err(|e| vec![e])?;
    let mut r = Report::new(HOST_JSON);
    let Some(root) = r.object(&doc, "") else {
        return Err(r.into_errors());
    };

    let version = match get(root, "version") {
        None | Some(Value::Null) => {
            r.err(
                "version",
                "required: add \"version\": \"2.0\" (Functions v1 apps are not supported)",
            );
            None
        }
        Some(_) => r.req_string(root, "", "version"),
    };
    if let Some(v) = &version {
        if v.trim() != "2.0" {
            r.err("version", format!("must be \"2.0\", found {v:?}"));
        }
    }

    let (section, handler) = match (get(root, "customHandler"), get(root, "httpWorker")) {
        (Some(_), _) | (None, None) => (
            "customHandler",
            parse_handler(&mut r, root, "customHandler"),
        ),
        (None, Some(_)) => ("httpWorker", parse_handler(&mut r, root, "httpWorker")),
    };

    let function_timeout_ms = match get(root, "functionTimeout") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.trim() == "-1" => None,
        Some(Value::String(s)) => match parse_timespan_ms(s) {
            Some(0) => {
                r.err("functionTimeout", format!("{s:?} must be longer than zero"));
                None
            }
            Some(ms) => Some(ms),
            None => {
                r.err(
                    "functionTimeout",
                    format!("{s:?} is not hh:mm:ss (or d.hh:mm:ss, or \"-1\" for unbounded)"),
                );
                None
            }
        },
        Some(other) => {
            r.err(
                "functionTimeout",
                format!(
                    "expected a string like \"00:10:00\", found {}",
                    describe(other)
                ),
            );
            None
        }
    };

    let mut route_prefix = "api".to_string();
    let mut max_concurrent_requests = None;
    let mut max_outstanding_requests = None;
    if let Some(ext) = r.opt_object(root, "", "extensions") {
        if let Some(http) = r.opt_object(ext, "extensions", "http") {
            let p = "extensions.http";
            if let Some(prefix) = r.opt_string(http, p, "routePrefix") {
                let trimmed = prefix.trim().trim_matches('/');
                if let Some(bad) = trimmed
                    .chars()
                    .find(|c| "{}?#%\\".contains(*c) || c.is_whitespace())
                {
                    r.err(
                        &key_path(p, "routePrefix"),
                        format!("{prefix:?} must not contain `{bad}`"),
                    );
                }
                if trimmed.split('/').any(str::is_empty) && !trimmed.is_empty() {
                    r.err(
                        &key_path(p, "routePrefix"),
                        format!("{prefix:?} has an empty segment"),
                    );
                }
                route_prefix = trimmed.to_string();
            }
            max_concurrent_requests = limit(&mut r, http, p, "maxConcurrentRequests");
            max_outstanding_requests = limit(&mut r, http, p, "maxOutstandingRequests");
        }
    }

    let mut log_levels = Vec::new();
    if let Some(logging) = r.opt_object(root, "", "logging") {
        if let Some(levels) = r.opt_object(logging, "logging", "logLevel") {
            for (category, level) in levels {
                let path = key_path("logging.logLevel", category);
                match level {
                    Value::String(l) if LOG_LEVELS.iter().any(|k| k.eq_ignore_ascii_case(l)) => {
                        log_levels.push((category.clone(), l.clone()));
                    }
                    other => r.err(
                        &path,
                        format!(
                            "{} is not a log level ({})",
                            describe(other),
                            LOG_LEVELS.join(", ")
                        ),
                    ),
                }
            }
        }
    }

    let value = match (version, handler) {
        (Some(version), Some(custom_handler)) => Some((
            HostConfig {
                version,
                custom_handler,
                function_timeout_ms,
                route_prefix,
                max_concurrent_requests,
                max_outstanding_requests,
                log_levels,
            },
            section,
        )),
        _ => None,
    };
    r.finish(value)
}

fn parse_handler(
    r: &mut Report,
    root: &Map<String, Value>,
    section: &str,
) -> Option<CustomHandler> {
    let Some(v) = get(root, section) else {
        r.err(
            section,
            "required: Strom runs custom handlers; add customHandler.description.defaultExecutablePath",
        );
        return None;
    };
    let handler = r.object(v, section)?;
    let desc_path = key_path(section, "description");
    let description = match get(handler, "description") {
        None | Some(Value::Null) => {
            r.err(&desc_path, "required");
            None
        }
        Some(d) => r.object(d, &desc_path),
    };
    let enable_forwarding_http_request = r
        .opt_bool(handler, section, "enableForwardingHttpRequest")
        .unwrap_or(false);
    let description = description?;
    let default_executable_path = r.req_string(description, &desc_path, "defaultExecutablePath");
    let working_directory = r.opt_string(description, &desc_path, "workingDirectory");
    let mut arguments = Vec::new();
    match get(description, "arguments") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                match item {
                    Value::String(s) => arguments.push(s.clone()),
                    other => r.err(
                        &format!("{}[{i}]", key_path(&desc_path, "arguments")),
                        format!("expected a string, found {}", describe(other)),
                    ),
                }
            }
        }
        Some(other) => r.err(
            &key_path(&desc_path, "arguments"),
            format!("expected an array of strings, found {}", describe(other)),
        ),
    }
    Some(CustomHandler {
        default_executable_path: default_executable_path?,
        arguments,
        working_directory,
        enable_forwarding_http_request,
    })
}

/// `-1` or absent → unbounded; a positive integer → that limit.
fn limit(r: &mut Report, obj: &Map<String, Value>, parent: &str, key: &str) -> Option<u32> {
    let n = r.opt_i64(obj, parent, key)?;
    if n == -1 {
        return None;
    }
    match u32::try_from(n) {
        Ok(v) if v > 0 => Some(v),
        _ => {
            r.err(
                &key_path(parent, key),
                format!("{n} must be -1 (unbounded) or a positive integer"),
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(json: &str) -> Vec<String> {
        HostConfig::from_json(json.as_bytes())
            .expect_err("should fail")
            .iter()
            .map(|e| e.to_string())
            .collect()
    }

    fn has(errors: &[String], needle: &str) -> bool {
        errors.iter().any(|e| e.contains(needle))
    }

    #[test]
    fn full_host_json() {
        let h = HostConfig::from_json(
            br#"{
              "Version": "2.0",
              "functionTimeout": "00:10:00",
              "logging": {"logLevel": {"default": "Information", "Function.hello": "Debug"}},
              "extensions": {"http": {"routePrefix": "/v1/", "maxConcurrentRequests": 10,
                                      "maxOutstandingRequests": -1}},
              "extensionBundle": {"id": "Microsoft.Azure.Functions.ExtensionBundle"},
              "CUSTOMHANDLER": {
                "description": {"defaultExecutablePath": "handler", "arguments": ["--port", "%PORT%"],
                                "workingDirectory": "bin"},
                "enableForwardingHttpRequest": true
              }
            }"#,
        )
        .unwrap();
        assert_eq!(h.version, "2.0");
        assert_eq!(h.function_timeout_ms, Some(600_000));
        assert_eq!(h.route_prefix, "v1");
        assert_eq!(h.max_concurrent_requests, Some(10));
        assert_eq!(h.max_outstanding_requests, None);
        assert_eq!(h.custom_handler.default_executable_path, "handler");
        assert_eq!(h.custom_handler.arguments, vec!["--port", "%PORT%"]);
        assert_eq!(h.custom_handler.working_directory.as_deref(), Some("bin"));
        assert!(h.custom_handler.enable_forwarding_http_request);
        assert_eq!(h.log_levels.len(), 2);
    }

    #[test]
    fn defaults_and_legacy_http_worker() {
        let h = HostConfig::from_json(
            br#"{"version":"2.0","functionTimeout":"-1","extensions":{"http":{"routePrefix":""}},
                 "httpWorker":{"description":{"defaultExecutablePath":"app"}}}"#,
        )
        .unwrap();
        assert_eq!(h.function_timeout_ms, None);
        assert_eq!(h.route_prefix, "");
        assert_eq!(h.custom_handler.default_executable_path, "app");
        assert!(!h.custom_handler.enable_forwarding_http_request);
        let h = HostConfig::from_json(
            br#"{"version":"2.0","httpWorker":{"description":{"defaultExecutablePath":"old"}},
                 "customHandler":{"description":{"defaultExecutablePath":"new"}}}"#,
        )
        .unwrap();
        assert_eq!(h.custom_handler.default_executable_path, "new");
        assert_eq!(h.route_prefix, "api");
    }

    #[test]
    fn reports_every_problem_with_its_path() {
        let e = errors(
            r#"{"version": "1.0", "functionTimeout": "1:00",
                "customHandler": {"description": {"arguments": "x"}},
                "extensions": {"http": {"maxConcurrentRequests": 0, "maxOutstandingRequests": "many"}},
                "logging": {"logLevel": {"default": "Loud"}}}"#,
        );
        assert!(
            has(&e, r#"host.json: version: must be "2.0", found "1.0""#),
            "{e:?}"
        );
        assert!(
            has(&e, r#"host.json: functionTimeout: "1:00" is not hh:mm:ss"#),
            "{e:?}"
        );
        assert!(
            has(
                &e,
                "host.json: customHandler.description.defaultExecutablePath: required"
            ),
            "{e:?}"
        );
        assert!(
            has(
                &e,
                "customHandler.description.arguments: expected an array of strings"
            ),
            "{e:?}"
        );
        assert!(
            has(&e, "extensions.http.maxConcurrentRequests: 0 must be -1"),
            "{e:?}"
        );
        assert!(
            has(
                &e,
                "extensions.http.maxOutstandingRequests: expected an integer"
            ),
            "{e:?}"
        );
        assert!(
            has(
                &e,
                "logging.logLevel.default: a string (\"Loud\") is not a log level"
            ),
            "{e:?}"
        );
        assert_eq!(e.len(), 7, "{e:?}");
    }

    #[test]
    fn missing_sections_and_malformed_json() {
        let e = errors("{}");
        assert!(has(&e, "host.json: version: required"), "{e:?}");
        assert!(has(&e, "host.json: customHandler: required"), "{e:?}");
        assert_eq!(e.len(), 2, "{e:?}");
        let e = errors("{\"version\": \"2.0\",}");
        assert_eq!(e.len(), 1);
        assert!(
            e[0].starts_with("host.json: invalid JSON at line 1, column"),
            "{e:?}"
        );
        let e = errors("[1]");
        assert!(
            has(&e, "host.json: the document must be an object"),
            "{e:?}"
        );
    }
}
