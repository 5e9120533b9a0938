use std::collections::BTreeMap;
use std::net::IpAddr;

use twill_conformance::proxy::corpus::{CaseFile, Fixture, shared_fixture as fixture};
use twill_testkit::testdata::json_cases;

use super::*;
use twill_conformance::proxy::userspace::config_of;

fn planned(fx: &Fixture) -> (Config, Plan) {
    let p = fx.prepare(false).expect("prepare");
    let cfg = config_of(&p);
    let plan = plan(&cfg, &p.model);
    (cfg, plan)
}

/// Every listener gets port 40000 + its index.
fn ports(plan: &Plan) -> BTreeMap<ListenerKey, u16> {
    plan.listeners
        .iter()
        .enumerate()
        .map(|(i, l)| (l.key.clone(), 40000 + i as u16))
        .collect()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn a_nodeport_service_gets_one_listener_with_cluster_ip_and_node_port_portals() {
    let fx = fixture("nodeport.json", "localhost-nodeports enabled");
    let (cfg, plan) = planned(&fx);
    assert_eq!(plan.listeners.len(), 1);
    let l = &plan.listeners[0];
    assert_eq!(l.key.scope, Scope::Internal);
    assert_eq!(l.endpoints.len(), 2);
    assert!(l.portals.contains(&Portal::NodePort(3001)));
    assert!(l.portals.iter().any(
        |p| matches!(p, Portal::Address { ip: a, port: 80, sources } if *a == ip("172.30.0.41") && sources.is_empty())
    ));
    let text = render_rules(&cfg, &plan, &ports(&plan));
    for chain in [PORTALS_CONTAINER, PORTALS_HOST] {
        assert!(
            text.contains(&format!(
                "-A {chain} -m comment --comment ns1/svc1:p80 -p tcp -m tcp -d 172.30.0.41/32 --dport 80 -j REDIRECT --to-ports 40000"
            )),
            "{text}"
        );
    }
    for chain in [NODEPORT_CONTAINER, NODEPORT_HOST] {
        assert!(text.contains(&format!(
            "-A {chain} -m comment --comment ns1/svc1:p80 -p tcp -m tcp --dport 3001 -j REDIRECT --to-ports 40000"
        )));
    }
}

#[test]
fn localhost_node_ports_off_excludes_loopback_and_ipv6_always_does() {
    let fx = fixture("nodeport.json", "localhost-nodeports disabled");
    let (cfg, plan) = planned(&fx);
    let text = render_rules(&cfg, &plan, &ports(&plan));
    assert!(
        text.contains("! -d 127.0.0.0/8 --dport 3001 -j REDIRECT"),
        "{text}"
    );

    let fx = fixture("ipv6.json", "");
    let (cfg, plan) = planned(&fx);
    let text = render_rules(&cfg, &plan, &ports(&plan));
    assert!(
        text.contains("! -d ::1/128 --dport 3001 -j REDIRECT"),
        "{text}"
    );
}

#[test]
fn node_port_addresses_select_the_matching_local_addresses_only() {
    let fx = fixture("nodeport.json", "localhost in nodeport-addresses");
    let (cfg, plan) = planned(&fx);
    let text = render_rules(&cfg, &plan, &ports(&plan));
    let np: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with(&format!("-A {NODEPORT_CONTAINER}")))
        .collect();
    // 192.168.0.2 is in 192.168.0.0/24; 192.168.1.2 is not; loopback node ports are off.
    assert_eq!(np.len(), 1, "{np:?}");
    assert!(np[0].contains("-d 192.168.0.2/32 --dport 3001"));
}

#[test]
fn a_service_without_endpoints_is_rejected_on_every_portal_and_gets_no_listener() {
    let fx = fixture("no-endpoints.json", "lb-service-without-endpointslice");
    let (cfg, plan) = planned(&fx);
    assert!(plan.listeners.is_empty());
    assert!(!plan.blocked.is_empty());
    assert!(plan.blocked.iter().all(|b| b.verdict == Verdict::Reject));
    // Cluster IP, external IP, LB IP and node port.
    assert!(
        plan.blocked
            .iter()
            .any(|b| b.portal == Portal::NodePort(3001))
    );
    assert!(plan.blocked.len() >= 4, "{:?}", plan.blocked);
    let text = render_rules(&cfg, &plan, &ports(&plan));
    assert!(!text.contains("REDIRECT"));
    assert!(
        text.contains("-d 172.30.0.41/32 --dport 80 -j REJECT"),
        "{text}"
    );
}

#[test]
fn internal_traffic_policy_local_without_local_endpoints_drops_cluster_ip_traffic() {
    let fx = fixture("internal-traffic-policy.json", "no local endpoints");
    let (_, plan) = planned(&fx);
    assert!(plan.listeners.is_empty());
    assert_eq!(plan.blocked.len(), 1);
    assert_eq!(plan.blocked[0].verdict, Verdict::Drop);
}

