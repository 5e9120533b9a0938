use super::*;

fn healthy() -> Snapshot {
    Snapshot {
        node: Some("node-1".into()),
        sysctls: [
            (
                "net.bridge.bridge-nf-call-iptables".to_string(),
                Some("1".to_string()),
            ),
            ("net.ipv4.ip_forward".to_string(), Some("1".to_string())),
        ]
        .into(),
        iptables: Some(IptablesDump::parse(
            "iptables-save",
            "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:KUBE-FORWARD - [0:0]\n-A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD\nCOMMIT\n",
        ).unwrap()),
        links: vec![
            Link {
                name: "eth0".into(),
                kind: None,
                mtu: 1500,
                up: true,
                master: None,
                vxlan_port: None,
                lower: None,
            },
            Link {
                name: "flannel.1".into(),
                kind: Some("vxlan".into()),
                mtu: 1450,
                up: true,
                master: None,
                vxlan_port: Some(8472),
                lower: Some("eth0".into()),
            },
            Link {
                name: "cni0".into(),
                kind: Some("bridge".into()),
                mtu: 1450,
                up: true,
                master: None,
                vxlan_port: None,
                lower: None,
            },
            Link {
                name: "veth1".into(),
                kind: Some("veth".into()),
                mtu: 1450,
                up: true,
                master: Some("cni0".into()),
                vxlan_port: None,
                lower: None,
            },
        ],
        ..Default::default()
    }
}

fn checks(s: &Snapshot) -> Vec<&'static str> {
    check(s).iter().map(|f| f.check).collect()
}

#[test]
fn a_healthy_node_has_no_findings() {
    assert!(check(&healthy()).is_empty(), "{:?}", check(&healthy()));
}

#[test]
fn missing_br_netfilter_and_disabled_forwarding_are_errors_with_fixes() {
    let mut s = healthy();
    s.sysctls
        .insert("net.bridge.bridge-nf-call-iptables".into(), None);
    s.sysctls
        .insert("net.ipv4.ip_forward".into(), Some("0".into()));
    let f = check(&s);
    assert_eq!(
        f.iter().map(|f| f.check).collect::<Vec<_>>(),
        ["bridge-nf-call-iptables", "ip-forward"]
    );
    assert!(f[0].fix.contains("modprobe br_netfilter"));
    assert!(f[1].fix.contains("net.ipv4.ip_forward=1"));
    s.sysctls.insert(
        "net.bridge.bridge-nf-call-iptables".into(),
        Some("0".into()),
    );
    assert!(check(&s)[0].fix.contains("bridge-nf-call-iptables=1"));
}

#[test]
fn forward_drop_without_kube_forward_is_found() {
    let mut s = healthy();
    s.iptables = Some(
        IptablesDump::parse("iptables-save", "*filter\n:FORWARD DROP [0:0]\nCOMMIT\n").unwrap(),
    );
    assert_eq!(checks(&s), ["forward-policy-drop"]);
}

#[test]
fn firewall_rules_ahead_of_kube_chains_and_blocked_vxlan_port() {
    let mut s = healthy();
    s.iptables = Some(IptablesDump::parse(
        "iptables-save",
        "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n-A INPUT -p udp -m udp --dport 8472 -j DROP\n-A FORWARD -j ufw-before-forward\n-A FORWARD -j KUBE-FORWARD\nCOMMIT\n",
    ).unwrap());
    assert_eq!(checks(&s), ["firewall-ahead-of-kube", "vxlan-port-blocked"]);
}

#[test]
fn mtu_mismatches_between_underlay_overlay_bridge_and_pods() {
    let mut s = healthy();
    s.links[1].mtu = 1500; // flannel.1 as big as the underlay
    let f = check(&s);
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0].check, "mtu-mismatch");
    assert!(f[0].subject.starts_with("link flannel.1") && f[0].fix.contains("mtu 1450"));
    let mut s = healthy();
    s.links[2].mtu = 1500;
    s.links[3].mtu = 1500;
    let f = check(&s);
    assert_eq!(f.len(), 2, "{f:?}");
    assert!(f[0].subject.starts_with("link cni0") && f[1].subject.starts_with("link veth1"));
}

fn cluster(yaml: &str) -> ClusterState {
    let r = twill_manifest::parse_str("c.yaml", yaml);
    assert!(r.problems.is_empty(), "{:?}", r.problems);
    ClusterState::from_objects(r.into_objects())
}

