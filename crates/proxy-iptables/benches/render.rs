//! Render time of the full ruleset and of a one-service partial sync, at 1k, 10k and
//! 50k services with 10 endpoints each (`cargo bench -p twill-proxy-iptables --bench
//! render`). Every size is above upstream's large-cluster threshold (1000 endpoints),
//! so endpoint comments are left out, as kube-proxy does. Criterion reports warm
//! figures (the allocator reuses the previous iteration's pages); the first render in a
//! fresh process also pays page faults (see the `render full` column of
//! `cargo bench -p twill-proxy --bench sync`).

use std::collections::BTreeSet;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use twill_model::{
    ClusterState, Endpoint, EndpointPort, EndpointSlice, IpFamily, Object, ObjectKey, Protocol,
    Service, ServicePort, ServiceType, TargetPort,
};
use twill_proxy_core::{FeatureGates, ModelConfig, ProxyModel, build_model};
use twill_proxy_iptables::{Config, LocalDetector, SyncMode, render};

fn v4(n: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(n))
}

/// `services` ClusterIP services, each with one TCP port and 10 ready endpoints.
fn model(services: u32) -> ProxyModel {
    let mut objs = Vec::new();
    for i in 0..services {
        let name = format!("svc{i}");
        objs.push(Object::Service(Service {
            key: ObjectKey::new("bench", &name),
            service_type: ServiceType::ClusterIP,
            cluster_ips: vec![v4(0xAC1E_0000 + i)],
            ports: vec![ServicePort {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: 80,
                target_port: TargetPort::Number(8080),
                node_port: None,
                app_protocol: None,
            }],
            ..Default::default()
        }));
        objs.push(Object::EndpointSlice(EndpointSlice {
            key: ObjectKey::new("bench", format!("{name}-a")),
            service_name: Some(name),
            endpoints: (0..10)
                .map(|e| Endpoint {
                    addresses: vec![v4(0x0A00_0000 + i * 16 + e)],
                    node_name: Some(format!("n{e}")),
                    ..Default::default()
                })
                .collect(),
            ports: vec![EndpointPort {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: Some(8080),
                app_protocol: None,
            }],
            ..Default::default()
        }));
    }
    let mc = ModelConfig {
        family: IpFamily::V4,
        node_name: "n0".into(),
        node_zone: None,
        gates: FeatureGates::default(),
    };
    build_model(&ClusterState::from_objects(objs), &mc).0
}

fn bench(c: &mut Criterion) {
    let cfg = Config::new(
        IpFamily::V4,
        vec![v4(0xC0A8_0002)],
        LocalDetector::ClusterCidr("10.0.0.0/8".parse().unwrap()),
    );
    let mut g = c.benchmark_group("render");
    g.sample_size(10);
    for n in [1_000u32, 10_000, 50_000] {
        let m = model(n);
        let changed: BTreeSet<ObjectKey> = [ObjectKey::new("bench", "svc7")].into();
        g.bench_with_input(BenchmarkId::new("full", n), &m, |b, m| {
            b.iter(|| black_box(render(&cfg, m, SyncMode::Full { existing: None })))
        });
        let previous = render(&cfg, &m, SyncMode::Full { existing: None }).services;
        g.bench_with_input(BenchmarkId::new("partial_one_service", n), &m, |b, m| {
            b.iter(|| {
                black_box(render(
                    &cfg,
                    m,
                    SyncMode::Partial {
                        changed: &changed,
                        previous: &previous,
                    },
                ))
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
