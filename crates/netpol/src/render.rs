//! One node's enforcement state: `iptables-restore` input for the `filter` table and
//! `ipset restore` input for the peer sets.
//!
//! # Chain naming scheme
//!
//! | chain | jumped from | holds |
//! | --- | --- | --- |
//! | `TWILL-NETPOL` | `FORWARD` and `INPUT` (the applier inserts the jumps) | conntrack ESTABLISHED,RELATED → RETURN first, then the two dispatchers |
//! | `TWILL-NP-EGRESS` | `TWILL-NETPOL` | `-s <pod ip>` → that pod's egress chain, for each local pod isolated for egress |
//! | `TWILL-NP-INGRESS` | `TWILL-NETPOL` | `-d <pod ip>` → that pod's ingress chain, for each local pod isolated for ingress |
//! | `TWILL-NPPE-<h(ns/pod)>` / `TWILL-NPPI-<h(ns/pod)>` | a dispatcher | one jump per selecting policy, RETURN once allowed, else `TWILL-NP-DENY` |
//! | `TWILL-NPE-<h(ns/policy)>` / `TWILL-NPI-<h(ns/policy)>` | pod chains | one rule per (rule, peer, port) that sets the allow mark |
//! | `TWILL-NP-DENY` | pod chains | REJECT (TCP reset, ICMP port unreachable) or DROP; its counters are the drop count |
//!
//! `h(x)` is the first 16 characters of base32(sha256(x)), which keeps every name within
//! iptables' 28-character limit (the scheme kube-proxy uses for `KUBE-SVC-*`). Sets are
//! `TWILL-NPS-<h(content key)>` (ipset names stop at 31 characters), refilled through a
//! temporary `TWILL-NPT-*` set and `swap`, so a set is never seen half-filled.
//!
//! # Bridged and routed traffic
//!
//! Two pods on one node talk across the `cni0` bridge; with br_netfilter on
//! (`net.bridge.bridge-nf-call-iptables=1` in the node's netns) those frames traverse
//! `FORWARD` like routed packets, so the same `-s`/`-d` dispatch catches both. A
//! `physdev` match is not needed: policy is decided by addresses, never by whether the
//! packet was bridged. Traffic between nodes is routed and judged on each node for the
//! pods that node hosts (the source's egress on its node, the destination's ingress on
//! its node); a pod talking to its own node enters through `INPUT`.
//!
//! # Why a mark
//!
//! One packet crosses `FORWARD` once on a node, yet it may need both its source's egress
//! and its destination's ingress judged there (two pods on one bridge). So a policy chain
//! does not ACCEPT: it sets mark bit `0x20000` (kube-proxy owns `0x4000` and `0x8000`), the
//! pod chain RETURNs when the bit is set and denies otherwise, and `TWILL-NETPOL` clears
//! the bit between the egress and the ingress pass.
//!
//! # Sets
//!
//! A selector peer is a `hash:ip` set of the matching pods' IPs, shared by every rule with
//! the same (namespace scope, pod selector), so the rule count grows with policies, not
//! with pod pairs. An `ipBlock` with `except` is a `hash:net` set whose excepts are
//! `nomatch` entries (the longest prefix decides); without `except` it is a plain `-s`/`-d`.
//! A named port is a `hash:ip,port` set of (pod IP, protocol:number) for every pod that
//! declares that name and protocol, matched on the destination (`dst,dst`): for ingress
//! that is the selected pod, for egress the peer pod, as the API resolves names.
//!
//! Limits: IPv4 only (IPv6 pods and CIDRs are left out of the v4 tables; an IPv6 data
//! plane needs an `ip6tables` rendering of the same plan).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net};
use sha2::{Digest, Sha256};
use twill_model::{
    ClusterNetworkPolicy, CnpAction, CnpPeer, CnpProtocol, CnpRule, CnpTier, NetworkPolicy,
    ObjectKey, PolicyPeer, PolicyPort, Protocol, TargetPort,
};

use crate::cluster::{Cluster, PolicyPod};
use crate::eval::pod_peer_matches;

