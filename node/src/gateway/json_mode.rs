//! The custom handler JSON mode, both directions, as pure functions:
//! the HTTP request → `{"Data":{…},"Metadata":{…}}` payload, and the handler's
//! `{"Outputs","Logs","ReturnValue"}` answer → the HTTP response.
//!
//! Both run once per request, so neither builds a `serde_json::Value` tree of the
//! whole message: the payload is written straight from the request's borrowed parts
//! ([`InvocationPayload`] is `Serialize`), and the answer is read in one pass that
//! keeps the logs, the `http` output's fields and whether each unsupported output
//! was given a value, and skips everything else unbuilt.

use std::fmt;
use std::time::SystemTime;

use base64::Engine;
use bytes::Bytes;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;
use serde_json::Value;

/// What the gateway knows about an incoming HTTP request, borrowed from it.
pub struct HttpRequestData<'a> {
    /// `Url` is `http://{host}{path_and_query}`.
    pub host: &'a str,
    pub path_and_query: &'a str,
    pub method: &'a str,
    /// Sorted by name, a name's values in their order ([`HttpRequestData::new`]).
    query: Vec<(&'a str, &'a str)>,
    /// Sorted by name, a name's values in their order.
    headers: Vec<(&'a str, &'a str)>,
    pub params: &'a [(String, String)],
    pub content_type: Option<&'a str>,
    pub body: &'a [u8],
}

impl<'a> HttpRequestData<'a> {
    /// `query` and `headers` (lower-case names) in the request's order.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        host: &'a str,
        path_and_query: &'a str,
        method: &'a str,
        query: impl IntoIterator<Item = (&'a str, &'a str)>,
        headers: impl IntoIterator<Item = (&'a str, &'a str)>,
        params: &'a [(String, String)],
        content_type: Option<&'a str>,
        body: &'a [u8],
    ) -> Self {
        let mut query: Vec<_> = query.into_iter().collect();
        let mut headers: Vec<_> = headers.into_iter().collect();
        // Stable sorts: a name's values keep their order.
        query.sort_by_key(|(k, _)| *k);
        headers.sort_by_key(|(k, _)| *k);
        HttpRequestData {
            host,
            path_and_query,
            method,
            query,
            headers,
            params,
            content_type,
            body,
        }
    }
}

/// Runs of equal names in a list sorted by name: `(name, its entries)`.
fn runs<'l, 'a>(
    sorted: &'l [(&'a str, &'a str)],
) -> impl Iterator<Item = (&'a str, &'l [(&'a str, &'a str)])> + 'l {
    let mut rest = sorted;
    std::iter::from_fn(move || {
        let (name, _) = *rest.first()?;
        let n = rest.iter().take_while(|(k, _)| *k == name).count();
        let (run, tail) = rest.split_at(n);
        rest = tail;
        Some((name, run))
    })
}

/// `Query`: one string per name, repeated values joined by commas (Azure's).
struct QueryObject<'l, 'a>(&'l [(&'a str, &'a str)]);

impl Serialize for QueryObject<'_, '_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        for (name, run) in runs(self.0) {
            match run {
                [(_, one)] => map.serialize_entry(name, one)?,
                _ => {
                    let values: Vec<&str> = run.iter().map(|(_, v)| *v).collect();
                    map.serialize_entry(name, &values.join(","))?
                }
            }
        }
        map.end()
    }
}

/// `Headers`: one array of values per name.
struct HeadersObject<'l, 'a>(&'l [(&'a str, &'a str)]);

impl Serialize for HeadersObject<'_, '_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        struct Values<'l, 'a>(&'l [(&'a str, &'a str)]);
        impl Serialize for Values<'_, '_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_seq(self.0.iter().map(|(_, v)| v))
            }
        }
        let mut map = s.serialize_map(None)?;
        for (name, run) in runs(self.0) {
            map.serialize_entry(name, &Values(run))?;
        }
        map.end()
    }
}

/// Names `Metadata` gives its own entries; a route parameter of the same name is
/// left out there (it stays in `Params`).
const METADATA_OWN: [&str; 3] = ["Query", "Headers", "sys"];

/// Written as its `Display` text, without an intermediate `String`.
struct Text<T>(T);

impl<T: fmt::Display> Serialize for Text<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

fn is_binary(content_type: Option<&str>) -> bool {
    content_type.is_some_and(|c| {
        let c = c.trim().as_bytes();
        let starts =
            |p: &str| c.len() >= p.len() && c[..p.len()].eq_ignore_ascii_case(p.as_bytes());
        starts("application/octet-stream") || starts("multipart/")
    })
}

