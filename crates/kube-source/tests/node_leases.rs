//! The kube subnet manager's API calls: the Node lease watch against a recorded
//! exchange, and the PATCH that publishes this node's lease.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use http::{Request, Response};
use kube::client::Body;
use serde_json::{Value, json};
use twill_kube_source::subnet::{
    BACKEND_DATA, BACKEND_TYPE, KUBE_SUBNET_MANAGER, NodeLease, PUBLIC_IP, peer_leases,
};
use twill_kube_source::{SourceConfig, api_calls, publish_node_lease, watch_node_leases};
use twill_overlay::{BackendKind, LeaseAttrs, Mac};

use crate::support::replay::Replay;

fn node(name: &str, rv: &str, cidr: &str, annotations: Value) -> Value {
    json!({
        "kind": "Node", "apiVersion": "v1",
        "metadata": {"name": name, "resourceVersion": rv, "annotations": annotations},
        "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.168.56.10"}]},
    })
}

fn vxlan(ip: &str, mac: &str) -> Value {
    json!({
        BACKEND_TYPE: "vxlan",
        BACKEND_DATA: format!("{{\"VNI\":1,\"VtepMAC\":\"{mac}\"}}"),
        PUBLIC_IP: ip,
        KUBE_SUBNET_MANAGER: "true",
    })
}

#[tokio::test]
async fn node_leases_come_out_once_listed_then_only_when_a_lease_changes() {
    let a = node(
        "node-a",
        "10",
        "10.244.0.0/24",
        vxlan("192.168.56.10", "0a:00:00:00:00:0a"),
    );
    let b_bare = node(
        "node-b",
        "11",
        "10.244.1.0/24",
        json!({"node.alpha.kubernetes.io/ttl": "0"}),
    );
    // A heartbeat: a new resourceVersion and another tool's annotation, no lease change.
    let b_heartbeat = node(
        "node-b",
        "20",
        "10.244.1.0/24",
        json!({"node.alpha.kubernetes.io/ttl": "30"}),
    );
    let b_published = node(
        "node-b",
        "21",
        "10.244.1.0/24",
        vxlan("192.168.56.11", "0a:00:00:00:00:0b"),
    );
    let recording = json!({"exchanges": [
        {"request": "GET /api/v1/nodes?limit=500", "status": 200, "body": {
            "kind": "NodeList", "apiVersion": "v1", "metadata": {"resourceVersion": "15"},
            "items": [a, b_bare]}},
        {"request": "GET /api/v1/nodes?watch=true&resourceVersion=15", "status": 200, "watch": [
            {"type": "MODIFIED", "object": b_heartbeat},
            {"type": "MODIFIED", "object": b_published},
            {"type": "DELETED", "object": node("node-a", "22", "10.244.0.0/24", vxlan("192.168.56.10", "0a:00:00:00:00:0a"))},
        ]},
    ]});
    let replay = Replay::load(&recording);
    let client = kube::Client::new(replay.service(), "default");
    let mut stream = std::pin::pin!(watch_node_leases(client));
    let mut lists: Vec<Vec<NodeLease>> = Vec::new();
    let finished = replay.finished();
    let mut finished = std::pin::pin!(finished);
    let deadline = tokio::time::sleep(Duration::from_secs(20));
    let mut deadline = std::pin::pin!(deadline);
    loop {
        tokio::select! {
            biased;
            item = stream.next() => {
                lists.push(item.expect("never ends").expect("no errors recorded"));
                replay.release_watches();
            }
            () = &mut finished => break,
            () = &mut deadline => panic!("replay did not finish: {:?}", replay.mismatches()),
        }
    }
    assert_eq!(replay.mismatches(), Vec::<String>::new());
    let names = |l: &Vec<NodeLease>| l.iter().map(|n| n.node.clone()).collect::<Vec<_>>();
    assert_eq!(
        lists.iter().map(names).collect::<Vec<_>>(),
        [
            vec!["node-a", "node-b"],
            vec!["node-a", "node-b"],
            vec!["node-b"]
        ],
        "the heartbeat is not a change"
    );
    // Seen from node-a: node-b becomes a peer once it publishes.
    let peers = |l: &Vec<NodeLease>| {
        let (leases, problems) = peer_leases(l, "node-a");
        assert!(problems.is_empty(), "{problems:?}");
        leases
            .iter()
            .map(|l| l.subnet.segment())
            .collect::<Vec<_>>()
    };
    assert_eq!(peers(&lists[0]), Vec::<String>::new());
    assert_eq!(peers(&lists[1]), ["10.244.1.0-24"]);
}

#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    content_type: String,
    body: Value,
}

#[tokio::test]
async fn publishing_sends_one_merge_patch_of_the_flannel_annotations_and_rbac_allows_it() {
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let log = seen.clone();
    let service = tower::service_fn(move |req: Request<Body>| {
        let log = log.clone();
        async move {
            let (parts, body) = req.into_parts();
            let bytes = body.collect_bytes().await.expect("a body");
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            log.lock().unwrap().push(Seen {
                method: parts.method.to_string(),
                path: parts.uri.path().to_string(),
                content_type: parts
                    .headers
                    .get(http::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string(),
                body: body.clone(),
            });
            let answer = node(
                "node-a",
                "31",
                "10.244.0.0/24",
                body["metadata"]["annotations"].clone(),
            );
            Ok::<_, std::convert::Infallible>(
                Response::builder()
                    .status(200)
                    .header("content-type", "application/json")
                    .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                    .unwrap(),
            )
        }
    });
    let client = kube::Client::new(service, "default");
    let attrs = LeaseAttrs::for_backend(
        BackendKind::Vxlan,
        "192.168.56.10".parse().unwrap(),
        None,
        1,
        Some("0a:00:00:00:00:0a".parse::<Mac>().unwrap()),
        None,
    );
    let fresh: k8s_openapi::api::core::v1::Node =
        serde_json::from_value(node("node-a", "30", "10.244.0.0/24", json!({}))).unwrap();
    let fresh = NodeLease::from_k8s(&fresh);
    assert!(
        publish_node_lease(client.clone(), &fresh, &attrs)
            .await
            .unwrap()
    );
    let published: k8s_openapi::api::core::v1::Node = serde_json::from_value(node(
        "node-a",
        "31",
        "10.244.0.0/24",
        vxlan("192.168.56.10", "0a:00:00:00:00:0a"),
    ))
    .unwrap();
    assert!(
        !publish_node_lease(client, &NodeLease::from_k8s(&published), &attrs)
            .await
            .unwrap(),
        "already published: no request"
    );
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].method, "PATCH");
    assert_eq!(seen[0].path, "/api/v1/nodes/node-a");
    assert_eq!(seen[0].content_type, "application/merge-patch+json");
    assert_eq!(
        seen[0].body,
        json!({"metadata": {"annotations": vxlan("192.168.56.10", "0a:00:00:00:00:0a")}})
    );
    // The call is in the node role's table, which the deploy/ RBAC test checks.
    assert!(
        api_calls(&SourceConfig::node_agent())
            .iter()
            .any(|c| c.group.is_empty() && c.resource == "nodes" && c.verbs.contains(&"patch"))
    );
    assert!(
        !api_calls(&SourceConfig::dns())
            .iter()
            .any(|c| c.verbs.contains(&"patch")),
        "DNS writes nothing"
    );
}
