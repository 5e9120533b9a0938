//! Same run, same kernel: bulk throughput (iperf3) and TCP connection rate from a client
//! namespace to one endpoint, directly to the pod IP, through a ClusterIP in iptables
//! mode, and through a ClusterIP in userspace mode. Each variant gets a fresh
//! `twill_conformance::proxy::flows` topology (client ns → node ns → endpoint ns).
//!
//! `cargo bench -p twill-proxy-userspace --bench modes` (root; needs iperf3).
//! `TWILL_BENCH_SECS` sets the iperf3 duration (default 5), `TWILL_BENCH_ROUNDS` the
//! number of interleaved rounds (default 3; medians are reported).

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use twill_conformance::proxy::corpus::{Fixture, Prepared};
use twill_conformance::proxy::flows::{self as lab, Topology};
use twill_conformance::proxy::userspace::config_of;
use twill_proxy_userspace::{Options, Proxier};

const POD: &str = "10.180.0.1";
const CLUSTER_IP: &str = "172.30.0.10";
const CLIENT: &str = "10.0.0.2";
const IPERF_PORT: u16 = 5201;
const RATE_PORT: u16 = 8080;

fn prepared() -> Prepared {
    let svc_port = |name: &str, port: u16| serde_json::json!({"name": name, "port": port, "protocol": "TCP", "targetPort": port});
    let fx: Fixture = serde_json::from_value(serde_json::json!({
        "name": "bench",
        "config": {"ipFamily": "IPv4", "nodeName": "node", "nodeIPs": ["192.168.0.2"],
                   "localAddresses": ["192.168.0.2", "127.0.0.1"], "clusterCIDR": "10.0.0.0/8"},
        "objects": [
            {"apiVersion": "v1", "kind": "Service",
             "metadata": {"namespace": "bench", "name": "svc"},
             "spec": {"type": "ClusterIP", "clusterIP": CLUSTER_IP, "clusterIPs": [CLUSTER_IP],
                      "ipFamilies": ["IPv4"], "sessionAffinity": "None",
                      "internalTrafficPolicy": "Cluster",
                      "ports": [svc_port("iperf", IPERF_PORT), svc_port("rate", RATE_PORT)]}},
            {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
             "metadata": {"namespace": "bench", "name": "svc-1",
                          "labels": {"kubernetes.io/service-name": "svc"}},
             "addressType": "IPv4",
             "ports": [{"name": "iperf", "port": IPERF_PORT, "protocol": "TCP"},
                       {"name": "rate", "port": RATE_PORT, "protocol": "TCP"}],
             "endpoints": [{"addresses": [POD], "nodeName": "other"}]}
        ],
        "flows": []
    }))
    .expect("bench fixture");
    fx.prepare(false).expect("prepare")
}

fn topology() -> Topology {
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    lab::build(
        false,
        &BTreeSet::from([ip("192.168.0.2")]),
        &BTreeSet::from([ip(POD)]),
        &BTreeSet::from([ip(CLIENT)]),
    )
    .expect("topology")
}

#[derive(Clone, Copy, Debug)]
enum Mode {
    Direct,
    Iptables,
    Userspace,
}

struct Figures {
    gbits: f64,
    conns_per_sec: f64,
}

/// One iperf3 run; retried (with a fresh one-off server) when it measured nothing, as
/// happens when the server was not listening yet on a loaded machine.
fn iperf(topo: &Topology, target: &str, secs: u64) -> f64 {
    for _ in 0..3 {
        let g = iperf_once(topo, target, secs);
        if g > 0.0 {
            return g;
        }
    }
    0.0
}

fn iperf_once(topo: &Topology, target: &str, secs: u64) -> f64 {
    let ep = topo.endpoint(POD.parse().unwrap()).unwrap();
    let mut server = Command::new("ip")
        .args(["netns", "exec", ep.name(), "iperf3", "-s", "-1", "-B", POD])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("iperf3 server");
    std::thread::sleep(Duration::from_millis(500));
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            topo.cli.name(),
            "iperf3",
            "-c",
            target,
            "-B",
            CLIENT,
            "-t",
            &secs.to_string(),
            "-J",
        ])
        .output()
        .expect("iperf3 client");
    let _ = server.kill();
    let _ = server.wait();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(0.0)
        / 1e9
}

