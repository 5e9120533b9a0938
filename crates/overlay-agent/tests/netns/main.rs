//! The agent on real kernels: namespaces as nodes on an underlay bridge (which lives in its
//! own namespace), a pod-like veth per node, the embedded lease store shared through a
//! temporary file. Each backend: ping and TCP between all pods across nodes, a node
//! restart keeps its subnet without touching the kernel, a node that stops renewing loses
//! its lease, its peers drop its routes, and its subnet goes to a new node.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use twill_lease::EmbeddedStore;
use twill_overlay_agent::{AgentOptions, Health, StoreSpec, run_agent};
use twill_testkit::netns::{Netns, veth_pair};

const LEASE_TTL: u64 = 4;

struct Agent {
    stop: watch::Sender<bool>,
    thread: JoinHandle<Result<(), String>>,
    health: Health,
}

impl Agent {
    fn start(ns: &Netns, store: &StoreSpec, opts: AgentOptions) -> Agent {
        let (stop, rx) = watch::channel(false);
        let health = Health::default();
        let h = health.clone();
        let ns_path = ns.path();
        let store = store.clone();
        let thread = std::thread::spawn(move || {
            let f = std::fs::File::open(&ns_path).expect("open netns");
            nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| e.to_string())?;
                tokio::spawn(conn);
                let mut store = store.open(None).await.map_err(|e| e.to_string())?;
                run_agent(&mut store, &opts, &handle, &h, rx)
                    .await
                    .map_err(|e| e.to_string())
            })
        });
        Agent {
            stop,
            thread,
            health,
        }
    }

    fn stop(self) {
        let _ = self.stop.send(true);
        self.thread
            .join()
            .expect("agent thread")
            .expect("agent ended with an error");
    }
}

/// Debian's etcd-server in the underlay namespace, killed on drop.
struct Etcd {
    child: std::process::Child,
    dir: PathBuf,
}