pub const ROOT_CHAIN: &str = "TWILL-NETPOL";
pub const EGRESS_CHAIN: &str = "TWILL-NP-EGRESS";
pub const INGRESS_CHAIN: &str = "TWILL-NP-INGRESS";
pub const DENY_CHAIN: &str = "TWILL-NP-DENY";
/// The mark bit a policy chain sets when a rule admits the packet (a NetworkPolicy rule,
/// or a ClusterNetworkPolicy rule with action Accept).
pub const ALLOW_MARK: &str = "0x20000/0x20000";
/// A ClusterNetworkPolicy rule with action Deny matched.
pub const CNP_DENY_MARK: &str = "0x40000/0x40000";
/// A ClusterNetworkPolicy rule with action Pass matched: the rest of its tier is skipped.
pub const CNP_PASS_MARK: &str = "0x80000/0x80000";
/// No decision bit set (the guard in front of each ClusterNetworkPolicy of a tier).
const NO_PASS: &str = "0x0/0x80000";
const DECIDED: &str = "0x0/0xe0000";
const CLEAR_MARK: &str = "0x0/0xe0000";
const SET_PREFIX: &str = "TWILL-NPS-";
const TEMP_SET_PREFIX: &str = "TWILL-NPT-";

/// Whether a chain or set name belongs to this renderer (so stale ones may be removed).
pub fn is_owned_name(name: &str) -> bool {
    name == ROOT_CHAIN || name.starts_with("TWILL-NP")
}

/// What happens to a packet no rule admits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DenyAction {
    /// TCP reset for TCP, ICMP port unreachable otherwise: clients fail fast.
    #[default]
    Reject,
    Drop,
}

/// The flow log's kernel half: NFLOG rules in the pod chains, so the agent hears of
/// connection attempts the policies decided. Only a connection's first packet reaches a
/// pod chain (`TWILL-NETPOL` returns established ones first), so one record is one
/// attempt. `-m limit` caps what the kernel sends per pod chain and direction: a flood
/// of dropped packets costs the node at most `per_second` copies of 128 bytes each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowLogRules {
    /// The nfnetlink_log group the agent listens on.
    pub group: u16,
    /// Log admitted connections too (drops are always logged).
    pub allowed: bool,
    pub per_second: u32,
    pub burst: u32,
}

impl Default for FlowLogRules {
    fn default() -> Self {
        FlowLogRules {
            group: FLOW_LOG_GROUP,
            allowed: false,
            per_second: 100,
            burst: 200,
        }
    }
}

/// The default nfnetlink_log group (flannel and kube-proxy use none).
pub const FLOW_LOG_GROUP: u16 = 20_000;
/// Bytes of each logged packet copied to the agent: the IP and transport headers.
pub const FLOW_LOG_COPY: u32 = 128;

/// What an NFLOG prefix of these rules says: (admitted, ingress).
pub fn flow_prefix(prefix: &str) -> Option<(bool, bool)> {
    let rest = prefix.strip_prefix("twill-np ")?;
    let (verdict, dir) = rest.split_once(' ')?;
    let allowed = match verdict {
        "allow" => true,
        "drop" => false,
        _ => return None,
    };
    let ingress = match dir {
        "ingress" => true,
        "egress" => false,
        _ => return None,
    };
    Some((allowed, ingress))
}

/// `mark`: the decision bit the logged packet carries (none for the NetworkPolicy deny at
/// the end of a chain).
fn flow_log_rule(
    chain: &str,
    log: &FlowLogRules,
    allowed: bool,
    ingress: bool,
    mark: Option<&str>,
) -> String {
    format!(
        "-A {chain}{} -m limit --limit {}/sec --limit-burst {} -j NFLOG --nflog-prefix \"twill-np {} {}\" --nflog-group {} --nflog-size {FLOW_LOG_COPY}",
        mark.map(|m| format!(" -m mark --mark {m}"))
            .unwrap_or_default(),
        log.per_second,
        log.burst,
        if allowed { "allow" } else { "drop" },
        if ingress { "ingress" } else { "egress" },
        log.group,
    )
}

