//! The management portal (issue 19): a web UI on the control port of every
//! management node, followers included — server-rendered HTML (maud, escaped by
//! default), a small script for copy buttons, the upload progress and the live
//! invocation stream, and charts as inline SVG.
//!
//! Every action goes through [`AdminApi`] — the same code as the gRPC admin API
//! and the publishing endpoint — so it is validated, replicated and refused the
//! same way. The portal adds only the browser's side of authentication:
//!
//! - sign-in with the admin token gives a signed session cookie ([`session`]);
//! - every state-changing request is a POST that must carry the session's CSRF
//!   token (a form field, or `X-CSRF-Token` for the upload) and must not come
//!   from another site (`Sec-Fetch-Site`/`Origin`, as the publishing endpoint);
//! - every page is `no-store`, framed by nobody, under a Content Security Policy
//!   that allows only this node's own script and style.
//!
//! Paths: `/` (to the cluster page or sign-in), `/portal/…`, `/assets/…`.

pub mod assets;
mod charts;
mod pages;
pub mod session;
mod test_panel;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use maud::Markup;
use strom_proto::admin_v1 as pb;
use strom_proto::admin_v1::admin_service_server::AdminService;
use strom_proto::command::KeyScope;
use strom_proto::ids::AppName;
use tonic::codegen::http::{self, header, HeaderValue, Method, Request, Response, StatusCode};

use crate::admin_service::AdminApi;
use crate::deploy::{DeployError, DeployMeta, DeployRequest, DeployWait};
use crate::management::now_ms;
use session::{Session, SessionKey};

type Body = tonic::body::Body;

/// Largest form a page posts (settings imports included).
const MAX_FORM: u64 = 256 * 1024;
/// A form must arrive within this.
const FORM_READ: Duration = Duration::from_secs(30);

/// Whether a (non-gRPC) request is the portal's.
pub fn is_portal(path: &str) -> bool {
    path == "/" || path == "/portal" || path.starts_with("/portal/") || path.starts_with("/assets/")
}

/// What a refused or failed action shows: a status and a message on the page.
#[derive(Debug)]
pub(crate) struct Problem {
    status: StatusCode,
    message: String,
    details: Vec<String>,
}

impl Problem {
    fn new(status: StatusCode, message: impl Into<String>) -> Problem {
        Problem {
            status,
            message: message.into(),
            details: Vec::new(),
        }
    }

    fn bad(message: impl Into<String>) -> Problem {
        Problem::new(StatusCode::BAD_REQUEST, message)
    }

    /// An admin API refusal, as the page shows it (its validation errors listed).
    fn of_status(s: &tonic::Status) -> Problem {
        Problem::new(
            strom_proto::http_status::of(s.code()).0,
            s.message().to_string(),
        )
    }

    fn of_deploy(e: DeployError) -> Problem {
        match e {
            DeployError::Invalid(errors) => Problem {
                status: StatusCode::BAD_REQUEST,
                message: format!(
                    "the package is not a valid app ({} problem{})",
                    errors.len(),
                    if errors.len() == 1 { "" } else { "s" }
                ),
                details: errors.iter().map(|e| e.to_string()).collect(),
            },
            other => Problem::of_status(&other.to_status()),
        }
    }
}

impl From<tonic::Status> for Problem {
    fn from(s: tonic::Status) -> Problem {
        Problem::of_status(&s)
    }
}

/// A signed-in request: what every page needs.
pub(crate) struct Ctx {
    pub api: AdminApi,
    pub csrf: String,
    /// Where a problem page's "Back" goes: the page an action was posted from,
    /// or the section of a page that failed.
    pub back: String,
    /// When a live stream opened now must end: the session's idle deadline or
    /// its age limit, whichever is first.
    pub stream_ends_ms: i64,
}

/// See [`Ctx::back`].
fn back_of(method: &Method, path: &str) -> String {
    if *method == Method::POST {
        return path
            .rsplit_once('/')
            .map(|(p, _)| p)
            .filter(|p| p.len() > "/portal".len())
            .unwrap_or("/portal/cluster")
            .to_string();
    }
    ["/portal/apps", "/portal/invocations"]
        .into_iter()
        .find(|s| path.starts_with(s))
        .unwrap_or("/portal/cluster")
        .to_string()
}

