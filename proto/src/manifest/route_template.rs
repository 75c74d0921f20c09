//! ASP.NET Core route templates as Azure Functions uses them in `httpTrigger.route`:
//! `items/{id:int}`, `files/{*path}`, `{name?}`, `{page=1}`.
//!
//! Parsed once at deploy; [`RouteTemplate::matches`] is the pure matching step the gateway
//! runs per request and [`RouteTemplate::overlaps`] is the deploy-time ambiguity check.
//! Complex segments (`{name}.{ext}`, `file-{id}`) are refused rather than half-supported.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A parsed route template: one entry per `/`-separated segment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteTemplate {
    pub segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Segment {
    /// Matched case-insensitively.
    Literal(String),
    Param(RouteParam),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteParam {
    pub name: String,
    pub constraints: Vec<Constraint>,
    pub optional: bool,
    pub default: Option<String>,
    /// `{*rest}` / `{**rest}`: takes the remaining segments joined with `/`.
    pub catch_all: bool,
}

/// Inline route constraints (ASP.NET Core names, case-insensitive in templates).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Constraint {
    Int,
    Long,
    Bool,
    DateTime,
    Decimal,
    Double,
    Float,
    Guid,
    Alpha,
    MinLength(u32),
    MaxLength(u32),
    /// `length(n)` is `Length(n, n)`.
    Length(u32, u32),
    Min(i64),
    Max(i64),
    Range(i64, i64),
    /// The pattern as written; matched case-insensitively and unanchored, like ASP.NET.
    Regex(String),
    Required,
}

const CONSTRAINT_NAMES: &str = "int, long, bool, datetime, decimal, double, float, guid, alpha, \
     minlength(n), maxlength(n), length(n) or length(min,max), min(n), max(n), range(min,max), \
     regex(pattern), required";

impl RouteTemplate {
    /// Parses a template; the error quotes the template and says what is wrong.
    pub fn parse(template: &str) -> Result<RouteTemplate, String> {
        parse_template(template).map_err(|e| format!("route `{template}`: {e}"))
    }

    /// Matches an already split, percent-decoded path (route prefix removed). Returns the
    /// route values, including defaults of absent parameters, in template order.
    pub fn matches(&self, path_segments: &[&str]) -> Option<Vec<(String, String)>> {
        let mut path = path_segments;
        while let Some((last, rest)) = path.split_last() {
            if !last.is_empty() {
                break;
            }
            path = rest;
        }
        let mut values = Vec::new();
        for (i, segment) in self.segments.iter().enumerate() {
            match segment {
                Segment::Literal(lit) => {
                    let actual = path.get(i)?;
                    if !eq_ignore_case(lit, actual) {
                        return None;
                    }
                }
                Segment::Param(p) if p.catch_all => {
                    let rest = path.get(i..).unwrap_or_default().join("/");
                    if rest.is_empty() {
                        if let Some(d) = &p.default {
                            values.push((p.name.clone(), d.clone()));
                        }
                    } else {
                        if !p.accepts(&rest) {
                            return None;
                        }
                        values.push((p.name.clone(), rest));
                    }
                    return Some(values);
                }
                Segment::Param(p) => match path.get(i) {
                    Some(actual) => {
                        if !p.accepts(actual) {
                            return None;
                        }
                        values.push((p.name.clone(), (*actual).to_string()));
                    }
                    None => {
                        if !self.omittable_from(i) {
                            return None;
                        }
                        if let Some(d) = &p.default {
                            values.push((p.name.clone(), d.clone()));
                        }
                    }
                },
            }
        }
        (path.len() <= self.segments.len()).then_some(values)
    }

    /// Whether two routes are ambiguous: some variant of each (optional, defaulted and
    /// catch-all trailing parameters present or absent) has the same shape — same
    /// literals (case-insensitive) and parameters with the same constraints at the same
    /// positions. A literal against a parameter is not ambiguous: precedence decides.
    pub fn overlaps(&self, other: &RouteTemplate) -> bool {
        let mine = self.shapes();
        other.shapes().iter().any(|s| mine.contains(s))
    }

    /// True when every segment from `i` on may be absent from a matching path.
    fn omittable_from(&self, i: usize) -> bool {
        self.segments[i..].iter().all(|s| match s {
            Segment::Literal(_) => false,
            Segment::Param(p) => p.optional || p.default.is_some() || p.catch_all,
        })
    }