impl Etcd {
    fn start(ns: &Netns, dir: &Path) -> Etcd {
        let child = ns
            .command("etcd")
            .args([
                "--name",
                "t",
                "--data-dir",
                dir.to_str().unwrap(),
                "--listen-client-urls",
                "http://192.168.50.1:2379",
                "--advertise-client-urls",
                "http://192.168.50.1:2379",
                "--listen-peer-urls",
                "http://127.0.0.1:2380",
                "--initial-advertise-peer-urls",
                "http://127.0.0.1:2380",
                "--initial-cluster",
                "t=http://127.0.0.1:2380",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start etcd");
        Etcd {
            child,
            dir: dir.to_path_buf(),
        }
    }

    fn kill(self) {
        drop(self);
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Node {
    ns: Netns,
    pod: Netns,
    ip: Ipv4Addr,
    env: PathBuf,
    subnet: Option<ipnet::Ipv4Net>,
}

impl Node {
    fn pod_ip(&self) -> Ipv4Addr {
        let s = self.subnet.expect("subnet known");
        Ipv4Addr::from(u32::from(s.network()) + 2)
    }
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

fn opts(node: &Node, dir: &Path) -> AgentOptions {
    AgentOptions {
        iface: twill_netlink::IfaceChoice::named(Some("eth0")),
        subnet_env_path: node.env.clone(),
        cni_conf_path: Some(dir.join(format!("{}.conflist", node.ip))),
        resync: Duration::from_millis(300),
        lease_ttl: LEASE_TTL,
        ip_masq: true,
        ..AgentOptions::default()
    }
}

fn add_node(underlay: &Netns, dir: &Path, n: u8) -> Node {
    let ns = Netns::new(&format!("n{n}"));
    let port = format!("ul{n}");
    veth_pair(&ns, "eth0", underlay, &port);
    underlay.ip(&["link", "set", &port, "master", "br0"]);
    let ip = Ipv4Addr::new(192, 168, 50, 10 + n);
    ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
    let pod = Netns::new(&format!("p{n}"));
    Node {
        ns,
        pod,
        ip,
        env: dir.join(format!("node{n}.env")),
        subnet: None,
    }
}

fn wire_pod(node: &mut Node, subnet: ipnet::Ipv4Net) {
    node.subnet = Some(subnet);
    let gw = Ipv4Addr::from(u32::from(subnet.network()) + 1);
    veth_pair(&node.pod, "eth0", &node.ns, "vpod");
    node.ns.ip(&[
        "addr",
        "add",
        &format!("{gw}/{}", subnet.prefix_len()),
        "dev",
        "vpod",
    ]);
    node.pod.ip(&[
        "addr",
        "add",
        &format!("{}/{}", node.pod_ip(), subnet.prefix_len()),
        "dev",
        "eth0",
    ]);
    node.pod
        .ip(&["route", "add", "default", "via", &gw.to_string()]);
}

fn subnet_of(agent: &Agent) -> Option<ipnet::Ipv4Net> {
    agent.health.get().subnet.and_then(|s| s.parse().ok())
}

/// A TCP echo server inside `ns` (one thread; lives until the test process ends).
fn echo_server(ns: &Netns, port: u16) {
    let path = ns.path();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let f = std::fs::File::open(&path).expect("open netns");
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let l = TcpListener::bind(("0.0.0.0", port)).expect("bind");
        tx.send(()).unwrap();
        for mut s in l.incoming().flatten() {
            let mut buf = [0u8; 64];
            if let Ok(n) = s.read(&mut buf) {
                let _ = s.write_all(&buf[..n]);
            }
        }
    });
    rx.recv().unwrap();
}

fn tcp_echo(from: &Netns, to: Ipv4Addr, port: u16) -> Result<(), String> {
    from.run(|| {
        let mut s =
            TcpStream::connect_timeout(&SocketAddr::from((to, port)), Duration::from_secs(3))
                .map_err(|e| format!("connect {to}:{port}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        s.write_all(b"twill").map_err(|e| e.to_string())?;
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).map_err(|e| e.to_string())?;
        if &buf == b"twill" {
            Ok(())
        } else {
            Err("echo mismatch".into())
        }
    })
}

fn ping(from: &Netns, to: Ipv4Addr) -> bool {
    from.exec("ping", &["-c", "1", "-W", "2", &to.to_string()])
        .status
        .success()
}

fn routes(ns: &Netns) -> String {
    ns.ip(&["route", "show"])
}

/// The whole life of a 3-node cluster on one backend.
fn cluster_lifecycle(backend: &str, use_etcd: bool) {
    let dir = std::env::temp_dir().join(format!(
        "twill-overlay-{}-{backend}-{use_etcd}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // Exactly three subnets, so a fourth node can only get one that was freed.
    let config = format!(
        r#"{{"Network":"10.244.0.0/16","SubnetMin":"10.244.1.0","SubnetMax":"10.244.3.0","Backend":{{"Type":"{backend}"}}}}"#
    );
    let underlay = Netns::new("ul");
    underlay.ip(&["link", "add", "br0", "type", "bridge"]);
    underlay.ip(&["link", "set", "br0", "up"]);
    let mut etcd = None;
    let store_path = if use_etcd {
        // etcd lives on the underlay, as a cluster's would: 192.168.50.1 on the bridge.
        underlay.ip(&["addr", "add", "192.168.50.1/24", "dev", "br0"]);
        etcd = Some(Etcd::start(&underlay, &dir.join("etcd")));
        let spec = StoreSpec::Etcd {
            endpoint: "etcd://192.168.50.1:2379".into(),
            prefix: "/coreos.com/network".into(),
        };
        let c = config.clone();
        underlay.run(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let start = Instant::now();
                while let Err(e) = spec.open(Some(&c)).await {
                    assert!(
                        start.elapsed() < Duration::from_secs(15),
                        "etcd did not come up: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            })
        });
        StoreSpec::Etcd {
            endpoint: "etcd://192.168.50.1:2379".into(),
            prefix: "/coreos.com/network".into(),
        }
    } else {
        let p = dir.join("leases.json");
        EmbeddedStore::new(&p).set_config(&config).unwrap();
        StoreSpec::Embedded(p)
    };
    let mut nodes: Vec<Node> = (1..=3).map(|n| add_node(&underlay, &dir, n)).collect();
    let mut agents: Vec<Agent> = nodes
        .iter()
        .map(|n| Agent::start(&n.ns, &store_path, opts(n, &dir)))
        .collect();

    for i in 0..3 {
        wait_until("a lease", Duration::from_secs(10), || {
            subnet_of(&agents[i]).is_some()
        });
        let s = subnet_of(&agents[i]).unwrap();
        wire_pod(&mut nodes[i], s);
    }
    let subnets: std::collections::BTreeSet<_> = nodes.iter().map(|n| n.subnet.unwrap()).collect();
    assert_eq!(subnets.len(), 3, "three distinct subnets: {subnets:?}");
    for (i, n) in nodes.iter().enumerate() {
        let env = std::fs::read_to_string(&n.env).unwrap();
        let first = Ipv4Addr::from(u32::from(n.subnet.unwrap().network()) + 1);
        assert!(env.contains(&format!("FLANNEL_SUBNET={first}/24")), "{env}");
        let mtu = match backend {
            "vxlan" => 1450,
            "udp" => 1472,
            _ => 1500,
        };
        assert!(env.contains(&format!("FLANNEL_MTU={mtu}")), "{env}");
        let peers: Vec<_> = nodes
            .iter()
            .filter(|o| o.ip != n.ip)
            .map(|o| o.subnet.unwrap().to_string())
            .collect();
        wait_until("routes to both peers", Duration::from_secs(10), || {
            let r = routes(&n.ns);
            if backend == "udp" {
                // One route for the network into the TUN device; peers live in the relay.
                r.contains("10.244.0.0/16 dev flannel0") && agents[i].health.get().peers == 2
            } else {
                peers.iter().all(|p| r.contains(p.as_str()))
            }
        });
        assert_eq!(agents[i].health.get().peers, 2);
    }

    // Kernel state per backend, as iproute2 shows it.
    let n1 = &nodes[0];
    let r = routes(&n1.ns);
    for o in nodes[1..].iter().filter(|_| backend != "udp") {
        let sn = o.subnet.unwrap();
        let want = match backend {
            "vxlan" => format!("{sn} via {} dev flannel.1 onlink", sn.network()),
            _ => format!("{sn} via {} dev eth0", o.ip),
        };
        assert!(r.contains(&want), "node1 routes lack {want:?}:\n{r}");
    }
    if backend == "udp" {
        let link = n1.ns.ip(&["-d", "addr", "show", "flannel0"]);
        assert!(link.contains("tun") && link.contains("mtu 1472"), "{link}");
        assert!(
            link.contains(&format!("inet {}/32", n1.subnet.unwrap().network())),
            "{link}"
        );
    } else if backend == "vxlan" {
        let link = n1.ns.ip(&["-d", "link", "show", "flannel.1"]);
        assert!(
            link.contains("vxlan id 1")
                && link.contains("dstport 8472")
                && link.contains("nolearning"),
            "{link}"
        );
        assert!(link.contains(&format!("local {}", n1.ip)), "{link}");
        assert!(link.contains("mtu 1450"), "{link}");
        let neigh = n1.ns.ip(&["neigh", "show", "dev", "flannel.1"]);
        let fdb = String::from_utf8(
            n1.ns
                .exec("bridge", &["fdb", "show", "dev", "flannel.1"])
                .stdout,
        )
        .unwrap();
        for o in &nodes[1..] {
            assert!(
                neigh.contains(&format!("{} lladdr", o.subnet.unwrap().network())),
                "{neigh}"
            );
            assert!(neigh.contains("PERMANENT"), "{neigh}");
            assert!(
                fdb.contains(&format!("dst {} self permanent", o.ip)),
                "{fdb}"
            );
        }
    } else {
        let links = n1.ns.ip(&["link", "show"]);
        assert!(
            !links.contains("flannel.1") && !links.contains("flannel0"),
            "{links}"
        );
    }

    // Pod to pod, across nodes, every pair: ICMP and TCP.
    for n in &nodes {
        echo_server(&n.pod, 7000);
    }
    for a in &nodes {
        for b in &nodes {
            if a.ip == b.ip {
                continue;
            }
            assert!(
                ping(&a.pod, b.pod_ip()),
                "ping {} -> {} (src fwd {}, health {:?})\nsrc node routes:\n{}\ndst node routes:\n{}\ndst neigh:\n{}",
                a.pod_ip(),
                b.pod_ip(),
                String::from_utf8_lossy(
                    &a.ns.exec("cat", &["/proc/sys/net/ipv4/ip_forward"]).stdout
                ),
                agents.iter().map(|x| x.health.get()).collect::<Vec<_>>(),
                routes(&a.ns),
                routes(&b.ns),
                b.ns.ip(&["neigh"]),
            );
            tcp_echo(&a.pod, b.pod_ip(), 7000)
                .unwrap_or_else(|e| panic!("tcp {} -> {}: {e}", a.pod_ip(), b.pod_ip()));
        }
    }

    // etcd goes away: the data plane stays, the agents say so, and recover when it returns.
    if let Some(e) = etcd.take() {
        let data = e.dir.clone();
        e.kill();
        wait_until(
            "agents notice the store is gone",
            Duration::from_secs(20),
            || agents.iter().all(|a| !a.health.get().store_reachable),
        );
        assert!(agents[0].health.get().last_error.is_some());
        assert!(
            ping(&nodes[0].pod, nodes[1].pod_ip()),
            "data plane kept while etcd is down"
        );
        etcd = Some(Etcd::start(&underlay, &data));
        wait_until(
            "agents reach the store again",
            Duration::from_secs(40),
            || agents.iter().all(|a| a.health.get().store_reachable),
        );
    }

    // Restart node 1's agent: same subnet, and the kernel is adopted as it is.
    let before = nodes[0].ns.ip(&["route", "show"]);
    agents.remove(0).stop();
    agents.insert(
        0,
        Agent::start(&nodes[0].ns, &store_path, opts(&nodes[0], &dir)),
    );
    wait_until(
        "restarted agent syncs twice",
        Duration::from_secs(10),
        || agents[0].health.get().syncs >= 2,
    );
    let h = agents[0].health.get();
    assert_eq!(
        h.subnet.as_deref(),
        Some(nodes[0].subnet.unwrap().to_string().as_str())
    );
    if backend != "udp" {
        // (udp's TUN device goes with the relay that holds it open, so it is rebuilt.)
        assert_eq!(
            h.total_changes, 0,
            "restart must not touch the kernel: {h:?}"
        );
        assert_eq!(nodes[0].ns.ip(&["route", "show"]), before);
    }
    assert!(ping(&nodes[0].pod, nodes[1].pod_ip()));
    // Masquerade rules in flannel's layout, jumps not duplicated by the restart.
    let nat = String::from_utf8(nodes[0].ns.exec("iptables-save", &["-t", "nat"]).stdout).unwrap();
    let jump = "-A POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG";
    assert_eq!(nat.lines().filter(|l| *l == jump).count(), 1, "{nat}");
    let own = nodes[0].subnet.unwrap();
    assert!(
        nat.contains(&format!("-A FLANNEL-POSTRTG -s {own} -d 10.244.0.0/16 -m comment --comment \"flanneld masq\" -j RETURN")),
        "{nat}"
    );
    let filter =
        String::from_utf8(nodes[0].ns.exec("iptables-save", &["-t", "filter"]).stdout).unwrap();
    assert_eq!(
        filter
            .lines()
            .filter(|l| l.starts_with("-A FORWARD") && l.contains("FLANNEL-FWD"))
            .count(),
        1,
        "{filter}"
    );

    // Node 3 stops renewing: its lease expires and the others drop its routes.
    let gone = nodes[2].subnet.unwrap();
    agents.remove(2).stop();
    for n in &nodes[..2] {
        wait_until(
            "route of the departed peer removed",
            Duration::from_secs(LEASE_TTL + 10),
            || !routes(&n.ns).contains(&gone.to_string()),
        );
        let i = nodes.iter().position(|x| x.ip == n.ip).unwrap();
        wait_until(
            "peer count drops",
            Duration::from_secs(LEASE_TTL + 10),
            || agents[i].health.get().peers == 1,
        );
        if backend == "vxlan" {
            let neigh = n.ns.ip(&["neigh", "show", "dev", "flannel.1"]);
            assert!(
                !neigh.contains(&format!("{} ", gone.network())),
                "stale neighbour: {neigh}"
            );
            let fdb = String::from_utf8(
                n.ns.exec("bridge", &["fdb", "show", "dev", "flannel.1"])
                    .stdout,
            )
            .unwrap();
            assert!(
                !fdb.contains(&format!("dst {} ", nodes[2].ip)),
                "stale fdb: {fdb}"
            );
        }
    }
    assert!(
        ping(&nodes[0].pod, nodes[1].pod_ip()),
        "remaining peers still reach each other"
    );

    // The freed subnet is the only one left: a new node gets it.
    let n4 = add_node(&underlay, &dir, 4);
    let a4 = Agent::start(&n4.ns, &store_path, opts(&n4, &dir));
    // Generous bounds: after the etcd outage the watches reconnect with backoff, and a
    // loaded CI machine can take well over the usual second (seen: >10 s once).
    wait_until("node 4 lease", Duration::from_secs(30), || {
        subnet_of(&a4).is_some()
    });
    assert_eq!(subnet_of(&a4), Some(gone));
    wait_until("node 1 routes to node 4", Duration::from_secs(30), || {
        let r = routes(&nodes[0].ns);
        match backend {
            "vxlan" => r.contains(&format!(
                "{gone} via {} dev flannel.1 onlink",
                gone.network()
            )),
            "udp" => agents[0].health.get().peers == 2,
            _ => r.contains(&format!("{gone} via {} dev eth0", n4.ip)),
        }
    });

    a4.stop();
    for a in agents {
        a.stop();
    }
    drop(etcd);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn vxlan_cluster_routes_pods_across_nodes_and_follows_leases() {
    if !twill_testkit::require_root("vxlan_cluster_routes_pods_across_nodes_and_follows_leases")
        || !twill_testkit::require_tool(
            "vxlan_cluster_routes_pods_across_nodes_and_follows_leases",
            "ping",
        )
    {
        return;
    }
    cluster_lifecycle("vxlan", false);
}

#[test]
fn host_gw_cluster_routes_pods_across_nodes_and_follows_leases() {
    if !twill_testkit::require_root("host_gw_cluster_routes_pods_across_nodes_and_follows_leases")
        || !twill_testkit::require_tool(
            "host_gw_cluster_routes_pods_across_nodes_and_follows_leases",
            "ping",
        )
    {
        return;
    }
    cluster_lifecycle("host-gw", false);
}

#[test]
fn udp_cluster_relays_pods_across_nodes_and_follows_leases() {
    let name = "udp_cluster_relays_pods_across_nodes_and_follows_leases";
    if !twill_testkit::require_root(name) || !twill_testkit::require_tool(name, "ping") {
        return;
    }
    cluster_lifecycle("udp", false);
}

#[test]
fn vxlan_cluster_over_real_etcd_keeps_routing_through_an_etcd_outage() {
    let name = "vxlan_cluster_over_real_etcd_keeps_routing_through_an_etcd_outage";
    if !twill_testkit::require_root(name)
        || !twill_testkit::require_tool(name, "ping")
        || !twill_testkit::require_tool(name, "etcd")
    {
        return;
    }
    cluster_lifecycle("vxlan", true);
}

/// `--public-ip` other than the interface's address: what peers would see behind NAT.
/// host-gw refuses it with flanneld's message; vxlan takes it as the lease's PublicIP.
#[test]
fn host_gw_refuses_a_public_ip_that_is_not_the_interfaces() {
    if !twill_testkit::require_root("host_gw_refuses_a_public_ip_that_is_not_the_interfaces") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("twill-overlay-nat-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let underlay = Netns::new("ulnat");
    underlay.ip(&["link", "add", "br0", "type", "bridge"]);
    underlay.ip(&["link", "set", "br0", "up"]);
    let node = add_node(&underlay, &dir, 1);
    for (backend, refused) in [("host-gw", true), ("vxlan", false)] {
        let p = dir.join(format!("{backend}.json"));
        EmbeddedStore::new(&p)
            .set_config(&format!(
                r#"{{"Network":"10.244.0.0/16","Backend":{{"Type":"{backend}"}}}}"#
            ))
            .unwrap();
        let mut o = opts(&node, &dir);
        o.public_ip = Some(Ipv4Addr::new(203, 0, 113, 7));
        let agent = Agent::start(&node.ns, &StoreSpec::Embedded(p.clone()), o);
        if refused {
            let e = agent.thread.join().unwrap().unwrap_err();
            assert!(e.contains("your PublicIP differs from interface IP"), "{e}");
        } else {
            wait_until(
                "a lease with the public IP",
                Duration::from_secs(10),
                || std::fs::read_to_string(&p).is_ok_and(|t| t.contains("203.0.113.7")),
            );
            agent.stop();
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
