//! Privileged tests: the userspace proxier in network namespaces it creates.

use std::io::{Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use twill_conformance::proxy::corpus::FlowOutcome;
use twill_conformance::proxy::corpus::{Fixture, shared_fixtures as fixtures};
use twill_conformance::proxy::userspace::{config_of, run_fixture};
use twill_proxy_userspace::{ListenerKey, Options, Proxier, Scope};
use twill_testkit::netns::Netns;

fn ready(test: &str) -> bool {
    twill_testkit::require_root(test) && twill_testkit::require_tool(test, "iptables-restore")
}

#[test]
fn shared_corpus_flows_pass_through_the_userspace_proxy_in_real_kernels() {
    if !ready("shared_corpus_flows_pass_through_the_userspace_proxy_in_real_kernels") {
        return;
    }
    let (mut pass, mut fail, mut skip) = (0, 0, 0);
    let mut failures = Vec::new();
    for (file, fx) in fixtures() {
        for (flow, o) in fx.flows.iter().zip(run_fixture(&fx)) {
            match o {
                FlowOutcome::Passed => pass += 1,
                FlowOutcome::Skipped(why) => {
                    skip += 1;
                    eprintln!("SKIP {file} [{}] {:?}: {why}", fx.name, flow.name);
                }
                FlowOutcome::Failed(e) => {
                    fail += 1;
                    failures.push(format!("{file} [{}] {:?}: {e}", fx.name, flow.name));
                }
            }
        }
    }
    eprintln!("userspace flows: {pass} passed, {fail} failed, {skip} skipped");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(pass > skip, "most flows must run, not be skipped");
}

/// A backend that echoes everything back until the client half-closes, then says "bye".
fn echo_until_eof(l: TcpListener) {
    while let Ok((mut s, _)) = l.accept() {
        std::thread::spawn(move || {
            let mut all = Vec::new();
            let _ = s.read_to_end(&mut all);
            let _ = s.write_all(&all);
            let _ = s.write_all(b"bye");
        });
    }
}

fn model_for(cluster_ip: &str, endpoints: &[SocketAddr]) -> twill_proxy_core::ProxyModel {
    model_with(cluster_ip, endpoints, "TCP", false)
}

fn model_with(
    cluster_ip: &str,
    endpoints: &[SocketAddr],
    protocol: &str,
    affinity: bool,
) -> twill_proxy_core::ProxyModel {
    let eps: Vec<serde_json::Value> = endpoints
        .iter()
        .map(|e| serde_json::json!({"addresses": [e.ip().to_string()], "nodeName": "node"}))
        .collect();
    let port = endpoints.first().map_or(80, |e| e.port());
    let fx: Fixture = serde_json::from_value(serde_json::json!({
        "name": "t",
        "config": {"ipFamily": "IPv4", "nodeName": "node", "nodeIPs": ["127.0.0.1"],
                   "clusterCIDR": "10.0.0.0/8"},
        "objects": [
            {"apiVersion": "v1", "kind": "Service",
             "metadata": {"namespace": "ns", "name": "svc"},
             "spec": {"type": "ClusterIP", "clusterIP": cluster_ip, "clusterIPs": [cluster_ip],
                      "ipFamilies": ["IPv4"],
                      "sessionAffinity": if affinity { "ClientIP" } else { "None" },
                      "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}},
                      "internalTrafficPolicy": "Cluster",
                      "ports": [{"name": "p", "port": 80, "protocol": protocol, "targetPort": port}]}},
            {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
             "metadata": {"namespace": "ns", "name": "svc-1",
                          "labels": {"kubernetes.io/service-name": "svc"}},
             "addressType": "IPv4",
             "ports": [{"name": "p", "port": port, "protocol": protocol}],
             "endpoints": eps}
        ],
        "flows": []
    }))
    .unwrap();
    fx.prepare(false).unwrap().model
}

#[test]
fn tcp_forwarding_carries_both_directions_and_half_close_and_retries_a_dead_backend() {
    if !twill_testkit::require_root("tcp_forwarding_half_close") {
        return;
    }
    let ns = Netns::new("us-fwd");
    ns.run(|| {
        let _ = std::process::Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status();
        let live = TcpListener::bind("127.0.0.2:0").unwrap();
        let live_addr = live.local_addr().unwrap();
        std::thread::spawn(move || echo_until_eof(live));
        // Same port on an address nobody listens on: connecting there is refused.
        let dead = SocketAddr::new(IpAddr::from([127, 0, 0, 3]), live_addr.port());
        let model = model_for("172.30.0.10", &[dead, live_addr]);
        assert_eq!(model.endpoints.values().next().map(Vec::len), Some(2));
        let cfg = twill_proxy_userspace::Config::new(
            twill_model::IpFamily::V4,
            vec![IpAddr::from([127, 0, 0, 1])],
            twill_proxy_core::LocalDetector::None,
        );
        let opts = Options {
            apply_rules: false,
            ..Options::default()
        };
        let mut p = Proxier::new(cfg, opts);
        p.sync(&model).unwrap();
        let key = ListenerKey {
            service: model.services.keys().next().unwrap().clone(),
            scope: Scope::Internal,
        };
        let port = p.ports()[&key];
        // Several connections: round-robin hands some to the dead endpoint first; every
        // one must still reach the live backend.
        for i in 0..4 {
            let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let payload = vec![b'a' + i as u8; 300_000];
            c.write_all(&payload).unwrap();
            c.shutdown(Shutdown::Write).unwrap();
            let mut back = Vec::new();
            c.read_to_end(&mut back).unwrap();
            assert_eq!(back.len(), payload.len() + 3, "connection {i}");
            assert_eq!(&back[..payload.len()], &payload[..]);
            assert!(back.ends_with(b"bye"));
        }
        p.shutdown();
    });
}

#[test]
fn an_endpoint_change_keeps_the_listener_and_its_port() {
    if !twill_testkit::require_root("an_endpoint_change_keeps_the_listener_and_its_port") {
        return;
    }
    let ns = Netns::new("us-upd");
    ns.run(|| {
        let a: SocketAddr = "127.0.0.1:8001".parse().unwrap();
        let b: SocketAddr = "127.0.0.2:8001".parse().unwrap();
        let cfg = twill_proxy_userspace::Config::new(
            twill_model::IpFamily::V4,
            vec![IpAddr::from([127, 0, 0, 1])],
            twill_proxy_core::LocalDetector::None,
        );
        let opts = Options {
            apply_rules: false,
            ..Options::default()
        };
        let mut p = Proxier::new(cfg, opts);
        let r1 = p.sync(&model_for("172.30.0.10", &[a])).unwrap();
        let before = p.ports();
        let r2 = p.sync(&model_for("172.30.0.10", &[a, b])).unwrap();
        assert_eq!(r1.listeners_opened, 1);
        assert_eq!((r2.listeners_opened, r2.listeners_updated), (0, 1));
        assert_eq!(p.ports(), before);
        let r3 = p.sync(&model_for("172.30.0.10", &[])).unwrap();
        assert_eq!((r3.listeners_closed, r3.listeners_total), (1, 0));
    });
}

#[test]
fn userspace_config_follows_the_fixture() {
    let (_, fx) = fixtures()
        .into_iter()
        .find(|(f, fx)| f.ends_with("nodeport.json") && !fx.config.localhost_node_ports)
        .expect("a nodeport fixture with localhost node ports off");
    let c = config_of(&fx.prepare(false).unwrap());
    assert!(!c.localhost_node_ports);
}

fn listener_port(p: &Proxier, model: &twill_proxy_core::ProxyModel) -> (ListenerKey, u16) {
    let key = ListenerKey {
        service: model.services.keys().next().unwrap().clone(),
        scope: Scope::Internal,
    };
    let port = p.ports()[&key];
    (key, port)
}

fn no_rules() -> Options {
    Options {
        apply_rules: false,
        ..Options::default()
    }
}

fn lo_cfg() -> twill_proxy_userspace::Config {
    twill_proxy_userspace::Config::new(
        twill_model::IpFamily::V4,
        vec![IpAddr::from([127, 0, 0, 1])],
        twill_proxy_core::LocalDetector::None,
    )
}

/// A backend that answers its own address on every connection.
fn identify(l: TcpListener) {
    let me = l.local_addr().unwrap().to_string();
    while let Ok((mut s, _)) = l.accept() {
        let _ = s.write_all(me.as_bytes());
    }
}

fn ask(port: u16) -> String {
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut s = String::new();
    c.read_to_string(&mut s).unwrap();
    s
}

#[test]
fn round_robin_alternates_and_client_ip_affinity_sticks() {
    if !twill_testkit::require_root("round_robin_alternates_and_client_ip_affinity_sticks") {
        return;
    }
    let ns = Netns::new("us-aff");
    ns.run(|| {
        let _ = std::process::Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status();
        let a = TcpListener::bind("127.0.0.2:0").unwrap();
        let port = a.local_addr().unwrap().port();
        let b = TcpListener::bind(("127.0.0.3", port)).unwrap();
        let eps = [a.local_addr().unwrap(), b.local_addr().unwrap()];
        std::thread::spawn(move || identify(a));
        std::thread::spawn(move || identify(b));

        let rr = model_with("172.30.0.20", &eps, "TCP", false);
        let mut p = Proxier::new(lo_cfg(), no_rules());
        p.sync(&rr).unwrap();
        let (_, lp) = listener_port(&p, &rr);
        let got: Vec<String> = (0..4).map(|_| ask(lp)).collect();
        assert_ne!(got[0], got[1]);
        assert_eq!(got[0], got[2]);
        assert_eq!(got[1], got[3]);
        p.shutdown();

        let sticky = model_with("172.30.0.20", &eps, "TCP", true);
        let mut p = Proxier::new(lo_cfg(), no_rules());
        p.sync(&sticky).unwrap();
        let (_, lp) = listener_port(&p, &sticky);
        let first = ask(lp);
        for _ in 0..4 {
            assert_eq!(ask(lp), first);
        }
        p.shutdown();
    });
}

#[test]
fn udp_gets_one_flow_per_client_and_forgets_it_after_the_idle_timeout() {
    if !twill_testkit::require_root("udp_gets_one_flow_per_client") {
        return;
    }
    let ns = Netns::new("us-udp");
    ns.run(|| {
        let _ = std::process::Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status();
        let backend = std::net::UdpSocket::bind("127.0.0.2:0").unwrap();
        let baddr = backend.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while let Ok((n, peer)) = backend.recv_from(&mut buf) {
                let mut reply = buf[..n].to_vec();
                reply.extend_from_slice(format!("|{peer}").as_bytes());
                let _ = backend.send_to(&reply, peer);
            }
        });
        let model = model_with("172.30.0.30", &[baddr], "UDP", false);
        let opts = Options {
            udp_idle: Duration::from_millis(300),
            ..no_rules()
        };
        let mut p = Proxier::new(lo_cfg(), opts);
        p.sync(&model).unwrap();
        let (key, lp) = listener_port(&p, &model);
        let clients: Vec<std::net::UdpSocket> = (0..2)
            .map(|_| {
                let c = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
                c.connect(("127.0.0.1", lp)).unwrap();
                c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                c
            })
            .collect();
        let mut backend_peers = Vec::new();
        for (i, c) in clients.iter().enumerate() {
            for round in 0..2 {
                let msg = format!("c{i}r{round}");
                c.send(msg.as_bytes()).unwrap();
                let mut buf = [0u8; 1500];
                let n = c.recv(&mut buf).unwrap();
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                let (echo, peer) = text.split_once('|').unwrap();
                assert_eq!(echo, msg);
                backend_peers.push((i, peer.to_string()));
            }
        }
        // Each client kept one backend-side socket across its datagrams; the two differ.
        assert_eq!(backend_peers[0].1, backend_peers[1].1);
        assert_eq!(backend_peers[2].1, backend_peers[3].1);
        assert_ne!(backend_peers[0].1, backend_peers[2].1);
        assert_eq!(p.udp_flows(&key), Some(2));
        std::thread::sleep(Duration::from_millis(1200));
        assert_eq!(p.udp_flows(&key), Some(0), "idle flows are forgotten");
        p.shutdown();
    });
}

