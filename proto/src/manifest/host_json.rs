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
    /// The command line after the executable, as Azure builds it: `arguments`,
    /// then `defaultWorkerPath` (the script an interpreter runs, relative to the
    /// working directory), then `workerArguments`.
    pub arguments: Vec<String>,
    pub working_directory: Option<String>,
    /// Functions with one `httpTrigger` in and one `http` out get the client's
    /// request as it came. Always on for the legacy `httpWorker` section, which
    /// sends them to `/{FunctionName}` (see [`is_legacy_http_worker`]).
    pub enable_forwarding_http_request: bool,
}

/// Whether this host.json configures its handler with the legacy `httpWorker`
/// section (and no `customHandler`, which wins when both are present). Azure then
/// forwards HTTP-in/HTTP-out requests to `/{FunctionName}`, not to their path.
///
/// Read from a version's own host.json where it is unpacked (the package is
/// immutable, so the answer never changes for a version).
pub fn is_legacy_http_worker(bytes: &[u8]) -> bool {
    parse_host(bytes).is_ok_and(|(_, section)| section == "httpWorker")
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
    // The legacy section forwards HTTP-only functions always (Azure's
    // `CustomHandlerType.None`); the flag is `customHandler`'s opt-in.
    let enable_forwarding_http_request = r
        .opt_bool(handler, section, "enableForwardingHttpRequest")
        .unwrap_or(false)
        || section == "httpWorker";
    let description = description?;
    let default_executable_path = r.req_string(description, &desc_path, "defaultExecutablePath");
    let working_directory = r.opt_string(description, &desc_path, "workingDirectory");
    // Azure's command line: executable, arguments, "workerPath", workerArguments.
    let mut arguments = string_list(r, description, &desc_path, "arguments");
    if let Some(path) = r.opt_string(description, &desc_path, "defaultWorkerPath") {
        if path.trim().is_empty() {
            r.err(
                &key_path(&desc_path, "defaultWorkerPath"),
                "must not be empty (leave it out instead)",
            );
        } else {
            arguments.push(path);
        }
    }
    arguments.extend(string_list(r, description, &desc_path, "workerArguments"));
    Some(CustomHandler {
        default_executable_path: default_executable_path?,
        arguments,
        working_directory,
        enable_forwarding_http_request,
    })
}

/// An optional array of strings at `key`.
fn string_list(r: &mut Report, obj: &Map<String, Value>, parent: &str, key: &str) -> Vec<String> {
    let mut out = Vec::new();
    match get(obj, key) {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                match item {
                    Value::String(s) => out.push(s.clone()),
                    other => r.err(
                        &format!("{}[{i}]", key_path(parent, key)),
                        format!("expected a string, found {}", describe(other)),
                    ),
                }
            }
        }
        Some(other) => r.err(
            &key_path(parent, key),
            format!("expected an array of strings, found {}", describe(other)),
        ),
    }
    out
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
        // The legacy section always forwards HTTP-only functions (to /{FunctionName}).
        assert!(h.custom_handler.enable_forwarding_http_request);
        let both =
            br#"{"version":"2.0","httpWorker":{"description":{"defaultExecutablePath":"old"}},
                 "customHandler":{"description":{"defaultExecutablePath":"new"}}}"#;
        let h = HostConfig::from_json(both).unwrap();
        assert_eq!(h.custom_handler.default_executable_path, "new");
        assert!(!h.custom_handler.enable_forwarding_http_request);
        assert_eq!(h.route_prefix, "api");
        assert!(!is_legacy_http_worker(both));
    }

    #[test]
    fn the_worker_path_and_its_arguments_follow_the_arguments_as_azure_runs_them() {
        // Azure's own sample/HttpWorker host.json.
        let sample = br#"{"version":"2.0","httpWorker":{"description":{
            "defaultExecutablePath":"node","defaultWorkerPath":"server.js"}}}"#;
        let h = HostConfig::from_json(sample).unwrap();
        assert_eq!(h.custom_handler.default_executable_path, "node");
        assert_eq!(h.custom_handler.arguments, vec!["server.js"]);
        assert!(is_legacy_http_worker(sample));
        let h = HostConfig::from_json(
            br#"{"version":"2.0","customHandler":{"description":{"defaultExecutablePath":"python3",
                 "arguments":["-u"],"defaultWorkerPath":"app/main.py","workerArguments":["--fast"]}}}"#,
        )
        .unwrap();
        assert_eq!(
            h.custom_handler.arguments,
            vec!["-u", "app/main.py", "--fast"]
        );
        let e = errors(
            r#"{"version":"2.0","customHandler":{"description":{"defaultExecutablePath":"x",
                "defaultWorkerPath":"","workerArguments":[1]}}}"#,
        );
        assert!(
            has(&e, "customHandler.description.defaultWorkerPath"),
            "{e:?}"
        );
        assert!(
            has(&e, "customHandler.description.workerArguments[0]"),
            "{e:?}"
        );
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
