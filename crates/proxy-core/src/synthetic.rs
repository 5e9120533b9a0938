//! Synthetic clusters of a given size, the shape every proxy benchmark uses: `n`
//! ClusterIP Services `bench/svc<i>` with one TCP port (80 → 8080) and one
//! EndpointSlice of `endpoints` ready endpoints spread over nodes `n0`…`n7`.
//! Deterministic, so runs and modes compare on the same input.

use std::net::{IpAddr, Ipv4Addr};

use twill_model::{
    ClusterState, Endpoint, EndpointPort, EndpointSlice, Object, ObjectKey, Protocol, Service,
    ServicePort, ServiceType, TargetPort,
};

/// ClusterIPs are `172.30.0.0 + i`.
pub const CLUSTER_IP_BASE: u32 = 0xAC1E_0000;
/// Endpoint `e` of service `i` is `10.0.0.0 + i × stride + e`, where the stride is the
/// endpoint count rounded up to a power of two (at least 16).
pub const ENDPOINT_BASE: u32 = 0x0A00_0000;
/// Where a moved endpoint goes: `11.0.0.0 + i`, outside every generated range.
pub const MOVED_BASE: u32 = 0x0B00_0000;

pub fn v4(n: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(n))
}

/// `services` × `endpoints`; with `moved = Some(i)`, endpoint 0 of service `i` sits at
/// `MOVED_BASE + i` instead (a one-endpoint change against the same call with `None`).
pub fn services(services: u32, endpoints: u32, moved: Option<u32>) -> ClusterState {
    let stride = endpoints.next_power_of_two().max(16);
    let mut objs = Vec::with_capacity(2 * services as usize);
    for i in 0..services {
        let name = format!("svc{i}");
        objs.push(Object::Service(Service {
            key: ObjectKey::new("bench", &name),
            service_type: ServiceType::ClusterIP,
            cluster_ips: vec![v4(CLUSTER_IP_BASE + i)],
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
                .map(|e| Endpoint {
                    addresses: vec![v4(if moved == Some(i) && e == 0 {
                        MOVED_BASE + i
                    } else {
                        ENDPOINT_BASE + i * stride + e
                    })],
                    node_name: Some(format!("n{}", e % 8)),
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
    ClusterState::from_objects(objs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_addresses_and_the_moved_endpoint() {
        let st = services(3, 10, Some(1));
        assert_eq!(st.services.len(), 3);
        let slice = &st.endpoint_slices[&ObjectKey::new("bench", "svc1-a")];
        assert_eq!(slice.endpoints.len(), 10);
        assert_eq!(slice.endpoints[0].addresses, vec![v4(MOVED_BASE + 1)]);
        assert_eq!(
            slice.endpoints[1].addresses,
            vec![v4(ENDPOINT_BASE + 16 + 1)]
        );
        let other = &st.endpoint_slices[&ObjectKey::new("bench", "svc2-a")];
        assert_eq!(other.endpoints[0].addresses, vec![v4(ENDPOINT_BASE + 32)]);
        // 50 endpoints need a wider stride, so services never share an address.
        let wide = services(2, 50, None);
        let last = &wide.endpoint_slices[&ObjectKey::new("bench", "svc0-a")].endpoints[49];
        let first = &wide.endpoint_slices[&ObjectKey::new("bench", "svc1-a")].endpoints[0];
        assert!(last.addresses[0] < first.addresses[0]);
    }
}
