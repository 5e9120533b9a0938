use std::collections::BTreeMap;

use super::*;

fn ip(s: &str) -> std::net::IpAddr {
    s.parse().unwrap()
}

fn snap(files: &[(&str, &str)]) -> Snapshot {
    let f: BTreeMap<String, String> = files
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Snapshot::from_files(&f).unwrap()
}

/// Two flannel-vxlan nodes; a Service on node1 whose endpoint lives on node2.
fn cluster() -> Vec<(String, Snapshot)> {
    let node1 = snap(&[
        (
            "iptables-save.txt",
            "*nat\n:PREROUTING ACCEPT [0:0]\n:SVC - [0:0]\n-A PREROUTING -d 10.96.0.10/32 -p tcp -m tcp --dport 80 -j SVC\n-A SVC -j DNAT --to-destination 10.244.1.7:8080\nCOMMIT\n",
        ),
        (
            "routes.json",
            r#"[{"dst":"10.244.0.0/24","dev":"cni0","prefsrc":"10.244.0.1"},
                {"dst":"10.244.1.0/24","gateway":"10.244.1.0","dev":"flannel.1","flags":["onlink"]},
                {"dst":"192.168.0.0/24","dev":"eth0","prefsrc":"192.168.0.2"},
                {"type":"local","dst":"192.168.0.2","table":"local","dev":"eth0"},
                {"type":"local","dst":"10.244.0.0","table":"local","dev":"flannel.1"},
                {"type":"local","dst":"10.244.0.1","table":"local","dev":"cni0"}]"#,
        ),
        (
            "addrs.json",
            r#"[{"ifname":"eth0","addr_info":[{"local":"192.168.0.2","prefixlen":24}]},
                {"ifname":"cni0","linkinfo":{"info_kind":"bridge"},"addr_info":[{"local":"10.244.0.1","prefixlen":24}]},
                {"ifname":"flannel.1","linkinfo":{"info_kind":"vxlan"},"addr_info":[{"local":"10.244.0.0","prefixlen":32}]}]"#,
        ),
        (
            "neigh.json",
            r#"[{"dst":"10.244.1.0","dev":"flannel.1","lladdr":"aa:00:00:00:00:02","state":["PERMANENT"]}]"#,
        ),
        (
            "fdb.json",
            r#"[{"mac":"aa:00:00:00:00:02","ifname":"flannel.1","dst":"192.168.0.3","state":"permanent"}]"#,
        ),
        ("ip_forward", "1"),
    ]);
    let node2 = snap(&[
        (
            "iptables-save.txt",
            "*filter\n:FORWARD DROP [0:0]\n-A FORWARD -d 10.244.0.0/16 -j ACCEPT\nCOMMIT\n",
        ),
        (
            "routes.json",
            r#"[{"dst":"10.244.1.0/24","dev":"cni0","prefsrc":"10.244.1.1"},
                {"dst":"10.244.0.0/24","gateway":"10.244.0.0","dev":"flannel.1","flags":["onlink"]},
                {"type":"local","dst":"192.168.0.3","table":"local","dev":"eth0"},
                {"type":"local","dst":"10.244.1.0","table":"local","dev":"flannel.1"},
                {"type":"local","dst":"10.244.1.1","table":"local","dev":"cni0"}]"#,
        ),
        (
            "addrs.json",
            r#"[{"ifname":"eth0","addr_info":[{"local":"192.168.0.3","prefixlen":24}]},
                {"ifname":"cni0","linkinfo":{"info_kind":"bridge"},"addr_info":[{"local":"10.244.1.1","prefixlen":24}]},
                {"ifname":"flannel.1","linkinfo":{"info_kind":"vxlan"},"addr_info":[{"local":"10.244.1.0","prefixlen":32}]}]"#,
        ),
        ("ip_forward", "1"),
    ]);
    let pod = snap(&[
        (
            "routes.json",
            r#"[{"dst":"default","gateway":"10.244.1.1","dev":"eth0"},
                {"type":"local","dst":"10.244.1.7","table":"local","dev":"eth0"}]"#,
        ),
        (
            "addrs.json",
            r#"[{"ifname":"eth0","addr_info":[{"local":"10.244.1.7","prefixlen":24}]}]"#,
        ),
    ]);
    vec![
        ("node1".into(), node1),
        ("node2".into(), node2),
        ("pod web-1".into(), pod),
    ]
}

#[test]
fn a_service_packet_crosses_the_vxlan_to_the_endpoints_node_and_into_the_pod() {
    let probe = Probe::new(ip("10.244.0.9"), ip("10.96.0.10"), "tcp", 80);
    let paths = trace_across(&cluster(), "node1", &probe).unwrap();
    assert_eq!(paths.len(), 1);
    let p = &paths[0];
    let nodes: Vec<&str> = p.hops.iter().map(|h| h.node.as_str()).collect();
    assert_eq!(nodes, vec!["node1", "node2", "pod web-1"]);
    assert_eq!(p.hops[1].origin, "arriving on flannel.1");
    assert_eq!(
        p.hops[1].branch.route().unwrap().dev.as_deref(),
        Some("cni0")
    );
    assert_eq!(
        p.hops[2].branch.fate,
        Some(Fate::Delivered {
            to: "10.244.1.7:8080".into()
        })
    );
    assert_eq!(p.stopped, None);
    let text = crate::report::render_paths(&paths);
    assert!(text.contains("on node2 (arriving on flannel.1):"), "{text}");
}

