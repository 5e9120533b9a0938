//! Model → YAML, for showing what the cluster looks like (`cluster render`, the lab's
//! state file that node agents read).

use twill_model::{ClusterState, k8s};

fn doc<T: serde::Serialize>(out: &mut String, v: &T) {
    out.push_str("---\n");
    // Serialising k8s-openapi values cannot fail: no non-string map keys, no NaN.
    out.push_str(&serde_saphyr::to_string(v).expect("k8s objects serialise"));
}

/// The state as multi-document YAML in a stable order, each object in k8s-openapi's
/// field order (apiVersion, kind, metadata, spec, status). What it writes loads back
/// through [`crate::parse_str`] into the same services, pods, slices, nodes,
/// namespaces and network policies (workloads are not written: their pods are).
pub fn render_yaml(state: &ClusterState) -> String {
    let mut out = String::new();
    for n in state.namespaces.values() {
        doc(&mut out, &k8s::namespace_to_k8s(n));
    }
    for n in state.nodes.values() {
        doc(&mut out, &k8s::node_to_k8s(n));
    }
    for s in state.services.values() {
        doc(&mut out, &k8s::service_to_k8s(s));
    }
    for p in state.pods.values() {
        doc(&mut out, &k8s::pod_to_k8s(p));
    }
    for s in state.endpoint_slices.values() {
        doc(&mut out, &k8s::endpoint_slice_to_k8s(s));
    }
    for p in state.network_policies.values() {
        doc(&mut out, &k8s::network_policy_to_k8s(p));
    }
    for c in state.service_cidrs.values() {
        doc(&mut out, &k8s::service_cidr_to_k8s(c));
    }
    for p in state.cluster_network_policies.values() {
        doc(&mut out, &k8s::cnp_to_k8s(p));
    }
    out
}

/// The state as one `v1` `List`, as `kubectl get -o json` prints several objects, in
/// the same order and forms as [`render_yaml`].
pub fn render_json(state: &ClusterState) -> serde_json::Value {
    fn item<T: serde::Serialize>(v: &T) -> serde_json::Value {
        serde_json::to_value(v).expect("k8s objects serialise")
    }
    let mut items = Vec::new();
    items.extend(
        state
            .namespaces
            .values()
            .map(|n| item(&k8s::namespace_to_k8s(n))),
    );
    items.extend(state.nodes.values().map(|n| item(&k8s::node_to_k8s(n))));
    items.extend(
        state
            .services
            .values()
            .map(|s| item(&k8s::service_to_k8s(s))),
    );
    items.extend(state.pods.values().map(|p| item(&k8s::pod_to_k8s(p))));
    items.extend(
        state
            .endpoint_slices
            .values()
            .map(|s| item(&k8s::endpoint_slice_to_k8s(s))),
    );
    items.extend(
        state
            .network_policies
            .values()
            .map(|p| item(&k8s::network_policy_to_k8s(p))),
    );
    items.extend(
        state
            .service_cidrs
            .values()
            .map(|c| item(&k8s::service_cidr_to_k8s(c))),
    );
    items.extend(
        state
            .cluster_network_policies
            .values()
            .map(|p| item(&k8s::cnp_to_k8s(p))),
    );
    serde_json::json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""}, "items": items})
}
