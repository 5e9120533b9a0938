use std::net::IpAddr;

use twill_conformance::proxy::corpus::{CaseFile, Fixture, shared_fixture as fixture};
use twill_testkit::testdata::json_cases;

use super::*;
use crate::config::Scheduler;
use crate::ipset::render_restore;
use twill_conformance::proxy::ipvs::config_of;

fn planned(fx: &Fixture) -> (Config, Plan) {
    let p = fx.prepare(false).expect("prepare");
    let cfg = config_of(&p);
    let plan = plan(&cfg, &p.model);
    (cfg, plan)
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn a_nodeport_service_gets_a_cluster_ip_server_and_one_per_node_address_but_not_loopback() {
    let (_, plan) = planned(&fixture("nodeport.json", "localhost-nodeports enabled"));
    let cip = plan
        .lookup(ip("172.30.0.41"), Protocol::Tcp, 80)
        .expect("cluster IP VS");
    assert_eq!(cip.kind, Kind::ClusterIp);
    assert_eq!(cip.real_servers.len(), 2);
    assert!(cip.real_servers.iter().all(|r| r.weight == 1));
    for node_ip in ["192.168.0.2", "192.168.1.2"] {
        let np = plan
            .lookup(ip(node_ip), Protocol::Tcp, 3001)
            .expect("node port VS");
        assert_eq!(np.kind, Kind::NodePort);
        assert_eq!(np.real_servers, cip.real_servers);
    }
    assert!(plan.lookup(ip("127.0.0.1"), Protocol::Tcp, 3001).is_none());
    assert!(plan.bind_addresses.contains(&ip("172.30.0.41")));
    assert!(!plan.bind_addresses.contains(&ip("192.168.0.2")));
    assert!(plan.sets.contains(SetName::NodePortTcp, &Entry::port(3001)));
    assert!(plan.sets.contains(
        SetName::ClusterIp,
        &Entry::ip_port(ip("172.30.0.41"), "tcp", 80)
    ));
    assert!(
        plan.sets
            .contains(SetName::IpvsIps, &Entry::ip(ip("172.30.0.41")))
    );
}

#[test]
fn node_port_addresses_limit_the_node_port_servers() {
    let (_, plan) = planned(&fixture("nodeport.json", "localhost in nodeport-addresses"));
    assert!(
        plan.lookup(ip("192.168.0.2"), Protocol::Tcp, 3001)
            .is_some()
    );
    assert!(
        plan.lookup(ip("192.168.1.2"), Protocol::Tcp, 3001)
            .is_none()
    );
}

#[test]
fn client_ip_affinity_becomes_persistence_with_the_timeout() {
    let (_, plan) = planned(&fixture("session-affinity.json", ""));
    let persistent: Vec<&VirtualServer> = plan
        .virtual_servers
        .values()
        .filter(|v| v.spec.flags & F_PERSISTENT != 0)
        .collect();
    assert!(!persistent.is_empty());
    assert!(
        persistent
            .iter()
            .all(|v| v.spec.timeout > 0 && v.spec.netmask == u32::MAX)
    );
}

#[test]
fn the_scheduler_comes_from_config() {
    let fx = fixture("clusterip.json", "");
    let p = fx.prepare(false).unwrap();
    let mut cfg = config_of(&p);
    cfg.scheduler = Scheduler::Wlc;
    let plan = plan(&cfg, &p.model);
    assert!(
        plan.virtual_servers
            .values()
            .all(|v| v.spec.scheduler == "wlc")
    );
    assert_eq!(Scheduler::parse("sh"), Some(Scheduler::Sh));
    assert_eq!(Scheduler::parse(""), Some(Scheduler::Rr));
    assert_eq!(Scheduler::parse("bogus"), None);
}

#[test]
fn strict_arp_adds_the_arp_sysctls() {
    let fx = fixture("clusterip.json", "");
    let p = fx.prepare(false).unwrap();
    let mut cfg = config_of(&p);
    let without = plan(&cfg, &p.model);
    cfg.strict_arp = true;
    let with = plan(&cfg, &p.model);
    let has = |pl: &Plan| {
        pl.sysctls
            .iter()
            .any(|(k, v)| k.ends_with("arp_ignore") && v == "1")
    };
    assert!(!has(&without) && has(&with));
}

#[test]
fn load_balancer_source_ranges_fill_the_firewall_sets() {
    let (_, plan) = planned(&fixture("loadbalancer.json", "lb-source-ranges"));
    let lb = Entry::ip_port(ip("1.2.3.4"), "tcp", 80);
    assert!(plan.sets.contains(SetName::LoadBalancer, &lb));
    assert!(plan.sets.contains(SetName::LoadBalancerFw, &lb));
    assert!(plan.sets.contains(
        SetName::LoadBalancerSourceCidr,
        &Entry::ip_port_net(ip("1.2.3.4"), "tcp", 80, "203.0.113.0/25".parse().unwrap())
    ));
    // The node's IP is in a range, so the LB IP may talk to itself.
    assert!(plan.sets.contains(
        SetName::LoadBalancerSourceIp,
        &Entry::ip_port_ip(ip("1.2.3.4"), "tcp", 80, ip("1.2.3.4"))
    ));
    assert!(plan.bind_addresses.contains(&ip("1.2.3.4")));
}

#[test]
fn etp_local_uses_local_real_servers_and_marks_the_local_sets() {
    let (_, plan) = planned(&fixture(
        "external-traffic-policy-local.json",
        "one-local-endpoint",
    ));
    let lb = plan.lookup(ip("1.2.3.4"), Protocol::Tcp, 80).unwrap();
    assert_eq!(lb.real_servers.len(), 1);
    assert_eq!(lb.real_servers[0].addr, "10.180.2.1:80".parse().unwrap());
    let cip = plan.lookup(ip("172.30.0.41"), Protocol::Tcp, 80).unwrap();
    assert_eq!(cip.real_servers.len(), 2);
    assert!(plan.sets.contains(
        SetName::LoadBalancerLocal,
        &Entry::ip_port(ip("1.2.3.4"), "tcp", 80)
    ));
    assert!(
        plan.sets
            .contains(SetName::NodePortLocalTcp, &Entry::port(3001))
    );
    assert!(plan.no_local_endpoints.is_empty());
}

#[test]
fn etp_local_without_local_endpoints_keeps_cluster_servers_for_pods_and_drops_outsiders() {
    let (cfg, plan) = planned(&fixture(
        "external-traffic-policy-local.json",
        "no-local-endpoints",
    ));
    let lb = plan.lookup(ip("1.2.3.4"), Protocol::Tcp, 80).unwrap();
    assert!(!lb.real_servers.is_empty());
    assert!(
        plan.no_local_endpoints
            .iter()
            .any(|n| n.key == lb.key && n.external_only)
    );
    let text = crate::rules::render(&cfg, &plan);
    assert!(
        text.contains(
            "-m addrtype ! --src-type LOCAL -d 1.2.3.4/32 -p tcp -m tcp --dport 80 -j DROP"
        ),
        "{text}"
    );
}

#[test]
fn ipv6_sets_are_named_kube_6_and_fit_ipset_names() {
    let (_, plan) = planned(&fixture("ipv6.json", ""));
    assert!(plan.sets.v6);
    let text = render_restore(&plan.sets);
    assert!(text.contains("create KUBE-6-CLUSTER-IP hash:ip,port family inet6"));
    assert!(text.contains("add KUBE-6-CLUSTER-IP fd00:172:30::41,tcp:80"));
    for s in SetName::ALL {
        assert!(s.name(true).len() <= 31, "{}", s.name(true));
    }
    assert_eq!(
        SetName::LoadBalancerSourceCidr.name(true),
        "KUBE-6-LOAD-BALANCER-SOURCE-CID"
    );
    assert!(plan.virtual_servers.values().all(|v| v.spec.netmask == 128));
}

#[test]
fn ipset_restore_creates_flushes_and_fills_every_set_with_upstream_types() {
    let (_, plan) = planned(&fixture("nodeport.json", "localhost-nodeports enabled"));
    let text = render_restore(&plan.sets);
    assert!(text.contains("create KUBE-NODE-PORT-TCP bitmap:port range 0-65535\nflush KUBE-NODE-PORT-TCP\nadd KUBE-NODE-PORT-TCP 3001\n"));
    assert!(text.contains("create KUBE-LOOP-BACK hash:ip,port,ip family inet"));
    assert!(text.contains("create KUBE-LOAD-BALANCER-SOURCE-CIDR hash:ip,port,net family inet"));
    assert_eq!(text.matches("\ncreate ").count() + 1, SetName::ALL.len());
}

#[test]
fn iptables_rules_match_the_sets_as_upstream_writes_them() {
    let (cfg, plan) = planned(&fixture("nodeport.json", "localhost-nodeports enabled"));
    let text = crate::rules::render(&cfg, &plan);
    for line in [
        "-A KUBE-SERVICES -s 127.0.0.0/8 -j RETURN",
        "-A KUBE-SERVICES -m comment --comment \"Kubernetes service cluster ip + port for masquerade purpose\" -m set --match-set KUBE-CLUSTER-IP dst,dst ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ",
        "-A KUBE-NODE-PORT -p tcp -m comment --comment \"Kubernetes nodeport TCP port for masquerade purpose\" -m set --match-set KUBE-NODE-PORT-TCP dst -j KUBE-MARK-MASQ",
        "-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODE-PORT",
        "-A KUBE-SERVICES -m set --match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT",
        "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN",
        "-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000",
        "-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000",
        "-A KUBE-IPVS-FILTER -m conntrack --ctstate NEW -m set --match-set KUBE-IPVS-IPS dst -j REJECT",
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line}\n{text}");
    }
    // Empty sets get no jump.
    assert!(!text.contains("KUBE-NODE-PORT-UDP"));
    // The rule count does not grow with services: sets do.
    let one = text.lines().count();
    let (cfg2, plan2) = planned(&fixture("masquerade.json", "base"));
    let many = crate::rules::render(&cfg2, &plan2).lines().count();
    assert!(plan2.virtual_servers.len() > plan.virtual_servers.len());
    assert!(many < one + 15, "{one} vs {many}");
}

