//! `twill doctor`: the checklist the Kubernetes networking guides teach people to run by
//! hand, run by a program, each finding with the fix.
//!
//! [`check`] is pure: it reads a [`Snapshot`] of one node (sysctls, `iptables-save`,
//! links, conntrack, the IPAM store, the cluster's objects) and returns findings.
//! [`collect`] takes the snapshot from the network namespace the calling thread is in.

pub mod collect;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use serde::Serialize;
use twill_model::{ClusterState, DnsPolicy, TargetPort};

/// `iptables-save` output, parsed by the tracer's parser (one parser for both tools).
pub use twill_trace::Ruleset as IptablesDump;
pub use twill_trace::iptables::Chain;

/// One link of the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Link {
    pub name: String,
    /// `vxlan`, `bridge`, `veth`, `tun`, … (`None` for plain devices).
    pub kind: Option<String>,
    pub mtu: u32,
    pub up: bool,
    /// The bridge it is attached to.
    pub master: Option<String>,
    /// VXLAN destination port.
    pub vxlan_port: Option<u16>,
    /// The device a VXLAN link sends through (its underlay).
    pub lower: Option<String>,
}

/// One address reserved in a host-local IPAM store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IpamReservation {
    pub network: String,
    pub ip: IpAddr,
    pub container_id: String,
    pub ifname: String,
}

/// One conntrack entry (original destination, and the source the reply comes from).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConntrackEntry {
    pub protocol: String,
    pub orig_dst: SocketAddr,
    pub reply_src: SocketAddr,
}

/// What the doctor looks at on one node.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub node: Option<String>,
    /// Keys the checks read; `None` when the key does not exist on this kernel.
    pub sysctls: BTreeMap<String, Option<String>>,
    pub iptables: Option<IptablesDump>,
    pub links: Vec<Link>,
    pub node_ips: Vec<IpAddr>,
    pub cluster: Option<ClusterState>,
    pub ipam: Vec<IpamReservation>,
    /// Container ids the runtime knows; `None` when unknown (the leak check is skipped).
    pub live_containers: Option<BTreeSet<String>>,
    pub conntrack: Vec<ConntrackEntry>,
    /// nftables tables besides iptables-nft's (host firewalls, kube-proxy's nftables
    /// mode).
    pub nft: twill_trace::nft::NftRuleset,
    /// Sources that could not be read, and why: their checks did not run.
    pub unreadable: Vec<Unreadable>,
}

/// A source of node state doctor could not read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Unreadable {
    /// The command (`iptables-save`, `conntrack -L -p udp`).
    pub source: String,
    pub why: String,
    pub needs_root: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Warning,
    Error,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// A stable name for the check (`bridge-nf-call-iptables`).
    pub check: &'static str,
    pub severity: Severity,
    /// What it is about (`sysctl net.ipv4.ip_forward`, `Service shop/web`).
    pub subject: String,
    pub message: String,
    pub fix: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sev = match self.severity {
            Severity::Warning => "warning",
            Severity::Error => "error",
        };
        write!(
            f,
            "{sev} [{}] {}: {}\n  fix: {}",
            self.check, self.subject, self.message, self.fix
        )
    }
}

/// Rule counts past which iptables-mode syncs get slow (upstream's own guidance: the
/// iptables mode degrades beyond a few thousand services; nftables or ipvs scale).
pub const IPTABLES_RULES_WARN: usize = 20_000;