    /// Every shape a path matching this template can have (optional trailing
    /// parameters present or not): two templates overlap when they share one.
    pub(crate) fn shapes(&self) -> Vec<Vec<Shape>> {
        let full: Vec<Shape> = self
            .segments
            .iter()
            .map(|s| match s {
                Segment::Literal(l) => Shape::Literal(l.to_lowercase()),
                Segment::Param(p) => {
                    let mut cs: Vec<String> = p.constraints.iter().map(|c| c.to_string()).collect();
                    cs.sort();
                    cs.dedup();
                    Shape::Param {
                        constraints: cs,
                        catch_all: p.catch_all,
                    }
                }
            })
            .collect();
        (0..=full.len())
            .filter(|&k| k == full.len() || self.omittable_from(k))
            .map(|k| full[..k].to_vec())
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Shape {
    Literal(String),
    Param {
        constraints: Vec<String>,
        catch_all: bool,
    },
}

fn eq_ignore_case(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b) || a.to_lowercase() == b.to_lowercase()
}

impl RouteParam {
    fn accepts(&self, value: &str) -> bool {
        self.constraints.iter().all(|c| c.accepts(value))
    }
}

impl Constraint {
    /// Whether a route value satisfies the constraint (invariant culture, like ASP.NET).
    pub fn accepts(&self, v: &str) -> bool {
        let chars = || v.chars().count() as u64;
        match self {
            Constraint::Int => v.parse::<i32>().is_ok(),
            Constraint::Long => v.parse::<i64>().is_ok(),
            Constraint::Bool => v.eq_ignore_ascii_case("true") || v.eq_ignore_ascii_case("false"),
            Constraint::DateTime => is_datetime(v),
            Constraint::Decimal => is_decimal(v),
            Constraint::Double | Constraint::Float => {
                v.parse::<f64>().is_ok_and(f64::is_finite)
                    && v.bytes()
                        .all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b))
            }
            Constraint::Guid => uuid::Uuid::parse_str(v).is_ok(),
            Constraint::Alpha => !v.is_empty() && v.bytes().all(|b| b.is_ascii_alphabetic()),
            Constraint::MinLength(n) => chars() >= u64::from(*n),
            Constraint::MaxLength(n) => chars() <= u64::from(*n),
            Constraint::Length(a, b) => (u64::from(*a)..=u64::from(*b)).contains(&chars()),
            Constraint::Min(n) => v.parse::<i64>().is_ok_and(|x| x >= *n),
            Constraint::Max(n) => v.parse::<i64>().is_ok_and(|x| x <= *n),
            Constraint::Range(a, b) => v.parse::<i64>().is_ok_and(|x| (*a..=*b).contains(&x)),
            Constraint::Regex(p) => compile_regex(p).is_ok_and(|re| re.is_match(v)),
            Constraint::Required => !v.is_empty(),
        }
    }
}

fn compile_regex(pattern: &str) -> Result<regex::Regex, regex::Error> {
    regex::RegexBuilder::new(pattern)
        .case_insensitive(true)
        .size_limit(1 << 20)
        .build()
}

fn is_decimal(v: &str) -> bool {
    let digits = v.strip_prefix(['+', '-']).unwrap_or(v);
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    !(int.is_empty() && frac.is_empty())
        && int.bytes().all(|b| b.is_ascii_digit())
        && frac.bytes().all(|b| b.is_ascii_digit())
}

/// `yyyy-MM-dd`, optionally followed by `T` or a space and `HH:mm[:ss[.fff]]`, optionally `Z`.
fn is_datetime(v: &str) -> bool {
    let (date, time) = match v.find(['T', 't', ' ']) {
        Some(i) => (&v[..i], Some(&v[i + 1..])),
        None => (v, None),
    };
    let d: Vec<&str> = date.split('-').collect();
    let valid_date = matches!(d.as_slice(), [y, m, day]
        if y.len() == 4 && y.parse::<u32>().is_ok()
        && m.parse::<u32>().is_ok_and(|m| (1..=12).contains(&m))
        && day.parse::<u32>().is_ok_and(|x| (1..=31).contains(&x)));
    let valid_time = match time {
        None => true,
        Some(t) => {
            let t = t.strip_suffix(['Z', 'z']).unwrap_or(t);
            let parts: Vec<&str> = t.split(':').collect();
            let num = |s: &str, max: u32| s.len() == 2 && s.parse::<u32>().is_ok_and(|x| x <= max);
            match parts.as_slice() {
                [h, m] => num(h, 23) && num(m, 59),
                [h, m, s] => {
                    let sec = s.split_once('.').map_or(*s, |(a, _)| a);
                    num(h, 23) && num(m, 59) && num(sec, 59)
                }
                _ => false,
            }
        }
    };
    valid_date && valid_time
}

