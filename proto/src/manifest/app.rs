//! A whole app: `host.json` plus every function, validated together so a deploy reports
//! every problem at once, including cross-function ones (overlapping routes) and the
//! handler executable.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::{ManifestError, PACKAGE_FILE};
use super::function_json::{
    function_json_path, FunctionContext, FunctionManifest, HttpTrigger, Trigger,
};
use super::host_json::{parse_host, HostConfig, HOST_JSON};
use super::json_walk::{get, parse_document};
use super::package::AppPackage;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppManifest {
    pub host: HostConfig,
    /// Sorted by name.
    pub functions: Vec<FunctionManifest>,
}

/// The `file` of a problem with the app's settings (not in the package).
pub const APP_SETTINGS: &str = "(app settings)";

/// Validates a package against the given app settings; `Err` holds every problem found.
/// `defaultExecutablePath` read leniently from a host.json that failed validation
/// elsewhere; `None` if it cannot be found as a string.
fn raw_executable_path(bytes: &[u8]) -> Option<(&'static str, String)> {
    let root = parse_document(bytes, HOST_JSON).ok()?;
    let root = root.as_object()?;
    let (section, handler) = match get(root, "customHandler") {
        Some(h) => ("customHandler", h),
        None => ("httpWorker", get(root, "httpWorker")?),
    };
    let desc = get(handler.as_object()?, "description")?.as_object()?;
    let exe = get(desc, "defaultExecutablePath")?.as_str()?;
    (!exe.trim().is_empty()).then(|| (section, exe.to_string()))
}

pub fn validate_app(
    pkg: &AppPackage,
    settings: &BTreeMap<String, String>,
) -> Result<AppManifest, Vec<ManifestError>> {
    validate_app_for(pkg, settings, HandlerCheck::PackageOrPath)
}

/// Where the handler executable is looked for at deploy time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandlerCheck {
    /// In the package, or (a bare name) on this machine's `PATH`: for a node that
    /// also runs the instances.
    PackageOrPath,
    /// Only a path inside the package is checked; a bare command is looked up by
    /// the workers when they start it (they report it if it is missing). For a
    /// management node that runs no instances: its own `PATH` says nothing about the
    /// workers'.
    PackageOnly,
}

/// [`validate_app`] with the handler check chosen by the caller.
pub fn validate_app_for(
    pkg: &AppPackage,
    settings: &BTreeMap<String, String>,
    handler_check: HandlerCheck,
) -> Result<AppManifest, Vec<ManifestError>> {
    let mut errors = Vec::new();
    let host = match &pkg.host_json {
        None => {
            let nested = pkg
                .files
                .keys()
                .find(|p| p.matches('/').count() == 1 && p.ends_with("/host.json"));
            let hint = match nested {
                Some(p) => {
                    format!(" (found `{p}`: zip the contents of the app folder, not the folder)")
                }
                None => String::new(),
            };
            errors.push(ManifestError::new(
                HOST_JSON,
                "",
                format!("missing: an app needs host.json at the root of the package{hint}"),
            ));
            None
        }
        Some(bytes) => match parse_host(bytes) {
            Ok(h) => Some(h),
            Err(e) => {
                errors.extend(e);
                // Still check the handler when host.json names one, so one round
                // trip reports every problem.
                if let Some((section, exe)) = raw_executable_path(bytes) {
                    if let Err(message) = check_executable(pkg, &exe) {
                        errors.push(ManifestError::new(
                            HOST_JSON,
                            format!("{section}.description.defaultExecutablePath"),
                            message,
                        ));
                    }
                }
                None
            }
        },
    };

    let file_exists = |p: &str| pkg.has_file(p);
    let ctx = FunctionContext {
        settings,
        file_exists: &file_exists,
    };
    let mut functions = Vec::new();
    for (name, bytes) in &pkg.function_jsons {
        match FunctionManifest::from_json(name, bytes, &ctx) {
            Ok(f) => functions.push(f),
            Err(e) => errors.extend(e),
        }
    }
    // host.json's `retry` is the default of functions without their own.
    if let Some(bytes) = &pkg.host_json {
        match super::function_json::host_retry(bytes, HOST_JSON) {
            Ok(Some(policy)) => {
                for f in functions.iter_mut().filter(|f| f.retry.is_none()) {
                    f.retry = Some(policy.clone());
                }
            }
            Ok(None) => {}
            // A host.json that is not JSON was reported above.
            Err(e) if host.is_some() => errors.extend(e),
            Err(_) => {}
        }
    }
    if let Some(bytes) = &pkg.host_json {
        errors.extend(super::rabbitmq::check_host(bytes));
    }
    if pkg.function_jsons.is_empty() {
        errors.push(ManifestError::new(
            PACKAGE_FILE,
            "",
            "no functions: the package has no `<name>/function.json`",
        ));
    }

    if let Some((host, section)) = &host {
        let exe = &host.custom_handler.default_executable_path;
        let checked = match handler_check {
            HandlerCheck::PackageOrPath => check_executable(pkg, exe),
            HandlerCheck::PackageOnly if exe.contains(['/', '\\']) => {
                let relative = exe.replace('\\', "/");
                if pkg.has_file(&relative) || Path::new(exe).is_absolute() {
                    Ok(())
                } else {
                    Err(format!("`{exe}` not found in the package"))
                }
            }
            HandlerCheck::PackageOnly => Ok(()),
        };
        if let Err(message) = checked {
            errors.push(ManifestError::new(
                HOST_JSON,
                format!("{section}.description.defaultExecutablePath"),
                message,
            ));
        }
    }

    functions.sort_by_key(|f| f.name.to_lowercase());
    errors.extend(route_conflicts(&functions));
    if functions
        .iter()
        .any(|f| matches!(f.trigger, super::Trigger::Timer(_)))
    {
        if let Err(e) = crate::timers::time_zone(settings) {
            errors.push(ManifestError::new(APP_SETTINGS, "", e));
        }
    }

    if let Some(problem) = scale_to_zero_problem(&functions, settings) {
        errors.push(ManifestError::new(
            APP_SETTINGS,
            "STROM_SCALE_TO_ZERO",
            problem,
        ));
    }

    match host {
        Some((host, _)) if errors.is_empty() => Ok(AppManifest { host, functions }),
        _ => Err(errors),
    }
}

