//! Kubernetes JSON → the policy model, failing closed.
//!
//! A NetworkPolicy that does not validate cannot be enforced as written. Leaving it out
//! would silently open whatever it was meant to close, so it becomes a
//! [`BrokenPolicy`]: the pods it would select are isolated in the directions it names,
//! with nothing admitted by it. When the selector itself is unusable, the whole
//! namespace is isolated.

use serde_json::{Value, json};
use twill_manifest::{Decoded, decode_value};
use twill_model::{NetworkPolicy, Object, ObjectKey};
use twill_netpol::BrokenPolicy;

/// A policy that could not be decoded, with the message naming source, object and field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub message: String,
    pub fail_closed: BrokenPolicy,
}

fn key_of(value: &Value) -> ObjectKey {
    let meta = value.get("metadata");
    let ns = meta
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let name = meta
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("");
    ObjectKey::new(ns, name)
}

/// Decode and describe failures as `object: field: message; ...` (the manifest crate's
/// error type is not exported, so it is read field by field here).
fn decode(value: &Value) -> Result<NetworkPolicy, String> {
    match decode_value(value) {
        Ok(Decoded::Object(Object::NetworkPolicy(p))) => Ok(p),
        Ok(_) => Err("not a NetworkPolicy".into()),
        Err(e) => {
            let object = e.object.clone().unwrap_or_else(|| "NetworkPolicy".into());
            if e.errors.is_empty() {
                Err(format!("{object}: {}", e.message))
            } else {
                let fields: Vec<String> = e.errors.iter().map(|f| f.to_string()).collect();
                Err(format!("{object}: {}", fields.join("; ")))
            }
        }
    }
}

/// Decode one NetworkPolicy object; `source` names where it came from (a file).
pub fn policy_from_json(source: &str, value: &Value) -> Result<NetworkPolicy, Box<Rejected>> {
    match decode(value) {
        Ok(p) => Ok(p),
        Err(e) => {
            let message = format!("{source}: {e}");
            let mut broken = fail_closed(value);
            broken.reason = message.clone();
            Err(Box::new(Rejected {
                message,
                fail_closed: broken,
            }))
        }
    }
}

/// The fail-closed stand-in for an invalid policy.
fn fail_closed(value: &Value) -> BrokenPolicy {
    let key = key_of(value);
    let spec = value.get("spec");
    // The selector alone, checked by the same validation as a whole policy.
    let probe = json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": if key.name.is_empty() { "invalid" } else { &key.name }, "namespace": key.namespace},
        "spec": {"podSelector": spec.and_then(|s| s.get("podSelector")).cloned().unwrap_or(json!({}))},
    });
    let pod_selector = decode(&probe).ok().map(|p| p.pod_selector);
    let types = spec.and_then(|s| s.get("policyTypes"));
    let egress_rules = spec
        .and_then(|s| s.get("egress"))
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty());
    let (ingress, egress) = match types.and_then(Value::as_array) {
        None => (true, egress_rules),
        Some(list) if list.is_empty() => (true, egress_rules),
        Some(list) => {
            let names: Vec<Option<&str>> = list.iter().map(Value::as_str).collect();
            if names
                .iter()
                .all(|n| matches!(n, Some("Ingress") | Some("Egress")))
            {
                (
                    names.contains(&Some("Ingress")),
                    names.contains(&Some("Egress")),
                )
            } else {
                // Unreadable types: close both directions.
                (true, true)
            }
        }
    };
    BrokenPolicy {
        key,
        pod_selector,
        ingress,
        egress,
        reason: String::new(),
    }
}
