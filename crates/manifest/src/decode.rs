//! One JSON value → one model object, by `apiVersion` and `kind`.

use serde::de::DeserializeOwned;
use serde_json::Value;
use twill_model::Object;
use twill_model::k8s::{self, FieldError};

/// What a value turned out to be.
#[allow(clippy::large_enum_variant)] // Short-lived; unpacked at once by the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    Object(Object),
    /// A kind that is accepted but not modelled (ConfigMap).
    Ignored {
        kind: String,
    },
    /// `kind: List` (or any `*List`): its items, to decode one by one.
    List(Vec<Value>),
}

/// Why a value could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// `Service shop/web` when the value has a kind and a name.
    pub object: Option<String>,
    /// Field problems; empty when `message` says it all.
    pub errors: Vec<FieldError>,
    pub message: String,
    /// An unknown kind (a warning, not an error).
    pub unknown_kind: bool,
}

fn describe(kind: &str, value: &Value, namespaced: bool) -> Option<String> {
    let meta = value.get("metadata");
    let name = meta.and_then(|m| m.get("name")).and_then(Value::as_str)?;
    let ns = meta
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    Some(if namespaced {
        format!("{kind} {ns}/{name}")
    } else {
        format!("{kind} {name}")
    })
}

fn typed<T: DeserializeOwned>(value: &Value) -> Result<T, FieldError> {
    serde_path_to_error::deserialize(value).map_err(|e| FieldError {
        path: e.path().to_string().trim_start_matches('.').to_string(),
        message: e.inner().to_string(),
    })
}

fn convert<T: DeserializeOwned, M>(
    value: &Value,
    from: fn(&T) -> Result<M, Vec<FieldError>>,
    wrap: fn(M) -> Object,
) -> Result<Object, Vec<FieldError>> {
    let t: T = typed(value).map_err(|e| {
        // The root path `.` means the value as a whole.
        vec![if e.path == "." {
            FieldError {
                path: String::new(),
                ..e
            }
        } else {
            e
        }]
    })?;
    from(&t).map(wrap)
}

/// Decode one Kubernetes object given as JSON.
/// The API server's cap on an object's annotations, keys and values together
/// (apimachinery's `TotalAnnotationSizeLimitB`).
pub const MAX_ANNOTATIONS_BYTES: usize = 256 << 10;

fn annotations_size(value: &Value) -> Option<usize> {
    let a = value.get("metadata")?.get("annotations")?.as_object()?;
    Some(
        a.iter()
            .map(|(k, v)| k.len() + v.as_str().map_or(0, str::len))
            .sum(),
    )
}

pub fn decode_value(value: &Value) -> Result<Decoded, DecodeError> {
    let fail = |message: String| DecodeError {
        object: None,
        errors: vec![],
        message,
        unknown_kind: false,
    };
    let Some(map) = value.as_object() else {
        return Err(fail(format!(
            "expected a Kubernetes object (a mapping), found {}",
            kind_of_json(value)
        )));
    };
    let kind = match map.get("kind") {
        Some(Value::String(k)) if !k.is_empty() => k.as_str(),
        Some(_) => return Err(fail("kind: must be a non-empty string".into())),
        None => return Err(fail("kind: required field is missing".into())),
    };
    let api_version = map.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    if kind == "List" || (kind.ends_with("List") && map.get("items").is_some()) {
        return match map.get("items") {
            Some(Value::Array(items)) => Ok(Decoded::List(items.clone())),
            None | Some(Value::Null) => Ok(Decoded::List(vec![])),
            Some(_) => Err(fail("items: must be a list".into())),
        };
    }
    let expected = match kind {
        "Namespace" | "Node" | "Pod" | "Service" | "ConfigMap" => "v1",
        "EndpointSlice" => "discovery.k8s.io/v1",
        "Deployment" | "ReplicaSet" | "DaemonSet" => "apps/v1",
        "NetworkPolicy" | "ServiceCIDR" => "networking.k8s.io/v1",
        "ClusterNetworkPolicy" => k8s::CNP_API_VERSION,
        _ => {
            return Err(DecodeError {
                object: describe(kind, value, true),
                errors: vec![],
                message: format!("unsupported kind {kind:?} ({api_version}) ignored"),
                unknown_kind: true,
            });
        }
    };
    let namespaced = !matches!(
        kind,
        "Namespace" | "Node" | "ServiceCIDR" | "ClusterNetworkPolicy"
    );
    let object = describe(kind, value, namespaced).or_else(|| Some(kind.to_string()));
    if api_version != expected {
        return Err(DecodeError {
            object,
            errors: vec![FieldError {
                path: "apiVersion".into(),
                message: format!("{api_version:?} is not supported for {kind}; use {expected:?}"),
            }],
            message: String::new(),
            unknown_kind: false,
        });
    }
    if let Some(size) = annotations_size(value)
        && size > MAX_ANNOTATIONS_BYTES
    {
        return Err(DecodeError {
            object,
            errors: vec![FieldError {
                path: "metadata.annotations".into(),
                message: format!(
                    "{size} bytes of keys and values: the API server's limit is {MAX_ANNOTATIONS_BYTES} (256 KiB) in total"
                ),
            }],
            message: String::new(),
            unknown_kind: false,
        });
    }
    use k8s_openapi::api::{
        apps::v1 as apps, core::v1 as core, discovery::v1 as disc, networking::v1 as net,
    };
    let result = match kind {
        "ConfigMap" => return Ok(Decoded::Ignored { kind: kind.into() }),
        "Namespace" => {
            convert::<core::Namespace, _>(value, k8s::namespace_from_k8s, Object::Namespace)
        }
        "Node" => convert::<core::Node, _>(value, k8s::node_from_k8s, Object::Node),
        "Pod" => convert::<core::Pod, _>(value, k8s::pod_from_k8s, Object::Pod),
        "Service" => convert::<core::Service, _>(value, k8s::service_from_k8s, Object::Service),
        "EndpointSlice" => convert::<disc::EndpointSlice, _>(
            value,
            k8s::endpoint_slice_from_k8s,
            Object::EndpointSlice,
        ),
        "Deployment" => {
            convert::<apps::Deployment, _>(value, k8s::deployment_from_k8s, Object::Workload)
        }
        "ReplicaSet" => {
            convert::<apps::ReplicaSet, _>(value, k8s::replica_set_from_k8s, Object::Workload)
        }
        "DaemonSet" => {
            convert::<apps::DaemonSet, _>(value, k8s::daemon_set_from_k8s, Object::Workload)
        }
        "NetworkPolicy" => convert::<net::NetworkPolicy, _>(
            value,
            k8s::network_policy_from_k8s,
            Object::NetworkPolicy,
        ),
        "ServiceCIDR" => {
            convert::<net::ServiceCIDR, _>(value, k8s::service_cidr_from_k8s, Object::ServiceCidr)
        }
        "ClusterNetworkPolicy" => convert::<k8s::ClusterNetworkPolicyJson, _>(
            value,
            k8s::cnp_from_k8s,
            Object::ClusterNetworkPolicy,
        ),
        _ => unreachable!("kinds matched above"),
    };
    result.map(Decoded::Object).map_err(|errors| DecodeError {
        object,
        errors,
        message: String::new(),
        unknown_kind: false,
    })
}

fn kind_of_json(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}
