//! Azure's key management API on the function port: `GET|PUT|POST|DELETE
//! /admin/functions/{name}/keys[/{key}]`, `/admin/host/keys[/{key}]` (also
//! `/admin/host/functionkeys`) and `/admin/host/systemkeys[/{key}]`, with the
//! app's master key or the admin token (`Authorization: Bearer`).
//!
//! Reads answer from this node's view of the cluster; writes go through the
//! node's [`KeyAdmin`] (the management role's admin API, or a worker's link to
//! the management group) and are answered once this node's gateway sees them:
//! a deleted key is refused here as soon as the DELETE is answered, and on every
//! other node once its view follows (the state watch, milliseconds).

use std::sync::Arc;

use bytes::Bytes;
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Value};
use strom_proto::command::KeyScope;
use strom_proto::ids::AppName;

use super::admission::{KeysScope, KeysTarget};
use super::responses::{error, full, json, Body, BoxError};
use super::Gateway;

/// Where this node's key writes go. The management role commits them itself;
/// a worker-only node proposes them to the management group.
#[async_trait::async_trait]
pub trait KeyAdmin: Send + Sync {
    /// Create or replace a key; answered once this node's gateway sees it.
    async fn put(
        &self,
        app: &AppName,
        scope: KeyScope,
        name: &str,
        value: &str,
    ) -> Result<(), tonic::Status>;
    /// Remove a key; answered once this node's gateway sees it.
    async fn delete(&self, app: &AppName, scope: KeyScope, name: &str)
        -> Result<(), tonic::Status>;
    /// Whether `token` is the admin token; `None` when this node cannot tell
    /// (it has no management role).
    fn is_admin_token(&self, token: &str) -> Option<bool>;
}

/// Most bytes of a PUT body (`{"name","value"}`).
const MAX_BODY: usize = 16 * 1024;

/// The key a request names and the collection it is in (`_master` among the
/// host keys is the master key).
fn scope_of(target: &KeysTarget, key: &str) -> KeyScope {
    match &target.scope {
        KeysScope::Host if key == "_master" => KeyScope::Master,
        KeysScope::Host => KeyScope::Host,
        KeysScope::System => KeyScope::System,
        KeysScope::Function(f) => KeyScope::Function(f.clone()),
    }
}

impl Gateway {
    /// A key management request admission let through.
    pub(super) async fn keys<B>(&self, req: Request<B>, target: KeysTarget) -> Response<Body>
    where
        B: hyper::body::Body<Data = Bytes> + Send,
        B::Error: Into<BoxError>,
    {
        let admin = self.inner.config.key_admin.0.clone();
        if !target.master {
            let bearer = req
                .headers()
                .get(hyper::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| {
                    v.strip_prefix("Bearer ")
                        .or_else(|| v.strip_prefix("bearer "))
                });
            let refused = match (bearer, admin.as_ref().map(|a| bearer.map(|t| a.is_admin_token(t.trim())))) {
                (None, _) => Some("the key management API needs the app's master key (x-functions-key header or code query parameter) or the admin token (Authorization: Bearer)".to_string()),
                (Some(_), Some(Some(Some(true)))) => None,
                (Some(_), Some(Some(None)) | None) => Some("this node has no management role and cannot check the admin token: use the app's master key, or call a management node".to_string()),
                (Some(_), _) => Some("invalid admin token".to_string()),
            };
            if let Some(message) = refused {
                return error(StatusCode::UNAUTHORIZED, "Unauthorized", message);
            }
        }
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let body = if method == hyper::Method::PUT {
            match self.whole_request(req).await {
                Ok((_, body)) if body.len() > MAX_BODY => {
                    return error(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "PayloadTooLarge",
                        format!("a key's body is at most {MAX_BODY} bytes"),
                    )
                }
                Ok((_, body)) => body,
                Err(refused) => return refused,
            }
        } else {
            Bytes::new()
        };
        let Some(key) = target.key.clone() else {
            return self.list_keys(&target, &path);
        };
        match method.as_str() {
            "GET" => self.get_key(&target, &key, &path),
            "DELETE" => {
                let scope = scope_of(&target, &key);
                if scope == KeyScope::Master {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "MasterKeyIsPermanent",
                        "the `_master` key cannot be deleted (PUT or POST a new value instead)",
                    );
                }
                if self.key_value(&target, &key).is_none() {
                    return not_found(&target.app, &key);
                }
                match self
                    .write(admin, |a| async move {
                        a.delete(&target.app, scope, &key).await
                    })
                    .await
                {
                    Ok(()) => {
                        let mut r = Response::new(full(Bytes::new()));
                        *r.status_mut() = StatusCode::NO_CONTENT;
                        r
                    }
                    Err(e) => e,
                }
            }
            // PUT names the value; POST makes one.
            _ => {
                let value = if method == hyper::Method::PUT {
                    match put_value(&body, &key) {
                        Ok(v) => v,
                        Err(message) => {
                            return error(StatusCode::BAD_REQUEST, "BadRequest", message)
                        }
                    }
                } else {
                    strom_proto::key_rules::new_key_value()
                };
                let name_check = if key == "_master" && target.scope == KeysScope::Host {
                    Ok(())
                } else {
                    strom_proto::key_rules::check_key_name(&key)
                };
                if let Err(message) =
                    name_check.and_then(|_| strom_proto::key_rules::check_key_value(&value))
                {
                    return error(StatusCode::BAD_REQUEST, "BadRequest", message);
                }
                let created = self.key_value(&target, &key).is_none();
                let scope = scope_of(&target, &key);
                let (app, k, v) = (target.app.clone(), key.clone(), value.clone());
                match self
                    .write(admin, |a| async move { a.put(&app, scope, &k, &v).await })
                    .await
                {
                    Ok(()) => json(
                        if created {
                            StatusCode::CREATED
                        } else {
                            StatusCode::OK
                        },
                        &json!({"name": key, "value": value, "links": links(&path)}),
                    ),
                    Err(e) => e,
                }
            }
        }
    }

    async fn write<F, Fut>(
        &self,
        admin: Option<Arc<dyn KeyAdmin>>,
        f: F,
    ) -> Result<(), Response<Body>>
    where
        F: FnOnce(Arc<dyn KeyAdmin>) -> Fut,
        Fut: std::future::Future<Output = Result<(), tonic::Status>>,
    {
        let Some(admin) = admin else {
            return Err(error(
                StatusCode::SERVICE_UNAVAILABLE,
                "Unavailable",
                "this node cannot change keys yet (it is starting)",
            ));
        };
        f(admin).await.map_err(|e| {
            let (status, code) = strom_proto::http_status::of(e.code());
            error(status, code, e.message())
        })
    }

    /// A key's value in this node's view.
    fn key_value(&self, target: &KeysTarget, key: &str) -> Option<String> {
        let routes = self.inner.routes.load();
        let app = routes.apps.get(&target.app)?;
        match scope_of(target, key) {
            KeyScope::Master => Some(app.keys.master.clone()),
            KeyScope::Host => app.keys.host.get(key).cloned(),
            KeyScope::System => app.system_keys.get(key).cloned(),
            KeyScope::Function(f) => app.keys.functions.get(&f)?.get(key).cloned(),
        }
    }

    fn list_keys(&self, target: &KeysTarget, path: &str) -> Response<Body> {
        let routes = self.inner.routes.load();
        let Some(app) = routes.apps.get(&target.app) else {
            return error(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("no app `{}`", target.app),
            );
        };
        let empty = Default::default();
        let keys = match &target.scope {
            KeysScope::Host => &app.keys.host,
            KeysScope::System => &app.system_keys,
            KeysScope::Function(f) => app.keys.functions.get(f).unwrap_or(&empty),
        };
        let keys: Vec<Value> = keys
            .iter()
            .map(|(name, value)| json!({"name": name, "value": value}))
            .collect();
        json(StatusCode::OK, &json!({"keys": keys, "links": links(path)}))
    }

    fn get_key(&self, target: &KeysTarget, key: &str, path: &str) -> Response<Body> {
        match self.key_value(target, key) {
            Some(value) => json(
                StatusCode::OK,
                &json!({"name": key, "value": value, "links": links(path)}),
            ),
            None => not_found(&target.app, key),
        }
    }
}