#[test]
fn masquerade_all_marks_every_cluster_ip_packet() {
    let (cfg, plan) = planned(&fixture("masquerade.json", "masqueradeAll"));
    let text = crate::rules::render(&cfg, &plan);
    assert!(text.contains("--match-set KUBE-CLUSTER-IP dst,dst -j KUBE-MARK-MASQ"));
    assert!(!text.contains("KUBE-CLUSTER-IP dst,dst ! -s"));
}

#[test]
fn planning_is_deterministic_for_every_corpus_fixture() {
    for (path, v) in json_cases("proxy") {
        let case: CaseFile = serde_json::from_value(v).unwrap();
        for fx in case.fixtures {
            let (cfg, a) = planned(&fx);
            let (_, b) = planned(&fx);
            assert_eq!(a, b, "{} [{}]", path.display(), fx.name);
            assert_eq!(
                crate::rules::render(&cfg, &a),
                crate::rules::render(&cfg, &b)
            );
            for vs in a.virtual_servers.values() {
                let mut sorted = vs.real_servers.clone();
                sorted.sort();
                assert_eq!(sorted, vs.real_servers);
            }
        }
    }
}

#[test]
fn the_text_rendering_lists_servers_addresses_sets_and_rules() {
    let fx = fixture("session-affinity.json", "");
    let p = fx.prepare(false).unwrap();
    let cfg = config_of(&p);
    let text = crate::render_text(&cfg, &p.model);
    assert!(
        text.contains("TCP  172.30.0.45:80 rr persistent "),
        "{text}"
    );
    assert!(text.contains("  -> 10.180.0.3:80"));
    assert!(text.contains("# addresses on kube-ipvs0\n"));
    assert!(text.contains("create KUBE-CLUSTER-IP hash:ip,port"));
    assert!(text.contains("*nat\n"));
}
