//! An invocation's RabbitMQ outputs: once the handler answered, each value it
//! gave a `rabbitMQ` output binding (`Outputs.{name}`, or `ReturnValue` for
//! `$return`) is published to the binding's queue and confirmed by the broker
//! before the invocation counts as succeeded. A publish that fails (broker down,
//! no such queue, no confirmation within the deadline) fails the invocation:
//! an HTTP function answers 500 and its record says why; a timer run is
//! retried by its retry policy.

use serde_json::Value;
use strom_messaging::messages_of;
use strom_proto::ids::AppName;
use strom_proto::invocations::{InvocationRecord, InvocationStatus, LogEntry};
use strom_proto::manifest::rabbitmq::{is_output_type, PackageMessaging, CA_SETTING};
use strom_proto::manifest::FunctionManifest;

use super::Gateway;

/// The names of `function`'s RabbitMQ output bindings (the values to keep from
/// its handler's answer).
pub(super) fn message_outputs(function: &FunctionManifest) -> Vec<&str> {
    function
        .bindings
        .iter()
        .filter(|b| is_output_type(&b.binding_type))
        .map(|b| b.name.as_str())
        .collect()
}

impl Gateway {
    /// The settings of `app` as this node runs it (none if it runs no instance).
    pub(super) fn settings_of(&self, app: &AppName) -> std::collections::BTreeMap<String, String> {
        self.inner
            .view
            .borrow()
            .runs
            .get(app)
            .map(|r| r.settings.clone())
            .unwrap_or_default()
    }

    /// Publishes `values` (one per name of `names`) and records what was sent;
    /// on a failure the record fails and the error is returned.
    pub(super) async fn send_outputs(
        &self,
        app: &AppName,
        messaging: &PackageMessaging,
        names: &[&str],
        values: Vec<Value>,
        record: &mut InvocationRecord,
    ) -> Result<(), String> {
        let sent = self
            .publish_outputs(app, messaging, &record.function, names, values, &record.id)
            .await;
        let host = |text: String| LogEntry {
            source: "host".into(),
            text,
        };
        match sent {
            Ok(lines) => {
                record.logs.extend(lines.into_iter().map(host));
                Ok(())
            }
            Err(e) => {
                record.status = InvocationStatus::Failed;
                record.http_status = 500;
                record.error = Some(e.clone());
                Err(e)
            }
        }
    }

    async fn publish_outputs(
        &self,
        app: &AppName,
        messaging: &PackageMessaging,
        function: &str,
        names: &[&str],
        values: Vec<Value>,
        invocation_id: &str,
    ) -> Result<Vec<String>, String> {
        let mut lines = Vec::new();
        let mut settings = None;
        for (name, value) in names.iter().zip(values) {
            let messages = messages_of(&value);
            if messages.is_empty() {
                continue;
            }
            let Some(spec) = messaging
                .outputs_of(function)
                .iter()
                .find(|b| b.binding_name.eq_ignore_ascii_case(name))
            else {
                return Err(format!(
                    "output `{name}` (rabbitMQ): its queue and connection could not be read \
                     from the package on this worker"
                ));
            };
            let settings = settings.get_or_insert_with(|| self.settings_of(app));
            let queue = &spec.queue_name;
            let endpoint = spec
                .connection
                .resolve(settings)
                .map_err(|(field, why)| format!("output `{name}` (rabbitMQ) {field}: {why}"))?;
            let ca = settings.get(CA_SETTING).map(String::as_str);
            self.inner
                .publisher
                .publish(&endpoint, ca, queue, invocation_id, &messages)
                .await
                .map_err(|e| format!("output `{name}` to rabbitMQ queue `{queue}`: {e}"))?;
            metrics::counter!("strom_rabbitmq_published_total", "app" => app.to_string())
                .increment(messages.len() as u64);
            lines.push(format!(
                "output `{name}`: {} message(s) to rabbitMQ queue `{queue}` on {endpoint}, confirmed",
                messages.len()
            ));
        }
        Ok(lines)
    }
}
