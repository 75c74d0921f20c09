//! Admission: what to do with a request, decided from its head alone and the two
//! snapshots (this node's Ready instances, and the cluster's routes). Pure: no
//! I/O, no clocks, no locks; the shell reads the body and sends it on.
//!
//! In order: a bad hop header (400); the URL length limit (414); the host ping;
//! then, for a client's request whose function has no Ready instance here, the
//! route in the cluster's snapshot and its keys (then it goes over the hop);
//! otherwise the route among this node's serving apps (404, 405 with `Allow`),
//! the keys and disabled functions (401, 404), the declared body size (413).
//! A request from another node's gateway is served here or answered
//! "undelivered" at once, never sent on.

use hyper::StatusCode;
use strom_proto::ids::AppName;
use strom_proto::manifest::{AuthLevel, Trigger};
use strom_proto::route_table::RouteMatch;

use super::keys;
use super::routes::ClusterRoutes;
use strom_actors::RoutingSnapshot;

/// Header naming the app on a request one gateway sends to another.
pub const HOP_APP: &str = "x-strom-hop-app";

/// What admission needs of a request.
#[derive(Debug, Clone, Copy)]
pub struct Head<'a> {
    pub method: &'a str,
    pub path: &'a str,
    /// Length of path and query.
    pub uri_len: usize,
    /// The Host header ("" if none).
    pub host: &'a str,
    /// `x-functions-key`.
    pub key_header: Option<&'a str>,
    /// `Authorization` (the admin token, for the key management API).
    pub authorization: Option<&'a str>,
    pub query: &'a [(String, String)],
    /// `Content-Length`, when declared and numeric.
    pub content_length: Option<u64>,
    pub origin: Origin<'a>,
}

/// Who a request comes from, and so where it may go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin<'a> {
    /// A client: served here, or sent on to a worker that runs its app.
    Client,
    /// Another node's gateway, for this app (`Err`: the hop header names no app):
    /// served here or "undelivered", never sent on.
    Peer(Result<&'a AppName, ()>),
    /// A client's request no other worker could take, while this node runs the
    /// app: served here, waiting for its instance like a cold start.
    Here,
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_url_bytes: usize,
    pub max_body_bytes: usize,
}

/// A function to call with a local instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub app: AppName,
    pub function: String,
    /// Index into the serving manifest's `functions` (an HTTP trigger).
    pub function_index: usize,
    pub params: Vec<(String, String)>,
}

/// A refusal, answered at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// For 405: the methods that are allowed.
    pub allow: Option<String>,
}

/// A non-HTTP function to run now (`POST /admin/functions/{name}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminTarget {
    pub app: AppName,
    pub function: String,
    /// Its trigger binding's name (`Data.{binding}`).
    pub binding: String,
}

/// Which keys a key management request is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeysScope {
    /// One function's keys (its name as the manifest spells it).
    Function(String),
    /// Host keys (`/admin/host/keys`, also `/admin/host/functionkeys`); `_master`
    /// among them by name.
    Host,
    /// System keys.
    System,
}

/// A key management request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeysTarget {
    pub app: AppName,
    pub scope: KeysScope,
    /// One key (`…/keys/{name}`), or the list.
    pub key: Option<String>,
    /// The caller showed the app's master key (otherwise the admin token is
    /// checked before anything is answered).
    pub master: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// `/admin/host/ping`: 200, empty.
    Ping,
    /// Run a non-HTTP function now with a local instance (Azure's admin invoke).
    AdminInvoke(AdminTarget),
    /// `GET /admin/host/status` of an app (master key checked).
    HostStatus(AppName),
    /// The key management API (`/admin/functions/{name}/keys`, `/admin/host/keys`,
    /// `/admin/host/systemkeys`): the caller showed the master key, or must show
    /// the admin token.
    Keys(KeysTarget),
    /// Call a local instance.
    Local(Target),
    /// No Ready instance here: send over the hop to a worker that runs the app.
    Remote(AppName),
    /// From another gateway, but no Ready instance here: it tries elsewhere.
    Undelivered(AppName),
    Refuse(Refusal),
}

/// Whether a path has a `.` or `..` segment, percent-encoded or not.
fn has_dot_segment(path: &str) -> bool {
    path.split('/')
        .any(|segment| is_dot_segment(segment.as_bytes()))
}

/// `.` or `..`, each dot written as `.` or `%2e`/`%2E` (no allocation: every
/// request's path is checked).
fn is_dot_segment(segment: &[u8]) -> bool {
    let mut dots = 0;
    let mut rest = segment;
    while !rest.is_empty() {
        rest = match rest {
            [b'.', tail @ ..] => tail,
            [b'%', b'2', e, tail @ ..] if e.eq_ignore_ascii_case(&b'e') => tail,
            _ => return false,
        };
        dots += 1;
        if dots > 2 {
            return false;
        }
    }
    dots > 0
}

fn refuse(status: StatusCode, code: &'static str, message: impl Into<String>) -> Decision {
    Decision::Refuse(Refusal {
        status,
        code,
        message: message.into(),
        allow: None,
    })
}