/// One message shown on top of a page.
pub(crate) enum Flash {
    Done(String),
    Error(Problem),
}

/// Serve a portal request.
pub async fn handle<B>(api: AdminApi, request: Request<B>) -> Response<Body>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: std::fmt::Display,
{
    let path = request.uri().path().to_string();
    let method = request.method().clone();
    if let Some(name) = path.strip_prefix("/assets/") {
        return assets::answer(name);
    }
    let secure = crate::tls::current().is_some();
    let Some(key) = session_key(&api) else {
        return plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "the cluster is not initialized yet",
        );
    };
    if path == "/portal/signin" {
        return match method {
            Method::POST => sign_in(&api, &key, request, secure).await,
            _ => {
                let why = query_param(request.uri().query(), "why");
                html(
                    StatusCode::OK,
                    pages::sign_in(why_text(why.as_deref()), None),
                )
            }
        };
    }
    // Everything else needs a session.
    let now = now_ms();
    let cookie = session_cookie(request.headers());
    let session = match cookie.as_deref().map(|c| session::verify(&key, c, now)) {
        Some(Ok(s)) => s,
        outcome => {
            let why = match outcome {
                None => "none",
                Some(Err(session::SessionError::Idle)) => "idle",
                Some(Err(session::SessionError::Expired)) => "expired",
                Some(Err(_)) => "invalid",
                Some(Ok(_)) => unreachable!(),
            };
            if method == Method::GET || method == Method::HEAD {
                return redirect(&format!("/portal/signin?why={why}"), None);
            }
            // The upload's script reads JSON.
            let mut r = if request.headers().contains_key("x-csrf-token") {
                json(
                    StatusCode::UNAUTHORIZED,
                    &serde_json::json!({"message": format!(
                        "not signed in: {} Reload the page.",
                        why_text(Some(why)).unwrap_or("sign in first.")
                    )}),
                )
            } else {
                html(
                    StatusCode::UNAUTHORIZED,
                    pages::sign_in(why_text(Some(why)), None),
                )
            };
            if cookie.is_some() {
                add_cookie(&mut r, &session::clear_cookie(secure));
            }
            return r;
        }
    };
    let refreshed = session::refresh(&key, &session, now);
    let ctx = Ctx {
        api,
        csrf: session::csrf_token(&key, &session),
        back: back_of(&method, &path),
        stream_ends_ms: (now + session::IDLE.as_millis() as i64)
            .min(session.issued_ms + session::MAX_AGE.as_millis() as i64),
    };
    let mut response = if method == Method::POST {
        post(&ctx, &key, &session, request, secure).await
    } else if method == Method::GET || method == Method::HEAD {
        get(&ctx, request).await
    } else {
        plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "the portal answers GET and POST only",
        )
    };
    // Not over an answer that sets the cookie itself (sign-out clears it).
    if let Some(c) = refreshed {
        if !response.headers().contains_key(header::SET_COOKIE) {
            add_cookie(&mut response, &session::set_cookie(&c, secure));
        }
    }
    response
}

/// The signing key of this cluster's sessions.
fn session_key(api: &AdminApi) -> Option<SessionKey> {
    let proof = api.node.secret.proof()?;
    Some(SessionKey::derive(&proof, &admin_token_hash(api)?))
}

/// The replicated admin token hash (sessions end when it changes).
pub(crate) fn admin_token_hash(api: &AdminApi) -> Option<strom_proto::ids::TokenHash> {
    let view = api.node.read_local();
    Some(view.state.cluster.as_ref()?.admin_token_hash.clone())
}

fn why_text(why: Option<&str>) -> Option<&'static str> {
    match why? {
        "idle" => Some("Your session ended after 30 minutes without activity. Sign in again."),
        "expired" => Some("Your session ended 12 hours after sign-in. Sign in again."),
        "invalid" => Some(
            "Your session is not valid on this cluster (the admin token may have been rotated). \
             Sign in again.",
        ),
        "signedout" => Some("You signed out."),
        _ => None,
    }
}

