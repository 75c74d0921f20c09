//! RabbitMQ bindings, Azure's shape: the `rabbitMQTrigger` trigger and the
//! `rabbitMQ` output of `function.json`, host.json's `extensions.rabbitMQ`, and
//! the broker address an app setting holds (`amqp://user:pass@host:port/vhost`).
//!
//! The replicated manifest names every binding (type, direction, name). What a
//! RabbitMQ output needs besides — its queue and its connection — is read from
//! the package itself by [`PackageMessaging`] where it is used (the deploy check,
//! and the worker that unpacked the version, as it reads the legacy `httpWorker`
//! flag), so the manifest's wire shape in the Raft log and snapshots stays as it
//! is.
//!
//! A broker address carries a password: [`AmqpEndpoint`] prints as
//! `amqp://user@host:port/vhost`, never with it, and no error here quotes a
//! setting's value.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::error::ManifestError;
use super::function_json::FunctionManifest;
use super::json_walk::{get, index_path, key_path, parse_document, Report};
use super::HOST_JSON;

/// Azure's default `extensions.rabbitMQ.prefetchCount`: messages a consumer may
/// hold unacknowledged.
pub const DEFAULT_PREFETCH_COUNT: u16 = 30;

/// The app setting that may hold the PEM certificates (one or more) a worker
/// trusts for `amqps://` brokers besides the system's.
pub const CA_SETTING: &str = "STROM_RABBITMQ_CA";

/// Where a binding's broker is: Azure's `connectionStringSetting` (the name of
/// the app setting holding an AMQP URI), or the extension's older form: a
/// literal `hostName` and `port` with the user name and password in the app
/// settings `userNameSetting` and `passwordSetting`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Connection {
    Setting(String),
    Parts {
        host_name: String,
        port: Option<u16>,
        user_setting: Option<String>,
        password_setting: Option<String>,
    },
}

/// A `rabbitMQTrigger` or `rabbitMQ` binding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RabbitMqBinding {
    pub binding_name: String,
    pub queue_name: String,
    pub connection: Connection,
    pub disable_certificate_validation: bool,
}

/// A function's `rabbitMQTrigger`: the queue it consumes and where the broker is
/// (replicated in the manifest, appended as `Trigger::RabbitMq`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RabbitMqTrigger {
    pub binding_name: String,
    pub queue_name: String,
    pub connection: Connection,
}

/// The RabbitMQ facts of one app version read from its package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageMessaging {
    /// host.json `extensions.rabbitMQ.prefetchCount` (0 = no limit from the broker).
    pub prefetch_count: u16,
    /// The `rabbitMQ` outputs, by function name.
    pub outputs: BTreeMap<String, Vec<RabbitMqBinding>>,
}

impl Default for PackageMessaging {
    fn default() -> Self {
        PackageMessaging {
            prefetch_count: DEFAULT_PREFETCH_COUNT,
            outputs: BTreeMap::new(),
        }
    }
}

/// Is this binding type (any case) a RabbitMQ output?
pub fn is_output_type(binding_type: &str) -> bool {
    binding_type.eq_ignore_ascii_case("rabbitMQ")
}

impl PackageMessaging {
    /// Reads the unpacked version at `root`: host.json and the `function.json` of
    /// each function of `manifest` that has a RabbitMQ output. The package passed
    /// the deploy check, so a problem here means the files changed on disk.
    pub fn from_dir(root: &Path, manifest: &[FunctionManifest]) -> Result<Self, String> {
        let mut out = PackageMessaging::default();
        if let Ok(bytes) = std::fs::read(root.join(HOST_JSON)) {
            let mut r = Report::new(HOST_JSON);
            if let Ok(Value::Object(doc)) = parse_document(&bytes, HOST_JSON) {
                out.prefetch_count = host_prefetch(&mut r, &doc);
            }
            if let Some(e) = r.into_errors().first() {
                return Err(e.to_string());
            }
        }
        for f in manifest {
            if !f.bindings.iter().any(|b| is_output_type(&b.binding_type)) {
                continue;
            }
            let file = format!("{}/function.json", f.name);
            let bytes = std::fs::read(root.join(&f.name).join("function.json"))
                .map_err(|e| format!("{file}: {e}"))?;
            let outputs = outputs_of(&f.name, &bytes).map_err(|e| {
                e.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")
            })?;
            out.outputs.insert(f.name.clone(), outputs);
        }
        Ok(out)
    }