/// On the shared address, a route several apps claim: name them and their own
/// addresses (on a loopback Host, the `{app}.localhost` form that needs no DNS).
fn contested(head: &Head<'_>, apps: &[AppName]) -> Decision {
    let (host, port) = match head.host.rsplit_once(':') {
        // `host:port` or `[v6]:port`; a bare `[v6]` or `v6` has no port.
        Some((h, p))
            if !p.is_empty()
                && p.bytes().all(|b| b.is_ascii_digit())
                && (h.ends_with(']') || !h.contains(':')) =>
        {
            (h, p)
        }
        _ => (head.host, ""),
    };
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .trim_matches(|c| c == '[' || c == ']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    let names: Vec<String> = apps.iter().map(|a| format!("`{a}`")).collect();
    let example = match apps.first() {
        Some(first) if loopback => {
            let port = if port.is_empty() {
                String::new()
            } else {
                format!(":{port}")
            };
            format!(", e.g. http://{first}.localhost{port}{}", head.path)
        }
        _ => String::new(),
    };
    refuse(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!(
            "{} is a route of more than one app ({}): the shared address serves it for none; \
             call it at the app's own address, Host `{{app}}.<domain>`{example}",
            head.path,
            names.join(", ")
        ),
    )
}

fn not_found(path: &str) -> Decision {
    refuse(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!("no function at {path}"),
    )
}

pub fn admit(
    head: &Head<'_>,
    local: &RoutingSnapshot,
    cluster: &ClusterRoutes,
    limits: Limits,
) -> Decision {
    let hop = match head.origin {
        Origin::Peer(Err(())) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                format!("{HOP_APP}: not an app name"),
            )
        }
        Origin::Peer(Ok(app)) => Some(app),
        Origin::Client | Origin::Here => None,
    };
    if head.uri_len > limits.max_url_bytes {
        return refuse(
            StatusCode::URI_TOO_LONG,
            "UriTooLong",
            format!("the URL is longer than {} bytes", limits.max_url_bytes),
        );
    }
    if head.path.eq_ignore_ascii_case("/admin/host/ping") {
        return Decision::Ping;
    }
    if has_dot_segment(head.path) {
        // `/api/x/../../admin` must not reach a handler that would resolve it.
        return refuse(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "the path has `.` or `..` segments: send the path they resolve to",
        );
    }
    let too_large = head
        .content_length
        .is_some_and(|len| len > limits.max_body_bytes as u64);

    if let Some(path_app) = host_status_path(head.path) {
        return host_status(head, hop, path_app, cluster);
    }
    if let Some(path) = keys_path(head.path) {
        return keys_request(head, hop, path, cluster);
    }
    if let Some((path_app, function)) = admin_function_path(head.path) {
        return admin_invoke(
            head, hop, path_app, function, local, cluster, too_large, limits,
        );
    }

    if head.origin == Origin::Client {
        if let Some(decision) = remote(head, local, cluster, too_large, limits) {
            return decision;
        }
    }

    // Served here.
    if let Some(app) = hop {
        if local.apps.get(app).is_none_or(|s| s.endpoints.is_empty()) {
            return Decision::Undelivered(app.clone());
        }
    }
    // An app's own address serves that app's routes only, wherever it runs: the
    // same answer from every node.
    let scoped = hop.cloned().or_else(|| {
        app_from_host(head.host)
            .filter(|a| local.apps.contains_key(a) || cluster.apps.contains_key(a))
    });
    let lookup = match &scoped {
        Some(app) => match (local.apps.get(app), cluster.apps.get(app)) {
            (Some(serving), _) => serving.routes.lookup(head.method, head.path),
            (None, Some(routing)) => routing.routes.lookup(head.method, head.path),
            (None, None) => RouteMatch::NotFound,
        },
        None => local.routes.lookup(head.method, head.path),
    };
    let (app, function, params) = match lookup {
        RouteMatch::Found {
            app,
            function,
            params,
        } => (app, function, params),
        RouteMatch::MethodNotAllowed { allowed } => {
            let allow = allowed.join(", ");
            return Decision::Refuse(Refusal {
                status: StatusCode::METHOD_NOT_ALLOWED,
                code: "MethodNotAllowed",
                message: format!("{} is not allowed here; allowed: {allow}", head.method),
                allow: Some(allow),
            });
        }
        RouteMatch::Contested { apps } => return contested(head, &apps),
        RouteMatch::NotFound => return not_found(head.path),
    };
    // Only an app served here is called here (another's was sent on above).
    let Some(serving) = local.apps.get(app) else {
        return not_found(head.path);
    };
    let Some((function_index, http)) = serving
        .manifest
        .functions
        .iter()
        .enumerate()
        .find(|(_, f)| f.name == function)
        .and_then(|(i, f)| match &f.trigger {
            Trigger::Http(h) => Some((i, h)),
            _ => None,
        })
    else {
        return not_found(head.path);
    };
    if let Some(refused) = access(head, cluster, app, function, http.auth_level) {
        return refused;
    }
    if too_large {
        return too_large_refusal(limits);
    }
    Decision::Local(Target {
        app: app.clone(),
        function: function.to_string(),
        function_index,
        params,
    })
}

/// A client's request for a function with no Ready instance on this node: where
/// it goes (`None`: decide as for a local request, e.g. to answer 404 or wait for
/// this node's own cold start).
fn remote(
    head: &Head<'_>,
    local: &RoutingSnapshot,
    cluster: &ClusterRoutes,
    too_large: bool,
    limits: Limits,
) -> Option<Decision> {
    let host_app = app_from_host(head.host);
    let (app, function) = match cluster.lookup(host_app.as_ref(), head.method, head.path) {
        RouteMatch::Found { app, function, .. } => (app, function),
        // Decided from the whole cluster's routes, not from the apps this node runs.
        RouteMatch::Contested { apps } => return Some(contested(head, &apps)),
        _ => return None,
    };
    if local.apps.get(app).is_some_and(|s| !s.endpoints.is_empty()) {
        return None;
    }
    let auth_level = cluster.apps.get(app)?.http_trigger(function)?.auth_level;
    if let Some(refused) = access(head, cluster, app, function, auth_level) {
        return Some(refused);
    }
    if too_large {
        return Some(too_large_refusal(limits));
    }
    Some(Decision::Remote(app.clone()))
}

