//! The same node under an nftables ruleset in kube-proxy's nftables-mode layout
//! (verdict maps keyed by address . protocol . port, `numgen` endpoint choice, mark
//! arithmetic, a forward chain with policy drop): the trace's predictions must match
//! real connections.

use super::*;

const NFT_RULES: &str = r#"
add table ip kube-proxy
add chain ip kube-proxy filter-forward { type filter hook forward priority -110 ; policy drop ; }
add chain ip kube-proxy nat-prerouting { type nat hook prerouting priority -100 ; }
add chain ip kube-proxy nat-postrouting { type nat hook postrouting priority 100 ; }
add chain ip kube-proxy services
add chain ip kube-proxy masquerading
add chain ip kube-proxy mark-for-masquerade
add chain ip kube-proxy reject-chain
add chain ip kube-proxy service-WEB
add chain ip kube-proxy service-ONE
add chain ip kube-proxy endpoint-E1
add chain ip kube-proxy endpoint-E2
add map ip kube-proxy service-ips { type ipv4_addr . inet_proto . inet_service : verdict ; }
add map ip kube-proxy no-endpoint-services { type ipv4_addr . inet_proto . inet_service : verdict ; }
add rule ip kube-proxy filter-forward ct state new ip daddr . meta l4proto . th dport vmap @no-endpoint-services
add rule ip kube-proxy filter-forward meta mark & 0x4000 != 0 accept
add rule ip kube-proxy filter-forward ct state established,related accept
add rule ip kube-proxy nat-prerouting jump services
add rule ip kube-proxy nat-postrouting jump masquerading
add rule ip kube-proxy masquerading meta mark & 0x4000 == 0 return
add rule ip kube-proxy masquerading meta mark set meta mark ^ 0x4000
add rule ip kube-proxy masquerading masquerade fully-random
add rule ip kube-proxy mark-for-masquerade meta mark set meta mark | 0x4000
add rule ip kube-proxy reject-chain meta l4proto tcp reject with tcp reset
add rule ip kube-proxy services ip daddr . meta l4proto . th dport vmap @service-ips
add rule ip kube-proxy service-WEB ip daddr 10.96.0.10 tcp dport 80 ip saddr != 10.2.0.0/16 jump mark-for-masquerade
add rule ip kube-proxy service-WEB numgen random mod 2 vmap { 0 : goto endpoint-E1 , 1 : goto endpoint-E2 }
add rule ip kube-proxy service-ONE goto endpoint-E2
add rule ip kube-proxy endpoint-E1 meta l4proto tcp dnat to 10.2.1.2:8080
add rule ip kube-proxy endpoint-E2 meta l4proto tcp dnat to 10.2.2.2:8080
add element ip kube-proxy service-ips { 10.96.0.10 . tcp . 80 : goto service-WEB , 10.96.0.12 . tcp . 80 : goto service-ONE }
add element ip kube-proxy no-endpoint-services { 10.96.0.11 . tcp . 80 : goto reject-chain }
"#;

#[test]
fn live_trace_over_nftables_predicts_endpoints_masquerade_reject_and_policy_drop() {
    let test = "live_trace_over_nftables_predicts_endpoints_masquerade_reject_and_policy_drop";
    if !twill_testkit::require_root(test) || !twill_testkit::require_tool(test, "nft") {
        return;
    }
    let lab = topology();
    let mut nft = lab
        .node
        .command("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("nft");
    nft.stdin
        .take()
        .unwrap()
        .write_all(NFT_RULES.as_bytes())
        .unwrap();
    assert!(nft.wait().unwrap().success(), "nft -f failed");
    let snap = collect::collect(Some(lab.node.name())).expect("collect the node");
    assert_eq!(
        snap.nft.tables.len(),
        1,
        "only kube-proxy's table: {:?}",
        snap.nft
    );
    let src: IpAddr = "10.1.0.2".parse().unwrap();

    // Two endpoints, each with half the connections, masqueraded to the node's address
    // on the endpoint's side.
    let t = trace(
        &snap,
        &Probe::new(src, "10.96.0.10".parse().unwrap(), "tcp", 80),
    )
    .unwrap();
    let predicted: BTreeMap<String, (IpAddr, f64)> = t
        .branches
        .iter()
        .map(|b| (b.endpoint().expect("DNATed"), (b.packet.src, b.probability)))
        .collect();
    assert_eq!(
        predicted.len(),
        2,
        "{}",
        twill_trace::report::render_text(&t)
    );
    let text = twill_trace::report::render_text(&t);
    assert!(
        text.contains("numgen random mod 2 vmap"),
        "rule text from nft -a: {text}"
    );
    let names = BTreeMap::from([("e1", "10.2.1.2:8080"), ("e2", "10.2.2.2:8080")]);
    let mut seen = BTreeMap::new();
    for _ in 0..12 {
        let (name, peer) = ask(&lab.client, "10.96.0.10:80")
            .unwrap_or_else(|e| panic!("service did not answer ({e:?}); trace:\n{text}"));
        let ep = names[name.as_str()];
        let (want_src, p) = predicted
            .get(ep)
            .unwrap_or_else(|| panic!("{ep} answered but was not predicted"));
        assert!((p - 0.5).abs() < 1e-6);
        assert_eq!(&peer, want_src, "source seen by {ep}");
        *seen.entry(ep).or_insert(0) += 1;
    }
    assert!(!seen.is_empty());

    // Not marked: the forward chain's policy drops it after DNAT; the kernel agrees.
    let t = trace(
        &snap,
        &Probe::new(src, "10.96.0.12".parse().unwrap(), "tcp", 80),
    )
    .unwrap();
    assert_eq!(t.branches.len(), 1);
    let b = &t.branches[0];
    assert_eq!(b.endpoint().as_deref(), Some("10.2.2.2:8080"));
    assert!(
        matches!(&b.fate, Some(Fate::Dropped { at: Some(at), .. })
            if at.table == "ip kube-proxy" && at.chain == "filter-forward" && at.rule.is_none()),
        "{:?}",
        b.fate
    );
    assert_eq!(
        ask(&lab.client, "10.96.0.12:80"),
        Err(std::io::ErrorKind::TimedOut)
    );

    // No endpoints: rejected from the verdict map; the client gets a reset.
    let t = trace(
        &snap,
        &Probe::new(src, "10.96.0.11".parse().unwrap(), "tcp", 80),
    )
    .unwrap();
    assert_eq!(t.branches.len(), 1);
    assert!(
        matches!(&t.branches[0].fate, Some(Fate::Rejected { at, .. }) if at.chain == "reject-chain"),
        "{:?}",
        t.branches[0].fate
    );
    assert_eq!(
        ask(&lab.client, "10.96.0.11:80"),
        Err(std::io::ErrorKind::ConnectionRefused)
    );
}