fn session_cookie(headers: &http::HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(name, _)| *name == session::COOKIE)
        .map(|(_, value)| value.to_string())
}

async fn sign_in<B>(
    api: &AdminApi,
    key: &SessionKey,
    request: Request<B>,
    secure: bool,
) -> Response<Body>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: std::fmt::Display,
{
    if let Err(e) = crate::publishing::refuse_cross_site(
        request.headers(),
        crate::publishing::request_host(&request).as_deref(),
    ) {
        return html(
            StatusCode::FORBIDDEN,
            pages::sign_in(None, Some(e.message())),
        );
    }
    let form = match read_form(request).await {
        Ok(f) => f,
        Err(p) => return html(p.status, pages::sign_in(None, Some(&p.message))),
    };
    let token = form.get("token").map(|t| t.trim()).unwrap_or("");
    if token.is_empty() {
        return html(
            StatusCode::BAD_REQUEST,
            pages::sign_in(None, Some("Enter the admin token.")),
        );
    }
    if !api.is_admin_token(token) {
        tracing::info!("portal: a sign-in with a wrong admin token was refused");
        return html(
            StatusCode::UNAUTHORIZED,
            pages::sign_in(
                None,
                Some(
                    "That is not this cluster's admin token. It is in admin.token in the \
                     data dir of the node that created the cluster.",
                ),
            ),
        );
    }
    let nonce: [u8; 16] = rand::random();
    let (_, cookie) = session::issue(key, now_ms(), nonce);
    redirect(
        "/portal/cluster",
        Some(&session::set_cookie(&cookie, secure)),
    )
}

/// The path below `/portal/`, split.
fn segments(path: &str) -> Vec<String> {
    path.trim_start_matches('/')
        .split('/')
        .skip(1) // "portal"
        .filter(|s| !s.is_empty())
        .map(|s| strom_proto::route_table::percent_decode(s).into_owned())
        .collect()
}

fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

fn app_name(s: &str) -> Result<AppName, Problem> {
    AppName::parse(s).map_err(|e| Problem::new(StatusCode::NOT_FOUND, e.to_string()))
}

async fn get<B>(ctx: &Ctx, request: Request<B>) -> Response<Body> {
    let path = request.uri().path();
    if path == "/" || path == "/portal" || path == "/portal/" {
        return redirect("/portal/cluster", None);
    }
    let query = request.uri().query().map(str::to_string);
    let q = |name: &str| query_param(query.as_deref(), name);
    let seg = segments(path);
    let seg: Vec<&str> = seg.iter().map(String::as_str).collect();
    let done = q("done").and_then(|d| done_text(&d)).map(Flash::Done);
    let page = match seg.as_slice() {
        ["cluster"] => pages::cluster(ctx, done).await,
        ["apps"] => pages::apps(ctx, done).await,
        ["apps", app] => match app_name(app) {
            Ok(app) => pages::app(ctx, &app, q("reveal").as_deref(), done).await,
            Err(p) => Err(p),
        },
        ["apps", app, "functions", function] => match app_name(app) {
            Ok(app) => {
                pages::function(ctx, &app, function, q("reveal").as_deref(), done, None).await
            }
            Err(p) => Err(p),
        },
        ["invocations"] => {
            let filter = pages::InvocationFilter {
                app: q("app").unwrap_or_default(),
                function: q("function").unwrap_or_default(),
                status: q("status").unwrap_or_default(),
            };
            pages::invocations(ctx, &filter).await
        }
        ["invocations", "stream"] => {
            let filter = pages::InvocationFilter {
                app: q("app").unwrap_or_default(),
                function: q("function").unwrap_or_default(),
                status: q("status").unwrap_or_default(),
            };
            return match pages::invocation_stream(ctx, &filter, ctx.stream_ends_ms).await {
                Ok(r) => r,
                Err(p) => plain(p.status, &p.message),
            };
        }
        ["invocations", id] => pages::invocation(ctx, id).await,
        _ => Err(Problem::new(
            StatusCode::NOT_FOUND,
            format!("{path}: no such page in the portal"),
        )),
    };
    match page {
        Ok(markup) => html(StatusCode::OK, markup),
        Err(p) => html(p.status, pages::problem(ctx, &p)),
    }
}

