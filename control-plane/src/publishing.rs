//! The publishing endpoint: Kudu's zip deploy and deployment history, served on
//! the control port next to gRPC (HTTP/1.1 and HTTP/2, the same TLS).
//!
//! - `POST /api/zipdeploy` (`?isAsync=true`, `author`, `deployer`, `message`): the
//!   zip goes through the one deploy path ([`AdminApi::start_deploy`]); answered
//!   200 once the new version serves, 202 with `Location` when asynchronous.
//! - `GET /api/deployments`, `/api/deployments/latest`, `/api/deployments/{id}`:
//!   the replicated history, Kudu's fields and status codes.
//!
//! The app is named by the path base `/apps/{app}/scm` or by a `{app}.scm.<domain>`
//! Host. Callers authenticate with HTTP Basic (`$strom` and the admin token, or the
//! app's deployment credential) or `Authorization: Bearer <admin token>`. Every
//! refusal is a JSON error `{"error":{"code","message"}}` and changes nothing.
//!
//! It is a layer in front of the gRPC router: gRPC requests (and any path outside
//! `/api/` and `/apps/`) pass through untouched.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};
use strom_proto::command::DeployStatus;
use strom_proto::ids::AppName;
use strom_proto::version::Feature;
use tonic::codegen::http::{self, header, HeaderValue, Method, Request, Response, StatusCode};

use crate::admin_service::AdminApi;
use crate::deploy::{DeployError, DeployMeta, DeployRequest, DeployWait};
use crate::deployments::{AppDeployments, DeploymentRecord};
use crate::management::now_ms;

/// Longest pause while a zip arrives.
const BODY_READ: Duration = Duration::from_secs(30);
/// What an asynchronous deploy tells its poller to wait between polls.
const RETRY_AFTER_S: u64 = 2;
/// The Basic user name that goes with the admin token.
pub const ADMIN_USER: &str = "$strom";

type Body = tonic::body::Body;

/// Puts the publishing endpoint, `GET /metrics` (and, with
/// [`PublishingLayer::with_health`], the health endpoints) in front of the control
/// port's gRPC services.
#[derive(Clone)]
pub struct PublishingLayer {
    api: AdminApi,
    health: Option<std::sync::Arc<crate::health::Health>>,
}

impl PublishingLayer {
    pub fn new(api: AdminApi) -> Self {
        PublishingLayer { api, health: None }
    }

    /// Also answer `/healthz` and `/readyz` (docs/operations.md).
    pub fn with_health(mut self, health: std::sync::Arc<crate::health::Health>) -> Self {
        self.health = Some(health);
        self
    }
}

impl<S> tower_layer::Layer<S> for PublishingLayer {
    type Service = Publishing<S>;