/// Run every check.
pub fn check(s: &Snapshot) -> Vec<Finding> {
    let mut out = Vec::new();
    // A check that could not run is not a pass: say which and why.
    for u in &s.unreadable {
        out.push(Finding {
            check: "unreadable-source",
            severity: if u.needs_root {
                Severity::Error
            } else {
                Severity::Warning
            },
            subject: u.source.clone(),
            message: format!("could not be read: {}; the checks that need it did not run", u.why),
            fix: if u.needs_root {
                "run twill doctor as root on the node".into()
            } else {
                "install the tool (scripts/setup.sh lists the packages) or ignore the checks it feeds".into()
            },
        });
    }
    check_sysctls(s, &mut out);
    if let Some(ipt) = &s.iptables {
        check_forward_policy(ipt, &mut out);
        check_firewall_ahead(ipt, &mut out);
        check_vxlan_port(s, ipt, &mut out);
        check_scale(ipt, &mut out);
        check_stale_dnat(s, ipt, &mut out);
    }
    check_nft_firewall(&s.nft, &mut out);
    check_mtu(s, &mut out);
    if let Some(c) = &s.cluster {
        check_services(c, &mut out);
        check_host_network(c, s.iptables.as_ref(), &mut out);
        check_conntrack(c, &s.conntrack, &mut out);
    }
    check_ipam(s, &mut out);
    out
}

fn sysctl<'a>(s: &'a Snapshot, key: &str) -> Option<Option<&'a str>> {
    s.sysctls.get(key).map(|v| v.as_deref())
}

fn check_sysctls(s: &Snapshot, out: &mut Vec<Finding>) {
    match sysctl(s, "net.bridge.bridge-nf-call-iptables") {
        Some(None) => out.push(Finding {
            check: "bridge-nf-call-iptables",
            severity: Severity::Error,
            subject: "sysctl net.bridge.bridge-nf-call-iptables".into(),
            message: "br_netfilter is not loaded: traffic between pods on the same bridge bypasses iptables, so Services reached from a pod on the same node and NetworkPolicy break".into(),
            fix: "modprobe br_netfilter && sysctl -w net.bridge.bridge-nf-call-iptables=1 (and add br_netfilter to /etc/modules-load.d/)".into(),
        }),
        Some(Some(v)) if v != "1" => out.push(Finding {
            check: "bridge-nf-call-iptables",
            severity: Severity::Error,
            subject: "sysctl net.bridge.bridge-nf-call-iptables".into(),
            message: format!("is {v}: bridged pod-to-pod traffic skips iptables (Service DNAT for same-node backends, policies)"),
            fix: "sysctl -w net.bridge.bridge-nf-call-iptables=1 (persist it in /etc/sysctl.d/)".into(),
        }),
        _ => {}
    }
    if let Some(Some(v)) = sysctl(s, "net.ipv4.ip_forward")
        && v != "1"
    {
        out.push(Finding {
            check: "ip-forward",
            severity: Severity::Error,
            subject: "sysctl net.ipv4.ip_forward".into(),
            message: format!("is {v}: the node does not route, so pods cannot reach other nodes or Services backed elsewhere"),
            fix: "sysctl -w net.ipv4.ip_forward=1 (persist it in /etc/sysctl.d/)".into(),
        });
    }
}

fn check_forward_policy(ipt: &IptablesDump, out: &mut Vec<Finding>) {
    let Some(fwd) = ipt.chain("filter", "FORWARD") else {
        return;
    };
    if fwd.policy.as_deref() != Some("DROP") {
        return;
    }
    let jumps_to_kube = fwd.rules.iter().any(|r| r.text.contains("-j KUBE-FORWARD"));
    let accepts_any = fwd.rules.iter().map(|r| &r.text).any(|r| {
        r.ends_with("-j ACCEPT") && !r.contains("-i ") && !r.contains("-s ") && !r.contains("-d ")
    });
    if !jumps_to_kube && !accepts_any {
        out.push(Finding {
            check: "forward-policy-drop",
            severity: Severity::Error,
            subject: "iptables filter FORWARD".into(),
            message: "policy is DROP and nothing jumps to KUBE-FORWARD or accepts pod traffic: packets between pods on different nodes, and NodePort traffic forwarded to other nodes, are dropped".into(),
            fix: "let the proxy install its KUBE-FORWARD jump (restart it), or add `iptables -A FORWARD -s <cluster-cidr> -j ACCEPT` and `-d <cluster-cidr> -j ACCEPT`".into(),
        });
    }
}

fn is_kube_jump(rule: &str) -> bool {
    rule.split_whitespace()
        .collect::<Vec<_>>()
        .windows(2)
        .any(|w| {
            w[0] == "-j"
                && (w[1].starts_with("KUBE-")
                    || w[1].starts_with("TWILL-")
                    || w[1].starts_with("FLANNEL")
                    || w[1].starts_with("CNI-"))
        })
}

