//! The app settings that choose and shape an app's instance runtime, parsed once.
//!
//! Checked when a setting is committed (the admin API refuses a bad value) and again
//! where an instance starts (a worker default may fill what the app leaves unset).
//!
//! | setting | value |
//! |---|---|
//! | `STROM_RUNTIME` | `process` or `docker` |
//! | `STROM_CONTAINER_IMAGE` | an image reference (`name[:tag]`, `name@sha256:…`) |
//! | `STROM_MEMORY_MB` | MiB per instance (also what the scheduler reserves); `0` = no limit |
//! | `STROM_CONTAINER_CPUS` | CPUs per instance, a decimal (`0.5`, `2`) |
//! | `STROM_CONTAINER_PIDS` | most processes and threads in the container (≥ 1) |
//! | `STROM_CONTAINER_USER` | `user[:group]` (names or ids) the handler runs as |

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

pub const RUNTIME: &str = "STROM_RUNTIME";
pub const IMAGE: &str = "STROM_CONTAINER_IMAGE";
pub const MEMORY_MB: &str = "STROM_MEMORY_MB";
pub const CPUS: &str = "STROM_CONTAINER_CPUS";
pub const PIDS: &str = "STROM_CONTAINER_PIDS";
pub const USER: &str = "STROM_CONTAINER_USER";

/// Every setting this module reads.
pub const ALL: [&str; 6] = [RUNTIME, IMAGE, MEMORY_MB, CPUS, PIDS, USER];

/// Which runtime runs an app's instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeKind {
    #[default]
    Process,
    Docker,
}

impl fmt::Display for RuntimeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RuntimeKind::Process => "process",
            RuntimeKind::Docker => "docker",
        })
    }
}

impl FromStr for RuntimeKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "process" => Ok(RuntimeKind::Process),
            "docker" => Ok(RuntimeKind::Docker),
            _ => Err(format!("`{s}` is not a runtime (process, docker)")),
        }
    }
}

/// The runtime settings of one app; `None` = not set (a worker default applies).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuntimeSettings {
    pub runtime: Option<RuntimeKind>,
    pub image: Option<String>,
    /// `Some(0)` = explicitly unlimited.
    pub memory_mb: Option<u64>,
    pub nano_cpus: Option<i64>,
    pub pids: Option<i64>,
    pub user: Option<String>,
}

impl RuntimeSettings {
    /// Parse the runtime settings among `settings`; every problem, named by setting.
    pub fn parse(settings: &BTreeMap<String, String>) -> Result<RuntimeSettings, String> {
        let mut out = RuntimeSettings::default();
        let mut problems = Vec::new();
        for key in ALL {
            let Some(raw) = settings.get(key) else {
                continue;
            };
            let value = raw.trim();
            if value.is_empty() {
                continue;
            }
            let result = match key {
                RUNTIME => value.parse().map(|k| out.runtime = Some(k)),
                IMAGE => parse_image(value).map(|i| out.image = Some(i)),
                MEMORY_MB => parse_memory_mb(value).map(|m| out.memory_mb = Some(m)),
                CPUS => parse_cpus(value).map(|c| out.nano_cpus = Some(c)),
                PIDS => parse_pids(value).map(|p| out.pids = Some(p)),
                USER => parse_user(value).map(|u| out.user = Some(u)),
                _ => Ok(()),
            };
            if let Err(e) = result {
                problems.push(format!("{key}: {e}"));
            }
        }
        if problems.is_empty() {
            Ok(out)
        } else {
            Err(problems.join("; "))
        }
    }

    /// Check one setting on its own (before it is committed).
    pub fn check(key: &str, value: &str) -> Result<(), String> {
        if !ALL.contains(&key) {
            return Ok(());
        }
        RuntimeSettings::parse(&BTreeMap::from([(key.to_string(), value.to_string())])).map(|_| ())
    }

