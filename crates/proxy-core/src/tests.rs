use std::net::IpAddr;

use twill_model::{
    ClusterState, Endpoint, EndpointConditions, EndpointPort, EndpointSlice, IpFamily, Object,
    ObjectKey, Protocol, Service, ServicePort, ServiceType, TargetPort, TrafficPolicy,
};

use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn svc(name: &str, cluster_ip: &str) -> Service {
    Service {
        key: ObjectKey::new("ns", name),
        service_type: ServiceType::ClusterIP,
        cluster_ips: vec![ip(cluster_ip)],
        ports: vec![ServicePort {
            name: "p80".into(),
            protocol: Protocol::Tcp,
            port: 80,
            target_port: TargetPort::Number(80),
            node_port: None,
            app_protocol: None,
        }],
        ..Default::default()
    }
}

fn ep(
    addr: &str,
    node: &str,
    ready: Option<bool>,
    serving: Option<bool>,
    term: Option<bool>,
) -> Endpoint {
    Endpoint {
        addresses: vec![ip(addr)],
        node_name: (!node.is_empty()).then(|| node.to_string()),
        conditions: EndpointConditions {
            ready,
            serving,
            terminating: term,
        },
        ..Default::default()
    }
}

fn slice(svc: &str, name: &str, eps: Vec<Endpoint>, protocol: Protocol) -> EndpointSlice {
    EndpointSlice {
        key: ObjectKey::new("ns", name),
        service_name: Some(svc.into()),
        endpoints: eps,
        ports: vec![EndpointPort {
            name: "p80".into(),
            protocol,
            port: Some(80),
            app_protocol: None,
        }],
        ..Default::default()
    }
}

fn cfg() -> ModelConfig {
    ModelConfig {
        family: IpFamily::V4,
        node_name: "me".into(),
        node_zone: None,
        gates: FeatureGates::default(),
    }
}

fn model(objs: Vec<Object>) -> ProxyModel {
    build_model(&ClusterState::from_objects(objs), &cfg()).0
}

#[test]
fn chain_names_match_upstream_hashes() {
    assert_eq!(
        chain::service_chain(chain::SVC_PREFIX, "ns1/svc1:p80", "tcp"),
        "KUBE-SVC-XPGD46QRK7WJZT7O"
    );
    assert_eq!(
        chain::endpoint_chain("ns1/svc1:p80", "tcp", "10.180.0.1:80"),
        "KUBE-SEP-SXIVWICOYRO3J4NJ"
    );
}

#[test]
fn unnamed_port_name_has_no_trailing_colon() {
    let n = ServicePortName {
        service: ObjectKey::new("a", "b"),
        port: String::new(),
        protocol: Protocol::Udp,
    };
    assert_eq!(n.to_string(), "a/b");
}

#[test]
fn duplicate_endpoints_fold_and_sort_by_address_string() {
    let m = model(vec![
        Object::Service(svc("s", "172.30.0.1")),
        Object::EndpointSlice(slice(
            "s",
            "s-1",
            vec![
                ep("10.0.0.10", "other", None, None, None),
                ep("10.0.0.9", "", None, None, None),
            ],
            Protocol::Tcp,
        )),
        Object::EndpointSlice(slice(
            "s",
            "s-2",
            vec![ep("10.0.0.10", "me", None, None, None)],
            Protocol::Tcp,
        )),
    ]);
    let name = m.services.keys().next().unwrap().clone();
    let eps = m.endpoints_of(&name);
    let shown: Vec<String> = eps.iter().map(|e| e.to_string()).collect();
    assert_eq!(shown, ["10.0.0.10:80", "10.0.0.9:80"]);
    assert!(eps[0].is_local, "the local copy of a duplicate wins");
}

#[test]
fn terminating_endpoints_are_used_only_without_ready_ones() {
    let mut s = svc("s", "172.30.0.1");
    s.internal_traffic_policy = TrafficPolicy::Cluster;
    let m = model(vec![
        Object::Service(s),
        Object::EndpointSlice(slice(
            "s",
            "s-1",
            vec![
                ep("10.0.0.1", "me", Some(false), Some(true), Some(true)),
                ep("10.0.0.2", "me", Some(false), Some(false), Some(true)),
            ],
            Protocol::Tcp,
        )),
    ]);
    let (name, info) = m.services.iter().next().unwrap();
    let c = categorize_endpoints(m.endpoints_of(name), info, None);
    assert_eq!(c.cluster.len(), 1);
    assert_eq!(c.cluster[0].ip, ip("10.0.0.1"));
    assert!(c.has_any);
}

