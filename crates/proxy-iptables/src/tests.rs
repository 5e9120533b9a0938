use std::collections::BTreeSet;
use std::net::IpAddr;

use twill_model::{
    ClusterState, Endpoint, EndpointPort, EndpointSlice, IpFamily, Object, ObjectKey, Protocol,
    Service, ServicePort, ServiceType, TargetPort,
};
use twill_proxy_core::{FeatureGates, ModelConfig, ProxyModel, build_model};

use crate::render::probability;
use crate::restore::{diff_rulesets, parse};
use crate::trace::{Packet, Tracer};
use crate::{Config, LocalDetector, SyncMode, render};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn cfg() -> Config {
    let mut c = Config::new(
        IpFamily::V4,
        vec![ip("192.168.0.2")],
        LocalDetector::ClusterCidr("10.0.0.0/8".parse().unwrap()),
    );
    c.local_addresses = vec![ip("127.0.0.1"), ip("192.168.0.2")];
    c
}

fn cluster(services: &[(&str, &str, &[&str])]) -> ProxyModel {
    let mut objs = Vec::new();
    for (name, cip, eps) in services {
        objs.push(Object::Service(Service {
            key: ObjectKey::new("ns", *name),
            service_type: ServiceType::ClusterIP,
            cluster_ips: vec![ip(cip)],
            ports: vec![ServicePort {
                name: "p80".into(),
                protocol: Protocol::Tcp,
                port: 80,
                target_port: TargetPort::Number(80),
                node_port: None,
                app_protocol: None,
            }],
            ..Default::default()
        }));
        objs.push(Object::EndpointSlice(EndpointSlice {
            key: ObjectKey::new("ns", format!("{name}-1")),
            service_name: Some(name.to_string()),
            endpoints: eps
                .iter()
                .map(|a| Endpoint {
                    addresses: vec![ip(a)],
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
        }));
    }
    let mc = ModelConfig {
        family: IpFamily::V4,
        node_name: "n".into(),
        node_zone: None,
        gates: FeatureGates::default(),
    };
    build_model(&ClusterState::from_objects(objs), &mc).0
}

#[test]
fn probabilities_use_ten_decimals_like_upstream() {
    assert_eq!(probability(1), "1.0000000000");
    assert_eq!(probability(2), "0.5000000000");
    assert_eq!(probability(3), "0.3333333333");
    assert_eq!(probability(10), "0.1000000000");
    assert_eq!(probability(100001), "0.0000099999");
}

#[test]
fn three_endpoints_get_decreasing_probabilities_and_last_has_none() {
    let m = cluster(&[("a", "172.30.0.1", &["10.1.0.1", "10.1.0.2", "10.1.0.3"])]);
    let r = render(&cfg(), &m, SyncMode::Full { existing: None });
    let svc: Vec<&str> = r
        .text
        .lines()
        .filter(|l| l.starts_with("-A KUBE-SVC-"))
        .collect();
    assert_eq!(svc.len(), 4, "{}", r.text);
    assert!(svc[1].contains("--probability 0.3333333333"));
    assert!(svc[2].contains("--probability 0.5000000000"));
    assert!(!svc[3].contains("statistic"));
}

#[test]
fn output_is_deterministic_and_parses_back() {
    let m = cluster(&[
        ("b", "172.30.0.2", &["10.1.0.9"]),
        ("a", "172.30.0.1", &["10.1.0.1"]),
    ]);
    let a = render(&cfg(), &m, SyncMode::Full { existing: None });
    let b = render(&cfg(), &m, SyncMode::Full { existing: None });
    assert_eq!(a.text, b.text);
    let rs = parse(&a.text, true).unwrap();
    assert!(diff_rulesets(&rs, &rs).is_empty());
    let last = rs["nat"].rules["KUBE-SERVICES"].last().unwrap();
    assert!(
        last.contains("-j KUBE-NODEPORTS"),
        "node ports jump is last: {last}"
    );
}

#[test]
fn partial_sync_writes_only_changed_service_chains_but_all_top_level_rules() {
    let m = cluster(&[
        ("a", "172.30.0.1", &["10.1.0.1"]),
        ("b", "172.30.0.2", &["10.1.0.2"]),
    ]);
    let changed: BTreeSet<ObjectKey> = [ObjectKey::new("ns", "b")].into();
    let full = render(&cfg(), &m, SyncMode::Full { existing: None });
    let part = render(
        &cfg(),
        &m,
        SyncMode::Partial {
            changed: &changed,
            previous: &full.services,
            applied_top: None,
        },
    );
    assert_eq!(full.active_nat_chains(), part.active_nat_chains());
    assert_eq!(full.services, part.services);
    assert!(part.nat_rules_written < full.nat_rules_written);
    assert_eq!(part.nat_rules_total, full.nat_rules_total);
    assert!(
        part.text.contains("ns/a:p80 cluster IP"),
        "KUBE-SERVICES keeps every service"
    );
    assert!(
        !part.text.contains("ns/a:p80 -> 10.1.0.1:80"),
        "unchanged service chains are not rewritten"
    );
    assert!(part.text.contains("ns/b:p80 -> 10.1.0.2:80"));
    // Without a record of a's chains, a partial sync writes them too.
    let none = Default::default();
    let blind = render(
        &cfg(),
        &m,
        SyncMode::Partial {
            changed: &changed,
            previous: &none,
            applied_top: None,
        },
    );
    assert!(blind.text.contains("ns/a:p80 -> 10.1.0.1:80"));
}

#[test]
fn partial_sync_leaves_out_top_level_chains_whose_digest_the_kernel_already_holds() {
    let before = cluster(&[
        ("a", "172.30.0.1", &["10.1.0.1"]),
        ("b", "172.30.0.2", &["10.1.0.2"]),
    ]);
    let full = render(&cfg(), &before, SyncMode::Full { existing: None });
    assert!(full.top_level.contains_key(&("nat", "KUBE-SERVICES")));
    assert!(full.top_level.contains_key(&("filter", "KUBE-FORWARD")));
    // Only b's endpoint changes: every top-level chain is as applied, and the filter
    // table has nothing else, so it is left out whole.
    let after = cluster(&[
        ("a", "172.30.0.1", &["10.1.0.1"]),
        ("b", "172.30.0.2", &["10.1.0.3"]),
    ]);
    let changed: BTreeSet<ObjectKey> = [ObjectKey::new("ns", "b")].into();
    let part = render(
        &cfg(),
        &after,
        SyncMode::Partial {
            changed: &changed,
            previous: &full.services,
            applied_top: Some(&full.top_level),
        },
    );
    assert!(!part.text.contains("*filter"), "{}", part.text);
    assert!(!part.text.contains(":KUBE-SERVICES "), "{}", part.text);
    assert!(
        part.text.contains("ns/b:p80 -> 10.1.0.3:80"),
        "{}",
        part.text
    );
    assert_eq!(part.top_level, full.top_level);
    // The rules written are the service chains only.
    let written = part.text.lines().filter(|l| l.starts_with("-A ")).count();
    assert_eq!(part.nat_rules_written, written);
    // A new service changes KUBE-SERVICES: that chain is written again, in full.
    let grown = cluster(&[
        ("a", "172.30.0.1", &["10.1.0.1"]),
        ("b", "172.30.0.2", &["10.1.0.2"]),
        ("c", "172.30.0.3", &["10.1.0.4"]),
    ]);
    let changed: BTreeSet<ObjectKey> = [ObjectKey::new("ns", "c")].into();
    let part = render(
        &cfg(),
        &grown,
        SyncMode::Partial {
            changed: &changed,
            previous: &full.services,
            applied_top: Some(&full.top_level),
        },
    );
    assert!(part.text.contains(":KUBE-SERVICES "), "{}", part.text);
    assert!(part.text.contains("ns/a:p80 cluster IP"), "{}", part.text);
    assert_ne!(
        part.top_level.get(&("nat", "KUBE-SERVICES")),
        full.top_level.get(&("nat", "KUBE-SERVICES"))
    );
}

#[test]
fn partial_sync_deletes_chains_of_removed_endpoints_and_services() {
    let before = cluster(&[
        ("a", "172.30.0.1", &["10.1.0.1", "10.1.0.2"]),
        ("b", "172.30.0.2", &["10.1.0.3"]),
    ]);
    let after = cluster(&[("a", "172.30.0.1", &["10.1.0.1"])]);
    let full = render(&cfg(), &before, SyncMode::Full { existing: None });
    let changed: BTreeSet<ObjectKey> =
        [ObjectKey::new("ns", "a"), ObjectKey::new("ns", "b")].into();
    let part = render(
        &cfg(),
        &after,
        SyncMode::Partial {
            changed: &changed,
            previous: &full.services,
            applied_top: None,
        },
    );
    let gone: BTreeSet<String> = full
        .active_nat_chains()
        .difference(&part.active_nat_chains())
        .cloned()
        .collect();
    assert_eq!(gone.len(), 3, "a's second SEP, b's SVC and SEP: {gone:?}");
    assert_eq!(
        part.deleted_chains.iter().cloned().collect::<BTreeSet<_>>(),
        gone
    );
    for c in &gone {
        assert!(part.text.contains(&format!("-X {c}\n")));
    }
}

#[test]
fn stale_service_chains_are_declared_then_deleted_and_foreign_chains_are_kept() {
    let m = cluster(&[("a", "172.30.0.1", &["10.1.0.1"])]);
    let existing: BTreeSet<String> = [
        "KUBE-SVC-AAAAAAAAAAAAAAAA".to_string(),
        "KUBE-SEP-BBBBBBBBBBBBBBBB".into(),
        "CNI-OTHER".into(),
    ]
    .into();
    let r = render(
        &cfg(),
        &m,
        SyncMode::Full {
            existing: Some(&existing),
        },
    );
    assert_eq!(
        r.deleted_chains,
        ["KUBE-SEP-BBBBBBBBBBBBBBBB", "KUBE-SVC-AAAAAAAAAAAAAAAA"]
    );
    assert!(r.text.contains(":KUBE-SVC-AAAAAAAAAAAAAAAA - [0:0]\n"));
    assert!(r.text.contains("-X KUBE-SVC-AAAAAAAAAAAAAAAA\n"));
    assert!(!r.text.contains("CNI-OTHER"));
}

#[test]
fn tracer_masquerades_hairpin_only_on_the_path_back_to_the_sender() {
    let m = cluster(&[("a", "172.30.0.1", &["10.1.0.1", "10.1.0.2"])]);
    let r = render(&cfg(), &m, SyncMode::Full { existing: None });
    let t = Tracer::new(&r.text, &[ip("192.168.0.2")]).unwrap();
    let res = t.trace(&Packet {
        source: ip("10.1.0.1"),
        dest: ip("172.30.0.1"),
        dest_port: 80,
        protocol: "tcp".into(),
    });
    let mut outs = res.outputs.clone();
    outs.sort();
    assert_eq!(outs, ["10.1.0.1:80", "10.1.0.2:80"]);
    assert!(res.masq);
    assert!(res.masq_per_output["10.1.0.1:80"]);
    assert!(!res.masq_per_output["10.1.0.2:80"]);
}

#[test]
fn service_without_endpoints_is_rejected_in_filter() {
    let m = cluster(&[("a", "172.30.0.1", &[])]);
    let r = render(&cfg(), &m, SyncMode::Full { existing: None });
    assert!(r.text.contains("-A KUBE-SERVICES -m comment --comment \"ns/a:p80 has no endpoints\" -m tcp -p tcp -d 172.30.0.1 --dport 80 -j REJECT"), "{}", r.text);
    let t = Tracer::new(&r.text, &[]).unwrap();
    let res = t.trace(&Packet {
        source: ip("10.0.0.2"),
        dest: ip("172.30.0.1"),
        dest_port: 80,
        protocol: "tcp".into(),
    });
    assert_eq!(res.outputs, ["REJECT"]);
}

#[test]
fn above_a_thousand_endpoints_endpoint_comments_are_dropped_like_upstream() {
    let names: Vec<(String, String, Vec<String>)> = (0..101)
        .map(|i| {
            (
                format!("s{i}"),
                format!("172.30.{}.{}", i / 200, i % 200 + 1),
                (1..=10).map(|e| format!("10.{i}.0.{e}")).collect(),
            )
        })
        .collect();
    let eps: Vec<Vec<&str>> = names
        .iter()
        .map(|(_, _, e)| e.iter().map(String::as_str).collect())
        .collect();
    let spec: Vec<(&str, &str, &[&str])> = names
        .iter()
        .zip(&eps)
        .map(|((n, c, _), e)| (n.as_str(), c.as_str(), e.as_slice()))
        .collect();
    let big = cluster(&spec);
    assert!(crate::large_cluster_mode(&big));
    let r = render(&cfg(), &big, SyncMode::Full { existing: None });
    assert!(r.large_cluster_mode);
    let sep_lines = r.text.lines().filter(|l| l.starts_with("-A KUBE-SEP-"));
    assert_eq!(sep_lines.clone().count(), 101 * 10 * 2);
    for l in sep_lines {
        assert!(!l.contains("--comment"), "{l}");
    }
    for l in r
        .text
        .lines()
        .filter(|l| l.starts_with("-A KUBE-SVC-") && l.contains("-j KUBE-SEP-"))
    {
        assert!(!l.contains("--comment"), "{l}");
    }
    assert!(
        r.text.contains("\"ns/s0:p80 cluster IP\""),
        "service-level comments stay"
    );
    let t = Tracer::new(&r.text, &[ip("192.168.0.2")]).unwrap();
    let mut outs = t
        .trace(&Packet {
            source: ip("192.168.5.5"),
            dest: ip("172.30.0.1"),
            dest_port: 80,
            protocol: "tcp".into(),
        })
        .outputs;
    outs.sort();
    assert_eq!(outs.len(), 10, "every endpoint still reachable: {outs:?}");

    let small = cluster(&spec[..100]);
    assert!(!crate::large_cluster_mode(&small));
    let r = render(&cfg(), &small, SyncMode::Full { existing: None });
    assert!(r.text.contains("\"ns/s0:p80 -> 10.0.0.1:80\""));
}

#[test]
fn in_large_clusters_partial_syncs_leave_stale_chains_to_the_next_full_sync() {
    // 102 services × 10 endpoints, then 101: above upstream's 1000-endpoint threshold.
    let spec_of = |moved: bool| -> Vec<(String, String, Vec<String>)> {
        (0..102)
            .map(|i| {
                let eps = (1..=10)
                    .map(|e| {
                        if moved && i == 7 && e == 1 {
                            "10.200.0.1".to_string()
                        } else {
                            format!("10.{i}.0.{e}")
                        }
                    })
                    .collect();
                (
                    format!("s{i}"),
                    format!("172.30.{}.{}", i / 200, i % 200 + 1),
                    eps,
                )
            })
            .collect()
    };
    let model_of = |spec: &[(String, String, Vec<String>)], n: usize| {
        let eps: Vec<Vec<&str>> = spec[..n]
            .iter()
            .map(|(_, _, e)| e.iter().map(String::as_str).collect())
            .collect();
        let v: Vec<(&str, &str, &[&str])> = spec[..n]
            .iter()
            .zip(&eps)
            .map(|((n, c, _), e)| (n.as_str(), c.as_str(), e.as_slice()))
            .collect();
        cluster(&v)
    };
    let (before, after) = (spec_of(false), spec_of(true));
    let full = render(
        &cfg(),
        &model_of(&before, 102),
        SyncMode::Full { existing: None },
    );
    assert!(full.large_cluster_mode);
    // One endpoint of s7 moves, and s101 goes away.
    let changed: BTreeSet<ObjectKey> =
        [ObjectKey::new("ns", "s7"), ObjectKey::new("ns", "s101")].into();
    let next = model_of(&after, 101);
    assert!(crate::large_cluster_mode(&next));
    let part = render(
        &cfg(),
        &next,
        SyncMode::Partial {
            changed: &changed,
            previous: &full.services,
            applied_top: None,
        },
    );
    let stale: BTreeSet<String> = full
        .active_nat_chains()
        .difference(&part.active_nat_chains())
        .cloned()
        .collect();
    assert_eq!(
        stale.len(),
        12,
        "s7's old SEP, s101's SVC and 10 SEPs: {stale:?}"
    );
    assert!(part.deleted_chains.is_empty(), "{:?}", part.deleted_chains);
    assert!(!part.text.contains("\n-X "), "{}", part.text);
    // Nothing reaches the stale chains any more.
    for c in &stale {
        assert!(!part.text.contains(&format!("-j {c}")), "{c}");
    }
    // The next full sync finds them with iptables-save and deletes them.
    let existing: BTreeSet<String> = full.active_nat_chains().into_iter().collect();
    let resync = render(
        &cfg(),
        &next,
        SyncMode::Full {
            existing: Some(&existing),
        },
    );
    assert_eq!(
        resync
            .deleted_chains
            .iter()
            .cloned()
            .collect::<BTreeSet<_>>(),
        stale
    );
}
