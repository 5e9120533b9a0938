//! A small netns cluster for checking enforcement with real connections.
//!
//! ```text
//!   ext (external hosts: every non-pod, non-node address the probes use, on lo)
//!    │ eth0 100.127.255.254/32
//!   ul: bridge br0  (the underlay L2 segment)
//!    │ eth0 <node ip>/32           │ eth0 <node ip>/32
//!   node-1: cni0 <gw>/<podCIDR>    node-2: cni0 ...       (br_netfilter on, ip_forward on)
//!    │ veth per pod                 │
//!   pod netns: eth0 <pod ip>, default via gw, a listener per declared TCP/UDP port
//! ```
//!
//! Routes are /32 on-link across the underlay plus each node's pod CIDR via its node IP,
//! so pod traffic keeps its source address end to end (no masquerade), as on a flannel
//! host-gw cluster. Service ClusterIPs are DNATed to their backend on every node (a
//! minimal stand-in for the proxy), so policy sees the connection after DNAT. Policy rules
//! are applied through the real path: `twill_netpol_agent::apply::sync_node` in each node's netns.
//!
//! Not probed in the kernel: a pod probing itself (that traffic never leaves the pod's
//! netns; see the corpus README on the diagonal), SCTP when the kernel has no SCTP, and
//! IPv6.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use twill_model::{ObjectKey, Protocol};
use twill_netfilter::{Family, iptables_restore, run_with_input};
use twill_netpol::{DenyAction, RenderOptions};

use super::corpus::{Connection, Target, World};
use super::netns::{Netns, NetnsError, enter};
use super::probe::{probe, spawn_listener};
use twill_netpol_agent::apply::{ApplyError, sync_node};

const EXT_IP: Ipv4Addr = Ipv4Addr::new(100, 127, 255, 254);
const SVC_CHAIN: &str = "TWILL-NPH-SVC";

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HarnessError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error("{0}")]
    Setup(String),
}

#[derive(Debug, Clone)]
pub struct HarnessOptions {
    pub deny: DenyAction,
    pub timeout: Duration,
    /// Probes in flight at once.
    pub parallel: usize,
}

impl Default for HarnessOptions {
    fn default() -> Self {
        Self {
            deny: DenyAction::Reject,
            timeout: Duration::from_millis(1000),
            parallel: 96,
        }
    }
}

/// What a scenario's probes need beyond pods: external addresses and listeners.
#[derive(Debug, Clone, Default)]
pub struct ProbePlan {
    /// Addresses owned by the external host (sources and destinations).
    pub external_ips: BTreeSet<IpAddr>,
    /// (address, port, protocol) served by the external host.
    pub external_ports: BTreeSet<(IpAddr, u16, Protocol)>,
    /// Node name → (address, port, protocol) its own netns serves.
    pub node_ports: BTreeMap<String, BTreeSet<(IpAddr, u16, Protocol)>>,
    /// Nodes that pods will be created on later (so the harness builds them up front).
    pub extra_nodes: BTreeSet<String>,
    /// Pod IPs per node over the whole scenario (to derive a pod CIDR when none is given).
    pub node_pod_ips: BTreeMap<String, BTreeSet<IpAddr>>,
}

impl ProbePlan {
    /// Record a resolved connection.
    pub fn add(&mut self, world: &World, c: &Connection) {
        if let Target::Ip(ip) = c.src
            && node_of_address(world, ip).is_none()
        {
            self.external_ips.insert(ip);
        }
        if let Target::Ip(ip) = c.dst {
            match node_of_address(world, ip) {
                Some(node) => {
                    self.node_ports
                        .entry(node)
                        .or_default()
                        .insert((ip, c.dst_port, c.protocol));
                }
                None => {
                    self.external_ips.insert(ip);
                    self.external_ports.insert((ip, c.dst_port, c.protocol));
                }
            }
        }
    }

    pub fn add_pods(&mut self, world: &World) {
        for p in world.cluster.pods.values() {
            self.extra_nodes.insert(p.node.clone());
            self.node_pod_ips
                .entry(p.node.clone())
                .or_default()
                .insert(p.ip);
        }
    }
}

fn node_of_address(world: &World, ip: IpAddr) -> Option<String> {
    world
        .cluster
        .nodes
        .values()
        .find(|n| n.addresses.contains(&ip))
        .map(|n| n.name.clone())
}