/// The confirmations a redirect after an action may name (fixed texts: nothing
/// from the URL is shown).
fn done_text(code: &str) -> Option<String> {
    Some(
        match code {
            "deployed" => "Deployed: the new version is active.",
            "rolledback" => "Rolled back: the chosen version is active.",
            "scaled" => "Scale changed.",
            "settings" => "Settings saved.",
            "imported" => "Settings imported from local.settings.json.",
            "deleted" => "App deleted.",
            "key" => "Key saved.",
            "keydeleted" => "Key deleted.",
            "enabled" => "Function enabled.",
            "disabled" => "Function disabled.",
            _ => return None,
        }
        .to_string(),
    )
}

async fn post<B>(
    ctx: &Ctx,
    key: &SessionKey,
    session: &Session,
    request: Request<B>,
    secure: bool,
) -> Response<Body>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: std::fmt::Display,
{
    let path = request.uri().path().to_string();
    if let Err(e) = crate::publishing::refuse_cross_site(
        request.headers(),
        crate::publishing::request_host(&request).as_deref(),
    ) {
        return html(
            StatusCode::FORBIDDEN,
            pages::problem(ctx, &Problem::new(StatusCode::FORBIDDEN, e.message())),
        );
    }
    let seg = segments(&path);
    let seg: Vec<&str> = seg.iter().map(String::as_str).collect();
    // The zip upload carries its CSRF token in a header and answers JSON.
    if let ["apps", app, "deploy"] = seg.as_slice() {
        let presented = request
            .headers()
            .get("x-csrf-token")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !session::csrf_ok(key, session, presented) {
            return json(
                StatusCode::FORBIDDEN,
                &serde_json::json!({"message": CSRF_REFUSED}),
            );
        }
        let file = query_param(request.uri().query(), "file").unwrap_or_default();
        return upload(ctx, app, &file, request).await;
    }
    let form = match read_form(request).await {
        Ok(f) => f,
        Err(p) => return html(p.status, pages::problem(ctx, &p)),
    };
    if !form
        .get("csrf")
        .is_some_and(|t| session::csrf_ok(key, session, t))
    {
        return html(
            StatusCode::FORBIDDEN,
            pages::problem(ctx, &Problem::new(StatusCode::FORBIDDEN, CSRF_REFUSED)),
        );
    }
    match seg.as_slice() {
        ["signout"] => redirect(
            "/portal/signin?why=signedout",
            Some(&session::clear_cookie(secure)),
        ),
        ["apps", app, action] => {
            let app = match app_name(app) {
                Ok(a) => a,
                Err(p) => return html(p.status, pages::problem(ctx, &p)),
            };
            let back = format!("/portal/apps/{}", app.as_str());
            match app_action(ctx, &app, action, &form).await {
                Ok("deleted") => redirect("/portal/apps?done=deleted", None),
                Ok(done) => redirect(&format!("{back}?done={done}"), None),
                Err(p) => {
                    let status = p.status;
                    let page = pages::app(ctx, &app, None, Some(Flash::Error(p))).await;
                    page_or_problem(ctx, status, page)
                }
            }
        }
        ["apps", app, "functions", function, action] => {
            let app = match app_name(app) {
                Ok(a) => a,
                Err(p) => return html(p.status, pages::problem(ctx, &p)),
            };
            let back = format!(
                "/portal/apps/{}/functions/{}",
                app.as_str(),
                pages::path_escape(function)
            );
            if *action == "test" {
                let outcome = test_panel::run(ctx, &app, function, &form).await;
                let status = match &outcome {
                    Ok(_) => StatusCode::OK,
                    Err(p) => p.status,
                };
                let (flash, result) = match outcome {
                    Ok(r) => (None, Some(r)),
                    Err(p) => (Some(Flash::Error(p)), None),
                };
                let page = pages::function(ctx, &app, function, None, flash, result).await;
                return page_or_problem(ctx, status, page);
            }
            if *action == "run" {
                let outcome = run_now(ctx, &app, function).await;
                let (flash, status) = match outcome {
                    Ok(f) => (f, StatusCode::OK),
                    Err(p) => {
                        let s = p.status;
                        (Flash::Error(p), s)
                    }
                };
                let page = pages::function(ctx, &app, function, None, Some(flash), None).await;
                return page_or_problem(ctx, status, page);
            }
            match function_action(ctx, &app, function, action, &form).await {
                Ok(Some(reveal)) => {
                    redirect(&format!("{back}?done=key&reveal={reveal}#keys"), None)
                }
                Ok(None) => {
                    let done = match *action {
                        "enable" => "enabled",
                        "disable" => "disabled",
                        _ => "keydeleted",
                    };
                    redirect(&format!("{back}?done={done}"), None)
                }
                Err(p) => {
                    let status = p.status;
                    let page =
                        pages::function(ctx, &app, function, None, Some(Flash::Error(p)), None)
                            .await;
                    page_or_problem(ctx, status, page)
                }
            }
        }
        _ => html(
            StatusCode::NOT_FOUND,
            pages::problem(
                ctx,
                &Problem::new(StatusCode::NOT_FOUND, format!("{path}: no such action")),
            ),
        ),
    }
}