fn check_firewall_ahead(ipt: &IptablesDump, out: &mut Vec<Finding>) {
    for (table, chain) in [
        ("filter", "INPUT"),
        ("filter", "FORWARD"),
        ("nat", "PREROUTING"),
    ] {
        let Some(c) = ipt.chain(table, chain) else {
            continue;
        };
        let first_kube = c.rules.iter().position(|r| is_kube_jump(&r.text));
        let Some(first_kube) = first_kube else {
            continue;
        };
        if let Some(blocker) = c.rules[..first_kube].iter().map(|r| &r.text).find(|r| {
            let t: Vec<&str> = r.split_whitespace().collect();
            t.windows(2)
                .any(|w| w[0] == "-j" && matches!(w[1], "DROP" | "REJECT"))
                || t.windows(2).any(|w| {
                    w[0] == "-j"
                        && !w[1].starts_with("KUBE-")
                        && !matches!(
                            w[1],
                            "ACCEPT"
                                | "RETURN"
                                | "LOG"
                                | "MARK"
                                | "DNAT"
                                | "SNAT"
                                | "MASQUERADE"
                                | "CT"
                        )
                })
        }) {
            out.push(Finding {
                check: "firewall-ahead-of-kube",
                severity: Severity::Warning,
                subject: format!("iptables {table} {chain}"),
                message: format!("a host firewall rule is evaluated before the KUBE-* chains and may drop or divert Service and pod traffic: `-A {chain} {blocker}`"),
                fix: format!("move the KUBE-* jumps first (the proxy inserts them at the top on restart), or allow the cluster and service CIDRs in the firewall before `{blocker}`"),
            });
        }
    }
}

/// A host firewall in nftables (firewalld, a hand-written `inet filter`) whose forward
/// or input chain drops by default and accepts nothing beyond established traffic: it
/// runs beside the KUBE-* chains, not under them, so their ACCEPT does not help.
fn check_nft_firewall(nft: &twill_trace::nft::NftRuleset, out: &mut Vec<Finding>) {
    for t in nft.tables.iter().filter(|t| t.name != "kube-proxy") {
        for c in t.chains.values() {
            let Some(hook) = c
                .hook
                .as_deref()
                .filter(|h| matches!(*h, "forward" | "input"))
            else {
                continue;
            };
            if c.policy.as_deref() != Some("drop") {
                continue;
            }
            let accepts_new = c.rules.iter().any(|r| {
                r.expr.iter().any(|e| e.get("accept").is_some()) && !r.text.contains("established")
            });
            if accepts_new {
                continue;
            }
            let what = if hook == "forward" {
                "pod traffic between nodes and NodePort traffic forwarded to other nodes is dropped"
            } else {
                "VXLAN from other nodes, NodePorts and health checks addressed to this node are dropped"
            };
            out.push(Finding {
                check: "nft-firewall-drop",
                severity: Severity::Error,
                subject: format!("nftables {} chain {}", t.label(), c.name),
                message: format!(
                    "hook {hook} with policy drop and no rule accepting new traffic: {what}; an nftables table is a separate hook registration, so the KUBE-* ACCEPTs do not override it"
                ),
                fix: format!(
                    "nft add rule {} {} ip saddr <cluster-cidr> accept (and ip daddr <cluster-cidr> accept), or set the chain's policy to accept",
                    t.label(),
                    c.name
                ),
            });
        }
    }
}