/// Keys and disabled functions, as Azure checks them, against the cluster's keys.
fn access(
    head: &Head<'_>,
    cluster: &ClusterRoutes,
    app: &AppName,
    function: &str,
    auth_level: AuthLevel,
) -> Option<Decision> {
    let Some(routing) = cluster.apps.get(app) else {
        return Some(not_found(head.path));
    };
    let granted = keys::granted(
        &routing.keys,
        function,
        keys::presented(head.key_header, head.query),
    );
    if routing.disabled.contains(function) && granted != keys::Granted::Master {
        return Some(refuse(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("function `{function}` is disabled"),
        ));
    }
    if !keys::allows(auth_level, granted) {
        return Some(refuse(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "a valid function key is required (x-functions-key header or code query parameter)",
        ));
    }
    None
}

fn too_large_refusal(limits: Limits) -> Decision {
    refuse(
        StatusCode::PAYLOAD_TOO_LARGE,
        "PayloadTooLarge",
        format!(
            "the request body is larger than {} bytes",
            limits.max_body_bytes
        ),
    )
}

/// `/admin/host/status` or `/apps/{app}/admin/host/status`: `Some(app in the path)`.
fn host_status_path(path: &str) -> Option<Option<&str>> {
    const STATUS: &str = "/admin/host/status";
    let ends = path.len() >= STATUS.len()
        && path.as_bytes()[path.len() - STATUS.len()..].eq_ignore_ascii_case(STATUS.as_bytes());
    if !ends {
        return None;
    }
    let base = &path[..path.len() - STATUS.len()];
    if base.is_empty() {
        return Some(None);
    }
    match base.trim_start_matches('/').split_once('/') {
        Some((apps, app)) if apps.eq_ignore_ascii_case("apps") && !app.contains('/') => {
            Some(Some(app))
        }
        _ => None,
    }
}

/// The app an admin request is for: the hop's, the path's, the Host's
/// (`{app}.<domain>`), or on the shared address the one app that `fits` (several:
/// `Err` with the refusal naming the ways to choose).
fn admin_app(
    head: &Head<'_>,
    hop: Option<&AppName>,
    path_app: Option<&str>,
    cluster: &ClusterRoutes,
    fits: impl Fn(&AppName) -> bool,
    what: &str,
    path: &str,
) -> Result<Option<AppName>, Decision> {
    if let Some(app) = hop {
        return Ok(Some(app.clone()));
    }
    if let Some(raw) = path_app {
        return Ok(AppName::parse(raw)
            .ok()
            .filter(|a| cluster.apps.contains_key(a)));
    }
    if let Some(a) = app_from_host(head.host).filter(|a| cluster.apps.contains_key(a)) {
        return Ok(Some(a));
    }
    let mut owners = cluster.apps.keys().filter(|a| fits(a));
    match (owners.next(), owners.next()) {
        (Some(one), None) => Ok(Some(one.clone())),
        (Some(_), Some(_)) => Err(refuse(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!(
                "several apps have {what}: call it at the app's own address (Host \
                 `{{app}}.<domain>`) or at /apps/{{app}}{path}"
            ),
        )),
        _ => Ok(None),
    }
}

/// An admin endpoint's checks: the app's master key, then the one allowed method.
fn admin_gate(
    head: &Head<'_>,
    routing: &super::routes::AppRouting,
    what: &str,
    method: &'static str,
) -> Result<(), Decision> {
    let granted = keys::granted(
        &routing.keys,
        "",
        keys::presented(head.key_header, head.query),
    );
    if granted != keys::Granted::Master {
        return Err(refuse(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            format!("{what} needs the app's master key (x-functions-key header or code query parameter)"),
        ));
    }
    if !head.method.eq_ignore_ascii_case(method) {
        return Err(Decision::Refuse(Refusal {
            status: StatusCode::METHOD_NOT_ALLOWED,
            code: "MethodNotAllowed",
            message: format!("{} is not allowed here; allowed: {method}", head.method),
            allow: Some(method.into()),
        }));
    }
    Ok(())
}

/// Azure's host status: the app's master key, GET.
fn host_status(
    head: &Head<'_>,
    hop: Option<&AppName>,
    path_app: Option<&str>,
    cluster: &ClusterRoutes,
) -> Decision {
    let app = match admin_app(
        head,
        hop,
        path_app,
        cluster,
        |_| true,
        "a host status",
        "/admin/host/status",
    ) {
        Ok(Some(app)) => app,
        Ok(None) => return not_found(head.path),
        Err(refused) => return refused,
    };
    let Some(routing) = cluster.apps.get(&app) else {
        return not_found(head.path);
    };
    if let Err(refused) = admin_gate(head, routing, "the host status", "GET") {
        return refused;
    }
    Decision::HostStatus(app)
}

/// The segments of a path that may be an admin endpoint (under `/admin/` or
/// `/apps/`). On every request's path: no allocation unless it can be one.
fn admin_segments(path: &str) -> Option<Vec<&str>> {
    let starts = |prefix: &str| {
        path.len() >= prefix.len()
            && path.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
    };
    if !starts("/admin/") && !starts("/apps/") {
        return None;
    }
    Some(path.trim_start_matches('/').split('/').collect())
}

/// A key management path: the app in the path (if any), the collection, the key.
#[derive(Debug, PartialEq, Eq)]
struct KeysPath<'a> {
    app: Option<&'a str>,
    /// `Some(function)` for a function's keys.
    function: Option<&'a str>,
    system: bool,
    key: Option<&'a str>,
}