fn parse_template(template: &str) -> Result<RouteTemplate, String> {
    let mut body = template.strip_prefix("~/").unwrap_or(template);
    body = body.strip_prefix('/').unwrap_or(body);
    if body.starts_with('/') {
        return Err("empty segment (`//`) is not allowed".into());
    }
    body = body.strip_suffix('/').unwrap_or(body);
    let mut segments = Vec::new();
    if body.is_empty() {
        return Ok(RouteTemplate { segments });
    }
    for raw in split_segments(body)? {
        if raw.is_empty() {
            return Err("empty segment (`//`) is not allowed".into());
        }
        if raw == "." || raw == ".." {
            // Clients and proxies resolve these away: such a route is unreachable.
            return Err(format!(
                "a `{raw}` segment can never be reached (clients resolve dot segments away)"
            ));
        }
        segments.push(parse_segment(&raw)?);
    }
    check_template(&segments)?;
    Ok(RouteTemplate { segments })
}

/// Splits on `/` outside braces, so regex constraints may contain `/`.
fn split_segments(body: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut chars = body.chars().peekable();
    let mut in_param = false;
    while let Some(c) = chars.next() {
        match c {
            '{' if !in_param => {
                if chars.peek() == Some(&'{') {
                    return Err("escaped braces (`{{`) in literals are not supported".into());
                }
                in_param = true;
                current.push(c);
            }
            '{' | '}' if in_param && chars.peek() == Some(&c) => {
                current.push(c);
                current.push(c);
                chars.next();
            }
            '{' => return Err(format!("`{{` inside parameter `{current}` is not allowed")),
            '}' if in_param => {
                in_param = false;
                current.push(c);
            }
            '}' => return Err("`}` without a matching `{`".into()),
            '/' if !in_param => out.push(std::mem::take(&mut current)),
            c => current.push(c),
        }
    }
    if in_param {
        let start = current.rfind('{').unwrap_or(0);
        return Err(format!("`{}` is not closed", &current[start..]));
    }
    out.push(current);
    Ok(out)
}

fn parse_segment(raw: &str) -> Result<Segment, String> {
    if !raw.contains('{') {
        if raw.contains('?') {
            return Err(format!("literal segment `{raw}` must not contain `?`"));
        }
        return Ok(Segment::Literal(raw.to_string()));
    }
    if !(raw.starts_with('{') && raw.ends_with('}')) || param_count(raw) > 1 {
        return Err(format!(
            "segment `{raw}` mixes literal text and parameters; complex segments are not supported"
        ));
    }
    let inner = unescape_braces(&raw[1..raw.len() - 1]);
    parse_param(&inner).map(Segment::Param)
}