    /// The RabbitMQ outputs of `function` (none if it has none).
    pub fn outputs_of(&self, function: &str) -> &[RabbitMqBinding] {
        self.outputs.get(function).map(Vec::as_slice).unwrap_or(&[])
    }
}

/// The `rabbitMQ` outputs of one `function.json`.
pub fn outputs_of(
    function: &str,
    bytes: &[u8],
) -> Result<Vec<RabbitMqBinding>, Vec<ManifestError>> {
    let file = format!("{function}/function.json");
    let doc = parse_document(bytes, &file).map_err(|e| vec![e])?;
    let mut r = Report::new(file);
    let mut out = Vec::new();
    let items = doc
        .get("bindings")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for (i, item) in items.iter().enumerate() {
        let Some(obj) = item.as_object() else {
            continue;
        };
        let is_output = get(obj, "type")
            .and_then(Value::as_str)
            .is_some_and(is_output_type);
        let name = get(obj, "name").and_then(Value::as_str);
        if let (true, Some(name)) = (is_output, name) {
            if let Some(b) = read_binding(&mut r, obj, &index_path("bindings", i), name, None) {
                out.push(b);
            }
        }
    }
    r.finish(Some(out))
}

/// Reads a RabbitMQ binding's queue and connection at `path`, recording what is
/// wrong; with `settings` (the deploy check) its connection is resolved too.
pub(crate) fn read_binding(
    r: &mut Report,
    obj: &Map<String, Value>,
    path: &str,
    binding_name: &str,
    settings: Option<&BTreeMap<String, String>>,
) -> Option<RabbitMqBinding> {
    let queue_name = r.req_string(obj, path, "queueName");
    if let Some(q) = &queue_name {
        // AMQP's short string; the broker refuses longer names.
        if q.len() > 255 {
            r.err(
                &key_path(path, "queueName"),
                format!("{} bytes: a queue name has at most 255", q.len()),
            );
        }
    }
    let disable = r
        .opt_bool(obj, path, "disableCertificateValidation")
        .unwrap_or(false);
    if disable {
        r.err(
            &key_path(path, "disableCertificateValidation"),
            format!(
                "not supported: Strom always verifies an amqps:// broker's certificate; give \
                 the broker's CA certificate (PEM) in the app setting `{CA_SETTING}` instead"
            ),
        );
    }
    let setting = r.opt_string(obj, path, "connectionStringSetting");
    let host_name = r.opt_string(obj, path, "hostName");
    let user_setting = r.opt_string(obj, path, "userNameSetting");
    let password_setting = r.opt_string(obj, path, "passwordSetting");
    let port = match r.opt_i64(obj, path, "port") {
        None | Some(0) => None,
        Some(p) if (1..=65535).contains(&p) => Some(p as u16),
        Some(p) => {
            r.err(
                &key_path(path, "port"),
                format!("{p} is not a port (1 to 65535, or 0 for the default)"),
            );
            None
        }
    };
    let connection = match (setting, host_name) {
        (Some(s), _) if !s.trim().is_empty() => Some(Connection::Setting(s.trim().to_string())),
        (_, Some(h)) if !h.trim().is_empty() => Some(Connection::Parts {
            host_name: h.trim().to_string(),
            port,
            user_setting: user_setting.filter(|s| !s.trim().is_empty()),
            password_setting: password_setting.filter(|s| !s.trim().is_empty()),
        }),
        _ => {
            r.err(
                &key_path(path, "connectionStringSetting"),
                "required: the name of the app setting that holds the broker's URI \
                 (amqp://user:password@host:5672/vhost); or `hostName` with \
                 `userNameSetting` and `passwordSetting`",
            );
            None
        }
    };
    if let (Some(c), Some(settings)) = (&connection, settings) {
        if let Err((field, message)) = c.resolve(settings) {
            r.err(&key_path(path, field), message);
        }
    }
    Some(RabbitMqBinding {
        binding_name: binding_name.to_string(),
        queue_name: queue_name?,
        connection: connection?,
        disable_certificate_validation: disable,
    })
}

