//! Privileged tests: the proxy in network namespaces it creates (never the host's).

#![allow(clippy::disallowed_methods)] // a test in namespaces: I/O and the clock are its job

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use twill_conformance::proxy::corpus::{
    self, Fixture, shared_fixture as fixture, shared_fixtures as fixtures,
};
use twill_conformance::proxy::flows as lab;
use twill_model::{ClusterState, Object};
use twill_netfilter::Family;
use twill_proxy_core::{FeatureGates, ModelConfig};
use twill_proxy_iptables::trace::Tracer;
use twill_proxy_iptables::{Kernel, Proxier};

fn ready(test: &str) -> bool {
    twill_testkit::require_root(test) && twill_testkit::require_tool(test, "iptables-restore")
}

#[test]
fn shared_corpus_flows_pass_in_real_kernels() {
    if !ready("shared_corpus_flows_pass_in_real_kernels") {
        return;
    }
    let mut failures = Vec::new();
    for (file, fx) in fixtures() {
        for (flow, r) in fx.flows.iter().zip(lab::run_fixture(&fx)) {
            if let Err(e) = r {
                failures.push(format!("{file} [{}] {:?}: {e}", fx.name, flow.name));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn kernel_flows_catch_a_wrong_endpoint_a_wrong_masquerade_and_a_wrong_verdict() {
    if !ready("kernel_flows_catch_a_wrong_endpoint_a_wrong_masquerade_and_a_wrong_verdict") {
        return;
    }
    let mut fx = fixture("clusterip.json", "two-cluster-ip-services-full-rules");
    fx.flows[0].expected.outputs = serde_json::json!(["10.0.9.9:80"]);
    fx.flows[1].expected.masq = !fx.flows[1].expected.masq;
    fx.flows[2].expected.outputs = serde_json::json!("REJECT");
    let results = lab::run_fixture(&fx);
    for (i, r) in results.iter().enumerate() {
        assert!(r.is_err(), "flow {i} should fail: {r:?}");
    }
}

fn state_of(fx: &Fixture) -> ClusterState {
    let mut objs: Vec<Object> = Vec::new();
    for v in &fx.objects {
        if let Ok(twill_manifest::Decoded::Object(o)) = twill_manifest::decode_value(v) {
            objs.push(o);
        }
    }
    ClusterState::from_objects(objs)
}

fn proxier_for(fx: &Fixture) -> Proxier<Kernel> {
    let p = fx.prepare(false).expect("fixture prepares");
    let mc = ModelConfig {
        family: p.family,
        node_name: fx.config.node_name.clone(),
        node_zone: None,
        gates: FeatureGates::default(),
    };
    Proxier::new(mc, p.config, Duration::from_secs(30), Kernel::default())
}

#[test]
fn iptables_save_walkthrough_shows_service_and_endpoint_chains_with_dnat() {
    if !ready("iptables_save_walkthrough_shows_service_and_endpoint_chains_with_dnat") {
        return;
    }
    let fx = fixture("overall-iptables.json", "overall-six-services");
    let node = lab::Ns::new("walk").unwrap();
    let state = state_of(&fx);
    let (save, after) = node
        .spawn(move || {
            let mut p = proxier_for(&fx);
            p.sync(&state, Instant::now()).expect("full sync");
            let save = twill_netfilter::iptables_save(Family::V4, Some("nat")).unwrap();
            // Remove svc4's second endpoint: a partial sync drops its SEP chain.
            let mut st = state.clone();
            for s in st
                .endpoint_slices
                .values_mut()
                .filter(|s| s.service_name.as_deref() == Some("svc4"))
            {
                s.endpoints
                    .retain(|e| e.addresses[0].to_string() != "10.180.0.5");
            }
            let r = p.sync(&st, Instant::now()).unwrap().unwrap();
            assert!(!r.full);
            assert_eq!(r.deleted_chains, 1);
            (
                save,
                twill_netfilter::iptables_save(Family::V4, Some("nat")).unwrap(),
            )
        })
        .join()
        .unwrap()
        .unwrap();
    for needle in [
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
        "-A KUBE-SERVICES -d 172.30.0.41/32 -p tcp -m comment --comment \"ns1/svc1:p80 cluster IP\" -m tcp --dport 80 -j KUBE-SVC-XPGD46QRK7WJZT7O",
        "-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment \"ns1/svc1:p80 -> 10.180.0.1:80\" -j KUBE-SEP-SXIVWICOYRO3J4NJ",
        "-A KUBE-SEP-SXIVWICOYRO3J4NJ -p tcp -m comment --comment \"ns1/svc1:p80\" -m tcp -j DNAT --to-destination 10.180.0.1:80",
        "--probability 0.50000000000 -j KUBE-SEP-UKSFD7AGPMPPLUHC",
    ] {
        assert!(save.contains(needle), "missing {needle:?} in:\n{save}");
    }
    assert!(save.contains(":KUBE-SEP-C6EBXVWJJZMIWKLZ"));
    assert!(
        !after.contains(":KUBE-SEP-C6EBXVWJJZMIWKLZ"),
        "stale SEP chain is deleted:\n{after}"
    );
    assert!(
        !after.contains("--probability"),
        "svc4 now has one endpoint"
    );
}

#[test]
fn established_tcp_connection_through_cluster_ip_survives_proxy_restart() {
    if !ready("established_tcp_connection_through_cluster_ip_survives_proxy_restart") {
        return;
    }
    let fx = fixture("clusterip.json", "two-cluster-ip-services-full-rules");
    let ep: IpAddr = "10.0.1.1".parse().unwrap();
    let client: IpAddr = "10.0.0.2".parse().unwrap();
    let topo = lab::build(
        false,
        &BTreeSet::from(["192.168.0.2".parse().unwrap()]),
        &BTreeSet::from([ep]),
        &BTreeSet::from([client]),
    )
    .unwrap();
    let state = state_of(&fx);
    let s1 = state.clone();
    topo.node
        .spawn(move || proxier_for(&fx).sync(&s1, Instant::now()).map(|_| ()))
        .join()
        .unwrap()
        .unwrap()
        .unwrap();
    // A line echo server at the endpoint.
    let (tx, rx) = std::sync::mpsc::channel();
    let _server = topo.endpoint(ep).unwrap().spawn(move || {
        let l = TcpListener::bind(SocketAddr::new(ep, 80)).unwrap();
        tx.send(()).unwrap();
        let (s, _) = l.accept().unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut w = s;
        let mut line = String::new();
        while r.read_line(&mut line).unwrap_or(0) > 0 {
            let _ = w.write_all(line.as_bytes());
            line.clear();
        }
    });
    rx.recv().unwrap();
    let (to_client, from_test) = std::sync::mpsc::channel::<String>();
    let (to_test, answers) = std::sync::mpsc::channel::<String>();
    let _client = topo.cli.spawn(move || {
        let sock = std::net::TcpStream::connect_timeout(
            &"172.30.0.41:80".parse().unwrap(),
            Duration::from_secs(2),
        )
        .unwrap();
        let _ = TcpStream::set_read_timeout(&sock, Some(Duration::from_secs(2)));
        let mut r = BufReader::new(sock.try_clone().unwrap());
        let mut w = sock;
        for msg in from_test {
            w.write_all(format!("{msg}\n").as_bytes()).unwrap();
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            to_test.send(line.trim().to_string()).unwrap();
        }
    });
    to_client.send("before".into()).unwrap();
    assert_eq!(
        answers.recv_timeout(Duration::from_secs(5)).unwrap(),
        "before"
    );
    // Restart: a new proxier with no memory does a full sync over the rules in place.
    let fx2 = fixture("clusterip.json", "two-cluster-ip-services-full-rules");
    topo.node
        .spawn(move || {
            proxier_for(&fx2)
                .sync(&state, Instant::now())
                .map(|r| r.map(|r| r.full))
        })
        .join()
        .unwrap()
        .unwrap()
        .unwrap();
    to_client.send("after".into()).unwrap();
    assert_eq!(
        answers.recv_timeout(Duration::from_secs(5)).unwrap(),
        "after"
    );
    drop(to_client);
}

#[test]
fn every_corpus_flow_traces_to_its_expected_outcome() {
    // The pure side of the same corpus (no root needed).
    for (file, fx) in fixtures() {
        let p = fx.prepare(true).unwrap();
        let r = p.render();
        let t = Tracer::new(&r.text, &p.local_addresses).unwrap();
        for f in &fx.flows {
            corpus::check_flow_traced(f, &t)
                .unwrap_or_else(|e| panic!("{file} [{}] {:?}: {e}", fx.name, f.name));
        }
    }
}

fn udp_state(endpoint: &str) -> ClusterState {
    let objs = vec![
        serde_json::json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "dns", "namespace": "ns"},
            "spec": {"type": "ClusterIP", "clusterIP": "172.30.0.50", "clusterIPs": ["172.30.0.50"],
                     "ports": [{"name": "dns", "protocol": "UDP", "port": 53, "targetPort": 53}]}}),
        serde_json::json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "dns-1", "namespace": "ns", "labels": {"kubernetes.io/service-name": "dns"}},
            "addressType": "IPv4", "endpoints": [{"addresses": [endpoint]}],
            "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}]}),
    ];
    let mut out = Vec::new();
    for v in &objs {
        match twill_manifest::decode_value(v) {
            Ok(twill_manifest::Decoded::Object(o)) => out.push(o),
            other => panic!("decoding {v}: {other:?}"),
        }
    }
    ClusterState::from_objects(out)
}

