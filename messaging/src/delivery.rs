//! A delivered message as a custom handler sees it, and what happens to one
//! whose invocations failed — as pure functions.
//!
//! `Data.{name}` is the body: a JSON value when it parses as JSON, else a string
//! when it is UTF-8, else its base64. `Metadata` holds the delivery facts under
//! Azure's names (`ConsumerTag`, `DeliveryTag`, `Redelivered`, `Exchange`,
//! `RoutingKey`, `BasicProperties`).

use base64::Engine;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::BasicProperties;
use serde_json::{json, Map, Value};
use strom_proto::manifest::RetryPolicy;

/// Attempts of a message when its function has no retry policy (Azure's).
pub const DEFAULT_ATTEMPTS: u32 = 5;
/// The pause between those attempts.
pub const DEFAULT_RETRY_DELAY_MS: u64 = 1000;

/// The body as the handler gets it.
pub fn body_value(body: &[u8]) -> Value {
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        return v;
    }
    match std::str::from_utf8(body) {
        Ok(s) => Value::String(s.to_string()),
        Err(_) => Value::String(base64::engine::general_purpose::STANDARD.encode(body)),
    }
}

/// An AMQP field value as JSON (byte strings as text when UTF-8, else base64).
pub fn amqp_json(v: &AMQPValue) -> Value {
    let bytes = |b: &[u8]| match std::str::from_utf8(b) {
        Ok(s) => Value::String(s.to_string()),
        Err(_) => Value::String(base64::engine::general_purpose::STANDARD.encode(b)),
    };
    match v {
        AMQPValue::Boolean(b) => json!(b),
        AMQPValue::ShortShortInt(n) => json!(n),
        AMQPValue::ShortShortUInt(n) => json!(n),
        AMQPValue::ShortInt(n) => json!(n),
        AMQPValue::ShortUInt(n) => json!(n),
        AMQPValue::LongInt(n) => json!(n),
        AMQPValue::LongUInt(n) => json!(n),
        AMQPValue::LongLongInt(n) => json!(n),
        AMQPValue::Float(n) => json!(n),
        AMQPValue::Double(n) => json!(n),
        AMQPValue::DecimalValue(d) => json!(f64::from(d.value) / 10f64.powi(i32::from(d.scale))),
        AMQPValue::ShortString(s) => json!(s.as_str()),
        AMQPValue::LongString(s) => bytes(s.as_bytes()),
        AMQPValue::FieldArray(a) => Value::Array(a.as_slice().iter().map(amqp_json).collect()),
        AMQPValue::Timestamp(t) => json!(t),
        AMQPValue::FieldTable(t) => table_json(t),
        AMQPValue::ByteArray(b) => bytes(b.as_slice()),
        AMQPValue::Void => Value::Null,
    }
}

fn table_json(t: &FieldTable) -> Value {
    Value::Object(
        t.inner()
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), amqp_json(v)))
            .collect(),
    )
}

/// What the broker said of one delivery.
pub struct DeliveryFacts<'a> {
    pub consumer_tag: &'a str,
    pub delivery_tag: u64,
    pub redelivered: bool,
    pub exchange: &'a str,
    pub routing_key: &'a str,
    pub properties: &'a BasicProperties,
}