/// Why `STROM_SCALE_TO_ZERO=true` cannot hold for these functions: a
/// scale-to-zero app has no instance between its timer runs and while its
/// RabbitMQ trigger queues are empty, so it cannot serve HTTP functions.
pub fn scale_to_zero_problem(
    functions: &[FunctionManifest],
    settings: &BTreeMap<String, String>,
) -> Option<String> {
    let on = settings
        .get("STROM_SCALE_TO_ZERO")
        .is_some_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "true" | "1"));
    let http: Vec<&str> = functions
        .iter()
        .filter(|f| matches!(f.trigger, super::Trigger::Http(_)))
        .map(|f| f.name.as_str())
        .collect();
    (on && !http.is_empty()).then(|| {
        format!(
            "true, but the app has HTTP functions ({}): a scale-to-zero app has no instance \
             between its timer runs (or while its queues are empty) to serve them; remove the \
             setting or move them to another app",
            http.join(", ")
        )
    })
}

/// In the package (relative path) first, then on this machine's `PATH` for a bare name;
/// an absolute path must exist here.
fn check_executable(pkg: &AppPackage, exe: &str) -> Result<(), String> {
    let relative = exe.replace('\\', "/");
    if pkg.has_file(&relative) {
        return Ok(());
    }
    let bare = !exe.contains(['/', '\\']);
    if bare && find_on_path(exe).is_some() {
        return Ok(());
    }
    if Path::new(exe).is_absolute() && is_executable(Path::new(exe)) {
        return Ok(());
    }
    Err(if bare {
        format!("`{exe}` not found in the package or on PATH")
    } else {
        format!("`{exe}` not found in the package")
    })
}

/// Looks a command up on `PATH` (with `PATHEXT` on Windows).
pub fn find_on_path(command: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    let exts: Vec<String> = if cfg!(windows) {
        let pathext = std::env::var("PATHEXT").unwrap_or_else(|_| ".EXE;.CMD;.BAT;.COM".into());
        std::iter::once(String::new())
            .chain(
                pathext
                    .split(';')
                    .filter(|e| !e.is_empty())
                    .map(str::to_string),
            )
            .collect()
    } else {
        vec![String::new()]
    };
    std::env::split_paths(&path).find_map(|dir| {
        exts.iter()
            .map(|ext| dir.join(format!("{command}{ext}")))
            .find(|candidate| is_executable(candidate))
    })
}

#[cfg(unix)]
fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(not(unix))]
fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_file())
}

fn methods_intersect(a: &[String], b: &[String]) -> bool {
    a.is_empty() || b.is_empty() || a.iter().any(|m| b.contains(m))
}

fn describe_methods(m: &[String]) -> String {
    if m.is_empty() {
        "all methods".into()
    } else {
        m.join(", ")
    }
}