fn links(path: &str) -> Value {
    json!([{"rel": "self", "href": path}])
}

fn not_found(app: &AppName, key: &str) -> Response<Body> {
    error(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!("app `{app}` has no key `{key}` there"),
    )
}

/// The value a PUT body gives: `{"name": key, "value": "…"}` (`name`, when
/// given, must be the key the path names).
fn put_value(body: &[u8], key: &str) -> Result<String, String> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| format!("the body must be JSON {{\"name\",\"value\"}}: {e}"))?;
    let obj = v
        .as_object()
        .ok_or("the body must be a JSON object {\"name\",\"value\"}")?;
    let field = |name: &str| {
        obj.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    };
    if let Some(name) = field("name") {
        if name.as_str() != Some(key) {
            return Err(format!(
                "the body's `name` ({name}) is not the key the path names (`{key}`)"
            ));
        }
    }
    match field("value") {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(format!("`value` must be a string, not {other}")),
        None => Err("the body has no `value` (POST makes a new value)".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_put_body_names_its_value() {
        assert_eq!(
            put_value(br#"{"name":"ci","value":"abcdefghijklmnop"}"#, "ci").unwrap(),
            "abcdefghijklmnop"
        );
        assert_eq!(
            put_value(br#"{"Value":"abcdefghijklmnop"}"#, "ci").unwrap(),
            "abcdefghijklmnop"
        );
        for (bad, why) in [
            (
                &br#"{"name":"other","value":"abcdefghijklmnop"}"#[..],
                "not the key",
            ),
            (br#"{"name":"ci"}"#, "no `value`"),
            (br#"{"value":5}"#, "must be a string"),
            (b"[]", "JSON object"),
            (b"value=x", "must be JSON"),
        ] {
            let e = put_value(bad, "ci").unwrap_err();
            assert!(e.contains(why), "{e}");
        }
    }

    #[test]
    fn the_master_key_is_a_host_key_by_name() {
        let t = |scope| KeysTarget {
            app: AppName::parse("web").unwrap(),
            scope,
            key: None,
            master: true,
        };
        assert_eq!(scope_of(&t(KeysScope::Host), "_master"), KeyScope::Master);
        assert_eq!(scope_of(&t(KeysScope::Host), "ci"), KeyScope::Host);
        assert_eq!(scope_of(&t(KeysScope::System), "_master"), KeyScope::System);
        assert_eq!(
            scope_of(&t(KeysScope::Function("f".into())), "ci"),
            KeyScope::Function("f".into())
        );
    }
}
