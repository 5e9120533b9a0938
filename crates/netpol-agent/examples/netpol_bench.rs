//! NetworkPolicy scale benchmark (needs root): 1,000 policies × 1,000 pods on one node.
//!
//! Measures rule and set counts, render time, full sync time (ipset restore +
//! iptables-restore in a fresh netns), the time for one pod label change to take effect
//! (re-render + re-apply), and TCP connect/request/response rate between two real pods
//! with no policy versus with the 1,000 policies in place (the server pod selected by
//! 10 of them and, by default, last in the node's dispatch order).
//!
//! `cargo run --release -p twill-netpol-agent --example netpol_bench [pods] [policies]`

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use serde_json::json;
use twill_conformance::netpol::corpus::World;
use twill_conformance::netpol::harness::{Harness, HarnessOptions, ProbePlan};
use twill_conformance::netpol::netns::enter;
use twill_model::{Labels, ObjectKey, Protocol};
use twill_netpol::{NamedPort, Peer, PolicyPod, RenderOptions, render_node};
use twill_netpol_agent::apply::{apply_node, apply_node_after};
use twill_netpol_agent::source::policy_from_json;

const NODE: &str = "node-1";

fn labels(pairs: &[(&str, String)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

fn pod_ip(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 244, (i / 250) as u8, (i % 250 + 2) as u8))
}

fn build(pods: usize, policies: usize) -> World {
    let mut w = World::default();
    for n in 0..10 {
        w.cluster.namespaces.insert(
            format!("ns-{n}"),
            labels(&[("team", format!("t{}", n % 5))]),
        );
    }
    for i in 0..pods {
        let key = ObjectKey::new(format!("ns-{}", i % 10), format!("p{i}"));
        let pod = PolicyPod {
            key: key.clone(),
            labels: labels(&[
                ("app", format!("a{}", i % 100)),
                ("role", format!("r{}", i % 50)),
            ]),
            ip: pod_ip(i),
            node: NODE.into(),
            ports: vec![NamedPort {
                name: Some("http".into()),
                port: 80,
                protocol: Protocol::Tcp,
            }],
        };
        w.cluster.pods.insert(key, pod);
    }
    for j in 0..policies {
        let v = json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": format!("np-{j:04}"), "namespace": format!("ns-{}", j % 10)},
            "spec": {"podSelector": {"matchLabels": {"app": format!("a{}", j % 100)}},
                     "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": format!("t{}", j % 5)}},
                                            "podSelector": {"matchLabels": {"role": format!("r{}", j % 50)}}}],
                                  "ports": [{"port": "http"}, {"port": 8000, "endPort": 8100}]}]}});
        w.cluster
            .upsert_policy(policy_from_json("bench", &v).expect("valid policy"));
    }
    w
}

fn timed<R>(f: impl FnOnce() -> R) -> (R, Duration) {
    let start = Instant::now();
    let r = f();
    (r, start.elapsed())
}

/// Connections per second from `client` to `server`:80 over `window`.
fn rate(h: &Harness, client: &ObjectKey, server: IpAddr, window: Duration) -> f64 {
    let path = h.pod_netns(client).expect("client pod runs");
    let IpAddr::V4(server) = server else {
        return 0.0;
    };
    std::thread::scope(|s| {
        s.spawn(|| {
            enter(&path).expect("enter client netns");
            let start = Instant::now();
            let mut ok = 0u64;
            while start.elapsed() < window {
                if twill_conformance::netpol::probe::tcp_probe(
                    None,
                    SocketAddrV4::new(server, 80),
                    Duration::from_secs(1),
                ) {
                    ok += 1;
                }
            }
            ok as f64 / start.elapsed().as_secs_f64()
        })
        .join()
        .unwrap()
    })
}

fn main() {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<usize> = raw.iter().filter_map(|a| a.parse().ok()).collect();
    let pods = args.first().copied().unwrap_or(1000);
    let policies = args.get(1).copied().unwrap_or(1000);
    // The server is the last pod in dispatch order (the worst case for the linear `-d`
    // dispatch) unless `first` is given.
    let first = raw.iter().any(|a| a == "first");
    let mut world = build(pods, policies);
    let server = if first {
        world.cluster.pods.keys().next()
    } else {
        world.cluster.pods.keys().next_back()
    }
    .cloned()
    .expect("pods");
    let server_pod = world.cluster.pods[&server].clone();
    // A client some policy admits (they admit by role, so relabelling it closes it off).
    let client = world
        .cluster
        .pods
        .values()
        .find(|p| {
            p.key != server
                && twill_netpol::allows(
                    &world.cluster,
                    Peer::Pod(p),
                    Peer::Pod(&server_pod),
                    80,
                    Protocol::Tcp,
                )
        })
        .map(|p| p.key.clone())
        .expect("a client pod");
    let server_ip = world.cluster.pods[&server].ip;
    let mut plan = ProbePlan::default();
    plan.add_pods(&world);
    let mut h = Harness::new(&world, &plan, HarnessOptions::default()).expect("harness");
    h.sync_pods_where(&world, |k| *k == server || *k == client)
        .expect("pods");
    let window = Duration::from_secs(3);
    assert_ne!(client, server);

    let baseline = rate(&h, &client, server_ip, window);

    let (rules, render) = timed(|| render_node(&world.cluster, NODE, &RenderOptions::default()));
    let (applied, full_sync) =
        timed(|| h.in_node(NODE, || apply_node(NODE, &rules)).expect("node"));
    applied.expect("apply");
    let with_policy = rate(&h, &client, server_ip, window);

    // One label change: the client loses the label that admits it.
    world
        .cluster
        .pods
        .get_mut(&client)
        .unwrap()
        .labels
        .insert("role".into(), "none".into());
    let (changed, label_change) = timed(|| {
        h.in_node(NODE, || {
            let opts = RenderOptions {
                existing_chains: rules.chains.clone(),
                ..Default::default()
            };
            let r = render_node(&world.cluster, NODE, &opts);
            apply_node_after(NODE, &r, Some(&rules)).map(|how| (r, how))
        })
        .expect("node")
    });
    let (changed, how) = changed.expect("apply after label change");
    // Probed from inside the client pod's netns (never from this process's namespace).
    let blocked = rate(&h, &client, server_ip, Duration::from_millis(300)) == 0.0;

    let mut out = BTreeMap::new();
    out.insert("pods", pods.to_string());
    out.insert(
        "server",
        format!(
            "{server} ({} in dispatch order)",
            if first { "first" } else { "last" }
        ),
    );
    out.insert("policies", policies.to_string());
    out.insert("iptables rules", rules.rule_count.to_string());
    out.insert("chains", rules.chains.len().to_string());
    out.insert("ipsets", rules.sets.len().to_string());
    out.insert("ipset entries", rules.set_entries.to_string());
    out.insert("render (ms)", format!("{:.1}", render.as_secs_f64() * 1e3));
    out.insert(
        "full sync: ipset + iptables-restore (ms)",
        format!("{:.1}", full_sync.as_secs_f64() * 1e3),
    );
    out.insert(
        "label change: render + apply (ms)",
        format!("{:.1}", label_change.as_secs_f64() * 1e3),
    );
    out.insert("label change blocks the client", blocked.to_string());
    out.insert("rules after label change", changed.rule_count.to_string());
    out.insert("label change applied as", format!("{how:?}"));
    out.insert("TCP conn/s no policy", format!("{baseline:.0}"));
    out.insert("TCP conn/s with policies", format!("{with_policy:.0}"));
    for (k, v) in out {
        println!("{k:45} {v}");
    }
}
