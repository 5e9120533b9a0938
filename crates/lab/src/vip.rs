//! Service addresses on the underlay (LoadBalancer ingress IPs and externalIPs): one
//! node holds each address, so the outside host's ARP finds it, as a bare-metal load
//! balancer does in layer-2 mode (one elected speaker per address). With
//! `externalTrafficPolicy: Local` the holder is a node with a ready local endpoint,
//! so traffic is not dropped for lack of one.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use ipnet::Ipv4Net;
use twill_model::ClusterState;

/// Which node holds each underlay service address (pure).
pub fn plan(
    state: &ClusterState,
    nodes: &[String],
    underlay: Ipv4Net,
) -> BTreeMap<Ipv4Addr, String> {
    let mut out = BTreeMap::new();
    for svc in state.services.values() {
        let addrs: Vec<Ipv4Addr> = svc
            .load_balancer_ingress
            .iter()
            .map(|i| i.ip)
            .chain(svc.external_ips.iter().copied())
            .filter_map(|ip| match ip {
                IpAddr::V4(v4) if underlay.contains(&v4) => Some(v4),
                _ => None,
            })
            .collect();
        if addrs.is_empty() {
            continue;
        }
        let with_endpoints: BTreeSet<String> = state
            .slices_for(&svc.key)
            .flat_map(|s| &s.endpoints)
            .filter(|e| e.conditions.is_ready())
            .filter_map(|e| e.node_name.clone())
            .collect();
        let holder = if svc.external_policy_local() {
            nodes.iter().find(|n| with_endpoints.contains(*n))
        } else {
            nodes.first()
        };
        if let Some(h) = holder {
            for a in addrs {
                out.entry(a).or_insert_with(|| h.clone());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use twill_model::*;

    #[test]
    fn local_policy_services_are_held_by_a_node_with_a_ready_endpoint() {
        let mut state = ClusterState::default();
        let key = ObjectKey::new("d", "s");
        state.services.insert(
            key.clone(),
            Service {
                key: key.clone(),
                service_type: ServiceType::LoadBalancer,
                external_traffic_policy: TrafficPolicy::Local,
                load_balancer_ingress: vec![LoadBalancerIngress {
                    ip: "192.168.50.241".parse().unwrap(),
                    ip_mode_proxy: false,
                }],
                external_ips: vec!["10.1.2.3".parse().unwrap()],
                ..Default::default()
            },
        );
        let nodes = vec!["node-1".to_string(), "node-2".to_string()];
        let underlay: Ipv4Net = "192.168.50.0/24".parse().unwrap();
        assert!(
            plan(&state, &nodes, underlay).is_empty(),
            "no ready endpoint: nobody announces"
        );
        state.endpoint_slices.insert(
            ObjectKey::new("d", "s-1"),
            EndpointSlice {
                key: ObjectKey::new("d", "s-1"),
                service_name: Some("s".into()),
                endpoints: vec![Endpoint {
                    addresses: vec!["10.244.1.2".parse().unwrap()],
                    node_name: Some("node-2".into()),
                    ..Default::default()
                }],
                ..Default::default()
            },
        );
        let p = plan(&state, &nodes, underlay);
        assert_eq!(p.len(), 1, "off-underlay external IPs are not announced");
        assert_eq!(
            p.get(&"192.168.50.241".parse().unwrap())
                .map(String::as_str),
            Some("node-2")
        );
    }
}
