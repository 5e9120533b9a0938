//! The ipsets upstream's ipvs mode keeps (`pkg/proxy/ipvs/ipset.go`, `ipsetInfo` in
//! `proxier.go`), with their set types and entry formats (`pkg/proxy/ipvs/ipset`,
//! `Entry.String`): `ip,proto:port`, `ip,proto:port,ip`, `ip,proto:port,net`, `port`,
//! `ip`. IPv6 sets are named `KUBE-6-…` (so both families coexist in dual-stack),
//! truncated to ipset's 31-character limit.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;

use ipnet::IpNet;

/// Every set, in upstream's `ipsetInfo` order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SetName {
    LoopBack,
    ClusterIp,
    ExternalIp,
    ExternalIpLocal,
    LoadBalancer,
    LoadBalancerFw,
    LoadBalancerLocal,
    LoadBalancerSourceIp,
    LoadBalancerSourceCidr,
    NodePortTcp,
    NodePortLocalTcp,
    NodePortUdp,
    NodePortLocalUdp,
    NodePortSctp,
    NodePortLocalSctp,
    HealthCheckNodePort,
    IpvsIps,
}

/// ipset set types used here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetType {
    HashIpPort,
    HashIpPortIp,
    HashIpPortNet,
    BitmapPort,
    HashIp,
}

impl SetType {
    pub fn as_str(self) -> &'static str {
        match self {
            SetType::HashIpPort => "hash:ip,port",
            SetType::HashIpPortIp => "hash:ip,port,ip",
            SetType::HashIpPortNet => "hash:ip,port,net",
            SetType::BitmapPort => "bitmap:port",
            SetType::HashIp => "hash:ip",
        }
    }
}

impl SetName {
    pub const ALL: [SetName; 17] = [
        SetName::LoopBack,
        SetName::ClusterIp,
        SetName::ExternalIp,
        SetName::ExternalIpLocal,
        SetName::LoadBalancer,
        SetName::LoadBalancerFw,
        SetName::LoadBalancerLocal,
        SetName::LoadBalancerSourceIp,
        SetName::LoadBalancerSourceCidr,
        SetName::NodePortTcp,
        SetName::NodePortLocalTcp,
        SetName::NodePortUdp,
        SetName::NodePortLocalUdp,
        SetName::NodePortSctp,
        SetName::NodePortLocalSctp,
        SetName::HealthCheckNodePort,
        SetName::IpvsIps,
    ];

    /// The IPv4 name.
    pub fn base(self) -> &'static str {
        match self {
            SetName::LoopBack => "KUBE-LOOP-BACK",
            SetName::ClusterIp => "KUBE-CLUSTER-IP",
            SetName::ExternalIp => "KUBE-EXTERNAL-IP",
            SetName::ExternalIpLocal => "KUBE-EXTERNAL-IP-LOCAL",
            SetName::LoadBalancer => "KUBE-LOAD-BALANCER",
            SetName::LoadBalancerFw => "KUBE-LOAD-BALANCER-FW",
            SetName::LoadBalancerLocal => "KUBE-LOAD-BALANCER-LOCAL",
            SetName::LoadBalancerSourceIp => "KUBE-LOAD-BALANCER-SOURCE-IP",
            SetName::LoadBalancerSourceCidr => "KUBE-LOAD-BALANCER-SOURCE-CIDR",
            SetName::NodePortTcp => "KUBE-NODE-PORT-TCP",
            SetName::NodePortLocalTcp => "KUBE-NODE-PORT-LOCAL-TCP",
            SetName::NodePortUdp => "KUBE-NODE-PORT-UDP",
            SetName::NodePortLocalUdp => "KUBE-NODE-PORT-LOCAL-UDP",
            SetName::NodePortSctp => "KUBE-NODE-PORT-SCTP-HASH",
            SetName::NodePortLocalSctp => "KUBE-NODE-PORT-LOCAL-SCTP-HASH",
            SetName::HealthCheckNodePort => "KUBE-HEALTH-CHECK-NODE-PORT",
            SetName::IpvsIps => "KUBE-IPVS-IPS",
        }
    }

    /// The name for a family: `KUBE-6-…` for IPv6, at most 31 characters.
    pub fn name(self, v6: bool) -> String {
        if !v6 {
            return self.base().to_string();
        }
        let mut n = self.base().replacen("KUBE-", "KUBE-6-", 1);
        n.truncate(31);
        n
    }

    pub fn set_type(self) -> SetType {
        match self {
            SetName::LoopBack | SetName::LoadBalancerSourceIp => SetType::HashIpPortIp,
            SetName::LoadBalancerSourceCidr => SetType::HashIpPortNet,
            SetName::NodePortTcp
            | SetName::NodePortLocalTcp
            | SetName::NodePortUdp
            | SetName::NodePortLocalUdp
            | SetName::HealthCheckNodePort => SetType::BitmapPort,
            SetName::IpvsIps => SetType::HashIp,
            _ => SetType::HashIpPort,
        }
    }

    pub fn comment(self) -> &'static str {
        match self {
            SetName::LoopBack => {
                "Kubernetes endpoints dst ip:port, source ip for solving hairpin purpose"
            }
            SetName::ClusterIp => "Kubernetes service cluster ip + port for masquerade purpose",
            SetName::ExternalIp => {
                "Kubernetes service external ip + port for masquerade and filter purpose"
            }
            SetName::ExternalIpLocal => {
                "Kubernetes service external ip + port with externalTrafficPolicy=local"
            }
            SetName::LoadBalancer => "Kubernetes service lb portal",
            SetName::LoadBalancerFw => {
                "Kubernetes service load balancer ip + port for load balancer with sourceRange"
            }
            SetName::LoadBalancerLocal => {
                "Kubernetes service load balancer ip + port with externalTrafficPolicy=local"
            }
            SetName::LoadBalancerSourceIp => {
                "Kubernetes service load balancer ip + port + source IP for packet filter purpose"
            }
            SetName::LoadBalancerSourceCidr => {
                "Kubernetes service load balancer ip + port + source cidr for packet filter purpose"
            }
            SetName::NodePortTcp => "Kubernetes nodeport TCP port for masquerade purpose",
            SetName::NodePortLocalTcp => {
                "Kubernetes nodeport TCP port with externalTrafficPolicy=local"
            }
            SetName::NodePortUdp => "Kubernetes nodeport UDP port for masquerade purpose",
            SetName::NodePortLocalUdp => {
                "Kubernetes nodeport UDP port with externalTrafficPolicy=local"
            }
            SetName::NodePortSctp => {
                "Kubernetes nodeport SCTP port for masquerade purpose with type 'hash ip:port'"
            }
            SetName::NodePortLocalSctp => {
                "Kubernetes nodeport SCTP port with externalTrafficPolicy=local with type 'hash ip:port'"
            }
            SetName::HealthCheckNodePort => "Kubernetes health check node port",
            SetName::IpvsIps => "Addresses on the ipvs interface",
        }
    }
}

