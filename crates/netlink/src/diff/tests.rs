use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use twill_overlay::state::{KernelState, LinkSpec, Route, VxlanLink};

use super::*;
use crate::observe::{ObservedLink, ObservedState, VxlanParams};

fn vxlan() -> VxlanLink {
    VxlanLink {
        name: "flannel.1".into(),
        vni: 1,
        port: 8472,
        local: Ipv4Addr::new(192, 168, 50, 11),
        dev: "eth0".into(),
        mtu: 1450,
        learning: false,
        gbp: false,
        mac: None,
        address: "10.244.1.0/32".parse().unwrap(),
    }
}

fn route(dst: &str, gw: [u8; 4]) -> Route {
    Route {
        dst: dst.parse().unwrap(),
        gw: Some(Ipv4Addr::from(gw)),
        dev: "flannel.1".into(),
        onlink: true,
    }
}

fn observed_with_device(vni: u32) -> ObservedState {
    let mut o = ObservedState::default();
    let eth = ObservedLink {
        index: 2,
        kind: Some("veth".into()),
        vxlan: None,
        mtu: 1500,
        mac: None,
        up: true,
        addresses: BTreeSet::new(),
    };
    o.links.insert("eth0".into(), eth);
    o.links.insert(
        "flannel.1".into(),
        ObservedLink {
            index: 3,
            kind: Some("vxlan".into()),
            vxlan: Some(VxlanParams {
                vni,
                port: 8472,
                local: Some(Ipv4Addr::new(192, 168, 50, 11)),
                dev_index: Some(2),
                learning: false,
            }),
            mtu: 1450,
            mac: None,
            up: true,
            addresses: ["10.244.1.0/32".parse().unwrap()].into(),
        },
    );
    o
}

#[test]
fn matching_state_needs_no_change() {
    let mut desired = KernelState::default();
    desired.links.push(LinkSpec::Vxlan(vxlan()));
    desired
        .routes
        .insert(route("10.244.2.0/24", [10, 244, 2, 0]));
    let mut o = observed_with_device(1);
    o.routes = desired.routes.clone();
    assert!(diff_state(&desired, &o).is_empty());
}

#[test]
fn departed_peer_route_is_deleted_and_new_one_added() {
    let mut desired = KernelState::default();
    desired.links.push(LinkSpec::Vxlan(vxlan()));
    desired
        .routes
        .insert(route("10.244.3.0/24", [10, 244, 3, 0]));
    let mut o = observed_with_device(1);
    o.routes.insert(route("10.244.2.0/24", [10, 244, 2, 0]));
    let p = diff_state(&desired, &o);
    assert_eq!(p.del_routes, vec![route("10.244.2.0/24", [10, 244, 2, 0])]);
    assert_eq!(p.add_routes, vec![route("10.244.3.0/24", [10, 244, 3, 0])]);
    assert!(p.links.is_empty());
}

#[test]
fn device_with_wrong_vni_is_recreated_and_its_entries_reprogrammed() {
    let mut desired = KernelState::default();
    desired.links.push(LinkSpec::Vxlan(vxlan()));
    desired
        .routes
        .insert(route("10.244.2.0/24", [10, 244, 2, 0]));
    let mut o = observed_with_device(7);
    o.routes = desired.routes.clone();
    let p = diff_state(&desired, &o);
    assert!(matches!(&p.links[0], LinkChange::Delete { name } if name == "flannel.1"));
    assert!(matches!(&p.links[1], LinkChange::CreateVxlan(_)));
    assert_eq!(p.add_routes.len(), 1, "routes vanish with the old device");
    assert!(p.del_routes.is_empty());
}

#[test]
fn changed_gateway_is_replaced_without_a_delete() {
    let mut desired = KernelState::default();
    desired.links.push(LinkSpec::Vxlan(vxlan()));
    desired
        .routes
        .insert(route("10.244.2.0/24", [10, 244, 2, 0]));
    let mut o = observed_with_device(1);
    o.routes.insert(route("10.244.2.0/24", [10, 244, 2, 9]));
    let p = diff_state(&desired, &o);
    assert!(p.del_routes.is_empty());
    assert_eq!(p.add_routes.len(), 1);
}