fn check_vxlan_port(s: &Snapshot, ipt: &IptablesDump, out: &mut Vec<Finding>) {
    for l in s
        .links
        .iter()
        .filter(|l| l.kind.as_deref() == Some("vxlan"))
    {
        let port = l.vxlan_port.unwrap_or(8472);
        let Some(input) = ipt.chain("filter", "INPUT") else {
            continue;
        };
        let needle = format!("--dport {port}");
        let blocked = input.rules.iter().map(|r| &r.text).any(|r| {
            r.contains("-p udp")
                && r.contains(&needle)
                && (r.ends_with("-j DROP") || r.ends_with("-j REJECT") || r.contains("-j REJECT "))
        });
        let policy_drop = input.policy.as_deref() == Some("DROP")
            && !input
                .rules
                .iter()
                .any(|r| r.text.contains(&needle) && r.text.ends_with("-j ACCEPT"));
        if blocked || policy_drop {
            out.push(Finding {
                check: "vxlan-port-blocked",
                severity: Severity::Error,
                subject: format!("link {} (VXLAN UDP {port})", l.name),
                message: format!("the firewall drops UDP {port} on input: encapsulated pod traffic from other nodes never reaches {}", l.name),
                fix: format!("iptables -I INPUT -p udp --dport {port} -j ACCEPT (and open UDP {port} between nodes in any cloud firewall)"),
            });
        }
    }
}

fn check_mtu(s: &Snapshot, out: &mut Vec<Finding>) {
    let find = |n: &str| s.links.iter().find(|l| l.name == n);
    // The underlay of a VXLAN link is its lower device; without one, the largest MTU of
    // the plain (non-virtual) links.
    let plain_max = s
        .links
        .iter()
        .filter(|l| l.kind.is_none() && l.name != "lo" && l.up)
        .map(|l| l.mtu)
        .max();
    for l in s
        .links
        .iter()
        .filter(|l| l.kind.as_deref() == Some("vxlan"))
    {
        let underlay = l
            .lower
            .as_deref()
            .and_then(find)
            .map(|d| d.mtu)
            .or(plain_max);
        if let Some(u) = underlay
            && l.mtu + 50 > u
        {
            out.push(Finding {
                check: "mtu-mismatch",
                severity: Severity::Error,
                subject: format!("link {} mtu {}", l.name, l.mtu),
                message: format!("VXLAN adds 50 bytes but the underlay MTU is {u}: full-size packets are fragmented or dropped (small requests work, large responses hang)"),
                fix: format!("set {} (and the pod network) to MTU {} — `ip link set {} mtu {}`, and mtu in the CNI config", l.name, u - 50, l.name, u - 50),
            });
        }
    }
    let overlay_mtu = s
        .links
        .iter()
        .filter(|l| matches!(l.kind.as_deref(), Some("vxlan") | Some("tun")))
        .map(|l| l.mtu)
        .min();
    if let (Some(cni0), Some(o)) = (find("cni0"), overlay_mtu) {
        if cni0.mtu > o {
            out.push(Finding {
                check: "mtu-mismatch",
                severity: Severity::Error,
                subject: format!("link cni0 mtu {}", cni0.mtu),
                message: format!("the pod bridge MTU is above the overlay's ({o}): pods send packets the overlay cannot carry"),
                fix: format!("set \"mtu\": {o} in the CNI config (it follows FLANNEL_MTU in subnet.env) and recreate the pods"),
            });
        }
        for v in s
            .links
            .iter()
            .filter(|l| l.master.as_deref() == Some("cni0") && l.mtu > o)
        {
            out.push(Finding {
                check: "mtu-mismatch",
                severity: Severity::Warning,
                subject: format!("link {} mtu {}", v.name, v.mtu),
                message: format!(
                    "a pod interface on cni0 has MTU {} above the overlay's {o}",
                    v.mtu
                ),
                fix: "recreate the pod after fixing the CNI config's mtu".into(),
            });
        }
    }
}

fn check_scale(ipt: &IptablesDump, out: &mut Vec<Finding>) {
    let n = ipt.rule_count();
    if n >= IPTABLES_RULES_WARN {
        out.push(Finding {
            check: "iptables-scale",
            severity: Severity::Warning,
            subject: "iptables".into(),
            message: format!(
                "{n} rules: iptables-mode syncs and first-packet latency grow with the rule count"
            ),
            fix: "use the nftables proxy mode (--proxy-mode nftables), or trim unused Services"
                .into(),
        });
    }
}

