use std::net::IpAddr;

use serde_json::json;
use twill_model::{Labels, NetworkPolicy, ObjectKey, Protocol};

use crate::render::{DENY_CHAIN, ROOT_CHAIN};
use crate::trace::Tracer;
use crate::*;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn policy(v: serde_json::Value) -> NetworkPolicy {
    let k: k8s_openapi::api::networking::v1::NetworkPolicy = serde_json::from_value(v).unwrap();
    twill_model::k8s::network_policy_from_k8s(&k).unwrap()
}

fn pod(ns: &str, name: &str, l: &[(&str, &str)], addr: &str, node: &str) -> PolicyPod {
    PolicyPod {
        key: ObjectKey::new(ns, name),
        labels: labels(l),
        ip: ip(addr),
        node: node.into(),
        ports: vec![
            NamedPort {
                name: Some("http".into()),
                port: 80,
                protocol: Protocol::Tcp,
            },
            NamedPort {
                name: Some("dns".into()),
                port: 53,
                protocol: Protocol::Udp,
            },
        ],
    }
}

/// Namespaces x and y; x/a, x/b on n1, y/a on n2 (where `http` is 8080 instead).
fn cluster() -> Cluster {
    let mut c = Cluster::default();
    c.nodes.insert(
        "n1".into(),
        NodeInfo {
            name: "n1".into(),
            addresses: vec![ip("172.18.0.2"), ip("10.244.1.1")],
            labels: labels(&[("kubernetes.io/hostname", "n1")]),
        },
    );
    c.nodes.insert(
        "n2".into(),
        NodeInfo {
            name: "n2".into(),
            addresses: vec![ip("172.18.0.3")],
            labels: labels(&[("kubernetes.io/hostname", "n2")]),
        },
    );
    c.namespaces.insert("x".into(), labels(&[("ns", "x")]));
    c.namespaces
        .insert("y".into(), labels(&[("ns", "y"), ("team", "blue")]));
    for p in [
        pod("x", "a", &[("pod", "a")], "10.244.1.11", "n1"),
        pod("x", "b", &[("pod", "b")], "10.244.1.12", "n1"),
        pod("y", "a", &[("pod", "a")], "10.244.2.21", "n2"),
    ] {
        c.pods.insert(p.key.clone(), p);
    }
    let ya = c.pods.get_mut(&ObjectKey::new("y", "a")).unwrap();
    ya.ports[0].port = 8080;
    c
}

fn add(c: &mut Cluster, v: serde_json::Value) {
    c.upsert_policy(policy(v));
}

fn np(ns: &str, name: &str, spec: serde_json::Value) -> serde_json::Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
           "metadata": {"name": name, "namespace": ns}, "spec": spec})
}

fn verdict(c: &Cluster, from: &str, to: &str, port: u16, proto: Protocol) -> bool {
    let peer = |s: &str| match s.split_once('/') {
        Some((ns, n)) => Peer::Pod(&c.pods[&ObjectKey::new(ns, n)]),
        None => Peer::Ip(ip(s)),
    };
    allows(c, peer(from), peer(to), port, proto)
}

#[test]
fn pods_no_policy_selects_are_unrestricted() {
    let mut c = cluster();
    add(
        &mut c,
        np(
            "x",
            "deny-b",
            json!({"podSelector": {"matchLabels": {"pod": "b"}}}),
        ),
    );
    assert!(verdict(&c, "y/a", "x/a", 80, Protocol::Tcp));
    assert!(!verdict(&c, "y/a", "x/b", 80, Protocol::Tcp));
    assert!(
        verdict(&c, "x/b", "y/a", 80, Protocol::Tcp),
        "ingress-only policy leaves egress open"
    );
}

#[test]
fn egress_rules_without_policy_types_also_isolate_ingress() {
    let mut c = cluster();
    add(
        &mut c,
        np(
            "x",
            "e",
            json!({"podSelector": {"matchLabels": {"pod": "a"}}, "egress": [{}]}),
        ),
    );
    assert!(verdict(&c, "x/a", "y/a", 80, Protocol::Tcp));
    assert!(!verdict(&c, "x/b", "x/a", 80, Protocol::Tcp));
}