#[test]
fn a_next_hop_outside_the_snapshots_stops_the_path_and_says_why() {
    let mut c = cluster();
    c.retain(|(n, _)| n != "node2");
    let probe = Probe::new(ip("10.244.0.9"), ip("10.96.0.10"), "tcp", 80);
    let paths = trace_across(&c, "node1", &probe).unwrap();
    assert_eq!(paths[0].hops.len(), 1);
    assert_eq!(
        paths[0].stopped.as_deref(),
        Some("VTEP 192.168.0.3 is in no snapshot")
    );
}

#[test]
fn a_drop_on_the_second_node_ends_the_path_there() {
    let mut c = cluster();
    c[1].1.ipv4 = crate::Ruleset::parse("node2", "*filter\n:FORWARD DROP [0:0]\nCOMMIT\n").unwrap();
    let probe = Probe::new(ip("10.244.0.9"), ip("10.96.0.10"), "tcp", 80);
    let paths = trace_across(&c, "node1", &probe).unwrap();
    let last = paths[0].hops.last().unwrap();
    assert_eq!(last.node, "node2");
    assert!(
        matches!(&last.branch.fate, Some(Fate::Dropped { reason, .. }) if reason.contains("policy DROP"))
    );
}

#[test]
fn the_reply_is_un_dnatted_on_the_node_that_dnatted_the_request() {
    let probe = Probe::new(ip("10.244.0.9"), ip("10.96.0.10"), "tcp", 80);
    let trips = trace_round_trip(&cluster(), "node1", &probe).unwrap();
    assert_eq!(trips.len(), 1);
    let t = &trips[0];
    assert_eq!(t.ok, Some(true), "{}", t.verdict);
    let reply = &t.replies[0];
    let nodes: Vec<&str> = reply.hops.iter().map(|h| h.node.as_str()).collect();
    assert_eq!(nodes, vec!["pod web-1", "node2", "node1"]);
    let back = &reply.hops[2].branch;
    assert!(back.translations().any(|tr| tr.kind == "un-DNAT"
        && tr.from == "10.244.1.7:8080"
        && tr.to == "10.96.0.10:80"));
    assert_eq!(back.packet.src, ip("10.96.0.10"));
    assert!(
        crate::report::render_round_trips(&trips).contains("[ok]"),
        "{}",
        crate::report::render_round_trips(&trips)
    );
}

#[test]
fn a_reply_that_bypasses_the_dnatting_node_is_reported_broken() {
    let mut c = cluster();
    // node2 answers off-cluster clients through its own default route.
    let mut routes = c[1].1.routing.routes.clone();
    routes.push(crate::Route {
        table: "main".into(),
        kind: "unicast".into(),
        dst: "0.0.0.0/0".parse().unwrap(),
        gateway: Some(ip("192.168.0.1")),
        dev: Some("eth0".into()),
        prefsrc: None,
        metric: 0,
    });
    c[1].1.routing.routes = routes;
    c[1].1.ipv4 = crate::Ruleset::parse(
        "node2",
        "*filter\n:FORWARD DROP [0:0]\n-A FORWARD -d 10.244.0.0/16 -j ACCEPT\n-A FORWARD -s 10.244.0.0/16 -j ACCEPT\nCOMMIT\n",
    )
    .unwrap();
    let probe = Probe::new(ip("192.168.0.50"), ip("10.96.0.10"), "tcp", 80);
    let trips = trace_round_trip(&c, "node1", &probe).unwrap();
    let t = &trips[0];
    assert_eq!(t.ok, Some(false));
    assert!(
        t.verdict
            .contains("from 10.244.1.7:8080, but the client connected to 10.96.0.10:80"),
        "{}",
        t.verdict
    );
}

#[test]
fn replies_match_established_rules_and_skip_nat() {
    let mut c = cluster();
    c[1].1.ipv4 = crate::Ruleset::parse(
        "node2",
        "*filter\n:FORWARD DROP [0:0]\n-A FORWARD -d 10.244.1.0/24 -m conntrack --ctstate NEW -j ACCEPT\n-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\nCOMMIT\n*nat\n:POSTROUTING ACCEPT [0:0]\n-A POSTROUTING -j MASQUERADE\nCOMMIT\n",
    )
    .unwrap();
    let probe = Probe::new(ip("10.244.0.9"), ip("10.96.0.10"), "tcp", 80);
    let trips = trace_round_trip(&c, "node1", &probe).unwrap();
    let t = &trips[0];
    assert_eq!(t.ok, Some(true), "{}", t.verdict);
    // The request was masqueraded on node2; the reply is un-SNATed there, not NATed again.
    let on_node2 = &t.replies[0].hops[1].branch;
    assert!(on_node2.translations().all(|tr| tr.kind.starts_with("un-")));
    assert!(
        on_node2
            .steps
            .iter()
            .any(|s| matches!(s, crate::walk::Step::Rule { at, .. } if at.rule == Some(2)))
    );
}
