use std::collections::BTreeMap;

use super::*;

/// A flannel-vxlan node: eth0 192.168.0.2/24, cni0 10.244.0.1/24 (bridge), flannel.1
/// 10.244.0.0/32; node 2's pods (10.244.1.0/24) are behind flannel.1.
const ROUTES: &str = r#"[
 {"dst":"default","gateway":"192.168.0.1","dev":"eth0","protocol":"static","flags":[]},
 {"dst":"10.244.0.0/24","dev":"cni0","protocol":"kernel","scope":"link","prefsrc":"10.244.0.1","flags":[]},
 {"dst":"10.244.1.0/24","gateway":"10.244.1.0","dev":"flannel.1","flags":["onlink"]},
 {"dst":"192.168.0.0/24","dev":"eth0","protocol":"kernel","scope":"link","prefsrc":"192.168.0.2","flags":[]},
 {"dst":"203.0.113.0/24","type":"blackhole","flags":[]},
 {"type":"local","dst":"192.168.0.2","table":"local","dev":"eth0","scope":"host","prefsrc":"192.168.0.2","flags":[]},
 {"type":"local","dst":"10.244.0.1","table":"local","dev":"cni0","scope":"host","prefsrc":"10.244.0.1","flags":[]},
 {"type":"local","dst":"10.244.0.0","table":"local","dev":"flannel.1","scope":"host","prefsrc":"10.244.0.0","flags":[]},
 {"type":"local","dst":"127.0.0.0/8","table":"local","dev":"lo","scope":"host","prefsrc":"127.0.0.1","flags":[]}
]"#;
const ADDRS: &str = r#"[
 {"ifname":"lo","addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8}]},
 {"ifname":"eth0","addr_info":[{"family":"inet","local":"192.168.0.2","prefixlen":24}]},
 {"ifname":"cni0","linkinfo":{"info_kind":"bridge"},"addr_info":[{"family":"inet","local":"10.244.0.1","prefixlen":24}]},
 {"ifname":"flannel.1","linkinfo":{"info_kind":"vxlan"},"addr_info":[{"family":"inet","local":"10.244.0.0","prefixlen":32}]}
]"#;

fn rules(filter_forward: &str, extra_nat: &str) -> String {
    format!(
        r#"*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:KUBE-FORWARD - [0:0]
:KUBE-SERVICES - [0:0]
-A FORWARD -m conntrack --ctstate NEW -j KUBE-SERVICES
-A FORWARD -j KUBE-FORWARD
{filter_forward}
-A OUTPUT -m conntrack --ctstate NEW -j KUBE-SERVICES
-A KUBE-FORWARD -m mark --mark 0x4000/0x4000 -j ACCEPT
-A KUBE-SERVICES -d 10.96.0.99/32 -p tcp -m tcp --dport 80 -j REJECT --reject-with icmp-port-unreachable
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-SVC-A - [0:0]
:KUBE-SEP-1 - [0:0]
:KUBE-SEP-2 - [0:0]
:KUBE-SEP-3 - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-POSTROUTING - [0:0]
:FLANNEL-POSTRTG - [0:0]
-A PREROUTING -j KUBE-SERVICES
-A OUTPUT -j KUBE-SERVICES
-A POSTROUTING -j KUBE-POSTROUTING
-A POSTROUTING -j FLANNEL-POSTRTG
-A KUBE-SERVICES -d 10.96.0.10/32 -p tcp -m comment --comment "default/web cluster IP" -m tcp --dport 80 -j KUBE-SVC-A
{extra_nat}
-A KUBE-SVC-A ! -s 10.244.0.0/16 -d 10.96.0.10/32 -p tcp -m tcp --dport 80 -j KUBE-MARK-MASQ
-A KUBE-SVC-A -m statistic --mode random --probability 0.33333333349 -j KUBE-SEP-1
-A KUBE-SVC-A -m statistic --mode random --probability 0.50000000000 -j KUBE-SEP-2
-A KUBE-SVC-A -j KUBE-SEP-3
-A KUBE-SEP-1 -s 10.244.0.5/32 -j KUBE-MARK-MASQ
-A KUBE-SEP-1 -p tcp -m tcp -j DNAT --to-destination 10.244.0.5:8080
-A KUBE-SEP-2 -p tcp -m tcp -j DNAT --to-destination 10.244.1.7:8080
-A KUBE-SEP-3 -p tcp -m tcp -j DNAT --to-destination 10.244.1.8:8080
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0
-A KUBE-POSTROUTING -j MASQUERADE --random-fully
-A FLANNEL-POSTRTG -s 10.244.0.0/16 -d 10.244.0.0/16 -j RETURN
-A FLANNEL-POSTRTG -s 10.244.0.0/16 ! -d 224.0.0.0/4 -j MASQUERADE --random-fully
COMMIT
"#
    )
}

