//! The flow log: connection attempts the NetworkPolicy rules decided on this node, each
//! with its pods, its verdict and the policy (and rule) that decided it.
//!
//! The kernel half is the pod chains' NFLOG rules ([`twill_netpol::render::FlowLogRules`]):
//! a refused connection's first packet is copied (128 bytes: the IP and transport
//! headers) to an nfnetlink_log group before the deny, an admitted one (when asked) after
//! the policy that admitted it. Only first packets reach those chains, so a record is an
//! attempt, not a packet. This half reads the copies ([`FlowLog::start`], one thread on a
//! netfilter netlink socket, messages decoded by `netlink-packet-netfilter`), names the
//! pods and the deciding policy from the agent's cluster state
//! ([`twill_netpol::explain::decide`], the same words `twill trace` uses), and keeps the
//! newest records in a ring of fixed size.
//!
//! Bounds, so a flood cannot hurt the node: the kernel's `-m limit` per pod chain; at
//! most [`FlowLogOptions::per_second`] records a second here (the rest are counted as
//! lost); a ring of [`FlowLogOptions::capacity`] records; counters labelled only by the
//! policies in the current state.

use std::collections::{BTreeSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use twill_model::{ClusterState, Protocol};
use twill_netpol::Cluster;
use twill_netpol::explain::{decide_in, pod_by_ip};
use twill_netpol::render::flow_prefix;

/// What the flow log keeps and how fast it takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowLogOptions {
    /// Records kept (the oldest go first).
    pub capacity: usize,
    /// Records taken per second at most; the rest are counted in
    /// `twill_netpol_flows_lost_total`.
    pub per_second: u32,
    /// The rules reject refused connections (TCP reset, ICMP) rather than drop them: the
    /// sentences say `rejected` (the verdict field stays `dropped`, as for any refusal).
    pub rejects: bool,
}

impl Default for FlowLogOptions {
    fn default() -> Self {
        FlowLogOptions {
            capacity: 10_000,
            per_second: 1_000,
            rejects: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Allowed,
    Dropped,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allowed => "allowed",
            Verdict::Dropped => "dropped",
        }
    }
}

/// One end of a flow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowEnd {
    pub ip: IpAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// `namespace/name` when a pod has this address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
}

/// One connection attempt a policy decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flow {
    /// Increases by one per record on this node (`?since=` continues from it).
    pub seq: u64,
    /// RFC 3339, when the agent read the kernel's copy.
    pub time: String,
    pub node: String,
    pub verdict: Verdict,
    /// `ingress` (the destination pod's policies decided) or `egress` (the source's).
    pub direction: String,
    pub protocol: String,
    pub src: FlowEnd,
    pub dst: FlowEnd,
    /// The NetworkPolicies isolating the pod in this direction.
    pub policies: Vec<String>,
    /// The policy and rule that admitted it (`shop/db-ingress#1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// The decision in one sentence.
    pub reason: String,
}

/// The parts of a logged packet a flow needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketHeaders {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IP protocol number.
    pub proto: u8,
    pub sport: Option<u16>,
    pub dport: Option<u16>,
}

/// Read the IP header (v4 or v6 without extension headers) and, for TCP, UDP and SCTP,
/// the ports. Hand-written: twenty bytes at fixed offsets, not worth a packet crate.
pub fn parse_headers(p: &[u8]) -> Option<PacketHeaders> {
    let (src, dst, proto, l4) = match p.first()? >> 4 {
        4 => {
            let ihl = usize::from(p.first()? & 0x0f) * 4;
            if ihl < 20 || p.len() < 20 {
                return None;
            }
            let src = Ipv4Addr::new(p[12], p[13], p[14], p[15]);
            let dst = Ipv4Addr::new(p[16], p[17], p[18], p[19]);
            // A later fragment carries no transport header.
            let frag_offset = u16::from_be_bytes([p[6], p[7]]) & 0x1fff;
            let l4 = if frag_offset == 0 { p.get(ihl..) } else { None };
            (IpAddr::V4(src), IpAddr::V4(dst), p[9], l4)
        }
        6 => {
            if p.len() < 40 {
                return None;
            }
            let src: [u8; 16] = p[8..24].try_into().ok()?;
            let dst: [u8; 16] = p[24..40].try_into().ok()?;
            (
                IpAddr::V6(Ipv6Addr::from(src)),
                IpAddr::V6(Ipv6Addr::from(dst)),
                p[6],
                p.get(40..),
            )
        }
        _ => return None,
    };
    let ports = match (proto, l4) {
        (6 | 17 | 132, Some(t)) if t.len() >= 4 => Some((
            u16::from_be_bytes([t[0], t[1]]),
            u16::from_be_bytes([t[2], t[3]]),
        )),
        _ => None,
    };
    Some(PacketHeaders {
        src,
        dst,
        proto,
        sport: ports.map(|p| p.0),
        dport: ports.map(|p| p.1),
    })
}

