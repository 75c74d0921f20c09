//! Prometheus' text exposition format (0.0.4) as a scraper reads it: a strict
//! parser for tests, and `promtool check …` when it is installed (required under
//! `STROM_REQUIRE_PROMTOOL=1`, which `.ci/run` sets after installing it).

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::process::{Command, Stdio};

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A scrape: every sample, and each family's `# TYPE`.
#[derive(Debug, Default)]
pub struct Scrape {
    pub samples: Vec<Sample>,
    pub types: HashMap<String, String>,
}

impl Scrape {
    /// The value of the sample `name` whose labels include `labels`; the sum
    /// when several match (e.g. every `status` of one app).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let matching: Vec<f64> = self
            .samples
            .iter()
            .filter(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
            .collect();
        (!matching.is_empty()).then(|| matching.iter().sum())
    }
}

fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn value(s: &str) -> Option<f64> {
    match s {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => s.parse().ok(),
    }
}

/// The family a sample belongs to (`x_bucket`, `x_sum`, `x_count` of histogram `x`).
fn family<'a>(name: &'a str, types: &HashMap<String, String>) -> &'a str {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if types
                .get(base)
                .is_some_and(|t| t == "histogram" || t == "summary")
            {
                return base;
            }
        }
    }
    name
}

/// Parse a scrape; an error names the line and what is wrong with it.
pub fn parse(text: &str) -> Result<Scrape, String> {
    let mut scrape = Scrape::default();
    let mut sampled: HashMap<String, usize> = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let bad = |why: &str| format!("line {n}: {why}: `{line}`");
        if line.trim().is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix('#') {
            let mut words = rest.trim_start().splitn(3, ' ');
            match words.next() {
                Some("TYPE") => {
                    let name = words.next().ok_or_else(|| bad("TYPE without a name"))?;
                    let kind = words.next().ok_or_else(|| bad("TYPE without a type"))?;
                    if !is_name(name) {
                        return Err(bad("invalid metric name"));
                    }
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                        return Err(bad("unknown type"));
                    }
                    if sampled.contains_key(name) {
                        return Err(bad("TYPE after the family's samples"));
                    }
                    if scrape.types.insert(name.into(), kind.into()).is_some() {
                        return Err(bad("second TYPE for one family"));
                    }
                }
                Some("HELP") => {
                    let name = words.next().ok_or_else(|| bad("HELP without a name"))?;
                    if !is_name(name) {
                        return Err(bad("invalid metric name"));
                    }
                }
                _ => {}
            }
            continue;
        }
        let (name, rest) = match line.find(['{', ' ']) {
            Some(at) => line.split_at(at),
            None => return Err(bad("a sample without a value")),
        };
        if !is_name(name) {
            return Err(bad("invalid metric name"));
        }
        let mut labels = BTreeMap::new();
        let rest = if let Some(body) = rest.strip_prefix('{') {
            let mut chars = body.char_indices().peekable();
            let mut end = None;
            loop {
                while chars.peek().is_some_and(|(_, c)| *c == ',' || *c == ' ') {
                    chars.next();
                }
                match chars.peek() {
                    Some((at, '}')) => {
                        end = Some(*at);
                        break;
                    }
                    None => break,
                    _ => {}
                }
                let mut key = String::new();
                for (_, c) in chars.by_ref() {
                    if c == '=' {
                        break;
                    }
                    key.push(c);
                }
                if !is_name(&key) {
                    return Err(bad("invalid label name"));
                }
                if chars.next().map(|(_, c)| c) != Some('"') {
                    return Err(bad("label value not quoted"));
                }
                let mut val = String::new();
                let mut closed = false;
                while let Some((_, c)) = chars.next() {
                    match c {
                        '\\' => match chars.next().map(|(_, c)| c) {
                            Some('n') => val.push('\n'),
                            Some('\\') => val.push('\\'),
                            Some('"') => val.push('"'),
                            _ => return Err(bad("bad escape in a label value")),
                        },
                        '"' => {
                            closed = true;
                            break;
                        }
                        c => val.push(c),
                    }
                }
                if !closed {
                    return Err(bad("label value not closed"));
                }
                if labels.insert(key, val).is_some() {
                    return Err(bad("a label twice"));
                }
            }
            let end = end.ok_or_else(|| bad("labels not closed"))?;
            &body[end + 1..]
        } else {
            rest
        };
        let mut fields = rest.split_whitespace();
        let v = fields
            .next()
            .and_then(value)
            .ok_or_else(|| bad("invalid sample value"))?;
        if let Some(ts) = fields.next() {
            ts.parse::<i64>().map_err(|_| bad("invalid timestamp"))?;
        }
        if fields.next().is_some() {
            return Err(bad("text after the value"));
        }
        let fam = family(name, &scrape.types).to_string();
        let count = sampled.len();
        sampled.entry(fam).or_insert(count);
        scrape.samples.push(Sample {
            name: name.into(),
            labels,
            value: v,
        });
    }
    Ok(scrape)
}

/// Run `promtool check <what>` on `input`: `Ok(None)` when promtool is not
/// installed (and not required), `Ok(Some(output))` when it passed.
pub fn promtool(args: &[&str], input: &[u8]) -> Result<Option<String>, String> {
    let child = Command::new("promtool")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if std::env::var("STROM_REQUIRE_PROMTOOL").is_ok_and(|v| v == "1") {
                return Err("promtool is not installed (STROM_REQUIRE_PROMTOOL=1)".into());
            }
            eprintln!(
                "promtool is not installed: skipping `promtool {}`",
                args.join(" ")
            );
            return Ok(None);
        }
        Err(e) => return Err(format!("promtool: {e}")),
    };
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(input)
        .map_err(|e| format!("promtool stdin: {e}"))?;
    let out = child
        .wait_with_output()
        .map_err(|e| format!("promtool: {e}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(Some(text))
    } else {
        Err(format!("promtool {} failed: {text}", args.join(" ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scrape_parses_and_mistakes_are_named() {
        let text = "# HELP a_total A.\n# TYPE a_total counter\na_total{app=\"x\",s=\"q\\\"\"} 3\n\
                    # TYPE h_seconds histogram\nh_seconds_bucket{le=\"+Inf\"} 2\nh_seconds_sum 0.5\nh_seconds_count 2\n";
        let s = parse(text).unwrap();
        assert_eq!(s.sum("a_total", &[("app", "x")]), Some(3.0));
        assert_eq!(s.sum("a_total", &[("app", "y")]), None);
        assert_eq!(s.sum("h_seconds_count", &[]), Some(2.0));
        assert_eq!(s.samples[0].labels["s"], "q\"");
        for wrong in [
            "a{b=\"c} 1",
            "a{b=c} 1",
            "1a 2",
            "a x",
            "a 1 2 3",
            "a 1\n# TYPE a gauge",
            "# TYPE a counter\n# TYPE a gauge",
        ] {
            assert!(parse(wrong).is_err(), "{wrong}");
        }
    }
}