/// Every pair of HTTP functions whose routes overlap with intersecting methods.
fn route_conflicts(functions: &[FunctionManifest]) -> Vec<ManifestError> {
    let http: Vec<(&FunctionManifest, &HttpTrigger)> = functions
        .iter()
        .filter_map(|f| match &f.trigger {
            Trigger::Http(h) => Some((f, h)),
            _ => None,
        })
        .collect();
    let mut errors = Vec::new();
    for (i, (fa, a)) in http.iter().enumerate() {
        for (fb, b) in &http[i + 1..] {
            if a.template.overlaps(&b.template) && methods_intersect(&a.methods, &b.methods) {
                let index = fb
                    .bindings
                    .iter()
                    .position(|x| x.name == b.binding_name)
                    .unwrap_or(0);
                errors.push(ManifestError::new(
                    function_json_path(&fb.name),
                    format!("bindings[{index}].route"),
                    format!(
                        "route `{}` ({}) overlaps route `{}` ({}) of function `{}`",
                        b.template,
                        describe_methods(&b.methods),
                        a.template,
                        describe_methods(&a.methods),
                        fa.name
                    ),
                ));
            }
        }
    }
    errors
}

/// `AzureWebJobs.<name>.Disabled` set to `true` or `1` (key and value case-insensitive).
pub fn is_function_disabled(settings: &BTreeMap<String, String>, function: &str) -> bool {
    // On the request path: no allocation.
    let is_key = |k: &str| {
        k.len() == "AzureWebJobs..Disabled".len() + function.len()
            && k[..13].eq_ignore_ascii_case("AzureWebJobs.")
            && k.is_char_boundary(13 + function.len())
            && k[13..13 + function.len()].eq_ignore_ascii_case(function)
            && k[13 + function.len()..].eq_ignore_ascii_case(".Disabled")
    };
    settings
        .iter()
        .any(|(k, v)| is_key(k) && (v.trim().eq_ignore_ascii_case("true") || v.trim() == "1"))
}

impl HttpTrigger {
    /// The public path of the function: `/api/<route>`, or `/<route>` with an empty prefix.
    pub fn url_path(&self, route_prefix: &str) -> String {
        let prefix = route_prefix.trim_matches('/');
        let route = self.route.trim_start_matches("~/").trim_matches('/');
        match (prefix.is_empty(), route.is_empty()) {
            (true, _) => format!("/{route}"),
            (false, true) => format!("/{prefix}"),
            (false, false) => format!("/{prefix}/{route}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::package::tests::zip_of;
    use crate::manifest::package::ZipLimits;

    const HOST: &str =
        r#"{"version":"2.0","customHandler":{"description":{"defaultExecutablePath":"handler"}}}"#;

    fn http(route: &str, methods: &str) -> String {
        format!(
            r#"{{"bindings":[{{"type":"httpTrigger","direction":"in","name":"req","route":"{route}","methods":{methods}}},
                {{"type":"http","direction":"out","name":"res"}}]}}"#
        )
    }

    const TIMER: &str = r#"{"bindings":[{"type":"timerTrigger","direction":"in","name":"t","schedule":"0 */5 * * * *"}]}"#;

    fn validate(files: &[(&str, &str)]) -> Result<AppManifest, Vec<ManifestError>> {
        let pkg = AppPackage::from_zip_bytes(&zip_of(files), &ZipLimits::default()).unwrap();
        validate_app(&pkg, &BTreeMap::new())
    }

    fn errs(files: &[(&str, &str)]) -> Vec<String> {
        validate(files)
            .expect_err("should fail")
            .iter()
            .map(|e| e.to_string())
            .collect()
    }

    fn assert_has(errors: &[String], needle: &str) {
        assert!(
            errors.iter().any(|e| e.contains(needle)),
            "no `{needle}` in {errors:#?}"
        );
    }

    fn good_app() -> AppManifest {
        let items = http("items/{id:int}", r#"["get"]"#);
        let orders = http("orders/{*rest}", "[]");
        validate(&[
            ("host.json", HOST),
            ("handler", "#!/bin/sh"),
            ("items/function.json", &items),
            ("Orders/function.json", &orders),
            ("tick/function.json", TIMER),
            (
                "static/readme.txt",
                "folders without function.json are ignored",
            ),
        ])
        .unwrap_or_else(|e| panic!("{e:#?}"))
    }

    #[test]
    fn good_app_validates() {
        let app = good_app();
        let names: Vec<&str> = app.functions.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, vec!["items", "Orders", "tick"]);
        let Trigger::Http(h) = &app.functions[0].trigger else {
            panic!()
        };
        assert_eq!(h.url_path(&app.host.route_prefix), "/api/items/{id:int}");
        assert_eq!(h.url_path(""), "/items/{id:int}");
        assert!(matches!(app.functions[2].trigger, Trigger::Timer(_)));
    }