#[test]
fn empty_egress_list_without_policy_types_does_not_isolate_egress() {
    let mut c = cluster();
    add(
        &mut c,
        np("x", "e", json!({"podSelector": {}, "egress": []})),
    );
    assert!(verdict(&c, "x/a", "y/a", 80, Protocol::Tcp));
    assert!(!verdict(&c, "y/a", "x/a", 80, Protocol::Tcp));
}

#[test]
fn named_port_resolves_on_the_destination_pod() {
    let mut c = cluster();
    add(
        &mut c,
        np(
            "x",
            "e",
            json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"],
            "egress": [{"ports": [{"port": "http"}]}]}),
        ),
    );
    assert!(verdict(&c, "x/a", "x/b", 80, Protocol::Tcp));
    assert!(verdict(&c, "x/a", "y/a", 8080, Protocol::Tcp));
    assert!(
        !verdict(&c, "x/a", "y/a", 80, Protocol::Tcp),
        "y/a's http is 8080"
    );
    assert!(
        !verdict(&c, "x/a", "192.0.2.1", 80, Protocol::Tcp),
        "a name never matches a non-pod"
    );
}

#[test]
fn namespace_and_pod_selector_in_one_peer_are_anded() {
    let mut c = cluster();
    add(
        &mut c,
        np(
            "x",
            "i",
            json!({"podSelector": {}, "ingress": [{"from": [
            {"namespaceSelector": {"matchLabels": {"team": "blue"}}, "podSelector": {"matchLabels": {"pod": "b"}}}]}]}),
        ),
    );
    assert!(!verdict(&c, "y/a", "x/a", 80, Protocol::Tcp));
    assert!(!verdict(&c, "x/b", "x/a", 80, Protocol::Tcp));
    c.pods.get_mut(&ObjectKey::new("y", "a")).unwrap().labels = labels(&[("pod", "b")]);
    assert!(
        verdict(&c, "y/a", "x/a", 80, Protocol::Tcp),
        "labels are live"
    );
}

#[test]
fn ipblock_except_applies_to_pod_ips_too() {
    let mut c = cluster();
    add(
        &mut c,
        np(
            "x",
            "e",
            json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"],
            "egress": [{"to": [{"ipBlock": {"cidr": "10.244.0.0/16", "except": ["10.244.2.0/24"]}}]}]}),
        ),
    );
    assert!(verdict(&c, "x/a", "x/b", 80, Protocol::Tcp));
    assert!(!verdict(&c, "x/a", "y/a", 80, Protocol::Tcp));
    assert!(!verdict(&c, "x/a", "192.0.2.1", 80, Protocol::Tcp));
}

#[test]
fn own_node_reaches_isolated_pod_but_other_node_does_not() {
    let mut c = cluster();
    add(
        &mut c,
        np(
            "x",
            "deny",
            json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
        ),
    );
    assert!(verdict(&c, "10.244.1.1", "x/a", 80, Protocol::Tcp));
    assert!(verdict(&c, "172.18.0.2", "x/a", 80, Protocol::Tcp));
    assert!(!verdict(&c, "172.18.0.3", "x/a", 80, Protocol::Tcp));
    assert!(
        !verdict(&c, "x/a", "172.18.0.2", 10250, Protocol::Tcp),
        "no egress exception towards the node"
    );
}

#[test]
fn protocols_are_separate_and_end_port_is_inclusive() {
    let mut c = cluster();
    add(
        &mut c,
        np(
            "x",
            "i",
            json!({"podSelector": {}, "ingress": [{"ports": [
            {"protocol": "UDP"}, {"protocol": "TCP", "port": 80, "endPort": 82}]}]}),
        ),
    );
    assert!(verdict(&c, "y/a", "x/a", 53, Protocol::Udp));
    assert!(verdict(&c, "y/a", "x/a", 82, Protocol::Tcp));
    assert!(!verdict(&c, "y/a", "x/a", 83, Protocol::Tcp));
    assert!(!verdict(&c, "y/a", "x/a", 80, Protocol::Sctp));
}