    fn layer(&self, inner: S) -> Publishing<S> {
        Publishing {
            inner,
            api: self.api.clone(),
            health: self.health.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Publishing<S> {
    inner: S,
    api: AdminApi,
    health: Option<std::sync::Arc<crate::health::Health>>,
}

fn is_grpc<B>(request: &Request<B>) -> bool {
    request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// Whether a request is for the publishing endpoint (not gRPC).
fn is_publishing<B>(request: &Request<B>) -> bool {
    let path = request.uri().path();
    !is_grpc(request) && (path.starts_with("/api/") || path.starts_with("/apps/"))
}

impl<S, B> tower_service::Service<Request<B>> for Publishing<S>
where
    S: tower_service::Service<Request<B>, Response = Response<Body>>,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: std::fmt::Display,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        if let Some(answer) = self
            .health
            .as_ref()
            .and_then(|h| crate::health::control_port_answer(h, &request))
        {
            return Box::pin(async move { Ok(answer) });
        }
        if request.uri().path() == crate::metrics::PATH
            && matches!(*request.method(), Method::GET | Method::HEAD)
        {
            let api = &self.api;
            let (status, headers, body) = crate::metrics::answer(
                request.headers(),
                request.headers().get(crate::internal_auth::PROOF_METADATA),
                &api.node.secret,
                false,
                &|t| api.is_admin_token(t),
            );
            let body = if request.method() == Method::HEAD {
                String::new()
            } else {
                body
            };
            let mut answer = Response::new(Body::new(Full::new(Bytes::from(body))));
            *answer.status_mut() = status;
            answer.headers_mut().extend(headers);
            return Box::pin(async move { Ok(answer) });
        }
        if !is_grpc(&request) && crate::portal::is_portal(request.uri().path()) {
            let api = self.api.clone();
            return Box::pin(async move { Ok(crate::portal::handle(api, request).await) });
        }
        if !is_publishing(&request) {
            let answer = self.inner.call(request);
            return Box::pin(answer);
        }
        let api = self.api.clone();
        Box::pin(async move { Ok(handle(api, request).await.unwrap_or_else(|e| e.response())) })
    }
}

/// A refusal: the status and Kudu-style JSON error.
#[derive(Debug)]
pub struct HttpError {
    status: StatusCode,
    code: &'static str,
    message: String,
    details: Option<Value>,
    headers: Vec<(header::HeaderName, String)>,
}

impl HttpError {
    /// What the caller is told.
    pub(crate) fn message(&self) -> &str {
        &self.message
    }

    pub(crate) fn status(&self) -> StatusCode {
        self.status
    }

    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> HttpError {
        HttpError {
            status,
            code,
            message: message.into(),
            details: None,
            headers: Vec::new(),
        }
    }

    fn response(self) -> Response<Body> {
        let mut error = json!({"code": self.code, "message": self.message});
        if let Some(d) = self.details {
            error["details"] = d;
        }
        let mut r = json_response(self.status, &json!({ "error": error }));
        for (name, value) in self.headers {
            if let Ok(v) = HeaderValue::from_str(&value) {
                r.headers_mut().insert(name, v);
            }
        }
        r
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    let mut bytes = serde_json::to_vec_pretty(body).unwrap_or_default();
    bytes.push(b'\n');
    let mut r = Response::new(Body::new(Full::new(Bytes::from(bytes))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    r
}

/// A browser page of another site must not deploy with credentials the browser
/// keeps for this endpoint (a zip POST can be a CORS "simple request", sent
/// without a preflight): a request a browser marks as cross-site, or whose
/// `Origin` is not this endpoint, is refused. Tools (curl, PowerShell, IDEs) send
/// neither header.
pub(crate) fn refuse_cross_site(
    headers: &http::HeaderMap,
    host: Option<&str>,
) -> Result<(), HttpError> {
    let forbidden = |why: String| Err(HttpError::new(StatusCode::FORBIDDEN, "CrossSite", why));
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        if !matches!(site, "same-origin" | "none") {
            return forbidden(format!(
                "a browser request from another site (Sec-Fetch-Site: {site}) is refused"
            ));
        }
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        let authority = origin.split_once("://").map(|(_, a)| a).unwrap_or("");
        if host.is_none_or(|h| !h.eq_ignore_ascii_case(authority)) {
            return forbidden(format!(
                "a request from another origin ({origin}) is refused"
            ));
        }
    }
    Ok(())
}

/// What a request asks for, once its app is known.
#[derive(Debug, PartialEq, Eq)]
enum Endpoint {
    ZipDeploy,
    Deployments,
    Latest,
    Deployment(String),
}

/// Where a request points: its app, what it asks for, and the base URL path the
/// caller used (`/apps/{app}/scm` or empty), for the `Location`s we answer.
#[derive(Debug, PartialEq, Eq)]
struct Target {
    app: AppName,
    endpoint: Endpoint,
    base: String,
}

/// The app of a `{app}.scm.<domain>` Host (port ignored).
fn app_of_host(host: &str) -> Option<&str> {
    let host = host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host);
    let mut labels = host.split('.');
    let app = labels.next()?;
    (labels.next()?.eq_ignore_ascii_case("scm")).then_some(app)
}

fn target(path: &str, host: Option<&str>) -> Result<Target, HttpError> {
    let (app, base, rest) = if let Some(after) = path.strip_prefix("/apps/") {
        let (name, rest) = after.split_once('/').unwrap_or((after, ""));
        let rest = rest.strip_prefix("scm").ok_or_else(|| {
            HttpError::new(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("{path}: the publishing endpoint of an app is /apps/{{app}}/scm/api/…"),
            )
        })?;
        (name.to_string(), format!("/apps/{name}/scm"), rest)
    } else {
        let Some(app) = host.and_then(app_of_host) else {
            return Err(HttpError::new(
                StatusCode::BAD_REQUEST,
                "NoApp",
                format!(
                    "{path}: name the app, with the base URL /apps/{{app}}/scm (e.g. \
                     /apps/web/scm{path}) or the Host {{app}}.scm.<domain>"
                ),
            ));
        };
        (app.to_string(), String::new(), path)
    };
    let app = AppName::parse(&app)
        .map_err(|e| HttpError::new(StatusCode::BAD_REQUEST, "InvalidAppName", e.to_string()))?;
    let rest = rest.trim_end_matches('/');
    let endpoint = match rest {
        "/api/zipdeploy" => Endpoint::ZipDeploy,
        "/api/deployments" => Endpoint::Deployments,
        "/api/deployments/latest" => Endpoint::Latest,
        other => match other.strip_prefix("/api/deployments/") {
            Some(id) if !id.is_empty() && !id.contains('/') => Endpoint::Deployment(id.to_string()),
            _ => {
                return Err(HttpError::new(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    format!(
                        "{path}: not an endpoint here (api/zipdeploy, api/deployments, \
                         api/deployments/latest, api/deployments/{{id}})"
                    ),
                ))
            }
        },
    };
    Ok(Target {
        app,
        endpoint,
        base,
    })
}

/// Who the caller is.
#[derive(Debug, PartialEq, Eq)]
enum Caller {
    Admin,
    /// Holds the deployment credential of this app.
    App(AppName),
}

fn unauthorized(message: impl Into<String>) -> HttpError {
    let mut e = HttpError::new(StatusCode::UNAUTHORIZED, "Unauthorized", message);
    e.headers.push((
        header::WWW_AUTHENTICATE,
        "Basic realm=\"strom publishing\", charset=\"UTF-8\"".into(),
    ));
    e
}

/// Check the `Authorization` header against the admin token hash and the app's
/// deployment credential (hashes, compared in constant time).
fn authenticate(
    headers: &http::HeaderMap,
    admin: &strom_proto::ids::TokenHash,
    app: &AppName,
    deployments: Option<&AppDeployments>,
) -> Result<Caller, HttpError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(unauthorized(
            "credentials required: HTTP Basic with user `$strom` and the admin token, the \
             app's deployment credential (strom app credentials), or `Authorization: Bearer \
             <admin token>`",
        ));
    };
    let value = value
        .to_str()
        .map_err(|_| unauthorized("the Authorization header is not text"))?;
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    if scheme.eq_ignore_ascii_case("bearer") {
        return if admin.matches(rest.trim()) {
            Ok(Caller::Admin)
        } else {
            Err(unauthorized("invalid admin token"))
        };
    }
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(unauthorized(format!(
            "Authorization scheme `{scheme}` is not Basic or Bearer"
        )));
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| {
            unauthorized("malformed Basic credentials: not base64 of `user:password`")
        })?;
    let (user, password) = decoded.split_once(':').ok_or_else(|| {
        unauthorized("malformed Basic credentials: no `:` between user and password")
    })?;
    if user == ADMIN_USER {
        return if admin.matches(password) {
            Ok(Caller::Admin)
        } else {
            Err(unauthorized("invalid admin token for user `$strom`"))
        };
    }
    // The app's publishing user, as Kudu names it (`$app`), or the app's name.
    let named = user.strip_prefix('$').unwrap_or(user);
    let credential = deployments.and_then(|d| d.credential.as_ref());
    match credential {
        Some(hash) if named.eq_ignore_ascii_case(app.as_str()) && hash.matches(password) => {
            Ok(Caller::App(app.clone()))
        }
        _ => Err(unauthorized(format!(
            "invalid credentials for app `{app}` (user `{user}`): use `${app}` and the app's \
             deployment credential, or `$strom` and the admin token"
        ))),
    }
}