    /// What the app leaves unset, taken from `defaults`.
    pub fn or(self, defaults: &RuntimeSettings) -> RuntimeSettings {
        RuntimeSettings {
            runtime: self.runtime.or(defaults.runtime),
            image: self.image.or_else(|| defaults.image.clone()),
            memory_mb: self.memory_mb.or(defaults.memory_mb),
            nano_cpus: self.nano_cpus.or(defaults.nano_cpus),
            pids: self.pids.or(defaults.pids),
            user: self.user.or_else(|| defaults.user.clone()),
        }
    }
}

/// An image reference as Docker accepts it: `[host[:port]/]path[:tag][@digest]`,
/// checked for the characters and shape, not against a registry.
pub fn parse_image(value: &str) -> Result<String, String> {
    let bad = |why: &str| Err(format!("`{value}` is not an image reference: {why}"));
    if value.len() > 512 {
        return bad("longer than 512 characters");
    }
    if let Some(c) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "._-/:@".contains(*c)))
    {
        return bad(&format!("`{c}` is not allowed"));
    }
    let (name, digest) = match value.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (value, None),
    };
    if let Some(d) = digest {
        let ok = d.split_once(':').is_some_and(|(alg, hex)| {
            !alg.is_empty() && hex.len() >= 32 && hex.chars().all(|c| c.is_ascii_hexdigit())
        });
        if !ok {
            return bad("the digest must be `algorithm:hex`");
        }
    }
    // A tag is what follows the last `:` after the last `/`.
    let last = name.rsplit('/').next().unwrap_or(name);
    let (path_last, tag) = match last.split_once(':') {
        Some((p, t)) => (p, Some(t)),
        None => (last, None),
    };
    if let Some(t) = tag {
        if t.is_empty() || t.len() > 128 || t.starts_with(['.', '-']) || t.contains(':') {
            return bad("the tag must be 1–128 of [A-Za-z0-9_.-], not starting with `.` or `-`");
        }
    }
    let path = &name[..name.len() - last.len()];
    let components = path.split('/').filter(|c| !c.is_empty()).chain([path_last]);
    for (i, c) in components.enumerate() {
        // The first component may be a registry host (upper case, `:port`).
        let host = i == 0 && path.contains('/') && (c.contains('.') || c.contains(':'));
        if c.is_empty() {
            return bad("a name component is empty");
        }
        if !host && c.chars().any(|ch| ch.is_ascii_uppercase()) {
            return bad("repository names are lower case");
        }
        if !host && (c.starts_with(['.', '_', '-']) || c.ends_with(['.', '_', '-'])) {
            return bad("a name component must start and end with a letter or digit");
        }
    }
    if name.ends_with('/') || name.starts_with('/') || name.contains("//") {
        return bad("a name component is empty");
    }
    Ok(value.to_string())
}

fn parse_memory_mb(value: &str) -> Result<u64, String> {
    match value.parse::<u64>() {
        // Docker refuses limits under 6 MiB.
        Ok(m) if m == 0 || (6..=16 * 1024 * 1024).contains(&m) => Ok(m),
        Ok(_) => Err(format!(
            "`{value}`: a container needs at least 6 MiB (0 = not limited)"
        )),
        Err(_) => Err(format!(
            "`{value}` is not a whole number of MiB (0 or more)"
        )),
    }
}

fn parse_cpus(value: &str) -> Result<i64, String> {
    let cpus: f64 = value
        .parse()
        .map_err(|_| format!("`{value}` is not a number of CPUs (e.g. 0.5 or 2)"))?;
    if !cpus.is_finite() || !(0.01..=1024.0).contains(&cpus) {
        return Err(format!("`{value}`: CPUs must be from 0.01 to 1024"));
    }
    Ok((cpus * 1e9).round() as i64)
}

fn parse_pids(value: &str) -> Result<i64, String> {
    match value.parse::<i64>() {
        Ok(p) if (1..=4_194_304).contains(&p) => Ok(p),
        _ => Err(format!(
            "`{value}` is not a process limit (a whole number from 1 to 4194304)"
        )),
    }
}