#[test]
fn services_without_pods_with_missing_named_ports_or_no_ready_endpoints() {
    let mut s = healthy();
    s.cluster = Some(cluster(
        "
apiVersion: v1
kind: Service
metadata: {name: lonely}
spec: {selector: {app: nobody}, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: named}
spec: {selector: {app: web}, ports: [{port: 80, targetPort: http}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, labels: {app: web}}
spec: {containers: [{name: c, image: i, ports: [{name: web, containerPort: 80}]}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: named-x, labels: {kubernetes.io/service-name: named}}
addressType: IPv4
endpoints: [{addresses: [10.244.0.5], conditions: {ready: false}}]
ports: [{port: 80}]
",
    ));
    let f = check(&s);
    assert_eq!(
        f.iter()
            .map(|f| (f.check, f.subject.as_str()))
            .collect::<Vec<_>>(),
        [
            ("service-no-pods", "Service default/lonely"),
            ("service-named-port-missing", "Service default/named"),
            ("service-endpoints-not-ready", "Service default/named"),
        ]
    );
    assert!(f[1].message.contains("web-1"));
}

#[test]
fn host_network_pitfalls() {
    let mut s = healthy();
    s.iptables = Some(
        IptablesDump::parse(
            "iptables-save",
            "*filter\n:FORWARD DROP [0:0]\n-A FORWARD -s 10.244.0.0/16 -j ACCEPT\nCOMMIT\n",
        )
        .unwrap(),
    );
    s.cluster = Some(cluster(
        "
apiVersion: v1
kind: Pod
metadata: {name: agent, labels: {app: agent}}
spec: {hostNetwork: true, containers: [{name: c, image: i}]}
---
apiVersion: v1
kind: Service
metadata: {name: np}
spec: {type: NodePort, selector: {app: agent}, ports: [{port: 80, nodePort: 30080}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: np-x, labels: {kubernetes.io/service-name: np}}
addressType: IPv4
endpoints: [{addresses: [192.168.50.12], targetRef: {kind: Pod, namespace: default, name: agent}}]
ports: [{port: 80}]
",
    ));
    let got = checks(&s);
    assert!(got.contains(&"hostnetwork-dns-policy"), "{got:?}");
    assert!(got.contains(&"hostnetwork-nodeport-forward"), "{got:?}");
}

#[test]
fn leaked_ipam_reservations_and_stale_udp_conntrack() {
    let mut s = healthy();
    s.ipam = vec![
        IpamReservation {
            network: "cbr0".into(),
            ip: "10.244.0.5".parse().unwrap(),
            container_id: "live".into(),
            ifname: "eth0".into(),
        },
        IpamReservation {
            network: "cbr0".into(),
            ip: "10.244.0.6".parse().unwrap(),
            container_id: "dead".into(),
            ifname: "eth0".into(),
        },
    ];
    s.live_containers = Some(["live".to_string()].into());
    s.cluster = Some(cluster(
        "
apiVersion: v1
kind: Service
metadata: {name: dns}
spec: {clusterIP: 10.96.0.10, ports: [{port: 53, protocol: UDP}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: dns-x, labels: {kubernetes.io/service-name: dns}}
addressType: IPv4
endpoints: [{addresses: [10.244.1.3]}]
ports: [{port: 53, protocol: UDP}]
",
    ));
    s.conntrack = collect::parse_conntrack(
        "udp      17 25 src=10.244.0.5 dst=10.96.0.10 sport=40000 dport=53 src=10.244.1.9 dst=10.244.0.5 sport=53 dport=40000 mark=0 use=1\n\
         udp      17 25 src=10.244.0.5 dst=10.96.0.10 sport=40001 dport=53 src=10.244.1.3 dst=10.244.0.5 sport=53 dport=40001 mark=0 use=1\n",
    );
    let f = check(&s);
    assert_eq!(
        f.iter().map(|f| f.check).collect::<Vec<_>>(),
        ["conntrack-stale-udp", "ipam-leaked"]
    );
    assert!(f[0].fix.contains("--reply-src 10.244.1.9"));
    assert!(f[1].subject.contains("10.244.0.6"));
}

#[test]
fn stale_dnat_targets_and_rule_counts() {
    let mut s = healthy();
    s.cluster = Some(ClusterState::default());
    let mut text = String::from(
        "*nat\n:KUBE-SEP-ABC - [0:0]\n-A KUBE-SEP-ABC -p tcp -m tcp -j DNAT --to-destination 192.168.50.99:80\n",
    );
    for i in 0..IPTABLES_RULES_WARN {
        text.push_str(&format!(
            "-A KUBE-SVC-X -m comment --comment r{i} -j RETURN\n"
        ));
    }
    text.push_str("COMMIT\n");
    s.iptables = Some(IptablesDump::parse("iptables-save", &text).unwrap());
    assert_eq!(checks(&s), ["iptables-scale", "stale-dnat"]);
}

#[test]
fn a_source_that_could_not_be_read_is_a_finding_never_a_silent_pass() {
    let s = Snapshot {
        unreadable: vec![
            crate::Unreadable {
                source: "iptables-save".into(),
                why: "needs root (Permission denied)".into(),
                needs_root: true,
            },
            crate::Unreadable {
                source: "conntrack -L -p udp".into(),
                why: "conntrack is not installed".into(),
                needs_root: false,
            },
        ],
        ..Default::default()
    };
    let f = check(&s);
    let unreadable: Vec<_> = f
        .iter()
        .filter(|f| f.check == "unreadable-source")
        .collect();
    assert_eq!(unreadable.len(), 2, "{f:#?}");
    assert_eq!(unreadable[0].severity, Severity::Error);
    assert!(unreadable[0].message.contains("needs root"));
    assert_eq!(unreadable[1].severity, Severity::Warning);
}