/// The host a request names (its URI's authority, else its `Host`).
pub(crate) fn request_host<B>(request: &Request<B>) -> Option<String> {
    request
        .uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            request
                .headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        })
}

async fn handle<B>(api: AdminApi, request: Request<B>) -> Result<Response<Body>, HttpError>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: std::fmt::Display,
{
    let host = request_host(&request);
    let target = target(request.uri().path(), host.as_deref())?;
    refuse_cross_site(request.headers(), host.as_deref())?;
    let view = api.node.read_local();
    let Some(cluster) = view.state.cluster.as_ref() else {
        return Err(HttpError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Unavailable",
            "the cluster is not initialized yet",
        ));
    };
    let caller = authenticate(
        request.headers(),
        &cluster.admin_token_hash,
        &target.app,
        view.state.deployments.get(&target.app),
    )?;
    if !view.state.allows(Feature::Publishing) {
        return Err(HttpError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Unavailable",
            format!(
                "the publishing endpoint needs cluster protocol {}; the cluster speaks {} \
                 (a rolling upgrade is not finished)",
                Feature::Publishing.since(),
                view.state.protocol()
            ),
        ));
    }
    drop(view);
    let query = Query::parse(request.uri().query().unwrap_or(""))?;
    let method = request.method().clone();
    let location = |what: &str| -> String {
        let scheme = if crate::tls::current().is_some() {
            "https"
        } else {
            "http"
        };
        match &host {
            Some(h) => format!("{scheme}://{h}{}/api/deployments/{what}", target.base),
            None => format!("{}/api/deployments/{what}", target.base),
        }
    };
    match (&target.endpoint, &method) {
        (Endpoint::ZipDeploy, &Method::POST) => {
            let headers = request.headers().clone();
            let body = read_zip(&api, request).await?;
            // The upload took a while: an app's credential must still be valid
            // (not rotated or deleted meanwhile, its app not deleted) as of now.
            if let Caller::App(_) = caller {
                let view = api.fresh().await.map_err(status_error)?;
                if let Some(cluster) = view.state.cluster.as_ref() {
                    authenticate(
                        &headers,
                        &cluster.admin_token_hash,
                        &target.app,
                        view.state.deployments.get(&target.app),
                    )?;
                }
            }
            zip_deploy(&api, &target.app, body, &query, location("latest")).await
        }
        (Endpoint::ZipDeploy, &Method::PUT) => Err(HttpError::new(
            StatusCode::BAD_REQUEST,
            "PackageUriNotSupported",
            "PUT /api/zipdeploy with a packageUri is not supported: POST the zip as the body",
        )),
        (Endpoint::ZipDeploy, _) => Err(not_allowed("POST")),
        (_, &Method::GET) | (_, &Method::HEAD) => {
            let view = api.fresh().await.map_err(status_error)?;
            let history = view.state.deployments.get(&target.app);
            let app = view.state.apps.get(&target.app).map(|a| &**a);
            let now = now_ms();
            let shown = |d: &DeploymentRecord| record_json(&target.app, history, app, d, now);
            match &target.endpoint {
                Endpoint::Deployments => {
                    let all = serde_json::to_value(self::history(&target.app, &view.state, now))
                        .unwrap_or(Value::Null);
                    Ok(json_response(StatusCode::OK, &all))
                }
                Endpoint::Latest => {
                    let latest = history.and_then(|h| h.latest()).ok_or_else(|| {
                        HttpError::new(
                            StatusCode::NOT_FOUND,
                            "NoDeployment",
                            format!("app `{}` has no deployment yet", target.app),
                        )
                    })?;
                    let latest = latest.as_of(now);
                    if latest.status.is_complete() {
                        Ok(json_response(StatusCode::OK, &shown(&latest)))
                    } else {
                        let mut r = json_response(StatusCode::ACCEPTED, &shown(&latest));
                        set(&mut r, header::LOCATION, &location("latest"));
                        set(&mut r, header::RETRY_AFTER, &RETRY_AFTER_S.to_string());
                        Ok(r)
                    }
                }
                Endpoint::Deployment(id) => {
                    let d = history.and_then(|h| h.find(id)).ok_or_else(|| {
                        HttpError::new(
                            StatusCode::NOT_FOUND,
                            "DeploymentNotFound",
                            format!("app `{}` has no deployment `{id}`", target.app),
                        )
                    })?;
                    Ok(json_response(StatusCode::OK, &shown(d)))
                }
                Endpoint::ZipDeploy => unreachable!("matched above"),
            }
        }
        _ => Err(not_allowed("GET")),
    }
}