/// DNAT targets in KUBE-SEP chains that no endpoint has any more (for example a node
/// whose address changed while hostNetwork endpoints kept the old one).
fn check_stale_dnat(s: &Snapshot, ipt: &IptablesDump, out: &mut Vec<Finding>) {
    let Some(c) = &s.cluster else { return };
    let known: BTreeSet<IpAddr> = c
        .endpoint_slices
        .values()
        .flat_map(|sl| {
            sl.endpoints
                .iter()
                .flat_map(|e| e.addresses.iter().copied())
        })
        .collect();
    for (name, chain) in ipt
        .chains("nat")
        .filter(|(n, _)| n.starts_with("KUBE-SEP-"))
    {
        for r in &chain.rules {
            let t: Vec<&str> = r.text.split_whitespace().collect();
            let Some(dst) = t
                .windows(2)
                .find(|w| w[0] == "--to-destination")
                .map(|w| w[1])
            else {
                continue;
            };
            let ip = dst.parse::<SocketAddr>().map(|a| a.ip()).ok();
            if let Some(ip) = ip
                && !known.contains(&ip)
            {
                let node_ip = s.node_ips.is_empty() || !s.node_ips.contains(&ip);
                out.push(Finding {
                    check: "stale-dnat",
                    severity: Severity::Error,
                    subject: format!("iptables nat {name}"),
                    message: format!(
                        "DNATs to {dst}, which is no endpoint any more{}: connections through this Service go nowhere",
                        if node_ip { " (a changed node or pod address?)" } else { "" }
                    ),
                    fix: "restart the proxy so it resyncs (it removes stale KUBE-SEP chains); check that the node's InternalIP is current".into(),
                });
            }
        }
    }
}

fn check_services(c: &ClusterState, out: &mut Vec<Finding>) {
    for svc in c.services.values() {
        let Some(sel) = &svc.selector else { continue };
        if !svc.is_proxied() && !svc.headless {
            continue;
        }
        let pods: Vec<&twill_model::Pod> = c
            .pods
            .values()
            .filter(|p| {
                p.key.namespace == svc.key.namespace
                    && sel.iter().all(|(k, v)| p.labels.get(k) == Some(v))
            })
            .collect();
        let subject = format!("Service {}", svc.key);
        let selector = sel
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        if pods.is_empty() {
            out.push(Finding {
                check: "service-no-pods",
                severity: Severity::Warning,
                subject,
                message: format!("selector {selector} matches no pod in namespace {}: the Service has no endpoints and connections are rejected", svc.key.namespace),
                fix: format!("compare the selector with the pods' labels: kubectl get pods -n {} --show-labels", svc.key.namespace),
            });
            continue;
        }
        for p in &svc.ports {
            if let TargetPort::Name(name) = &p.target_port {
                let missing: Vec<&str> = pods
                    .iter()
                    .filter(|pod| pod.spec.find_port(name, p.protocol).is_none())
                    .map(|pod| pod.key.name.as_str())
                    .collect();
                if !missing.is_empty() {
                    out.push(Finding {
                        check: "service-named-port-missing",
                        severity: Severity::Warning,
                        subject: subject.clone(),
                        message: format!("targetPort {name:?} ({}) is not a container port of {}: those pods get no endpoint for port {}", p.protocol, missing.join(", "), p.port),
                        fix: format!("name the container port {name:?} in the pod template, or use a number as targetPort"),
                    });
                }
            }
        }
        let ready = c
            .slices_for(&svc.key)
            .flat_map(|s| &s.endpoints)
            .filter(|e| e.conditions.is_ready())
            .count();
        let total = c.slices_for(&svc.key).flat_map(|s| &s.endpoints).count();
        if total > 0 && ready == 0 {
            out.push(Finding {
                check: "service-endpoints-not-ready",
                severity: Severity::Warning,
                subject,
                message: format!("{total} endpoints, none ready: traffic is rejected until a pod passes its readiness probe"),
                fix: "look at the pods' readiness (kubectl describe pod) and their logs".into(),
            });
        }
    }
}