fn protocol(n: u8) -> (String, Option<Protocol>) {
    match n {
        6 => ("TCP".into(), Some(Protocol::Tcp)),
        17 => ("UDP".into(), Some(Protocol::Udp)),
        132 => ("SCTP".into(), Some(Protocol::Sctp)),
        1 => ("ICMP".into(), None),
        58 => ("ICMPv6".into(), None),
        n => (n.to_string(), None),
    }
}

/// A logged packet in Kubernetes terms (pure): `allowed`/`ingress` come from the
/// rule's prefix.
/// `refused`: how the sentences word a refusal (`dropped`, `rejected`); `policies`: the
/// policy view of `state` when already built (see [`decide_in`]).
#[allow(clippy::too_many_arguments)]
pub fn describe(
    state: &ClusterState,
    policies: Option<&Cluster>,
    node: &str,
    h: &PacketHeaders,
    allowed: bool,
    ingress: bool,
    refused: &str,
) -> Flow {
    let end = |ip: IpAddr, port: Option<u16>| FlowEnd {
        ip,
        port,
        pod: pod_by_ip(state, ip).map(|p| p.key.to_string()),
    };
    let verdict = if allowed {
        Verdict::Allowed
    } else {
        Verdict::Dropped
    };
    let word = if allowed { "allowed" } else { refused };
    let (proto_name, proto) = protocol(h.proto);
    let (pod_ip, peer) = if ingress {
        (h.dst, h.src)
    } else {
        (h.src, h.dst)
    };
    let dir = if ingress { "ingress" } else { "egress" };
    let (policies, rule, reason) = match (pod_by_ip(state, pod_ip), proto) {
        (Some(pod), Some(proto)) => {
            let d = decide_in(
                state,
                policies,
                pod,
                ingress,
                peer,
                h.dport.unwrap_or(0),
                proto,
                refused,
            );
            let mut reason = d.sentence;
            // The kernel decided from the state it had; the agent's may have moved on.
            if d.allowed != allowed {
                reason = format!(
                    "{word} by the rules in the kernel; the agent's current state says: {reason}"
                );
            }
            (d.policies, d.allowed_by, reason)
        }
        (Some(pod), None) => (
            vec![],
            None,
            format!(
                "{word}: {proto_name} {dir} of pod {} (NetworkPolicy ports are TCP, UDP and SCTP; an isolated pod admits no other protocol)",
                pod.key
            ),
        ),
        (None, _) => (
            vec![],
            None,
            format!("{word}: no pod with address {pod_ip} in the agent's state"),
        ),
    };
    Flow {
        seq: 0,
        time: String::new(),
        node: node.to_string(),
        verdict,
        direction: dir.to_string(),
        protocol: proto_name,
        src: end(h.src, h.sport),
        dst: end(h.dst, h.dport),
        policies,
        rule,
        reason,
    }
}

/// Which records a reader wants (`GET /flows?verdict=dropped&pod=shop/db&since=41`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlowQuery {
    pub verdict: Option<Verdict>,
    /// Either end is this pod (`namespace/name`).
    pub pod: Option<String>,
    /// Only records with a larger `seq`.
    pub since: Option<u64>,
    /// The newest this many (default all kept).
    pub limit: Option<usize>,
}

impl FlowQuery {
    /// From a URL query string; an unknown key or a bad value is an error that names it.
    pub fn parse(query: &str) -> Result<FlowQuery, String> {
        let mut q = FlowQuery::default();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_decode(v);
            match k {
                "verdict" => {
                    q.verdict = Some(match v.as_str() {
                        "dropped" => Verdict::Dropped,
                        "allowed" => Verdict::Allowed,
                        other => {
                            return Err(format!(
                                "verdict: {other:?} is neither \"dropped\" nor \"allowed\""
                            ));
                        }
                    })
                }
                "pod" => q.pod = Some(v),
                "since" => {
                    q.since = Some(
                        v.parse()
                            .map_err(|_| format!("since: {v:?} is not a number"))?,
                    )
                }
                "limit" => {
                    q.limit = Some(
                        v.parse()
                            .map_err(|_| format!("limit: {v:?} is not a number"))?,
                    )
                }
                other => return Err(format!("unknown parameter {other:?}")),
            }
        }
        Ok(q)
    }

    pub fn matches(&self, f: &Flow) -> bool {
        self.verdict.is_none_or(|v| v == f.verdict)
            && self.since.is_none_or(|s| f.seq > s)
            && self.pod.as_ref().is_none_or(|p| {
                f.src.pod.as_deref() == Some(p.as_str()) || f.dst.pod.as_deref() == Some(p.as_str())
            })
    }
}