fn set(r: &mut Response<Body>, name: header::HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        r.headers_mut().insert(name, v);
    }
}

fn not_allowed(allow: &str) -> HttpError {
    let mut e = HttpError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "MethodNotAllowed",
        format!("this endpoint takes {allow}"),
    );
    e.headers.push((header::ALLOW, allow.to_string()));
    e
}

/// The query parameters a zip deploy takes.
#[derive(Debug, Default, PartialEq, Eq)]
struct Query {
    is_async: bool,
    meta: DeployMeta,
}

impl Query {
    fn parse(raw: &str) -> Result<Query, HttpError> {
        let mut q = Query {
            is_async: false,
            meta: DeployMeta {
                author: String::new(),
                deployer: "Zip-Deploy".into(),
                message: String::new(),
            },
        };
        for (k, v) in form_urlencoded::parse(raw.as_bytes()) {
            let limit = |what: &str, v: &str| -> Result<String, HttpError> {
                if v.len() > 1024 || v.chars().any(char::is_control) {
                    return Err(HttpError::new(
                        StatusCode::BAD_REQUEST,
                        "InvalidQuery",
                        format!("query parameter `{what}`: at most 1024 characters, no control characters"),
                    ));
                }
                Ok(v.to_string())
            };
            match k.to_ascii_lowercase().as_str() {
                "isasync" => {
                    q.is_async = match v.to_ascii_lowercase().as_str() {
                        "true" | "1" => true,
                        "false" | "0" | "" => false,
                        other => {
                            return Err(HttpError::new(
                                StatusCode::BAD_REQUEST,
                                "InvalidQuery",
                                format!(
                                    "query parameter `isAsync`: `{other}` is not true or false"
                                ),
                            ))
                        }
                    }
                }
                "author" => q.meta.author = limit("author", &v)?,
                "deployer" => q.meta.deployer = limit("deployer", &v)?,
                "message" => q.meta.message = limit("message", &v)?,
                // Kudu's other parameters (clean, trackDeploymentProgress, …) change
                // nothing here: every deploy is a whole package.
                _ => {}
            }
        }
        Ok(q)
    }
}