/// Number of top-level `{…}` groups (escaped `{{`/`}}` inside do not count).
fn param_count(raw: &str) -> usize {
    let bytes = raw.as_bytes();
    let (mut count, mut depth, mut i) = (0, 0, 0);
    while i < bytes.len() {
        match bytes[i] {
            b'{' | b'}' if depth == 1 && bytes.get(i + 1) == Some(&bytes[i]) => i += 1,
            b'{' => {
                depth += 1;
                count += 1;
            }
            b'}' => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    count
}

fn unescape_braces(s: &str) -> String {
    s.replace("{{", "{").replace("}}", "}")
}

fn parse_param(inner: &str) -> Result<RouteParam, String> {
    let display = format!("{{{inner}}}");
    let (catch_all, rest) = match inner.strip_prefix("**").or_else(|| inner.strip_prefix('*')) {
        Some(r) => (true, r),
        None => (false, inner),
    };
    let name_end = rest.find([':', '=', '?']).unwrap_or(rest.len());
    let name = &rest[..name_end];
    if name.is_empty() {
        return Err(format!("parameter `{display}` has no name"));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| "/{}=?*:".contains(*c) || c.is_whitespace())
    {
        return Err(format!("parameter name `{name}` must not contain `{bad}`"));
    }
    let mut rest = &rest[name_end..];
    let mut constraints = Vec::new();
    while let Some(after) = rest.strip_prefix(':') {
        let (constraint, remaining) = parse_constraint(after, &display)?;
        constraints.push(constraint);
        rest = remaining;
    }
    let (optional, default) = if rest.is_empty() {
        (false, None)
    } else if rest == "?" {
        (true, None)
    } else if let Some(d) = rest.strip_prefix('=') {
        if d.ends_with('?') {
            return Err(format!(
                "parameter `{display}` cannot be both optional and have a default value"
            ));
        }
        (false, Some(d.to_string()))
    } else {
        return Err(format!("unexpected `{rest}` in parameter `{display}`"));
    };
    if catch_all && optional {
        return Err(format!(
            "catch-all parameter `{display}` cannot be marked optional (it already matches nothing)"
        ));
    }
    Ok(RouteParam {
        name: name.to_string(),
        constraints,
        optional,
        default,
        catch_all,
    })
}

/// Parses `name` or `name(args)` at the start of `s`; returns the rest after it.
fn parse_constraint<'a>(s: &'a str, display: &str) -> Result<(Constraint, &'a str), String> {
    let name_end = s
        .find(|c: char| !c.is_ascii_alphanumeric())
        .unwrap_or(s.len());
    let name = &s[..name_end];
    if name.is_empty() {
        return Err(format!("empty constraint in parameter `{display}`"));
    }
    let mut rest = &s[name_end..];
    let mut arg = None;
    if let Some(after) = rest.strip_prefix('(') {
        // Like ASP.NET: the argument ends at a `)` followed by `:`, `=`, a final `?` or the end.
        let bytes = after.as_bytes();
        let end = (0..bytes.len()).find(|&j| {
            bytes[j] == b')'
                && match bytes.get(j + 1) {
                    None | Some(b':') | Some(b'=') => true,
                    Some(b'?') => j + 2 == bytes.len(),
                    _ => false,
                }
        });
        let Some(end) = end else {
            return Err(format!(
                "constraint `{name}(` in parameter `{display}` is not closed"
            ));
        };
        arg = Some(&after[..end]);
        rest = &after[end + 1..];
    }
    let lname = name.to_ascii_lowercase();
    let c = constraint_from(&lname, arg)
        .map_err(|e| format!("constraint `{name}` in parameter `{display}`: {e}"))?;
    Ok((c, rest))
}

fn constraint_from(name: &str, arg: Option<&str>) -> Result<Constraint, String> {
    let simple = |c: Constraint| match arg {
        None => Ok(c),
        Some(_) => Err("takes no argument".to_string()),
    };
    let arg_req = || arg.ok_or_else(|| "needs an argument, e.g. `(5)`".to_string());
    let u = |s: &str| {
        s.trim()
            .parse::<u32>()
            .map_err(|_| format!("`{s}` is not a non-negative integer"))
    };
    let i = |s: &str| {
        s.trim()
            .parse::<i64>()
            .map_err(|_| format!("`{s}` is not an integer"))
    };
    match name {
        "int" => simple(Constraint::Int),
        "long" => simple(Constraint::Long),
        "bool" => simple(Constraint::Bool),
        "datetime" => simple(Constraint::DateTime),
        "decimal" => simple(Constraint::Decimal),
        "double" => simple(Constraint::Double),
        "float" => simple(Constraint::Float),
        "guid" => simple(Constraint::Guid),
        "alpha" => simple(Constraint::Alpha),
        "required" => simple(Constraint::Required),
        "minlength" => Ok(Constraint::MinLength(u(arg_req()?)?)),
        "maxlength" => Ok(Constraint::MaxLength(u(arg_req()?)?)),
        "length" => {
            let a = arg_req()?;
            match a.split_once(',') {
                None => {
                    let n = u(a)?;
                    Ok(Constraint::Length(n, n))
                }
                Some((lo, hi)) => {
                    let (lo, hi) = (u(lo)?, u(hi)?);
                    if lo > hi {
                        return Err(format!("minimum {lo} is greater than maximum {hi}"));
                    }
                    Ok(Constraint::Length(lo, hi))
                }
            }
        }
        "min" => Ok(Constraint::Min(i(arg_req()?)?)),
        "max" => Ok(Constraint::Max(i(arg_req()?)?)),
        "range" => {
            let a = arg_req()?;
            let (lo, hi) = a
                .split_once(',')
                .ok_or_else(|| format!("`{a}` is not two comma-separated numbers"))?;
            let (lo, hi) = (i(lo)?, i(hi)?);
            if lo > hi {
                return Err(format!("minimum {lo} is greater than maximum {hi}"));
            }
            Ok(Constraint::Range(lo, hi))
        }
        "regex" => {
            let p = arg_req()?;
            compile_regex(p).map_err(|e| format!("invalid regex `{p}`: {e}"))?;
            Ok(Constraint::Regex(p.to_string()))
        }
        other => Err(format!(
            "unknown constraint `{other}`; known: {CONSTRAINT_NAMES}"
        )),
    }
}

fn check_template(segments: &[Segment]) -> Result<(), String> {
    let mut seen: Vec<String> = Vec::new();
    let template = RouteTemplate {
        segments: segments.to_vec(),
    };
    for (i, s) in segments.iter().enumerate() {
        let Segment::Param(p) = s else { continue };
        let lower = p.name.to_lowercase();
        if seen.contains(&lower) {
            return Err(format!(
                "parameter name `{}` is used more than once",
                p.name
            ));
        }
        seen.push(lower);
        if p.catch_all && i + 1 != segments.len() {
            return Err(format!(
                "catch-all parameter `{{*{}}}` must be the last segment",
                p.name
            ));
        }
        if p.optional && !template.omittable_from(i) {
            return Err(format!(
                "optional parameter `{{{}?}}` must be at the end of the template",
                p.name
            ));
        }
    }
    Ok(())
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Constraint::Int => f.write_str("int"),
            Constraint::Long => f.write_str("long"),
            Constraint::Bool => f.write_str("bool"),
            Constraint::DateTime => f.write_str("datetime"),
            Constraint::Decimal => f.write_str("decimal"),
            Constraint::Double => f.write_str("double"),
            Constraint::Float => f.write_str("float"),
            Constraint::Guid => f.write_str("guid"),
            Constraint::Alpha => f.write_str("alpha"),
            Constraint::Required => f.write_str("required"),
            Constraint::MinLength(n) => write!(f, "minlength({n})"),
            Constraint::MaxLength(n) => write!(f, "maxlength({n})"),
            Constraint::Length(a, b) if a == b => write!(f, "length({a})"),
            Constraint::Length(a, b) => write!(f, "length({a},{b})"),
            Constraint::Min(n) => write!(f, "min({n})"),
            Constraint::Max(n) => write!(f, "max({n})"),
            Constraint::Range(a, b) => write!(f, "range({a},{b})"),
            Constraint::Regex(p) => write!(f, "regex({})", p.replace('{', "{{").replace('}', "}}")),
        }
    }
}

