//! The tracer against the kernel: a node namespace routes between a client and two
//! endpoint namespaces under a small kube-proxy-style ruleset loaded with
//! iptables-restore. The live collector snapshots the node; the trace's prediction
//! (endpoint, masqueraded source, reject) must match what real connections do.
#![allow(clippy::disallowed_methods)] // tests spawn tools and servers

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use twill_testkit::netns::{Netns, veth_pair};
use twill_trace::{Fate, Probe, collect, trace, trace_across};

mod conntrack;
mod nft;

const RULES: &str = r#"*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-FORWARD - [0:0]
-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD
-A KUBE-FORWARD -m mark --mark 0x4000/0x4000 -j ACCEPT
-A KUBE-FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A KUBE-SERVICES -d 10.96.0.11/32 -p tcp -m comment --comment "t/empty has no endpoints" -m tcp --dport 80 -j REJECT --reject-with tcp-reset
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-SVC-WEB - [0:0]
:KUBE-SVC-ONE - [0:0]
:KUBE-SEP-E1 - [0:0]
:KUBE-SEP-E2 - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A KUBE-SERVICES -d 10.96.0.10/32 -p tcp -m comment --comment "t/web cluster IP" -m tcp --dport 80 -j KUBE-SVC-WEB
-A KUBE-SERVICES -d 10.96.0.12/32 -p tcp -m comment --comment "t/one cluster IP" -m tcp --dport 80 -j KUBE-SVC-ONE
-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000
-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE
-A KUBE-SVC-WEB ! -s 10.2.0.0/16 -d 10.96.0.10/32 -p tcp -m tcp --dport 80 -j KUBE-MARK-MASQ
-A KUBE-SVC-WEB -m statistic --mode random --probability 0.5000000000 -j KUBE-SEP-E1
-A KUBE-SVC-WEB -j KUBE-SEP-E2
-A KUBE-SVC-ONE -j KUBE-SEP-E2
-A KUBE-SEP-E1 -p tcp -m tcp -j DNAT --to-destination 10.2.1.2:8080
-A KUBE-SEP-E2 -p tcp -m tcp -j DNAT --to-destination 10.2.2.2:8080
COMMIT
"#;

fn sh(ns: &Netns, prog: &str, args: &[&str]) {
    let out = ns.exec(prog, args);
    assert!(
        out.status.success(),
        "{prog} {args:?} in {}: {}",
        ns.name(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An endpoint server: answers each connection with `name peer-ip`.
fn serve(ns: &Netns, addr: &str, name: &'static str) {
    let addr: SocketAddr = addr.parse().unwrap();
    let listener = ns.run(|| TcpListener::bind(addr)).expect("bind endpoint");
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut c) = conn else { break };
            let peer = c
                .peer_addr()
                .map(|p| p.ip().to_string())
                .unwrap_or_default();
            let _ = c.write_all(format!("{name} {peer}").as_bytes());
        }
    });
}

/// Connect from `client` and read `name peer-ip`; `Err` carries the error kind.
fn ask(client: &Netns, to: &str) -> Result<(String, IpAddr), std::io::ErrorKind> {
    let to: SocketAddr = to.parse().unwrap();
    client.run(|| {
        let mut s =
            TcpStream::connect_timeout(&to, Duration::from_secs(3)).map_err(|e| e.kind())?;
        s.set_read_timeout(Some(Duration::from_secs(3))).ok();
        let mut buf = String::new();
        s.read_to_string(&mut buf).map_err(|e| e.kind())?;
        let (name, peer) = buf.split_once(' ').expect("reply");
        Ok((name.to_string(), peer.parse().expect("peer ip")))
    })
}

struct Lab {
    node: Netns,
    client: Netns,
    eps: Vec<Netns>,
}

fn lab() -> Lab {
    let lab = topology();
    let mut restore = lab
        .node
        .command("iptables-restore")
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("iptables-restore");
    restore
        .stdin
        .take()
        .unwrap()
        .write_all(RULES.as_bytes())
        .unwrap();
    assert!(restore.wait().unwrap().success(), "iptables-restore failed");
    lab
}