struct NodeNs {
    ns: Netns,
    ip: Ipv4Addr,
    prefix: u8,
    gw: Ipv4Addr,
    cidr: (Ipv4Addr, u8),
}

struct PodNs {
    ns: Netns,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Drop for PodNs {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

pub struct Harness {
    opts: HarnessOptions,
    // Field order is drop order: pods and listeners first, then nodes, then the rest.
    pods: BTreeMap<ObjectKey, PodNs>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    nodes: BTreeMap<String, NodeNs>,
    ext: Netns,
    _ul: Netns,
    veths: usize,
}

impl Drop for Harness {
    fn drop(&mut self) {
        // Tell every listener first, so their idle timeouts run out together rather than
        // one pod after another.
        for p in self.pods.values() {
            p.stop.store(true, Ordering::Relaxed);
        }
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn v4(ip: IpAddr) -> Option<Ipv4Addr> {
    match ip {
        IpAddr::V4(a) => Some(a),
        IpAddr::V6(_) => None,
    }
}

fn mask(ip: Ipv4Addr, prefix: u8) -> Ipv4Addr {
    let m = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    };
    Ipv4Addr::from(u32::from(ip) & m)
}

fn in_net(ip: Ipv4Addr, net: (Ipv4Addr, u8)) -> bool {
    mask(ip, net.1) == net.0
}

fn parse_cidr(s: &str) -> Option<(Ipv4Addr, u8)> {
    let (a, p) = s.split_once('/')?;
    let a: Ipv4Addr = a.parse().ok()?;
    let p: u8 = p.parse().ok()?;
    (p <= 32).then(|| (mask(a, p), p))
}

impl Harness {
    /// Build the underlay, the external host and every node the scenario uses.
    pub fn new(
        world: &World,
        plan: &ProbePlan,
        opts: HarnessOptions,
    ) -> Result<Self, HarnessError> {
        super::netns::sweep_stale();
        let ul = super::netns::create("ul")?;
        ul.ip(&["link", "add", "br0", "type", "bridge"])?;
        ul.ip(&["link", "set", "br0", "up"])?;
        let ext = super::netns::create("ext")?;
        let stop = Arc::new(AtomicBool::new(false));
        let mut h = Harness {
            opts,
            pods: BTreeMap::new(),
            stop,
            threads: Vec::new(),
            nodes: BTreeMap::new(),
            ext,
            _ul: ul,
            veths: 0,
        };
        h.underlay_port(&h.ext, "x0")?;
        h.ext
            .ip(&["addr", "add", &format!("{EXT_IP}/32"), "dev", "eth0"])?;
        for ip in plan.external_ips.iter().filter_map(|ip| v4(*ip)) {
            h.ext
                .ip(&["addr", "add", &format!("{ip}/32"), "dev", "lo"])?;
        }
        sysctls(&h.ext, false)?;

        // Nodes: those the cluster names, plus any a pod sits on.
        let mut names: BTreeSet<String> = world.cluster.nodes.keys().cloned().collect();
        names.extend(plan.extra_nodes.iter().cloned());
        let mut synthetic = 10u8;
        for (i, name) in names.iter().enumerate() {
            let spec = world.node_specs.iter().find(|n| &n.name == name);
            let ip = match spec.and_then(|s| v4(s.ip)) {
                Some(ip) => ip,
                None => {
                    synthetic += 1;
                    Ipv4Addr::new(100, 127, 0, synthetic)
                }
            };
            let pod_ips: Vec<Ipv4Addr> = plan
                .node_pod_ips
                .get(name)
                .into_iter()
                .flatten()
                .filter_map(|ip| v4(*ip))
                .collect();
            let cidr = spec
                .and_then(|s| s.pod_cidr.as_deref())
                .and_then(parse_cidr)
                .unwrap_or_else(|| {
                    let first = pod_ips
                        .first()
                        .copied()
                        .unwrap_or(Ipv4Addr::new(10, 250, i as u8, 0));
                    let mut p = 24;
                    while p > 8 && !pod_ips.iter().all(|ip| in_net(*ip, (mask(first, p), p))) {
                        p -= 1;
                    }
                    (mask(first, p), p)
                });
            let addresses: Vec<Ipv4Addr> = spec
                .map(|s| s.addresses.iter().filter_map(|a| v4(*a)).collect())
                .unwrap_or_default();
            let gw = addresses
                .iter()
                .copied()
                .find(|a| in_net(*a, cidr))
                .unwrap_or_else(|| {
                    let base = u32::from(cidr.0);
                    (1..)
                        .map(|k| Ipv4Addr::from(base + k))
                        .find(|a| !pod_ips.contains(a))
                        .unwrap_or(Ipv4Addr::from(base + 1))
                });
            let ns = super::netns::create(&format!("n{i}"))?;
            let node = NodeNs {
                ns,
                ip,
                prefix: 32,
                gw,
                cidr,
            };
            h.underlay_port(&node.ns, &format!("n{i}"))?;
            node.ns.ip(&[
                "addr",
                "add",
                &format!("{ip}/{}", node.prefix),
                "dev",
                "eth0",
            ])?;
            // A fixed MAC: a bridge otherwise takes its lowest port's MAC, which changes
            // when that pod goes away and leaves every other pod's gateway ARP entry stale.
            let mac = format!("02:74:77:00:00:{:02x}", i + 1);
            node.ns
                .ip(&["link", "add", "cni0", "address", &mac, "type", "bridge"])?;
            node.ns
                .ip(&["addr", "add", &format!("{gw}/{}", cidr.1), "dev", "cni0"])?;
            node.ns.ip(&["link", "set", "cni0", "up"])?;
            for a in addresses.iter().filter(|a| **a != gw && **a != ip) {
                node.ns
                    .ip(&["addr", "add", &format!("{a}/32"), "dev", "lo"])?;
            }
            sysctls(&node.ns, true)?;
            h.nodes.insert(name.clone(), node);
        }
        // Routes: every node and the external host reach every node and pod CIDR.
        let table: Vec<(Ipv4Addr, (Ipv4Addr, u8))> =
            h.nodes.values().map(|n| (n.ip, n.cidr)).collect();
        for node in h.nodes.values() {
            for (ip, cidr) in table.iter().filter(|(ip, _)| *ip != node.ip) {
                node.ns
                    .ip(&["route", "add", &format!("{ip}/32"), "dev", "eth0"])?;
                let net = format!("{}/{}", cidr.0, cidr.1);
                node.ns.ip(&[
                    "route",
                    "add",
                    &net,
                    "via",
                    &ip.to_string(),
                    "dev",
                    "eth0",
                    "onlink",
                ])?;
            }
            node.ns
                .ip(&["route", "add", &format!("{EXT_IP}/32"), "dev", "eth0"])?;
            node.ns.ip(&[
                "route",
                "add",
                "default",
                "via",
                &EXT_IP.to_string(),
                "dev",
                "eth0",
                "onlink",
            ])?;
        }
        for (ip, cidr) in &table {
            h.ext
                .ip(&["route", "add", &format!("{ip}/32"), "dev", "eth0"])?;
            let net = format!("{}/{}", cidr.0, cidr.1);
            h.ext.ip(&[
                "route",
                "add",
                &net,
                "via",
                &ip.to_string(),
                "dev",
                "eth0",
                "onlink",
            ])?;
        }
        // External clients reach a ClusterIP through its backend's node (where the DNAT is).
        for svc in &world.services {
            let Some(cip) = v4(svc.cluster_ip) else {
                continue;
            };
            let backend = svc.ports.iter().find_map(|sp| {
                let proto = Protocol::parse(&sp.protocol)?;
                world
                    .service_backends(svc, sp.port, proto)
                    .into_iter()
                    .next()
                    .map(|(p, _)| p.node.clone())
            });
            if let Some(node) = backend.and_then(|n| h.nodes.get(&n)) {
                let via = node.ip.to_string();
                h.ext.ip(&[
                    "route",
                    "replace",
                    &format!("{cip}/32"),
                    "via",
                    &via,
                    "dev",
                    "eth0",
                    "onlink",
                ])?;
            }
        }
        // Listeners outside pods.
        for (ip, port, proto) in &plan.external_ports {
            if let (Some(ip), false) = (v4(*ip), *proto == Protocol::Sctp) {
                let t = spawn_listener(h.ext.path(), ip, *port, *proto, h.stop.clone())
                    .map_err(HarnessError::Setup)?;
                h.threads.push(t);
            }
        }
        for (node, ports) in &plan.node_ports {
            let Some(n) = h.nodes.get(node) else { continue };
            for (ip, port, proto) in ports {
                if let (Some(ip), false) = (v4(*ip), *proto == Protocol::Sctp) {
                    let t = spawn_listener(n.ns.path(), ip, *port, *proto, h.stop.clone())
                        .map_err(HarnessError::Setup)?;
                    h.threads.push(t);
                }
            }
        }
        Ok(h)
    }

    /// A veth from `ns` (`eth0`) to the underlay bridge (`port`).
    fn underlay_port(&self, ns: &Netns, port: &str) -> Result<(), HarnessError> {
        ns.ip(&[
            "link",
            "add",
            "eth0",
            "type",
            "veth",
            "peer",
            "name",
            port,
            "netns",
            self._ul.name(),
        ])?;
        self._ul.ip(&["link", "set", port, "master", "br0", "up"])?;
        ns.ip(&["link", "set", "eth0", "up"])?;
        Ok(())
    }

    /// Create netns, veth and listeners for pods new in `world`; remove pods gone from it.
    pub fn sync_pods(&mut self, world: &World) -> Result<(), HarnessError> {
        self.sync_pods_where(world, |_| true)
    }

    /// [`Harness::sync_pods`] for the pods `keep` accepts only (a benchmark models many
    /// pods but runs a few).
    pub fn sync_pods_where(
        &mut self,
        world: &World,
        keep: impl Fn(&ObjectKey) -> bool,
    ) -> Result<(), HarnessError> {
        let gone: Vec<ObjectKey> = self
            .pods
            .keys()
            .filter(|k| !world.cluster.pods.contains_key(*k))
            .cloned()
            .collect();
        for k in gone {
            self.pods.remove(&k);
        }
        for pod in world.cluster.pods.values() {
            if self.pods.contains_key(&pod.key) || !keep(&pod.key) {
                continue;
            }
            let Some(ip) = v4(pod.ip) else { continue };
            let node = self.nodes.get(&pod.node).ok_or_else(|| {
                HarnessError::Setup(format!("pod {} is on unknown node {}", pod.key, pod.node))
            })?;
            let ns = super::netns::create("p")?;
            self.veths += 1;
            let host = format!("vp{}", self.veths);
            node.ns.ip(&[
                "link",
                "add",
                &host,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                ns.name(),
            ])?;
            node.ns
                .ip(&["link", "set", &host, "master", "cni0", "up"])?;
            ns.ip(&[
                "addr",
                "add",
                &format!("{ip}/{}", node.cidr.1),
                "dev",
                "eth0",
            ])?;
            ns.ip(&["link", "set", "eth0", "up"])?;
            ns.ip(&[
                "route",
                "add",
                "default",
                "via",
                &node.gw.to_string(),
                "dev",
                "eth0",
            ])?;
            let stop = Arc::new(AtomicBool::new(false));
            let mut threads = Vec::new();
            let ports: BTreeSet<(u16, Protocol)> =
                pod.ports.iter().map(|p| (p.port, p.protocol)).collect();
            for (port, proto) in ports {
                if proto != Protocol::Sctp {
                    threads.push(
                        spawn_listener(ns.path(), Ipv4Addr::UNSPECIFIED, port, proto, stop.clone())
                            .map_err(HarnessError::Setup)?,
                    );
                }
            }
            self.pods
                .insert(pod.key.clone(), PodNs { ns, stop, threads });
        }
        Ok(())
    }

    /// Render and apply the policy state on every node, refresh the service DNAT, and
    /// forget connection tracking (so an earlier step's flows cannot carry over).
    /// Returns (rules, sets) summed over nodes.
    pub fn apply(&self, world: &World) -> Result<(usize, usize), HarnessError> {
        let nat = render_service_nat(world);
        let (mut rules, mut sets) = (0, 0);
        for (name, node) in &self.nodes {
            let opts = RenderOptions {
                deny: self.opts.deny,
                ..Default::default()
            };
            let r = node.ns.run(|| sync_node(&world.cluster, name, opts))??;
            rules += r.rule_count;
            sets += r.sets.len();
            node.ns.run(|| -> Result<(), HarnessError> {
                iptables_restore(Family::V4, &nat)
                    .map_err(|e| HarnessError::Setup(format!("node {name}: nat: {e}")))?;
                for hook in ["PREROUTING", "OUTPUT"] {
                    let args = ["-w", "5", "-t", "nat", "-C", hook, "-j", SVC_CHAIN];
                    if run_with_input("iptables", &args, b"").is_err() {
                        run_with_input(
                            "iptables",
                            &["-w", "5", "-t", "nat", "-I", hook, "1", "-j", SVC_CHAIN],
                            b"",
                        )
                        .map_err(|e| HarnessError::Setup(format!("node {name}: nat jump: {e}")))?;
                    }
                }
                let _ = run_with_input("conntrack", &["-F"], b"");
                Ok(())
            })??;
        }
        Ok((rules, sets))
    }

    /// The netns path of a running pod.
    pub fn pod_netns(&self, key: &ObjectKey) -> Option<PathBuf> {
        self.pods.get(key).map(|p| p.ns.path())
    }

    /// Run `f` inside a node's netns.
    pub fn in_node<R: Send>(&self, node: &str, f: impl FnOnce() -> R + Send) -> Option<R> {
        self.nodes.get(node).and_then(|n| n.ns.run(f).ok())
    }

    /// Where a connection's client runs: a netns path and the source address to bind.
    fn client(&self, world: &World, c: &Connection) -> Option<(PathBuf, Option<IpAddr>)> {
        match &c.src {
            Target::Pod(k) => self.pods.get(k).map(|p| (p.ns.path(), None)),
            Target::Ip(ip) => match node_of_address(world, *ip) {
                Some(n) => self.nodes.get(&n).map(|n| (n.ns.path(), Some(*ip))),
                None => Some((self.ext.path(), Some(*ip))),
            },
        }
    }

    /// Probe every connection with a real client; `None` where the kernel run does not
    /// apply (self-probes, SCTP without kernel support, IPv6).
    pub fn probe_all(&self, world: &World, conns: &[Connection]) -> Vec<Option<bool>> {
        let sctp = super::probe::sctp_supported();
        let jobs: Vec<Option<ProbeJob>> = conns
            .iter()
            .map(|c| {
                let self_probe =
                    matches!((&c.src, &c.dst), (Target::Pod(a), Target::Pod(b)) if a == b);
                if self_probe || (c.protocol == Protocol::Sctp && !sctp) {
                    return None;
                }
                let (path, bind) = self.client(world, c)?;
                Some((path, bind, c.dial_ip, c.dial_port, c.protocol))
            })
            .collect();
        let timeout = self.opts.timeout;
        let mut out = Vec::with_capacity(jobs.len());
        for chunk in jobs.chunks(self.opts.parallel.max(1)) {
            let results: Vec<Option<bool>> = std::thread::scope(|s| {
                let handles: Vec<_> = chunk
                    .iter()
                    .map(|job| {
                        s.spawn(move || {
                            let (path, bind, ip, port, proto) = job.as_ref()?;
                            enter(path).ok()?;
                            probe(*bind, *ip, *port, *proto, timeout)
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().ok().flatten())
                    .collect()
            });
            out.extend(results);
        }
        out
    }
}

/// Client netns, source to bind, destination, port, protocol.
type ProbeJob = (PathBuf, Option<IpAddr>, IpAddr, u16, Protocol);

fn sysctls(ns: &Netns, node: bool) -> Result<(), HarnessError> {
    let mut keys = vec![
        "net.ipv4.ip_forward=1",
        "net.ipv4.conf.all.rp_filter=0",
        "net.ipv4.conf.default.rp_filter=0",
    ];
    if node {
        // Per-netns: bridged pod traffic on cni0 goes through iptables (br_netfilter).
        keys.push("net.bridge.bridge-nf-call-iptables=1");
    }
    for k in keys {
        ns.exec("sysctl", &["-q", "-w", k])?;
    }
    Ok(())
}

/// DNAT every ClusterIP port to its first backend (a stand-in for the service proxy).
pub fn render_service_nat(world: &World) -> String {
    let mut out = format!("*nat\n:{SVC_CHAIN} - [0:0]\n");
    for svc in &world.services {
        let Some(cip) = v4(svc.cluster_ip) else {
            continue;
        };
        for sp in &svc.ports {
            let Some(proto) = Protocol::parse(&sp.protocol) else {
                continue;
            };
            if let Some((pod, target)) = world
                .service_backends(svc, sp.port, proto)
                .into_iter()
                .next()
            {
                out.push_str(&format!(
                    "-A {SVC_CHAIN} -d {cip}/32 -p {p} -m {p} --dport {} -j DNAT --to-destination {}:{target}\n",
                    sp.port,
                    pod.ip,
                    p = proto.lower()
                ));
            }
        }
    }
    out.push_str("COMMIT\n");
    out
}
