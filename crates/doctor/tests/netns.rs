//! Each check against a real namespace node: first healthy (silence), then broken in
//! exactly one way (the finding and its fix). Nothing outside the test's namespaces is
//! touched.

use twill_doctor::{Finding, check, collect};
use twill_testkit::netns::{Netns, veth_pair};

fn findings(ns: &Netns) -> Vec<Finding> {
    ns.run(|| check(&collect::collect_node()))
}

fn names(f: &[Finding]) -> Vec<&'static str> {
    f.iter().map(|f| f.check).collect()
}

/// A node namespace set up the way Twill's agents leave one: forwarding on, bridged
/// traffic through iptables, FORWARD handing over to KUBE-FORWARD, an underlay, a
/// vxlan device and a pod bridge with consistent MTUs.
fn healthy_node() -> (Netns, Netns) {
    let node = Netns::new("dr");
    let peer = Netns::new("dp");
    veth_pair(&node, "eth0", &peer, "eth0");
    node.ip(&["addr", "add", "192.168.77.11/24", "dev", "eth0"]);
    node.ip(&[
        "link",
        "add",
        "flannel.1",
        "type",
        "vxlan",
        "id",
        "1",
        "local",
        "192.168.77.11",
        "dev",
        "eth0",
        "dstport",
        "8472",
        "nolearning",
    ]);
    node.ip(&["link", "set", "flannel.1", "mtu", "1450", "up"]);
    node.ip(&["link", "add", "cni0", "type", "bridge"]);
    node.ip(&["link", "set", "cni0", "mtu", "1450", "up"]);
    for (k, v) in [
        ("net.ipv4.ip_forward", "1"),
        ("net.bridge.bridge-nf-call-iptables", "1"),
    ] {
        let out = node.exec("sysctl", &["-q", "-w", &format!("{k}={v}")]);
        assert!(
            out.status.success(),
            "{k}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let rules =
        "*filter\n:FORWARD DROP [0:0]\n:KUBE-FORWARD - [0:0]\n-A FORWARD -j KUBE-FORWARD\nCOMMIT\n";
    node.run(|| twill_netfilter_restore(rules));
    (node, peer)
}

fn twill_netfilter_restore(rules: &str) {
    use std::io::Write;
    let mut c = std::process::Command::new("iptables-restore")
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("iptables-restore");
    c.stdin.take().unwrap().write_all(rules.as_bytes()).unwrap();
    assert!(c.wait().unwrap().success());
}

#[test]
fn a_healthy_namespace_node_is_silent_and_each_breakage_is_found_with_its_fix() {
    if !twill_testkit::require_root("doctor netns")
        || !twill_testkit::require_tool("doctor netns", "iptables-save")
    {
        return;
    }
    let (node, _peer) = healthy_node();
    let f = findings(&node);
    assert!(f.is_empty(), "healthy node: {f:?}");

    node.exec("sysctl", &["-q", "-w", "net.ipv4.ip_forward=0"]);
    let f = findings(&node);
    assert_eq!(names(&f), ["ip-forward"]);
    assert!(f[0].fix.contains("sysctl -w net.ipv4.ip_forward=1"));
    node.exec("sysctl", &["-q", "-w", "net.ipv4.ip_forward=1"]);

    node.exec(
        "sysctl",
        &["-q", "-w", "net.bridge.bridge-nf-call-iptables=0"],
    );
    assert_eq!(names(&findings(&node)), ["bridge-nf-call-iptables"]);
    node.exec(
        "sysctl",
        &["-q", "-w", "net.bridge.bridge-nf-call-iptables=1"],
    );

    node.exec("iptables", &["-D", "FORWARD", "-j", "KUBE-FORWARD"]);
    let f = findings(&node);
    assert_eq!(names(&f), ["forward-policy-drop"]);
    node.exec("iptables", &["-A", "FORWARD", "-j", "KUBE-FORWARD"]);

    node.exec(
        "iptables",
        &["-I", "INPUT", "-p", "udp", "--dport", "8472", "-j", "DROP"],
    );
    let f = findings(&node);
    assert_eq!(names(&f), ["vxlan-port-blocked"]);
    assert!(f[0].fix.contains("--dport 8472 -j ACCEPT"));
    node.exec(
        "iptables",
        &["-D", "INPUT", "-p", "udp", "--dport", "8472", "-j", "DROP"],
    );

    // The underlay shrinks under the overlay (the kernel refuses a vxlan MTU above its
    // device's minus 50, so the mistake shows up this way round).
    node.ip(&["link", "set", "eth0", "mtu", "1400"]);
    let f = findings(&node);
    assert_eq!(names(&f), ["mtu-mismatch"], "{f:?}");
    assert!(f[0].fix.contains("mtu 1350"), "{}", f[0].fix);
    node.ip(&["link", "set", "eth0", "mtu", "1500"]);

    node.ip(&["link", "set", "cni0", "mtu", "1500"]);
    assert_eq!(names(&findings(&node)), ["mtu-mismatch"]);
    node.ip(&["link", "set", "cni0", "mtu", "1450"]);

    node.exec("iptables", &["-I", "FORWARD", "-j", "REJECT"]);
    assert_eq!(names(&findings(&node)), ["firewall-ahead-of-kube"]);
    node.exec("iptables", &["-D", "FORWARD", "-j", "REJECT"]);

    assert!(findings(&node).is_empty(), "restored node is healthy again");
}

#[test]
fn leaked_addresses_in_a_host_local_store_are_found() {
    let dir = std::env::temp_dir().join(format!("twill-doctor-ipam-{}", std::process::id()));
    let net = dir.join("cbr0");
    std::fs::create_dir_all(&net).unwrap();
    std::fs::write(net.join("10.244.0.5"), "alive\neth0").unwrap();
    std::fs::write(net.join("10.244.0.6"), "gone\neth0").unwrap();
    std::fs::write(net.join("last_reserved_ip.0"), "10.244.0.6").unwrap();
    let snap = twill_doctor::Snapshot {
        ipam: collect::read_ipam(&dir),
        live_containers: Some(["alive".to_string()].into()),
        ..Default::default()
    };
    let _ = std::fs::remove_dir_all(&dir);
    let f = check(&snap);
    assert_eq!(names(&f), ["ipam-leaked"]);
    assert!(f[0].subject.contains("10.244.0.6") && f[0].message.contains("gone"));
}

/// A cluster with one UDP Service (10.96.0.53:53) whose only endpoint is 10.244.1.7.
const DNS_CLUSTER: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: dns, namespace: default}
spec:
  clusterIP: 10.96.0.53
  ports: [{name: dns, port: 53, protocol: UDP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: dns-1
  namespace: default
  labels: {kubernetes.io/service-name: dns}
addressType: IPv4
endpoints:
- addresses: [10.244.1.7]
  conditions: {ready: true}
ports: [{name: dns, port: 53, protocol: UDP}]
"#;

fn node_with_cluster(ns: &Netns) -> Vec<Finding> {
    let cluster = twill_model::ClusterState::from_objects(
        twill_manifest::parse_str("cluster.yaml", DNS_CLUSTER).into_objects(),
    );
    ns.run(move || {
        let mut s = collect::collect_node();
        s.cluster = Some(cluster);
        check(&s)
    })
}

#[test]
fn a_kube_sep_chain_still_dnatting_to_a_gone_address_is_found() {
    if !twill_testkit::require_root("doctor stale dnat")
        || !twill_testkit::require_tool("doctor stale dnat", "iptables-save")
    {
        return;
    }
    let (node, _peer) = healthy_node();
    // The proxy's chain for the live endpoint: silent.
    let live = "*nat\n:KUBE-SEP-LIVE - [0:0]\n-A KUBE-SEP-LIVE -p udp -m udp -j DNAT --to-destination 10.244.1.7:53\nCOMMIT\n";
    node.run(|| twill_netfilter_restore(live));
    assert!(node_with_cluster(&node).is_empty());
    // A chain left over from the node's old address.
    let stale = "*nat\n:KUBE-SEP-OLD - [0:0]\n-A KUBE-SEP-OLD -p udp -m udp -j DNAT --to-destination 192.168.77.99:53\nCOMMIT\n";
    node.run(|| twill_netfilter_restore(stale));
    let f = node_with_cluster(&node);
    assert_eq!(names(&f), ["stale-dnat"], "{f:?}");
    assert!(
        f[0].message.contains("192.168.77.99:53"),
        "{}",
        f[0].message
    );
    assert!(f[0].fix.contains("restart the proxy"), "{}", f[0].fix);
}

#[test]
fn a_udp_flow_pinned_to_a_removed_endpoint_is_found_with_the_conntrack_command() {
    if !twill_testkit::require_root("doctor conntrack")
        || !twill_testkit::require_tool("doctor conntrack", "conntrack")
    {
        return;
    }
    let (node, _peer) = healthy_node();
    let insert = |reply_src: &str| {
        let out = node.exec(
            "conntrack",
            &[
                "-I",
                "-p",
                "udp",
                "-s",
                "10.244.2.5",
                "-d",
                "10.96.0.53",
                "--sport",
                "40000",
                "--dport",
                "53",
                "-r",
                reply_src,
                "-q",
                "10.244.2.5",
                "--reply-port-src",
                "53",
                "--reply-port-dst",
                "40000",
                "-t",
                "60",
            ],
        );
        assert!(
            out.status.success(),
            "conntrack -I: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    // A flow to the live endpoint: silent.
    insert("10.244.1.7");
    assert!(node_with_cluster(&node).is_empty());
    node.exec("conntrack", &["-F"]);
    // A flow still going to an endpoint that left the Service.
    insert("10.244.1.9");
    let f = node_with_cluster(&node);
    assert_eq!(names(&f), ["conntrack-stale-udp"], "{f:?}");
    assert!(
        f[0].fix
            .contains("conntrack -D -p udp --orig-dst 10.96.0.53 --reply-src 10.244.1.9"),
        "{}",
        f[0].fix
    );
}

#[test]
fn a_rule_count_past_the_iptables_scale_limit_is_found() {
    if !twill_testkit::require_root("doctor scale")
        || !twill_testkit::require_tool("doctor scale", "iptables-save")
    {
        return;
    }
    let (node, _peer) = healthy_node();
    let mut rules = String::from("*filter\n:TWILL-SCALE - [0:0]\n");
    for i in 0..twill_doctor::IPTABLES_RULES_WARN {
        rules.push_str(&format!(
            "-A TWILL-SCALE -d 10.{}.{}.{}/32 -j RETURN\n",
            (i >> 16) & 255,
            (i >> 8) & 255,
            i & 255
        ));
    }
    rules.push_str("COMMIT\n");
    node.run(|| twill_netfilter_restore(&rules));
    let f = findings(&node);
    assert_eq!(names(&f), ["iptables-scale"], "{f:?}");
    assert!(f[0].fix.contains("nftables"), "{}", f[0].fix);
}

#[test]
fn an_nftables_host_firewall_dropping_forwarded_traffic_is_found_until_it_accepts_pods() {
    let test = "doctor nft firewall";
    if !twill_testkit::require_root(test) || !twill_testkit::require_tool(test, "nft") {
        return;
    }
    let (node, _peer) = healthy_node();
    let nft = |script: &str| {
        let out = node.exec("nft", &[script]);
        assert!(
            out.status.success(),
            "nft {script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    nft("add table inet filter");
    nft("add chain inet filter forward { type filter hook forward priority 0 ; policy drop ; }");
    nft("add rule inet filter forward ct state established,related accept");
    let f = findings(&node);
    assert_eq!(names(&f), ["nft-firewall-drop"], "{f:?}");
    assert!(
        f[0].subject.contains("inet filter chain forward"),
        "{}",
        f[0].subject
    );
    assert!(
        f[0].fix
            .contains("nft add rule inet filter forward ip saddr"),
        "{}",
        f[0].fix
    );
    nft("add rule inet filter forward ip saddr 10.244.0.0/16 accept");
    assert!(findings(&node).is_empty());
}