/// A node routing between a client and two endpoint servers, with no rules yet.
fn topology() -> Lab {
    let node = Netns::new("trn");
    let client = Netns::new("trc");
    let e1 = Netns::new("tre1");
    let e2 = Netns::new("tre2");
    veth_pair(&node, "to-c", &client, "eth0");
    veth_pair(&node, "to-e1", &e1, "eth0");
    veth_pair(&node, "to-e2", &e2, "eth0");
    node.ip(&["addr", "add", "10.1.0.1/24", "dev", "to-c"]);
    node.ip(&["addr", "add", "10.2.1.1/24", "dev", "to-e1"]);
    node.ip(&["addr", "add", "10.2.2.1/24", "dev", "to-e2"]);
    for (ns, addr, gw) in [
        (&client, "10.1.0.2/24", "10.1.0.1"),
        (&e1, "10.2.1.2/24", "10.2.1.1"),
        (&e2, "10.2.2.2/24", "10.2.2.1"),
    ] {
        ns.ip(&["addr", "add", addr, "dev", "eth0"]);
        ns.ip(&["route", "add", "default", "via", gw]);
    }
    sh(&node, "sysctl", &["-qw", "net.ipv4.ip_forward=1"]);
    // A default route, as every node has: unmatched service IPs are routed, not unroutable.
    node.ip(&["route", "add", "default", "via", "10.1.0.2"]);
    serve(&e1, "10.2.1.2:8080", "e1");
    serve(&e2, "10.2.2.2:8080", "e2");
    Lab {
        node,
        client,
        eps: vec![e1, e2],
    }
}

fn privileged(test: &str) -> bool {
    twill_testkit::require_root(test)
        && twill_testkit::require_tool(test, "iptables-restore")
        && twill_testkit::require_tool(test, "iptables-save")
}

#[test]
fn live_trace_predicts_the_endpoint_and_masqueraded_source_real_connections_see() {
    if !privileged("live_trace_predicts_the_endpoint_and_masqueraded_source_real_connections_see") {
        return;
    }
    let lab = lab();
    let snap = collect::collect(Some(lab.node.name())).expect("collect the node");
    assert!(
        snap.ipv4.has_chain("nat", "KUBE-SVC-WEB"),
        "collector read the node's rules"
    );
    let src: IpAddr = "10.1.0.2".parse().unwrap();

    // Two endpoints: each branch predicts an endpoint and the source it will see.
    let t = trace(
        &snap,
        &Probe::new(src, "10.96.0.10".parse().unwrap(), "tcp", 80),
    )
    .unwrap();
    assert_eq!(t.origin, "arriving on to-c");
    let predicted: BTreeMap<String, (IpAddr, f64)> = t
        .branches
        .iter()
        .map(|b| (b.endpoint().expect("DNATed"), (b.packet.src, b.probability)))
        .collect();
    assert_eq!(predicted.len(), 2, "{predicted:?}");
    for b in &t.branches {
        assert!(
            matches!(
                b.fate,
                Some(Fate::Sent {
                    forwarded: true,
                    ..
                })
            ),
            "{:?}",
            b.fate
        );
    }
    let names = BTreeMap::from([("e1", "10.2.1.2:8080"), ("e2", "10.2.2.2:8080")]);
    let mut seen = BTreeMap::new();
    for _ in 0..12 {
        let (name, peer) = ask(&lab.client, "10.96.0.10:80").unwrap_or_else(|e| {
            panic!(
                "service did not answer ({e:?}); trace:\n{}\nnode counters:\n{}",
                twill_trace::report::render_text(&t),
                String::from_utf8_lossy(&lab.node.exec("iptables-save", &["-c"]).stdout)
            )
        });
        let ep = names[name.as_str()];
        let (want_src, p) = predicted
            .get(ep)
            .unwrap_or_else(|| panic!("{ep} answered but was not predicted"));
        assert!((p - 0.5).abs() < 1e-6);
        assert_eq!(&peer, want_src, "source seen by {ep}");
        *seen.entry(ep).or_insert(0) += 1;
    }
    assert!(!seen.is_empty());

    // One endpoint, not marked for masquerade: DNATed, then nothing in FORWARD accepts
    // it and the policy drops it (the FORWARD DROP pitfall). The kernel agrees.
    let t = trace(
        &snap,
        &Probe::new(src, "10.96.0.12".parse().unwrap(), "tcp", 80),
    )
    .unwrap();
    assert_eq!(t.branches.len(), 1);
    let b = &t.branches[0];
    assert_eq!(b.endpoint().as_deref(), Some("10.2.2.2:8080"));
    assert!(
        !b.masqueraded(),
        "KUBE-SVC-ONE does not mark for masquerade"
    );
    assert!(
        matches!(&b.fate, Some(Fate::Dropped { at: Some(at), .. }) if at.chain == "FORWARD" && at.rule.is_none()),
        "{:?}",
        b.fate
    );
    assert_eq!(
        ask(&lab.client, "10.96.0.12:80"),
        Err(std::io::ErrorKind::TimedOut)
    );
}

