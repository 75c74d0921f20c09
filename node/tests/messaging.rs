//! RabbitMQ outputs through the `strom` binary against a real broker
//! (`STROM_RABBITMQ_URL`; CI starts one with `.ci/rabbitmq`): the example app
//! `examples/rabbitmq-orders` unchanged but for its queue names and broker,
//! its messages read back with a plain AMQP client.

// Unix only: the example's handler is `python3` (docs/windows.md).
#![cfg(unix)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::{examples, http, Up};
use strom_testkit::broker::{rabbitmq_or_skip, Broker};

/// A copy of the example app whose queues carry `suffix` (tests share the
/// broker) and whose `RabbitMQConnection` is `url`; with `consume`, with its
/// RabbitMQ trigger.
fn orders_app(dir: &Path, suffix: &str, url: &str, consume: bool) {
    orders_app_with(dir, suffix, url, consume, &[]);
}

/// [`orders_app`] with more settings.
fn orders_app_with(dir: &Path, suffix: &str, url: &str, consume: bool, more: &[(&str, &str)]) {
    let src = examples().join("rabbitmq-orders");
    let mut entries = vec![
        "host.json",
        "handler.py",
        "order/function.json",
        "nightly-report/function.json",
    ];
    if consume {
        entries.push("process-order/function.json");
    }
    for entry in entries {
        let to = dir.join(entry);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        let text = std::fs::read_to_string(src.join(entry)).unwrap();
        let text = text
            .replace(
                "\"queueName\": \"orders\"",
                &format!("\"queueName\": \"orders-{suffix}\""),
            )
            .replace(
                "\"queueName\": \"reports\"",
                &format!("\"queueName\": \"reports-{suffix}\""),
            )
            .replace(
                "\"queueName\": \"processed\"",
                &format!("\"queueName\": \"processed-{suffix}\""),
            );
        std::fs::write(to, text).unwrap();
    }
    let mut values =
        serde_json::json!({"FUNCTIONS_WORKER_RUNTIME": "custom", "RabbitMQConnection": url});
    for (k, v) in more {
        values[*k] = serde_json::json!(v);
    }
    let settings = serde_json::json!({"IsEncrypted": false, "Values": values});
    std::fs::write(dir.join("local.settings.json"), settings.to_string()).unwrap();
}

/// The first `n` messages of `queue` (within 30 s), sorted.
fn processed_in(broker: &Broker, queue: &str, n: usize) -> Vec<String> {
    let mut done = Vec::new();
    strom_testkit::eventually(Duration::from_secs(30), "orders processed", || {
        done.extend(broker.drain(queue).into_iter().map(|g| g.text()));
        (done.len() >= n).then_some(())
    });
    done.sort();
    done
}

fn suffix() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    )
}

