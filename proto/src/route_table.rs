//! The HTTP route table: which function of which app a request path and method
//! reach. A pure structure built from app manifests, read on the gateway's hot path.
//!
//! Precedence follows ASP.NET Core routing: segment by segment, a literal beats a
//! constrained parameter, which beats a plain parameter, which beats an optional
//! one, which beats a catch-all. A path that matches some route but not with this
//! method is "method not allowed" (405), not "not found".
//!
//! Every app has its own address (`{app}.<domain>`), where its routes are all it
//! serves. The shared address (an IP, `localhost`) serves the routes of all apps,
//! but a route only while one app claims it: two apps whose routes are ambiguous
//! with each other ([`functions_overlap`]) are reached at their own addresses only.

use std::cmp::Ordering;

use crate::ids::AppName;
use crate::manifest::{AppManifest, FunctionManifest, RouteTemplate, Segment, Trigger};

#[derive(Debug, Clone)]
pub struct RouteEntry {
    pub app: AppName,
    pub function: String,
    /// The full path template, route prefix included.
    pub template: RouteTemplate,
    /// Upper-case; empty = every method.
    pub methods: Vec<String>,
    rank: Vec<u8>,
    /// Shared address only: another app has an overlapping route, so neither is
    /// served here (each app's own address still serves its own).
    contested: bool,
}

#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    /// In precedence order, contested routes included: a request that a contested
    /// route would take is not served by a lower-precedence route of a third app.
    entries: Vec<RouteEntry>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum RouteMatch<'a> {
    Found {
        app: &'a AppName,
        function: &'a str,
        params: Vec<(String, String)>,
    },
    MethodNotAllowed {
        allowed: Vec<String>,
    },
    /// On the shared address: the route belongs to several apps, each reached at
    /// its own address.
    Contested {
        apps: Vec<AppName>,
    },
    NotFound,
}

/// Two apps' HTTP functions claim the same requests: their methods meet and their
/// full paths (route prefix included) are ambiguous with each other.
pub fn functions_overlap(
    am: &AppManifest,
    a: &FunctionManifest,
    bm: &AppManifest,
    b: &FunctionManifest,
) -> bool {
    let (Trigger::Http(ha), Trigger::Http(hb)) = (&a.trigger, &b.trigger) else {
        return false;
    };
    let methods_meet = ha.methods.is_empty()
        || hb.methods.is_empty()
        || ha.methods.iter().any(|m| hb.methods.contains(m));
    if !methods_meet {
        return false;
    }
    // The full paths (prefix + route), so `api/x` and `v2/x` don't clash.
    let parse = |m: &AppManifest, h: &crate::manifest::HttpTrigger| {
        RouteTemplate::parse(&h.url_path(&m.host.route_prefix))
    };
    match (parse(am, ha), parse(bm, hb)) {
        (Ok(x), Ok(y)) => x.overlaps(&y),
        _ => false,
    }
}

/// One function of an app whose route another app's function also claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedRoute {
    pub function: String,
    /// The full path template, prefix included.
    pub route: String,
    pub other_app: AppName,
    pub other_function: String,
    pub other_route: String,
}

/// The functions of `app` (with `manifest`) that share a route with a function of
/// one of `others` (an app's own entry among `others` is skipped).
pub fn shared_routes<'a>(
    app: &AppName,
    manifest: &AppManifest,
    others: impl IntoIterator<Item = (&'a AppName, &'a AppManifest)>,
) -> Vec<SharedRoute> {
    let full = |m: &AppManifest, f: &FunctionManifest| match &f.trigger {
        Trigger::Http(h) => h.url_path(&m.host.route_prefix),
        _ => String::new(),
    };
    let mut out = Vec::new();
    for (other_app, other) in others {
        if other_app == app {
            continue;
        }
        for f in &manifest.functions {
            for g in &other.functions {
                if functions_overlap(manifest, f, other, g) {
                    out.push(SharedRoute {
                        function: f.name.clone(),
                        route: full(manifest, f),
                        other_app: other_app.clone(),
                        other_function: g.name.clone(),
                        other_route: full(other, g),
                    });
                }
            }
        }
    }
    out
}

