//! The per-query work a UDP worker does on a wire-cache miss (parse, answer from the
//! snapshot, encode), for each query kind of the dnsperf mix, at 10k services.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};
use twill_dns::{Config, Snapshot};
use twill_dns_server::engine::Step;
use twill_dns_server::{Engine, Metrics, Transport};
use twill_model::{
    ClusterState, Endpoint, EndpointSlice, Namespace, Object, ObjectKey, Protocol, Service,
    ServicePort, TargetPort,
};

fn cluster(n: u32) -> ClusterState {
    let mut objects = vec![Object::Namespace(Namespace {
        name: "bench".into(),
        ..Default::default()
    })];
    for i in 0..n {
        let name = format!("svc-{i}");
        objects.push(Object::Service(Service {
            key: ObjectKey::new("bench", &name),
            cluster_ips: vec![IpAddr::V4(Ipv4Addr::from(0x0a60_0000 + i))],
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
        objects.push(Object::EndpointSlice(EndpointSlice {
            key: ObjectKey::new("bench", format!("{name}-1")),
            service_name: Some(name),
            endpoints: vec![Endpoint {
                addresses: vec![IpAddr::V4(Ipv4Addr::from(0x0af4_0000 + i))],
                ..Default::default()
            }],
            ..Default::default()
        }));
    }
    ClusterState::from_objects(objects)
}

fn query(name: &str, t: RecordType) -> Vec<u8> {
    let mut m = Message::new(42, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
    m.to_vec().unwrap()
}

fn bench(c: &mut Criterion) {
    let config = Config::new("cluster.local")
        .unwrap()
        .with_reverse_zones(&["10.in-addr.arpa"])
        .unwrap();
    let engine = Engine::new(
        Snapshot::build(&cluster(10_000), &config, 1),
        None,
        None,
        Arc::new(Metrics::new("b")),
    );
    let mut g = c.benchmark_group("query_path");
    for (label, q) in [
        (
            "A",
            query("svc-4711.bench.svc.cluster.local.", RecordType::A),
        ),
        (
            "SRV",
            query(
                "_http._tcp.svc-4711.bench.svc.cluster.local.",
                RecordType::SRV,
            ),
        ),
        ("PTR", query("103.18.96.10.in-addr.arpa.", RecordType::PTR)),
        (
            "NXDOMAIN",
            query("missing.bench.svc.cluster.local.", RecordType::A),
        ),
    ] {
        g.bench_function(label, |b| {
            b.iter(|| match engine.step(black_box(&q), Transport::Udp, false) {
                Step::Reply { bytes, .. } => bytes,
                _ => unreachable!("cluster answers need no upstream"),
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