#[test]
fn internal_local_policy_uses_only_local_endpoints() {
    let mut s = svc("s", "172.30.0.1");
    s.internal_traffic_policy = TrafficPolicy::Local;
    let m = model(vec![
        Object::Service(s),
        Object::EndpointSlice(slice(
            "s",
            "s-1",
            vec![
                ep("10.0.0.1", "me", None, None, None),
                ep("10.0.0.2", "other", None, None, None),
            ],
            Protocol::Tcp,
        )),
    ]);
    let (name, info) = m.services.iter().next().unwrap();
    let c = categorize_endpoints(m.endpoints_of(name), info, None);
    assert!(c.cluster.is_empty());
    assert_eq!(c.local.len(), 1);
    assert_eq!(c.all_reachable, c.local);
}

#[test]
fn prefer_close_keeps_endpoints_hinted_for_our_zone() {
    let mut s = svc("s", "172.30.0.1");
    s.traffic_distribution = Some("PreferClose".into());
    let mut a = ep("10.0.0.1", "x", None, None, None);
    a.hints_for_zones = vec!["z1".into()];
    let mut b = ep("10.0.0.2", "y", None, None, None);
    b.hints_for_zones = vec!["z2".into()];
    let objs = vec![
        Object::Service(s),
        Object::EndpointSlice(slice("s", "s-1", vec![a, b], Protocol::Tcp)),
    ];
    let mut c = cfg();
    c.node_zone = Some("z2".into());
    let (m, _) = build_model(&ClusterState::from_objects(objs.clone()), &c);
    let (name, info) = m.services.iter().next().unwrap();
    let cat = categorize_endpoints(m.endpoints_of(name), info, m.node_zone.as_deref());
    assert_eq!(
        cat.cluster.iter().map(|e| e.ip).collect::<Vec<_>>(),
        [ip("10.0.0.2")]
    );
    // Without a zone for this node, hints are ignored.
    let m = model(objs);
    let (name, info) = m.services.iter().next().unwrap();
    assert_eq!(
        categorize_endpoints(m.endpoints_of(name), info, None)
            .cluster
            .len(),
        2
    );
}

#[test]
fn tracker_reports_only_changed_services_and_stale_udp_endpoints() {
    let a = svc("a", "172.30.0.1");
    let mut b = svc("b", "172.30.0.2");
    b.ports[0].protocol = Protocol::Udp;
    let one = model(vec![
        Object::Service(a.clone()),
        Object::Service(b.clone()),
        Object::EndpointSlice(slice(
            "b",
            "b-1",
            vec![
                ep("10.0.0.1", "", None, None, None),
                ep("10.0.0.2", "", None, None, None),
            ],
            Protocol::Udp,
        )),
    ]);
    let mut t = ChangeTracker::new();
    let first = t.diff(&one);
    assert_eq!(first.services.len(), 2);
    assert!(first.stale_udp.contains(&StaleConntrack::ServiceIp {
        ip: ip("172.30.0.2"),
        port: 80
    }));
    t.commit(one.clone());
    assert!(t.diff(&one).is_empty(), "no-op sync reports nothing");
    let two = model(vec![
        Object::Service(a),
        Object::Service(b),
        Object::EndpointSlice(slice(
            "b",
            "b-1",
            vec![ep("10.0.0.1", "", None, None, None)],
            Protocol::Udp,
        )),
    ]);
    let d = t.diff(&two);
    assert_eq!(
        d.services
            .iter()
            .map(|k| k.name.as_str())
            .collect::<Vec<_>>(),
        ["b"]
    );
    assert_eq!(
        d.stale_udp.into_iter().collect::<Vec<_>>(),
        [StaleConntrack::Endpoint {
            service_ip: ip("172.30.0.2"),
            endpoint_ip: ip("10.0.0.2")
        }]
    );
}