#[test]
fn broken_policy_fails_closed_for_the_pods_it_selects() {
    let mut c = cluster();
    c.upsert_broken(BrokenPolicy {
        key: ObjectKey::new("x", "bad"),
        pod_selector: Some(twill_model::LabelSelector::from_labels(labels(&[(
            "pod", "a",
        )]))),
        ingress: true,
        egress: false,
        reason: "test".into(),
    });
    assert!(!verdict(&c, "y/a", "x/a", 80, Protocol::Tcp));
    assert!(verdict(&c, "y/a", "x/b", 80, Protocol::Tcp));
    let rules = render_node(&c, "n1", &RenderOptions::default());
    let t = Tracer::new(&rules).unwrap();
    assert!(!t.admits(ip("10.244.2.21"), ip("10.244.1.11"), Protocol::Tcp, 80));
    assert!(t.admits(ip("10.244.2.21"), ip("10.244.1.12"), Protocol::Tcp, 80));
}

/// A mixed set of policies; rendered rules traced on both nodes must agree with `allows`
/// for every pair, port and protocol.
#[test]
fn rendered_rules_agree_with_the_evaluator_for_every_pair() {
    let mut c = cluster();
    add(
        &mut c,
        np(
            "x",
            "a-from-y-http",
            json!({"podSelector": {"matchLabels": {"pod": "a"}},
        "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}], "ports": [{"port": "http"}]},
                    {"from": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["192.0.2.0/24"]}}], "ports": [{"protocol": "UDP", "port": 53}]}]}),
        ),
    );
    add(
        &mut c,
        np(
            "y",
            "egress-limited",
            json!({"podSelector": {}, "policyTypes": ["Egress"],
        "egress": [{"to": [{"podSelector": {"matchLabels": {"pod": "a"}}, "namespaceSelector": {}}]},
                   {"to": [{"ipBlock": {"cidr": "192.0.2.0/24"}}], "ports": [{"port": 1000, "endPort": 2000}]}]}),
        ),
    );
    add(
        &mut c,
        np(
            "x",
            "b-nothing",
            json!({"podSelector": {"matchLabels": {"pod": "b"}}, "ingress": []}),
        ),
    );
    assert!(rendered_agrees(&c) > 40);
}