/// `%2F` → `/` (a pod name typed into a URL).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => match u8::from_str_radix(&s[i + 1..i + 3], 16) {
                Ok(v) => {
                    out.push(v);
                    i += 3;
                    continue;
                }
                Err(_) => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
struct FlowLabels {
    verdict: String,
    direction: String,
    /// `namespace/name`, or empty when no valid policy decided (a broken one).
    policy: String,
}

struct Ring {
    flows: VecDeque<Flow>,
    next_seq: u64,
    /// Start of the current second and records taken in it.
    window: Option<(Instant, u32)>,
    /// Policies with counters, so those leaving the state lose theirs.
    labelled: BTreeSet<FlowLabels>,
}

/// What records are described against: the agent's latest state, and its policy view
/// when cluster policies need one (built once per state, not once per record).
#[derive(Default)]
struct View {
    state: Arc<ClusterState>,
    policies: Option<Cluster>,
}

/// The flow log of one node; cheap to clone (shared).
#[derive(Clone)]
pub struct FlowLog {
    node: String,
    options: FlowLogOptions,
    ring: Arc<Mutex<Ring>>,
    state: Arc<RwLock<Arc<View>>>,
    flows: Family<FlowLabels, Counter>,
    lost: Counter,
}

impl FlowLog {
    pub fn new(node: &str, options: FlowLogOptions) -> FlowLog {
        FlowLog {
            node: node.to_string(),
            options,
            ring: Arc::new(Mutex::new(Ring {
                flows: VecDeque::with_capacity(options.capacity.min(1024)),
                next_seq: 1,
                window: None,
                labelled: BTreeSet::new(),
            })),
            state: Arc::default(),
            flows: Family::default(),
            lost: Counter::default(),
        }
    }

    pub fn register(&self, r: &mut Registry) {
        r.register(
            "twill_netpol_flows",
            "Connection attempts NetworkPolicy decided on this node, by verdict, direction and policy (from the flow log)",
            self.flows.clone(),
        );
        r.register(
            "twill_netpol_flows_lost",
            "Flow log records not kept: over the agent's rate limit or the socket's buffer",
            self.lost.clone(),
        );
    }

    /// The cluster state records are described against (the agent's latest). Counters
    /// of policies that left it are removed.
    pub fn set_state(&self, state: Arc<ClusterState>) {
        let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        let gone: Vec<FlowLabels> = ring
            .labelled
            .iter()
            .filter(|l| {
                !l.policy.is_empty()
                    && match l.policy.split_once('/') {
                        Some(("ClusterNetworkPolicy", n)) => {
                            !state.cluster_network_policies.contains_key(n)
                        }
                        Some((ns, n)) => !state
                            .network_policies
                            .contains_key(&twill_model::ObjectKey::new(ns, n)),
                        None => true,
                    }
            })
            .cloned()
            .collect();
        for l in gone {
            self.flows.remove(&l);
            ring.labelled.remove(&l);
        }
        drop(ring);
        let policies = (!state.cluster_network_policies.is_empty())
            .then(|| Cluster::from_state(&state, &Default::default(), &[]));
        *self.state.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(View { state, policies });
    }