/// host.json `extensions.rabbitMQ.prefetchCount` (Azure's default when absent).
pub(crate) fn host_prefetch(r: &mut Report, root: &Map<String, Value>) -> u16 {
    let Some(ext) = r.opt_object(root, "", "extensions") else {
        return DEFAULT_PREFETCH_COUNT;
    };
    let Some((key, section)) = ext.iter().find(|(k, _)| k.eq_ignore_ascii_case("rabbitMQ")) else {
        return DEFAULT_PREFETCH_COUNT;
    };
    let path = key_path("extensions", key);
    let Some(section) = r.object(section, &path) else {
        return DEFAULT_PREFETCH_COUNT;
    };
    match r.opt_i64(section, &path, "prefetchCount") {
        None => DEFAULT_PREFETCH_COUNT,
        Some(n) if (0..=i64::from(u16::MAX)).contains(&n) => n as u16,
        Some(n) => {
            r.err(
                &key_path(&path, "prefetchCount"),
                format!("{n} is out of range: 0 (no limit) to 65535 messages per consumer"),
            );
            DEFAULT_PREFETCH_COUNT
        }
    }
}

/// host.json's RabbitMQ section checked at deploy.
pub(crate) fn check_host(bytes: &[u8]) -> Vec<ManifestError> {
    let mut r = Report::new(HOST_JSON);
    if let Ok(Value::Object(doc)) = parse_document(bytes, HOST_JSON) {
        host_prefetch(&mut r, &doc);
    }
    r.into_errors()
}

/// A setting by name: exactly, else in another case (as environment variables
/// are looked up on Windows).
fn setting<'s>(settings: &'s BTreeMap<String, String>, name: &str) -> Option<&'s String> {
    settings.get(name).or_else(|| {
        settings
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    })
}

fn not_set(name: &str, what: &str) -> String {
    format!(
        "`{name}` names no app setting: set `{name}` to {what} \
         (`strom app settings set APP {name}=…`) or deploy with it"
    )
}

impl Connection {
    /// The broker this connection names with `settings`, or which field is
    /// wrong and why (never quoting a setting's value).
    pub fn resolve(
        &self,
        settings: &BTreeMap<String, String>,
    ) -> Result<AmqpEndpoint, (&'static str, String)> {
        match self {
            Connection::Setting(name) => {
                let uri = setting(settings, name).ok_or_else(|| {
                    (
                        "connectionStringSetting",
                        not_set(
                            name,
                            "the broker's URI (amqp://user:password@host:5672/vhost)",
                        ),
                    )
                })?;
                parse_amqp_uri(uri).map_err(|e| {
                    (
                        "connectionStringSetting",
                        format!("the app setting `{name}` is not an AMQP URI: {e}"),
                    )
                })
            }
            Connection::Parts {
                host_name,
                port,
                user_setting,
                password_setting,
            } => {
                let user = match user_setting {
                    Some(n) => setting(settings, n)
                        .ok_or_else(|| ("userNameSetting", not_set(n, "the user name")))?
                        .clone(),
                    None => "guest".to_string(),
                };
                let password = match password_setting {
                    Some(n) => setting(settings, n)
                        .ok_or_else(|| ("passwordSetting", not_set(n, "the password")))?
                        .clone(),
                    None => "guest".to_string(),
                };
                if host_name.contains(['/', '@', '?', '#', ' ']) {
                    return Err((
                        "hostName",
                        format!("`{host_name}` is not a host name or address"),
                    ));
                }
                Ok(AmqpEndpoint::plain(
                    false,
                    host_name.clone(),
                    port.unwrap_or(5672),
                    "/".into(),
                    user,
                    password,
                ))
            }
        }
    }

    /// The app settings this connection reads.
    pub fn settings(&self) -> Vec<&str> {
        match self {
            Connection::Setting(s) => vec![s.as_str()],
            Connection::Parts {
                user_setting,
                password_setting,
                ..
            } => user_setting
                .iter()
                .chain(password_setting)
                .map(String::as_str)
                .collect(),
        }
    }
}

/// A broker to connect to. Its password is never printed: `Display` and `Debug`
/// show `amqp://user@host:port/vhost`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct AmqpEndpoint {
    /// `amqps://`: TLS, the broker's certificate verified.
    pub tls: bool,
    pub host: String,
    pub port: u16,
    pub vhost: String,
    pub user: String,
    password: String,
    /// Query parameters the AMQP URI spec names (seconds, milliseconds).
    pub heartbeat_s: Option<u16>,
    pub connection_timeout_ms: Option<u64>,
    pub channel_max: Option<u16>,
    pub frame_max: Option<u32>,
}