fn rank(t: &RouteTemplate) -> Vec<u8> {
    t.segments
        .iter()
        .map(|s| match s {
            Segment::Literal(_) => 0,
            Segment::Param(p) if p.catch_all => 4,
            Segment::Param(p) if p.optional || p.default.is_some() => 3,
            Segment::Param(p) if !p.constraints.is_empty() => 1,
            Segment::Param(_) => 2,
        })
        .collect()
}

impl RouteTable {
    /// Build from `(app, manifest)` pairs: every HTTP-triggered function.
    pub fn build<'a>(apps: impl IntoIterator<Item = (&'a AppName, &'a AppManifest)>) -> Self {
        Self::build_with(apps, false)
    }

    /// The shared address's table: every HTTP-triggered function of these apps,
    /// except those whose route another app also claims ([`RouteMatch::Contested`]).
    pub fn build_shared<'a>(
        apps: impl IntoIterator<Item = (&'a AppName, &'a AppManifest)>,
    ) -> Self {
        Self::build_with(apps, true)
    }

    fn build_with<'a>(
        apps: impl IntoIterator<Item = (&'a AppName, &'a AppManifest)>,
        shared: bool,
    ) -> Self {
        let mut entries = Vec::new();
        for (app, manifest) in apps {
            for f in &manifest.functions {
                let Trigger::Http(h) = &f.trigger else {
                    continue;
                };
                // Validated at deploy; a template that no longer parses is skipped.
                let Ok(template) = RouteTemplate::parse(&h.url_path(&manifest.host.route_prefix))
                else {
                    continue;
                };
                entries.push(RouteEntry {
                    app: app.clone(),
                    function: f.name.clone(),
                    rank: rank(&template),
                    template,
                    methods: h.methods.clone(),
                    contested: false,
                });
            }
        }
        if shared {
            mark_contested(&mut entries);
        }
        entries.sort_by(|a, b| match a.rank.cmp(&b.rank) {
            Ordering::Equal => b.template.segments.len().cmp(&a.template.segments.len()),
            other => other,
        });
        RouteTable { entries }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Match a request. `path` is the URL path (percent-encoded, leading `/`).
    pub fn lookup(&self, method: &str, path: &str) -> RouteMatch<'_> {
        let decoded = split_path(path);
        let segments: Vec<&str> = decoded.iter().map(|s| s.as_ref()).collect();
        let takes = |e: &RouteEntry| {
            e.methods.is_empty() || e.methods.iter().any(|m| m.eq_ignore_ascii_case(method))
        };
        let mut allowed: Vec<String> = Vec::new();
        let mut path_matched = false;
        for e in &self.entries {
            let Some(params) = e.template.matches(&segments) else {
                continue;
            };
            if takes(e) {
                if e.contested {
                    // Every app whose contested route has this path.
                    let mut apps: Vec<AppName> = self
                        .entries
                        .iter()
                        .filter(|c| c.contested && c.template.matches(&segments).is_some())
                        .map(|c| c.app.clone())
                        .collect();
                    apps.sort();
                    apps.dedup();
                    return RouteMatch::Contested { apps };
                }
                return RouteMatch::Found {
                    app: &e.app,
                    function: &e.function,
                    params,
                };
            }
            path_matched = true;
            for m in &e.methods {
                if !allowed.contains(m) {
                    allowed.push(m.clone());
                }
            }
        }
        if path_matched {
            RouteMatch::MethodNotAllowed { allowed }
        } else {
            RouteMatch::NotFound
        }
    }
}