const CSRF_REFUSED: &str = "This form is stale or did not come from this portal (its CSRF \
                            token is missing or wrong): nothing was changed. Reload the page \
                            and try again.";

fn page_or_problem(ctx: &Ctx, status: StatusCode, page: Result<Markup, Problem>) -> Response<Body> {
    match page {
        Ok(m) => html(status, m),
        Err(p) => html(p.status, pages::problem(ctx, &p)),
    }
}

/// A form's fields (the last value of a repeated name wins, except `remove`,
/// which may repeat).
pub(crate) struct Form(Vec<(String, String)>);

impl Form {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn required(&self, name: &str, what: &str) -> Result<&str, Problem> {
        match self.get(name).map(str::trim) {
            Some(v) if !v.is_empty() => Ok(v),
            _ => Err(Problem::bad(format!("{what} is required"))),
        }
    }
}

async fn read_form<B>(request: Request<B>) -> Result<Form, Problem>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: std::fmt::Display,
{
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type.starts_with("application/x-www-form-urlencoded") {
        return Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "a portal form is sent as application/x-www-form-urlencoded, not `{content_type}`"
            ),
        ));
    }
    let read = crate::publishing::read_body(request, MAX_FORM, "the form");
    let bytes = tokio::time::timeout(FORM_READ, read)
        .await
        .map_err(|_| {
            Problem::new(
                StatusCode::REQUEST_TIMEOUT,
                format!("the form did not arrive within {} s", FORM_READ.as_secs()),
            )
        })?
        .map_err(|e| Problem::new(e.status(), e.message()))?;
    Ok(Form(
        form_urlencoded::parse(&bytes)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect(),
    ))
}

/// An app-level action; answers the `done` code of the page to go back to.
async fn app_action(
    ctx: &Ctx,
    app: &AppName,
    action: &str,
    form: &Form,
) -> Result<&'static str, Problem> {
    let api = &ctx.api;
    match action {
        "rollback" => {
            let version = form.required("version", "the version to roll back to")?;
            api.rollback_app(tonic::Request::new(pb::RollbackAppRequest {
                name: app.to_string(),
                version_id: version.to_string(),
            }))
            .await?;
            Ok("rolledback")
        }
        "scale" => {
            let n = form.required("instances", "the number of instances")?;
            let instances: u32 = n.parse().map_err(|_| {
                Problem::bad(format!(
                    "instances: `{n}` is not a whole number (0 or more)"
                ))
            })?;
            api.scale_app(tonic::Request::new(pb::ScaleAppRequest {
                name: app.to_string(),
                instances,
            }))
            .await?;
            Ok("scaled")
        }
        "settings" => {
            let mut set = std::collections::HashMap::new();
            let mut remove = Vec::new();
            if let Some(name) = form.get("remove") {
                remove.push(name.to_string());
            } else {
                let name = form.required("name", "the setting's name")?;
                let value = form.get("value").unwrap_or("");
                set.insert(name.to_string(), value.to_string());
            }
            api.set_app_settings(tonic::Request::new(pb::SetAppSettingsRequest {
                name: app.to_string(),
                set,
                remove,
            }))
            .await?;
            Ok("settings")
        }
        "import" => {
            let text = form.required("local_settings", "the contents of local.settings.json")?;
            let values = local_settings_values(text)?;
            api.set_app_settings(tonic::Request::new(pb::SetAppSettingsRequest {
                name: app.to_string(),
                set: values.into_iter().collect(),
                remove: Vec::new(),
            }))
            .await?;
            Ok("imported")
        }
        "delete" => {
            let typed = form.get("confirm").unwrap_or("").trim();
            if typed != app.as_str() {
                return Err(Problem::bad(format!(
                    "to delete the app, type its name `{app}` exactly (you typed `{typed}`): \
                     nothing was deleted"
                )));
            }
            api.delete_app(tonic::Request::new(pb::DeleteAppRequest {
                name: app.to_string(),
            }))
            .await?;
            Ok("deleted")
        }
        other => Err(Problem::new(
            StatusCode::NOT_FOUND,
            format!("`{other}` is not an action on an app"),
        )),
    }
}