    #[test]
    fn manifest_round_trips_through_bincode() {
        let app = good_app();
        let bytes = bincode::serde::encode_to_vec(&app, bincode::config::standard()).unwrap();
        let (back, _): (AppManifest, usize) =
            bincode::serde::decode_from_slice(&bytes, bincode::config::standard()).unwrap();
        assert_eq!(back, app);
    }

    #[test]
    fn several_errors_from_different_files_at_once() {
        let bad_route = http("items/{id", "[\"get\"]");
        let e = errs(&[
            (
                "host.json",
                r#"{"version":"2.0","customHandler":{"description":{"defaultExecutablePath":"handler"}},"functionTimeout":"1:00"}"#,
            ),
            ("handler", ""),
            ("a/function.json", &bad_route),
            ("b/function.json", "{\"bindings\": [}"),
            ("1abc/function.json", TIMER),
            ("a b/function.json", TIMER),
            ("host/function.json", TIMER),
            (
                "c/function.json",
                r#"{"bindings":[{"type":"timerTrigger","direction":"in","name":"t","schedule":"0 0 0 * * 8"}]}"#,
            ),
        ]);
        assert_has(&e, "host.json: functionTimeout: \"1:00\" is not hh:mm:ss");
        assert_has(
            &e,
            "a/function.json: bindings[0].route: route `items/{id`: `{id` is not closed",
        );
        assert_has(&e, "b/function.json: invalid JSON at line 1, column");
        assert_has(
            &e,
            "1abc/function.json: `1abc` is not a valid function name",
        );
        assert_has(&e, "a b/function.json: `a b` is not a valid function name");
        assert_has(&e, "host/function.json: `host` is reserved");
        assert_has(
            &e,
            "c/function.json: bindings[0].schedule: schedule `0 0 0 * * 8`",
        );
        assert_eq!(e.len(), 7, "{e:#?}");
    }

    #[test]
    fn a_timer_app_needs_a_time_zone_that_exists() {
        let files = [
            ("host.json", HOST),
            ("handler", "#!/bin/sh"),
            ("t/function.json", TIMER),
        ];
        let pkg = AppPackage::from_zip_bytes(&zip_of(&files), &ZipLimits::default()).unwrap();
        let zone =
            |name: &str| BTreeMap::from([("WEBSITE_TIME_ZONE".to_string(), name.to_string())]);
        assert!(validate_app(&pkg, &zone("W. Europe Standard Time")).is_ok());
        let e = validate_app(&pkg, &zone("Nowhere/Land")).unwrap_err();
        assert_eq!(e.len(), 1, "{e:#?}");
        assert_eq!(e[0].file, APP_SETTINGS);
        assert!(
            e[0].message.contains("WEBSITE_TIME_ZONE: `Nowhere/Land`"),
            "{e:#?}"
        );
    }