fn parse_user(value: &str) -> Result<String, String> {
    let part_ok = |p: &str| {
        !p.is_empty()
            && p.len() <= 64
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
            && !p.starts_with('-')
    };
    let ok = match value.split_once(':') {
        Some((u, g)) => part_ok(u) && part_ok(g),
        None => part_ok(value),
    };
    if ok {
        Ok(value.to_string())
    } else {
        Err(format!(
            "`{value}` is not `user[:group]` (names or numeric ids of [A-Za-z0-9_.-])"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn good_settings_parse() {
        let r = RuntimeSettings::parse(&s(&[
            (RUNTIME, "Docker"),
            (IMAGE, "registry.local:5000/team/python:3.12"),
            (MEMORY_MB, "256"),
            (CPUS, "0.5"),
            (PIDS, "128"),
            (USER, "1000:1000"),
            ("OTHER", "ignored"),
        ]))
        .unwrap();
        assert_eq!(r.runtime, Some(RuntimeKind::Docker));
        assert_eq!(
            r.image.as_deref(),
            Some("registry.local:5000/team/python:3.12")
        );
        assert_eq!(r.memory_mb, Some(256));
        assert_eq!(r.nano_cpus, Some(500_000_000));
        assert_eq!(r.pids, Some(128));
        assert_eq!(r.user.as_deref(), Some("1000:1000"));
        assert_eq!(
            RuntimeSettings::parse(&s(&[])).unwrap(),
            RuntimeSettings::default()
        );
        for image in [
            "scratch",
            "strom-test:1",
            "a/b/c",
            "alpine@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "localhost:5000/x:v1.2-rc_3",
        ] {
            assert!(parse_image(image).is_ok(), "{image}");
        }
    }

    #[test]
    fn bad_settings_are_named_with_their_value() {
        for (key, value, expect) in [
            (RUNTIME, "podman", "not a runtime"),
            (IMAGE, "Python:3", "lower case"),
            (IMAGE, "python 3", "` ` is not allowed"),
            (IMAGE, "python:", "tag"),
            (IMAGE, "a//b", "empty"),
            (IMAGE, "x@sha256:zz", "digest"),
            (MEMORY_MB, "2", "at least 6 MiB"),
            (MEMORY_MB, "lots", "whole number"),
            (CPUS, "0", "0.01 to 1024"),
            (CPUS, "NaN", "0.01 to 1024"),
            (CPUS, "two", "number of CPUs"),
            (PIDS, "0", "process limit"),
            (USER, "root;rm", "user[:group]"),
            (USER, "a:", "user[:group]"),
        ] {
            let err = RuntimeSettings::check(key, value).unwrap_err();
            assert!(err.starts_with(key), "{err}");
            assert!(err.contains(expect), "{key}={value}: {err}");
        }
        assert!(RuntimeSettings::check("UNRELATED", "anything").is_ok());
        let both = RuntimeSettings::parse(&s(&[(CPUS, "x"), (PIDS, "-1")])).unwrap_err();
        assert!(both.contains(CPUS) && both.contains(PIDS), "{both}");
    }

    #[test]
    fn app_settings_win_over_worker_defaults() {
        let defaults = RuntimeSettings {
            runtime: Some(RuntimeKind::Docker),
            image: Some("base:1".into()),
            memory_mb: Some(512),
            pids: Some(64),
            ..Default::default()
        };
        let app = RuntimeSettings::parse(&s(&[(IMAGE, "app:2"), (MEMORY_MB, "0")])).unwrap();
        let r = app.or(&defaults);
        assert_eq!(r.runtime, Some(RuntimeKind::Docker));
        assert_eq!(r.image.as_deref(), Some("app:2"));
        assert_eq!(r.memory_mb, Some(0), "explicitly unlimited stays unlimited");
        assert_eq!(r.pids, Some(64));
    }
}
