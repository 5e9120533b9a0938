//! A stale UDP conntrack entry: the Service's rule moved to another endpoint, but a
//! client that keeps its source port stays on the old one until the entry expires.
//! The trace must say so, and the kernel must agree.

use std::net::UdpSocket;

use super::*;

/// A UDP endpoint answering every datagram with `name`.
fn serve_udp(ns: &Netns, addr: &str, name: &'static str) {
    let addr: SocketAddr = addr.parse().unwrap();
    let sock = ns.run(|| UdpSocket::bind(addr)).expect("bind udp endpoint");
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while let Ok((_, peer)) = sock.recv_from(&mut buf) {
            let _ = sock.send_to(name.as_bytes(), peer);
        }
    });
}

/// One datagram from `client` with source port `sport`; the answering endpoint's name.
fn ask_udp(client: &Netns, sport: u16, to: &str) -> Option<String> {
    let to: SocketAddr = to.parse().unwrap();
    client.run(|| {
        let s = UdpSocket::bind(("10.1.0.2", sport)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok();
        s.send_to(b"?", to).ok()?;
        let mut buf = [0u8; 64];
        let n = s.recv(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    })
}

fn dnat_rule(to: &str) -> Vec<String> {
    [
        "-t",
        "nat",
        "-A",
        "KUBE-SERVICES",
        "-d",
        "10.96.0.20/32",
        "-p",
        "udp",
        "--dport",
        "53",
        "-j",
        "DNAT",
        "--to-destination",
        to,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[test]
fn a_stale_udp_conntrack_entry_keeps_its_client_on_the_old_endpoint_in_trace_and_kernel() {
    let test =
        "a_stale_udp_conntrack_entry_keeps_its_client_on_the_old_endpoint_in_trace_and_kernel";
    if !privileged(test) || !twill_testkit::require_tool(test, "conntrack") {
        return;
    }
    let lab = lab();
    serve_udp(&lab.eps[0], "10.2.1.2:5353", "e1");
    serve_udp(&lab.eps[1], "10.2.2.2:5353", "e2");
    // UDP replies must be let through FORWARD (the fixture's policy is DROP).
    sh(
        &lab.node,
        "iptables",
        &["-I", "FORWARD", "-p", "udp", "-j", "ACCEPT"],
    );
    let old = dnat_rule("10.2.2.2:5353");
    let old: Vec<&str> = old.iter().map(String::as_str).collect();
    sh(&lab.node, "iptables", &old);
    assert_eq!(
        ask_udp(&lab.client, 6000, "10.96.0.20:53").as_deref(),
        Some("e2")
    );

    // The Service moves to e1; conntrack is not cleared.
    let mut del = old.clone();
    del[2] = "-D";
    sh(&lab.node, "iptables", &del);
    let new = dnat_rule("10.2.1.2:5353");
    let new: Vec<&str> = new.iter().map(String::as_str).collect();
    sh(&lab.node, "iptables", &new);

    let snap = collect::collect(Some(lab.node.name())).expect("collect the node");
    assert!(
        snap.conntrack.iter().any(|e| e.original.sport == 6000),
        "collector read conntrack: {:?}",
        snap.conntrack
    );
    let src: IpAddr = "10.1.0.2".parse().unwrap();
    let probe = |sport: u16| {
        let mut p = Probe::new(src, "10.96.0.20".parse().unwrap(), "udp", 53);
        p.sport = sport;
        trace(&snap, &p).unwrap()
    };
    let stale = probe(6000);
    assert_eq!(stale.branches.len(), 1);
    assert_eq!(
        stale.branches[0].endpoint().as_deref(),
        Some("10.2.2.2:5353"),
        "{}",
        twill_trace::report::render_text(&stale)
    );
    assert!(twill_trace::report::render_text(&stale).contains("existing connection"));
    let fresh = probe(6001);
    assert_eq!(
        fresh.branches[0].endpoint().as_deref(),
        Some("10.2.1.2:5353")
    );

    assert_eq!(
        ask_udp(&lab.client, 6000, "10.96.0.20:53").as_deref(),
        Some("e2")
    );
    assert_eq!(
        ask_udp(&lab.client, 6001, "10.96.0.20:53").as_deref(),
        Some("e1")
    );
}