#[test]
fn internal_traffic_policy_local_uses_only_the_local_endpoint() {
    let fx = fixture("internal-traffic-policy.json", "one local endpoint");
    let (_, plan) = planned(&fx);
    assert_eq!(plan.listeners.len(), 1);
    assert_eq!(
        plan.listeners[0].endpoints,
        vec!["10.0.1.1:80".parse().unwrap()]
    );
}

#[test]
fn load_balancer_source_ranges_redirect_allowed_sources_and_drop_the_rest() {
    let fx = fixture("loadbalancer.json", "lb-source-ranges");
    let (cfg, plan) = planned(&fx);
    let text = render_rules(&cfg, &plan, &ports(&plan));
    assert!(
        text.contains("-s 203.0.113.0/25 -d 1.2.3.4/32 --dport 80 -j REDIRECT"),
        "{text}"
    );
    assert!(!text.contains("-s 203.0.113.128"));
    assert!(text.contains("-d 1.2.3.4/32 --dport 80 -j DROP"));
    assert!(
        plan.blocked
            .iter()
            .all(|b| b.verdict == Verdict::Drop && matches!(b.portal, Portal::Address { .. }))
    );
}

#[test]
fn sctp_service_ports_are_not_proxied() {
    let fx = fixture("udp-sctp.json", "");
    let (_, plan) = planned(&fx);
    let protos: Vec<Protocol> = plan.listeners.iter().map(|l| l.protocol).collect();
    assert!(protos.contains(&Protocol::Tcp) && protos.contains(&Protocol::Udp));
    assert!(!protos.contains(&Protocol::Sctp));
}

#[test]
fn client_ip_affinity_carries_the_timeout_to_the_listener() {
    let fx = fixture("session-affinity.json", "");
    let (_, plan) = planned(&fx);
    assert!(plan.listeners.iter().any(|l| l.affinity_timeout.is_some()));
}

#[test]
fn rendering_is_deterministic_and_declares_every_chain() {
    for (path, v) in json_cases("proxy") {
        let case: CaseFile = serde_json::from_value(v).unwrap();
        for fx in case.fixtures {
            let (cfg, plan) = planned(&fx);
            let a = render_rules(&cfg, &plan, &ports(&plan));
            let again = self::plan(&cfg, &fx.prepare(false).unwrap().model);
            assert_eq!(again, plan, "{} [{}]", path.display(), fx.name);
            assert_eq!(a, render_rules(&cfg, &again, &ports(&again)));
            for c in [
                PORTALS_CONTAINER,
                PORTALS_HOST,
                NODEPORT_CONTAINER,
                NODEPORT_HOST,
                FILTER_SERVICES,
            ] {
                assert!(
                    a.contains(&format!(":{c} - [0:0]")),
                    "{} [{}]",
                    path.display(),
                    fx.name
                );
            }
            let keys: Vec<_> = plan.listeners.iter().map(|l| &l.key).collect();
            let mut sorted = keys.clone();
            sorted.sort();
            assert_eq!(keys, sorted);
        }
    }
}

#[test]
fn listeners_without_a_port_are_left_out_of_the_rules() {
    let fx = fixture("clusterip.json", "");
    let (cfg, plan) = planned(&fx);
    let text = render_rules(&cfg, &plan, &BTreeMap::new());
    assert!(!text.contains("REDIRECT"));
}

#[test]
fn itp_local_with_node_ports_splits_cluster_and_external_listeners() {
    let fx = fixture("masquerade.json", "base");
    let p = fx.prepare(false).unwrap();
    let cfg = config_of(&p);
    let plan = plan(&cfg, &p.model);
    let itp = p
        .model
        .services
        .values()
        .find(|s| s.internal_policy_local && s.node_port.is_some())
        .expect("an iTP Local node-port service in masquerade.json base");
    let mine: Vec<&ListenerPlan> = plan
        .listeners
        .iter()
        .filter(|l| l.key.service == itp.name)
        .collect();
    assert_eq!(mine.len(), 2, "{mine:?}");
    let internal = mine
        .iter()
        .find(|l| l.key.scope == Scope::Internal)
        .unwrap();
    let external = mine
        .iter()
        .find(|l| l.key.scope == Scope::External)
        .unwrap();
    assert!(internal.endpoints.len() < external.endpoints.len());
    assert!(
        internal
            .portals
            .iter()
            .all(|p| matches!(p, Portal::Address { .. }))
    );
    assert!(
        external
            .portals
            .contains(&Portal::NodePort(itp.node_port.unwrap()))
    );
}

#[test]
fn the_preview_numbers_listeners_and_uses_those_numbers_as_ports() {
    let fx = fixture("clusterip.json", "general");
    let (cfg, plan) = planned(&fx);
    let text = preview(&cfg, &plan);
    assert!(text.starts_with("# listener 1: "));
    assert!(text.contains("--to-ports 1\n"));
    assert!(text.contains("*nat\n"));
}
