//! `<name>/function.json`: one function's trigger and bindings.
//!
//! Strom runs `httpTrigger` (with an `http` output) and `timerTrigger`, and publishes
//! `rabbitMQ` outputs (their queue and connection checked here; see
//! [`super::rabbitmq`]). Every other binding type is accepted and recorded as
//! unsupported, so an app written for Azure still deploys and `strom app show` can say
//! which functions will not run here. A `rabbitMQTrigger` is checked like an output
//! and runs a consumer per instance.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::error::ManifestError;
use super::json_walk::{describe, get, index_path, key_path, parse_document, Report};
use super::ncrontab::Schedule;
use super::route_template::{RouteTemplate, Segment};
use super::timespan::parse_timespan_ms;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionManifest {
    pub name: String,
    pub trigger: Trigger,
    pub bindings: Vec<BindingSpec>,
    pub retry: Option<RetryPolicy>,
    /// Human reasons why (part of) this function will not run on this cluster.
    pub unsupported: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindingSpec {
    pub binding_type: String,
    pub direction: Direction,
    pub name: String,
    pub supported: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Direction {
    In,
    Out,
    InOut,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Trigger {
    Http(HttpTrigger),
    Timer(TimerTrigger),
    Unsupported {
        binding_type: String,
    },
    /// Last: variants are appended (bincode numbers them), and only a cluster of
    /// protocol 9 accepts a version with one.
    RabbitMq(super::rabbitmq::RabbitMqTrigger),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpTrigger {
    pub binding_name: String,
    pub auth_level: AuthLevel,
    /// Upper-case; empty = every method.
    pub methods: Vec<String>,
    /// As written; defaults to the function name.
    pub route: String,
    pub template: RouteTemplate,
    /// Name of the `http` output binding (`res`, `$return`), if any.
    pub output: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthLevel {
    Anonymous,
    Function,
    Admin,
}

impl AuthLevel {
    /// As `function.json` and the API spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthLevel::Anonymous => "anonymous",
            AuthLevel::Function => "function",
            AuthLevel::Admin => "admin",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimerTrigger {
    pub binding_name: String,
    /// As written; may be `%Setting%`, resolved when the timer is scheduled.
    pub schedule: String,
    pub run_on_startup: bool,
    pub use_monitor: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryPolicy {
    pub strategy: RetryStrategy,
    /// -1 = retry forever.
    pub max_retry_count: i32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RetryStrategy {
    FixedDelay { delay_ms: u64 },
    ExponentialBackoff { minimum_ms: u64, maximum_ms: u64 },
}

impl RetryPolicy {
    /// How long to wait before retry `attempt` (1 = the first retry), or `None`
    /// when the policy allows no more: a fixed delay, or the minimum interval
    /// doubled for each retry after the first, at most the maximum.
    pub fn delay_before(&self, attempt: u32) -> Option<u64> {
        if attempt == 0 || (self.max_retry_count >= 0 && attempt > self.max_retry_count as u32) {
            return None;
        }
        Some(match self.strategy {
            RetryStrategy::FixedDelay { delay_ms } => delay_ms,
            RetryStrategy::ExponentialBackoff {
                minimum_ms,
                maximum_ms,
            } => minimum_ms
                .saturating_mul(1u64 << (attempt - 1).min(62))
                .min(maximum_ms),
        })
    }
}

/// What the function.json checks need from outside the file.
pub struct FunctionContext<'a> {
    /// App settings, for `%Setting%` schedules.
    pub settings: &'a BTreeMap<String, String>,
    /// Whether a package-relative path (with `/`) is a file in the package.
    pub file_exists: &'a dyn Fn(&str) -> bool,
}

impl std::fmt::Debug for FunctionContext<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FunctionContext").finish_non_exhaustive()
    }
}

/// `^[a-z][a-z0-9_\-]{0,127}$` case-insensitively, and not `host`.
pub fn validate_function_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let valid = name.len() <= 128
        && chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !valid {
        return Err(format!(
            "`{name}` is not a valid function name: it must start with a letter and contain only \
             letters, digits, `_` and `-` (at most 128 characters)"
        ));
    }
    if name.eq_ignore_ascii_case("host") {
        return Err("`host` is reserved and cannot be a function name".into());
    }
    Ok(())
}

/// The `function.json` path of a function folder, as used in error messages.
pub fn function_json_path(name: &str) -> String {
    format!("{name}/function.json")
}

const KNOWN_METHODS: [&str; 8] = [
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE",
];

impl FunctionManifest {
    /// `(name, type)` of the output bindings this cluster does not support: values
    /// given to them are dropped (and the drop recorded).
    pub fn unsupported_outputs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.bindings
            .iter()
            .filter(|b| !b.supported && b.direction != Direction::In)
            .map(|b| (b.name.as_str(), b.binding_type.as_str()))
    }

    /// Parses and validates `<name>/function.json`, returning every problem found.
    pub fn from_json(
        name: &str,
        bytes: &[u8],
        ctx: &FunctionContext<'_>,
    ) -> Result<FunctionManifest, Vec<ManifestError>> {
        let file = function_json_path(name);
        let mut r = Report::new(file.clone());
        if let Err(e) = validate_function_name(name) {
            r.err("", e);
        }
        let doc = match parse_document(bytes, &file) {
            Ok(d) => d,
            Err(e) => {
                r.push(e);
                return Err(r.into_errors());
            }
        };
        let Some(root) = r.object(&doc, "") else {
            return Err(r.into_errors());
        };

        if let Some(script) = r.opt_string(root, "", "scriptFile") {
            match resolve_relative(name, &script) {
                Some(p) if (ctx.file_exists)(&p) => {}
                Some(p) => r.err(
                    "scriptFile",
                    format!("`{script}` not found in the package (looked for `{p}`)"),
                ),
                None => r.err("scriptFile", format!("`{script}` points outside the app")),
            }
        }
        let retry = parse_retry(&mut r, root);
        let parsed = parse_bindings(&mut r, root, name, ctx);
        let value = parsed.map(|(trigger, bindings)| {
            let unsupported = bindings
                .iter()
                .filter(|b| !b.supported)
                .map(|b| {
                    format!(
                        "binding `{}` of type `{}` is not supported on this cluster",
                        b.name, b.binding_type
                    )
                })
                .collect();
            FunctionManifest {
                name: name.to_string(),
                trigger,
                bindings,
                retry,
                unsupported,
            }
        });
        r.finish(value)
    }
}

/// Joins a path relative to the function folder, resolving `.` and `..`; `None` if it
/// leaves the app root.
fn resolve_relative(folder: &str, path: &str) -> Option<String> {
    let mut parts: Vec<&str> = vec![folder];
    for c in path.split(['/', '\\']) {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            c => parts.push(c),
        }
    }
    Some(parts.join("/"))
}

fn is_binding_name(name: &str) -> bool {
    if name == "$return" {
        return true;
    }
    let mut chars = name.chars();
    name.len() <= 128
        && chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric())
}

fn is_http_token(m: &str) -> bool {
    !m.is_empty()
        && m.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn parse_bindings(
    r: &mut Report,
    root: &Map<String, Value>,
    function: &str,
    ctx: &FunctionContext<'_>,
) -> Option<(Trigger, Vec<BindingSpec>)> {
    let items = match get(root, "bindings") {
        None | Some(Value::Null) => {
            r.err(
                "bindings",
                "required: a function needs at least a trigger binding",
            );
            return None;
        }
        Some(Value::Array(items)) if items.is_empty() => {
            r.err(
                "bindings",
                "must not be empty: a function needs a trigger binding",
            );
            return None;
        }
        Some(Value::Array(items)) => items,
        Some(other) => {
            r.err(
                "bindings",
                format!("expected an array, found {}", describe(other)),
            );
            return None;
        }
    };

    let mut bindings: Vec<Option<BindingSpec>> = Vec::new();
    let mut trigger_index: Option<usize> = None;
    let mut trigger_count = 0;
    let mut http_outputs: Vec<(usize, String)> = Vec::new();
    let mut rabbit: BTreeMap<usize, super::rabbitmq::RabbitMqBinding> = BTreeMap::new();
    for (i, item) in items.iter().enumerate() {
        let path = index_path("bindings", i);
        let Some(obj) = r.object(item, &path) else {
            bindings.push(None);
            continue;
        };
        let binding_type = r.req_string(obj, &path, "type");
        let name = r.req_string(obj, &path, "name");
        if let Some(n) = &name {
            if !is_binding_name(n) {
                r.err(
                    &key_path(&path, "name"),
                    format!("`{n}` is not a valid binding name: use letters and digits, starting with a letter, or `$return`"),
                );
            } else if let Some(j) = bindings
                .iter()
                .position(|b| b.as_ref().is_some_and(|b| b.name.eq_ignore_ascii_case(n)))
            {
                r.err(
                    &key_path(&path, "name"),
                    format!("duplicate binding name `{n}` (also bindings[{j}])"),
                );
            }
        }
        let direction = match r.req_string(obj, &path, "direction") {
            None => None,
            Some(d) => match d.to_ascii_lowercase().as_str() {
                "in" => Some(Direction::In),
                "out" => Some(Direction::Out),
                "inout" => Some(Direction::InOut),
                _ => {
                    r.err(
                        &key_path(&path, "direction"),
                        format!("`{d}` is not one of `in`, `out`, `inout`"),
                    );
                    None
                }
            },
        };
        let (Some(binding_type), Some(name), Some(direction)) = (binding_type, name, direction)
        else {
            bindings.push(None);
            continue;
        };
        let lower = binding_type.to_ascii_lowercase();
        if lower.ends_with("trigger") {
            trigger_count += 1;
            match trigger_index {
                None => trigger_index = Some(i),
                Some(first) => r.err(
                    &key_path(&path, "type"),
                    format!(
                        "second trigger `{binding_type}`: a function has exactly one trigger (the first is bindings[{first}])"
                    ),
                ),
            }
        }
        let supported = matches!(
            lower.as_str(),
            "httptrigger" | "http" | "timertrigger" | "rabbitmq" | "rabbitmqtrigger"
        );
        if matches!(lower.as_str(), "rabbitmq" | "rabbitmqtrigger") {
            let wanted = if lower == "rabbitmq" {
                Direction::Out
            } else {
                Direction::In
            };
            if direction != wanted {
                r.err(
                    &key_path(&path, "direction"),
                    format!(
                        "a `{binding_type}` binding must have direction `{}`",
                        if wanted == Direction::Out {
                            "out"
                        } else {
                            "in"
                        }
                    ),
                );
            }
            if let Some(b) = super::rabbitmq::read_binding(r, obj, &path, &name, Some(ctx.settings))
            {
                rabbit.insert(i, b);
            }
        }
        if lower == "http" {
            if direction != Direction::Out {
                r.err(
                    &key_path(&path, "direction"),
                    "an `http` binding must have direction `out`",
                );
            }
            http_outputs.push((i, name.clone()));
        }
        if matches!(lower.as_str(), "httptrigger" | "timertrigger") && direction != Direction::In {
            r.err(
                &key_path(&path, "direction"),
                format!("a `{binding_type}` binding must have direction `in`"),
            );
        }
        bindings.push(Some(BindingSpec {
            binding_type,
            direction,
            name,
            supported,
        }));
    }
    if trigger_count == 0 && bindings.iter().all(Option::is_some) {
        r.err(
            "bindings",
            "no trigger: a function needs exactly one binding whose type ends in `Trigger` (e.g. `httpTrigger`)",
        );
    }

    let trigger = trigger_index.and_then(|i| {
        let spec = bindings[i].as_ref()?;
        let obj = items[i].as_object()?;
        let path = index_path("bindings", i);
        match spec.binding_type.to_ascii_lowercase().as_str() {
            "httptrigger" => {
                if http_outputs.len() > 1 {
                    let names: Vec<String> = http_outputs
                        .iter()
                        .map(|(j, n)| format!("bindings[{j}] `{n}`"))
                        .collect();
                    r.err(
                        "bindings",
                        format!("more than one `http` output binding: {}", names.join(", ")),
                    );
                }
                let output = http_outputs.first().map(|(_, n)| n.clone());
                parse_http_trigger(r, obj, &path, function, &spec.name, output).map(Trigger::Http)
            }
            "timertrigger" => {
                parse_timer_trigger(r, obj, &path, &spec.name, ctx).map(Trigger::Timer)
            }
            "rabbitmqtrigger" => rabbit.remove(&i).map(|b| {
                Trigger::RabbitMq(super::rabbitmq::RabbitMqTrigger {
                    binding_name: b.binding_name,
                    queue_name: b.queue_name,
                    connection: b.connection,
                })
            }),
            _ => Some(Trigger::Unsupported {
                binding_type: spec.binding_type.clone(),
            }),
        }
    });
    let bindings: Option<Vec<BindingSpec>> = bindings.into_iter().collect();
    Some((trigger?, bindings?))
}

fn parse_http_trigger(
    r: &mut Report,
    obj: &Map<String, Value>,
    path: &str,
    function: &str,
    binding_name: &str,
    output: Option<String>,
) -> Option<HttpTrigger> {
    let auth_level = match get(obj, "authLevel") {
        None | Some(Value::Null) => Some(AuthLevel::Function),
        Some(Value::String(s)) => match s.to_ascii_lowercase().as_str() {
            "anonymous" => Some(AuthLevel::Anonymous),
            "function" => Some(AuthLevel::Function),
            "admin" => Some(AuthLevel::Admin),
            _ => {
                r.err(
                    &key_path(path, "authLevel"),
                    format!("`{s}` is not one of `anonymous`, `function`, `admin`"),
                );
                None
            }
        },
        Some(other) => {
            r.err(
                &key_path(path, "authLevel"),
                format!(
                    "expected one of \"anonymous\", \"function\", \"admin\", found {}",
                    describe(other)
                ),
            );
            None
        }
    };

    let methods_path = key_path(path, "methods");
    let mut methods: Vec<String> = Vec::new();
    let mut methods_ok = true;
    match get(obj, "methods") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for (i, m) in items.iter().enumerate() {
                match m {
                    Value::String(s)
                        if is_http_token(s.trim())
                            && KNOWN_METHODS.contains(&s.trim().to_ascii_uppercase().as_str()) =>
                    {
                        let upper = s.trim().to_ascii_uppercase();
                        if !methods.contains(&upper) {
                            methods.push(upper);
                        }
                    }
                    Value::String(s) => {
                        methods_ok = false;
                        r.err(
                            &index_path(&methods_path, i),
                            format!(
                                "`{s}` is not an HTTP method (e.g. {})",
                                KNOWN_METHODS.join(", ")
                            ),
                        );
                    }
                    other => {
                        methods_ok = false;
                        r.err(
                            &index_path(&methods_path, i),
                            format!("expected a string, found {}", describe(other)),
                        );
                    }
                }
            }
        }
        Some(other) => {
            methods_ok = false;
            r.err(
                &methods_path,
                format!(
                    "expected an array of methods like [\"get\", \"post\"], found {}",
                    describe(other)
                ),
            );
        }
    }

    let route_path = key_path(path, "route");
    let route = r
        .opt_string(obj, path, "route")
        .unwrap_or_else(|| function.to_string());
    let template = match RouteTemplate::parse(&route) {
        Ok(t) => {
            if let Some(Segment::Literal(first)) = t.segments.first() {
                if first.eq_ignore_ascii_case("admin") || first.eq_ignore_ascii_case("runtime") {
                    r.err(
                        &route_path,
                        format!(
                            "`{route}`: routes starting with `{first}` are reserved for the host"
                        ),
                    );
                }
            }
            Some(t)
        }
        Err(e) => {
            r.err(&route_path, e);
            None
        }
    };
    Some(HttpTrigger {
        binding_name: binding_name.to_string(),
        auth_level: auth_level?,
        methods: if methods_ok { methods } else { return None },
        route,
        template: template?,
        output,
    })
}