/// The `Values` of a `local.settings.json` (what `func start` and `strom up` take
/// as app settings); every problem names where it is.
pub(crate) fn local_settings_values(text: &str) -> Result<BTreeMap<String, String>, Problem> {
    let doc: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| Problem::bad(format!("local.settings.json is not JSON: {e}")))?;
    let Some(object) = doc.as_object() else {
        return Err(Problem::bad(
            "local.settings.json: the top level is not an object",
        ));
    };
    if object
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("IsEncrypted") && v == &serde_json::Value::Bool(true))
    {
        return Err(Problem::bad(
            "local.settings.json: IsEncrypted is true; decrypt it first (func settings decrypt)",
        ));
    }
    let Some((_, values)) = object
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("Values"))
    else {
        return Err(Problem::bad("local.settings.json: no `Values` object"));
    };
    let Some(values) = values.as_object() else {
        return Err(Problem::bad(
            "local.settings.json: `Values` is not an object",
        ));
    };
    let mut out = BTreeMap::new();
    for (k, v) in values {
        let v = match v {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Number(n) => n.to_string(),
            serde_json::Value::Bool(b) => b.to_string(),
            _ => {
                return Err(Problem::bad(format!(
                    "local.settings.json: Values.{k} is not a string, number or boolean"
                )))
            }
        };
        out.insert(k.clone(), v);
    }
    if out.is_empty() {
        return Err(Problem::bad("local.settings.json: `Values` is empty"));
    }
    Ok(out)
}

/// A function-level action; `Ok(Some(name))` names a key to show once.
async fn function_action(
    ctx: &Ctx,
    app: &AppName,
    function: &str,
    action: &str,
    form: &Form,
) -> Result<Option<String>, Problem> {
    let api = &ctx.api;
    // The function as the app names it (the URL's spelling may differ in case).
    let info = pages::function_info(api, app, function).await?;
    let function = info.name.as_str();
    let scope_of = |form: &Form| -> Result<KeyScope, Problem> {
        match form.get("scope").unwrap_or("function") {
            "function" => Ok(KeyScope::Function(function.to_string())),
            "host" => Ok(KeyScope::Host),
            "master" => Ok(KeyScope::Master),
            other => Err(Problem::bad(format!(
                "scope: `{other}` is not function, host or master"
            ))),
        }
    };
    match action {
        "keys" => {
            let scope = scope_of(form)?;
            let name = match scope {
                KeyScope::Master => "_master",
                _ => form.required("name", "the key's name")?,
            };
            let value = form.get("value").map(str::trim).filter(|v| !v.is_empty());
            let (name, _, _) = api.put_key(app.clone(), scope.clone(), name, value).await?;
            let scope = match scope {
                KeyScope::Function(_) => "function",
                KeyScope::Host => "host",
                KeyScope::Master => "master",
                KeyScope::System => "system",
            };
            Ok(Some(format!("{scope}:{}", pages::path_escape(&name))))
        }
        "deletekey" => {
            let scope = scope_of(form)?;
            let name = form.required("name", "the key's name")?;
            api.delete_key(app.clone(), scope, name).await?;
            Ok(None)
        }
        "enable" | "disable" => {
            let setting = format!("AzureWebJobs.{function}.Disabled");
            let (set, remove) = if action == "disable" {
                (
                    std::iter::once((setting, "true".to_string())).collect(),
                    Vec::new(),
                )
            } else {
                // Any spelling of the setting goes.
                let current = api
                    .get_app_settings(tonic::Request::new(pb::GetAppSettingsRequest {
                        name: app.to_string(),
                    }))
                    .await?
                    .into_inner()
                    .settings;
                let remove = current
                    .keys()
                    .filter(|k| k.eq_ignore_ascii_case(&setting))
                    .cloned()
                    .collect();
                (Default::default(), remove)
            };
            api.set_app_settings(tonic::Request::new(pb::SetAppSettingsRequest {
                name: app.to_string(),
                set,
                remove,
            }))
            .await?;
            Ok(None)
        }
        other => Err(Problem::new(
            StatusCode::NOT_FOUND,
            format!("`{other}` is not an action on a function"),
        )),
    }
}