/// The invocation payload for an HTTP-triggered function, as the Azure host sends
/// it: `{"Data":{binding: {Url, Method, Query, Headers, Params, Identities, Body}},
/// "Metadata":{…params, Query, Headers, sys}}`.
pub struct InvocationPayload<'r, 'a> {
    pub req: &'r HttpRequestData<'a>,
    pub binding: &'r str,
    pub function: &'r str,
    pub utc_now: SystemTime,
    pub rand_guid: &'r str,
}

impl Serialize for InvocationPayload<'_, '_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        struct Params<'l>(&'l [(String, String)]);
        impl Serialize for Params<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_map(self.0.iter().map(|(k, v)| (k, v)))
            }
        }
        struct Http<'l, 'r, 'a>(&'l InvocationPayload<'r, 'a>);
        impl Serialize for Http<'_, '_, '_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let req = self.0.req;
                let mut m = s.serialize_map(None)?;
                m.serialize_entry(
                    "Url",
                    &Text(format_args!(
                        "http://{}{}",
                        if req.host.is_empty() {
                            "localhost"
                        } else {
                            req.host
                        },
                        req.path_and_query
                    )),
                )?;
                m.serialize_entry("Method", req.method)?;
                m.serialize_entry("Query", &QueryObject(&req.query))?;
                m.serialize_entry("Headers", &HeadersObject(&req.headers))?;
                m.serialize_entry("Params", &Params(req.params))?;
                m.serialize_entry("Identities", &[(); 0])?;
                if !req.body.is_empty() {
                    if is_binary(req.content_type) {
                        let b64 = base64::engine::general_purpose::STANDARD.encode(req.body);
                        m.serialize_entry("Body", &b64)?;
                    } else {
                        m.serialize_entry("Body", &String::from_utf8_lossy(req.body))?;
                    }
                }
                m.end()
            }
        }
        struct Data<'l, 'r, 'a>(&'l InvocationPayload<'r, 'a>);
        impl Serialize for Data<'_, '_, '_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry(self.0.binding, &Http(self.0))?;
                m.end()
            }
        }
        struct Sys<'l, 'r, 'a>(&'l InvocationPayload<'r, 'a>);
        impl Serialize for Sys<'_, '_, '_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut m = s.serialize_map(Some(3))?;
                m.serialize_entry("MethodName", self.0.function)?;
                m.serialize_entry(
                    "UtcNow",
                    &Text(humantime::format_rfc3339_micros(self.0.utc_now)),
                )?;
                m.serialize_entry("RandGuid", self.0.rand_guid)?;
                m.end()
            }
        }
        struct Metadata<'l, 'r, 'a>(&'l InvocationPayload<'r, 'a>);
        impl Serialize for Metadata<'_, '_, '_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let req = self.0.req;
                let mut m = s.serialize_map(None)?;
                for (k, v) in req.params {
                    if !METADATA_OWN.contains(&k.as_str()) {
                        m.serialize_entry(k, v)?;
                    }
                }
                m.serialize_entry("Query", &QueryObject(&req.query))?;
                m.serialize_entry("Headers", &HeadersObject(&req.headers))?;
                m.serialize_entry("sys", &Sys(self.0))?;
                m.end()
            }
        }
        let mut m = s.serialize_map(Some(2))?;
        m.serialize_entry("Data", &Data(self))?;
        m.serialize_entry("Metadata", &Metadata(self))?;
        m.end()
    }
}

/// The HTTP response a JSON-mode invocation produced.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpOutput {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

/// The parsed handler answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub logs: Vec<String>,
    /// `None`: no http output value → 204.
    pub output: Option<HttpOutput>,
    /// One line per value given to an output binding this cluster does not support.
    pub dropped: Vec<String>,
    /// The values of the captured outputs (messages to send), in the order they
    /// were asked for; null when not given.
    pub captured: Vec<Value>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AnswerError {
    #[error("the handler answered HTTP {status}")]
    NotSuccess { status: u16, logs: Vec<String> },
    #[error("the handler's answer is not JSON: {0}")]
    NotJson(String),
    #[error("the http output is invalid: {0}")]
    BadOutput(String),
}

impl AnswerError {
    pub fn logs(&self) -> &[String] {
        match self {
            AnswerError::NotSuccess { logs, .. } => logs,
            _ => &[],
        }
    }
}