fn parse_timer_trigger(
    r: &mut Report,
    obj: &Map<String, Value>,
    path: &str,
    binding_name: &str,
    ctx: &FunctionContext<'_>,
) -> Option<TimerTrigger> {
    let schedule = r.req_string(obj, path, "schedule");
    let run_on_startup = r.opt_bool(obj, path, "runOnStartup").unwrap_or(false);
    let use_monitor = r.opt_bool(obj, path, "useMonitor");
    let schedule = schedule?;
    let spath = key_path(path, "schedule");
    let trimmed = schedule.trim();
    if let Some(setting) = trimmed.strip_prefix('%').and_then(|s| s.strip_suffix('%')) {
        let value = ctx.settings.get(setting).or_else(|| {
            ctx.settings
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(setting))
                .map(|(_, v)| v)
        });
        // A schedule that names no setting could never run: refused, like a bad one.
        match value {
            Some(v) => {
                if let Err(e) = Schedule::parse(v) {
                    r.err(
                        &spath,
                        format!("`{schedule}` resolves to an invalid schedule: {e}"),
                    );
                }
            }
            None => r.err(
                &spath,
                format!(
                    "`{schedule}` names the app setting `{setting}`, which is not set: set it \
                     first (`strom app settings set APP {setting}=…`) or deploy with it"
                ),
            ),
        }
    } else if let Err(e) = Schedule::parse(trimmed) {
        r.err(&spath, e);
    }
    Some(TimerTrigger {
        binding_name: binding_name.to_string(),
        schedule,
        run_on_startup,
        use_monitor,
    })
}