/// "Run now": an admin invoke (a timer's run, out of schedule). The run is not
/// tied to this request (a closed page does not cancel it); its outcome is shown
/// if it ends within [`RUN_NOW_WAIT`].
async fn run_now(ctx: &Ctx, app: &AppName, function: &str) -> Result<Flash, Problem> {
    let started = ctx
        .api
        .invoke_function(tonic::Request::new(pb::InvokeFunctionRequest {
            app_name: app.to_string(),
            function_name: function.to_string(),
            input: String::new(),
            no_wait: true,
        }))
        .await?
        .into_inner();
    let id = started.invocation_id;
    let deadline = tokio::time::Instant::now() + RUN_NOW_WAIT;
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let found = ctx
            .api
            .list_invocations(tonic::Request::new(pb::ListInvocationsRequest {
                invocation_id: id.clone(),
                limit: Some(1),
                ..Default::default()
            }))
            .await
            .ok()
            .and_then(|r| r.into_inner().invocations.into_iter().next());
        if let Some(i) = found {
            let ms = i.duration_us / 1000;
            return Ok(if i.status == "Succeeded" {
                Flash::Done(format!(
                    "Ran {function} now: succeeded in {ms} ms (invocation {id})."
                ))
            } else {
                Flash::Error(Problem::new(
                    StatusCode::OK,
                    format!(
                        "Ran {function} now: {} after {ms} ms (invocation {id}): {}",
                        i.status.to_lowercase(),
                        i.error
                    ),
                ))
            });
        }
    }
    Ok(Flash::Done(format!(
        "Started {function} now (invocation {id}); it is still running: it appears in \
         Invocations when it ends."
    )))
}

/// How long "Run now" waits to show the run's outcome.
const RUN_NOW_WAIT: Duration = Duration::from_secs(20);

/// The zip upload: the same deploy path as Kudu's zip deploy (history included),
/// answered once the new version serves, as JSON for the page's script.
async fn upload<B>(ctx: &Ctx, app: &str, file: &str, request: Request<B>) -> Response<Body>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: std::fmt::Display,
{
    let refuse = |status: StatusCode, message: String, errors: Vec<String>| {
        json(
            status,
            &serde_json::json!({"message": message, "errors": errors}),
        )
    };
    let app = match AppName::parse(app) {
        Ok(a) => a,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, e.to_string(), Vec::new()),
    };
    let bytes = match crate::publishing::read_zip(&ctx.api, request).await {
        Ok(b) => b,
        Err(e) => return refuse(e.status(), e.message().to_string(), Vec::new()),
    };
    let started = ctx
        .api
        .start_deploy(DeployRequest {
            app: app.clone(),
            bytes,
            settings: Default::default(),
            meta: DeployMeta {
                author: String::new(),
                deployer: "Strom portal".into(),
                message: file.chars().take(200).collect(),
            },
            wait: DeployWait::Serving,
            tag: None,
        })
        .await;
    let outcome = match started {
        Ok(s) => s.finished().await,
        Err(e) => Err(e),
    };
    match outcome {
        Ok(answer) => json(
            StatusCode::OK,
            &serde_json::json!({
                "message": format!("Deployed {} as version {}.", app, answer.version_id),
                "version": answer.version_id,
                "location": format!("/portal/apps/{}?done=deployed", app.as_str()),
            }),
        ),
        Err(e) => {
            let p = Problem::of_deploy(e);
            refuse(p.status, p.message, p.details)
        }
    }
}