#[derive(Debug, Clone, Default)]
pub struct RenderOptions {
    pub deny: DenyAction,
    /// NFLOG rules for the flow log; `None` renders none.
    pub flow_log: Option<FlowLogRules>,
    /// Chains currently in the node's `filter` table (from `iptables-save`); owned ones
    /// that the new state no longer has are flushed and deleted in the same restore.
    pub existing_chains: Vec<String>,
}

/// The rendered state of one node.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeRules {
    /// `iptables-restore --noflush` input (filter table only).
    pub iptables: String,
    /// `ipset restore -exist` input.
    pub ipset: String,
    /// Every chain this state declares, sorted.
    pub chains: Vec<String>,
    /// Every set this state fills, sorted.
    pub sets: Vec<String>,
    /// `-A` rules in `iptables`.
    pub rule_count: usize,
    /// Total set entries.
    pub set_entries: usize,
    /// Local pods isolated for ingress / egress.
    pub isolated_ingress: usize,
    pub isolated_egress: usize,
}

impl NodeRules {
    /// Owned sets in `existing` that this state no longer uses: destroy them after the
    /// iptables restore has dropped every reference to them.
    pub fn stale_sets<'a>(&self, existing: &'a [String]) -> Vec<&'a str> {
        existing
            .iter()
            .filter(|s| is_owned_name(s) && self.sets.binary_search(s).is_err())
            .map(String::as_str)
            .collect()
    }
}

/// base32(sha256(input)), first 16 characters.
pub fn short_hash(input: &str) -> String {
    let digest = Sha256::digest(input.as_bytes());
    data_encoding::BASE32_NOPAD.encode(&digest)[..16].to_string()
}

pub fn pod_ingress_chain(pod: &ObjectKey) -> String {
    format!("TWILL-NPPI-{}", short_hash(&pod.to_string()))
}
pub fn pod_egress_chain(pod: &ObjectKey) -> String {
    format!("TWILL-NPPE-{}", short_hash(&pod.to_string()))
}
pub fn policy_ingress_chain(policy: &ObjectKey) -> String {
    format!("TWILL-NPI-{}", short_hash(&policy.to_string()))
}
pub fn policy_egress_chain(policy: &ObjectKey) -> String {
    format!("TWILL-NPE-{}", short_hash(&policy.to_string()))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum SetKind {
    Ip,
    Net,
    IpPort,
}

impl SetKind {
    fn as_str(self) -> &'static str {
        match self {
            SetKind::Ip => "hash:ip",
            SetKind::Net => "hash:net",
            SetKind::IpPort => "hash:ip,port",
        }
    }
}

#[derive(Debug, Default)]
struct Sets {
    /// name → (kind, entries)
    sets: BTreeMap<String, (SetKind, BTreeSet<String>)>,
}

impl Sets {
    /// Register a set under a content key; returns its name. Entries are computed once.
    fn get(
        &mut self,
        kind: SetKind,
        key: &str,
        entries: impl FnOnce() -> BTreeSet<String>,
    ) -> String {
        let name = format!("{SET_PREFIX}{}", short_hash(&format!("{kind:?}|{key}")));
        self.sets
            .entry(name.clone())
            .or_insert_with(|| (kind, entries()));
        name
    }
}

fn v4(ip: IpAddr) -> bool {
    ip.is_ipv4()
}

/// `hash:net` takes prefixes /1../32, so `/0` is written as its two halves.
fn net_entries(net: &IpNet) -> Vec<String> {
    match net {
        IpNet::V4(n) if n.prefix_len() == 0 => {
            vec!["0.0.0.0/1".to_string(), "128.0.0.0/1".to_string()]
        }
        IpNet::V4(n) => vec![
            Ipv4Net::new(n.network(), n.prefix_len())
                .map(|n| n.to_string())
                .unwrap_or_default(),
        ],
        IpNet::V6(_) => vec![],
    }
}