fn conn_rate(topo: &Topology, target: SocketAddr, secs: u64) -> f64 {
    let ep = topo.endpoint(POD.parse().unwrap()).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = stop.clone();
    let server = ep.spawn(move || {
        let l = TcpListener::bind((POD, RATE_PORT)).expect("bind");
        l.set_nonblocking(true).unwrap();
        while !s2.load(Ordering::Relaxed) {
            match l.accept() {
                Ok((mut s, _)) => {
                    let _ = s.set_nonblocking(false);
                    let _ = s.write_all(b"x");
                }
                Err(_) => std::thread::sleep(Duration::from_micros(200)),
            }
        }
    });
    std::thread::sleep(Duration::from_millis(100));
    let client = topo.cli.spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let mut n = 0u64;
        let start = Instant::now();
        while Instant::now() < deadline {
            let Ok(mut s) = TcpStream::connect_timeout(&target, Duration::from_secs(1)) else {
                continue;
            };
            let mut b = [0u8; 1];
            if s.read_exact(&mut b).is_ok() {
                n += 1;
            }
        }
        n as f64 / start.elapsed().as_secs_f64()
    });
    let rate = client.join().unwrap().unwrap();
    stop.store(true, Ordering::Relaxed);
    let _ = server.join();
    rate
}

fn run(mode: Mode, secs: u64) -> Figures {
    let p = prepared();
    let topo = topology();
    let mut proxier = None;
    let target = match mode {
        Mode::Direct => POD,
        Mode::Iptables => {
            let text = lab::with_base_jumps(&p.render().text, false);
            topo.node
                .exec(
                    "iptables-restore",
                    &["--noflush", "-w", "5"],
                    Some(text.as_bytes()),
                )
                .expect("iptables-restore");
            CLUSTER_IP
        }
        Mode::Userspace => {
            let cfg = config_of(&p);
            let model = p.model.clone();
            let px = topo
                .node
                .spawn(move || {
                    let mut px = Proxier::new(cfg, Options::default());
                    px.sync(&model).map(|_| px)
                })
                .join()
                .unwrap()
                .unwrap()
                .expect("userspace sync");
            proxier = Some(px);
            CLUSTER_IP
        }
    };
    let gbits = iperf(&topo, target, secs);
    let conns_per_sec = conn_rate(
        &topo,
        SocketAddr::new(target.parse().unwrap(), RATE_PORT),
        3,
    );
    if let Some(px) = proxier {
        px.shutdown();
    }
    Figures {
        gbits,
        conns_per_sec,
    }
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || Command::new("iperf3").arg("-v").output().is_err() {
        eprintln!("skipped: needs root and iperf3");
        return;
    }
    let secs: u64 = std::env::var("TWILL_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let rounds: usize = std::env::var("TWILL_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    // Rounds interleave the modes, so background load on a shared machine hits all
    // three alike; each figure is the median over rounds.
    let modes = [Mode::Direct, Mode::Iptables, Mode::Userspace];
    let only = std::env::var("TWILL_BENCH_MODES").unwrap_or_default();
    if !only.is_empty() {
        for m in modes {
            if only
                .to_lowercase()
                .contains(&format!("{m:?}").to_lowercase())
            {
                let f = run(m, secs);
                println!(
                    "{m:?}: {:.2} Gbit/s bulk, {:.0} connections/s",
                    f.gbits, f.conns_per_sec
                );
            }
        }
        return;
    }
    let mut samples: Vec<Vec<Figures>> = modes.iter().map(|_| Vec::new()).collect();
    for round in 0..rounds {
        for (i, mode) in modes.iter().enumerate() {
            let f = run(*mode, secs);
            println!(
                "round {round} {mode:?}: {:.2} Gbit/s bulk, {:.0} connections/s",
                f.gbits, f.conns_per_sec
            );
            samples[i].push(f);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let mut med = Vec::new();
    for (mode, s) in modes.iter().zip(&samples) {
        let g = median(&mut s.iter().map(|f| f.gbits).collect());
        let c = median(&mut s.iter().map(|f| f.conns_per_sec).collect());
        println!("median {mode:?}: {g:.2} Gbit/s bulk, {c:.0} connections/s");
        med.push((g, c));
    }
    let (direct, ipt, us) = (med[0], med[1], med[2]);
    println!(
        "userspace/iptables: bulk {:.0}%, connection rate {:.0}%; userspace/direct bulk {:.0}%; iptables/direct bulk {:.0}%",
        100.0 * us.0 / ipt.0.max(1e-9),
        100.0 * us.1 / ipt.1.max(1e-9),
        100.0 * us.0 / direct.0.max(1e-9),
        100.0 * ipt.0 / direct.0.max(1e-9),
    );
}