impl AmqpEndpoint {
    /// An endpoint without query parameters.
    fn plain(
        tls: bool,
        host: String,
        port: u16,
        vhost: String,
        user: String,
        password: String,
    ) -> Self {
        AmqpEndpoint {
            tls,
            host,
            port,
            vhost,
            user,
            password,
            heartbeat_s: None,
            connection_timeout_ms: None,
            channel_max: None,
            frame_max: None,
        }
    }

    pub fn password(&self) -> &str {
        &self.password
    }

    /// `host:port`, as connection errors name the broker.
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

impl fmt::Display for AmqpEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "amqps" } else { "amqp" };
        let vhost = if self.vhost == "/" { "" } else { &self.vhost };
        write!(
            f,
            "{scheme}://{}@{}:{}/{vhost}",
            self.user, self.host, self.port
        )
    }
}

impl fmt::Debug for AmqpEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AmqpEndpoint({self})")
    }
}

/// Parses an AMQP URI (`amqp[s]://[user[:password]@]host[:port][/vhost][?query]`).
/// As the .NET client Azure's extension uses reads it, no path or `/` is the
/// default virtual host `/`; otherwise the path (percent-decoded) names it
/// (`%2f` for `/`). Errors never quote the URI: it holds a password.
pub fn parse_amqp_uri(uri: &str) -> Result<AmqpEndpoint, String> {
    let url = url::Url::parse(uri.trim()).map_err(|e| format!("not a URI ({e})"))?;
    let tls = match url.scheme() {
        "amqp" => false,
        "amqps" => true,
        other => return Err(format!("the scheme is `{other}`, not amqp or amqps")),
    };
    let host = match url.host_str() {
        Some(h) if !h.is_empty() => h.to_string(),
        _ => return Err("no host (amqp://user:password@host:5672/vhost)".into()),
    };
    let decode = |s: &str, what: &str| {
        percent_encoding_decode(s).ok_or_else(|| format!("the {what} is not UTF-8 once decoded"))
    };
    let user = match url.username() {
        "" => "guest".to_string(),
        u => decode(u, "user name")?,
    };
    let password = match url.password() {
        None => "guest".to_string(),
        Some(p) => decode(p, "password")?,
    };
    let vhost = match url.path() {
        "" | "/" => "/".to_string(),
        p => decode(&p[1..], "virtual host")?,
    };
    if vhost.contains('/') && vhost != "/" {
        return Err("the virtual host has a `/`: write it as %2f".into());
    }
    let port = url.port().unwrap_or(if tls { 5671 } else { 5672 });
    let mut endpoint = AmqpEndpoint::plain(tls, host, port, vhost, user, password);
    for (k, v) in url.query_pairs() {
        let bad = || format!("`{k}={v}` is not a number in range");
        match k.as_ref() {
            "heartbeat" => endpoint.heartbeat_s = Some(v.parse().map_err(|_| bad())?),
            "connection_timeout" => {
                endpoint.connection_timeout_ms = Some(v.parse().map_err(|_| bad())?)
            }
            "channel_max" => endpoint.channel_max = Some(v.parse().map_err(|_| bad())?),
            "frame_max" => endpoint.frame_max = Some(v.parse().map_err(|_| bad())?),
            other => {
                return Err(format!(
                    "unknown query parameter `{other}` (known: heartbeat, connection_timeout, \
                     channel_max, frame_max)"
                ))
            }
        }
    }
    Ok(endpoint)
}