/// The flow log's rules log every decision and change none: for every pair, the verdict
/// with NFLOG rules is the evaluator's, a refused connection is logged as a drop in the
/// direction that refused it, and an admitted one as allowed in each isolated direction.
#[test]
fn flow_log_rules_log_each_decision_and_change_no_verdict() {
    let mut c = cluster();
    add(
        &mut c,
        np(
            "x",
            "a-from-y",
            json!({"podSelector": {"matchLabels": {"pod": "a"}},
        "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}], "ports": [{"port": 80}]}]}),
        ),
    );
    add(
        &mut c,
        np(
            "y",
            "egress-to-a",
            json!({"podSelector": {}, "policyTypes": ["Egress"],
        "egress": [{"to": [{"podSelector": {"matchLabels": {"pod": "a"}}, "namespaceSelector": {}}]}]}),
        ),
    );
    let opts = RenderOptions {
        flow_log: Some(render::FlowLogRules {
            allowed: true,
            ..Default::default()
        }),
        ..Default::default()
    };
    let tracers: Vec<(String, Tracer)> = ["n1", "n2"]
        .iter()
        .map(|n| {
            (
                n.to_string(),
                Tracer::new(&render_node(&c, n, &opts)).unwrap(),
            )
        })
        .collect();
    let pods: Vec<PolicyPod> = c.pods.values().cloned().collect();
    let (mut drops, mut allows) = (0, 0);
    for from in &pods {
        for to in &pods {
            if from.key == to.key {
                continue;
            }
            for port in [80, 8080] {
                let want = verdict(
                    &c,
                    &from.key.to_string(),
                    &to.key.to_string(),
                    port,
                    Protocol::Tcp,
                );
                let mut got = true;
                let mut logged = Vec::new();
                for (n, t) in &tracers {
                    if *n == from.node || *n == to.node {
                        let (ok, l) = t.admits_logging(from.ip, to.ip, Protocol::Tcp, port);
                        got &= ok;
                        logged.extend(l);
                    }
                }
                assert_eq!(got, want, "{} -> {} {port}", from.key, to.key);
                let mut decoded: Vec<(bool, bool)> = logged
                    .iter()
                    .map(|p| render::flow_prefix(p).unwrap())
                    .collect();
                decoded.sort();
                let egress_isolated = c.isolated_for_egress(from);
                let ingress_isolated = c.isolated_for_ingress(to);
                if want {
                    let expect: Vec<(bool, bool)> =
                        [(egress_isolated, false), (ingress_isolated, true)]
                            .into_iter()
                            .filter(|(iso, _)| *iso)
                            .map(|(_, ingress)| (true, ingress))
                            .collect();
                    assert_eq!(decoded, expect, "{} -> {} {port}", from.key, to.key);
                    allows += expect.len();
                } else {
                    assert_eq!(
                        decoded.iter().filter(|(a, _)| !a).count(),
                        1,
                        "{} -> {} {port}: refused, logged {logged:?}",
                        from.key,
                        to.key
                    );
                    drops += 1;
                }
            }
        }
    }
    assert!(drops >= 5 && allows >= 2, "{drops} drops, {allows} allows");
    // Without the option nothing is logged.
    let plain = render_node(&c, "n1", &RenderOptions::default());
    assert!(!plain.iptables.contains("NFLOG"));
}

#[test]
fn flow_prefixes_read_back() {
    assert_eq!(
        render::flow_prefix("twill-np drop ingress"),
        Some((false, true))
    );
    assert_eq!(
        render::flow_prefix("twill-np allow egress"),
        Some((true, false))
    );
    assert_eq!(render::flow_prefix("twill-np drop sideways"), None);
    assert_eq!(render::flow_prefix("KUBE-SVC drop ingress"), None);
}

#[test]
fn names_fit_kernel_limits_and_output_is_deterministic() {
    let mut c = cluster();
    add(
        &mut c,
        np(
            "x",
            "a-very-long-policy-name-that-would-not-fit-in-a-chain",
            json!({"podSelector": {},
        "ingress": [{"from": [{"podSelector": {}}]}], "egress": [{"ports": [{"port": "dns", "protocol": "UDP"}]}]}),
        ),
    );
    let r1 = render_node(&c, "n1", &RenderOptions::default());
    let r2 = render_node(&c.clone(), "n1", &RenderOptions::default());
    assert_eq!(r1, r2);
    assert!(r1.chains.iter().all(|ch| ch.len() <= 28), "{:?}", r1.chains);
    assert!(r1.sets.iter().all(|s| s.len() <= 31), "{:?}", r1.sets);
    assert!(
        r1.iptables.contains(&format!(":{ROOT_CHAIN} "))
            && r1.iptables.contains(&format!(":{DENY_CHAIN} "))
    );
    let first_rule = r1.iptables.lines().find(|l| l.starts_with("-A ")).unwrap();
    assert!(
        first_rule.contains("ESTABLISHED"),
        "conntrack comes first: {first_rule}"
    );
}

#[test]
fn chains_of_removed_policies_are_deleted_in_the_same_restore() {
    let mut c = cluster();
    add(&mut c, np("x", "p", json!({"podSelector": {}})));
    let before = render_node(&c, "n1", &RenderOptions::default());
    c.delete_policy(&ObjectKey::new("x", "p"));
    let after = render_node(
        &c,
        "n1",
        &RenderOptions {
            existing_chains: before.chains.clone(),
            ..Default::default()
        },
    );
    let gone: Vec<&String> = before
        .chains
        .iter()
        .filter(|ch| !after.chains.contains(ch))
        .collect();
    assert!(!gone.is_empty());
    for ch in gone {
        assert!(
            after.iptables.contains(&format!("-X {ch}\n")),
            "{ch} not deleted"
        );
    }
    assert!(!after.iptables.contains("-X FORWARD"));
}

#[test]
fn more_peer_pods_grow_sets_not_rules() {
    let mut c = cluster();
    add(
        &mut c,
        np(
            "x",
            "from-y",
            json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]}),
        ),
    );
    let small = render_node(&c, "n1", &RenderOptions::default());
    for i in 0..50u8 {
        let p = pod(
            "y",
            &format!("p{i}"),
            &[],
            &format!("10.244.2.{}", 100 + i),
            "n2",
        );
        c.pods.insert(p.key.clone(), p);
    }
    let big = render_node(&c, "n1", &RenderOptions::default());
    assert_eq!(small.rule_count, big.rule_count);
    assert_eq!(big.set_entries, small.set_entries + 50);
}

