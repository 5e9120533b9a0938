use super::*;
use crate::lease::{LeaseAttrs, Mac};

fn config(text: &str) -> NetworkConfig {
    NetworkConfig::parse("test", text).unwrap()
}

fn lease(subnet: &str, ip: [u8; 4], expires_at: u64) -> Lease {
    Lease {
        subnet: SubnetKey::v4(subnet.parse().unwrap()),
        attrs: LeaseAttrs::for_backend(
            crate::BackendKind::Vxlan,
            Ipv4Addr::from(ip),
            None,
            1,
            Some(Mac([2, 0, 0, 0, 0, ip[3]])),
            None,
        ),
        expires_at,
    }
}

#[test]
fn restarted_node_gets_its_live_lease_back() {
    let c = config(r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}"#);
    let leases = [
        lease("10.5.7.0/24", [192, 168, 0, 1], 200),
        lease("10.5.8.0/24", [192, 168, 0, 2], 200),
    ];
    let p = plan_allocation(&c, Ipv4Addr::new(192, 168, 0, 1), &leases, None, 100, 7).unwrap();
    assert_eq!(p.subnet.ipv4.to_string(), "10.5.7.0/24");
    assert!(p.reuses_existing);
}

#[test]
fn expired_lease_frees_its_subnet_for_others() {
    let c = config(r#"{"Network":"10.5.0.0/16","SubnetMin":"10.5.2.0","SubnetMax":"10.5.2.0"}"#);
    let leases = [lease("10.5.2.0/24", [192, 168, 0, 2], 100)];
    let me = Ipv4Addr::new(192, 168, 0, 1);
    assert!(matches!(
        plan_allocation(&c, me, &leases, None, 99, 1),
        Err(Error::OutOfSubnets { .. })
    ));
    let p = plan_allocation(&c, me, &leases, None, 100, 1).unwrap();
    assert_eq!(p.subnet.ipv4.to_string(), "10.5.2.0/24");
}

#[test]
fn own_lease_outside_new_subnet_range_is_deleted_and_replaced() {
    let c = config(r#"{"Network":"10.5.0.0/16","SubnetMin":"10.5.10.0"}"#);
    let leases = [lease("10.5.3.0/24", [192, 168, 0, 1], 500)];
    let p = plan_allocation(&c, Ipv4Addr::new(192, 168, 0, 1), &leases, None, 1, 3).unwrap();
    assert_eq!(
        p.delete,
        vec![SubnetKey::v4("10.5.3.0/24".parse().unwrap())]
    );
    assert!(!p.reuses_existing);
    assert!(c.fits(p.subnet.ipv4));
}

#[test]
fn previous_subnet_held_by_another_node_is_not_taken() {
    let c = config(r#"{"Network":"10.5.0.0/16"}"#);
    let leases = [lease("10.5.7.0/24", [192, 168, 0, 2], 500)];
    let prev = Some("10.5.7.0/24".parse().unwrap());
    for seed in 0..50 {
        let p = plan_allocation(&c, Ipv4Addr::new(192, 168, 0, 1), &leases, prev, 1, seed).unwrap();
        assert_ne!(p.subnet.ipv4.to_string(), "10.5.7.0/24");
    }
}

proptest::proptest! {
    #[test]
    fn random_pick_is_free_in_range_and_among_first_hundred(seed: u64, taken in proptest::collection::vec(1u32..255, 0..40)) {
        let c = config(r#"{"Network":"10.9.0.0/16"}"#);
        let leases: Vec<Lease> = taken.iter().map(|i| lease(&format!("10.9.{i}.0/24"), [10, 0, 0, 1 + (*i as u8 % 200)], 1000)).collect();
        let p = plan_allocation(&c, Ipv4Addr::new(172, 16, 0, 1), &leases, None, 1, seed).unwrap();
        let third = p.subnet.ipv4.network().octets()[2] as u32;
        proptest::prop_assert!(!taken.contains(&third));
        let free_before = (1..third).filter(|i| !taken.contains(i)).count();
        proptest::prop_assert!(free_before < FREE_CANDIDATES);
        proptest::prop_assert!(c.fits(p.subnet.ipv4));
    }
}