/// Which way a rule looks at the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    /// The packet field that holds the peer.
    fn peer_flag(self) -> &'static str {
        match self {
            Direction::Ingress => "src",
            Direction::Egress => "dst",
        }
    }
    fn peer_addr_flag(self) -> &'static str {
        match self {
            Direction::Ingress => "-s",
            Direction::Egress => "-d",
        }
    }
}

/// The match fragment for one peer, or `None` when the peer can never match (an IPv6
/// block in the v4 table).
fn peer_fragment(
    cluster: &Cluster,
    policy: &NetworkPolicy,
    peer: &PolicyPeer,
    dir: Direction,
    sets: &mut Sets,
) -> Option<String> {
    match peer {
        PolicyPeer::Pods {
            namespace_selector,
            pod_selector,
        } => {
            // The set is keyed by what it selects, so identical peers share one set.
            let scope = match namespace_selector {
                None => format!("ns={}", policy.key.namespace),
                Some(s) => format!("nssel={s:?}"),
            };
            let key = format!("{scope}|pods={pod_selector:?}");
            let name = sets.get(SetKind::Ip, &key, || {
                cluster
                    .pods
                    .values()
                    .filter(|p| v4(p.ip))
                    .filter(|p| {
                        pod_peer_matches(
                            cluster,
                            &policy.key.namespace,
                            namespace_selector.as_ref(),
                            pod_selector.as_ref(),
                            p,
                        )
                    })
                    .map(|p| p.ip.to_string())
                    .collect()
            });
            Some(format!("-m set --match-set {name} {}", dir.peer_flag()))
        }
        PolicyPeer::IpBlock { cidr, except } => {
            if !cidr.addr().is_ipv4() {
                return None;
            }
            if except.is_empty() {
                if cidr.prefix_len() == 0 {
                    return Some(String::new());
                }
                return Some(format!("{} {cidr}", dir.peer_addr_flag()));
            }
            let key = format!("{cidr}|except={except:?}");
            let name = sets.get(SetKind::Net, &key, || {
                let mut entries: BTreeSet<String> = net_entries(cidr).into_iter().collect();
                for x in except {
                    for e in net_entries(x) {
                        entries.insert(format!("{e} nomatch"));
                    }
                }
                entries
            });
            Some(format!("-m set --match-set {name} {}", dir.peer_flag()))
        }
    }
}

/// The match fragment for one port entry, or `None` when it can never match.
fn port_fragment(cluster: &Cluster, port: &PolicyPort, sets: &mut Sets) -> Option<String> {
    let proto = port.protocol.lower();
    match (&port.port, port.end_port) {
        (None, _) => Some(format!("-p {proto}")),
        (Some(TargetPort::Number(n)), None) => Some(format!("-p {proto} -m {proto} --dport {n}")),
        (Some(TargetPort::Number(n)), Some(end)) => {
            Some(format!("-p {proto} -m {proto} --dport {n}:{end}"))
        }
        (Some(TargetPort::Name(name)), _) => {
            let key = format!("port={name}/{}", port.protocol.as_str());
            let set = sets.get(SetKind::IpPort, &key, || {
                named_port_entries(cluster, name, port.protocol)
            });
            Some(format!("-p {proto} -m set --match-set {set} dst,dst"))
        }
    }
}

fn named_port_entries(cluster: &Cluster, name: &str, protocol: Protocol) -> BTreeSet<String> {
    cluster
        .pods
        .values()
        .filter(|p| v4(p.ip))
        .filter_map(|p| {
            p.find_port(name, protocol)
                .map(|n| format!("{},{}:{n}", p.ip, protocol.lower()))
        })
        .collect()
}