#[test]
fn drop_mode_renders_drop_instead_of_reject() {
    let mut c = cluster();
    add(&mut c, np("x", "p", json!({"podSelector": {}})));
    let r = render_node(
        &c,
        "n1",
        &RenderOptions {
            deny: DenyAction::Drop,
            ..Default::default()
        },
    );
    assert!(r.iptables.contains(&format!("-A {DENY_CHAIN} -j DROP")));
    assert!(!r.iptables.contains("REJECT"));
}

fn add_cnp(c: &mut Cluster, name: &str, spec: serde_json::Value) {
    let j: twill_model::k8s::ClusterNetworkPolicyJson = serde_json::from_value(json!({
        "apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": "ClusterNetworkPolicy",
        "metadata": {"name": name}, "spec": spec}))
    .unwrap();
    let p = twill_model::k8s::cnp_from_k8s(&j).unwrap_or_else(|e| panic!("{name}: {e:?}"));
    // Written and read back: the lab's cluster file carries it that way.
    let back = twill_model::k8s::cnp_from_k8s(&twill_model::k8s::cnp_to_k8s(&p)).unwrap();
    assert_eq!(back, p);
    c.cluster_policies.insert(name.into(), p);
}

/// Every pair, port and protocol, traced through both nodes' rendered rules, agrees with
/// the evaluator.
fn rendered_agrees(c: &Cluster) -> usize {
    let tracers: Vec<(String, Tracer)> = ["n1", "n2"]
        .iter()
        .map(|n| {
            (
                n.to_string(),
                Tracer::new(&render_node(c, n, &RenderOptions::default())).unwrap(),
            )
        })
        .collect();
    let mut endpoints: Vec<(String, IpAddr, Option<String>)> = c
        .pods
        .values()
        .map(|p| (p.key.to_string(), p.ip, Some(p.node.clone())))
        .collect();
    for e in ["192.0.2.9", "198.51.100.1", "172.18.0.3"] {
        endpoints.push((e.into(), ip(e), None));
    }
    let mut checked = 0;
    for (from, sip, snode) in &endpoints {
        for (to, dip, dnode) in &endpoints {
            if from == to || (snode.is_none() && dnode.is_none()) {
                continue;
            }
            for (port, proto) in [
                (80, Protocol::Tcp),
                (8080, Protocol::Tcp),
                (53, Protocol::Udp),
                (1500, Protocol::Tcp),
            ] {
                let want = verdict(c, from, to, port, proto);
                let got = tracers
                    .iter()
                    .filter(|(n, _)| Some(n) == snode.as_ref() || Some(n) == dnode.as_ref())
                    .all(|(_, t)| t.admits(*sip, *dip, proto, port));
                assert_eq!(got, want, "{from} -> {to} {port}/{proto}");
                checked += 1;
            }
        }
    }
    checked
}