/// Content types a zip may come as: Kudu's and the tools' (`application/zip`,
/// Windows' `application/x-zip-compressed`, `application/octet-stream`), and curl's
/// default for `--data-binary` (`application/x-www-form-urlencoded`), which the
/// Kudu documentation's own curl example sends.
fn check_content_type(headers: &http::HeaderMap) -> Result<(), HttpError> {
    let Some(ct) = headers.get(header::CONTENT_TYPE) else {
        return Err(HttpError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            "Content-Type is missing: send the zip as application/zip",
        ));
    };
    let ct = ct.to_str().unwrap_or("").to_ascii_lowercase();
    let essence = ct.split(';').next().unwrap_or("").trim();
    match essence {
        "application/zip"
        | "application/x-zip-compressed"
        | "application/octet-stream"
        | "application/x-www-form-urlencoded" => Ok(()),
        other => Err(HttpError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            format!("Content-Type `{other}` is not a zip: send the zip as application/zip"),
        )),
    }
}

/// A request body of at most `limit` bytes (`what` names it when refused), each
/// part arriving within [`BODY_READ`]; a declared larger length is refused before
/// anything is read.
pub(crate) async fn read_body<B>(
    request: Request<B>,
    limit: u64,
    what: &str,
) -> Result<Vec<u8>, HttpError>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: std::fmt::Display,
{
    let too_large = || {
        HttpError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PackageTooLarge",
            format!("{what} is larger than the limit of {limit} bytes"),
        )
    };
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let mut body = request.into_body();
    let mut bytes = Vec::with_capacity(declared.unwrap_or(0).min(limit) as usize);
    loop {
        let frame = tokio::time::timeout(BODY_READ, body.frame())
            .await
            .map_err(|_| {
                HttpError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "RequestTimeout",
                    format!("the upload paused for more than {} s", BODY_READ.as_secs()),
                )
            })?;
        let Some(frame) = frame else { break };
        let frame = frame.map_err(|e| {
            HttpError::new(
                StatusCode::BAD_REQUEST,
                "BadBody",
                format!("reading the request body: {e}"),
            )
        })?;
        if let Ok(data) = frame.into_data() {
            if (bytes.len() + data.len()) as u64 > limit {
                return Err(too_large());
            }
            bytes.extend_from_slice(&data);
        }
    }
    Ok(bytes)
}