/// The rules of one policy chain: the cross product of each rule's peers and ports.
fn policy_chain_rules(
    cluster: &Cluster,
    policy: &NetworkPolicy,
    dir: Direction,
    chain: &str,
    sets: &mut Sets,
    out: &mut Vec<String>,
) {
    let rules = match dir {
        Direction::Ingress => &policy.ingress,
        Direction::Egress => &policy.egress,
    };
    for rule in rules {
        let peers: Vec<String> = if rule.peers.is_empty() {
            vec![String::new()]
        } else {
            rule.peers
                .iter()
                .filter_map(|p| peer_fragment(cluster, policy, p, dir, sets))
                .collect()
        };
        let ports: Vec<String> = if rule.ports.is_empty() {
            vec![String::new()]
        } else {
            rule.ports
                .iter()
                .filter_map(|p| port_fragment(cluster, p, sets))
                .collect()
        };
        for peer in &peers {
            for port in &ports {
                let mut line = format!("-A {chain}");
                for frag in [peer, port] {
                    if !frag.is_empty() {
                        line.push(' ');
                        line.push_str(frag);
                    }
                }
                let _ = write!(line, " -j MARK --set-xmark {ALLOW_MARK}");
                out.push(line);
            }
        }
    }
}

/// Render the state for the pods on `node`.
/// A ClusterNetworkPolicy's chain for one direction.
pub fn cnp_chain(name: &str, dir: Direction) -> String {
    match dir {
        Direction::Ingress => format!("TWILL-CNPI-{}", short_hash(name)),
        Direction::Egress => format!("TWILL-CNPE-{}", short_hash(name)),
    }
}

/// In a pod's chain: ask one ClusterNetworkPolicy (unless an earlier one of the tier
/// passed), then act on its decision: Accept returns (allowed), Deny refuses.
fn cnp_jump(
    cnp: &ClusterNetworkPolicy,
    dir: Direction,
    chain: &str,
    opts: &RenderOptions,
    out: &mut Vec<String>,
) {
    let ingress = dir == Direction::Ingress;
    out.push(format!(
        "-A {chain} -m mark --mark {NO_PASS} -j {}",
        cnp_chain(&cnp.name, dir)
    ));
    if let Some(log) = opts.flow_log.as_ref().filter(|l| l.allowed) {
        out.push(flow_log_rule(chain, log, true, ingress, Some(ALLOW_MARK)));
    }
    out.push(format!("-A {chain} -m mark --mark {ALLOW_MARK} -j RETURN"));
    if let Some(log) = &opts.flow_log {
        out.push(flow_log_rule(
            chain,
            log,
            false,
            ingress,
            Some(CNP_DENY_MARK),
        ));
    }
    out.push(format!(
        "-A {chain} -m mark --mark {CNP_DENY_MARK} -j {DENY_CHAIN}"
    ));
}

/// The peer matches of one ClusterNetworkPolicy peer; `None` when it matches nothing
/// here (a fail-closed peer in an Accept rule, IPv6 only).
fn cnp_peer_fragments(
    cluster: &Cluster,
    peer: &CnpPeer,
    dir: Direction,
    sets: &mut Sets,
) -> Option<Vec<String>> {
    let flag = dir.peer_flag();
    match peer {
        CnpPeer::Namespaces(sel) => {
            let name = sets.get(SetKind::Ip, &format!("cnp|ns={sel:?}"), || {
                cluster
                    .pods
                    .values()
                    .filter(|p| v4(p.ip))
                    .filter(|p| {
                        cluster
                            .namespace_labels(&p.key.namespace)
                            .is_some_and(|l| sel.matches(l))
                    })
                    .map(|p| p.ip.to_string())
                    .collect()
            });
            Some(vec![format!("-m set --match-set {name} {flag}")])
        }
        CnpPeer::Pods {
            namespace_selector,
            pod_selector,
        } => {
            let key = format!("cnp|ns={namespace_selector:?}|pods={pod_selector:?}");
            let name = sets.get(SetKind::Ip, &key, || {
                cluster
                    .pods
                    .values()
                    .filter(|p| v4(p.ip) && pod_selector.matches(&p.labels))
                    .filter(|p| {
                        cluster
                            .namespace_labels(&p.key.namespace)
                            .is_some_and(|l| namespace_selector.matches(l))
                    })
                    .map(|p| p.ip.to_string())
                    .collect()
            });
            Some(vec![format!("-m set --match-set {name} {flag}")])
        }
        CnpPeer::Nodes(sel) => {
            let name = sets.get(SetKind::Ip, &format!("cnp|nodes={sel:?}"), || {
                cluster
                    .nodes
                    .values()
                    .filter(|n| sel.matches(&n.labels))
                    .flat_map(|n| n.addresses.iter().copied())
                    .filter(|a| v4(*a))
                    .map(|a| a.to_string())
                    .collect()
            });
            Some(vec![format!("-m set --match-set {name} {flag}")])
        }
        CnpPeer::Networks(nets) => {
            let v4nets: Vec<&IpNet> = nets.iter().filter(|n| n.addr().is_ipv4()).collect();
            if v4nets.is_empty() {
                return None;
            }
            Some(
                v4nets
                    .iter()
                    .map(|n| {
                        if n.prefix_len() == 0 {
                            String::new()
                        } else {
                            format!("{} {n}", dir.peer_addr_flag())
                        }
                    })
                    .collect(),
            )
        }
        CnpPeer::DomainNames(_) | CnpPeer::Unknown => None,
    }
}

