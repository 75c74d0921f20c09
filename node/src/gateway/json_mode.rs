//! The custom handler JSON mode, both directions, as pure functions:
//! the HTTP request → `{"Data":{…},"Metadata":{…}}` payload, and the handler's
//! `{"Outputs","Logs","ReturnValue"}` answer → the HTTP response.

use std::collections::BTreeMap;

use base64::Engine;
use bytes::Bytes;
use serde_json::{json, Map, Value};

/// What the gateway knows about an incoming HTTP request.
pub struct HttpRequestData<'a> {
    pub url: String,
    pub method: &'a str,
    pub query: &'a [(String, String)],
    pub headers: &'a [(String, String)],
    pub params: &'a [(String, String)],
    pub content_type: Option<&'a str>,
    pub body: &'a [u8],
}

fn query_object(query: &[(String, String)]) -> Map<String, Value> {
    let mut m: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (k, v) in query {
        m.entry(k).or_default().push(v);
    }
    m.into_iter()
        .map(|(k, vs)| (k.to_string(), Value::String(vs.join(","))))
        .collect()
}

fn headers_object(headers: &[(String, String)]) -> Map<String, Value> {
    let mut m: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
    for (k, v) in headers {
        m.entry(k).or_default().push(Value::String(v.clone()));
    }
    m.into_iter()
        .map(|(k, vs)| (k.to_string(), Value::Array(vs)))
        .collect()
}

fn is_binary(content_type: Option<&str>) -> bool {
    content_type.is_some_and(|c| {
        let c = c.trim().to_ascii_lowercase();
        c.starts_with("application/octet-stream") || c.starts_with("multipart/")
    })
}

/// The invocation payload for an HTTP-triggered function (binding `binding_name`).
pub fn request_payload(
    req: &HttpRequestData<'_>,
    binding_name: &str,
    function: &str,
    utc_now: &str,
    rand_guid: &str,
) -> Value {
    let query = query_object(req.query);
    let headers = headers_object(req.headers);
    let params: Map<String, Value> = req
        .params
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    let mut http = Map::new();
    http.insert("Url".into(), Value::String(req.url.clone()));
    http.insert("Method".into(), Value::String(req.method.to_string()));
    http.insert("Query".into(), Value::Object(query.clone()));
    http.insert("Headers".into(), Value::Object(headers.clone()));
    http.insert("Params".into(), Value::Object(params.clone()));
    http.insert("Identities".into(), Value::Array(Vec::new()));
    if !req.body.is_empty() {
        let body = if is_binary(req.content_type) {
            base64::engine::general_purpose::STANDARD.encode(req.body)
        } else {
            String::from_utf8_lossy(req.body).into_owned()
        };
        http.insert("Body".into(), Value::String(body));
    }
    let mut metadata = params;
    metadata.insert("Query".into(), Value::Object(query));
    metadata.insert("Headers".into(), Value::Object(headers));
    metadata.insert(
        "sys".into(),
        json!({"MethodName": function, "UtcNow": utc_now, "RandGuid": rand_guid}),
    );
    let mut data = Map::new();
    data.insert(binding_name.to_string(), Value::Object(http));
    json!({"Data": Value::Object(data), "Metadata": Value::Object(metadata)})
}

/// Case-insensitive object lookup (the host reads these case-insensitively).
fn get<'v>(obj: &'v Map<String, Value>, key: &str) -> Option<&'v Value> {
    obj.get(key).or_else(|| {
        obj.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
    })
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