/// `Metadata` of a delivery (without `sys`, which the gateway adds).
pub fn metadata(d: &DeliveryFacts<'_>) -> Map<String, Value> {
    let p = d.properties;
    let s = |v: &Option<ShortString>| v.as_ref().map(|s| s.as_str().to_string());
    let mut props = Map::new();
    let mut put = |k: &str, v: Value| {
        if !v.is_null() {
            props.insert(k.to_string(), v);
        }
    };
    put("ContentType", json!(s(p.content_type())));
    put("ContentEncoding", json!(s(p.content_encoding())));
    put(
        "Headers",
        p.headers().as_ref().map(table_json).unwrap_or(Value::Null),
    );
    put("DeliveryMode", json!(p.delivery_mode()));
    put("Priority", json!(p.priority()));
    put("CorrelationId", json!(s(p.correlation_id())));
    put("ReplyTo", json!(s(p.reply_to())));
    put("Expiration", json!(s(p.expiration())));
    put("MessageId", json!(s(p.message_id())));
    put(
        "Timestamp",
        p.timestamp()
            .map(|t| json!({ "UnixTime": t }))
            .unwrap_or(Value::Null),
    );
    put("Type", json!(s(p.kind())));
    put("UserId", json!(s(p.user_id())));
    put("AppId", json!(s(p.app_id())));
    let mut m = Map::new();
    m.insert("ConsumerTag".into(), json!(d.consumer_tag));
    m.insert("DeliveryTag".into(), json!(d.delivery_tag));
    m.insert("Redelivered".into(), json!(d.redelivered));
    m.insert("Exchange".into(), json!(d.exchange));
    m.insert("RoutingKey".into(), json!(d.routing_key));
    m.insert("BasicProperties".into(), Value::Object(props));
    m
}

/// What to do after attempt `attempt` (1 = the first) of a message failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    /// Try again after this many milliseconds.
    Retry { delay_ms: u64 },
    /// No more attempts: to the poison queue (or the dead-letter exchange).
    Poison,
}

/// The function's retry policy decides (`maxRetryCount` retries after the
/// first attempt, -1 forever); without one, [`DEFAULT_ATTEMPTS`] attempts a
/// second apart.
pub fn after_failure(policy: Option<&RetryPolicy>, attempt: u32) -> AfterFailure {
    match policy {
        Some(p) => match p.delay_before(attempt) {
            Some(delay_ms) => AfterFailure::Retry { delay_ms },
            None => AfterFailure::Poison,
        },
        None if attempt < DEFAULT_ATTEMPTS => AfterFailure::Retry {
            delay_ms: DEFAULT_RETRY_DELAY_MS,
        },
        None => AfterFailure::Poison,
    }
}

/// Azure's `Metadata.RetryContext` for attempt `attempt` (1 = the first) when
/// the function has a retry policy: `RetryCount` (0 on the first attempt),
/// `MaxRetryCount`, and `Exception` (`{"Message": why the previous attempt
/// failed}`, null on the first). Without a policy, none, as Azure sends it.
pub fn retry_context(
    policy: Option<&RetryPolicy>,
    attempt: u32,
    last_error: Option<&str>,
) -> Option<Value> {
    let policy = policy?;
    Some(json!({
        "RetryCount": attempt.saturating_sub(1),
        "MaxRetryCount": policy.max_retry_count,
        "Exception": last_error.map(|e| json!({"Message": e})),
    }))
}

/// The poison queue of `queue`.
pub fn poison_queue(queue: &str) -> String {
    format!("{queue}-poison")
}