fn node(filter_forward: &str, extra_nat: &str, ip_forward: &str) -> Snapshot {
    let files: BTreeMap<String, String> = [
        ("iptables-save.txt", rules(filter_forward, extra_nat)),
        ("routes.json", ROUTES.to_string()),
        ("addrs.json", ADDRS.to_string()),
        ("ip_forward", ip_forward.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    Snapshot::from_files(&files).unwrap()
}

fn flannel_node() -> Snapshot {
    node(
        "-A FORWARD -s 10.244.0.0/16 -j ACCEPT\n-A FORWARD -d 10.244.0.0/16 -j ACCEPT",
        "",
        "1\n",
    )
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn go(snap: &Snapshot, src: &str, dst: &str, port: u16) -> Trace {
    trace(snap, &Probe::new(ip(src), ip(dst), "tcp", port)).unwrap()
}

fn by_endpoint(t: &Trace) -> BTreeMap<String, &Branch> {
    t.branches
        .iter()
        .map(|b| (b.endpoint().unwrap_or_else(|| "none".into()), b))
        .collect()
}

#[test]
fn service_branches_carry_each_endpoints_probability() {
    let t = go(&flannel_node(), "10.244.0.9", "10.96.0.10", 80);
    let eps = by_endpoint(&t);
    assert_eq!(
        eps.keys().cloned().collect::<Vec<_>>(),
        vec!["10.244.0.5:8080", "10.244.1.7:8080", "10.244.1.8:8080"]
    );
    for b in eps.values() {
        assert!(
            (b.probability - 1.0 / 3.0).abs() < 1e-6,
            "{}",
            b.probability
        );
        assert!(b.conditions.is_empty());
    }
    let total: f64 = t.branches.iter().map(|b| b.probability).sum();
    assert!((total - 1.0).abs() < 1e-9);
}

#[test]
fn pod_to_service_routes_local_endpoints_to_the_bridge_and_remote_ones_to_the_overlay() {
    let t = go(&flannel_node(), "10.244.0.9", "10.96.0.10", 80);
    let eps = by_endpoint(&t);
    let local = eps["10.244.0.5:8080"];
    assert_eq!(local.route().unwrap().dev.as_deref(), Some("cni0"));
    assert!(
        !local.masqueraded(),
        "pod to pod inside the cluster CIDR keeps its source"
    );
    let remote = eps["10.244.1.7:8080"];
    assert_eq!(
        remote.fate,
        Some(Fate::Sent {
            dev: Some("flannel.1".into()),
            next_hop: ip("10.244.1.0"),
            forwarded: true
        })
    );
    assert!(remote.steps.iter().any(|s| matches!(s, Step::Rule { at, .. } if at.chain == "FLANNEL-POSTRTG" && at.rule == Some(1))));
}

#[test]
fn off_cluster_client_is_masqueraded_to_the_outgoing_devices_address() {
    let t = go(&flannel_node(), "192.168.0.50", "10.96.0.10", 80);
    assert_eq!(t.origin, "arriving on eth0");
    let eps = by_endpoint(&t);
    let remote = eps["10.244.1.8:8080"];
    assert!(remote.masqueraded());
    assert_eq!(remote.packet.src, ip("10.244.0.0"), "flannel.1's address");
    assert_eq!(
        remote.packet.mark, 0,
        "KUBE-POSTROUTING clears the masquerade bit"
    );
    let accepted = remote.accepted_by.as_ref().unwrap();
    assert_eq!(
        (accepted.chain.as_str(), accepted.rule),
        ("KUBE-FORWARD", Some(1))
    );
    let local = eps["10.244.0.5:8080"];
    assert_eq!(local.packet.src, ip("10.244.0.1"), "cni0's address");
}

#[test]
fn hairpin_is_masqueraded_only_when_the_endpoint_is_the_sender() {
    let t = go(&flannel_node(), "10.244.0.5", "10.96.0.10", 80);
    let eps = by_endpoint(&t);
    assert!(eps["10.244.0.5:8080"].masqueraded());
    assert!(!eps["10.244.1.7:8080"].masqueraded());
}

#[test]
fn locally_generated_traffic_takes_output_and_is_rerouted_after_dnat() {
    let t = go(&flannel_node(), "192.168.0.2", "10.96.0.10", 80);
    assert_eq!(t.origin, "locally generated");
    let b = by_endpoint(&t)["10.244.1.7:8080"];
    let hooks: Vec<&str> = b
        .steps
        .iter()
        .filter_map(|s| match s {
            Step::Hook { hook } => Some(hook.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(hooks, vec!["OUTPUT", "POSTROUTING"]);
    assert_eq!(b.route().unwrap().dev.as_deref(), Some("flannel.1"));
    assert_eq!(
        b.fate,
        Some(Fate::Sent {
            dev: Some("flannel.1".into()),
            next_hop: ip("10.244.1.0"),
            forwarded: false
        })
    );
    assert!(b.masqueraded());
}

#[test]
fn forward_policy_drop_without_an_accepting_rule_names_the_policy() {
    let t = go(&flannel_node(), "192.168.0.50", "198.51.100.1", 443);
    assert_eq!(t.branches.len(), 1);
    match &t.branches[0].fate {
        Some(Fate::Dropped {
            at: Some(at),
            reason,
        }) => {
            assert_eq!(
                (at.table.as_str(), at.chain.as_str(), at.rule),
                ("filter", "FORWARD", None)
            );
            assert!(reason.contains("policy DROP"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn forwarding_disabled_drops_routed_packets_with_the_sysctl_named() {
    let snap = node("-A FORWARD -s 10.244.0.0/16 -j ACCEPT", "", "0\n");
    let t = go(&snap, "10.244.0.9", "10.96.0.10", 80);
    for b in &t.branches {
        match &b.fate {
            Some(Fate::Dropped { at: None, reason }) => {
                assert!(reason.contains("ip_forward=0"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
    }
    // Local delivery does not need forwarding.
    let t = go(&snap, "10.244.0.9", "10.244.0.1", 22);
    assert_eq!(
        t.branches[0].fate,
        Some(Fate::Delivered {
            to: "10.244.0.1:22".into()
        })
    );
}

#[test]
fn reject_rules_and_blackhole_routes_say_where_the_packet_dies() {
    let t = go(&flannel_node(), "10.244.0.9", "10.96.0.99", 80);
    match &t.branches[0].fate {
        Some(Fate::Rejected { at, with }) => {
            assert_eq!((at.chain.as_str(), at.rule), ("KUBE-SERVICES", Some(1)));
            assert_eq!(with.as_deref(), Some("icmp-port-unreachable"));
        }
        other => panic!("{other:?}"),
    }
    let t = go(&flannel_node(), "10.244.0.9", "203.0.113.5", 80);
    match &t.branches[0].fate {
        Some(Fate::Dropped { reason, .. }) => assert!(reason.contains("blackhole"), "{reason}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn session_affinity_forks_into_history_and_fresh_branches() {
    let snap = node(
        "-A FORWARD -s 10.244.0.0/16 -j ACCEPT",
        "-A KUBE-SERVICES -d 10.96.0.20/32 -p tcp -m tcp --dport 80 -j KUBE-SVC-B\n-A KUBE-SVC-B -m recent --name KUBE-SEP-3 --rcheck --seconds 10800 --reap -j KUBE-SEP-3\n-A KUBE-SVC-B -m statistic --mode random --probability 0.50000000000 -j KUBE-SEP-1\n-A KUBE-SVC-B -j KUBE-SEP-2",
        "1",
    );
    let t = go(&snap, "10.244.0.9", "10.96.0.20", 80);
    let sticky: Vec<&Branch> = t
        .branches
        .iter()
        .filter(|b| b.conditions.iter().any(|c| c.starts_with("history")))
        .collect();
    assert_eq!(sticky.len(), 1);
    assert_eq!(sticky[0].endpoint().as_deref(), Some("10.244.1.8:8080"));
    assert!(sticky[0].conditions[0].contains("10.244.0.9 within 10800s"));
    let fresh: BTreeMap<String, f64> = t
        .branches
        .iter()
        .filter(|b| b.conditions.iter().any(|c| c.starts_with("no history")))
        .map(|b| (b.endpoint().unwrap(), b.probability))
        .collect();
    assert_eq!(fresh.len(), 2);
    assert!(fresh.values().all(|p| (p - 0.5).abs() < 1e-9));
}

#[test]
fn ipset_matches_fork_without_contents_and_decide_with_them() {
    let mut snap = node(
        "-A FORWARD -m set --match-set ALLOWED src -j ACCEPT",
        "",
        "1",
    );
    let t = go(&snap, "192.168.0.50", "10.244.1.7", 80);
    assert_eq!(t.branches.len(), 2);
    assert!(t.branches.iter().any(|b| b.conditions
        == vec!["ipset ALLOWED (src) holds 192.168.0.50".to_string()]
        && matches!(b.fate, Some(Fate::Sent { .. }))));
    assert!(
        t.branches
            .iter()
            .any(|b| b.conditions[0].contains("lacks")
                && matches!(b.fate, Some(Fate::Dropped { .. })))
    );
    snap.ipsets = crate::parse_ipset_save(
        "create ALLOWED hash:net family inet\nadd ALLOWED 192.168.0.0/24\n",
    );
    let t = go(&snap, "192.168.0.50", "10.244.1.7", 80);
    assert_eq!(t.branches.len(), 1);
    assert!(matches!(t.branches[0].fate, Some(Fate::Sent { .. })));
    let t = go(&snap, "192.168.7.50", "10.244.1.7", 80);
    assert!(matches!(t.branches[0].fate, Some(Fate::Dropped { .. })));
}

#[test]
fn goto_returns_past_the_calling_chain() {
    // CNI portmap style: a goto'd chain that falls off the end skips the rest of the
    // chain that went there; a jump comes back.
    let snap = node("-A FORWARD -j CHK\n-A FORWARD -j ACCEPT", "", "1");
    let mut text = rules("-A FORWARD -g CHK\n-A FORWARD -j ACCEPT", "");
    text = text.replace(
        ":KUBE-FORWARD - [0:0]",
        ":KUBE-FORWARD - [0:0]\n:CHK - [0:0]",
    );
    let mut with_goto = snap.clone();
    with_goto.ipv4 = Ruleset::parse("goto", &text).unwrap();
    let mut with_jump = snap;
    with_jump.ipv4 = Ruleset::parse("jump", &text.replace("-g CHK", "-j CHK")).unwrap();
    let dropped = go(&with_goto, "192.168.0.50", "198.51.100.1", 80);
    assert!(matches!(
        dropped.branches[0].fate,
        Some(Fate::Dropped { .. })
    ));
    let sent = go(&with_jump, "192.168.0.50", "198.51.100.1", 80);
    assert!(matches!(sent.branches[0].fate, Some(Fate::Sent { .. })));
}

#[test]
fn the_trace_serialises_for_tools_and_renders_for_people() {
    let t = go(&flannel_node(), "192.168.0.50", "10.96.0.10", 80);
    let v = serde_json::to_value(&t).unwrap();
    assert_eq!(v["branches"].as_array().unwrap().len(), 3);
    assert_eq!(v["branches"][0]["fate"]["fate"], "sent");
    let text = crate::report::render_text(&t);
    assert!(text.contains("nat KUBE-SVC-A #2: -m statistic --mode random --probability 0.33333333349 -j KUBE-SEP-1"), "{text}");
    assert!(
        text.contains("DNAT 10.96.0.10:80 -> 10.244.0.5:8080"),
        "{text}"
    );
    assert!(
        text.contains("MASQUERADE 192.168.0.50:40000 -> 10.244.0.0:40000"),
        "{text}"
    );
    assert!(text.contains("probability 0.3333"), "{text}");
}

#[test]
fn endless_jump_loops_are_reported_not_followed_forever() {
    let text = "*filter\n:FORWARD ACCEPT [0:0]\n:A - [0:0]\n-A FORWARD -j A\n-A A -j A\nCOMMIT\n";
    let mut snap = flannel_node();
    snap.ipv4 = Ruleset::parse("loop", text).unwrap();
    let e = trace(
        &snap,
        &Probe::new(ip("192.168.0.50"), ip("198.51.100.1"), "tcp", 80),
    )
    .unwrap_err();
    assert!(matches!(e, Error::TooDeep { .. }), "{e}");
}

#[test]
fn nat_targets_parse_ipv4_ipv6_ranges_and_bare_ports() {
    assert_eq!(
        parse_nat_to("10.180.0.3:80"),
        Some((Some(ip("10.180.0.3")), Some(80)))
    );
    assert_eq!(
        parse_nat_to("[fd00:10::1]:8080"),
        Some((Some(ip("fd00:10::1")), Some(8080)))
    );
    assert_eq!(
        parse_nat_to("10.0.0.1-10.0.0.9:80-90"),
        Some((Some(ip("10.0.0.1")), Some(80)))
    );
    assert_eq!(parse_nat_to("fd00::1"), Some((Some(ip("fd00::1")), None)));
    assert_eq!(parse_nat_to(":8443"), Some((None, Some(8443))));
}

#[test]
fn ipv6_packets_walk_the_ip6tables_ruleset() {
    let routes = r#"[{"dst":"default","gateway":"2001:db8::fe","dev":"eth0","flags":[]},
        {"dst":"fd00:10::/64","dev":"cni0","flags":[]},
        {"type":"local","dst":"2001:db8::1","table":"local","dev":"eth0","flags":[]}]"#;
    let rules6 = "*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -d fd00:20::10/128 -p udp -m udp --dport 53 -j DNAT --to-destination [fd00:10::5]:5353\nCOMMIT\n";
    let files: BTreeMap<String, String> = [
        ("ip6tables-save.txt", rules6),
        ("routes.json", routes),
        ("ipv6_forwarding", "1"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let snap = Snapshot::from_files(&files).unwrap();
    let t = trace(
        &snap,
        &Probe::new(ip("2600:5200::1"), ip("fd00:20::10"), "udp", 53),
    )
    .unwrap();
    let b = &t.branches[0];
    assert_eq!(b.endpoint().as_deref(), Some("[fd00:10::5]:5353"));
    assert_eq!(
        b.fate,
        Some(Fate::Sent {
            dev: Some("cni0".into()),
            next_hop: ip("fd00:10::5"),
            forwarded: true
        })
    );
    // The IPv4 ruleset is not consulted for IPv6 packets (and the TCP port does not match UDP).
    let t = trace(
        &snap,
        &Probe::new(ip("2600:5200::1"), ip("fd00:20::10"), "tcp", 53),
    )
    .unwrap();
    assert_eq!(t.branches[0].endpoint(), None);
}

#[test]
fn sent_packets_name_the_neighbour_the_bridge_port_and_the_vxlan_vtep() {
    let mut snap = flannel_node();
    snap.routing.neighbours = crate::route::parse_neigh(
        "neigh.json",
        r#"[{"dst":"10.244.1.0","dev":"flannel.1","lladdr":"AA:AA:AA:00:00:01","state":["PERMANENT"]},
            {"dst":"10.244.0.5","dev":"cni0","lladdr":"0a:58:0a:f4:00:05","state":["REACHABLE"]}]"#,
    )
    .unwrap();
    snap.routing.fdb = crate::route::parse_fdb(
        "fdb.json",
        r#"[{"mac":"aa:aa:aa:00:00:01","ifname":"flannel.1","dst":"192.168.0.3","flags":["self"],"state":"permanent"},
            {"mac":"0a:58:0a:f4:00:05","ifname":"veth1234","master":"cni0","state":""}]"#,
    )
    .unwrap();
    let t = go(&snap, "10.244.0.9", "10.96.0.10", 80);
    let eps = by_endpoint(&t);
    let remote = eps["10.244.1.7:8080"].link.as_ref().unwrap();
    assert_eq!(remote.lladdr.as_deref(), Some("aa:aa:aa:00:00:01"));
    assert_eq!(remote.vtep, Some(ip("192.168.0.3")));
    let local = eps["10.244.0.5:8080"].link.as_ref().unwrap();
    assert_eq!(local.bridge_port.as_deref(), Some("veth1234"));
    assert_eq!(local.vtep, None);
    let text = crate::report::render_text(&t);
    assert!(text.contains("vxlan-encapsulated to 192.168.0.3"), "{text}");
    // A next hop without a neighbour entry says so.
    let t = go(&flannel_node(), "10.244.0.9", "10.244.1.20", 80);
    let link = t.branches[0].link.as_ref().unwrap();
    assert_eq!((link.lladdr.as_ref(), link.vtep), (None, None));
    assert!(crate::report::render_text(&t).contains("no neighbour entry"));
}

#[test]
fn a_service_with_hundreds_of_endpoints_forks_once_per_endpoint_with_equal_shares() {
    let n = 300;
    let mut nat = String::from(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:SVC - [0:0]\n-A PREROUTING -d 10.96.0.50/32 -p tcp -m tcp --dport 80 -j SVC\n",
    );
    for i in 0..n {
        let sep = format!("SEP-{i}");
        nat.push_str(&format!(
            ":{sep} - [0:0]\n-A {sep} -p tcp -j DNAT --to-destination 10.244.1.{}:80\n",
            i % 250 + 1
        ));
        let prob = if i + 1 < n {
            format!(
                "-m statistic --mode random --probability {:.11} ",
                1.0 / (n - i) as f64
            )
        } else {
            String::new()
        };
        nat.push_str(&format!("-A SVC {prob}-j {sep}\n"));
    }
    nat.push_str("COMMIT\n");
    let mut snap = flannel_node();
    snap.ipv4 = Ruleset::parse("big", &nat).unwrap();
    let t = go(&snap, "10.244.0.9", "10.96.0.50", 80);
    assert_eq!(t.branches.len(), n);
    for b in &t.branches {
        assert!(
            (b.probability - 1.0 / n as f64).abs() < 1e-6,
            "{}",
            b.probability
        );
    }
}