#[test]
fn live_trace_predicts_the_reject_a_real_connection_gets() {
    if !privileged("live_trace_predicts_the_reject_a_real_connection_gets") {
        return;
    }
    let lab = lab();
    let snap = collect::collect(Some(lab.node.name())).expect("collect the node");
    let t = trace(
        &snap,
        &Probe::new(
            "10.1.0.2".parse().unwrap(),
            "10.96.0.11".parse().unwrap(),
            "tcp",
            80,
        ),
    )
    .unwrap();
    assert_eq!(t.branches.len(), 1);
    match &t.branches[0].fate {
        Some(Fate::Rejected { at, with }) => {
            assert_eq!(
                (at.table.as_str(), at.chain.as_str(), at.rule),
                ("filter", "KUBE-SERVICES", Some(1))
            );
            assert_eq!(with.as_deref(), Some("tcp-reset"));
        }
        other => panic!("predicted {other:?}"),
    }
    let got = ask(&lab.client, "10.96.0.11:80");
    assert_eq!(got, Err(std::io::ErrorKind::ConnectionRefused));
}

#[test]
fn live_trace_predicts_the_forward_policy_drop() {
    if !privileged("live_trace_predicts_the_forward_policy_drop") {
        return;
    }
    let lab = lab();
    let snap = collect::collect(Some(lab.node.name())).expect("collect the node");
    // Straight to an endpoint, no service: nothing marks it, FORWARD's policy drops it.
    let t = trace(
        &snap,
        &Probe::new(
            "10.1.0.2".parse().unwrap(),
            "10.2.1.2".parse().unwrap(),
            "tcp",
            8080,
        ),
    )
    .unwrap();
    assert!(
        matches!(&t.branches[0].fate, Some(Fate::Dropped { at: Some(at), .. }) if at.chain == "FORWARD" && at.rule.is_none()),
        "{:?}",
        t.branches[0].fate
    );
    let got = ask(&lab.client, "10.2.1.2:8080");
    assert_eq!(got, Err(std::io::ErrorKind::TimedOut));
}

#[test]
fn live_trace_follows_the_packet_from_the_node_into_the_endpoint_namespace() {
    if !privileged("live_trace_follows_the_packet_from_the_node_into_the_endpoint_namespace") {
        return;
    }
    let lab = lab();
    let mut nodes = vec![(
        "node".to_string(),
        collect::collect(Some(lab.node.name())).expect("collect the node"),
    )];
    for (name, ns) in ["e1", "e2"].iter().zip(&lab.eps) {
        nodes.push((
            name.to_string(),
            collect::collect(Some(ns.name())).expect("collect"),
        ));
    }
    let probe = Probe::new(
        "10.1.0.2".parse().unwrap(),
        "10.96.0.10".parse().unwrap(),
        "tcp",
        80,
    );
    let paths = trace_across(&nodes, "node", &probe).unwrap();
    let ends: BTreeMap<String, Option<Fate>> = paths
        .iter()
        .map(|p| {
            let last = p.hops.last().unwrap();
            (last.node.clone(), last.branch.fate.clone())
        })
        .collect();
    assert_eq!(
        ends,
        BTreeMap::from([
            (
                "e1".to_string(),
                Some(Fate::Delivered {
                    to: "10.2.1.2:8080".into()
                })
            ),
            (
                "e2".to_string(),
                Some(Fate::Delivered {
                    to: "10.2.2.2:8080".into()
                })
            ),
        ]),
        "{}",
        twill_trace::report::render_paths(&paths)
    );
    for p in &paths {
        assert_eq!(p.hops[1].origin, "arriving on eth0");
        assert!((p.probability - 0.5).abs() < 1e-6);
    }
}