/// `[/apps/{app}]/admin/functions/{name}/keys[/{key}]`,
/// `[/apps/{app}]/admin/host/{keys|functionkeys|systemkeys}[/{key}]`.
fn keys_path(path: &str) -> Option<KeysPath<'_>> {
    let segments = admin_segments(path)?;
    let (app, rest) = match segments.as_slice() {
        [apps, app, rest @ ..] if apps.eq_ignore_ascii_case("apps") => (Some(*app), rest),
        rest => (None, rest),
    };
    let is = |s: &str, what: &str| s.eq_ignore_ascii_case(what);
    let (function, system, key) = match rest {
        [a, f, name, k, key @ ..] if is(a, "admin") && is(f, "functions") && is(k, "keys") => {
            (Some(*name), false, key)
        }
        [a, h, k, key @ ..]
            if is(a, "admin") && is(h, "host") && (is(k, "keys") || is(k, "functionkeys")) =>
        {
            (None, false, key)
        }
        [a, h, k, key @ ..] if is(a, "admin") && is(h, "host") && is(k, "systemkeys") => {
            (None, true, key)
        }
        _ => return None,
    };
    let key = match key {
        [] => None,
        [one] if !one.is_empty() => Some(*one),
        _ => return None,
    };
    Some(KeysPath {
        app,
        function,
        system,
        key,
    })
}

/// Azure's key management API: the app's master key (or, checked later, the
/// admin token); GET lists, and one key takes GET, PUT, POST and DELETE.
fn keys_request(
    head: &Head<'_>,
    hop: Option<&AppName>,
    path: KeysPath<'_>,
    cluster: &ClusterRoutes,
) -> Decision {
    let has = |app: &AppName| {
        path.function.is_none_or(|function| {
            cluster.apps.get(app).is_some_and(|r| {
                r.manifest
                    .functions
                    .iter()
                    .any(|f| f.name.eq_ignore_ascii_case(function))
            })
        })
    };
    let what = match path.function {
        Some(f) => format!("a function `{f}`"),
        None => "keys".to_string(),
    };
    let shown_path = match path.function {
        Some(f) => format!("/admin/functions/{f}/keys"),
        None => "/admin/host/keys".to_string(),
    };
    let app = match admin_app(head, hop, path.app, cluster, has, &what, &shown_path) {
        Ok(Some(app)) => app,
        Ok(None) => return not_found(head.path),
        Err(refused) => return refused,
    };
    let Some(routing) = cluster.apps.get(&app) else {
        return not_found(head.path);
    };
    let master = keys::granted(
        &routing.keys,
        "",
        keys::presented(head.key_header, head.query),
    ) == keys::Granted::Master;
    if !master && head.authorization.is_none() {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "the key management API needs the app's master key (x-functions-key header or code \
             query parameter) or the admin token (Authorization: Bearer)",
        );
    }
    let scope = match path.function {
        Some(name) => match routing
            .manifest
            .functions
            .iter()
            .find(|f| f.name.eq_ignore_ascii_case(name))
        {
            Some(f) => KeysScope::Function(f.name.clone()),
            None => {
                return refuse(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    format!("app `{app}` has no function `{name}`"),
                )
            }
        },
        None if path.system => KeysScope::System,
        None => KeysScope::Host,
    };
    let allowed: &[&str] = if path.key.is_some() {
        &["GET", "PUT", "POST", "DELETE"]
    } else {
        &["GET"]
    };
    if !allowed.iter().any(|m| head.method.eq_ignore_ascii_case(m)) {
        return Decision::Refuse(Refusal {
            status: StatusCode::METHOD_NOT_ALLOWED,
            code: "MethodNotAllowed",
            message: format!(
                "{} is not allowed here; allowed: {}",
                head.method,
                allowed.join(", ")
            ),
            allow: Some(allowed.join(", ")),
        });
    }
    Decision::Keys(KeysTarget {
        app,
        scope,
        key: path.key.map(str::to_string),
        master,
    })
}

/// `/admin/functions/{name}` or `/apps/{app}/admin/functions/{name}` (for clients
/// that cannot set Host): the app named in the path, if any, and the function.
fn admin_function_path(path: &str) -> Option<(Option<&str>, &str)> {
    let segments = admin_segments(path)?;
    match segments.as_slice() {
        [a, f, name] if a.eq_ignore_ascii_case("admin") && f.eq_ignore_ascii_case("functions") => {
            Some((None, name))
        }
        [apps, app, a, f, name]
            if apps.eq_ignore_ascii_case("apps")
                && a.eq_ignore_ascii_case("admin")
                && f.eq_ignore_ascii_case("functions") =>
        {
            Some((Some(app), name))
        }
        _ => None,
    }
}

/// Azure's admin invoke: `POST /admin/functions/{name}` with the app's master key
/// runs a non-HTTP function now. The app is the hop's, the one the path names, the
/// Host's (`{app}.<domain>`), or on the shared address the one app that has a
/// function of that name.
#[allow(clippy::too_many_arguments)]
fn admin_invoke(
    head: &Head<'_>,
    hop: Option<&AppName>,
    path_app: Option<&str>,
    function: &str,
    local: &RoutingSnapshot,
    cluster: &ClusterRoutes,
    too_large: bool,
    limits: Limits,
) -> Decision {
    let has = |app: &AppName| {
        cluster.apps.get(app).is_some_and(|r| {
            r.manifest
                .functions
                .iter()
                .any(|f| f.name.eq_ignore_ascii_case(function))
        })
    };
    let path = format!("/admin/functions/{function}");
    let what = format!("a function `{function}`");
    let app = match admin_app(head, hop, path_app, cluster, has, &what, &path) {
        Ok(app) => app,
        Err(refused) => return refused,
    };
    let not_found = || {
        refuse(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("no function `{function}`"),
        )
    };
    let Some(app) = app else {
        return not_found();
    };
    let Some(routing) = cluster.apps.get(&app) else {
        return not_found();
    };
    let Some(f) = routing
        .manifest
        .functions
        .iter()
        .find(|f| f.name.eq_ignore_ascii_case(function))
    else {
        return not_found();
    };
    if let Err(refused) = admin_gate(head, routing, "running a function", "POST") {
        return refused;
    }
    let binding = match &f.trigger {
        Trigger::Timer(t) => t.binding_name.clone(),
        Trigger::RabbitMq(t) => t.binding_name.clone(),
        Trigger::Http(_) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                format!("function `{}` has an HTTP trigger: call its URL", f.name),
            )
        }
        Trigger::Unsupported { binding_type } => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                format!(
                    "function `{}`'s trigger ({binding_type}) is not supported on this cluster",
                    f.name
                ),
            )
        }
    };
    if too_large {
        return too_large_refusal(limits);
    }
    let ready_here = local
        .apps
        .get(&app)
        .is_some_and(|s| !s.endpoints.is_empty());
    match head.origin {
        Origin::Client if !ready_here => Decision::Remote(app),
        Origin::Peer(_) if !ready_here => Decision::Undelivered(app),
        _ => Decision::AdminInvoke(AdminTarget {
            app,
            function: f.name.clone(),
            binding,
        }),
    }
}