/// host.json's `retry`: the default policy of functions without their own.
pub(crate) fn host_retry(
    bytes: &[u8],
    file: &str,
) -> Result<Option<RetryPolicy>, Vec<ManifestError>> {
    let doc = parse_document(bytes, file).map_err(|e| vec![e])?;
    let mut r = Report::new(file);
    let Some(root) = doc.as_object() else {
        return Ok(None);
    };
    let retry = parse_retry(&mut r, root);
    let errors = r.into_errors();
    if errors.is_empty() {
        Ok(retry)
    } else {
        Err(errors)
    }
}

fn parse_retry(r: &mut Report, root: &Map<String, Value>) -> Option<RetryPolicy> {
    let retry = r.opt_object(root, "", "retry")?;
    let interval = |r: &mut Report, key: &str| -> Option<u64> {
        let path = key_path("retry", key);
        match get(retry, key) {
            None | Some(Value::Null) => {
                r.err(&path, "required");
                None
            }
            Some(Value::String(s)) => parse_timespan_ms(s).or_else(|| {
                r.err(&path, format!("{s:?} is not hh:mm:ss"));
                None
            }),
            Some(other) => {
                r.err(
                    &path,
                    format!(
                        "expected a string like \"00:00:10\", found {}",
                        describe(other)
                    ),
                );
                None
            }
        }
    };
    let max_retry_count = match get(retry, "maxRetryCount") {
        None | Some(Value::Null) => {
            r.err("retry.maxRetryCount", "required (-1 retries forever)");
            None
        }
        Some(_) => match r.opt_i64(retry, "retry", "maxRetryCount") {
            Some(n) if n >= -1 && n <= i64::from(i32::MAX) => Some(n as i32),
            Some(n) => {
                r.err(
                    "retry.maxRetryCount",
                    format!("{n} must be -1 (forever) or a non-negative integer"),
                );
                None
            }
            None => None,
        },
    };
    let strategy = match r.req_string(retry, "retry", "strategy") {
        None => None,
        Some(s) => match s.to_ascii_lowercase().as_str() {
            "fixeddelay" => {
                interval(r, "delayInterval").map(|delay_ms| RetryStrategy::FixedDelay { delay_ms })
            }
            "exponentialbackoff" => {
                let min = interval(r, "minimumInterval");
                let max = interval(r, "maximumInterval");
                match (min, max) {
                    (Some(minimum_ms), Some(maximum_ms)) if minimum_ms <= maximum_ms => {
                        Some(RetryStrategy::ExponentialBackoff {
                            minimum_ms,
                            maximum_ms,
                        })
                    }
                    (Some(_), Some(_)) => {
                        r.err(
                            "retry.minimumInterval",
                            "must not be greater than retry.maximumInterval",
                        );
                        None
                    }
                    _ => None,
                }
            }
            _ => {
                r.err(
                    "retry.strategy",
                    format!("`{s}` is not one of `fixedDelay`, `exponentialBackoff`"),
                );
                None
            }
        },
    };
    Some(RetryPolicy {
        strategy: strategy?,
        max_retry_count: max_retry_count?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_with(
        name: &str,
        json: &str,
        settings: &[(&str, &str)],
    ) -> Result<FunctionManifest, Vec<ManifestError>> {
        let settings: BTreeMap<String, String> = settings
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let exists = |p: &str| p == "hello/run.sh";
        let ctx = FunctionContext {
            settings: &settings,
            file_exists: &exists,
        };
        FunctionManifest::from_json(name, json.as_bytes(), &ctx)
    }

    fn parse(json: &str) -> Result<FunctionManifest, Vec<ManifestError>> {
        parse_with("hello", json, &[])
    }

    fn errs(json: &str) -> Vec<String> {
        parse(json)
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

    #[test]
    fn rabbitmq_bindings_are_checked_at_deploy_with_file_path_and_reason() {
        let out = r#"{"bindings":[{"type":"httpTrigger","direction":"in","name":"req"},
            {"type":"rabbitMQ","direction":"out","name":"$return","queueName":"orders",
             "connectionStringSetting":"RabbitConn"}]}"#;
        let ok = parse_with("hello", out, &[("RabbitConn", "amqp://u:p@h:5672/")]).unwrap();
        assert!(ok.unsupported.is_empty(), "{:?}", ok.unsupported);
        assert_eq!(ok.unsupported_outputs().count(), 0);

        let e: Vec<String> = parse(out)
            .unwrap_err()
            .iter()
            .map(|e| e.to_string())
            .collect();
        assert_has(&e, "hello/function.json: bindings[1].connectionStringSetting: `RabbitConn` names no app setting: set `RabbitConn` to the broker's URI");
        let e = parse_with("hello", out, &[("RabbitConn", "amqp://u:pw-secret@h:x/")]).unwrap_err();
        assert_eq!(e[0].json_path, "bindings[1].connectionStringSetting");
        assert!(e[0].message.contains("not an AMQP URI"), "{}", e[0].message);
        assert!(!e[0].message.contains("pw-secret"), "{}", e[0].message);

        let e = errs(
            r#"{"bindings":[{"type":"rabbitMQTrigger","direction":"out","name":"msg","queueName":" ",
                "connectionStringSetting":"C","port":70000}]}"#,
        );
        assert_has(
            &e,
            "bindings[0].direction: a `rabbitMQTrigger` binding must have direction `in`",
        );
        assert_has(&e, "bindings[0].queueName: must not be empty");
        assert_has(&e, "bindings[0].port: 70000 is not a port");
        let e = errs(
            r#"{"bindings":[{"type":"timerTrigger","direction":"in","name":"t","schedule":"0 * * * * *"},
                {"type":"rabbitMQ","direction":"out","name":"m","queueName":"q"}]}"#,
        );
        assert_has(&e, "bindings[1].connectionStringSetting: required");
        // A trigger: the manifest holds its queue and connection.
        let trigger = r#"{"bindings":[{"type":"rabbitMQTrigger","direction":"in","name":"order",
            "queueName":"orders","connectionStringSetting":"RabbitConn"}]}"#;
        let f = parse_with("hello", trigger, &[("RabbitConn", "amqp://u:p@h:5672/")]).unwrap();
        assert!(f.unsupported.is_empty(), "{:?}", f.unsupported);
        assert_eq!(
            f.trigger,
            Trigger::RabbitMq(super::super::rabbitmq::RabbitMqTrigger {
                binding_name: "order".into(),
                queue_name: "orders".into(),
                connection: super::super::rabbitmq::Connection::Setting("RabbitConn".into()),
            })
        );
        // The extension's older form: a host and the settings of the credentials.
        let parts = r#"{"bindings":[{"type":"timerTrigger","direction":"in","name":"t","schedule":"0 * * * * *"},
            {"type":"rabbitMQ","direction":"out","name":"m","queueName":"q","hostName":"mq1",
             "userNameSetting":"U","passwordSetting":"P"}]}"#;
        assert!(parse_with("hello", parts, &[("U", "u"), ("P", "p")]).is_ok());
        let e = parse_with("hello", parts, &[("U", "u")]).unwrap_err();
        assert_eq!(e[0].json_path, "bindings[1].passwordSetting");
    }

    const HTTP: &str = r#"{"bindings":[
        {"type":"httpTrigger","direction":"in","name":"req","authLevel":"Anonymous","methods":["get","Post"],"route":"items/{id:int?}"},
        {"type":"http","direction":"out","name":"res"}]}"#;

    #[test]
    fn http_function() {
        let f = parse(HTTP).unwrap();
        let Trigger::Http(h) = &f.trigger else {
            panic!("{f:?}")
        };
        assert_eq!(h.auth_level, AuthLevel::Anonymous);
        assert_eq!(h.methods, vec!["GET", "POST"]);
        assert_eq!(h.output.as_deref(), Some("res"));
        assert_eq!(h.template.to_string(), "items/{id:int?}");
        assert!(f.unsupported.is_empty());
        assert_eq!(f.bindings.len(), 2);
    }

    #[test]
    fn http_defaults() {
        let f = parse(r#"{"disabled": true, "scriptFile": "run.sh", "bindings":[{"type":"HTTPTRIGGER","direction":"IN","name":"req"},
            {"type":"http","direction":"out","name":"$return"}]}"#)
        .unwrap();
        let Trigger::Http(h) = &f.trigger else {
            panic!()
        };
        assert_eq!(h.auth_level, AuthLevel::Function);
        assert!(h.methods.is_empty());
        assert_eq!(h.route, "hello");
        assert_eq!(h.output.as_deref(), Some("$return"));
    }

    #[test]
    fn retry_delays_follow_the_strategy_up_to_the_count() {
        let fixed = RetryPolicy {
            strategy: RetryStrategy::FixedDelay { delay_ms: 500 },
            max_retry_count: 2,
        };
        let delays: Vec<Option<u64>> = (0..4).map(|a| fixed.delay_before(a)).collect();
        assert_eq!(delays, vec![None, Some(500), Some(500), None]);
        let backoff = RetryPolicy {
            strategy: RetryStrategy::ExponentialBackoff {
                minimum_ms: 1000,
                maximum_ms: 5000,
            },
            max_retry_count: -1,
        };
        let delays: Vec<Option<u64>> = (1..6).map(|a| backoff.delay_before(a)).collect();
        let expected = [1000, 2000, 4000, 5000, 5000].map(Some);
        assert_eq!(delays, expected);
        assert_eq!(backoff.delay_before(10_000), Some(5000), "forever, capped");
        let none = RetryPolicy {
            max_retry_count: 0,
            ..fixed
        };
        assert_eq!(none.delay_before(1), None);
    }

    #[test]
    fn host_json_retry_is_read_and_checked() {
        let ok = br#"{"version":"2.0","retry":{"strategy":"fixedDelay","maxRetryCount":2,"delayInterval":"00:00:03"}}"#;
        assert_eq!(
            host_retry(ok, "host.json").unwrap(),
            Some(RetryPolicy {
                strategy: RetryStrategy::FixedDelay { delay_ms: 3000 },
                max_retry_count: 2
            })
        );
        assert_eq!(
            host_retry(br#"{"version":"2.0"}"#, "host.json").unwrap(),
            None
        );
        let bad = br#"{"version":"2.0","retry":{"strategy":"fixedDelay","maxRetryCount":2,"delayInterval":"-00:00:03"}}"#;
        let errors = host_retry(bad, "host.json").unwrap_err();
        assert_eq!(errors[0].file, "host.json");
        assert_eq!(errors[0].json_path, "retry.delayInterval");
    }

    #[test]
    fn timer_function_with_setting_and_retry() {
        let json = r#"{"bindings":[{"type":"timerTrigger","direction":"in","name":"t","schedule":"%CRON%","runOnStartup":true}],
            "retry":{"strategy":"exponentialBackoff","maxRetryCount":-1,"minimumInterval":"00:00:01","maximumInterval":"00:01:00"}}"#;
        let e = parse_with("tick", json, &[]).unwrap_err();
        assert_eq!(e[0].json_path, "bindings[0].schedule");
        assert!(
            e[0].message
                .contains("names the app setting `CRON`, which is not set"),
            "{e:?}"
        );
        let f = parse_with("tick", json, &[("CRON", "0 */5 * * * *")]).unwrap();
        let Trigger::Timer(t) = &f.trigger else {
            panic!()
        };
        assert_eq!(t.schedule, "%CRON%");
        assert!(t.run_on_startup);
        assert_eq!(
            f.retry,
            Some(RetryPolicy {
                strategy: RetryStrategy::ExponentialBackoff {
                    minimum_ms: 1000,
                    maximum_ms: 60_000
                },
                max_retry_count: -1
            })
        );
        assert!(parse_with("tick", json, &[("CRON", "0 */5 * * * *")]).is_ok());
        let e = parse_with("tick", json, &[("cron", "every minute")]).unwrap_err();
        assert_eq!(e[0].json_path, "bindings[0].schedule");
        assert!(
            e[0].message
                .contains("`%CRON%` resolves to an invalid schedule"),
            "{e:?}"
        );
    }

    #[test]
    fn wrong_types_are_reported_with_paths() {
        let e = errs(
            r#"{"bindings":[{"type":"httpTrigger","direction":"in","name":"req","methods":"get","authLevel":3}]}"#,
        );
        assert_has(
            &e,
            "hello/function.json: bindings[0].methods: expected an array of methods",
        );
        assert_has(
            &e,
            "hello/function.json: bindings[0].authLevel: expected one of",
        );
        assert_has(&e, "found a number (3)");
        let e = errs(
            r#"{"bindings":[{"type":"httpTrigger","direction":"in","name":"req","authLevel":"system","methods":["GET","B@D"]}]}"#,
        );
        assert_has(
            &e,
            "bindings[0].authLevel: `system` is not one of `anonymous`, `function`, `admin`",
        );
        assert_has(&e, "bindings[0].methods[1]: `B@D` is not an HTTP method");
        let e = errs(
            r#"{"bindings":[{"type":"httpTrigger","direction":"in","name":"req","methods":["get","PURGE"]}]}"#,
        );
        assert_has(&e, "bindings[0].methods[1]: `PURGE` is not an HTTP method");
    }

    #[test]
    fn routes_templates_and_reserved_prefixes() {
        let e = errs(
            r#"{"bindings":[{"type":"httpTrigger","direction":"in","name":"req","route":"items/{id:int"}]}"#,
        );
        assert_has(&e, "hello/function.json: bindings[0].route: route `items/{id:int`: `{id:int` is not closed");
        for reserved in ["admin/x", "/Runtime/webhooks"] {
            let json = format!(
                r#"{{"bindings":[{{"type":"httpTrigger","direction":"in","name":"req","route":"{reserved}"}}]}}"#
            );
            let e = errs(&json);
            assert_has(&e, "bindings[0].route:");
            assert_has(&e, "are reserved for the host");
        }
    }

    #[test]
    fn binding_structure_errors() {
        assert_has(&errs(r#"{}"#), "hello/function.json: bindings: required");
        assert_has(&errs(r#"{"bindings":[]}"#), "bindings: must not be empty");
        assert_has(
            &errs(r#"{"bindings":[{"type":"http","direction":"out","name":"res"}]}"#),
            "bindings: no trigger",
        );
        let e = errs(
            r#"{"bindings":[{"type":"httpTrigger","direction":"in","name":"req"},
                {"type":"timerTrigger","direction":"in","name":"t","schedule":"0 * * * * *"},
                {"type":"http","direction":"in","name":"res"},
                {"type":"http","direction":"out","name":"Req"},
                {"type":"blob","direction":"sideways","name":"bad name"},
                {"direction":"in"}]}"#,
        );
        assert_has(&e, "bindings[1].type: second trigger `timerTrigger`");
        assert_has(
            &e,
            "bindings[2].direction: an `http` binding must have direction `out`",
        );
        assert_has(
            &e,
            "bindings[3].name: duplicate binding name `Req` (also bindings[0])",
        );
        assert_has(&e, "bindings[4].direction: `sideways` is not one of");
        assert_has(
            &e,
            "bindings[4].name: `bad name` is not a valid binding name",
        );
        assert_has(&e, "bindings[5].type: required");
        assert_has(&e, "bindings[5].name: required");
        assert_has(&e, "bindings: more than one `http` output binding");
    }

    #[test]
    fn unknown_bindings_are_accepted_as_unsupported() {
        let f = parse(
            r#"{"bindings":[{"type":"queueTrigger","direction":"in","name":"q","queueName":"jobs"},
            {"type":"blob","direction":"out","name":"out"}]}"#,
        )
        .unwrap();
        assert_eq!(
            f.trigger,
            Trigger::Unsupported {
                binding_type: "queueTrigger".into()
            }
        );
        assert_eq!(
            f.unsupported,
            vec![
                "binding `q` of type `queueTrigger` is not supported on this cluster",
                "binding `out` of type `blob` is not supported on this cluster"
            ]
        );
    }

    #[test]
    fn names_cron_retry_and_script_file() {
        for bad in ["1abc", "host", "a b", "HOST"] {
            let e = parse_with(bad, HTTP, &[]).unwrap_err();
            assert_eq!(e[0].file, format!("{bad}/function.json"));
            assert_eq!(e[0].json_path, "");
        }
        assert!(parse_with("Hello-World_2", HTTP, &[]).is_ok());
        let e = errs(
            r#"{"scriptFile":"../../x","bindings":[{"type":"timerTrigger","direction":"in","name":"t","schedule":"61 * * * * *"}],
            "retry":{"strategy":"fixedDelay","maxRetryCount":-2}}"#,
        );
        assert_has(
            &e,
            "bindings[0].schedule: schedule `61 * * * * *`: second field",
        );
        assert_has(&e, "retry.maxRetryCount: -2 must be -1");
        assert_has(&e, "retry.delayInterval: required");
        assert_has(&e, "scriptFile: `../../x` points outside the app");
        let e = errs(
            r#"{"scriptFile":"missing.sh","bindings":[{"type":"timerTrigger","direction":"in","name":"t","schedule":"00:00:00"}]}"#,
        );
        assert_has(&e, "scriptFile: `missing.sh` not found in the package");
        assert_has(&e, "the interval must be longer than zero");
    }
}