/// The headers a poisoned message gets besides its own: which function gave
/// up on it, its last invocation, how many attempts, and why.
pub fn poison_headers(
    own: Option<&FieldTable>,
    function: &str,
    invocation_id: &str,
    attempts: u32,
    error: &str,
) -> FieldTable {
    let mut t = own.cloned().unwrap_or_default();
    let text = |s: &str| AMQPValue::LongString(s.as_bytes().to_vec().into());
    t.insert("x-strom-function".into(), text(function));
    t.insert("x-strom-invocation-id".into(), text(invocation_id));
    t.insert(
        "x-strom-attempts".into(),
        AMQPValue::LongLongInt(i64::from(attempts)),
    );
    // AMQP short strings cap header names, not values; errors are kept short anyway.
    let error: String = error.chars().take(2000).collect();
    t.insert("x-strom-error".into(), text(&error));
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use strom_proto::manifest::RetryStrategy;

    #[test]
    fn bodies_are_json_then_text_then_base64() {
        assert_eq!(body_value(br#"{"id":7}"#), json!({"id": 7}));
        assert_eq!(body_value(b"42"), json!(42));
        assert_eq!(body_value(b"hello there"), json!("hello there"));
        assert_eq!(body_value(&[0xff, 0x00, 0x01]), json!("/wAB"));
        assert_eq!(body_value(b""), json!(""));
    }

    #[test]
    fn metadata_uses_azure_names_and_only_the_properties_set() {
        let mut headers = FieldTable::default();
        headers.insert(
            "tenant".into(),
            AMQPValue::LongString(b"acme".to_vec().into()),
        );
        headers.insert("n".into(), AMQPValue::LongInt(3));
        let props = BasicProperties::default()
            .with_message_id("m-1".into())
            .with_correlation_id("c-1".into())
            .with_content_type("application/json".into())
            .with_timestamp(1_700_000_000)
            .with_headers(headers);
        let m = metadata(&DeliveryFacts {
            consumer_tag: "strom-1",
            delivery_tag: 9,
            redelivered: true,
            exchange: "",
            routing_key: "orders",
            properties: &props,
        });
        assert_eq!(
            Value::Object(m),
            json!({
                "ConsumerTag": "strom-1", "DeliveryTag": 9, "Redelivered": true,
                "Exchange": "", "RoutingKey": "orders",
                "BasicProperties": {
                    "MessageId": "m-1", "CorrelationId": "c-1",
                    "ContentType": "application/json",
                    "Timestamp": {"UnixTime": 1_700_000_000u64},
                    "Headers": {"tenant": "acme", "n": 3}
                }
            })
        );
    }

    #[test]
    fn failures_follow_the_retry_policy_or_azures_five_attempts() {
        let steps: Vec<AfterFailure> = (1..=5).map(|a| after_failure(None, a)).collect();
        assert_eq!(steps[..4], [AfterFailure::Retry { delay_ms: 1000 }; 4]);
        assert_eq!(steps[4], AfterFailure::Poison);
        let fixed = RetryPolicy {
            strategy: RetryStrategy::FixedDelay { delay_ms: 50 },
            max_retry_count: 2,
        };
        assert_eq!(
            after_failure(Some(&fixed), 2),
            AfterFailure::Retry { delay_ms: 50 }
        );
        assert_eq!(after_failure(Some(&fixed), 3), AfterFailure::Poison);
        let none = RetryPolicy {
            max_retry_count: 0,
            ..fixed.clone()
        };
        assert_eq!(after_failure(Some(&none), 1), AfterFailure::Poison);
        let forever = RetryPolicy {
            max_retry_count: -1,
            ..fixed
        };
        assert_eq!(
            after_failure(Some(&forever), 1000),
            AfterFailure::Retry { delay_ms: 50 }
        );
    }

    #[test]
    fn poison_headers_keep_the_messages_own_and_say_why() {
        let mut own = FieldTable::default();
        own.insert(
            "tenant".into(),
            AMQPValue::LongString(b"acme".to_vec().into()),
        );
        let h = poison_headers(
            Some(&own),
            "process",
            "inv-1",
            5,
            "the handler answered HTTP 500",
        );
        let j = table_json(&h);
        assert_eq!(j["tenant"], "acme");
        assert_eq!(j["x-strom-function"], "process");
        assert_eq!(j["x-strom-invocation-id"], "inv-1");
        assert_eq!(j["x-strom-attempts"], 5);
        assert_eq!(j["x-strom-error"], "the handler answered HTTP 500");
        assert_eq!(poison_queue("orders"), "orders-poison");
    }

    #[test]
    fn a_retry_context_only_with_a_policy_counting_retries() {
        assert_eq!(retry_context(None, 2, Some("boom")), None);
        let policy = RetryPolicy {
            strategy: RetryStrategy::FixedDelay { delay_ms: 50 },
            max_retry_count: 3,
        };
        assert_eq!(
            retry_context(Some(&policy), 1, None),
            Some(json!({"RetryCount": 0, "MaxRetryCount": 3, "Exception": null}))
        );
        assert_eq!(
            retry_context(Some(&policy), 3, Some("HTTP 500")),
            Some(
                json!({"RetryCount": 2, "MaxRetryCount": 3, "Exception": {"Message": "HTTP 500"}})
            )
        );
    }
}