fn check_host_network(c: &ClusterState, ipt: Option<&IptablesDump>, out: &mut Vec<Finding>) {
    for p in c.pods.values().filter(|p| p.spec.host_network) {
        if p.spec.dns_policy == DnsPolicy::ClusterFirst {
            out.push(Finding {
                check: "hostnetwork-dns-policy",
                severity: Severity::Warning,
                subject: format!("Pod {}", p.key),
                message: "hostNetwork with dnsPolicy ClusterFirst silently uses the node's resolver: cluster names do not resolve".into(),
                fix: "set dnsPolicy: ClusterFirstWithHostNet".into(),
            });
        }
    }
    let forward_drop = ipt
        .and_then(|i| i.chain("filter", "FORWARD"))
        .is_some_and(|f| {
            f.policy.as_deref() == Some("DROP")
                && !f.rules.iter().any(|r| r.text.contains("-j KUBE-FORWARD"))
        });
    for svc in c
        .services
        .values()
        .filter(|s| s.service_type.has_node_ports())
    {
        let host_net_backends: Vec<String> = c
            .slices_for(&svc.key)
            .flat_map(|s| &s.endpoints)
            .filter_map(|e| e.target_ref.as_ref())
            .filter_map(|r| c.pods.get(&r.key))
            .filter(|p| p.spec.host_network)
            .map(|p| p.key.name.clone())
            .collect();
        if !host_net_backends.is_empty() && forward_drop {
            out.push(Finding {
                check: "hostnetwork-nodeport-forward",
                severity: Severity::Error,
                subject: format!("Service {}", svc.key),
                message: format!(
                    "NodePort traffic arriving on a node without a backend is DNATed to another node's address (hostNetwork pods {}) and must be forwarded, but FORWARD drops it",
                    host_net_backends.join(", ")
                ),
                fix: "accept marked Service traffic in FORWARD (the proxy's KUBE-FORWARD chain does this), or use externalTrafficPolicy: Local".into(),
            });
        }
    }
}

fn check_conntrack(c: &ClusterState, entries: &[ConntrackEntry], out: &mut Vec<Finding>) {
    let mut endpoints_of: BTreeMap<IpAddr, BTreeSet<IpAddr>> = BTreeMap::new();
    for svc in c.services.values().filter(|s| s.is_proxied()) {
        let eps: BTreeSet<IpAddr> = c
            .slices_for(&svc.key)
            .flat_map(|s| &s.endpoints)
            .filter(|e| e.conditions.is_ready())
            .flat_map(|e| e.addresses.iter().copied())
            .collect();
        for ip in &svc.cluster_ips {
            endpoints_of
                .entry(*ip)
                .or_default()
                .extend(eps.iter().copied());
        }
    }
    let mut seen = BTreeSet::new();
    for e in entries.iter().filter(|e| e.protocol == "udp") {
        let Some(eps) = endpoints_of.get(&e.orig_dst.ip()) else {
            continue;
        };
        let backend = e.reply_src.ip();
        if backend != e.orig_dst.ip()
            && !eps.contains(&backend)
            && seen.insert((e.orig_dst, backend))
        {
            out.push(Finding {
                check: "conntrack-stale-udp",
                severity: Severity::Warning,
                subject: format!("conntrack udp {}", e.orig_dst),
                message: format!("a UDP flow to the Service still goes to {backend}, which is no endpoint any more: clients keep sending into the void until the entry times out"),
                fix: format!("conntrack -D -p udp --orig-dst {} --reply-src {backend}", e.orig_dst.ip()),
            });
        }
    }
}

fn check_ipam(s: &Snapshot, out: &mut Vec<Finding>) {
    let Some(live) = &s.live_containers else {
        return;
    };
    for r in s.ipam.iter().filter(|r| !live.contains(&r.container_id)) {
        out.push(Finding {
            check: "ipam-leaked",
            severity: Severity::Warning,
            subject: format!("IPAM {} {}", r.network, r.ip),
            message: format!("reserved for container {} ({}), which no longer exists: the address is lost to new pods", r.container_id, r.ifname),
            fix: "run the CNI GC (CNI_COMMAND=GC with the live attachments), or delete the reservation file after checking the container is gone".into(),
        });
    }
}

#[cfg(test)]
mod tests;