/// How well `key` names the field `name`: exactly (2), in another case (1: the
/// host reads these case-insensitively), or not (0).
fn rank(key: &str, name: &str) -> u8 {
    if key == name {
        2
    } else if key.eq_ignore_ascii_case(name) {
        1
    } else {
        0
    }
}

/// A field's value, kept from the key that names it best. Even ranks are exact
/// names: a later exact key replaces an earlier one (as duplicate keys read in
/// a JSON object), while of the names in another case the first is kept.
struct Best<T> {
    rank: u8,
    value: Option<T>,
}

impl<T> Default for Best<T> {
    fn default() -> Self {
        Best {
            rank: 0,
            value: None,
        }
    }
}

impl<T> Best<T> {
    /// Does a key of this rank replace what is kept?
    fn takes(&self, rank: u8) -> bool {
        rank > self.rank || (rank > 0 && rank == self.rank && rank.is_multiple_of(2))
    }
    fn keep(&mut self, rank: u8, value: T) {
        self.rank = rank;
        self.value = Some(value);
    }
}

/// An output binding's value: `None` when null, else the HTTP response it
/// describes, or why it describes none.
type OutputValue = Option<Result<HttpOutput, String>>;

/// What the answer says, as far as this invocation needs it.
#[derive(Default)]
struct Parsed {
    logs: Best<Vec<String>>,
    /// How well the `Outputs` read so far was named.
    outputs: Best<()>,
    /// The `http` output binding's value in `Outputs`.
    http: Best<OutputValue>,
    return_value: Best<OutputValue>,
    /// Per unsupported output binding: was it given a value (not null)?
    given: Vec<Best<bool>>,
    /// Per captured output binding: its value.
    captured: Vec<Best<Value>>,
}

/// Reads the answer with the function's output bindings in mind.
#[derive(Clone, Copy)]
struct AnswerSeed<'c> {
    /// The `http` output's name (`$return` for the return value), if it has one.
    binding: Option<&'c str>,
    unsupported: &'c [(&'c str, &'c str)],
    /// Outputs whose whole value is kept (`$return` for the return value).
    captured: &'c [&'c str],
}

impl<'de> DeserializeSeed<'de> for AnswerSeed<'_> {
    type Value = Parsed;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Parsed, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for AnswerSeed<'_> {
    type Value = Parsed;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object (Outputs, Logs, ReturnValue)")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Parsed, A::Error> {
        let mut p = Parsed {
            given: self.unsupported.iter().map(|_| Best::default()).collect(),
            captured: self.captured.iter().map(|_| Best::default()).collect(),
            ..Parsed::default()
        };
        let return_read = |n: &(&str, &str)| n.0 == "$return";
        let return_captured = self.captured.contains(&"$return");
        let return_needed =
            self.binding.is_some() || self.unsupported.iter().any(return_read) || return_captured;
        while let Some(key) = map.next_key::<Key<'de>>()? {
            let key = key.as_str();
            let (logs, outputs, ret) = (
                rank(key, "Logs"),
                rank(key, "Outputs"),
                rank(key, "ReturnValue"),
            );
            if p.logs.takes(logs) {
                let v = map.next_value::<Value>()?;
                p.logs.keep(logs, logs_of(v));
            } else if p.outputs.takes(outputs) {
                // A better-named `Outputs` replaces what an earlier one gave.
                p.outputs.keep(outputs, ());
                p.http = Best::default();
                for (g, (name, _)) in p.given.iter_mut().zip(self.unsupported) {
                    if *name != "$return" {
                        *g = Best::default();
                    }
                }
                for (c, name) in p.captured.iter_mut().zip(self.captured) {
                    if *name != "$return" {
                        *c = Best::default();
                    }
                }
                map.next_value_seed(OutputsSeed {
                    answer: self,
                    parsed: &mut p,
                })?;
            } else if return_needed && p.return_value.takes(ret) {
                let v = if return_captured {
                    let value = map.next_value::<Value>()?;
                    for (c, name) in p.captured.iter_mut().zip(self.captured) {
                        if *name == "$return" {
                            c.keep(ret, value.clone());
                        }
                    }
                    OutputSeed.deserialize(&value).map_err(de::Error::custom)?
                } else {
                    map.next_value_seed(OutputSeed)?
                };
                for (g, (name, _)) in p.given.iter_mut().zip(self.unsupported) {
                    if *name == "$return" {
                        g.keep(ret, v.is_some());
                    }
                }
                p.return_value.keep(ret, v);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(p)
    }
}

