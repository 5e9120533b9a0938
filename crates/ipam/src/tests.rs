use std::collections::BTreeSet;
use std::net::IpAddr;

use proptest::prelude::*;
use serde_json::json;

use crate::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn config(ipam: serde_json::Value) -> Result<IpamConfig, IpamError> {
    parse_ipam_config(&json!({"name": "net", "ipam": ipam}))
}

fn one_set(ipam: serde_json::Value) -> RangeSet {
    config(ipam).unwrap().range_sets.remove(0)
}

fn set_of(ips: &[&str]) -> BTreeSet<IpAddr> {
    ips.iter().map(|s| ip(s)).collect()
}

#[test]
fn default_range_spans_network_plus_one_to_broadcast_minus_one() {
    let set = one_set(json!({"subnet": "10.50.0.0/29"}));
    assert_eq!(set.to_string(), "10.50.0.1-10.50.0.6");
    assert_eq!(set.0[0].gateway, ip("10.50.0.1"));
}

#[test]
fn first_allocation_skips_the_gateway() {
    let set = one_set(json!({"subnet": "10.22.0.0/16"}));
    let a = plan_allocation(&set, &BTreeSet::new(), &[], "c", None, None).unwrap();
    assert_eq!(
        (a.address, a.prefix, a.gateway),
        (ip("10.22.0.2"), 16, ip("10.22.0.1"))
    );
}

#[test]
fn allocation_continues_after_last_reserved_even_when_lower_addresses_are_free() {
    let set = one_set(json!({"subnet": "10.50.0.0/29"}));
    let a = plan_allocation(
        &set,
        &set_of(&["10.50.0.3"]),
        &[],
        "c",
        Some(ip("10.50.0.3")),
        None,
    )
    .unwrap();
    assert_eq!(a.address, ip("10.50.0.4"));
}

#[test]
fn allocation_wraps_to_range_start_and_tries_last_reserved_last() {
    let set = one_set(json!({"subnet": "10.50.0.0/29"}));
    let reserved = set_of(&["10.50.0.3", "10.50.0.4", "10.50.0.5", "10.50.0.6"]);
    let a = plan_allocation(&set, &reserved, &[], "c", Some(ip("10.50.0.6")), None).unwrap();
    assert_eq!(a.address, ip("10.50.0.2"));
    let all = set_of(&[
        "10.50.0.2",
        "10.50.0.3",
        "10.50.0.4",
        "10.50.0.5",
        "10.50.0.6",
    ]);
    let e = plan_allocation(&set, &all, &[], "c", Some(ip("10.50.0.4")), None).unwrap_err();
    assert_eq!(
        e.to_string(),
        "no IP addresses available in range set: 10.50.0.1-10.50.0.6"
    );
}

#[test]
fn full_range_moves_on_to_the_next_range_of_the_set() {
    let set = one_set(json!({"ranges": [[{"subnet": "10.3.0.0/30"}, {"subnet": "10.4.0.0/30"}]]}));
    let a = plan_allocation(
        &set,
        &set_of(&["10.3.0.2"]),
        &[],
        "c",
        Some(ip("10.3.0.2")),
        None,
    )
    .unwrap();
    assert_eq!((a.address, a.gateway), (ip("10.4.0.2"), ip("10.4.0.1")));
}

#[test]
fn second_allocation_for_the_same_attachment_is_a_duplicate() {
    let set = one_set(json!({"subnet": "10.50.0.0/29"}));
    let e = plan_allocation(
        &set,
        &set_of(&["10.50.0.2"]),
        &[ip("10.50.0.2")],
        "h1",
        None,
        None,
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "10.50.0.2 has been allocated to h1, duplicate allocation is not allowed"
    );
}

#[test]
fn requested_address_must_be_free_in_range_and_not_the_gateway() {
    let set = one_set(json!({"subnet": "10.50.0.0/29"}));
    let ok = plan_allocation(
        &set,
        &BTreeSet::new(),
        &[],
        "c",
        None,
        Some(ip("10.50.0.6")),
    )
    .unwrap();
    assert_eq!(ok.address, ip("10.50.0.6"));
    let taken = plan_allocation(
        &set,
        &set_of(&["10.50.0.6"]),
        &[],
        "c",
        None,
        Some(ip("10.50.0.6")),
    );
    assert_eq!(
        taken.unwrap_err().to_string(),
        "requested IP address 10.50.0.6 is not available in range set 10.50.0.1-10.50.0.6"
    );
    let gw = plan_allocation(
        &set,
        &BTreeSet::new(),
        &[],
        "c",
        None,
        Some(ip("10.50.0.1")),
    );
    assert!(matches!(gw, Err(IpamError::RequestedIsGateway(_))));
    let out = plan_allocation(&set, &BTreeSet::new(), &[], "c", None, Some(ip("10.9.0.1")));
    assert!(matches!(out, Err(IpamError::RequestedNotInSet { .. })));
}

#[test]
fn subnet_with_host_bits_is_rejected_naming_the_network() {
    let e = config(json!({"subnet": "10.60.0.1/24"})).unwrap_err();
    assert_eq!(
        e.to_string(),
        "Network has host bits set. For a subnet mask of length 24 the network address is 10.60.0.0"
    );
}