    /// Take one logged packet; whether it was kept.
    pub fn record(&self, prefix: &str, payload: &[u8]) -> bool {
        let Some((allowed, ingress)) = flow_prefix(prefix) else {
            return false;
        };
        let Some(h) = parse_headers(payload) else {
            return false;
        };
        let now = Instant::now();
        {
            let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
            let (start, n) = match ring.window {
                Some((s, n)) if now.duration_since(s) < Duration::from_secs(1) => (s, n),
                _ => (now, 0),
            };
            if n >= self.options.per_second {
                self.lost.inc();
                return false;
            }
            ring.window = Some((start, n + 1));
        }
        let view = self.state.read().unwrap_or_else(|p| p.into_inner()).clone();
        let refused = if self.options.rejects {
            "rejected"
        } else {
            "dropped"
        };
        let mut flow = describe(
            &view.state,
            view.policies.as_ref(),
            &self.node,
            &h,
            allowed,
            ingress,
            refused,
        );
        flow.time = jiff::Timestamp::try_from(SystemTime::now())
            .map(|t| t.to_string())
            .unwrap_or_default();
        let deciding: Vec<String> = match (&flow.rule, flow.verdict) {
            (Some(rule), _) => vec![rule.split('#').next().unwrap_or_default().to_string()],
            (None, Verdict::Dropped) if !flow.policies.is_empty() => flow.policies.clone(),
            _ => vec![String::new()],
        };
        let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        for policy in deciding {
            let labels = FlowLabels {
                verdict: flow.verdict.as_str().into(),
                direction: flow.direction.clone(),
                policy,
            };
            self.flows.get_or_create(&labels).inc();
            ring.labelled.insert(labels);
        }
        flow.seq = ring.next_seq;
        ring.next_seq += 1;
        if ring.flows.len() >= self.options.capacity {
            ring.flows.pop_front();
        }
        ring.flows.push_back(flow);
        true
    }

    /// The kept records a query selects, oldest first.
    pub fn query(&self, q: &FlowQuery) -> Vec<Flow> {
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<Flow> = ring
            .flows
            .iter()
            .filter(|f| q.matches(f))
            .cloned()
            .collect();
        if let Some(limit) = q.limit
            && out.len() > limit
        {
            out.drain(..out.len() - limit);
        }
        out
    }

    /// Records as JSON lines (the body of `GET /flows`).
    pub fn json_lines(&self, q: &FlowQuery) -> String {
        let mut out = String::new();
        for f in self.query(q) {
            if let Ok(line) = serde_json::to_string(&f) {
                out.push_str(&line);
                out.push('\n');
            }
        }
        out
    }

    pub fn lost(&self) -> u64 {
        self.lost.get()
    }

    fn count_lost(&self) {
        self.lost.inc();
    }

    /// Listen on nfnetlink_log `group` on a thread of its own, in the calling thread's
    /// network namespace (threads inherit it). Errors binding the group (another
    /// listener has it, no nfnetlink_log) come back here.
    pub fn start(&self, group: u16) -> std::io::Result<()> {
        let socket = nflog::bind(group)?;
        let me = self.clone();
        std::thread::Builder::new()
            .name("flow-log".into())
            .spawn(move || {
                if let Err(e) = nflog::receive(
                    &socket,
                    |prefix, payload| {
                        me.record(prefix, payload);
                    },
                    || me.count_lost(),
                ) {
                    tracing::warn!(error = %e, "flow log stopped");
                }
            })
            .map(|_| ())
    }
}

/// The nfnetlink_log socket.
mod nflog {
    use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
    use netlink_packet_netfilter::nflog::{
        ConfigCmd, ConfigMode, ConfigNla, PacketNla, ULogMessage, config_request,
    };
    use netlink_packet_netfilter::{NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily};
    use netlink_sys::{Socket, constants::NETLINK_NETFILTER};

    use twill_netpol::render::FLOW_LOG_COPY;

    fn request(socket: &Socket, group: u16, nlas: Vec<ConfigNla>) -> std::io::Result<()> {
        let msg = config_request(NetfilterProtoFamily::IPv4, group, nlas);
        let mut buf = vec![0; msg.header.length as usize];
        msg.serialize(&mut buf[..]);
        socket.send(&buf, 0)?;
        let mut reply = vec![0u8; 4096];
        let n = socket.recv(&mut &mut reply[..], 0)?;
        match <NetlinkMessage<NetfilterMessage>>::deserialize(&reply[..n]) {
            Ok(NetlinkMessage {
                payload: NetlinkPayload::Error(e),
                ..
            }) if e.code.is_some() => Err(e.to_io()),
            Ok(_) => Ok(()),
            Err(e) => Err(std::io::Error::other(e.to_string())),
        }
    }

    pub fn bind(group: u16) -> std::io::Result<Socket> {
        let mut socket = Socket::new(NETLINK_NETFILTER)?;
        socket.bind_auto()?;
        // A large buffer rides out bursts; overflow is counted as lost (ENOBUFS).
        let _ = socket.set_rx_buf_sz(4 << 20);
        request(
            &socket,
            group,
            vec![
                ConfigCmd::Bind.into(),
                ConfigMode::new_packet(FLOW_LOG_COPY).into(),
                // Send each copy at once: the instance's default waits for 100 copies
                // or a second (nft's `log group` sets no threshold of its own), and a
                // flood is already bounded by the rules' rate limit.
                ConfigNla::QThresh(1),
            ],
        )?;
        Ok(socket)
    }

