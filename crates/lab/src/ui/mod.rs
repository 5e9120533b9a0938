//! `twill lab ui`: a page that draws the lab and a packet's path through it, live.
//!
//! The page ([`INDEX_HTML`], embedded: no CDN, no network) polls two JSON answers built
//! from the same data as the CLI: [`topology`] (what `lab get` reads) and a trace (what
//! `lab trace -o json` prints). Everything drawn is also on the page as text (tables of
//! nodes, pods, Services and endpoints, the path's hops), for screen readers, search and
//! tests.

use serde_json::{Value, json};
use twill_model::ClusterState;

use crate::spec::LabSpec;

/// The page: HTML, CSS and script in one file.
pub const INDEX_HTML: &str = include_str!("index.html");

/// The lab as the page draws it.
pub fn topology(spec: &LabSpec, state: &ClusterState) -> Value {
    let nodes: Vec<Value> = spec
        .nodes
        .iter()
        .map(|n| {
            json!({
                "name": n.name, "ip": n.ip.to_string(), "podCidr": n.pod_cidr.to_string(),
                "zone": n.zone, "backend": spec.backend.as_str(),
            })
        })
        .collect();
    let pods: Vec<Value> = state
        .pods
        .values()
        .map(|p| {
            json!({
                "namespace": p.key.namespace, "name": p.key.name,
                "ip": p.pod_ips.first().map(ToString::to_string),
                "node": p.spec.node_name, "phase": format!("{:?}", p.phase), "ready": p.ready,
            })
        })
        .collect();
    let services: Vec<Value> = state
        .services
        .values()
        .map(|s| {
            let endpoints: Vec<Value> = state
                .slices_for(&s.key)
                .flat_map(|sl| sl.endpoints.iter())
                .map(|e| {
                    json!({
                        "ip": e.addresses.first().map(ToString::to_string),
                        "pod": e.target_ref.as_ref().map(|r| r.key.to_string()),
                        "node": e.node_name, "ready": e.conditions.is_ready(),
                    })
                })
                .collect();
            json!({
                "namespace": s.key.namespace, "name": s.key.name,
                "type": s.service_type.as_str(),
                "clusterIp": s.cluster_ips.first().map(ToString::to_string),
                "ports": s.ports.iter().map(|p| json!({
                    "name": p.name, "port": p.port, "protocol": p.protocol.as_str(), "nodePort": p.node_port,
                })).collect::<Vec<_>>(),
                "endpoints": endpoints,
            })
        })
        .collect();
    json!({
        "lab": spec.name,
        "underlay": spec.underlay.to_string(),
        "nodes": nodes,
        "client": spec.client.as_ref().map(|c| json!({"name": c.name, "ip": c.ip.to_string()})),
        "pods": pods,
        "services": services,
    })
}

/// `from` and `to` of a trace request (`?from=shop/client&to=shop/web`), decoded.
pub fn trace_query(query: &str) -> Option<(String, String)> {
    let mut from = None;
    let mut to = None;
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=')?;
        let v = percent_decode(v)?;
        match k {
            "from" => from = Some(v),
            "to" => to = Some(v),
            _ => {}
        }
    }
    let ok = |s: &String| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-./:[]".contains(c))
    };
    match (from, to) {
        (Some(f), Some(t)) if ok(&f) && ok(&t) => Some((f, t)),
        _ => None,
    }
}

/// `%2F` and `+` as a form sends them. Hand-written: two cases, no crate needed.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_queries_decode_and_refuse_what_is_not_a_name() {
        assert_eq!(
            trace_query("from=shop%2Fclient&to=shop/web"),
            Some(("shop/client".into(), "shop/web".into()))
        );
        assert_eq!(
            trace_query("to=10.96.0.10:80&from=client"),
            Some(("client".into(), "10.96.0.10:80".into()))
        );
        assert_eq!(trace_query("from=a;rm&to=b"), None);
        assert_eq!(trace_query("from=a&to="), None);
        assert_eq!(trace_query("from=%zz&to=b"), None);
    }
}
