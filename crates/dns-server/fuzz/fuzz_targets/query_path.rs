//! Any bytes through the query path must neither panic nor produce a reply that does
//! not parse. No forwarder is configured, so forwarded names cost no I/O.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, LazyLock};

use hickory_proto::op::Message;
use libfuzzer_sys::fuzz_target;
use twill_dns::{Config, PodMode, Snapshot};
use twill_dns_server::{Engine, Metrics, Transport};
use twill_model::{
    ClusterState, Endpoint, EndpointSlice, Namespace, Object, ObjectKey, Protocol, Service, ServicePort,
    ServiceType, TargetPort,
};

fn port() -> ServicePort {
    ServicePort {
        name: "http".into(),
        protocol: Protocol::Tcp,
        port: 80,
        target_port: TargetPort::Number(80),
        node_port: None,
        app_protocol: None,
    }
}

static ENGINE: LazyLock<Engine> = LazyLock::new(|| {
    let ns = Object::Namespace(Namespace { name: "ns".into(), ..Default::default() });
    let svc = Object::Service(Service {
        key: ObjectKey::new("ns", "svc"),
        cluster_ips: vec![IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))],
        ports: vec![port()],
        ..Default::default()
    });
    let hdls = Object::Service(Service { key: ObjectKey::new("ns", "hdls"), headless: true, ports: vec![port()], ..Default::default() });
    let ext = Object::Service(Service {
        key: ObjectKey::new("ns", "ext"),
        service_type: ServiceType::ExternalName,
        external_name: Some("example.org".into()),
        ..Default::default()
    });
    let slice = Object::EndpointSlice(EndpointSlice {
        key: ObjectKey::new("ns", "hdls-1"),
        service_name: Some("hdls".into()),
        endpoints: (1..20)
            .map(|i| Endpoint { addresses: vec![IpAddr::V4(Ipv4Addr::new(10, 1, 0, i))], ..Default::default() })
            .collect(),
        ..Default::default()
    });
    let state = ClusterState::from_objects([ns, svc, hdls, ext, slice]);
    let mut config = Config::new("cluster.local").unwrap().with_reverse_zones(&["in-addr.arpa", "ip6.arpa"]).unwrap();
    config.pods = PodMode::Insecure;
    Engine::new(Snapshot::build(&state, &config, 1), None, None, Arc::new(Metrics::new("fuzz")))
});

fuzz_target!(|data: &[u8]| {
    for transport in [Transport::Udp, Transport::Tcp] {
        if let Some(reply) = ENGINE.handle(data, transport, false) {
            assert!(reply.len() >= 12);
            if reply.len() > 12 {
                Message::from_vec(&reply).expect("our own reply parses");
            }
            if transport == Transport::Udp {
                assert!(reply.len() <= 1232, "UDP replies fit the advertised size");
            }
        }
    }
});