    pub fn receive(
        socket: &Socket,
        mut on_packet: impl FnMut(&str, &[u8]),
        on_lost: impl Fn(),
    ) -> std::io::Result<()> {
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = match socket.recv(&mut &mut buf[..], 0) {
                Ok(n) => n,
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    on_lost();
                    continue;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            let mut at = 0;
            while at < n {
                let Ok(msg) = <NetlinkMessage<NetfilterMessage>>::deserialize(&buf[at..n]) else {
                    break;
                };
                let len = msg.header.length as usize;
                if let NetlinkPayload::InnerMessage(NetfilterMessage {
                    inner: NetfilterMessageInner::ULog(ULogMessage::Packet(nlas)),
                    ..
                }) = &msg.payload
                {
                    let prefix = nlas.iter().find_map(|n| match n {
                        PacketNla::Prefix(p) => p.to_str().ok(),
                        _ => None,
                    });
                    let payload = nlas.iter().find_map(|n| match n {
                        PacketNla::Payload(p) => Some(p.as_slice()),
                        _ => None,
                    });
                    if let (Some(prefix), Some(payload)) = (prefix, payload) {
                        on_packet(prefix, payload);
                    }
                }
                if len == 0 {
                    break;
                }
                at += (len + 3) & !3;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use twill_model::ObjectEvent;

    const CLUSTER: &str = "
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: shop, labels: {app: db}}
spec: {nodeName: n2, containers: [{name: c, image: i}]}
status: {phase: Running, podIP: 10.244.2.5, podIPs: [{ip: 10.244.2.5}]}
---
apiVersion: v1
kind: Pod
metadata: {name: api, namespace: shop, labels: {app: api}}
spec: {nodeName: n1, containers: [{name: c, image: i}]}
status: {phase: Running, podIP: 10.244.1.7, podIPs: [{ip: 10.244.1.7}]}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: shop, labels: {app: client}}
spec: {nodeName: n1, containers: [{name: c, image: i}]}
status: {phase: Running, podIP: 10.244.1.8, podIPs: [{ip: 10.244.1.8}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db-ingress, namespace: shop}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{from: [{podSelector: {matchLabels: {app: api}}}], ports: [{port: 5432}]}]
";

    fn state(yaml: &str) -> Arc<ClusterState> {
        let loaded = twill_manifest::parse_str("test.yaml", yaml);
        assert!(!loaded.has_errors(), "{:?}", loaded.problems);
        let mut s = ClusterState::default();
        for o in loaded.into_objects() {
            s.apply(ObjectEvent::Applied(o));
        }
        Arc::new(s)
    }

    /// An IPv4 TCP SYN's first bytes, as the kernel copies them.
    fn syn(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 60, 0, 0, 0x40, 0, 64, 6, 0, 0];
        p.extend(src);
        p.extend(dst);
        p.extend(sport.to_be_bytes());
        p.extend(dport.to_be_bytes());
        p.extend([0; 16]);
        p
    }

    #[test]
    fn headers_are_read_from_the_copy() {
        let h = parse_headers(&syn([10, 244, 1, 8], [10, 244, 2, 5], 40000, 5432)).unwrap();
        assert_eq!(h.src, "10.244.1.8".parse::<IpAddr>().unwrap());
        assert_eq!(h.dst, "10.244.2.5".parse::<IpAddr>().unwrap());
        assert_eq!((h.proto, h.sport, h.dport), (6, Some(40000), Some(5432)));
        // A later fragment has no ports; a truncated or non-IP copy is no packet.
        let mut frag = syn([10, 0, 0, 1], [10, 0, 0, 2], 1, 2);
        frag[7] = 10;
        assert_eq!(parse_headers(&frag).unwrap().dport, None);
        assert!(parse_headers(&[0x45, 0, 0]).is_none());
        assert!(parse_headers(&[0x20; 40]).is_none());
        let mut v6 = vec![0x60, 0, 0, 0, 0, 20, 17, 64];
        v6.extend("fd00::1".parse::<Ipv6Addr>().unwrap().octets());
        v6.extend("fd00::2".parse::<Ipv6Addr>().unwrap().octets());
        v6.extend([0, 53, 0, 80]);
        let h = parse_headers(&v6).unwrap();
        assert_eq!((h.proto, h.sport, h.dport), (17, Some(53), Some(80)));
    }