/// Mark the entries whose route overlaps a route of another app with a method in
/// common. Routes are grouped by shape once, so this grows with the routes and
/// the overlaps, not with every pair of routes.
fn mark_contested(entries: &mut [RouteEntry]) {
    use std::collections::HashMap;
    let mut by_shape: HashMap<Vec<crate::manifest::route_template::Shape>, Vec<usize>> =
        HashMap::new();
    for (i, e) in entries.iter().enumerate() {
        for shape in e.template.shapes() {
            by_shape.entry(shape).or_default().push(i);
        }
    }
    let meet = |a: &RouteEntry, b: &RouteEntry| {
        a.methods.is_empty()
            || b.methods.is_empty()
            || a.methods.iter().any(|m| b.methods.contains(m))
    };
    let mut contested = vec![false; entries.len()];
    for group in by_shape.values().filter(|g| g.len() > 1) {
        for (k, &i) in group.iter().enumerate() {
            for &j in &group[k + 1..] {
                if entries[i].app != entries[j].app && meet(&entries[i], &entries[j]) {
                    contested[i] = true;
                    contested[j] = true;
                }
            }
        }
    }
    for (e, c) in entries.iter_mut().zip(contested) {
        e.contested = c;
    }
}

/// Split a URL path into percent-decoded segments; a trailing `/` is ignored.
pub fn split_path(path: &str) -> Vec<std::borrow::Cow<'_, str>> {
    let trimmed = path.trim_start_matches('/');
    let trimmed = trimmed.strip_suffix('/').unwrap_or(trimmed);
    if trimmed.is_empty() {
        return Vec::new();
    }
    trimmed.split('/').map(percent_decode).collect()
}