#[test]
fn other_family_services_are_left_out() {
    let m = model(vec![Object::Service(svc("v6", "fd00::1"))]);
    assert!(m.services.is_empty());
}

proptest::proptest! {
    #[test]
    fn allocation_free_chain_names_equal_the_string_forms(
        svc in "[a-z0-9-]{1,20}/[a-z0-9-]{1,20}(:[a-z0-9-]{1,10})?",
        proto in "(tcp|udp|sctp)",
        ep in "(10\\.[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}|\\[fd00::[0-9a-f]{1,4}\\]):[0-9]{1,5}",
    ) {
        let input = format!("{svc}{proto}{ep}");
        let parts = chain::hash16_parts(&[svc.as_bytes(), proto.as_bytes(), ep.as_bytes()]);
        proptest::prop_assert_eq!(std::str::from_utf8(&parts).unwrap(), chain::hash16(&input));
        proptest::prop_assert_eq!(
            chain::ChainName::endpoint(&svc, &proto, &ep).to_string(),
            chain::endpoint_chain(&svc, &proto, &ep)
        );
    }
}

#[test]
fn chain_names_longer_than_iptables_limit_are_refused() {
    assert!(chain::ChainName::new("KUBE-SEP-ABCDEFGHIJKLMNOP").is_some());
    assert!(chain::ChainName::new(&"K".repeat(29)).is_none());
    let a = chain::ChainName::new("KUBE-SVC-B").unwrap();
    let b = chain::ChainName::new("KUBE-SVC-AB").unwrap();
    assert!(b < a, "ordered as strings");
}

/// kube-proxy's `topologyModeFromHints`: node hints first, then zone hints, each only
/// when every ready endpoint has them and one is for us; otherwise every endpoint.
#[test]
fn hints_choose_same_node_then_same_zone_and_fall_back_to_every_endpoint() {
    let hinted = |addr: &str, node: &str, zones: &[&str], nodes: &[&str]| {
        let mut e = ep(addr, node, None, None, None);
        e.hints_for_zones = zones.iter().map(|z| z.to_string()).collect();
        e.hints_for_nodes = nodes.iter().map(|n| n.to_string()).collect();
        e
    };
    let cluster = |eps: Vec<Endpoint>, zone: Option<&str>| -> Vec<IpAddr> {
        let objs = vec![
            Object::Service(svc("s", "172.30.0.1")),
            Object::EndpointSlice(slice("s", "s-1", eps, Protocol::Tcp)),
        ];
        let mut c = cfg();
        c.node_zone = zone.map(str::to_string);
        let (m, _) = build_model(&ClusterState::from_objects(objs), &c);
        let (name, info) = m.services.iter().next().unwrap();
        categorize_endpoints(m.endpoints_of(name), info, m.node_zone.as_deref())
            .cluster
            .iter()
            .map(|e| e.ip)
            .collect()
    };
    // PreferSameNode: our node ("me") has an endpoint.
    let same_node = vec![
        hinted("10.0.0.1", "me", &["z1"], &["me"]),
        hinted("10.0.0.2", "other", &["z1"], &["other"]),
        hinted("10.0.0.3", "far", &["z2"], &["far"]),
    ];
    assert_eq!(cluster(same_node.clone(), Some("z1")), [ip("10.0.0.1")]);
    // No endpoint on this node: the zone hints decide.
    let not_here: Vec<Endpoint> = same_node[1..].to_vec();
    assert_eq!(cluster(not_here.clone(), Some("z1")), [ip("10.0.0.2")]);
    // Nor in this zone: every endpoint.
    assert_eq!(cluster(not_here, Some("z3")).len(), 2);
    // One endpoint without hints: hints are not used at all.
    let partial = vec![
        hinted("10.0.0.1", "x", &["z1"], &[]),
        hinted("10.0.0.2", "y", &[], &[]),
    ];
    assert_eq!(cluster(partial, Some("z1")).len(), 2);
    // Hints are the EndpointSlice controller's word: the proxy needs no Service field.
    let zone_only = vec![
        hinted("10.0.0.1", "x", &["z1"], &[]),
        hinted("10.0.0.2", "y", &["z2"], &[]),
    ];
    assert_eq!(cluster(zone_only, Some("z2")), [ip("10.0.0.2")]);
}
