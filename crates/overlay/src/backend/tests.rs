use super::*;
use crate::state::Route;

fn config(text: &str) -> NetworkConfig {
    NetworkConfig::parse("test", text).unwrap()
}

fn node() -> NodeSpec {
    NodeSpec {
        public_ip: Ipv4Addr::new(192, 168, 50, 11),
        ext_iface: "eth0".into(),
        ext_mtu: 1500,
        ext_address: "192.168.50.11/24".parse().unwrap(),
        underlay_routes: vec![],
    }
}

fn peer(kind: BackendKind, subnet: &str, ip: [u8; 4]) -> Lease {
    Lease {
        subnet: SubnetKey::v4(subnet.parse().unwrap()),
        attrs: LeaseAttrs::for_backend(
            kind,
            Ipv4Addr::from(ip),
            None,
            1,
            Some(Mac([0x0e, 0, 0, 0, 0, ip[3]])),
            None,
        ),
        expires_at: 1,
    }
}

fn own(subnet: &str) -> OwnLease {
    OwnLease {
        subnet: SubnetKey::v4(subnet.parse().unwrap()),
        vtep_mac: None,
    }
}

#[test]
fn removing_a_vxlan_peer_drops_its_route_neighbour_and_fdb_entry() {
    let c = config(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#);
    let a = peer(BackendKind::Vxlan, "10.244.2.0/24", [192, 168, 50, 12]);
    let b = peer(BackendKind::Vxlan, "10.244.3.0/24", [192, 168, 50, 13]);
    let mut peers = PeerTable::from_leases([&a, &b]);
    let before = plan_backend(&c, &node(), &own("10.244.1.0/24"), &peers)
        .unwrap()
        .state;
    assert_eq!(
        (
            before.routes.len(),
            before.neighbours.len(),
            before.fdb.len()
        ),
        (2, 2, 2)
    );
    assert!(peers.apply(&LeaseEvent::Removed(a.subnet)));
    let after = plan_backend(&c, &node(), &own("10.244.1.0/24"), &peers)
        .unwrap()
        .state;
    assert_eq!(
        (after.routes.len(), after.neighbours.len(), after.fdb.len()),
        (1, 1, 1)
    );
    assert!(after.routes.iter().all(|r| r.dst != a.subnet.ipv4));
    assert!(after.fdb.iter().all(|f| f.dst != a.attrs.public_ip));
}

#[test]
fn host_gw_behind_nat_is_refused() {
    let c = config(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}"#);
    let mut n = node();
    n.public_ip = Ipv4Addr::new(203, 0, 113, 5);
    let e = plan_backend(&c, &n, &own("10.244.1.0/24"), &PeerTable::default()).unwrap_err();
    assert!(e.to_string().contains("NAT"), "{e}");
}

#[test]
fn host_gw_peer_off_link_is_reported_not_silently_dropped() {
    let c = config(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}"#);
    let far = peer(BackendKind::HostGw, "10.244.5.0/24", [10, 9, 9, 9]);
    let near = peer(BackendKind::HostGw, "10.244.6.0/24", [192, 168, 50, 66]);
    let plan = plan_backend(
        &c,
        &node(),
        &own("10.244.1.0/24"),
        &PeerTable::from_leases([&far, &near]),
    )
    .unwrap();
    assert_eq!(plan.problems.len(), 1);
    assert_eq!(plan.problems[0].public_ip, far.attrs.public_ip);
    assert!(plan.problems[0].message.contains("not on-link"));
    assert!(plan.state.routes.contains(&Route {
        dst: near.subnet.ipv4,
        gw: Some(near.attrs.public_ip),
        dev: "eth0".into(),
        onlink: false
    }));
}

#[test]
fn vxlan_peer_with_corrupt_backend_data_is_skipped_with_a_problem() {
    let c = config(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#);
    let mut bad = peer(BackendKind::Vxlan, "10.244.4.0/24", [192, 168, 50, 14]);
    bad.attrs.backend_data = Some(serde_json::json!({"VNI": 1, "VtepMAC": "nonsense"}));
    let plan = plan_backend(
        &c,
        &node(),
        &own("10.244.1.0/24"),
        &PeerTable::from_leases([&bad]),
    )
    .unwrap();
    assert!(plan.state.routes.is_empty());
    assert_eq!(plan.problems.len(), 1);
}

#[test]
fn switching_backend_marks_the_other_device_absent() {
    let c = config(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}"#);
    let plan = plan_backend(&c, &node(), &own("10.244.1.0/24"), &PeerTable::default()).unwrap();
    assert!(
        plan.state.absent_links.contains("flannel.1")
            && plan.state.absent_links.contains("flannel0")
    );
    assert_eq!(
        plan.state
            .sysctls
            .get("net.ipv4.ip_forward")
            .map(String::as_str),
        Some("1")
    );
}
