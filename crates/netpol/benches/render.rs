//! Render cost at scale: 1,000 pods × 1,000 policies on one node, next to 100 × 100, and
//! the evaluator's verdict for one probe, in one run.

use std::net::{IpAddr, Ipv4Addr};

use criterion::{Criterion, criterion_group, criterion_main};
use twill_model::{
    LabelSelector, Labels, NetworkPolicy, ObjectKey, PolicyPeer, PolicyPort, PolicyRule, Protocol,
    TargetPort,
};
use twill_netpol::{Cluster, NamedPort, Peer, PolicyPod, RenderOptions, allows, render_node};

fn labels(pairs: &[(&str, String)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

fn cluster(pods: usize, policies: usize) -> Cluster {
    let mut c = Cluster::default();
    for n in 0..10 {
        c.namespaces.insert(
            format!("ns-{n}"),
            labels(&[("team", format!("t{}", n % 5))]),
        );
    }
    for i in 0..pods {
        let key = ObjectKey::new(format!("ns-{}", i % 10), format!("p{i}"));
        c.pods.insert(
            key.clone(),
            PolicyPod {
                key,
                labels: labels(&[
                    ("app", format!("a{}", i % 100)),
                    ("role", format!("r{}", i % 50)),
                ]),
                ip: IpAddr::V4(Ipv4Addr::new(10, 244, (i / 250) as u8, (i % 250 + 2) as u8)),
                node: "node-1".into(),
                ports: vec![NamedPort {
                    name: Some("http".into()),
                    port: 80,
                    protocol: Protocol::Tcp,
                }],
            },
        );
    }
    for j in 0..policies {
        let p = NetworkPolicy {
            key: ObjectKey::new(format!("ns-{}", j % 10), format!("np-{j:04}")),
            pod_selector: LabelSelector::from_labels(labels(&[("app", format!("a{}", j % 100))])),
            ingress_isolation: true,
            ingress: vec![PolicyRule {
                peers: vec![PolicyPeer::Pods {
                    namespace_selector: Some(LabelSelector::from_labels(labels(&[(
                        "team",
                        format!("t{}", j % 5),
                    )]))),
                    pod_selector: Some(LabelSelector::from_labels(labels(&[(
                        "role",
                        format!("r{}", j % 50),
                    )]))),
                }],
                ports: vec![
                    PolicyPort {
                        protocol: Protocol::Tcp,
                        port: Some(TargetPort::Name("http".into())),
                        end_port: None,
                    },
                    PolicyPort {
                        protocol: Protocol::Tcp,
                        port: Some(TargetPort::Number(8000)),
                        end_port: Some(8100),
                    },
                ],
            }],
            ..Default::default()
        };
        c.upsert_policy(p);
    }
    c
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("render_node");
    g.sample_size(10);
    for (pods, policies) in [(100, 100), (1000, 1000)] {
        let cl = cluster(pods, policies);
        g.bench_function(format!("{pods}_pods_{policies}_policies"), |b| {
            b.iter(|| render_node(&cl, "node-1", &RenderOptions::default()))
        });
    }
    g.finish();
    let cl = cluster(1000, 1000);
    let a = &cl.pods[&ObjectKey::new("ns-0", "p0")];
    let b = &cl.pods[&ObjectKey::new("ns-5", "p5")];
    c.bench_function("allows_one_probe_1000_policies", |bch| {
        bch.iter(|| allows(&cl, Peer::Pod(b), Peer::Pod(a), 80, Protocol::Tcp))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
