use k8s_openapi::api::core::v1::Node;
use serde_json::json;
use twill_overlay::{BackendKind, LeaseAttrs, Mac};

use super::*;

fn node(v: serde_json::Value) -> NodeLease {
    let n: Node = serde_json::from_value(v).expect("a Node");
    NodeLease::from_k8s(&n)
}

fn vxlan_attrs(ip: [u8; 4], mac: &str) -> LeaseAttrs {
    LeaseAttrs::for_backend(
        BackendKind::Vxlan,
        Ipv4Addr::from(ip),
        None,
        1,
        Some(mac.parse::<Mac>().unwrap()),
        None,
    )
}

/// A Node as another node's agent (or flanneld) leaves it.
fn published(name: &str, cidr: &str, annotations: serde_json::Value) -> NodeLease {
    node(json!({
        "metadata": {"name": name, "annotations": annotations},
        "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
    }))
}

#[test]
fn our_lease_becomes_flannel_annotations_and_reads_back_as_the_same_lease() {
    let attrs = vxlan_attrs([192, 168, 56, 10], "0a:58:0a:f4:00:01");
    let want = lease_annotations(&attrs);
    assert_eq!(want[BACKEND_TYPE], "vxlan");
    assert_eq!(
        want[BACKEND_DATA],
        r#"{"VNI":1,"VtepMAC":"0a:58:0a:f4:00:01"}"#
    );
    assert_eq!(want[PUBLIC_IP], "192.168.56.10");
    assert_eq!(want[KUBE_SUBNET_MANAGER], "true");
    let n = published(
        "node-a",
        "10.244.0.0/24",
        serde_json::to_value(&want).unwrap(),
    );
    let lease = lease_of(&n).unwrap();
    assert_eq!(lease.subnet.ipv4.to_string(), "10.244.0.0/24");
    assert_eq!(lease.attrs, attrs);
}

#[test]
fn the_patch_is_a_merge_of_only_our_annotations_and_is_skipped_when_already_published() {
    let attrs = vxlan_attrs([192, 168, 56, 10], "0a:58:0a:f4:00:01");
    let fresh = node(json!({
        "metadata": {"name": "node-a", "annotations": {"node.alpha.kubernetes.io/ttl": "0"}},
        "spec": {"podCIDR": "10.244.0.0/24"},
    }));
    let patch = plan_annotation_patch(&fresh, &attrs).expect("a patch");
    let annotations = patch["metadata"]["annotations"].as_object().unwrap();
    assert_eq!(annotations.len(), 4, "{patch}");
    assert!(annotations.keys().all(|k| k.starts_with(ANNOTATION_PREFIX)));
    assert_eq!(patch.as_object().unwrap().len(), 1, "touches metadata only");

    let done = published(
        "node-a",
        "10.244.0.0/24",
        serde_json::to_value(lease_annotations(&attrs)).unwrap(),
    );
    assert_eq!(plan_annotation_patch(&done, &attrs), None);
    // A new VTEP MAC (device recreated) is republished.
    let moved = vxlan_attrs([192, 168, 56, 10], "0a:58:0a:f4:00:02");
    assert!(plan_annotation_patch(&done, &moved).is_some());
}