// --- responses ---------------------------------------------------------------

/// Headers of every portal page.
fn secure_headers(r: &mut Response<Body>) {
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
}

fn html(status: StatusCode, markup: Markup) -> Response<Body> {
    let mut r = Response::new(Body::new(Full::new(Bytes::from(markup.into_string()))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    secure_headers(&mut r);
    r
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut r = Response::new(Body::new(Full::new(Bytes::from(value.to_string()))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    secure_headers(&mut r);
    r
}

fn plain(status: StatusCode, text: &str) -> Response<Body> {
    let mut r = Response::new(Body::new(Full::new(Bytes::from(format!("{text}\n")))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    secure_headers(&mut r);
    r
}

fn redirect(to: &str, cookie: Option<&str>) -> Response<Body> {
    let mut r = Response::new(Body::new(Full::new(Bytes::new())));
    *r.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    if let Some(c) = cookie {
        add_cookie(&mut r, c);
    }
    secure_headers(&mut r);
    r
}

fn add_cookie(r: &mut Response<Body>, cookie: &str) {
    if let Ok(v) = HeaderValue::from_str(cookie) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn portal_paths_are_only_its_own() {
        for p in ["/", "/portal", "/portal/apps", "/assets/portal-abc.css"] {
            assert!(is_portal(p), "{p}");
        }
        for p in [
            "/api/zipdeploy",
            "/apps/x/scm/api/deployments",
            "/portalx",
            "/metrics",
        ] {
            assert!(!is_portal(p), "{p}");
        }
    }

    #[test]
    fn segments_are_decoded() {
        assert_eq!(
            segments("/portal/apps/web/functions/a%20b"),
            vec!["apps", "web", "functions", "a b"]
        );
        assert_eq!(segments("/portal/apps/x+y"), vec!["apps", "x+y"]);
    }

    #[test]
    fn local_settings_import_takes_values_and_names_every_problem() {
        let v = local_settings_values(
            r#"{"IsEncrypted": false, "Values": {"A": "1", "N": 2, "B": true}, "Host": {"LocalHttpPort": 7072}}"#,
        )
        .unwrap();
        assert_eq!(v["A"], "1");
        assert_eq!(v["N"], "2");
        assert_eq!(v["B"], "true");
        for (text, says) in [
            ("{", "not JSON"),
            ("[]", "not an object"),
            (
                r#"{"IsEncrypted": true, "Values": {"A": "1"}}"#,
                "IsEncrypted",
            ),
            (r#"{"Host": {}}"#, "no `Values`"),
            (r#"{"Values": {"A": {"x": 1}}}"#, "Values.A"),
            (r#"{"Values": {}}"#, "empty"),
        ] {
            let e = local_settings_values(text).unwrap_err();
            assert!(e.message.contains(says), "{text}: {}", e.message);
        }
    }

    #[test]
    fn back_goes_to_the_page_an_action_came_from() {
        assert_eq!(
            back_of(&Method::POST, "/portal/apps/web/settings"),
            "/portal/apps/web"
        );
        assert_eq!(
            back_of(&Method::POST, "/portal/apps/web/functions/f/keys"),
            "/portal/apps/web/functions/f"
        );
        assert_eq!(back_of(&Method::POST, "/portal/signout"), "/portal/cluster");
        assert_eq!(back_of(&Method::GET, "/portal/apps/nope"), "/portal/apps");
        assert_eq!(back_of(&Method::GET, "/portal/nothing"), "/portal/cluster");
    }

    #[test]
    fn only_known_confirmations_are_shown() {
        assert!(done_text("deployed").is_some());
        assert!(done_text("<script>alert(1)</script>").is_none());
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut h = http::HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; strom_session=v1.x; b=2"),
        );
        assert_eq!(session_cookie(&h).as_deref(), Some("v1.x"));
        assert_eq!(session_cookie(&http::HeaderMap::new()), None);
    }
}