#[test]
fn udp_flow_moves_to_the_new_endpoint_once_stale_conntrack_is_cleared() {
    if !ready("udp_flow_moves_to_the_new_endpoint_once_stale_conntrack_is_cleared") {
        return;
    }
    let (old, new): (IpAddr, IpAddr) = ("10.0.1.1".parse().unwrap(), "10.0.1.2".parse().unwrap());
    let client: IpAddr = "10.0.0.2".parse().unwrap();
    let topo = lab::build(
        false,
        &BTreeSet::from(["192.168.0.2".parse().unwrap()]),
        &BTreeSet::from([old, new]),
        &BTreeSet::from([client]),
    )
    .unwrap();
    for ep in [old, new] {
        let (tx, rx) = std::sync::mpsc::channel();
        topo.endpoint(ep).unwrap().spawn(move || {
            let s = std::net::UdpSocket::bind(SocketAddr::new(ep, 53)).unwrap();
            tx.send(()).unwrap();
            let mut buf = [0u8; 64];
            while let Ok((_, peer)) = s.recv_from(&mut buf) {
                let _ = s.send_to(ep.to_string().as_bytes(), peer);
            }
        });
        rx.recv().unwrap();
    }
    let mc = ModelConfig {
        family: twill_model::IpFamily::V4,
        node_name: "n".into(),
        node_zone: None,
        gates: FeatureGates::default(),
    };
    let cfg = twill_proxy_iptables::Config::new(
        twill_model::IpFamily::V4,
        vec!["192.168.0.2".parse().unwrap()],
        twill_proxy_iptables::LocalDetector::ClusterCidr("10.0.0.0/8".parse().unwrap()),
    );
    let (to_node, node_rx) = std::sync::mpsc::channel::<ClusterState>();
    let (node_tx, from_node) = std::sync::mpsc::channel::<usize>();
    let _node = topo.node.spawn(move || {
        let mut p = Proxier::new(mc, cfg, Duration::from_secs(3600), Kernel::default());
        for st in node_rx {
            let r = p.sync(&st, Instant::now()).unwrap().unwrap();
            node_tx.send(r.stale_udp.len()).unwrap();
        }
    });
    to_node.send(udp_state("10.0.1.1")).unwrap();
    from_node.recv().unwrap();
    let ask = |topo: &lab::Topology| {
        topo.cli
            .spawn(move || {
                // The same source port every time: the same conntrack entry.
                let s = std::net::UdpSocket::bind(SocketAddr::new(client, 40053)).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                s.send_to(b"q", "172.30.0.50:53").unwrap();
                let mut buf = [0u8; 64];
                let n = s.recv(&mut buf).unwrap();
                String::from_utf8_lossy(&buf[..n]).into_owned()
            })
            .join()
            .unwrap()
            .unwrap()
    };
    assert_eq!(ask(&topo), "10.0.1.1");
    to_node.send(udp_state("10.0.1.2")).unwrap();
    assert_eq!(from_node.recv().unwrap(), 1, "one stale selector");
    assert_eq!(
        ask(&topo),
        "10.0.1.2",
        "the old entry would have kept the flow on 10.0.1.1"
    );
    drop(to_node);
}

#[test]
fn hairpin_through_two_endpoints_is_masqueraded_only_when_it_lands_on_the_sender() {
    if !ready("hairpin_through_two_endpoints_is_masqueraded_only_when_it_lands_on_the_sender") {
        return;
    }
    let mut fx = fixture("hairpin.json", "hairpin-single-endpoint");
    // svc2 has endpoints 10.180.0.1 and 10.180.2.1; 10.180.0.1 calls its own service.
    let mut flow = fx.flows[0].clone();
    flow.name = "pod to its own service, two endpoints".into();
    flow.dest_ip = "172.30.0.42".into();
    flow.expected = serde_json::from_value(serde_json::json!({
        "outputs": ["10.180.0.1:80", "10.180.2.1:80"], "masq": true,
        "masqPerOutput": {"10.180.0.1:80": true, "10.180.2.1:80": false}
    }))
    .unwrap();
    // Several connections, so both endpoints get picked (1/2 each; all 8 on one is 1/128).
    fx.flows = vec![flow; 8];
    let results = lab::run_fixture(&fx);
    for r in &results {
        assert!(r.is_ok(), "{r:?}");
    }
}