fn logs_of(obj: &Map<String, Value>) -> Vec<String> {
    match get(obj, "Logs") {
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// What a handler's answer gave to output bindings this cluster does not support
/// (`(name, type)`): one line each for the invocation's record, never silent.
fn dropped_outputs(obj: &Map<String, Value>, unsupported: &[(&str, &str)]) -> Vec<String> {
    if unsupported.is_empty() {
        return Vec::new();
    }
    let outputs = match get(obj, "Outputs") {
        Some(Value::Object(o)) => Some(o),
        _ => None,
    };
    unsupported
        .iter()
        .filter_map(|(name, kind)| {
            let value = if *name == "$return" {
                get(obj, "ReturnValue")
            } else {
                outputs.and_then(|o| get(o, name))
            };
            value.filter(|v| !v.is_null()).map(|_| {
                format!("output `{name}` ({kind}) is not supported on this cluster: value dropped")
            })
        })
        .collect()
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

/// [`parse_answer`], also naming the values given to the function's unsupported
/// output bindings (`(name, type)`) in [`Answer::dropped`].
pub fn parse_answer_with(
    status: u16,
    body: &[u8],
    output_binding: Option<&str>,
    unsupported: &[(&str, &str)],
) -> Result<Answer, AnswerError> {
    let parsed: Result<Value, _> = serde_json::from_slice(body);
    if !(200..300).contains(&status) {
        // Azure drops these logs; we keep them.
        let logs = match &parsed {
            Ok(Value::Object(o)) => logs_of(o),
            _ => Vec::new(),
        };
        return Err(AnswerError::NotSuccess { status, logs });
    }
    let value = parsed.map_err(|e| AnswerError::NotJson(e.to_string()))?;
    let Value::Object(obj) = value else {
        return Err(AnswerError::NotJson("expected a JSON object".into()));
    };
    let logs = logs_of(&obj);
    let dropped = dropped_outputs(&obj, unsupported);
    let Some(binding) = output_binding else {
        return Ok(Answer {
            logs,
            output: None,
            dropped,
        });
    };
    let return_value = get(&obj, "ReturnValue").filter(|v| !v.is_null());
    let value = if binding == "$return" {
        return_value
    } else {
        let outputs = match get(&obj, "Outputs") {
            Some(Value::Object(o)) => Some(o),
            _ => None,
        };
        outputs
            .and_then(|o| get(o, binding))
            .filter(|v| !v.is_null())
            .or(return_value)
    };
    let output = match value {
        None => None,
        Some(v) => Some(http_output(v).map_err(AnswerError::BadOutput)?),
    };
    Ok(Answer {
        logs,
        output,
        dropped,
    })
}

/// The type of a string body that names none (Azure's).
const TEXT_PLAIN: &str = "text/plain; charset=utf-8";

fn http_output(v: &Value) -> Result<HttpOutput, String> {
    let obj = match v {
        Value::Object(o) => o,
        Value::String(s) => {
            return Ok(HttpOutput {
                status: 200,
                headers: vec![("content-type".into(), TEXT_PLAIN.into())],
                body: Bytes::from(s.clone()),
            })
        }
        other => {
            return Ok(HttpOutput {
                status: 200,
                headers: vec![("content-type".into(), "application/json".into())],
                body: Bytes::from(other.to_string()),
            })
        }
    };
    let status = match get(obj, "statusCode").or_else(|| get(obj, "status")) {
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
    let mut headers = Vec::new();
    if let Some(Value::Object(h)) = get(obj, "headers") {
        for (k, v) in h {
            let value = match v {
                Value::String(s) => s.clone(),
                Value::Array(items) => items
                    .iter()
                    .map(|i| {
                        i.as_str()
                            .map(str::to_string)
                            .unwrap_or_else(|| i.to_string())
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
                other => other.to_string(),
            };
            headers.push((k.clone(), value));
        }
    }
    let content_type = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        .map(|(_, v)| v.to_ascii_lowercase());
    let body = match get(obj, "body") {
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
            match binary.then(|| base64::engine::general_purpose::STANDARD.decode(s)) {
                Some(Ok(bytes)) => Bytes::from(bytes),
                _ => Bytes::from(s.clone()),
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

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn request_payload_has_the_azure_shape() {
        let query = vec![
            ("a".to_string(), "1".to_string()),
            ("a".to_string(), "2".to_string()),
            ("b".to_string(), "x y".to_string()),
        ];
        let headers = vec![
            ("accept".to_string(), "text/plain".to_string()),
            ("x-multi".to_string(), "1".to_string()),
            ("x-multi".to_string(), "2".to_string()),
        ];
        let params = vec![("id".to_string(), "42".to_string())];
        let req = HttpRequestData {
            url: "http://localhost:7071/api/items/42?a=1&a=2&b=x+y".into(),
            method: "POST",
            query: &query,
            headers: &headers,
            params: &params,
            content_type: Some("text/plain"),
            body: b"hello",
        };
        let v = request_payload(&req, "req", "items", "2026-01-01T00:00:00Z", "g");
        let r = &v["Data"]["req"];
        assert_eq!(r["Method"], "POST");
        assert_eq!(r["Query"], json!({"a": "1,2", "b": "x y"}));
        assert_eq!(r["Headers"]["x-multi"], json!(["1", "2"]));
        assert_eq!(r["Params"], json!({"id": "42"}));
        assert_eq!(r["Identities"], json!([]));
        assert_eq!(r["Body"], "hello");
        assert_eq!(v["Metadata"]["id"], "42");
        assert_eq!(v["Metadata"]["sys"]["MethodName"], "items");

        let empty = HttpRequestData { body: b"", ..req };
        let v = request_payload(&empty, "req", "items", "t", "g");
        assert!(
            v["Data"]["req"].get("Body").is_none(),
            "Body is omitted when empty"
        );

        let bin = HttpRequestData {
            content_type: Some("application/octet-stream"),
            body: &[0, 1, 2],
            ..empty
        };
        let v = request_payload(&bin, "req", "items", "t", "g");
        assert_eq!(v["Data"]["req"]["Body"], "AAEC");
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