/// One set member, in `ipset add` syntax.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Entry(pub String);

impl Entry {
    pub fn ip_port(ip: IpAddr, proto: &str, port: u16) -> Self {
        Entry(format!("{ip},{proto}:{port}"))
    }
    pub fn ip_port_ip(ip: IpAddr, proto: &str, port: u16, ip2: IpAddr) -> Self {
        Entry(format!("{ip},{proto}:{port},{ip2}"))
    }
    pub fn ip_port_net(ip: IpAddr, proto: &str, port: u16, net: IpNet) -> Self {
        Entry(format!("{ip},{proto}:{port},{net}"))
    }
    pub fn port(port: u16) -> Self {
        Entry(port.to_string())
    }
    pub fn ip(ip: IpAddr) -> Self {
        Entry(ip.to_string())
    }
}

/// Every set's desired members.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sets {
    pub v6: bool,
    pub members: BTreeMap<SetName, BTreeSet<Entry>>,
}

impl Sets {
    /// All sets exist (empty ones too: the rules reference some unconditionally).
    pub fn new(v6: bool) -> Self {
        Sets {
            v6,
            members: SetName::ALL.iter().map(|s| (*s, BTreeSet::new())).collect(),
        }
    }
    pub fn add(&mut self, set: SetName, e: Entry) {
        self.members.entry(set).or_default().insert(e);
    }
    pub fn contains(&self, set: SetName, e: &Entry) -> bool {
        self.members.get(&set).is_some_and(|m| m.contains(e))
    }
    pub fn is_empty(&self, set: SetName) -> bool {
        self.members.get(&set).is_none_or(BTreeSet::is_empty)
    }
    pub fn name(&self, set: SetName) -> String {
        set.name(self.v6)
    }
}

/// `ipset restore -exist` input that makes every set exactly `sets`: create (no-op when
/// it exists), flush, add. One transaction per sync, like the iptables text.
pub fn render_restore(sets: &Sets) -> String {
    let family = if sets.v6 { "inet6" } else { "inet" };
    let mut s = String::new();
    for (set, members) in &sets.members {
        let name = sets.name(*set);
        let t = set.set_type();
        match t {
            SetType::BitmapPort => {
                let _ = writeln!(s, "create {name} {} range 0-65535", t.as_str());
            }
            _ => {
                let _ = writeln!(
                    s,
                    "create {name} {} family {family} hashsize 1024 maxelem 65536",
                    t.as_str()
                );
            }
        }
        let _ = writeln!(s, "flush {name}");
        for e in members {
            let _ = writeln!(s, "add {name} {}", e.0);
        }
    }
    s
}