#[test]
fn admin_tier_decides_before_network_policies() {
    let mut c = cluster();
    // x/a admits only namespace y on http.
    add(
        &mut c,
        np(
            "x",
            "a-from-y",
            json!({"podSelector": {"matchLabels": {"pod": "a"}},
                   "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]}),
        ),
    );
    assert!(verdict(&c, "y/a", "x/a", 80, Protocol::Tcp));
    assert!(!verdict(&c, "x/b", "x/a", 80, Protocol::Tcp));
    // Admin: deny y to x on 80 (priority 20), but accept y's pod=a on 80 first (10);
    // accept x/b into x/a (overriding the NetworkPolicy's refusal).
    add_cnp(
        &mut c,
        "deny-y",
        json!({"tier": "Admin", "priority": 20, "subject": {"namespaces": {"matchLabels": {"ns": "x"}}},
               "ingress": [{"action": "Deny", "from": [{"namespaces": {"matchLabels": {"ns": "y"}}}],
                            "protocols": [{"tcp": {"destinationPort": {"number": 80}}}]}]}),
    );
    assert!(
        !verdict(&c, "y/a", "x/a", 80, Protocol::Tcp),
        "admin Deny beats the NetworkPolicy's allow"
    );
    assert!(
        verdict(&c, "y/a", "x/a", 8080, Protocol::Tcp),
        "other ports: the NetworkPolicy decides"
    );
    add_cnp(
        &mut c,
        "accept-first",
        json!({"tier": "Admin", "priority": 10, "subject": {"pods": {"namespaceSelector": {}, "podSelector": {"matchLabels": {"pod": "a"}}}},
               "ingress": [{"action": "Accept", "from": [{"pods": {"namespaceSelector": {"matchLabels": {"ns": "y"}}, "podSelector": {"matchLabels": {"pod": "a"}}}}],
                            "protocols": [{"tcp": {"destinationPort": {"range": {"start": 79, "end": 81}}}}]},
                           {"action": "Accept", "from": [{"pods": {"namespaceSelector": {}, "podSelector": {"matchLabels": {"pod": "b"}}}}]}]}),
    );
    assert!(
        verdict(&c, "y/a", "x/a", 80, Protocol::Tcp),
        "the lower priority decides first"
    );
    assert!(
        verdict(&c, "x/b", "x/a", 80, Protocol::Tcp),
        "admin Accept beats the NetworkPolicy's refusal"
    );
    // Pass hands y's traffic to x/b back to the NetworkPolicy tier (which has none for
    // x/b: allowed), skipping the Deny of the same tier.
    add_cnp(
        &mut c,
        "pass-b",
        json!({"tier": "Admin", "priority": 15, "subject": {"pods": {"namespaceSelector": {}, "podSelector": {"matchLabels": {"pod": "b"}}}},
               "ingress": [{"action": "Pass", "from": [{"namespaces": {}}]}]}),
    );
    assert!(verdict(&c, "y/a", "x/b", 80, Protocol::Tcp));
    assert!(rendered_agrees(&c) > 60);
}

#[test]
fn baseline_tier_decides_only_where_no_network_policy_does() {
    let mut c = cluster();
    add_cnp(
        &mut c,
        "baseline-deny",
        json!({"tier": "Baseline", "priority": 5, "subject": {"namespaces": {}},
               "ingress": [{"action": "Pass", "from": [{"namespaces": {"matchLabels": {"ns": "x"}}}]},
                           {"action": "Deny", "from": [{"namespaces": {}}]}],
               "egress": [{"action": "Deny", "to": [{"networks": ["192.0.2.0/24"]}]},
                          {"action": "Deny", "to": [{"nodes": {"matchLabels": {"kubernetes.io/hostname": "n2"}}}],
                           "protocols": [{"tcp": {}}]}]}),
    );
    assert!(
        !verdict(&c, "y/a", "x/b", 80, Protocol::Tcp),
        "baseline Deny"
    );
    assert!(
        verdict(&c, "x/b", "x/a", 80, Protocol::Tcp),
        "baseline Pass: allowed by default"
    );
    assert!(
        !verdict(&c, "x/a", "192.0.2.9", 443, Protocol::Tcp),
        "networks peer"
    );
    assert!(verdict(&c, "x/a", "198.51.100.1", 443, Protocol::Tcp));
    assert!(
        !verdict(&c, "x/a", "172.18.0.3", 10250, Protocol::Tcp),
        "nodes peer"
    );
    assert!(
        verdict(&c, "x/a", "172.18.0.3", 53, Protocol::Udp),
        "nodes peer, TCP only"
    );
    // A NetworkPolicy selecting x/b takes the decision from the baseline.
    add(
        &mut c,
        np(
            "x",
            "b-open",
            json!({"podSelector": {"matchLabels": {"pod": "b"}}, "ingress": [{}]}),
        ),
    );
    assert!(
        verdict(&c, "y/a", "x/b", 80, Protocol::Tcp),
        "the NetworkPolicy overrides the baseline"
    );
    assert!(
        !verdict(&c, "y/a", "x/a", 80, Protocol::Tcp),
        "x/a still has only the baseline"
    );
    assert!(rendered_agrees(&c) > 60);
}

#[test]
fn cluster_policies_fail_closed_and_match_named_ports() {
    let mut c = cluster();
    // A peer with no field this version knows: an Accept matches nothing through it,
    // a Deny denies everything.
    let j: twill_model::k8s::ClusterNetworkPolicyJson = serde_json::from_value(json!({
        "apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": "ClusterNetworkPolicy",
        "metadata": {"name": "future"},
        "spec": {"tier": "Admin", "priority": 1, "subject": {"pods": {"namespaceSelector": {}, "podSelector": {"matchLabels": {"pod": "b"}}}},
                 "ingress": [{"action": "Accept", "from": [{"serviceAccounts": {"name": "x"}}]},
                             {"action": "Deny", "from": [{"namespaces": {"matchLabels": {"ns": "y"}}}],
                              "protocols": [{"destinationNamedPort": "http"}]}]}})).unwrap();
    let p = twill_model::k8s::cnp_from_k8s(&j).unwrap();
    assert_eq!(p.ingress[0].peers, vec![twill_model::CnpPeer::Unknown]);
    c.cluster_policies.insert("future".into(), p);
    assert!(
        !verdict(&c, "y/a", "x/b", 80, Protocol::Tcp),
        "named port http is 80 on x/b"
    );
    assert!(verdict(&c, "y/a", "x/b", 53, Protocol::Udp));
    assert!(
        verdict(&c, "x/a", "x/b", 80, Protocol::Tcp),
        "the unknown peer admits nothing, decides nothing"
    );
    assert!(rendered_agrees(&c) > 60);
    add_cnp(
        &mut c,
        "future-deny",
        json!({"tier": "Baseline", "priority": 1, "subject": {"namespaces": {"matchLabels": {"ns": "y"}}},
               "egress": [{"action": "Pass", "to": [{"domainNames": ["example.com"]}]}]}),
    );
    assert!(
        !verdict(&c, "y/a", "198.51.100.1", 80, Protocol::Tcp),
        "a Pass it cannot read denies all"
    );
    assert!(rendered_agrees(&c) > 60);
}

#[test]
fn cluster_policies_are_validated_with_field_paths() {
    let bad: twill_model::k8s::ClusterNetworkPolicyJson = serde_json::from_value(json!({
        "apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": "ClusterNetworkPolicy",
        "metadata": {"name": "bad"},
        "spec": {"tier": "Middle", "priority": 1001, "subject": {"namespaces": {}, "pods": {"podSelector": {}}},
                 "ingress": [{"action": "Allow", "from": [{"namespaces": {}}]},
                             {"action": "Deny", "from": [],
                              "protocols": [{"tcp": {"destinationPort": {"range": {"start": 90, "end": 80}}}}]}]}})).unwrap();
    let errors = twill_model::k8s::cnp_from_k8s(&bad).unwrap_err();
    let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    for want in [
        "spec.tier",
        "spec.priority",
        "spec.subject",
        "spec.ingress[0].action",
        "spec.ingress[1].from",
        "spec.ingress[1].protocols[0].tcp.destinationPort.range",
    ] {
        assert!(paths.contains(&want), "{want} not in {errors:?}");
    }
}