/// The request body, at most the package limit, each part within [`BODY_READ`].
pub(crate) async fn read_zip<B>(api: &AdminApi, request: Request<B>) -> Result<Vec<u8>, HttpError>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: std::fmt::Display,
{
    check_content_type(request.headers())?;
    let limit = api.node.config.package_limits.max_compressed_bytes;
    let bytes = read_body(request, limit, "the package").await?;
    if bytes.is_empty() {
        return Err(HttpError::new(
            StatusCode::BAD_REQUEST,
            "EmptyBody",
            "the request has no body: send the zip as the body (curl --data-binary @app.zip)",
        ));
    }
    if !bytes.starts_with(b"PK\x03\x04") && !bytes.starts_with(b"PK\x05\x06") {
        return Err(HttpError::new(
            StatusCode::BAD_REQUEST,
            "NotAZip",
            "the body is not a zip archive",
        ));
    }
    Ok(bytes)
}

async fn zip_deploy(
    api: &AdminApi,
    app: &AppName,
    bytes: Vec<u8>,
    query: &Query,
    latest: String,
) -> Result<Response<Body>, HttpError> {
    let started = api
        .start_deploy(DeployRequest {
            app: app.clone(),
            bytes,
            settings: Default::default(),
            meta: query.meta.clone(),
            wait: DeployWait::Serving,
            tag: None,
        })
        .await
        .map_err(deploy_error)?;
    let id = started.id.clone().unwrap_or_default();
    if query.is_async {
        let d = shown(api, app, &id).unwrap_or_else(|| json!({ "id": id }));
        let mut r = json_response(StatusCode::ACCEPTED, &d);
        set(&mut r, header::LOCATION, &latest);
        set(&mut r, header::RETRY_AFTER, &RETRY_AFTER_S.to_string());
        return Ok(r);
    }
    let outcome = started.finished().await;
    let shown = shown(api, app, &id);
    match outcome {
        Ok(_) => Ok(json_response(
            StatusCode::OK,
            &shown.unwrap_or_else(|| json!({ "id": id, "status": 4, "complete": true })),
        )),
        Err(e) => {
            let mut e = deploy_error(e);
            if let Some(d) = shown {
                let details = e.details.take().unwrap_or(Value::Null);
                e.details = Some(json!({ "deployment": d, "errors": details }));
            }
            Err(e)
        }
    }
}

/// Deployment `id` of `app` as this node last applied it.
fn shown(api: &AdminApi, app: &AppName, id: &str) -> Option<Value> {
    let view = api.node.read_local();
    let history = view.state.deployments.get(app);
    let d = history?.find(id)?;
    Some(record_json(
        app,
        history,
        view.state.apps.get(app).map(|a| &**a),
        d,
        now_ms(),
    ))
}

fn deploy_error(e: DeployError) -> HttpError {
    match e {
        DeployError::Invalid(errors) => {
            let mut h = HttpError::new(
                StatusCode::BAD_REQUEST,
                "InvalidApp",
                DeployError::Invalid(errors.clone()).to_status().message(),
            );
            h.details = Some(Value::Array(
                errors
                    .iter()
                    .map(
                        |e| json!({"file": e.file, "json_path": e.json_path, "message": e.message}),
                    )
                    .collect(),
            ));
            h
        }
        DeployError::Busy { id } => HttpError::new(
            StatusCode::CONFLICT,
            "DeploymentInProgress",
            format!(
                "deployment {id} of this app is in progress; one deployment of an app runs at a \
                 time (poll api/deployments/latest)"
            ),
        ),
        DeployError::NotReady(why) => {
            HttpError::new(StatusCode::INTERNAL_SERVER_ERROR, "DeploymentFailed", why)
        }
        DeployError::Status(s) => status_error(s),
    }
}

/// A gRPC-shaped error as an HTTP answer.
fn status_error(s: tonic::Status) -> HttpError {
    let (status, code) = strom_proto::http_status::of(s.code());
    HttpError::new(status, code, s.message().to_string())
}

fn iso(ms: i64) -> Option<String> {
    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

/// A deployment as Kudu's `DeployResult` shows it, plus Strom's `version`,
/// `errors`, `node` and `size_bytes`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeploymentView {
    pub id: String,
    pub status: u8,
    pub status_text: String,
    pub author_email: String,
    pub author: String,
    pub deployer: String,
    pub message: String,
    pub progress: String,
    pub received_time: Option<String>,
    pub start_time: Option<String>,
    pub end_time: Option<String>,
    pub last_success_end_time: Option<String>,
    pub complete: bool,
    pub active: bool,
    pub is_temp: bool,
    pub is_readonly: bool,
    pub url: Option<String>,
    pub log_url: Option<String>,
    pub site_name: String,
    pub version: Option<String>,
    pub errors: Vec<String>,
    pub node: u64,
    pub size_bytes: u64,
}