/// `Logs`: each item a line (strings as they are, other values as JSON); anything
/// but an array is no logs.
fn logs_of(v: Value) -> Vec<String> {
    match v {
        Value::Array(items) => items
            .into_iter()
            .map(|v| match v {
                Value::String(s) => s,
                other => other.to_string(),
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// An object key, borrowed from the answer when it has no escapes.
struct Key<'de>(std::borrow::Cow<'de, str>);

impl Key<'_> {
    fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(v.into()))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(v.to_string().into()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(v.into()))
            }
        }
        d.deserialize_str(V)
    }
}

/// A visitor's answer to anything but an object: `$value` (arrays are skipped
/// through).
macro_rules! not_an_object {
    ($value:expr) => {
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok($value)
        }
    };
}

/// `Outputs`: the `http` binding's value read, the unsupported ones' checked for
/// a value, the rest skipped. Anything but an object gives no outputs.
struct OutputsSeed<'s, 'c> {
    answer: AnswerSeed<'c>,
    parsed: &'s mut Parsed,
}

impl<'de> DeserializeSeed<'de> for OutputsSeed<'_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for OutputsSeed<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object of output values")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let binding = self.answer.binding.filter(|b| *b != "$return");
        let unsupported = self.answer.unsupported;
        while let Some(key) = map.next_key::<Key<'de>>()? {
            let key = key.as_str();
            let http = binding.map_or(0, |b| rank(key, b));
            let named = |i: usize| match unsupported[i].0 {
                "$return" => 0,
                name => rank(key, name),
            };
            let wanted = (0..unsupported.len()).any(|i| self.parsed.given[i].takes(named(i)));
            let captured = self.answer.captured;
            let kept = |i: usize| match captured[i] {
                "$return" => 0,
                name => rank(key, name),
            };
            let keep = (0..captured.len()).any(|i| self.parsed.captured[i].takes(kept(i)));
            if !self.parsed.http.takes(http) && !wanted && !keep {
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            let v = if keep {
                let value = map.next_value::<Value>()?;
                for i in 0..captured.len() {
                    let r = kept(i);
                    if self.parsed.captured[i].takes(r) {
                        self.parsed.captured[i].keep(r, value.clone());
                    }
                }
                OutputSeed.deserialize(&value).map_err(de::Error::custom)?
            } else {
                map.next_value_seed(OutputSeed)?
            };
            for i in 0..unsupported.len() {
                let r = named(i);
                if self.parsed.given[i].takes(r) {
                    self.parsed.given[i].keep(r, v.is_some());
                }
            }
            if self.parsed.http.takes(http) {
                self.parsed.http.keep(http, v);
            }
        }
        Ok(())
    }
    not_an_object!(());
}

/// The type of a string body that names none (Azure's).
const TEXT_PLAIN: &str = "text/plain; charset=utf-8";

/// One output value read as an `http` output: `None` for null.
struct OutputSeed;

impl<'de> DeserializeSeed<'de> for OutputSeed {
    type Value = OutputValue;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<OutputValue, D::Error> {
        d.deserialize_any(self)
    }
}

/// A value that is not an object: the whole body, as JSON text.
fn json_body(v: Value) -> OutputValue {
    Some(Ok(HttpOutput {
        status: 200,
        headers: vec![("content-type".into(), "application/json".into())],
        body: Bytes::from(v.to_string()),
    }))
}