#[test]
fn small_replies_are_not_held_back_in_request_response_traffic() {
    if !twill_testkit::require_root("small_replies_are_not_held_back") {
        return;
    }
    let ns = Netns::new("us-pp");
    ns.run(|| {
        let _ = std::process::Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status();
        let l = TcpListener::bind("127.0.0.2:0").unwrap();
        let addr = l.local_addr().unwrap();
        // Answers every 4-byte request with 4 bytes, on one long-lived connection.
        std::thread::spawn(move || {
            while let Ok((mut s, _)) = l.accept() {
                std::thread::spawn(move || {
                    let mut b = [0u8; 4];
                    while s.read_exact(&mut b).is_ok() {
                        if s.write_all(b"pong").is_err() {
                            break;
                        }
                    }
                });
            }
        });
        let model = model_for("172.30.0.40", &[addr]);
        let mut p = Proxier::new(lo_cfg(), no_rules());
        p.sync(&model).unwrap();
        let (_, lp) = listener_port(&p, &model);
        let mut c = TcpStream::connect(("127.0.0.1", lp)).unwrap();
        c.set_nodelay(true).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let rounds = 20;
        let start = std::time::Instant::now();
        for _ in 0..rounds {
            c.write_all(b"ping").unwrap();
            let mut b = [0u8; 4];
            c.read_exact(&mut b).unwrap();
            assert_eq!(&b, b"pong");
        }
        // A corked reply waits for the peer's delayed ACK (40 ms or more) every round.
        let took = start.elapsed();
        assert!(
            took < Duration::from_millis(20 * rounds),
            "{rounds} round trips took {took:?}"
        );
        p.shutdown();
    });
}
