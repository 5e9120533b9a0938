//! nftables render figures at 5k services × 50 endpoints (250k endpoints): the full
//! desired state and transaction, and a one-endpoint change (incremental render plus
//! diff transaction).
//!
//! `cargo bench -p twill-proxy-nftables --bench render`

use std::collections::BTreeSet;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use twill_model::{
    ClusterState, Endpoint, EndpointPort, EndpointSlice, IpFamily, Object, ObjectKey, Protocol,
    Service, ServicePort, ServiceType, TargetPort,
};
use twill_proxy_core::{FeatureGates, ModelConfig, ProxyModel, build_model};
use twill_proxy_nftables::{
    Config, LocalDetector, diff_script, full_script, render, render_changed,
};

const SERVICES: u32 = 5_000;
const ENDPOINTS: u32 = 50;

fn v4(n: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(n))
}

/// `services` ClusterIP services with `endpoints` endpoints each; endpoint 0 of service
/// `bump` gets another address when `bump` is set.
fn state(services: u32, endpoints: u32, bump: Option<u32>) -> ClusterState {
    let mut objs = Vec::new();
    for i in 0..services {
        let name = format!("svc{i}");
        objs.push(Object::Service(Service {
            key: ObjectKey::new("bench", &name),
            service_type: ServiceType::ClusterIP,
            cluster_ips: vec![v4(0xAC10_0000 + i)],
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
            endpoints: (0..endpoints)
                .map(|e| {
                    let base = 0x0A00_0000 + i * 64 + e;
                    let addr = if bump == Some(i) && e == 0 {
                        0x0B00_0000 + i
                    } else {
                        base
                    };
                    Endpoint {
                        addresses: vec![v4(addr)],
                        node_name: Some(format!("n{}", e % 8)),
                        ..Default::default()
                    }
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
    ClusterState::from_objects(objs)
}

fn model(bump: Option<u32>) -> ProxyModel {
    let mc = ModelConfig {
        family: IpFamily::V4,
        node_name: "n0".into(),
        node_zone: None,
        gates: FeatureGates::default(),
    };
    build_model(&state(SERVICES, ENDPOINTS, bump), &mc).0
}

fn cfg() -> Config {
    Config::new(
        IpFamily::V4,
        vec![v4(0xC0A8_0002)],
        LocalDetector::ClusterCidr("10.0.0.0/8".parse().expect("cidr")),
    )
}

fn bench(c: &mut Criterion) {
    let cfg = cfg();
    let m1 = model(None);
    let m2 = model(Some(SERVICES / 2));
    let changed: BTreeSet<ObjectKey> =
        BTreeSet::from([ObjectKey::new("bench", format!("svc{}", SERVICES / 2))]);
    let d1 = render(&cfg, &m1);
    let mut g = c.benchmark_group("nftables_5k_services_x_50_endpoints");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(20));
    g.bench_function("full_render_and_transaction", |b| {
        b.iter(|| {
            let d = render(&cfg, black_box(&m1));
            black_box(full_script(&d, None).len())
        })
    });
    g.bench_function("one_endpoint_change_render_and_diff", |b| {
        b.iter(|| {
            let d2 = render_changed(&cfg, black_box(&m2), &d1, &changed);
            black_box(diff_script(&d1, &d2).map(|s| s.len()))
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