impl<'de> Visitor<'de> for OutputSeed {
    type Value = OutputValue;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an output value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<OutputValue, E> {
        Ok(None)
    }
    fn visit_none<E: de::Error>(self) -> Result<OutputValue, E> {
        Ok(None)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<OutputValue, E> {
        self.visit_string(v.to_string())
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<OutputValue, E> {
        Ok(Some(Ok(HttpOutput {
            status: 200,
            headers: vec![("content-type".into(), TEXT_PLAIN.into())],
            body: Bytes::from(v),
        })))
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<OutputValue, E> {
        Ok(json_body(v.into()))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<OutputValue, E> {
        Ok(json_body(v.into()))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<OutputValue, E> {
        Ok(json_body(v.into()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<OutputValue, E> {
        Ok(json_body(v.into()))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<OutputValue, A::Error> {
        let v = de::Deserialize::deserialize(de::value::SeqAccessDeserializer::new(seq))?;
        Ok(json_body(v))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<OutputValue, A::Error> {
        // statusCode (4, 3) before status (2, 1).
        let mut status: Best<Value> = Best::default();
        let mut headers: Best<Value> = Best::default();
        let mut body: Best<Value> = Best::default();
        while let Some(key) = map.next_key::<Key<'de>>()? {
            let key = key.as_str();
            let status_rank = match rank(key, "statusCode") {
                0 => rank(key, "status"),
                r => r + 2,
            };
            let (h, b) = (rank(key, "headers"), rank(key, "body"));
            if status.takes(status_rank) {
                status.keep(status_rank, map.next_value()?);
            } else if headers.takes(h) {
                headers.keep(h, map.next_value()?);
            } else if body.takes(b) {
                body.keep(b, map.next_value()?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(Some(http_output(status.value, headers.value, body.value)))
    }
}

/// The response an `http` output object describes.
fn http_output(
    status: Option<Value>,
    headers: Option<Value>,
    body: Option<Value>,
) -> Result<HttpOutput, String> {
    let status = match status {
        None | Some(Value::Null) => 200,
        Some(Value::Number(n)) => {
            n.as_u64()
                .filter(|n| (100..=999).contains(n))
                .ok_or_else(|| format!("statusCode {n} is not an HTTP status"))? as u16
        }
        Some(Value::String(s)) => s
            .trim()
            .parse::<u16>()
            .ok()
            .filter(|n| (100..=999).contains(n))
            .ok_or_else(|| format!("statusCode `{s}` is not an HTTP status"))?,
        Some(other) => return Err(format!("statusCode must be a number, found {other}")),
    };
    let mut headers: Vec<(String, String)> = match headers {
        Some(Value::Object(h)) => h
            .into_iter()
            .map(|(k, v)| {
                let value = match v {
                    Value::String(s) => s,
                    Value::Array(items) => items
                        .into_iter()
                        .map(|i| match i {
                            Value::String(s) => s,
                            other => other.to_string(),
                        })
                        .collect::<Vec<_>>()
                        .join(", "),
                    other => other.to_string(),
                };
                (k, value)
            })
            .collect(),
        _ => Vec::new(),
    };
    let content_type = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        .map(|(_, v)| v.to_ascii_lowercase());
    let body = match body {
        None | Some(Value::Null) => Bytes::new(),
        Some(Value::String(s)) => {
            // A binary body travels as base64 (the host decodes it for binary outputs);
            // text bodies are taken as written.
            let binary = content_type.as_deref().is_some_and(|c| {
                c.starts_with("application/octet-stream") || c.starts_with("image/")
            });
            if content_type.is_none() {
                // As Azure sends a string body that names no type.
                headers.push(("content-type".into(), TEXT_PLAIN.into()));
            }
            match binary.then(|| base64::engine::general_purpose::STANDARD.decode(&s)) {
                Some(Ok(bytes)) => Bytes::from(bytes),
                _ => Bytes::from(s),
            }
        }
        Some(other) => {
            if content_type.is_none() {
                headers.push(("content-type".into(), "application/json".into()));
            }
            Bytes::from(other.to_string())
        }
    };
    Ok(HttpOutput {
        status,
        headers,
        body,
    })
}

/// Interpret the handler's HTTP answer. `output_binding` is the name of the
/// function's `http` output binding (`res`, `$return`), if it has one.
pub fn parse_answer(
    status: u16,
    body: &[u8],
    output_binding: Option<&str>,
) -> Result<Answer, AnswerError> {
    parse_answer_with(status, body, output_binding, &[])
}

/// Read `body` with `seed`, the whole of it.
fn read_answer(body: &[u8], seed: AnswerSeed<'_>) -> Result<Parsed, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let parsed = seed.deserialize(&mut de)?;
    de.end()?;
    Ok(parsed)
}

/// [`parse_answer`], also naming the values given to the function's unsupported
/// output bindings (`(name, type)`) in [`Answer::dropped`].
pub fn parse_answer_with(
    status: u16,
    body: &[u8],
    output_binding: Option<&str>,
    unsupported: &[(&str, &str)],
) -> Result<Answer, AnswerError> {
    parse_answer_capturing(status, body, output_binding, unsupported, &[])
}

/// [`parse_answer_with`], also keeping the whole values of the outputs named in
/// `captured` (`$return` for the return value) in [`Answer::captured`]: the
/// messages a function sends. A return value captured as a message is not also
/// the HTTP response.
pub fn parse_answer_capturing(
    status: u16,
    body: &[u8],
    output_binding: Option<&str>,
    unsupported: &[(&str, &str)],
    captured: &[&str],
) -> Result<Answer, AnswerError> {
    if !(200..300).contains(&status) {
        // Azure drops these logs; we keep them.
        let only_logs = AnswerSeed {
            binding: None,
            unsupported: &[],
            captured: &[],
        };
        let logs = read_answer(body, only_logs)
            .ok()
            .and_then(|p| p.logs.value)
            .unwrap_or_default();
        return Err(AnswerError::NotSuccess { status, logs });
    }
    let seed = AnswerSeed {
        binding: output_binding,
        unsupported,
        captured,
    };
    let parsed = read_answer(body, seed).map_err(|e| AnswerError::NotJson(e.to_string()))?;
    let dropped = unsupported
        .iter()
        .zip(&parsed.given)
        .filter(|(_, given)| given.value == Some(true))
        .map(|((name, kind), _)| {
            format!("output `{name}` ({kind}) is not supported on this cluster: value dropped")
        })
        .collect();
    let logs = parsed.logs.value.unwrap_or_default();
    let output = match output_binding {
        None => None,
        Some("$return") => parsed.return_value.value.flatten(),
        // The named output, or the return value when it has none (and is not
        // a message).
        Some(_) if captured.contains(&"$return") => parsed.http.value.flatten(),
        Some(_) => parsed
            .http
            .value
            .flatten()
            .or(parsed.return_value.value.flatten()),
    };
    let captured = parsed
        .captured
        .into_iter()
        .map(|c| c.value.unwrap_or(Value::Null))
        .collect();
    Ok(Answer {
        logs,
        output: output.transpose().map_err(AnswerError::BadOutput)?,
        dropped,
        captured,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn message_outputs_are_kept_whole_and_a_return_message_is_not_the_response() {
        let body = br#"{"Outputs":{"res":{"body":"ok"},"outOrder":[{"id":1},"two"],"other":1},
            "ReturnValue":{"report":true}}"#;
        let a =
            parse_answer_capturing(200, body, Some("res"), &[], &["outOrder", "$return"]).unwrap();
        assert_eq!(
            a.captured,
            vec![json!([{"id": 1}, "two"]), json!({"report": true})]
        );
        assert_eq!(a.output.unwrap().body, Bytes::from("ok"));
        // The return value is a message, so an absent `res` is no response (204),
        // not the return value.
        let a = parse_answer_capturing(
            200,
            br#"{"Outputs":{},"ReturnValue":"m"}"#,
            Some("res"),
            &[],
            &["$return"],
        )
        .unwrap();
        assert_eq!((a.output, a.captured), (None, vec![json!("m")]));
        // Names in another case are read as the host reads them; an exact one wins;
        // a value not given is null.
        let a = parse_answer_capturing(
            200,
            br#"{"Outputs":{"OUTORDER":"upper","outOrder":"exact"}}"#,
            None,
            &[],
            &["outOrder", "absent"],
        )
        .unwrap();
        assert_eq!(a.captured, vec![json!("exact"), Value::Null]);
        // A failed invocation sends nothing.
        assert!(parse_answer_capturing(
            500,
            br#"{"Outputs":{"outOrder":"x"}}"#,
            None,
            &[],
            &["outOrder"]
        )
        .is_err());
    }

    #[test]
    fn values_for_unsupported_outputs_are_named_not_dropped_silently() {
        let body = br#"{"Outputs":{"res":{"body":"ok"},"msg":"hello"},"ReturnValue":{"a":1}}"#;
        let unsupported = [("msg", "queue"), ("$return", "queue"), ("other", "blob")];
        let a = parse_answer_with(200, body, Some("res"), &unsupported).unwrap();
        assert_eq!(
            a.dropped,
            [
                "output `msg` (queue) is not supported on this cluster: value dropped",
                "output `$return` (queue) is not supported on this cluster: value dropped",
            ]
        );
        assert!(parse_answer(200, body, Some("res"))
            .unwrap()
            .dropped
            .is_empty());
        let a = parse_answer_with(200, br#"{"Outputs":{"msg":null}}"#, None, &unsupported);
        assert!(a.unwrap().dropped.is_empty());
    }

    /// The payload as the handler reads it.
    fn payload(req: &HttpRequestData<'_>) -> Value {
        let p = InvocationPayload {
            req,
            binding: "req",
            function: "items",
            utc_now: SystemTime::UNIX_EPOCH,
            rand_guid: "g",
        };
        serde_json::from_slice(&serde_json::to_vec(&p).unwrap()).unwrap()
    }

    #[test]
    fn request_payload_has_the_azure_shape() {
        let params = vec![
            ("id".to_string(), "42".to_string()),
            ("Query".to_string(), "shadowed".to_string()),
        ];
        let req = HttpRequestData::new(
            "localhost:7071",
            "/api/items/42?b=x+y&a=1&a=2",
            "POST",
            [("b", "x y"), ("a", "1"), ("a", "2")],
            [("x-multi", "1"), ("accept", "text/plain"), ("x-multi", "2")],
            &params,
            Some("text/plain"),
            b"hello",
        );
        let v = payload(&req);
        let r = &v["Data"]["req"];
        assert_eq!(r["Url"], "http://localhost:7071/api/items/42?b=x+y&a=1&a=2");
        assert_eq!(r["Method"], "POST");
        assert_eq!(r["Query"], json!({"a": "1,2", "b": "x y"}));
        assert_eq!(
            r["Headers"],
            json!({"accept": ["text/plain"], "x-multi": ["1", "2"]})
        );
        assert_eq!(r["Params"], json!({"id": "42", "Query": "shadowed"}));
        assert_eq!(r["Identities"], json!([]));
        assert_eq!(r["Body"], "hello");
        let m = &v["Metadata"];
        assert_eq!(m["id"], "42");
        // Metadata's own entries win over a route parameter of the same name.
        assert_eq!(m["Query"], r["Query"]);
        assert_eq!(m["Headers"], r["Headers"]);
        assert_eq!(
            m["sys"],
            json!({"MethodName": "items", "UtcNow": "1970-01-01T00:00:00.000000Z", "RandGuid": "g"})
        );
        // No object has a key twice: `Query` is Data's, its route parameter's
        // (in Params) and Metadata's.
        let text = serde_json::to_string(&InvocationPayload {
            req: &req,
            binding: "req",
            function: "items",
            utc_now: SystemTime::UNIX_EPOCH,
            rand_guid: "g",
        })
        .unwrap();
        assert_eq!(text.matches("\"Query\"").count(), 3, "{text}");

        let no_host = HttpRequestData::new("", "/api/x", "GET", [], [], &[], None, b"");
        let v = payload(&no_host);
        assert_eq!(v["Data"]["req"]["Url"], "http://localhost/api/x");
        assert!(
            v["Data"]["req"].get("Body").is_none(),
            "Body is omitted when empty"
        );

        for content_type in ["application/octet-stream", "Multipart/form-data; b=1"] {
            let bin = HttpRequestData::new(
                "h",
                "/",
                "POST",
                [],
                [],
                &[],
                Some(content_type),
                &[0, 1, 2],
            );
            assert_eq!(
                payload(&bin)["Data"]["req"]["Body"],
                "AAEC",
                "{content_type}"
            );
        }
        // Text that is not UTF-8 arrives with replacement characters.
        let lossy = HttpRequestData::new("h", "/", "POST", [], [], &[], None, &[b'a', 0xff]);
        assert_eq!(payload(&lossy)["Data"]["req"]["Body"], "a\u{fffd}");
    }

    #[test]
    fn answer_fields_are_found_in_any_case_the_exact_name_first() {
        // An exact `Outputs` wins over one in another case, wherever it is.
        let body = br#"{"outputs":{"res":{"body":"lower"}},"Outputs":{"res":{"body":"exact"}}}"#;
        let a = parse_answer(200, body, Some("res")).unwrap();
        assert_eq!(a.output.unwrap().body, Bytes::from("exact"));
        let body = br#"{"Outputs":{"res":{"body":"exact"}},"outputs":{"res":{"body":"lower"}}}"#;
        let a = parse_answer(200, body, Some("res")).unwrap();
        assert_eq!(a.output.unwrap().body, Bytes::from("exact"));
        // Field names inside the output too; statusCode before status.
        let body = br#"{"OUTPUTS":{"RES":{"Status":201,"STATUSCODE":202,"BODY":[1,2]}},"logs":["l",{"k":1}]}"#;
        let a = parse_answer(200, body, Some("res")).unwrap();
        let out = a.output.unwrap();
        assert_eq!(out.status, 202);
        assert_eq!(out.body, Bytes::from("[1,2]"));
        assert_eq!(a.logs, ["l", r#"{"k":1}"#]);
        // Values of other types, and outputs that are not objects.
        let a = parse_answer(200, br#"{"ReturnValue":12}"#, Some("$return")).unwrap();
        assert_eq!(a.output.unwrap().body, Bytes::from("12"));
        let a = parse_answer(
            200,
            br#"{"Outputs":[1],"Logs":"x","ReturnValue":null}"#,
            Some("res"),
        )
        .unwrap();
        assert_eq!((a.output, a.logs.len()), (None, 0));
        // Trailing text is not an answer.
        assert!(matches!(
            parse_answer(200, br#"{"Logs":[]} x"#, None),
            Err(AnswerError::NotJson(_))
        ));
        assert!(matches!(
            parse_answer(200, b"[1]", None),
            Err(AnswerError::NotJson(_))
        ));
    }

    #[test]
    fn outputs_res_return_value_and_no_output() {
        let a = parse_answer(
            200,
            br#"{"Outputs":{"res":{"StatusCode":"201","Headers":{"X-A":"b"},"Body":"made"}},"Logs":["one"]}"#,
            Some("res"),
        )
        .unwrap();
        let out = a.output.unwrap();
        assert_eq!(out.status, 201);
        // A string body that names no type gets Azure's.
        assert_eq!(
            out.headers,
            vec![
                ("X-A".to_string(), "b".to_string()),
                (
                    "content-type".to_string(),
                    "text/plain; charset=utf-8".to_string()
                )
            ]
        );
        assert_eq!(out.body, Bytes::from("made"));
        assert_eq!(a.logs, vec!["one"]);

        let a = parse_answer(
            200,
            br#"{"ReturnValue":{"status":202,"body":{"k":1}}}"#,
            Some("$return"),
        )
        .unwrap();
        let out = a.output.unwrap();
        assert_eq!(out.status, 202);
        assert_eq!(out.body, Bytes::from(r#"{"k":1}"#));
        assert!(out
            .headers
            .iter()
            .any(|(k, v)| k == "content-type" && v == "application/json"));

        // ReturnValue is used when the named output is absent.
        let a = parse_answer(200, br#"{"Outputs":{},"ReturnValue":"plain"}"#, Some("res")).unwrap();
        let out = a.output.unwrap();
        assert_eq!(out.body, Bytes::from("plain"));
        assert_eq!(
            out.headers,
            vec![("content-type".into(), "text/plain; charset=utf-8".into())]
        );
        // A string body without a type gets Azure's; a named type is kept.
        let a = parse_answer(200, br#"{"Outputs":{"res":{"body":"hi"}}}"#, Some("res")).unwrap();
        assert_eq!(
            a.output.unwrap().headers,
            vec![("content-type".into(), "text/plain; charset=utf-8".into())]
        );
        let a = parse_answer(
            200,
            br#"{"Outputs":{"res":{"body":"<p>","headers":{"Content-Type":"text/html"}}}}"#,
            Some("res"),
        )
        .unwrap();
        assert_eq!(
            a.output.unwrap().headers,
            vec![("Content-Type".into(), "text/html".into())]
        );

        let a = parse_answer(200, br#"{"Outputs":{},"Logs":["x"]}"#, Some("res")).unwrap();
        assert_eq!(a.output, None);
        let a = parse_answer(200, br#"{"Logs":["x"]}"#, None).unwrap();
        assert_eq!(a.output, None);

        let a = parse_answer(
            200,
            br#"{"Outputs":{"res":{"headers":{"Content-Type":"application/octet-stream"},"body":"AAEC"}}}"#,
            Some("res"),
        )
        .unwrap();
        assert_eq!(a.output.unwrap().body, Bytes::from_static(&[0, 1, 2]));
    }

    #[test]
    fn failures_keep_their_logs() {
        let e = parse_answer(500, br#"{"Logs":["about to fail"]}"#, Some("res")).unwrap_err();
        assert_eq!(e.logs(), ["about to fail"]);
        assert!(matches!(
            parse_answer(200, b"oops", Some("res")),
            Err(AnswerError::NotJson(_))
        ));
        assert!(matches!(
            parse_answer(
                200,
                br#"{"Outputs":{"res":{"statusCode":"abc"}}}"#,
                Some("res")
            ),
            Err(AnswerError::BadOutput(_))
        ));
    }
}
