use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

const ROUTES: &str = r#"[
 {"dst":"default","gateway":"192.168.0.1","dev":"eth0","metric":100,"flags":[]},
 {"dst":"default","gateway":"192.168.0.254","dev":"eth1","metric":50,"flags":[]},
 {"dst":"10.244.0.0/16","dev":"flannel.1","flags":[]},
 {"dst":"10.244.3.0/24","gateway":"10.244.3.0","dev":"flannel.1","flags":["onlink"]},
 {"dst":"10.244.9.0/24","nexthops":[{"gateway":"192.168.0.9","dev":"eth0"},{"gateway":"192.168.0.10","dev":"eth0"}],"flags":[]},
 {"type":"local","dst":"10.244.3.7","table":"local","dev":"lo","flags":[]},
 {"type":"broadcast","dst":"192.168.0.255","table":"local","dev":"eth0","flags":[]}
]
[{"dst":"fd00::/8","dev":"cni0","flags":[]}]"#;

fn state() -> RoutingState {
    RoutingState {
        routes: parse_routes("routes.json", ROUTES).unwrap(),
        ..RoutingState::default()
    }
}

#[test]
fn longest_prefix_wins_then_the_lowest_metric() {
    let s = state();
    assert_eq!(
        s.lookup(ip("10.244.3.5")).unwrap().dst.to_string(),
        "10.244.3.0/24"
    );
    assert_eq!(
        s.lookup(ip("10.244.4.5")).unwrap().dst.to_string(),
        "10.244.0.0/16"
    );
    assert_eq!(
        s.lookup(ip("8.8.8.8")).unwrap().dev.as_deref(),
        Some("eth1")
    );
    assert_eq!(
        s.lookup(ip("10.244.9.1")).unwrap().gateway,
        Some(ip("192.168.0.9")),
        "first next hop"
    );
    assert_eq!(
        s.lookup(ip("fd00::1")).unwrap().dev.as_deref(),
        Some("cni0")
    );
    assert!(s.lookup(ip("2001:db8::1")).is_none());
}

#[test]
fn the_local_table_is_consulted_before_main() {
    let s = state();
    let r = s.lookup(ip("10.244.3.7")).unwrap();
    assert_eq!((r.table.as_str(), r.kind.as_str()), ("local", "local"));
    assert_eq!(s.addr_type(ip("10.244.3.7")), "LOCAL");
    assert_eq!(s.addr_type(ip("10.244.3.8")), "UNICAST");
    assert_eq!(s.addr_type(ip("192.168.0.255")), "BROADCAST");
    assert_eq!(s.addr_type(ip("224.0.0.1")), "MULTICAST");
}

#[test]
fn bad_route_json_names_the_file_and_field() {
    let e = parse_routes("node1/routes.json", r#"[{"dst":"10.0.0.0/99"}]"#).unwrap_err();
    assert!(
        e.to_string().contains("node1/routes.json: field dst"),
        "{e}"
    );
    assert!(parse_routes("r", "{").is_err());
}

#[test]
fn masquerade_source_is_the_routes_src_or_the_devices_address() {
    let mut s = state();
    s.interfaces = parse_addrs(
        "addrs.json",
        r#"[{"ifname":"flannel.1","linkinfo":{"info_kind":"vxlan"},"addr_info":[{"family":"inet","local":"10.244.1.0","prefixlen":32},{"family":"inet6","local":"fe80::1","prefixlen":64}]}]"#,
    )
    .unwrap();
    assert_eq!(
        s.interface("flannel.1").unwrap().kind.as_deref(),
        Some("vxlan")
    );
    let r = s.lookup(ip("10.244.3.5")).unwrap().clone();
    assert_eq!(s.source_for(&r, ip("10.244.3.5")), Some(ip("10.244.1.0")));
    let r = s.lookup(ip("8.8.8.8")).unwrap().clone();
    assert_eq!(
        s.source_for(&r, ip("8.8.8.8")),
        None,
        "eth1's addresses are unknown"
    );
}
