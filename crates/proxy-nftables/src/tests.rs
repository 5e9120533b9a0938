use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;

use twill_model::{
    ClusterState, Endpoint, EndpointPort, EndpointSlice, IpFamily, LoadBalancerIngress, Object,
    ObjectKey, Protocol, Service, ServicePort, ServiceType, SessionAffinity, TargetPort,
    TrafficPolicy,
};
use twill_proxy_core::{ChangeTracker, FeatureGates, ModelConfig, ProxyModel, build_model};

use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn svc(name: &str, cluster_ip: &str) -> Service {
    Service {
        key: ObjectKey::new("ns1", name),
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

fn slice(svc: &str, eps: &[(&str, &str)]) -> EndpointSlice {
    EndpointSlice {
        key: ObjectKey::new("ns1", format!("{svc}-1")),
        service_name: Some(svc.into()),
        endpoints: eps
            .iter()
            .map(|(a, node)| Endpoint {
                addresses: vec![ip(a)],
                node_name: (!node.is_empty()).then(|| node.to_string()),
                ..Default::default()
            })
            .collect(),
        ports: vec![EndpointPort {
            name: "p80".into(),
            protocol: Protocol::Tcp,
            port: Some(80),
            app_protocol: None,
        }],
        ..Default::default()
    }
}

fn model_of(family: IpFamily, objs: Vec<Object>) -> ProxyModel {
    let mc = ModelConfig {
        family,
        node_name: "node1".into(),
        node_zone: None,
        gates: FeatureGates::default(),
    };
    build_model(&ClusterState::from_objects(objs), &mc).0
}

fn model(objs: Vec<Object>) -> ProxyModel {
    model_of(IpFamily::V4, objs)
}

fn cfg() -> Config {
    let mut c = Config::new(
        IpFamily::V4,
        vec![ip("192.168.0.2")],
        LocalDetector::ClusterCidr("10.0.0.0/8".parse().unwrap()),
    );
    c.local_addresses = vec![ip("127.0.0.1"), ip("192.168.0.2"), ip("192.168.1.2")];
    c
}

fn lines(s: &str) -> BTreeSet<&str> {
    s.lines().collect()
}

fn assert_has(script: &str, want: &[&str]) {
    let have = lines(script);
    for w in want {
        assert!(have.contains(w), "missing line:\n{w}\nin:\n{script}");
    }
}

#[test]
fn chain_names_match_upstream_examples() {
    let m = model(vec![
        Object::Service(svc("svc1", "172.30.0.41")),
        Object::EndpointSlice(slice("svc1", &[("10.180.0.1", "")])),
    ]);
    let (name, _) = m.services.iter().next().unwrap();
    assert_eq!(service_chain_base(name), "ULMVA6XW-ns1/svc1/tcp/p80");
    assert_eq!(
        endpoint_chain_base(name, &m.endpoints_of(name)[0]),
        "5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80"
    );
    let m6 = model_of(
        IpFamily::V6,
        vec![
            Object::Service(svc("svc1", "fd00:172:30::41")),
            Object::EndpointSlice({
                let mut s = slice("svc1", &[("fd00:10:180::1", ""), ("fd00:10:180::2:1", "")]);
                s.address_type = twill_model::AddressType::IPv6;
                s
            }),
        ],
    );
    let (name, _) = m6.services.iter().next().unwrap();
    let eps = m6.endpoints_of(name);
    let names: Vec<String> = eps.iter().map(|e| endpoint_chain_base(name, e)).collect();
    assert!(names.contains(&"ZVRFLKHO-ns1/svc1/tcp/p80__fd00.10.180..1/80".to_string()));
    assert!(names.contains(&"2CRNCTTE-ns1/svc1/tcp/p80__fd00.10.180..2.1/80".to_string()));
}

#[test]
fn overlong_names_are_cut_with_an_ellipsis_but_keep_their_hash() {
    let long = "x".repeat(300);
    let a = hash_and_truncate(&long);
    let b = hash_and_truncate(&format!("{long}y"));
    assert_eq!(a.len(), 240);
    assert!(a.ends_with("..."));
    assert_ne!(a[..8], b[..8], "the hash still tells them apart");
}

#[test]
fn cluster_ip_service_gets_upstream_layout() {
    let m = model(vec![
        Object::Service(svc("svc1", "172.30.0.41")),
        Object::EndpointSlice(slice("svc1", &[("10.180.0.1", "")])),
    ]);
    let s = full_script(&render(&cfg(), &m), None);
    assert_has(
        &s,
        &[
            "add table ip kube-proxy { comment \"rules for kube-proxy\" ; }",
            "delete table ip kube-proxy",
            "add chain ip kube-proxy filter-prerouting-pre-dnat { type filter hook prerouting priority -110 ; }",
            "add chain ip kube-proxy filter-output { type filter hook output priority 0 ; }",
            "add rule ip kube-proxy filter-output ct state new jump service-endpoints-check",
            "add chain ip kube-proxy nat-postrouting { type nat hook postrouting priority 100 ; }",
            "add map ip kube-proxy service-ips { type ipv4_addr . inet_proto . inet_service : verdict ; comment \"ClusterIP, ExternalIP and LoadBalancer IP traffic\" ; }",
            "add rule ip kube-proxy services ip daddr . meta l4proto . th dport vmap @service-ips",
            "add rule ip kube-proxy services ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports",
            "add rule ip kube-proxy mark-for-masquerade mark set mark or 0x4000",
            "add rule ip kube-proxy masquerading mark and 0x4000 == 0 return",
            "add rule ip kube-proxy masquerading masquerade fully-random",
            "add rule ip kube-proxy filter-forward ct state new jump cluster-ips-check",
            "add rule ip kube-proxy cluster-ips-check ip daddr @cluster-ips reject comment \"Reject traffic to invalid ports of ClusterIPs\"",
            "add chain ip kube-proxy service-ULMVA6XW-ns1/svc1/tcp/p80",
            "add rule ip kube-proxy service-ULMVA6XW-ns1/svc1/tcp/p80 ip daddr 172.30.0.41 ip saddr != 10.0.0.0/8 jump mark-for-masquerade",
            "add rule ip kube-proxy service-ULMVA6XW-ns1/svc1/tcp/p80 numgen random mod 1 vmap { 0 : goto endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 }",
            "add rule ip kube-proxy endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 ip saddr 10.180.0.1 jump mark-for-masquerade",
            "add rule ip kube-proxy endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 meta l4proto tcp dnat to 10.180.0.1:80",
            "add element ip kube-proxy cluster-ips { 172.30.0.41 }",
            "add element ip kube-proxy service-ips { 172.30.0.41 . tcp . 80 : goto service-ULMVA6XW-ns1/svc1/tcp/p80 }",
            "add element ip kube-proxy nodeport-ips { 192.168.0.2 }",
        ],
    );
    assert!(
        !s.contains("nodeport-ips { 127.0.0.1 }"),
        "nftables mode has no localhost node ports"
    );
}

#[test]
fn service_without_endpoints_is_rejected_through_the_reject_chain() {
    let mut sv = svc("svc1", "172.30.0.41");
    sv.service_type = ServiceType::NodePort;
    sv.ports[0].node_port = Some(3001);
    let s = full_script(&render(&cfg(), &model(vec![Object::Service(sv)])), None);
    assert_has(
        &s,
        &[
            "add element ip kube-proxy no-endpoint-services { 172.30.0.41 . tcp . 80 comment \"ns1/svc1:p80\" : goto reject-chain }",
            "add element ip kube-proxy no-endpoint-nodeports { tcp . 3001 comment \"ns1/svc1:p80\" : goto reject-chain }",
            "add rule ip kube-proxy reject-chain reject",
        ],
    );
    assert!(
        !s.contains("service-ULMVA6XW"),
        "no chains without endpoints"
    );
}

#[test]
fn external_local_policy_short_circuits_pods_and_drops_without_local_endpoints() {
    let mut sv = svc("svc1", "172.30.0.41");
    sv.service_type = ServiceType::LoadBalancer;
    sv.external_traffic_policy = TrafficPolicy::Local;
    sv.ports[0].node_port = Some(3001);
    sv.load_balancer_ingress = vec![LoadBalancerIngress {
        ip: ip("1.2.3.4"),
        ip_mode_proxy: false,
    }];
    let m = model(vec![
        Object::Service(sv),
        Object::EndpointSlice(slice("svc1", &[("10.180.0.1", "other")])),
    ]);
    let d = render(&cfg(), &m);
    let s = full_script(&d, None);
    let ext = "external-ULMVA6XW-ns1/svc1/tcp/p80";
    assert_has(
        &s,
        &[
            &format!(
                "add rule ip kube-proxy {ext} ip saddr 10.0.0.0/8 goto service-ULMVA6XW-ns1/svc1/tcp/p80 comment \"short-circuit pod traffic\""
            ),
            &format!(
                "add rule ip kube-proxy {ext} fib saddr type local jump mark-for-masquerade comment \"masquerade local traffic\""
            ),
            &format!("add element ip kube-proxy service-ips {{ 1.2.3.4 . tcp . 80 : goto {ext} }}"),
            "add element ip kube-proxy no-endpoint-services { 1.2.3.4 . tcp . 80 comment \"ns1/svc1:p80\" : drop }",
            "add element ip kube-proxy no-endpoint-nodeports { tcp . 3001 comment \"ns1/svc1:p80\" : drop }",
        ],
    );
    assert!(
        !s.contains(&format!("{ext} goto local-")),
        "no local endpoints to go to"
    );
    assert_eq!(d.no_local_endpoints(), (0, 1));
}

#[test]
fn source_ranges_go_through_the_firewall_map_and_chain() {
    let mut sv = svc("svc1", "172.30.0.41");
    sv.service_type = ServiceType::LoadBalancer;
    sv.ports[0].node_port = Some(3001);
    sv.load_balancer_ingress = vec![LoadBalancerIngress {
        ip: ip("5.6.7.8"),
        ip_mode_proxy: false,
    }];
    sv.load_balancer_source_ranges = vec!["203.0.113.0/25".parse().unwrap()];
    let m = model(vec![
        Object::Service(sv),
        Object::EndpointSlice(slice("svc1", &[("10.180.0.1", "")])),
    ]);
    let s = full_script(&render(&cfg(), &m), None);
    assert_has(
        &s,
        &[
            "add rule ip kube-proxy firewall-ULMVA6XW-ns1/svc1/tcp/p80 ip saddr != { 203.0.113.0/25 } drop",
            "add element ip kube-proxy firewall-ips { 5.6.7.8 . tcp . 80 : goto firewall-ULMVA6XW-ns1/svc1/tcp/p80 }",
            "add rule ip kube-proxy firewall-check ip daddr . meta l4proto . th dport vmap @firewall-ips",
        ],
    );
}

#[test]
fn client_ip_affinity_uses_dynamic_sets_with_the_timeout() {
    let mut sv = svc("svc1", "172.30.0.41");
    sv.session_affinity = SessionAffinity::ClientIp {
        timeout_seconds: 10800,
    };
    let m = model(vec![
        Object::Service(sv),
        Object::EndpointSlice(slice("svc1", &[("10.180.0.1", ""), ("10.180.0.2", "")])),
    ]);
    let s = full_script(&render(&cfg(), &m), None);
    let ep = "5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80";
    assert_has(
        &s,
        &[
            &format!(
                "add set ip kube-proxy affinity-{ep} {{ type ipv4_addr ; flags dynamic,timeout ; timeout 10800s ; }}"
            ),
            &format!(
                "add rule ip kube-proxy service-ULMVA6XW-ns1/svc1/tcp/p80 ip saddr @affinity-{ep} goto endpoint-{ep}"
            ),
            &format!("add rule ip kube-proxy endpoint-{ep} update @affinity-{ep} {{ ip saddr }}"),
        ],
    );
    assert!(s.contains("numgen random mod 2 vmap { 0 : goto endpoint-"));
}

fn three_services(b_endpoints: &[(&str, &str)]) -> ProxyModel {
    model(vec![
        Object::Service(svc("a", "172.30.0.1")),
        Object::Service(svc("b", "172.30.0.2")),
        Object::Service(svc("c", "172.30.0.3")),
        Object::EndpointSlice(slice("a", &[("10.1.0.1", ""), ("10.1.0.2", "")])),
        Object::EndpointSlice(slice("b", b_endpoints)),
        Object::EndpointSlice(slice("c", &[("10.3.0.1", "")])),
    ])
}

#[test]
fn one_endpoint_change_touches_only_that_services_chains() {
    let c = cfg();
    let m1 = three_services(&[("10.2.0.1", ""), ("10.2.0.2", "")]);
    let m2 = three_services(&[("10.2.0.1", ""), ("10.2.0.3", "")]);
    let mut tracker = ChangeTracker::new();
    tracker.commit(m1.clone());
    let changed = tracker.diff(&m2).services;
    let d1 = render(&c, &m1);
    let d2 = render_changed(&c, &m2, &d1, &changed);
    for n in ["a", "c"] {
        let (k, _) = d2
            .services
            .iter()
            .find(|(k, _)| k.service.name == n)
            .unwrap();
        assert!(Arc::ptr_eq(&d1.services[k], &d2.services[k]), "{n} reused");
    }
    assert_eq!(
        d2,
        render(&c, &m2),
        "incremental render equals a full render"
    );
    let s = diff_script(&d1, &d2).unwrap();
    for l in s.lines() {
        assert!(l.contains("ns1/b/tcp/p80"), "touches another service: {l}");
    }
    let old_ep = endpoint_chain_base(
        &d1.services.keys().nth(1).unwrap().clone(),
        &m1.endpoints_of(d1.services.keys().nth(1).unwrap())[1],
    );
    assert!(old_ep.contains("10.2.0.2"));
    let svc_chain =
        "service-".to_string() + &service_chain_base(d1.services.keys().nth(1).unwrap());
    let t = "ip kube-proxy";
    assert_has(
        &s,
        &[
            &format!("flush chain {t} {svc_chain}"),
            &format!("flush chain {t} endpoint-{old_ep}"),
            &format!("delete chain {t} endpoint-{old_ep}"),
        ],
    );
    assert!(
        s.lines()
            .any(|l| l.starts_with(&format!("add chain {t} endpoint-")) && l.contains("10.2.0.3"))
    );
    assert!(
        !s.contains("service-ips"),
        "the service's map element did not change"
    );
    let pos = |p: &str| s.find(p).unwrap();
    assert!(
        pos("add rule") < pos("delete chain"),
        "chains are deleted after the rules that used them are replaced"
    );
}

#[test]
fn identical_states_need_no_transaction() {
    let c = cfg();
    let m = three_services(&[("10.2.0.1", "")]);
    assert_eq!(diff_script(&render(&c, &m), &render(&c, &m)), None);
}

#[test]
fn removed_service_loses_chains_elements_and_cluster_ip() {
    let c = cfg();
    let m1 = three_services(&[("10.2.0.1", "")]);
    let mut m2 = m1.clone();
    m2.services.retain(|k, _| k.service.name != "c");
    m2.endpoints.retain(|k, _| k.service.name != "c");
    let s = diff_script(&render(&c, &m1), &render(&c, &m2)).unwrap();
    assert_has(
        &s,
        &[
            "delete element ip kube-proxy cluster-ips { 172.30.0.3 }",
            "delete element ip kube-proxy service-ips { 172.30.0.3 . tcp . 80 }",
        ],
    );
    assert_eq!(
        s.lines().filter(|l| l.starts_with("delete chain")).count(),
        2
    );
    let del = s.find("delete element ip kube-proxy service-ips").unwrap();
    assert!(del < s.find("delete chain").unwrap());
}

#[test]
fn a_service_losing_its_endpoints_switches_to_reject() {
    let c = cfg();
    let m1 = three_services(&[("10.2.0.1", "")]);
    let mut m2 = m1.clone();
    m2.endpoints.retain(|k, _| k.service.name != "b");
    let s = diff_script(&render(&c, &m1), &render(&c, &m2)).unwrap();
    assert_has(
        &s,
        &[
            "delete element ip kube-proxy service-ips { 172.30.0.2 . tcp . 80 }",
            "add element ip kube-proxy no-endpoint-services { 172.30.0.2 . tcp . 80 comment \"ns1/b:p80\" : goto reject-chain }",
        ],
    );
    assert!(!s.contains("cluster-ips"), "the ClusterIP stays active");
}

#[test]
fn changed_settings_rebuild_the_table() {
    let m = three_services(&[("10.2.0.1", "")]);
    let mut c2 = cfg();
    c2.masquerade_all = true;
    let s = diff_script(&render(&cfg(), &m), &render(&c2, &m)).unwrap();
    assert!(s.contains("delete table ip kube-proxy"));
    assert!(s.contains("ip daddr 172.30.0.1 jump mark-for-masquerade"));
}

#[test]
fn in_place_full_sync_deletes_only_what_the_table_should_not_have() {
    let m = three_services(&[("10.2.0.1", "")]);
    let existing = parse_existing(
        "table ip kube-proxy {\n\tset affinity-ABCDEFGH-ns1/gone/tcp/p80__10.9.0.1/80 {\n\t\ttype ipv4_addr\n\t}\n\
         \tmap service-ips {\n\t}\n\tchain services {\n\t}\n\tchain service-ABCDEFGH-ns1/gone/tcp/p80 {\n\t}\n\
         \tchain filter-output-post-dnat {\n\t}\n}\n",
    );
    assert!(existing.chains.contains("services"));
    assert!(existing.sets.contains("service-ips"));
    let s = full_script(&render(&cfg(), &m), Some(&existing));
    assert!(!s.contains("delete table"), "affinity state is kept");
    assert_has(
        &s,
        &[
            "delete chain ip kube-proxy service-ABCDEFGH-ns1/gone/tcp/p80",
            "delete chain ip kube-proxy filter-output-post-dnat",
            "delete set ip kube-proxy affinity-ABCDEFGH-ns1/gone/tcp/p80__10.9.0.1/80",
            "flush map ip kube-proxy service-ips",
            "flush chain ip kube-proxy services",
        ],
    );
    assert!(!s.contains("delete chain ip kube-proxy services"));
    assert!(!s.contains("delete map"), "wanted maps stay");
    assert!(
        s.lines().filter(|l| l.starts_with("delete ")).count() == 3,
        "only the two stale chains and the stale set go"
    );
}

#[test]
fn rendering_is_deterministic() {
    let m = three_services(&[("10.2.0.2", ""), ("10.2.0.1", "")]);
    assert_eq!(
        full_script(&render(&cfg(), &m), None),
        full_script(&render(&cfg(), &m), None)
    );
}

#[test]
fn nodeport_addresses_select_local_addresses_but_never_loopback() {
    let mut c = cfg();
    assert_eq!(
        crate::config::node_port_ips(&c),
        [ip("192.168.0.2"), ip("192.168.1.2")]
    );
    c.node_port_addresses = vec![
        "192.168.1.0/24".parse().unwrap(),
        "127.0.0.0/8".parse().unwrap(),
    ];
    assert_eq!(crate::config::node_port_ips(&c), [ip("192.168.1.2")]);
}

#[test]
fn ipv6_uses_the_ip6_family() {
    let m6 = model_of(
        IpFamily::V6,
        vec![
            Object::Service(svc("svc1", "fd00:172:30::41")),
            Object::EndpointSlice({
                let mut s = slice("svc1", &[("fd00:10:180::1", "")]);
                s.address_type = twill_model::AddressType::IPv6;
                s
            }),
        ],
    );
    let mut c = Config::new(
        IpFamily::V6,
        vec![ip("2001:db8::1")],
        LocalDetector::ClusterCidr("fd00:10::/64".parse().unwrap()),
    );
    c.local_addresses = vec![ip("::1"), ip("2001:db8::1")];
    let s = full_script(&render(&c, &m6), None);
    assert_has(
        &s,
        &[
            "add rule ip6 kube-proxy service-ULMVA6XW-ns1/svc1/tcp/p80 ip6 daddr fd00:172:30::41 ip6 saddr != fd00:10::/64 jump mark-for-masquerade",
            "add rule ip6 kube-proxy endpoint-ZVRFLKHO-ns1/svc1/tcp/p80__fd00.10.180..1/80 meta l4proto tcp dnat to [fd00:10:180::1]:80",
            "add element ip6 kube-proxy nodeport-ips { 2001:db8::1 }",
        ],
    );
}

#[test]
fn large_clusters_use_named_numgen_maps_so_an_endpoint_swap_leaves_the_service_chain() {
    let mut c = cfg();
    c.large_cluster_endpoints = 3;
    let m1 = three_services(&[("10.2.0.1", ""), ("10.2.0.2", "")]);
    let m2 = three_services(&[("10.2.0.1", ""), ("10.2.0.3", "")]);
    let d1 = render(&c, &m1);
    assert!(d1.named_vmaps, "5 endpoints > 3");
    let b = d1.services.keys().nth(1).unwrap().clone();
    let chain = format!("service-{}", service_chain_base(&b));
    let full = full_script(&d1, None);
    assert_has(
        &full,
        &[
            &format!("add map ip kube-proxy {chain} {{ typeof numgen random mod 1 : verdict ; }}"),
            &format!("add rule ip kube-proxy {chain} numgen random mod 2 vmap @{chain}"),
        ],
    );
    assert!(full.lines().any(|l| l.starts_with(&format!(
        "add element ip kube-proxy {chain} {{ 0 : goto endpoint-"
    ))));
    let mut tracker = ChangeTracker::new();
    tracker.commit(m1);
    let d2 = render_changed(&c, &m2, &d1, &tracker.diff(&m2).services);
    assert_eq!(d2, render(&c, &m2));
    let s = diff_script(&d1, &d2).unwrap();
    assert_has(&s, &[&format!("flush map ip kube-proxy {chain}")]);
    assert!(
        !s.contains(&format!("flush chain ip kube-proxy {chain}")),
        "{s}"
    );
    let flush = s.find("flush map").unwrap();
    assert!(
        flush < s.find("delete chain").unwrap(),
        "the map lets go of the old chain first"
    );
    assert!(s.find("add element").unwrap() > s.find("add chain").unwrap());
}

#[test]
fn crossing_the_large_cluster_threshold_rerenders_every_service() {
    let mut c = cfg();
    c.large_cluster_endpoints = 4;
    let small = three_services(&[("10.2.0.1", "")]);
    let big = three_services(&[("10.2.0.1", ""), ("10.2.0.2", "")]);
    let d1 = render(&c, &small);
    assert!(!d1.named_vmaps);
    let d2 = render_changed(&c, &big, &d1, &BTreeSet::new());
    assert!(d2.named_vmaps);
    let s = diff_script(&d1, &d2).unwrap();
    assert_eq!(s.lines().filter(|l| l.starts_with("add map")).count(), 3);
}