/// A deployment as seen at `now`.
pub fn deployment_view(
    app: &AppName,
    history: Option<&AppDeployments>,
    state: Option<&crate::cluster_state::AppState>,
    d: &DeploymentRecord,
    now: i64,
) -> DeploymentView {
    let d = d.as_of(now);
    // Active: the newest successful deployment of the version the app runs.
    let active = d.status == DeployStatus::Success
        && state.is_some_and(|s| Some(&s.active_version) == d.version.as_ref())
        && history.is_some_and(|h| {
            h.history
                .iter()
                .rev()
                .find(|x| x.status == DeployStatus::Success && x.version == d.version)
                .is_some_and(|x| x.id == d.id)
        });
    DeploymentView {
        status: d.status.code(),
        author_email: String::new(),
        progress: if d.status.is_complete() {
            String::new()
        } else {
            d.status_text.clone()
        },
        received_time: iso(d.received_ms),
        start_time: iso(d.received_ms),
        end_time: d.end_ms.and_then(iso),
        last_success_end_time: history
            .and_then(|h| h.last_success_end(&d.id))
            .and_then(iso),
        complete: d.status.is_complete(),
        active,
        is_temp: false,
        is_readonly: false,
        url: None,
        log_url: None,
        site_name: app.to_string(),
        version: d.version.as_ref().map(|v| v.to_string()),
        node: d.node,
        size_bytes: d.size_bytes,
        id: d.id,
        status_text: d.status_text,
        author: d.author,
        deployer: d.deployer,
        message: d.message,
        errors: d.errors,
    }
}

fn record_json(
    app: &AppName,
    history: Option<&AppDeployments>,
    state: Option<&crate::cluster_state::AppState>,
    d: &DeploymentRecord,
    now: i64,
) -> Value {
    serde_json::to_value(deployment_view(app, history, state, d, now)).unwrap_or(Value::Null)
}