    #[test]
    fn a_drop_names_the_policy_and_its_closest_rule() {
        let s = state(CLUSTER);
        let h = parse_headers(&syn([10, 244, 1, 8], [10, 244, 2, 5], 40000, 5432)).unwrap();
        let f = describe(&s, None, "n2", &h, false, true, "dropped");
        assert_eq!(f.verdict, Verdict::Dropped);
        assert_eq!(f.src.pod.as_deref(), Some("shop/client"));
        assert_eq!(f.dst.pod.as_deref(), Some("shop/db"));
        assert_eq!(f.policies, vec!["shop/db-ingress".to_string()]);
        assert_eq!(f.rule, None);
        assert!(
            f.reason
                .starts_with("dropped: pod shop/db is selected by NetworkPolicy shop/db-ingress")
                && f.reason
                    .contains("the closest rule, #1 of shop/db-ingress, allows pods with app=api"),
            "{}",
            f.reason
        );
        let h = parse_headers(&syn([10, 244, 1, 7], [10, 244, 2, 5], 40001, 5432)).unwrap();
        let f = describe(&s, None, "n2", &h, true, true, "dropped");
        assert_eq!(f.rule.as_deref(), Some("shop/db-ingress#1"));
        // The kernel and the agent's state disagree (the state moved on): said so.
        let f = describe(&s, None, "n2", &h, false, true, "rejected");
        assert!(
            f.reason.starts_with("rejected by the rules in the kernel"),
            "{}",
            f.reason
        );
    }

    #[test]
    fn the_ring_keeps_the_newest_and_counts_by_policy() {
        let log = FlowLog::new(
            "n2",
            FlowLogOptions {
                capacity: 3,
                per_second: 1000,
                rejects: false,
            },
        );
        let mut reg = Registry::default();
        log.register(&mut reg);
        log.set_state(state(CLUSTER));
        for port in 0..5u16 {
            let p = syn([10, 244, 1, 8], [10, 244, 2, 5], 40000 + port, 5432);
            assert!(log.record("twill-np drop ingress", &p));
        }
        assert!(!log.record("KUBE-SVC something", &syn([1, 1, 1, 1], [2, 2, 2, 2], 1, 2)));
        let kept = log.query(&FlowQuery::default());
        assert_eq!(
            kept.iter().map(|f| f.seq).collect::<Vec<_>>(),
            vec![3, 4, 5]
        );
        let q = FlowQuery::parse("verdict=dropped&pod=shop%2Fclient&since=4").unwrap();
        assert_eq!(log.query(&q).len(), 1);
        assert!(
            log.query(&FlowQuery::parse("pod=shop/api").unwrap())
                .is_empty()
        );
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &reg).unwrap();
        assert!(
            text.contains(
                "twill_netpol_flows_total{verdict=\"dropped\",direction=\"ingress\",policy=\"shop/db-ingress\"} 5"
            ),
            "{text}"
        );
        // The policy goes: so does its counter.
        log.set_state(state(
            &CLUSTER[..CLUSTER.find("---\napiVersion: networking").unwrap()],
        ));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &reg).unwrap();
        assert!(!text.contains("shop/db-ingress"), "{text}");
        // JSON lines read back as records.
        let lines = log.json_lines(&FlowQuery::default());
        let back: Vec<Flow> = lines
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(back, kept);
    }

    #[test]
    fn a_flood_over_the_rate_is_counted_not_kept() {
        let log = FlowLog::new(
            "n2",
            FlowLogOptions {
                capacity: 100,
                per_second: 10,
                rejects: false,
            },
        );
        log.set_state(state(CLUSTER));
        let p = syn([10, 244, 1, 8], [10, 244, 2, 5], 40000, 5432);
        let kept = (0..1000)
            .filter(|_| log.record("twill-np drop ingress", &p))
            .count();
        assert_eq!(kept, 10);
        assert_eq!(log.lost(), 990);
    }

    #[test]
    fn bad_queries_name_the_parameter() {
        assert!(
            FlowQuery::parse("verdict=maybe")
                .unwrap_err()
                .contains("verdict")
        );
        assert!(FlowQuery::parse("since=x").unwrap_err().contains("since"));
        assert!(
            FlowQuery::parse("colour=red")
                .unwrap_err()
                .contains("colour")
        );
        assert_eq!(FlowQuery::parse("").unwrap(), FlowQuery::default());
    }
}