#[test]
fn peers_come_from_other_nodes_annotations_as_flanneld_writes_them() {
    let nodes = [
        published(
            "node-a",
            "10.244.0.0/24",
            json!({
                BACKEND_TYPE: "vxlan", BACKEND_DATA: r#"{"VNI":1,"VtepMAC":"aa:aa:aa:aa:aa:aa"}"#,
                PUBLIC_IP: "192.168.56.10", KUBE_SUBNET_MANAGER: "true",
            }),
        ),
        // Written by flanneld, not by us: same format, spaces and key order aside.
        published(
            "node-b",
            "10.244.1.0/24",
            json!({
                BACKEND_TYPE: "vxlan", BACKEND_DATA: r#"{"VtepMAC": "2e:f7:d3:70:96:48", "VNI": 1}"#,
                PUBLIC_IP: "192.168.56.11", KUBE_SUBNET_MANAGER: "true",
            }),
        ),
        published(
            "node-c",
            "10.244.2.0/24",
            json!({
                BACKEND_TYPE: "host-gw", BACKEND_DATA: "null",
                PUBLIC_IP: "192.168.56.12", KUBE_SUBNET_MANAGER: "true",
            }),
        ),
    ];
    let (leases, problems) = peer_leases(&nodes, "node-a");
    assert!(problems.is_empty(), "{problems:?}");
    let got: Vec<(String, String, String)> = leases
        .iter()
        .map(|l| {
            (
                l.subnet.segment(),
                l.attrs.backend_name().to_string(),
                l.attrs.public_ip.to_string(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (
                "10.244.1.0-24".into(),
                "vxlan".into(),
                "192.168.56.11".into()
            ),
            (
                "10.244.2.0-24".into(),
                "host-gw".into(),
                "192.168.56.12".into()
            ),
        ]
    );
    assert_eq!(
        leases[0].attrs.vxlan_data().unwrap().vtep_mac,
        "2e:f7:d3:70:96:48"
    );
    assert_eq!(leases[1].attrs.backend_data, None);
}

#[test]
fn nodes_not_yet_published_are_skipped_and_malformed_ones_are_reported() {
    let nodes = [
        // No pod CIDR allocated yet.
        node(json!({"metadata": {"name": "new"}})),
        // Its agent has not run yet.
        published("bare", "10.244.3.0/24", json!({})),
        published(
            "bad-mac",
            "10.244.4.0/24",
            json!({
                BACKEND_TYPE: "vxlan", BACKEND_DATA: r#"{"VNI":1,"VtepMAC":"nope"}"#,
                PUBLIC_IP: "192.168.56.14", KUBE_SUBNET_MANAGER: "true",
            }),
        ),
        published(
            "bad-ip",
            "10.244.5.0/24",
            json!({
                BACKEND_TYPE: "host-gw", BACKEND_DATA: "null",
                PUBLIC_IP: "fd00::1", KUBE_SUBNET_MANAGER: "true",
            }),
        ),
    ];
    let (leases, problems) = peer_leases(&nodes, "node-a");
    assert!(leases.is_empty(), "{leases:?}");
    let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
    assert_eq!(text.len(), 2, "{text:?}");
    assert!(
        text[0].starts_with(
            "Node bad-mac: metadata.annotations[flannel.alpha.coreos.com/backend-data]"
        ),
        "{text:?}"
    );
    assert!(
        text[1]
            .starts_with("Node bad-ip: metadata.annotations[flannel.alpha.coreos.com/public-ip]"),
        "{text:?}"
    );
}

#[test]
fn the_pod_cidr_is_the_first_ipv4_of_pod_cidrs_then_pod_cidr() {
    let dual = node(json!({
        "metadata": {"name": "n"},
        "spec": {"podCIDR": "fd00:10:244::/64", "podCIDRs": ["fd00:10:244::/64", "10.244.7.0/24"]},
    }));
    assert_eq!(own_subnet(&dual).unwrap().ipv4.to_string(), "10.244.7.0/24");
    let old = node(json!({"metadata": {"name": "n"}, "spec": {"podCIDR": "10.244.8.0/24"}}));
    assert_eq!(own_subnet(&old).unwrap().ipv4.to_string(), "10.244.8.0/24");
    let none = node(json!({"metadata": {"name": "n"}, "spec": {}}));
    assert!(matches!(
        own_subnet(&none),
        Err(LeaseError::NoPodCidr { .. })
    ));
    let junk = node(json!({"metadata": {"name": "n"}, "spec": {"podCIDR": "10.244.8.0"}}));
    assert!(matches!(
        own_subnet(&junk),
        Err(LeaseError::BadPodCidr { .. })
    ));
}

#[test]
fn annotations_of_other_tools_do_not_make_two_node_leases_differ() {
    let a = node(json!({
        "metadata": {"name": "n", "annotations": {"node.alpha.kubernetes.io/ttl": "0", PUBLIC_IP: "10.0.0.1"}},
        "spec": {"podCIDR": "10.244.8.0/24"},
    }));
    let b = node(json!({
        "metadata": {"name": "n", "annotations": {"volumes.kubernetes.io/controller-managed-attach-detach": "true", PUBLIC_IP: "10.0.0.1"}},
        "spec": {"podCIDR": "10.244.8.0/24"},
    }));
    assert_eq!(a, b);
}