    #[test]
    fn overlapping_routes_need_intersecting_methods() {
        let e = errs(&[
            ("host.json", HOST),
            ("handler", ""),
            ("a/function.json", &http("items/{id}", r#"["get","post"]"#)),
            ("b/function.json", &http("Items/{key}", r#"["POST"]"#)),
            ("c/function.json", &http("items/{key}", r#"["delete"]"#)),
            ("d/function.json", &http("items/new", "[]")),
            ("e/function.json", &http("things/{n?}", "[]")),
            ("f/function.json", &http("things", r#"["put"]"#)),
        ]);
        assert_has(&e, "b/function.json: bindings[0].route: route `Items/{key}` (POST) overlaps route `items/{id}` (GET, POST) of function `a`");
        assert_has(&e, "f/function.json: bindings[0].route: route `things` (PUT) overlaps route `things/{n?}` (all methods) of function `e`");
        assert_eq!(e.len(), 2, "{e:#?}");
    }

    #[test]
    fn handler_executable_lookup() {
        let f = http("x", "[]");
        let e = errs(&[("host.json", HOST), ("x/function.json", &f)]);
        assert_eq!(e, vec!["host.json: customHandler.description.defaultExecutablePath: `handler` not found in the package or on PATH"]);
        let host = HOST.replace("handler", "bin/server");
        assert!(validate(&[
            ("host.json", &host),
            ("bin/server", ""),
            ("x/function.json", &f)
        ])
        .is_ok());
        let e = errs(&[("host.json", &host), ("x/function.json", &f)]);
        assert_has(&e, "`bin/server` not found in the package");
        #[cfg(unix)]
        {
            let host = HOST.replace("handler", "sh");
            assert!(validate(&[("host.json", &host), ("x/function.json", &f)]).is_ok());
        }
        let worker = r#"{"version":"2.0","httpWorker":{"description":{"defaultExecutablePath":"nope-not-here"}}}"#;
        let e = errs(&[("host.json", worker), ("x/function.json", &f)]);
        assert_has(
            &e,
            "host.json: httpWorker.description.defaultExecutablePath: `nope-not-here` not found",
        );
    }

    #[test]
    fn a_management_only_node_leaves_bare_commands_to_the_workers() {
        let f = http("x", "[]");
        let for_workers = |host: &str| {
            let files = [("host.json", host), ("x/function.json", f.as_str())];
            let pkg = AppPackage::from_zip_bytes(&zip_of(&files), &ZipLimits::default()).unwrap();
            validate_app_for(&pkg, &BTreeMap::new(), HandlerCheck::PackageOnly)
        };
        // Not on this node's PATH, but perhaps on the workers'.
        assert!(for_workers(&HOST.replace("handler", "nope-not-here")).is_ok());
        // A path inside the package must still be in the package.
        let e = for_workers(&HOST.replace("handler", "bin/server")).unwrap_err();
        assert!(
            e[0].to_string()
                .contains("`bin/server` not found in the package"),
            "{e:?}"
        );
    }

    #[test]
    fn missing_host_empty_app_and_unsupported_bindings() {
        let e = errs(&[("app/host.json", HOST)]);
        assert_has(&e, "host.json: missing: an app needs host.json at the root of the package (found `app/host.json`");
        assert_has(&e, "(package): no functions");
        let e = errs(&[
            ("host.json", HOST),
            ("handler", ""),
            ("static/index.html", ""),
        ]);
        assert_eq!(
            e,
            vec!["(package): no functions: the package has no `<name>/function.json`"]
        );

        let q = r#"{"bindings":[{"type":"queueTrigger","direction":"in","name":"q","queueName":"jobs"}]}"#;
        let app = validate(&[
            ("host.json", HOST),
            ("handler", ""),
            ("work/function.json", q),
        ])
        .unwrap();
        assert_eq!(
            app.functions[0].unsupported,
            vec!["binding `q` of type `queueTrigger` is not supported on this cluster"]
        );
    }

    #[test]
    fn a_rabbitmq_app_may_scale_to_zero_but_not_with_http_functions() {
        let q = r#"{"bindings":[{"type":"rabbitMQTrigger","direction":"in","name":"m",
            "queueName":"jobs","connectionStringSetting":"Mq"}]}"#;
        let h = r#"{"bindings":[{"type":"httpTrigger","direction":"in","name":"req"},
            {"type":"http","direction":"out","name":"res"}]}"#;
        let files = [
            ("host.json", HOST),
            ("handler", ""),
            ("work/function.json", q),
        ];
        let pkg = AppPackage::from_zip_bytes(&zip_of(&files), &ZipLimits::default()).unwrap();
        let mut settings = BTreeMap::from([("Mq".to_string(), "amqp://h".to_string())]);
        settings.insert("STROM_SCALE_TO_ZERO".into(), "true".into());
        assert!(validate_app(&pkg, &settings).is_ok());
        let files = [
            ("host.json", HOST),
            ("handler", ""),
            ("work/function.json", q),
            ("web/function.json", h),
        ];
        let pkg = AppPackage::from_zip_bytes(&zip_of(&files), &ZipLimits::default()).unwrap();
        let e = validate_app(&pkg, &settings).unwrap_err();
        assert!(
            e[0].message.contains("HTTP functions (web)"),
            "{}",
            e[0].message
        );
    }

    #[test]
    fn disabled_setting() {
        let s: BTreeMap<String, String> = [
            (
                "AZUREWEBJOBS.hello.disabled".to_string(),
                "True".to_string(),
            ),
            ("AzureWebJobs.two.Disabled".to_string(), "1".to_string()),
            (
                "AzureWebJobs.three.Disabled".to_string(),
                "false".to_string(),
            ),
        ]
        .into();
        assert!(is_function_disabled(&s, "hello"));
        assert!(is_function_disabled(&s, "two"));
        assert!(!is_function_disabled(&s, "three"));
        assert!(!is_function_disabled(&s, "other"));
    }

    #[test]
    fn package_errors_become_manifest_errors() {
        let err = AppPackage::from_zip_bytes(&zip_of(&[("../evil", "")]), &ZipLimits::default())
            .unwrap_err();
        let m: ManifestError = err.into();
        assert_eq!(m.file, "../evil");
        assert!(m.message.contains("`..` is not allowed"));
    }
}