/// The port matches of a ClusterNetworkPolicy rule (one empty fragment: any).
fn cnp_protocol_fragments(cluster: &Cluster, rule: &CnpRule, sets: &mut Sets) -> Vec<String> {
    if rule.protocols.is_empty() {
        return vec![String::new()];
    }
    let mut out = Vec::new();
    for p in &rule.protocols {
        match p {
            CnpProtocol::Port { protocol, ports } => {
                let proto = protocol.lower();
                out.push(match ports {
                    None => format!("-p {proto}"),
                    Some((a, b)) if a == b => format!("-p {proto} -m {proto} --dport {a}"),
                    Some((a, b)) => format!("-p {proto} -m {proto} --dport {a}:{b}"),
                });
            }
            CnpProtocol::NamedPort(name) => {
                for protocol in [Protocol::Tcp, Protocol::Udp, Protocol::Sctp] {
                    let entries = named_port_entries(cluster, name, protocol);
                    if entries.is_empty() {
                        continue;
                    }
                    let key = format!("port={name}/{}", protocol.as_str());
                    let set = sets.get(SetKind::IpPort, &key, || entries);
                    out.push(format!(
                        "-p {} -m set --match-set {set} dst,dst",
                        protocol.lower()
                    ));
                }
            }
        }
    }
    out
}

/// One ClusterNetworkPolicy's chain: its rules in order, each line setting the rule's
/// decision bit, and a return as soon as a rule decided. A Deny or Pass rule with a peer
/// it cannot read denies everything (the API's fail-closed rule).
fn cnp_chain_rules(
    cluster: &Cluster,
    cnp: &ClusterNetworkPolicy,
    dir: Direction,
    chain: &str,
    sets: &mut Sets,
    out: &mut Vec<String>,
) {
    let rules = match dir {
        Direction::Ingress => &cnp.ingress,
        Direction::Egress => &cnp.egress,
    };
    for rule in rules {
        let mark = match rule.action {
            CnpAction::Accept => ALLOW_MARK,
            CnpAction::Deny => CNP_DENY_MARK,
            CnpAction::Pass => CNP_PASS_MARK,
        };
        if rule.action != CnpAction::Accept && rule.peers.iter().any(crate::eval::fails_closed) {
            out.push(format!("-A {chain} -j MARK --set-xmark {CNP_DENY_MARK}"));
            out.push(format!("-A {chain} -j RETURN"));
            break;
        }
        let protos = cnp_protocol_fragments(cluster, rule, sets);
        for peer in &rule.peers {
            let Some(peers) = cnp_peer_fragments(cluster, peer, dir, sets) else {
                continue;
            };
            for pf in &peers {
                for proto in &protos {
                    let matches: Vec<&str> = [pf.as_str(), proto.as_str()]
                        .into_iter()
                        .filter(|m| !m.is_empty())
                        .collect();
                    let sep = if matches.is_empty() { "" } else { " " };
                    out.push(format!(
                        "-A {chain}{sep}{} -j MARK --set-xmark {mark}",
                        matches.join(" ")
                    ));
                }
            }
        }
        out.push(format!("-A {chain} -m mark ! --mark {DECIDED} -j RETURN"));
    }
}