/// A path segment percent-decoded (`+` stays `+`; invalid UTF-8 replaced);
/// borrowed when it holds no `%` (most do: no allocation per segment of every
/// request).
pub fn percent_decode(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.contains('%') {
        return std::borrow::Cow::Borrowed(s);
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    std::borrow::Cow::Owned(match String::from_utf8(out) {
        Ok(text) => text,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{pack_dir, validate_app, AppPackage, ZipLimits};
    use std::collections::BTreeMap;

    fn app(prefix: &str, functions: &[(&str, &str, &str)]) -> AppManifest {
        let dir = tempfile::tempdir().unwrap();
        // The handler is in the package (a bare command would depend on this
        // machine's PATH: no `sh` on Windows).
        std::fs::write(dir.path().join("sh"), "").unwrap();
        std::fs::write(
            dir.path().join("host.json"),
            format!(
                r#"{{"version":"2.0","customHandler":{{"description":{{"defaultExecutablePath":"sh"}}}},"extensions":{{"http":{{"routePrefix":"{prefix}"}}}}}}"#
            ),
        )
        .unwrap();
        for (name, route, methods) in functions {
            std::fs::create_dir(dir.path().join(name)).unwrap();
            std::fs::write(
                dir.path().join(name).join("function.json"),
                format!(
                    r#"{{"bindings":[{{"type":"httpTrigger","direction":"in","name":"req","route":"{route}","methods":[{methods}]}},{{"type":"http","direction":"out","name":"res"}}]}}"#
                ),
            )
            .unwrap();
        }
        let zip = pack_dir(dir.path()).unwrap();
        validate_app(
            &AppPackage::from_zip_bytes(&zip, &ZipLimits::default()).unwrap(),
            &BTreeMap::new(),
        )
        .unwrap()
    }

    fn found<'a>(m: RouteMatch<'a>) -> (&'a str, Vec<(String, String)>) {
        match m {
            RouteMatch::Found {
                function, params, ..
            } => (function, params),
            other => panic!("expected a match, got {other:?}"),
        }
    }

    #[test]
    fn precedence_constraints_methods_and_prefix() {
        let name = AppName::parse("shop").unwrap();
        let m = app(
            "api",
            &[
                ("by-id", "items/{id:int}", r#""get""#),
                ("by-name", "items/{name}", r#""get""#),
                ("new-item", "items/new", r#""get""#),
                ("rest", "files/{*path}", ""),
                ("create", "items", r#""post""#),
            ],
        );
        let t = RouteTable::build([(&name, &m)]);
        assert_eq!(found(t.lookup("GET", "/api/items/new")).0, "new-item");
        let (f, p) = found(t.lookup("get", "/api/items/42"));
        assert_eq!(
            (f, p),
            ("by-id", vec![("id".to_string(), "42".to_string())])
        );
        assert_eq!(found(t.lookup("GET", "/api/items/abc")).0, "by-name");
        let (f, p) = found(t.lookup("DELETE", "/api/files/a/b%20c.txt"));
        assert_eq!(f, "rest");
        assert_eq!(p, vec![("path".to_string(), "a/b c.txt".to_string())]);
        assert_eq!(found(t.lookup("POST", "/api/items/")).0, "create");
        assert_eq!(
            t.lookup("GET", "/api/items"),
            RouteMatch::MethodNotAllowed {
                allowed: vec!["POST".to_string()]
            }
        );
        assert_eq!(t.lookup("GET", "/items/1"), RouteMatch::NotFound);
        assert_eq!(t.lookup("GET", "/api/nothing"), RouteMatch::NotFound);
    }

    #[test]
    fn routes_of_several_apps_form_one_table_and_empty_prefix_works() {
        let a = AppName::parse("aaa").unwrap();
        let b = AppName::parse("bbb").unwrap();
        let ma = app("api", &[("one", "one", "")]);
        let mb = app("", &[("two", "two/{x:alpha}", "")]);
        let t = RouteTable::build([(&a, &ma), (&b, &mb)]);
        match t.lookup("GET", "/two/abc") {
            RouteMatch::Found { app, function, .. } => {
                assert_eq!((app.as_str(), function), ("bbb", "two"))
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(t.lookup("GET", "/two/123"), RouteMatch::NotFound);
        assert!(matches!(
            t.lookup("GET", "/api/one"),
            RouteMatch::Found { .. }
        ));
    }

    #[test]
    fn the_shared_address_serves_a_route_only_while_one_app_claims_it() {
        let a = AppName::parse("aaa").unwrap();
        let b = AppName::parse("bbb").unwrap();
        let ma = app(
            "api",
            &[("HttpTrigger", "HttpTrigger", ""), ("only-a", "a", "")],
        );
        let mb = app("api", &[("HttpTrigger", "httptrigger", r#""get""#)]);
        let shared = RouteTable::build_shared([(&a, &ma), (&b, &mb)]);
        assert_eq!(
            shared.lookup("GET", "/api/HttpTrigger"),
            RouteMatch::Contested {
                apps: vec![a.clone(), b.clone()]
            }
        );
        // Only `aaa` takes POST there, yet the function is one whole: it is
        // reached at its own address only (the answer names both apps of the path).
        assert_eq!(
            shared.lookup("POST", "/api/HttpTrigger"),
            RouteMatch::Contested {
                apps: vec![a.clone(), b.clone()]
            }
        );
        assert!(matches!(
            shared.lookup("GET", "/api/a"),
            RouteMatch::Found {
                function: "only-a",
                ..
            }
        ));
        // Each app's own table serves its own function.
        let own_b = RouteTable::build([(&b, &mb)]);
        assert!(matches!(
            own_b.lookup("GET", "/api/HttpTrigger"),
            RouteMatch::Found {
                function: "HttpTrigger",
                ..
            }
        ));
        // Once `bbb` is gone, the shared address serves `aaa`'s route again.
        let alone = RouteTable::build_shared([(&a, &ma)]);
        assert!(matches!(
            alone.lookup("GET", "/api/HttpTrigger"),
            RouteMatch::Found { .. }
        ));
        // A third app's lower-precedence route does not take what the contested
        // route would (it would move `aaa`'s traffic to another app).
        let c = AppName::parse("ccc").unwrap();
        let mc = app("api", &[("any", "{name}", "")]);
        let three = RouteTable::build_shared([(&a, &ma), (&b, &mb), (&c, &mc)]);
        assert!(matches!(
            three.lookup("GET", "/api/HttpTrigger"),
            RouteMatch::Contested { .. }
        ));
        assert!(matches!(
            three.lookup("GET", "/api/other"),
            RouteMatch::Found {
                function: "any",
                ..
            }
        ));
        let shared_of_a = shared_routes(&a, &ma, [(&a, &ma), (&b, &mb)]);
        assert_eq!(shared_of_a.len(), 1);
        assert_eq!(
            (
                shared_of_a[0].function.as_str(),
                shared_of_a[0].other_app.as_str()
            ),
            ("HttpTrigger", "bbb")
        );
        assert_eq!(shared_of_a[0].route, "/api/HttpTrigger");
    }
}