/// `{app}.<domain>` → the app (IP addresses and bare names are not app hosts).
pub fn app_from_host(host: &str) -> Option<AppName> {
    let host = host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host);
    if host.parse::<std::net::IpAddr>().is_ok() || host.starts_with('[') {
        return None;
    }
    let (first, rest) = host.split_once('.')?;
    if rest.is_empty() {
        return None;
    }
    AppName::parse(first).ok()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use strom_actors::ServingApp;
    use strom_proto::manifest::{pack_dir, validate_app, AppManifest, AppPackage, ZipLimits};
    use strom_proto::route_table::RouteTable;
    use strom_proto::worker_view::{AppKeys, AppRoutes, Peer, WorkerView};

    use super::*;

    fn manifest(functions: &[(&str, &str, &str)]) -> AppManifest {
        let dir = tempfile::tempdir().unwrap();
        // The handler is in the package (Windows has no `sh` on PATH).
        std::fs::write(dir.path().join("sh"), "").unwrap();
        std::fs::write(
            dir.path().join("host.json"),
            r#"{"version":"2.0","customHandler":{"description":{"defaultExecutablePath":"sh"}}}"#,
        )
        .unwrap();
        for (name, route, auth) in functions {
            std::fs::create_dir(dir.path().join(name)).unwrap();
            std::fs::write(
                dir.path().join(name).join("function.json"),
                format!(
                    r#"{{"bindings":[{{"type":"httpTrigger","direction":"in","name":"req","route":"{route}","methods":["get"],"authLevel":"{auth}"}},
                        {{"type":"http","direction":"out","name":"res"}}]}}"#
                ),
            )
            .unwrap();
        }
        let zip = pack_dir(dir.path()).unwrap();
        let pkg = AppPackage::from_zip_bytes(&zip, &ZipLimits::default()).unwrap();
        validate_app(&pkg, &BTreeMap::new()).unwrap()
    }

    fn app(name: &str) -> AppName {
        AppName::parse(name).unwrap()
    }

    /// `web` (hello: anonymous, secret: function key, off: disabled) and `jobs`
    /// (run: function key), both in the cluster; only `web` serves here.
    fn snapshots(web_ready_here: bool) -> (RoutingSnapshot, ClusterRoutes) {
        snapshots_with(web_ready_here, None)
    }

    /// As [`snapshots`], with `other` (its manifest) in the cluster too.
    fn snapshots_with(
        web_ready_here: bool,
        other: Option<&AppManifest>,
    ) -> (RoutingSnapshot, ClusterRoutes) {
        let web = manifest(&[
            ("hello", "hello/{name}", "anonymous"),
            ("secret", "secret", "function"),
            ("off", "off", "anonymous"),
        ]);
        let jobs = manifest(&[("run", "run", "function")]);
        let mut view = WorkerView::new(1);
        let keys = |m: &str| AppKeys {
            master: m.into(),
            host: BTreeMap::from([("default".into(), format!("{m}-host"))]),
            functions: BTreeMap::new(),
        };
        let mut apps = vec![
            ("web", &web, "web-master", vec!["off".to_string()]),
            ("jobs", &jobs, "jobs-master", vec![]),
        ];
        if let Some(m) = other {
            apps.push(("other", m, "other-master", vec![]));
        }
        for (name, m, k, disabled) in apps {
            view.apps.insert(
                app(name),
                AppRoutes {
                    version: strom_proto::ids::VersionId::of_bytes(name.as_bytes()),
                    manifest: m.clone(),
                    keys: keys(k),
                    disabled: disabled.into_iter().collect(),
                    placements: BTreeMap::from([(2, 1)]),
                    system_keys: BTreeMap::new(),
                    scaled_to_zero: false,
                },
            );
        }
        view.workers.insert(
            2,
            Peer {
                http_addr: "10.0.0.2:7071".into(),
                up: true,
                draining: false,
            },
        );
        let serving = ServingApp {
            version: strom_proto::ids::VersionId::of_bytes(b"web"),
            manifest: Arc::new(web.clone()),
            http_worker: false,
            messaging: Default::default(),
            routes: Arc::new(RouteTable::build([(&app("web"), &web)])),
            endpoints: if web_ready_here {
                vec![Arc::new(strom_actors::Endpoint::new(
                    "127.0.0.1:1".parse().unwrap(),
                    "web-1".into(),
                    None,
                    Arc::new(strom_actors::log_ring::LogRing::new(8)),
                    Arc::default(),
                    Box::new(|_| {}),
                ))]
            } else {
                vec![]
            },
            unavailable: None,
        };
        let local = RoutingSnapshot::new(BTreeMap::from([(app("web"), serving)]));
        (local, ClusterRoutes::build(Arc::new(view)))
    }

    const LIMITS: Limits = Limits {
        max_url_bytes: 100,
        max_body_bytes: 1000,
    };

    fn head<'a>(method: &'a str, path: &'a str, query: &'a [(String, String)]) -> Head<'a> {
        Head {
            method,
            path,
            uri_len: path.len(),
            host: "127.0.0.1:7071",
            key_header: None,
            authorization: None,
            query,
            content_length: None,
            origin: Origin::Client,
        }
    }

    fn status(d: &Decision) -> Option<StatusCode> {
        match d {
            Decision::Refuse(r) => Some(r.status),
            _ => None,
        }
    }

    #[test]
    fn a_route_of_two_apps_is_served_at_each_apps_address_only() {
        let other = manifest(&[("greet", "hello/{who}", "anonymous")]);
        for web_ready_here in [true, false] {
            let (local, cluster) = snapshots_with(web_ready_here, Some(&other));
            let shared = admit(
                &head("GET", "/api/hello/ada", &[]),
                &local,
                &cluster,
                LIMITS,
            );
            let Decision::Refuse(r) = &shared else {
                panic!("the shared address serves a contested route: {shared:?}")
            };
            assert_eq!(r.status, StatusCode::NOT_FOUND);
            assert!(
                r.message.contains("`other`, `web`")
                    && r.message
                        .contains("http://other.localhost:7071/api/hello/ada"),
                "{}",
                r.message
            );
            let mut own = head("GET", "/api/hello/ada", &[]);
            own.host = "web.localhost:7071";
            let d = admit(&own, &local, &cluster, LIMITS);
            if web_ready_here {
                assert!(
                    matches!(&d, Decision::Local(t) if t.app == app("web") && t.function == "hello"),
                    "{d:?}"
                );
            } else {
                assert!(
                    matches!(&d, Decision::Remote(a) if a == &app("web")),
                    "{d:?}"
                );
            }
            own.host = "other.localhost:7071";
            let d = admit(&own, &local, &cluster, LIMITS);
            assert!(
                matches!(&d, Decision::Remote(a) if a == &app("other")),
                "{d:?}"
            );
            let mut v6 = head("GET", "/api/hello/ada", &[]);
            v6.host = "[::1]:7071";
            let Decision::Refuse(r) = admit(&v6, &local, &cluster, LIMITS) else {
                panic!("contested")
            };
            assert!(
                r.message
                    .contains("http://other.localhost:7071/api/hello/ada"),
                "{}",
                r.message
            );
            // Routes only one app claims stay on the shared address.
            let d = admit(&head("GET", "/api/run", &[]), &local, &cluster, LIMITS);
            assert_eq!(status(&d), Some(StatusCode::UNAUTHORIZED), "{d:?}");
        }
    }

    #[test]
    fn host_status_needs_the_apps_master_key_and_names_its_app() {
        let (local, cluster) = snapshots_with(true, None);
        // Apps `web` and `jobs`.
        let key: &'static [(String, String)] =
            Box::leak(Box::new([("code".to_string(), "jobs-master".to_string())]));
        // Two apps on the shared address: choose by path base or Host.
        let d = admit(
            &head("GET", "/admin/host/status", key),
            &local,
            &cluster,
            LIMITS,
        );
        assert_eq!(status(&d), Some(StatusCode::NOT_FOUND), "{d:?}");
        let d = admit(
            &head("GET", "/apps/jobs/admin/host/status", key),
            &local,
            &cluster,
            LIMITS,
        );
        assert_eq!(d, Decision::HostStatus(app("jobs")));
        let mut own = head("GET", "/admin/host/status", key);
        own.host = "jobs.localhost:7071";
        assert_eq!(
            admit(&own, &local, &cluster, LIMITS),
            Decision::HostStatus(app("jobs"))
        );
        // Another app's master key, no key, POST, an unknown app: refused.
        for (h, want) in [
            (
                head("GET", "/apps/web/admin/host/status", key),
                StatusCode::UNAUTHORIZED,
            ),
            (
                head("GET", "/apps/jobs/admin/host/status", &[]),
                StatusCode::UNAUTHORIZED,
            ),
            (
                Head {
                    method: "POST",
                    ..head("GET", "/apps/jobs/admin/host/status", key)
                },
                StatusCode::METHOD_NOT_ALLOWED,
            ),
            (
                head("GET", "/apps/nope/admin/host/status", key),
                StatusCode::NOT_FOUND,
            ),
        ] {
            let d = admit(&h, &local, &cluster, LIMITS);
            assert_eq!(status(&d), Some(want), "{} {}: {d:?}", h.method, h.path);
        }
        assert_eq!(
            super::super::admin_invoke::host_state(Some("crash loop"), false, true),
            ("Error", vec!["crash loop".to_string()])
        );
        assert_eq!(
            super::super::admin_invoke::host_state(None, false, true).0,
            "Running"
        );
        assert_eq!(
            super::super::admin_invoke::host_state(None, false, false).0,
            "Offline"
        );
    }

    #[test]
    fn the_key_api_asks_for_credentials_before_it_says_anything() {
        let (local, cluster) = snapshots_with(true, None);
        let key: &'static [(String, String)] =
            Box::leak(Box::new([("code".to_string(), "web-master".to_string())]));
        // No key and no token: 401 even for a function that does not exist.
        for path in [
            "/apps/web/admin/functions/nope/keys",
            "/apps/web/admin/host/keys",
        ] {
            match admit(&head("GET", path, &[]), &local, &cluster, LIMITS) {
                Decision::Refuse(r) => assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{path}"),
                d => panic!("{path}: {d:?}"),
            }
        }
        match admit(
            &head("GET", "/apps/web/admin/functions/nope/keys", key),
            &local,
            &cluster,
            LIMITS,
        ) {
            Decision::Refuse(r) => assert_eq!(r.status, StatusCode::NOT_FOUND),
            d => panic!("{d:?}"),
        }
        let d = admit(
            &head("GET", "/apps/web/admin/host/systemkeys", key),
            &local,
            &cluster,
            LIMITS,
        );
        assert_eq!(
            d,
            Decision::Keys(KeysTarget {
                app: app("web"),
                scope: KeysScope::System,
                key: None,
                master: true,
            })
        );
        // A bearer token is checked by the handler (only a management node can).
        let bearer = Head {
            authorization: Some("Bearer t"),
            ..head("DELETE", "/apps/web/admin/host/keys/default", &[])
        };
        assert!(matches!(
            admit(&bearer, &local, &cluster, LIMITS),
            Decision::Keys(KeysTarget { master: false, .. })
        ));
        match admit(
            &head("PATCH", "/apps/web/admin/host/keys/default", key),
            &local,
            &cluster,
            LIMITS,
        ) {
            Decision::Refuse(r) => assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED),
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn key_paths_name_the_app_the_collection_and_the_key() {
        let p = |path| keys_path(path);
        assert_eq!(
            p("/admin/functions/Hello/keys"),
            Some(KeysPath {
                app: None,
                function: Some("Hello"),
                system: false,
                key: None
            })
        );
        assert_eq!(
            p("/apps/web/admin/functions/hello/keys/ci"),
            Some(KeysPath {
                app: Some("web"),
                function: Some("hello"),
                system: false,
                key: Some("ci")
            })
        );
        assert_eq!(
            p("/admin/host/functionkeys/default"),
            Some(KeysPath {
                app: None,
                function: None,
                system: false,
                key: Some("default")
            })
        );
        assert_eq!(
            p("/ADMIN/host/systemkeys"),
            Some(KeysPath {
                app: None,
                function: None,
                system: true,
                key: None
            })
        );
        for not in [
            "/admin/functions/hello",
            "/admin/host/keys/a/b",
            "/admin/host/keys/",
            "/api/admin/host/keys",
            "/admin/host/status",
        ] {
            assert_eq!(p(not), None, "{not}");
        }
    }

    #[test]
    fn admin_invoke_needs_the_master_key_and_a_non_http_function() {
        let timers = strom_testkit::apps::manifest(
            strom_testkit::apps::HOST,
            &[(
                "tick",
                r#"{"bindings":[{"type":"timerTrigger","direction":"in","name":"t","schedule":"0 0 0 1 1 *"}]}"#,
            )],
        );
        let (local, cluster) = snapshots_with(true, Some(&timers));
        let key = [("code".to_string(), "other-master".to_string())];
        let post = |path: &'static str, query: &'static [(String, String)]| Head {
            method: "POST",
            ..head("GET", path, query)
        };
        let key: &'static [(String, String)] = Box::leak(Box::new(key));
        // The shared address: the one app with that function; it runs elsewhere.
        let d = admit(
            &post("/admin/functions/tick", key),
            &local,
            &cluster,
            LIMITS,
        );
        assert!(
            matches!(&d, Decision::Remote(a) if a == &app("other")),
            "{d:?}"
        );
        let d = admit(
            &post("/apps/other/admin/functions/tick", key),
            &local,
            &cluster,
            LIMITS,
        );
        assert!(
            matches!(&d, Decision::Remote(a) if a == &app("other")),
            "{d:?}"
        );
        // Where its instance is started (or as a hop), it runs here.
        let mut here = post("/admin/functions/TICK", key);
        here.origin = Origin::Here;
        assert_eq!(
            admit(&here, &local, &cluster, LIMITS),
            Decision::AdminInvoke(AdminTarget {
                app: app("other"),
                function: "tick".into(),
                binding: "t".into(),
            })
        );
        let other = app("other");
        let mut hop = post("/admin/functions/tick", key);
        hop.origin = Origin::Peer(Ok(&other));
        assert!(matches!(
            admit(&hop, &local, &cluster, LIMITS),
            Decision::Undelivered(_)
        ));
        // Refusals: no key, a function key, GET, an HTTP function, no such function.
        for (head, want) in [
            (post("/admin/functions/tick", &[]), StatusCode::UNAUTHORIZED),
            (
                Head {
                    key_header: Some("web-master"),
                    authorization: None,
                    ..post("/admin/functions/tick", &[])
                },
                StatusCode::UNAUTHORIZED,
            ),
            (
                head("GET", "/admin/functions/tick", key),
                StatusCode::METHOD_NOT_ALLOWED,
            ),
            (
                Head {
                    key_header: Some("web-master"),
                    authorization: None,
                    ..post("/apps/web/admin/functions/hello", &[])
                },
                StatusCode::BAD_REQUEST,
            ),
            (post("/admin/functions/nope", key), StatusCode::NOT_FOUND),
        ] {
            let d = admit(&head, &local, &cluster, LIMITS);
            assert_eq!(
                status(&d),
                Some(want),
                "{} {}: {d:?}",
                head.method,
                head.path
            );
        }
    }

    #[test]
    fn dot_segments_are_refused_before_routing() {
        let (local, cluster) = (RoutingSnapshot::default(), ClusterRoutes::default());
        for path in [
            "/api/x/../../admin",
            "/api/./x",
            "/api/%2E%2e/x",
            "/api/x/..",
        ] {
            let h = head("GET", path, &[]);
            assert_eq!(
                status(&admit(&h, &local, &cluster, LIMITS)),
                Some(StatusCode::BAD_REQUEST),
                "{path}"
            );
        }
        assert!(!has_dot_segment("/api/.well-known/x"));
        assert!(!has_dot_segment("/api/v1.2/x..y"));
        for dot in [".", "..", "%2e", "%2E", "%2e.", ".%2E", "%2E%2e"] {
            assert!(is_dot_segment(dot.as_bytes()), "{dot}");
        }
        for not in [
            "",
            "...",
            "%2e%2e%2e",
            "%2",
            "%2f",
            ".a",
            "%%2e",
            "a..",
            "%2e%",
        ] {
            assert!(!is_dot_segment(not.as_bytes()), "{not}");
        }
    }

    #[test]
    fn a_function_served_here_is_called_locally_with_its_params() {
        let (local, cluster) = snapshots(true);
        let d = admit(
            &head("GET", "/api/hello/ada", &[]),
            &local,
            &cluster,
            LIMITS,
        );
        let Decision::Local(t) = d else {
            panic!("{d:?}")
        };
        assert_eq!(t.app, app("web"));
        assert_eq!(t.function, "hello");
        assert_eq!(t.params, vec![("name".to_string(), "ada".to_string())]);
        assert_eq!(
            status(&admit(
                &head("POST", "/api/hello/ada", &[]),
                &local,
                &cluster,
                LIMITS
            )),
            Some(StatusCode::METHOD_NOT_ALLOWED)
        );
        assert_eq!(
            status(&admit(
                &head("GET", "/api/nothing", &[]),
                &local,
                &cluster,
                LIMITS
            )),
            Some(StatusCode::NOT_FOUND)
        );
        assert_eq!(
            admit(
                &head("GET", "/admin/host/ping", &[]),
                &local,
                &cluster,
                LIMITS
            ),
            Decision::Ping
        );
    }

    #[test]
    fn keys_and_disabled_functions_are_checked_before_anything_is_sent() {
        let (local, cluster) = snapshots(true);
        assert_eq!(
            status(&admit(
                &head("GET", "/api/secret", &[]),
                &local,
                &cluster,
                LIMITS
            )),
            Some(StatusCode::UNAUTHORIZED)
        );
        let code = [("code".to_string(), "web-master-host".to_string())];
        assert!(matches!(
            admit(&head("GET", "/api/secret", &code), &local, &cluster, LIMITS),
            Decision::Local(_)
        ));
        // Another app's key does not open this one.
        let wrong = [("code".to_string(), "jobs-master".to_string())];
        assert_eq!(
            status(&admit(
                &head("GET", "/api/secret", &wrong),
                &local,
                &cluster,
                LIMITS
            )),
            Some(StatusCode::UNAUTHORIZED)
        );
        // Disabled: 404, unless the master key calls it.
        assert_eq!(
            status(&admit(
                &head("GET", "/api/off", &[]),
                &local,
                &cluster,
                LIMITS
            )),
            Some(StatusCode::NOT_FOUND)
        );
        let master = [("code".to_string(), "web-master".to_string())];
        assert!(matches!(
            admit(&head("GET", "/api/off", &master), &local, &cluster, LIMITS),
            Decision::Local(_)
        ));
    }

    #[test]
    fn an_app_not_ready_here_goes_over_the_hop_after_its_keys() {
        let (local, cluster) = snapshots(false);
        assert_eq!(
            admit(&head("GET", "/api/hello/x", &[]), &local, &cluster, LIMITS),
            Decision::Remote(app("web"))
        );
        // `jobs` runs only elsewhere; its key is checked here first.
        assert_eq!(
            status(&admit(
                &head("GET", "/api/run", &[]),
                &local,
                &cluster,
                LIMITS
            )),
            Some(StatusCode::UNAUTHORIZED)
        );
        let code = [("code".to_string(), "jobs-master".to_string())];
        assert_eq!(
            admit(&head("GET", "/api/run", &code), &local, &cluster, LIMITS),
            Decision::Remote(app("jobs"))
        );
        let mut big = head("GET", "/api/run", &code);
        big.content_length = Some(1001);
        assert_eq!(
            status(&admit(&big, &local, &cluster, LIMITS)),
            Some(StatusCode::PAYLOAD_TOO_LARGE)
        );
    }

    #[test]
    fn a_hop_request_is_served_here_or_undelivered_never_sent_on() {
        let (local, cluster) = snapshots(false);
        let web = app("web");
        let mut h = head("GET", "/api/hello/x", &[]);
        h.origin = Origin::Peer(Ok(&web));
        assert_eq!(
            admit(&h, &local, &cluster, LIMITS),
            Decision::Undelivered(web.clone())
        );
        // Kept here when nobody else could take it: it waits for this node's own.
        h.origin = Origin::Here;
        assert!(matches!(
            admit(&h, &local, &cluster, LIMITS),
            Decision::Local(_)
        ));
        let (local, cluster) = snapshots(true);
        h.origin = Origin::Peer(Ok(&web));
        assert!(matches!(
            admit(&h, &local, &cluster, LIMITS),
            Decision::Local(_)
        ));
        h.origin = Origin::Peer(Err(()));
        assert_eq!(
            status(&admit(&h, &local, &cluster, LIMITS)),
            Some(StatusCode::BAD_REQUEST)
        );
    }

    #[test]
    fn limits_are_checked_first() {
        let (local, cluster) = snapshots(true);
        let mut h = head("GET", "/api/hello/x", &[]);
        h.uri_len = 101;
        assert_eq!(
            status(&admit(&h, &local, &cluster, LIMITS)),
            Some(StatusCode::URI_TOO_LONG)
        );
        let mut h = head("GET", "/api/hello/x", &[]);
        h.content_length = Some(1001);
        assert_eq!(
            status(&admit(&h, &local, &cluster, LIMITS)),
            Some(StatusCode::PAYLOAD_TOO_LARGE)
        );
    }

    #[test]
    fn app_hosts() {
        assert_eq!(
            app_from_host("orders.example.com").unwrap().as_str(),
            "orders"
        );
        assert_eq!(
            app_from_host("Orders.localhost:7071").unwrap().as_str(),
            "orders"
        );
        assert_eq!(app_from_host("127.0.0.1:7071"), None);
        assert_eq!(app_from_host("localhost:7071"), None);
        assert_eq!(app_from_host("[::1]:7071"), None);
    }
}