pub fn render_node(cluster: &Cluster, node: &str, opts: &RenderOptions) -> NodeRules {
    let mut sets = Sets::default();
    let mut chains: BTreeSet<String> = [ROOT_CHAIN, EGRESS_CHAIN, INGRESS_CHAIN, DENY_CHAIN]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut rules: Vec<String> = Vec::new();
    let mut pod_rules: Vec<String> = Vec::new();
    let mut policy_rules: Vec<String> = Vec::new();
    let mut policy_chains_done: BTreeSet<String> = BTreeSet::new();
    let (mut isolated_ingress, mut isolated_egress) = (0, 0);

    rules.push(format!(
        "-A {ROOT_CHAIN} -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN"
    ));
    rules.push(format!("-A {ROOT_CHAIN} -j MARK --set-xmark {CLEAR_MARK}"));
    rules.push(format!("-A {ROOT_CHAIN} -j {EGRESS_CHAIN}"));
    rules.push(format!("-A {ROOT_CHAIN} -j MARK --set-xmark {CLEAR_MARK}"));
    rules.push(format!("-A {ROOT_CHAIN} -j {INGRESS_CHAIN}"));
    rules.push(format!("-A {ROOT_CHAIN} -j MARK --set-xmark {CLEAR_MARK}"));

    let local: Vec<&PolicyPod> = cluster
        .pods
        .values()
        .filter(|p| p.node == node && v4(p.ip))
        .collect();
    let node_addrs: Vec<IpAddr> = cluster
        .nodes
        .get(node)
        .map(|n| n.addresses.iter().copied().filter(|a| v4(*a)).collect())
        .unwrap_or_default();

    let mut dispatch_egress = Vec::new();
    let mut dispatch_ingress = Vec::new();
    for pod in &local {
        for dir in [Direction::Egress, Direction::Ingress] {
            let isolated = match dir {
                Direction::Egress => cluster.isolated_for_egress(pod),
                Direction::Ingress => cluster.isolated_for_ingress(pod),
            };
            let ingress = dir == Direction::Ingress;
            if !cluster.governed(pod, ingress) {
                continue;
            }
            let chain = match dir {
                Direction::Egress => {
                    isolated_egress += 1;
                    dispatch_egress.push(format!(
                        "-A {EGRESS_CHAIN} -s {}/32 -j {}",
                        pod.ip,
                        pod_egress_chain(&pod.key)
                    ));
                    pod_egress_chain(&pod.key)
                }
                Direction::Ingress => {
                    isolated_ingress += 1;
                    dispatch_ingress.push(format!(
                        "-A {INGRESS_CHAIN} -d {}/32 -j {}",
                        pod.ip,
                        pod_ingress_chain(&pod.key)
                    ));
                    pod_ingress_chain(&pod.key)
                }
            };
            chains.insert(chain.clone());
            if dir == Direction::Ingress {
                // The pod's own node may always reach it (kubelet probes).
                for a in &node_addrs {
                    pod_rules.push(format!("-A {chain} -s {a}/32 -j RETURN"));
                }
            }
            // The Admin tier decides first (a Pass skips the rest of the tier).
            let admin = cluster.tier_for(CnpTier::Admin, pod, ingress);
            for cnp in &admin {
                cnp_jump(cnp, dir, &chain, opts, &mut pod_rules);
                let cchain = cnp_chain(&cnp.name, dir);
                if policy_chains_done.insert(cchain.clone()) {
                    chains.insert(cchain.clone());
                    cnp_chain_rules(cluster, cnp, dir, &cchain, &mut sets, &mut policy_rules);
                }
            }
            if !admin.is_empty() {
                pod_rules.push(format!("-A {chain} -j MARK --set-xmark {NO_PASS}"));
            }
            if !isolated {
                // No NetworkPolicy isolates the pod: the Baseline tier decides, and
                // what it leaves undecided is allowed.
                for cnp in cluster.tier_for(CnpTier::Baseline, pod, ingress) {
                    cnp_jump(cnp, dir, &chain, opts, &mut pod_rules);
                    let cchain = cnp_chain(&cnp.name, dir);
                    if policy_chains_done.insert(cchain.clone()) {
                        chains.insert(cchain.clone());
                        cnp_chain_rules(cluster, cnp, dir, &cchain, &mut sets, &mut policy_rules);
                    }
                }
                continue;
            }
            for policy in cluster.selecting(pod) {
                let (applies, pchain) = match dir {
                    Direction::Egress => {
                        (policy.egress_isolation, policy_egress_chain(&policy.key))
                    }
                    Direction::Ingress => {
                        (policy.ingress_isolation, policy_ingress_chain(&policy.key))
                    }
                };
                if !applies {
                    continue;
                }
                pod_rules.push(format!("-A {chain} -j {pchain}"));
                if let Some(log) = opts.flow_log.as_ref().filter(|l| l.allowed) {
                    pod_rules.push(flow_log_rule(
                        &chain,
                        log,
                        true,
                        dir == Direction::Ingress,
                        Some(ALLOW_MARK),
                    ));
                }
                pod_rules.push(format!("-A {chain} -m mark --mark {ALLOW_MARK} -j RETURN"));
                if policy_chains_done.insert(pchain.clone()) {
                    chains.insert(pchain.clone());
                    policy_chain_rules(cluster, policy, dir, &pchain, &mut sets, &mut policy_rules);
                }
            }
            // Broken policies selecting the pod add no jumps: they admit nothing.
            if let Some(log) = &opts.flow_log {
                pod_rules.push(flow_log_rule(
                    &chain,
                    log,
                    false,
                    dir == Direction::Ingress,
                    None,
                ));
            }
            pod_rules.push(format!("-A {chain} -j {DENY_CHAIN}"));
        }
    }
    rules.extend(dispatch_egress);
    rules.extend(dispatch_ingress);
    rules.extend(pod_rules);
    rules.extend(policy_rules);
    match opts.deny {
        DenyAction::Reject => {
            rules.push(format!(
                "-A {DENY_CHAIN} -p tcp -j REJECT --reject-with tcp-reset"
            ));
            rules.push(format!(
                "-A {DENY_CHAIN} -j REJECT --reject-with icmp-port-unreachable"
            ));
        }
        DenyAction::Drop => rules.push(format!("-A {DENY_CHAIN} -j DROP")),
    }

    let stale: BTreeSet<&String> = opts
        .existing_chains
        .iter()
        .filter(|c| is_owned_name(c) && !chains.contains(*c))
        .collect();
    let mut ipt = String::from("*filter\n");
    for c in chains.iter().chain(stale.iter().copied()) {
        let _ = writeln!(ipt, ":{c} - [0:0]");
    }
    for r in &rules {
        ipt.push_str(r);
        ipt.push('\n');
    }
    for c in &stale {
        let _ = writeln!(ipt, "-X {c}");
    }
    ipt.push_str("COMMIT\n");

    let mut ipset = String::new();
    let mut set_entries = 0;
    for (name, (kind, entries)) in &sets.sets {
        let temp = format!("{TEMP_SET_PREFIX}{}", &name[SET_PREFIX.len()..]);
        let k = kind.as_str();
        let _ = writeln!(ipset, "create {name} {k} family inet");
        let _ = writeln!(ipset, "create {temp} {k} family inet");
        let _ = writeln!(ipset, "flush {temp}");
        for e in entries {
            let _ = writeln!(ipset, "add {temp} {e}");
        }
        let _ = writeln!(ipset, "swap {temp} {name}");
        let _ = writeln!(ipset, "destroy {temp}");
        set_entries += entries.len();
    }

    NodeRules {
        iptables: ipt,
        ipset,
        chains: chains.into_iter().collect(),
        sets: sets.sets.keys().cloned().collect(),
        rule_count: rules.len(),
        set_entries,
        isolated_ingress,
        isolated_egress,
    }
}