/// An app's history, newest first, each seen at `now` (`strom app deployments`).
pub fn history(
    app: &AppName,
    state: &crate::cluster_state::ClusterState,
    now: i64,
) -> Vec<DeploymentView> {
    let history = state.deployments.get(app);
    history
        .map(|h| {
            h.history
                .iter()
                .rev()
                .map(|d| deployment_view(app, history, state.apps.get(app).map(|a| &**a), d, now))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(n: &str) -> AppName {
        AppName::parse(n).unwrap()
    }

    #[test]
    fn the_app_comes_from_the_path_base_or_the_scm_host() {
        let t = target("/apps/web/scm/api/zipdeploy", None).unwrap();
        assert_eq!(
            (t.app, t.endpoint, t.base.as_str()),
            (app("web"), Endpoint::ZipDeploy, "/apps/web/scm")
        );
        let t = target("/api/deployments/latest", Some("Web.scm.example.com:7171")).unwrap();
        assert_eq!(
            (t.app, t.endpoint, t.base.as_str()),
            (app("web"), Endpoint::Latest, "")
        );
        let t = target("/apps/web/scm/api/deployments/abc123", None).unwrap();
        assert_eq!(t.endpoint, Endpoint::Deployment("abc123".into()));
        let e = target("/api/zipdeploy", Some("127.0.0.1:7171")).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(e.message.contains("/apps/{app}/scm"), "{}", e.message);
        let e = target("/apps/Bad_Name/scm/api/zipdeploy", None).unwrap_err();
        assert_eq!(e.code, "InvalidAppName");
        assert_eq!(
            target("/apps/web/scm/api/other", None).unwrap_err().status,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            target("/apps/web/api/zipdeploy", None).unwrap_err().status,
            StatusCode::NOT_FOUND
        );
    }

    fn auth(value: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        h
    }

    fn basic(user: &str, password: &str) -> http::HeaderMap {
        let b = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        auth(&format!("Basic {b}"))
    }

    #[test]
    fn callers_are_the_admin_or_the_holder_of_the_apps_credential() {
        use strom_proto::ids::TokenHash;
        let admin = TokenHash::of("admin-token");
        let web = AppDeployments {
            credential: Some(TokenHash::of("web-secret")),
            ..Default::default()
        };
        let ok = |h: &http::HeaderMap, d: Option<&AppDeployments>| {
            authenticate(h, &admin, &app("web"), d)
        };
        assert_eq!(
            ok(&basic("$strom", "admin-token"), None).unwrap(),
            Caller::Admin
        );
        assert_eq!(
            ok(&auth("Bearer admin-token"), None).unwrap(),
            Caller::Admin
        );
        assert_eq!(
            ok(&basic("$web", "web-secret"), Some(&web)).unwrap(),
            Caller::App(app("web"))
        );
        assert_eq!(
            ok(&basic("web", "web-secret"), Some(&web)).unwrap(),
            Caller::App(app("web"))
        );
        // The web credential is no good for another app.
        assert!(authenticate(&basic("$web", "web-secret"), &admin, &app("api"), None).is_err());
        let api = AppDeployments {
            credential: Some(TokenHash::of("api-secret")),
            ..Default::default()
        };
        assert!(authenticate(
            &basic("$api", "web-secret"),
            &admin,
            &app("api"),
            Some(&api)
        )
        .is_err());
        assert!(authenticate(
            &basic("$web", "api-secret"),
            &admin,
            &app("api"),
            Some(&api)
        )
        .is_err());
        assert_eq!(
            authenticate(
                &basic("$api", "api-secret"),
                &admin,
                &app("api"),
                Some(&api)
            )
            .unwrap(),
            Caller::App(app("api"))
        );
        for bad in [
            basic("$strom", "wrong"),
            basic("$web", "admin-token"),
            auth("Bearer wrong"),
            auth("Basic !!!notbase64"),
            auth(&format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode("no-colon")
            )),
            auth("Digest x"),
            http::HeaderMap::new(),
        ] {
            let e = ok(&bad, Some(&web)).unwrap_err();
            assert_eq!(e.status, StatusCode::UNAUTHORIZED);
            assert!(e.headers.iter().any(|(n, _)| n == header::WWW_AUTHENTICATE));
        }
    }

    #[test]
    fn browsers_on_other_sites_are_refused() {
        let with = |pairs: &[(&str, &str)]| {
            let mut h = http::HeaderMap::new();
            for (k, v) in pairs {
                h.insert(
                    header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                );
            }
            refuse_cross_site(&h, Some("mgmt:7171"))
        };
        assert!(with(&[]).is_ok(), "tools send neither header");
        assert!(with(&[("origin", "https://mgmt:7171")]).is_ok());
        assert!(with(&[("sec-fetch-site", "same-origin")]).is_ok());
        for bad in [
            &[("origin", "https://evil.example")][..],
            &[("origin", "null")],
            &[("sec-fetch-site", "cross-site")],
            &[
                ("sec-fetch-site", "same-site"),
                ("origin", "https://mgmt:7171"),
            ],
        ] {
            let e = with(bad).unwrap_err();
            assert_eq!(e.status, StatusCode::FORBIDDEN, "{bad:?}");
        }
    }

    #[test]
    fn the_query_names_who_deploys() {
        let q =
            Query::parse("isAsync=true&author=ada%20l&deployer=GitHub&message=fix+it&clean=true")
                .unwrap();
        assert!(q.is_async);
        assert_eq!(q.meta.author, "ada l");
        assert_eq!(q.meta.deployer, "GitHub");
        assert_eq!(q.meta.message, "fix it");
        let q = Query::parse("").unwrap();
        assert!(!q.is_async);
        assert_eq!(q.meta.deployer, "Zip-Deploy");
        assert_eq!(
            Query::parse("isAsync=maybe").unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
        assert!(Query::parse("message=a%0Ab").is_err());
    }

    #[test]
    fn a_zip_comes_as_a_zip_content_type() {
        let with = |ct: &str| {
            let mut h = http::HeaderMap::new();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_str(ct).unwrap());
            check_content_type(&h)
        };
        for ok in [
            "application/zip",
            "application/x-zip-compressed",
            "application/octet-stream",
            "application/x-www-form-urlencoded",
            "Application/Zip; charset=binary",
        ] {
            assert!(with(ok).is_ok(), "{ok}");
        }
        for bad in [
            "application/json",
            "text/plain",
            "multipart/form-data; boundary=x",
        ] {
            assert_eq!(
                with(bad).unwrap_err().status,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "{bad}"
            );
        }
        assert_eq!(
            check_content_type(&http::HeaderMap::new())
                .unwrap_err()
                .status,
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        );
    }
}