#[test]
fn overlapping_range_sets_are_rejected_by_index() {
    let e = config(json!({"ranges": [[{"subnet": "10.1.0.0/24"}], [{"subnet": "10.1.0.0/25"}]]}))
        .unwrap_err();
    assert_eq!(e.to_string(), "range set 0 overlaps with 1");
}

#[test]
fn bad_ranges_and_gateways_are_rejected() {
    assert!(matches!(
        config(json!({"subnet": "10.0.0.0/31"})),
        Err(IpamError::NetworkTooSmall(_))
    ));
    assert!(matches!(
        config(json!({"subnet": "10.0.0.0/24", "rangeStart": "10.1.0.1"})),
        Err(IpamError::RangeStartNotInNetwork { .. })
    ));
    assert!(matches!(
        config(json!({"subnet": "10.0.0.0/24", "gateway": "10.1.0.1"})),
        Err(IpamError::GatewayNotInNetwork { .. })
    ));
    assert!(matches!(
        config(json!({"ranges": [[{"subnet": "10.0.0.0/24"}, {"subnet": "fd00::/64"}]]})),
        Err(IpamError::MixedFamilies)
    ));
    assert_eq!(
        parse_ipam_config(&json!({"name": "x"})).unwrap_err(),
        IpamError::MissingIpamKey
    );
    assert_eq!(
        config(json!({"type": "host-local"})).unwrap_err(),
        IpamError::NoRanges
    );
}

#[test]
fn ipv6_range_ends_at_the_last_address() {
    let set = one_set(json!({"subnet": "fd00:10::/120"}));
    assert_eq!(set.to_string(), "fd00:10::1-fd00:10::ff");
}

#[test]
fn cni_args_ip_needs_ignore_unknown_for_other_keys() {
    assert_eq!(
        parse_cni_args("IgnoreUnknown=1;IP=10.50.0.6;K8S_POD_NAME=web").unwrap(),
        vec![ip("10.50.0.6")]
    );
    assert_eq!(
        parse_cni_args("FOO=bar").unwrap_err().to_string(),
        "ARGS: unknown args [\"FOO=bar\"]"
    );
    assert!(matches!(
        parse_cni_args("junk"),
        Err(IpamError::ArgsInvalidPair(_))
    ));
}

fn res(ip_: &str, content: &str) -> Reservation {
    Reservation::parse(ip_, content).unwrap()
}

fn att(id: &str, ifname: &str) -> Attachment {
    Attachment {
        container_id: id.into(),
        ifname: ifname.into(),
    }
}

#[test]
fn store_files_parse_as_reservations_and_others_do_not() {
    assert_eq!(
        res("10.0.0.2", "c1\r\neth0").ifname.as_deref(),
        Some("eth0")
    );
    assert_eq!(res("fd00::2", "legacy").ifname, None);
    assert!(Reservation::parse("last_reserved_ip.0", "10.0.0.2").is_none());
    assert!(Reservation::parse("lock", "").is_none());
    assert_eq!(Reservation::render("c1", "eth0"), "c1\r\neth0");
}

#[test]
fn release_removes_only_the_attachment_and_falls_back_to_legacy_files() {
    let store = vec![
        res("10.0.0.2", "c1\r\neth0"),
        res("10.0.0.3", "c1\r\neth1"),
        res("10.0.0.4", "c2"),
    ];
    assert_eq!(
        plan_release(&store, &att("c1", "eth0")),
        vec![ip("10.0.0.2")]
    );
    assert_eq!(
        plan_release(&store, &att("c2", "eth0")),
        vec![ip("10.0.0.4")]
    );
    assert!(plan_release(&store, &att("c9", "eth0")).is_empty());
}

#[test]
fn gc_keeps_valid_attachments_only() {
    let store = vec![
        res("10.23.0.2", "keep1\r\neth0"),
        res("10.23.0.3", "stale\r\neth0"),
        res("10.23.0.4", "keep2\r\neth0"),
        res("10.23.0.5", "keep2\r\nnet1"),
        res("10.23.0.6", "keep1"),
    ];
    let gone = plan_gc(&store, &[att("keep1", "eth0"), att("keep2", "net1")]);
    assert_eq!(gone, vec![ip("10.23.0.3"), ip("10.23.0.4")]);
}

proptest! {
    #[test]
    fn allocation_is_in_range_never_gateway_never_reserved(
        taken in proptest::collection::btree_set(0u32..14, 0..14),
        last in proptest::option::of(0u32..16),
    ) {
        let set = one_set(json!({"subnet": "10.9.0.0/28", "rangeStart": "10.9.0.1", "rangeEnd": "10.9.0.14"}));
        let reserved: BTreeSet<IpAddr> = taken.iter().map(|n| ip(&format!("10.9.0.{}", n + 1))).collect();
        let last = last.map(|n| ip(&format!("10.9.0.{n}")));
        match plan_allocation(&set, &reserved, &[], "c", last, None) {
            Ok(a) => {
                prop_assert!(set.contains(a.address));
                prop_assert_ne!(a.address, ip("10.9.0.1"));
                prop_assert!(!reserved.contains(&a.address));
            }
            Err(e) => {
                prop_assert!(matches!(e, IpamError::Exhausted(_)));
                // Exhausted only when every non-gateway address is taken.
                prop_assert_eq!(reserved.iter().filter(|a| **a != ip("10.9.0.1")).count(), 13);
            }
        }
    }
}