fn percent_encoding_decode(s: &str) -> Option<String> {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .ok()
        .map(|c| c.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn uris_parse_as_azure_apps_write_them_and_never_show_the_password() {
        let e = parse_amqp_uri("amqp://app:s3cr%40t@10.0.0.5:5673/").unwrap();
        assert_eq!(
            (e.tls, e.host.as_str(), e.port, e.vhost.as_str()),
            (false, "10.0.0.5", 5673, "/")
        );
        assert_eq!((e.user.as_str(), e.password()), ("app", "s3cr@t"));
        assert_eq!(e.to_string(), "amqp://app@10.0.0.5:5673/");
        assert!(!format!("{e:?}").contains("s3cr"));

        let e = parse_amqp_uri("amqps://u:p@mq.example.com/orders?heartbeat=30").unwrap();
        assert_eq!((e.tls, e.port, e.vhost.as_str()), (true, 5671, "orders"));
        assert_eq!(e.heartbeat_s, Some(30));
        assert_eq!(e.to_string(), "amqps://u@mq.example.com:5671/orders");
        // No path is the default vhost; %2f is `/` too.
        assert_eq!(parse_amqp_uri("amqp://h").unwrap().vhost, "/");
        assert_eq!(parse_amqp_uri("amqp://h/%2f").unwrap().vhost, "/");
        assert_eq!(parse_amqp_uri("amqp://h").unwrap().user, "guest");
    }

    #[test]
    fn bad_uris_are_named_without_quoting_them() {
        for (uri, want) in [
            ("http://u:hunter2@h/", "scheme is `http`"),
            ("amqp://u:hunter2@h:99999/", "not a URI"),
            ("hunter2", "not a URI"),
            ("amqp://u:hunter2@h/?heartbeat=x", "`heartbeat=x`"),
            ("amqp://u:hunter2@h/?tls=1", "unknown query parameter `tls`"),
            ("amqp://u:hunter2@h/a/b", "%2f"),
        ] {
            let e = parse_amqp_uri(uri).unwrap_err();
            assert!(e.contains(want), "{uri}: {e}");
            assert!(!e.contains("hunter2"), "{uri}: {e}");
        }
    }

    #[test]
    fn connections_resolve_from_settings_and_name_what_is_missing() {
        let uri = Connection::Setting("RabbitConn".into());
        let e = uri
            .resolve(&settings(&[("rabbitconn", "amqp://a:b@h:1/v")]))
            .unwrap();
        assert_eq!(e.to_string(), "amqp://a@h:1/v");
        let (field, why) = uri.resolve(&settings(&[])).unwrap_err();
        assert_eq!(field, "connectionStringSetting");
        assert!(why.contains("`RabbitConn` names no app setting"), "{why}");
        let (_, why) = uri
            .resolve(&settings(&[("RabbitConn", "amqp://a:topsecret@h:0x/")]))
            .unwrap_err();
        assert!(
            why.contains("not an AMQP URI") && !why.contains("topsecret"),
            "{why}"
        );

        let parts = Connection::Parts {
            host_name: "mq1".into(),
            port: None,
            user_setting: Some("MqUser".into()),
            password_setting: Some("MqPass".into()),
        };
        let e = parts
            .resolve(&settings(&[("MqUser", "u"), ("MqPass", "p")]))
            .unwrap();
        assert_eq!(
            (e.to_string().as_str(), e.password()),
            ("amqp://u@mq1:5672/", "p")
        );
        let (field, _) = parts.resolve(&settings(&[("MqUser", "u")])).unwrap_err();
        assert_eq!(field, "passwordSetting");
        assert_eq!(parts.settings(), vec!["MqUser", "MqPass"]);
    }

    #[test]
    fn outputs_and_prefetch_are_read_from_the_package_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("host.json"),
            r#"{"version":"2.0","extensions":{"rabbitMQ":{"prefetchCount":5}}}"#,
        )
        .unwrap();
        std::fs::create_dir(dir.path().join("send")).unwrap();
        std::fs::write(
            dir.path().join("send/function.json"),
            r#"{"bindings":[{"type":"httpTrigger","direction":"in","name":"req"},
                {"type":"RabbitMQ","direction":"out","name":"$return","queueName":"orders",
                 "connectionStringSetting":"Conn"}]}"#,
        )
        .unwrap();
        let f = FunctionManifest {
            name: "send".into(),
            trigger: super::super::Trigger::Unsupported {
                binding_type: "x".into(),
            },
            bindings: vec![super::super::BindingSpec {
                binding_type: "RabbitMQ".into(),
                direction: super::super::Direction::Out,
                name: "$return".into(),
                supported: true,
            }],
            retry: None,
            unsupported: vec![],
        };
        let m = PackageMessaging::from_dir(dir.path(), &[f]).unwrap();
        assert_eq!(m.prefetch_count, 5);
        assert_eq!(
            m.outputs_of("send"),
            &[RabbitMqBinding {
                binding_name: "$return".into(),
                queue_name: "orders".into(),
                connection: Connection::Setting("Conn".into()),
                disable_certificate_validation: false,
            }]
        );
        assert!(m.outputs_of("other").is_empty());
    }

    #[test]
    fn prefetch_out_of_range_is_named() {
        let e = check_host(br#"{"version":"2.0","extensions":{"rabbitMQ":{"prefetchCount":-1}}}"#);
        assert_eq!(e[0].json_path, "extensions.rabbitMQ.prefetchCount");
        assert!(
            e[0].message.contains("-1 is out of range"),
            "{}",
            e[0].message
        );
        assert!(check_host(br#"{"version":"2.0"}"#).is_empty());
    }
}