impl fmt::Display for RouteParam {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        if self.catch_all {
            f.write_str("*")?;
        }
        f.write_str(&self.name)?;
        for c in &self.constraints {
            write!(f, ":{c}")?;
        }
        if self.optional {
            f.write_str("?")?;
        }
        if let Some(d) = &self.default {
            write!(f, "={}", d.replace('{', "{{").replace('}', "}}"))?;
        }
        f.write_str("}")
    }
}

impl fmt::Display for RouteTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.segments.iter().enumerate() {
            if i > 0 {
                f.write_str("/")?;
            }
            match s {
                Segment::Literal(l) => f.write_str(l)?,
                Segment::Param(p) => write!(f, "{p}")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> RouteTemplate {
        RouteTemplate::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    fn m(template: &str, path: &str) -> Option<Vec<(String, String)>> {
        let segs: Vec<&str> = if path.is_empty() {
            vec![]
        } else {
            path.split('/').collect()
        };
        t(template).matches(&segs)
    }

    fn kv(pairs: &[(&str, &str)]) -> Option<Vec<(String, String)>> {
        Some(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn parses_and_displays_canonical_text() {
        for (input, canonical) in [
            ("/items/{id}", "items/{id}"),
            ("items/{id:int:min(1)}", "items/{id:int:min(1)}"),
            ("items/{id:INT}", "items/{id:int}"),
            ("{name?}", "{name?}"),
            ("page/{n=5}", "page/{n=5}"),
            ("files/{**rest}", "files/{*rest}"),
            (
                "a/{x:length(3)}/{y:length(1,4)}",
                "a/{x:length(3)}/{y:length(1,4)}",
            ),
            ("a/{x:regex(^\\d{{3}}$)}", "a/{x:regex(^\\d{{3}}$)}"),
            ("a/{x:regex(^a/b$)}", "a/{x:regex(^a/b$)}"),
            ("", ""),
        ] {
            assert_eq!(t(input).to_string(), canonical, "{input}");
        }
        let p = &t("a/{x:regex(^\\d{{3}}$)}").segments[1];
        assert!(
            matches!(p, Segment::Param(p) if p.constraints == vec![Constraint::Regex("^\\d{3}$".into())])
        );
    }

    #[test]
    fn refuses_bad_templates_with_precise_messages() {
        for (bad, needle) in [
            ("items/{id:int", "`{id:int` is not closed"),
            ("items/id}", "`}` without a matching `{`"),
            ("a//b", "empty segment"),
            ("{id}/{ID}", "`ID` is used more than once"),
            ("{*rest}/x", "must be the last segment"),
            ("{a?}/b", "must be at the end"),
            ("{a:foo}", "unknown constraint `foo`"),
            ("{a:min(x)}", "`x` is not an integer"),
            ("{a:length(5,2)}", "greater than maximum"),
            ("{a:int(3)}", "takes no argument"),
            ("{a:minlength}", "needs an argument"),
            ("{a:regex(()}", "invalid regex"),
            ("{name}.{ext}", "complex segments are not supported"),
            ("file-{id}", "complex segments are not supported"),
            ("{}", "has no name"),
            ("{*rest?}", "cannot be marked optional"),
            ("{a=1?}", "cannot be both optional"),
        ] {
            let err = RouteTemplate::parse(bad).expect_err(bad);
            assert!(err.contains(&format!("`{bad}`")), "{err}");
            assert!(err.contains(needle), "{bad}: {err}");
        }
    }

    #[test]
    fn matches_with_constraints_defaults_and_catch_all() {
        assert_eq!(m("Items/{id:int}", "items/42"), kv(&[("id", "42")]));
        assert_eq!(m("items/{id:int}", "items/4x"), None);
        assert_eq!(m("items/{id:int}", "items/99999999999"), None);
        assert_eq!(
            m("items/{id:long}", "items/99999999999"),
            kv(&[("id", "99999999999")])
        );
        assert_eq!(m("items/{id?}", "items"), kv(&[]));
        assert_eq!(m("page/{n=5}", "page"), kv(&[("n", "5")]));
        assert_eq!(m("files/{*rest}", "files/a/b/c"), kv(&[("rest", "a/b/c")]));
        assert_eq!(m("files/{*rest}", "files"), kv(&[]));
        assert_eq!(m("x/{c:alpha}", "x/abc"), kv(&[("c", "abc")]));
        assert_eq!(m("x/{c:alpha}", "x/ab1"), None);
        assert!(m("x/{g:guid}", "x/6f9619ff-8b86-d011-b42d-00c04fc964ff").is_some());
        assert_eq!(m("x/{g:guid}", "x/nope"), None);
        assert!(m("x/{n:range(1,10)}", "x/10").is_some());
        assert_eq!(m("x/{n:range(1,10)}", "x/11"), None);
        assert!(m("x/{s:regex(^ab+$)}", "x/ABB").is_some());
        assert!(m("x/{d:datetime}", "x/2024-02-29").is_some());
        assert!(m("x/{b:bool}", "x/TRUE").is_some());
        assert_eq!(m("x/{y}", "x/1/2"), None);
        assert_eq!(m("x/{y}", "x/1/"), kv(&[("y", "1")]));
        assert_eq!(m("x/{y}", "x"), None);
        assert_eq!(m("", ""), kv(&[]));
    }

    #[test]
    fn overlap_rules() {
        let o = |a: &str, b: &str| t(a).overlaps(&t(b)) && t(b).overlaps(&t(a));
        assert!(o("items/{id}", "items/{key}"));
        assert!(!o("items/{id:int}", "items/{n:alpha}"));
        assert!(o("items/{id?}", "items"));
        assert!(o("Items", "items"));
        assert!(!t("items/new").overlaps(&t("items/{id}")));
        assert!(o("items/{id=1}", "items"));
        assert!(o("files/{*a}", "files/{*b}"));
        assert!(!o("files/{*a}", "files/{b}"));
        assert!(!o("a/{x}", "a/{x}/b"));
    }

    #[test]
    fn dot_segments_are_refused() {
        for route in ["a/../b", "./x", "x/.", ".."] {
            let e = RouteTemplate::parse(route).unwrap_err();
            assert!(e.contains("can never be reached"), "{route}: {e}");
        }
        assert!(RouteTemplate::parse("a/.well-known/b").is_ok());
        assert!(RouteTemplate::parse("v1.2/x").is_ok());
    }
}
