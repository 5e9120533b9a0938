use super::*;

fn parse(text: &str) -> Result<NetworkConfig, Error> {
    NetworkConfig::parse("net-conf.json", text)
}

#[test]
fn slash_sixteen_defaults_to_slash_twentyfour_subnets_skipping_the_first() {
    let c = parse(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#).unwrap();
    assert_eq!(c.subnet_len, 24);
    assert_eq!(c.subnet_min, Ipv4Addr::new(10, 244, 1, 0));
    assert_eq!(c.subnet_max, Ipv4Addr::new(10, 244, 255, 0));
    assert_eq!(c.backend_kind().unwrap(), BackendKind::Vxlan);
    assert_eq!(c.vni(), 1);
    assert_eq!(c.port(BackendKind::Vxlan), 8472);
}

#[test]
fn small_network_gets_prefix_plus_two() {
    let c = parse(r#"{"Network":"10.1.0.0/26"}"#).unwrap();
    assert_eq!(c.subnet_len, 28);
    assert_eq!(c.backend_type, "udp");
}

#[test]
fn subnet_min_above_max_is_rejected_naming_the_field() {
    let e = parse(r#"{"Network":"10.1.0.0/16","SubnetMin":"10.1.9.0","SubnetMax":"10.1.3.0"}"#)
        .unwrap_err();
    let m = e.to_string();
    assert!(
        m.contains("net-conf.json") && m.contains("SubnetMin") && m.contains("SubnetMax"),
        "{m}"
    );
}

#[test]
fn subnet_len_shorter_than_network_is_rejected() {
    let e = parse(r#"{"Network":"10.1.0.0/16","SubnetLen":15}"#).unwrap_err();
    assert!(e.to_string().contains("SubnetLen"), "{e}");
}

#[test]
fn vxlan_mtu_honours_backend_mtu() {
    let c = parse(r#"{"Network":"10.1.0.0/16","Backend":{"Type":"vxlan","MTU":9000}}"#).unwrap();
    assert_eq!(c.pod_mtu(BackendKind::Vxlan, 1500), 8950);
    assert_eq!(c.pod_mtu(BackendKind::Udp, 1500), 1472);
}

#[test]
fn ipv6_subnet_pairs_by_index() {
    let c = parse(
        r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"2001:cafe:42::/56","Backend":{"Type":"vxlan"}}"#,
    )
    .unwrap();
    let v6 = c.ipv6_subnet_for("10.244.3.0/24".parse().unwrap()).unwrap();
    assert_eq!(v6.to_string(), "2001:cafe:42:3::/64");
}