#[test]
fn t_mq1_outputs_are_published_confirmed_and_a_failed_publish_fails_the_invocation() {
    let Some(url) = rabbitmq_or_skip("t_mq1") else {
        return;
    };
    let broker = Broker::connect(&url);
    let password = broker.endpoint.password().to_string();
    let s = suffix();
    let (orders, reports) = (format!("orders-{s}"), format!("reports-{s}"));
    let data = tempfile::tempdir().unwrap();
    let apps = tempfile::tempdir().unwrap();
    let app = apps.path().join("shop");
    orders_app(&app, &s, &url, false);
    let up = Up::start(data.path(), &[&app], &[]);

    // No queue yet: the broker returns the message, and the client hears so.
    let r = http("POST", &up.http, "/api/orders", &[], br#"{"id":1}"#);
    assert_eq!(r.status, 500, "{}", r.text());
    assert!(
        r.text().contains(&format!("no queue `{orders}`")) && r.text().contains("NO_ROUTE"),
        "{}",
        r.text()
    );
    assert!(
        !r.text().contains(&password),
        "the password leaked: {}",
        r.text()
    );

    // With the queue: an array is one message per item, persistent, confirmed
    // before the 202.
    broker.declare(&orders);
    broker.declare(&reports);
    let r = http(
        "POST",
        &up.http,
        "/api/orders",
        &[],
        br#"[{"id":1},{"id":2},"three"]"#,
    );
    assert_eq!((r.status, r.text().as_str()), (202, r#"{"queued": 3}"#));
    let got = broker.drain(&orders);
    let bodies: Vec<String> = got.iter().map(|g| g.text()).collect();
    assert_eq!(bodies, vec![r#"{"id":1}"#, r#"{"id":2}"#, "three"]);
    assert!(got.iter().all(|g| g.properties.delivery_mode() == &Some(2)));
    let types: Vec<String> = got
        .iter()
        .map(|g| g.properties.content_type().as_ref().unwrap().to_string())
        .collect();
    assert_eq!(types[0], "application/json");
    assert_eq!(types[2], "text/plain; charset=utf-8");
    // One invocation: one correlation id, the message ids numbered.
    let correlation = got[0].properties.correlation_id().clone().unwrap();
    assert!(got
        .iter()
        .all(|g| g.properties.correlation_id().as_ref() == Some(&correlation)));
    assert_eq!(
        got[2].properties.message_id().as_ref().unwrap().to_string(),
        format!("{}:2", correlation.as_str())
    );

    // A timer function's return value, run now.
    let out = up.strom(&["fn", "invoke", "shop", "nightly-report"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let report = broker.get(&reports).expect("the report message");
    assert!(
        report.text().contains(r#""report":"nightly""#),
        "{}",
        report.text()
    );

    // The records say what was sent, and what failed (records land a moment
    // after the answer).
    let sent = format!("3 message(s) to rabbitMQ queue `{orders}`");
    strom_testkit::eventually(Duration::from_secs(10), "both records", || {
        let logs = up.strom(&["fn", "logs", "shop", "order"]).stdout;
        (logs.contains(&sent) && logs.contains("NO_ROUTE")).then_some(())
    });

    // The broker unreachable: the invocation fails naming where, not how to log in.
    let closed = strom_testkit::ports::free_port();
    let set = up.strom(&[
        "app",
        "settings",
        "set",
        "shop",
        &format!("RabbitMQConnection=amqp://strom:{password}@127.0.0.1:{closed}/"),
    ]);
    assert_eq!(set.code, 0, "{}", set.stderr);
    let r = strom_testkit::eventually(
        std::time::Duration::from_secs(30),
        "the new setting",
        || {
            let r = http("POST", &up.http, "/api/orders", &[], br#"{"id":4}"#);
            (r.status == 500 && r.text().contains("connection refused")).then_some(r)
        },
    );
    assert!(
        r.text()
            .contains(&format!("connection refused to 127.0.0.1:{closed}")),
        "{}",
        r.text()
    );
    assert!(
        !r.text().contains(&password),
        "the password leaked: {}",
        r.text()
    );
    let logs = strom_testkit::eventually(Duration::from_secs(10), "the failed record", || {
        let logs = up.strom(&["fn", "logs", "shop", "order"]).stdout;
        logs.contains("connection refused to").then_some(logs)
    });
    assert!(!logs.contains(&password), "the password leaked: {logs}");
    assert!(broker.get(&orders).is_none(), "nothing was published");

    broker.delete(&orders);
    broker.delete(&reports);
    up.stop();
}

#[test]
fn t_mq2_bad_bindings_are_refused_at_deploy_and_change_nothing() {
    // No broker needed: the deploy check reads the package and the settings.
    let data = tempfile::tempdir().unwrap();
    let apps = tempfile::tempdir().unwrap();
    let app = apps.path().join("shop");
    orders_app(&app, "bad", "amqp://u:secret-pw@127.0.0.1:5672/", false);
    let up = Up::start(data.path(), &[&app], &[]);
    let active = up.json(&["app", "show", "shop"])["app"]["active_version"].clone();

    let bad = apps.path().join("bad").join("shop");
    orders_app(&bad, "bad", "amqp://u:secret-pw@127.0.0.1:5672/", false);
    let f = bad.join("order/function.json");
    let text = std::fs::read_to_string(&f).unwrap();
    std::fs::write(
        &f,
        text.replace("\"orders-bad\"", "\"\"")
            .replace("RabbitMQConnection", "NoSuchSetting"),
    )
    .unwrap();
    std::fs::write(
        bad.join("host.json"),
        std::fs::read_to_string(bad.join("host.json"))
            .unwrap()
            .replace("\"prefetchCount\": 30", "\"prefetchCount\": -1"),
    )
    .unwrap();
    // A malformed URI in the setting a binding names.
    let timer = bad.join("nightly-report/function.json");
    let text = std::fs::read_to_string(&timer).unwrap();
    std::fs::write(&timer, text.replace("RabbitMQConnection", "BadUri")).unwrap();
    let settings = serde_json::json!({
        "IsEncrypted": false,
        "Values": {"BadUri": "amqp://u:secret-pw@127.0.0.1:99999/"},
    });
    std::fs::write(bad.join("local.settings.json"), settings.to_string()).unwrap();
    let out = up.strom(&[
        "app",
        "deploy",
        bad.to_str().unwrap(),
        "--publish-local-settings",
    ]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    for expected in [
        "order/function.json: bindings[2].queueName: must not be empty",
        "order/function.json: bindings[2].connectionStringSetting: `NoSuchSetting` names no app setting",
        "nightly-report/function.json: bindings[1].connectionStringSetting: the app setting `BadUri` is not an AMQP URI",
        "host.json: extensions.rabbitMQ.prefetchCount: -1 is out of range",
    ] {
        assert!(out.stderr.contains(expected), "missing `{expected}` in:\n{}", out.stderr);
    }
    assert!(
        !out.stderr.contains("secret-pw"),
        "the password leaked: {}",
        out.stderr
    );
    assert_eq!(
        up.json(&["app", "show", "shop"])["app"]["active_version"],
        active,
        "the previous version stays active"
    );

    // A settings change that would leave the running version's connections
    // without a broker is refused the same way, and changes nothing.
    let before = up.strom(&["app", "settings", "get", "shop"]).stdout;
    let out = up.strom(&["app", "settings", "unset", "shop", "RabbitMQConnection"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    for expected in [
        "function `order`: its rabbitMQ output `outOrder`'s connectionStringSetting: `RabbitMQConnection` names no app setting",
        "function `nightly-report`: its rabbitMQ output",
    ] {
        assert!(out.stderr.contains(expected), "missing `{expected}` in:\n{}", out.stderr);
    }
    let out = up.strom(&[
        "app",
        "settings",
        "set",
        "shop",
        "RabbitMQConnection=http://u:secret-pw@127.0.0.1/",
    ]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("the app setting `RabbitMQConnection` is not an AMQP URI"),
        "{}",
        out.stderr
    );
    assert!(
        !out.stderr.contains("secret-pw"),
        "the password leaked: {}",
        out.stderr
    );
    assert_eq!(up.strom(&["app", "settings", "get", "shop"]).stdout, before);
    // Another broker is fine.
    let out = up.strom(&[
        "app",
        "settings",
        "set",
        "shop",
        "RabbitMQConnection=amqp://u:other-pw@127.0.0.1:5673/",
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    up.stop();
}

#[test]
fn t_mq3_a_trigger_acknowledges_after_its_outputs_and_poisons_after_the_last_attempt() {
    let Some(url) = rabbitmq_or_skip("t_mq3") else {
        return;
    };
    let broker = Broker::connect(&url);
    let s = suffix();
    let (orders, processed) = (format!("orders-{s}"), format!("processed-{s}"));
    let poison = format!("{orders}-poison");
    broker.declare(&orders);
    broker.declare(&processed);
    let data = tempfile::tempdir().unwrap();
    let apps = tempfile::tempdir().unwrap();
    let app = apps.path().join("shop");
    orders_app(&app, &s, &url, true);
    let up = Up::start(data.path(), &[&app], &[]);
    let fns = up.json(&["fn", "list", "shop"]);
    let f = fns["functions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "process-order")
        .cloned()
        .unwrap();
    assert_eq!(
        (f["trigger_type"].as_str(), f["queue_name"].as_str()),
        (Some("rabbitMQTrigger"), Some(orders.as_str())),
        "{fns}"
    );

    // Three orders through the HTTP function; the trigger takes each.
    let r = http(
        "POST",
        &up.http,
        "/api/orders",
        &[],
        br#"[{"id":1},{"id":2},{"id":3,"fail":true}]"#,
    );
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(
        processed_in(&broker, &processed, 2),
        vec![r#"{"processed":1}"#, r#"{"processed":2}"#]
    );

    // The failing one: three attempts (its retry policy), then the poison queue
    // with its reasons, and nothing left unacknowledged.
    let bad = strom_testkit::eventually(Duration::from_secs(30), "the poisoned order", || {
        broker.get(&poison)
    });
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&bad.body).unwrap(),
        serde_json::json!({"id": 3, "fail": true})
    );
    let headers = bad.properties.headers().clone().expect("poison headers");
    let header = |k: &str| {
        strom_messaging::delivery::amqp_json(headers.inner().get(k).expect(k)).to_string()
    };
    assert!(header("x-strom-function").contains("process-order"));
    assert!(
        header("x-strom-attempts").contains('3'),
        "{}",
        header("x-strom-attempts")
    );
    assert!(
        header("x-strom-error").contains("HTTP 500"),
        "{}",
        header("x-strom-error")
    );
    assert!(broker.get(&processed).is_none(), "nothing handled twice");

    // Each invocation is in the records, with its trigger.
    let logs = strom_testkit::eventually(Duration::from_secs(10), "the records", || {
        let logs = up.strom(&["fn", "logs", "shop", "process-order"]).stdout;
        (logs.matches("rabbitMQ Succeeded").count() == 2
            && logs.matches("rabbitMQ Failed").count() == 3)
            .then_some(logs)
    });
    assert!(logs.contains("processed order 1"), "{logs}");

    up.stop();
    // Stopped, the node's consumers are gone: a message they held unacknowledged
    // would be back in the queue now.
    assert_eq!(broker.count(&orders), 0, "every message was acknowledged");
    for q in [&orders, &processed, &poison] {
        broker.delete(q);
    }
}

/// A consumer-only copy of the example (its `process-order` trigger), scaled on
/// its queue's depth: from zero, up to `STROM_MAX_SCALE`, back to zero.
fn queue_scaled_app(dir: &Path, suffix: &str, url: &str) {
    orders_app(dir, suffix, url, true);
    // No HTTP function and no timer: a scale-to-zero app may have neither.
    std::fs::remove_dir_all(dir.join("order")).unwrap();
    std::fs::remove_dir_all(dir.join("nightly-report")).unwrap();
    let settings = serde_json::json!({
        "IsEncrypted": false,
        "Values": {
            "FUNCTIONS_WORKER_RUNTIME": "custom",
            "RabbitMQConnection": url,
            "STROM_SCALE_TO_ZERO": "true",
            "STROM_MAX_SCALE": "3",
            "STROM_TARGET_QUEUE_LENGTH": "5",
            "STROM_SCALE_DOWN_COOLDOWN": "00:00:05",
        },
    });
    std::fs::write(dir.join("local.settings.json"), settings.to_string()).unwrap();
}

/// A table's words, without its borders (a cell may wrap).
fn words(table: &str) -> String {
    table
        .split_whitespace()
        .filter(|w| !w.chars().all(|c| "│┌┐└┘─═╞╡".contains(c)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Ready instances of `app` as `app show` lists them.
fn ready_instances(up: &Up, app: &str) -> usize {
    let shown = up.json(&["app", "show", app]);
    shown["instances"]
        .as_array()
        .map(|a| a.iter().filter(|i| i["state"] == "Ready").count())
        .unwrap_or(0)
}

/// The `queue` status of function `name` as `fn list` shows it.
fn queue_status(up: &Up, app: &str, name: &str) -> serde_json::Value {
    let fns = up.json(&["fn", "list", app]);
    fns["functions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == name)
        .map(|f| f["queue"].clone())
        .unwrap_or_default()
}

#[test]
fn t_mq4_a_scale_to_zero_app_follows_its_queue_depth_from_zero_and_back() {
    let Some(url) = rabbitmq_or_skip("t_mq4") else {
        return;
    };
    let broker = Broker::connect(&url);
    let s = suffix();
    let (orders, processed) = (format!("orders-{s}"), format!("processed-{s}"));
    broker.declare(&orders);
    broker.declare(&processed);
    let data = tempfile::tempdir().unwrap();
    let apps = tempfile::tempdir().unwrap();
    let app = apps.path().join("jobs");
    queue_scaled_app(&app, &s, &url);
    let up = Up::start(data.path(), &[&app], &[]);

    // An empty queue: no instance, and the leader says why.
    let status = strom_testkit::eventually(Duration::from_secs(20), "the queue read", || {
        let q = queue_status(&up, "jobs", "process-order");
        (q["ready"] == 0 && q["scale"] == 0).then_some(q)
    });
    assert_eq!(ready_instances(&up, "jobs"), 0, "{status}");
    let list = words(&up.strom(&["fn", "list", "jobs"]).stdout);
    assert!(
        list.contains("ok; no instance (scaled to zero); 0 waiting; scale 0 on queue depth"),
        "{list}"
    );

    // 40 messages: 40 / 5 per instance = 8, capped at STROM_MAX_SCALE = 3.
    for id in 0..40 {
        broker.publish(&orders, format!(r#"{{"id":{id}}}"#).as_bytes());
    }
    let q = strom_testkit::eventually(Duration::from_secs(60), "scale 3 on queue depth", || {
        let q = queue_status(&up, "jobs", "process-order");
        (q["scale"] == 3).then_some(q)
    });
    assert!(q["scale"] == 3, "{q}");
    let mut done = Vec::new();
    strom_testkit::eventually(Duration::from_secs(60), "40 orders processed", || {
        done.extend(broker.drain(&processed).into_iter().map(|g| g.text()));
        (done.len() >= 40).then_some(())
    });
    assert_eq!(done.len(), 40, "each order once: {done:?}");

    // Drained: after the cool-down (5 s), back to zero instances.
    strom_testkit::eventually(Duration::from_secs(60), "back to zero", || {
        let q = queue_status(&up, "jobs", "process-order");
        (q["scale"] == 0 && ready_instances(&up, "jobs") == 0).then_some(())
    });
    // Each message was handled once, by the records too.
    let logs = up
        .strom(&["fn", "logs", "jobs", "process-order", "--tail", "100"])
        .stdout;
    assert_eq!(logs.matches("rabbitMQ Succeeded").count(), 40, "{logs}");
    up.stop();
    assert_eq!(broker.count(&orders), 0);
    for q in [&orders, &processed, &format!("{orders}-poison")] {
        broker.delete(q);
    }
}

#[test]
fn t_mq5_a_trigger_whose_broker_refuses_it_says_why_and_the_app_keeps_serving() {
    let Some(url) = rabbitmq_or_skip("t_mq5") else {
        return;
    };
    let broker = Broker::connect(&url);
    let password = broker.endpoint.password().to_string();
    let s = suffix();
    let data = tempfile::tempdir().unwrap();
    let apps = tempfile::tempdir().unwrap();
    let app = apps.path().join("shop");
    // The right broker, a wrong password.
    let wrong = url.replacen(&format!(":{password}@"), ":not-the-password@", 1);
    assert_ne!(wrong, url, "the test URL carries a password");
    orders_app(&app, &s, &wrong, true);
    let up = Up::start(data.path(), &[&app], &[]);

    let q = strom_testkit::eventually(Duration::from_secs(30), "the trigger's error", || {
        let q = queue_status(&up, "shop", "process-order");
        (!q["errors"].as_array().is_none_or(|e| e.is_empty())).then_some(q)
    });
    assert_eq!(q["consuming"], 0, "{q}");
    let errors = q["errors"].to_string();
    assert!(errors.contains("worker 1: "), "{errors}");
    assert!(errors.contains("refused"), "{errors}");
    assert!(!q["depth_error"].as_str().unwrap_or("").is_empty(), "{q}");
    let list = words(&up.strom(&["fn", "list", "shop"]).stdout);
    assert!(
        list.contains("not consuming: 1 consumer not connected;"),
        "{list}"
    );
    // No secret anywhere it is shown.
    for text in [&list, &q.to_string()] {
        assert!(!text.contains(&password), "the password leaked");
        assert!(!text.contains("not-the-password"), "the password leaked");
    }
    // The rest of the app serves: the HTTP function answers (its publish fails
    // the same way, with the reason).
    let r = http("POST", &up.http, "/api/orders", &[], br#"{"id":1}"#);
    assert_eq!(r.status, 500, "{}", r.text());
    up.stop();
}

#[test]
fn t_mq6_amqps_with_the_apps_ca_publishes_and_consumes_and_without_it_says_why() {
    let Some(url) = rabbitmq_or_skip("t_mq6") else {
        return;
    };
    let Some((tls_url, ca_pem)) = strom_testkit::broker::rabbitmq_tls_or_skip("t_mq6") else {
        return;
    };
    // The plain listener reads back what Strom sent over TLS.
    let broker = Broker::connect(&url);
    let password = broker.endpoint.password().to_string();
    let s = suffix();
    let (orders, processed) = (format!("orders-{s}"), format!("processed-{s}"));
    broker.declare(&orders);
    broker.declare(&processed);
    let data = tempfile::tempdir().unwrap();
    let apps = tempfile::tempdir().unwrap();
    let app = apps.path().join("shop");
    orders_app_with(
        &app,
        &s,
        &tls_url,
        true,
        &[("STROM_RABBITMQ_CA", ca_pem.as_str())],
    );
    let up = Up::start(data.path(), &[&app], &[]);

    // Published over TLS (the HTTP function), consumed over TLS (the trigger),
    // its output published over TLS.
    let r = http(
        "POST",
        &up.http,
        "/api/orders",
        &[],
        br#"[{"id":1},{"id":2}]"#,
    );
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(
        processed_in(&broker, &processed, 2),
        vec![r#"{"processed":1}"#, r#"{"processed":2}"#]
    );
    // The trigger's state comes with the worker's next heartbeat.
    strom_testkit::eventually(Duration::from_secs(30), "consuming on 1 instance", || {
        let q = queue_status(&up, "shop", "process-order");
        (q["consuming"] == 1).then_some(())
    });

    // Without the CA the broker's certificate is not trusted: the publish fails
    // naming why, the trigger says so, and no password shows.
    let unset = up.strom(&["app", "settings", "unset", "shop", "STROM_RABBITMQ_CA"]);
    assert_eq!(unset.code, 0, "{}", unset.stderr);
    let r = strom_testkit::eventually(Duration::from_secs(30), "the untrusted broker", || {
        let r = http("POST", &up.http, "/api/orders", &[], br#"{"id":3}"#);
        (r.status == 500).then_some(r)
    });
    assert!(r.text().contains("certificate"), "{}", r.text());
    let q = strom_testkit::eventually(Duration::from_secs(30), "the trigger's error", || {
        let q = queue_status(&up, "shop", "process-order");
        (q["consuming"] == 0 && q["errors"].to_string().contains("certificate")).then_some(q)
    });
    for text in [
        r.text(),
        q.to_string(),
        up.strom(&["fn", "list", "shop"]).stdout,
    ] {
        assert!(!text.contains(&password), "the password leaked: {text}");
    }
    assert!(broker.get(&orders).is_none(), "nothing was published");
    broker.delete(&orders);
    broker.delete(&processed);
    up.stop();
}
