//! The renderer: model in, `iptables-restore` text out.
//!
//! The per-service logic follows `syncProxyRules` in upstream's `iptables/proxier.go`:
//! which chains a service port gets (SVC for Cluster policy, SVL for Local, EXT when it
//! is reachable from outside, FW with `loadBalancerSourceRanges`, one SEP per reachable
//! endpoint), and which REJECT/DROP rules the filter table gets when endpoints are
//! missing.
//!
//! Speed: per-service chains are written into one text buffer per chain and sorted once
//! at the end, and a partial sync reuses the previous sync's record of an unchanged
//! service's chains instead of rebuilding them (upstream recomputes and discards them).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt::Write as _;
use std::sync::Arc;

use twill_model::ObjectKey;
use twill_proxy_core::{
    EndpointInfo, ProxyModel, ServicePortInfo, ServicePortName, categorize_endpoints, chain,
};

use crate::config::Config;

pub const KUBE_SERVICES: &str = "KUBE-SERVICES";
pub const KUBE_EXTERNAL_SERVICES: &str = "KUBE-EXTERNAL-SERVICES";
pub const KUBE_NODEPORTS: &str = "KUBE-NODEPORTS";
pub const KUBE_FORWARD: &str = "KUBE-FORWARD";
pub const KUBE_PROXY_FIREWALL: &str = "KUBE-PROXY-FIREWALL";
pub const KUBE_FIREWALL: &str = "KUBE-FIREWALL";
pub const KUBE_MARK_MASQ: &str = "KUBE-MARK-MASQ";
pub const KUBE_POSTROUTING: &str = "KUBE-POSTROUTING";

const NODEPORTS_LAST_COMMENT: &str =
    "\"kubernetes service nodeports; NOTE: this must be the last rule in this chain\"";

/// The per-service nat chains of one service port, as the last sync wrote them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceChains {
    pub chains: Vec<String>,
    pub nat_rules: usize,
}

/// Which per-service chains to write.
#[derive(Debug, Clone, Copy)]
pub enum SyncMode<'a> {
    /// Everything. `existing` (from `iptables-save -t nat`) lets stale service chains
    /// be deleted.
    Full {
        existing: Option<&'a BTreeSet<String>>,
    },
    /// Every top-level chain, but per-service chains only for `changed` services (and
    /// for any service `previous` has no record of). Stale chains of changed services
    /// are deleted.
    Partial {
        changed: &'a BTreeSet<ObjectKey>,
        previous: &'a BTreeMap<ServicePortName, Arc<ServiceChains>>,
    },
}

/// The restore input and what the applier and metrics need to know about it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rendered {
    pub text: String,
    /// Per-service chains of every service port (written or not).
    pub services: BTreeMap<ServicePortName, Arc<ServiceChains>>,
    /// Stale service chains this input deletes.
    pub deleted_chains: Vec<String>,
    /// Rules in the full ruleset (`kubeproxy_sync_proxy_rules_iptables_total`).
    pub filter_rules_total: usize,
    pub nat_rules_total: usize,
    /// Rules written in this input (partial syncs write fewer).
    pub nat_rules_written: usize,
    pub services_no_local_endpoints_internal: usize,
    pub services_no_local_endpoints_external: usize,
}

impl Rendered {
    /// Every per-service nat chain the ruleset uses.
    pub fn active_nat_chains(&self) -> BTreeSet<String> {
        self.services
            .values()
            .flat_map(|s| s.chains.iter().cloned())
            .collect()
    }
}

/// One table's top-level chains being built: chain → (rules text, rule count). Rules
/// go straight into one buffer per chain, which keeps allocations per rule at zero.
#[derive(Default)]
struct Table {
    rules: BTreeMap<&'static str, (String, usize)>,
}

fn push_line(buf: &mut String, chain: &str, parts: &[&str]) {
    buf.push_str("-A ");
    buf.push_str(chain);
    for p in parts.iter().filter(|p| !p.is_empty()) {
        buf.push(' ');
        buf.push_str(p);
    }
    buf.push('\n');
}

impl Table {
    fn declare(&mut self, chain: &'static str) {
        self.rules.entry(chain).or_default();
    }
    fn add(&mut self, chain: &'static str, parts: &[&str]) {
        let (buf, n) = self.rules.entry(chain).or_default();
        push_line(buf, chain, parts);
        *n += 1;
    }
    fn count(&self) -> usize {
        self.rules.values().map(|(_, n)| n).sum()
    }
}

/// Per-service chains: (name, rules text). Few per service, so a linear search.
#[derive(Default)]
struct Chains {
    list: Vec<(String, String)>,
    rules: usize,
}

impl Chains {
    fn body(&mut self, chain: &str) -> &mut String {
        let i = match self.list.iter().position(|(n, _)| n == chain) {
            Some(i) => i,
            None => {
                self.list.push((chain.to_string(), String::new()));
                self.list.len() - 1
            }
        };
        &mut self.list[i].1
    }
    fn declare(&mut self, chain: &str) {
        self.body(chain);
    }
    fn add(&mut self, chain: &str, parts: &[&str]) {
        push_line(self.body(chain), chain, parts);
        self.rules += 1;
    }
}

/// Canonical chain order: KUBE-NODEPORTS, KUBE-SERVICES, then by name.
pub(crate) fn chain_order(c: &str) -> (u8, &str) {
    match c {
        KUBE_NODEPORTS => (0, c),
        KUBE_SERVICES => (1, c),
        _ => (2, c),
    }
}

/// `--comment` argument as iptables-save prints it: quoted when it has a space.
fn comment(s: &str) -> String {
    if s.contains(' ') {
        format!("\"{s}\"")
    } else {
        s.to_string()
    }
}

/// `1/n` with ten decimals, as upstream's `computeProbability`.
pub(crate) fn probability(n: usize) -> String {
    format!("{:.10}", 1.0 / n as f64)
}

/// Write one table: declarations then rules, in canonical chain order.
fn write_table(
    out: &mut String,
    name: &str,
    top: &Table,
    svc: &[(String, String)],
    deletes: &[String],
) {
    let _ = writeln!(out, "*{name}");
    let mut all: Vec<(&str, Option<&String>)> =
        Vec::with_capacity(top.rules.len() + svc.len() + deletes.len());
    for (c, (body, _)) in &top.rules {
        all.push((c, Some(body)));
    }
    for (c, b) in svc {
        all.push((c, Some(b)));
    }
    for d in deletes {
        all.push((d, None));
    }
    all.sort_unstable_by(|a, b| chain_order(a.0).cmp(&chain_order(b.0)));
    for (c, _) in &all {
        out.push(':');
        out.push_str(c);
        out.push_str(" - [0:0]\n");
    }
    for (_, body) in &all {
        if let Some(b) = body {
            out.push_str(b);
        }
    }
    for d in deletes {
        let _ = writeln!(out, "-X {d}");
    }
    out.push_str("COMMIT\n");
}

/// Render the ruleset.
pub fn render(cfg: &Config, model: &ProxyModel, mode: SyncMode<'_>) -> Rendered {
    let mark = cfg.mark();
    let mark_mask = format!("{mark}/{mark}");
    let mut filter = Table::default();
    let mut nat = Table::default();
    for c in [
        KUBE_SERVICES,
        KUBE_EXTERNAL_SERVICES,
        KUBE_FORWARD,
        KUBE_NODEPORTS,
        KUBE_PROXY_FIREWALL,
    ] {
        filter.declare(c);
    }
    for c in [
        KUBE_SERVICES,
        KUBE_NODEPORTS,
        KUBE_POSTROUTING,
        KUBE_MARK_MASQ,
    ] {
        nat.declare(c);
    }

    // Top-level rules.
    if cfg.localhost_node_ports_enabled() && cfg.node_ports_on_loopback() {
        filter.add(
            KUBE_FIREWALL,
            &[
                "-m comment --comment \"block incoming localnet connections\"",
                "-d 127.0.0.0/8 ! -s 127.0.0.0/8",
                "-m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP",
            ],
        );
    }
    if cfg.drop_invalid {
        let acct = if cfg.nfacct {
            "-m nfacct --nfacct-name ct_state_invalid_dropped_pkts"
        } else {
            ""
        };
        filter.add(
            KUBE_FORWARD,
            &["-m conntrack --ctstate INVALID", acct, "-j DROP"],
        );
    }
    filter.add(
        KUBE_FORWARD,
        &[
            "-m comment --comment \"kubernetes forwarding rules\" -m mark --mark",
            &mark_mask,
            "-j ACCEPT",
        ],
    );
    filter.add(
        KUBE_FORWARD,
        &["-m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"],
    );
    nat.add(KUBE_MARK_MASQ, &["-j MARK --or-mark", &mark]);
    nat.add(
        KUBE_POSTROUTING,
        &["-m mark !", "--mark", &mark_mask, "-j RETURN"],
    );
    nat.add(KUBE_POSTROUTING, &["-j MARK --xor-mark", &mark]);
    nat.add(
        KUBE_POSTROUTING,
        &[
            "-m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE",
            if cfg.random_fully {
                "--random-fully"
            } else {
                ""
            },
        ],
    );

    let mut out = Rendered::default();
    let mut written: Vec<(String, String)> = Vec::new();
    let mut written_rules = 0usize;
    let mut deleted: BTreeSet<String> = BTreeSet::new();
    let mut services: Vec<&ServicePortInfo> = model.services.values().collect();
    services.sort_by(|a, b| a.name_string.cmp(&b.name_string));
    for svc in services {
        let reuse = match mode {
            SyncMode::Full { .. } => None,
            SyncMode::Partial { changed, previous } => {
                if changed.contains(&svc.name.service) {
                    None
                } else {
                    previous.get(&svc.name).cloned()
                }
            }
        };
        let mut chains = Chains::default();
        render_service(
            cfg,
            model,
            svc,
            &mut filter,
            &mut nat,
            reuse.is_none().then_some(&mut chains),
            &mut out,
        );
        let record = match reuse {
            Some(r) => r,
            None => {
                let rec = ServiceChains {
                    chains: chains.list.iter().map(|(n, _)| n.clone()).collect(),
                    nat_rules: chains.rules,
                };
                if let SyncMode::Partial { previous, .. } = mode
                    && let Some(old) = previous.get(&svc.name)
                {
                    deleted.extend(
                        old.chains
                            .iter()
                            .filter(|c| !rec.chains.contains(c))
                            .cloned(),
                    );
                }
                written_rules += chains.rules;
                written.extend(chains.list);
                Arc::new(rec)
            }
        };
        out.nat_rules_total += record.nat_rules;
        out.services.insert(svc.name.clone(), record);
    }

    // Tail call to the node ports chain; must stay the last rule of KUBE-SERVICES.
    if cfg.node_port_addresses_match_all() {
        let dest = if cfg.is_v6() {
            "-m addrtype --dst-type LOCAL ! -d ::1/128"
        } else if !cfg.localhost_node_ports {
            "-m addrtype --dst-type LOCAL ! -d 127.0.0.0/8"
        } else {
            "-m addrtype --dst-type LOCAL"
        };
        nat.add(
            KUBE_SERVICES,
            &[
                "-m comment --comment",
                NODEPORTS_LAST_COMMENT,
                dest,
                "-j",
                KUBE_NODEPORTS,
            ],
        );
    } else {
        for ip in cfg.node_port_ips() {
            if ip.is_loopback() && !cfg.localhost_node_ports_enabled() {
                continue;
            }
            let ip = ip.to_string();
            nat.add(
                KUBE_SERVICES,
                &[
                    "-m comment --comment",
                    NODEPORTS_LAST_COMMENT,
                    "-d",
                    &ip,
                    "-j",
                    KUBE_NODEPORTS,
                ],
            );
        }
    }

    match mode {
        SyncMode::Full {
            existing: Some(existing),
        } => {
            let active: HashSet<&str> = out
                .services
                .values()
                .flat_map(|s| s.chains.iter().map(String::as_str))
                .collect();
            deleted.extend(
                existing
                    .iter()
                    .filter(|c| chain::is_service_chain(c) && !active.contains(c.as_str()))
                    .cloned(),
            );
        }
        SyncMode::Full { existing: None } => {}
        SyncMode::Partial { previous, .. } => {
            // Service ports that disappeared.
            for (name, old) in previous {
                if !out.services.contains_key(name) {
                    deleted.extend(old.chains.iter().cloned());
                }
            }
            // A chain that moved to another service port is still in use.
            if !deleted.is_empty() {
                let active: HashSet<&str> = out
                    .services
                    .values()
                    .flat_map(|s| s.chains.iter().map(String::as_str))
                    .collect();
                deleted.retain(|c| !active.contains(c.as_str()));
            }
        }
    }
    out.deleted_chains = deleted.into_iter().collect();

    out.filter_rules_total = filter.count();
    out.nat_rules_total += nat.count();
    out.nat_rules_written = nat.count() + written_rules;
    let body: usize = written.iter().map(|(_, b)| b.len()).sum();
    let mut text =
        String::with_capacity(body + written.len() * 40 + out.filter_rules_total * 150 + 64 * 1024);
    write_table(&mut text, "filter", &filter, &[], &[]);
    write_table(&mut text, "nat", &nat, &written, &out.deleted_chains);
    out.text = text;
    out
}

fn render_service(
    cfg: &Config,
    model: &ProxyModel,
    svc: &ServicePortInfo,
    filter: &mut Table,
    nat: &mut Table,
    chains: Option<&mut Chains>,
    out: &mut Rendered,
) {
    let proto = svc.protocol.lower();
    let proto_m = format!("-m {proto} -p {proto}");
    let name = svc.name_string.as_str();
    let port = svc.port.to_string();
    let cluster_ip = svc.cluster_ip.to_string();
    let cat = categorize_endpoints(
        model.endpoints_of(&svc.name),
        svc,
        model.node_zone.as_deref(),
    );

    let cluster_chain = svc.cluster_chain.as_str();
    let local_chain = svc.local_chain.as_str();
    let uses_cluster_chain = !cat.cluster.is_empty() && svc.uses_cluster_endpoints();
    let uses_local_chain = !cat.local.is_empty() && svc.uses_local_endpoints();
    let has_endpoints = cat.has_any;

    let (internal_chain, has_internal) = if svc.internal_policy_local {
        (local_chain, has_endpoints && !cat.local.is_empty())
    } else {
        (cluster_chain, has_endpoints)
    };
    let (external_policy_chain, has_external) = if svc.external_policy_local {
        (local_chain, has_endpoints && !cat.local.is_empty())
    } else {
        (cluster_chain, has_endpoints)
    };
    let ext_chain = svc.external_chain.as_str();
    let uses_ext_chain = has_endpoints && svc.externally_accessible();
    let uses_fw_chain = has_endpoints
        && !svc.load_balancer_vips.is_empty()
        && !svc.load_balancer_source_ranges.is_empty();
    let fw_chain = svc.firewall_chain.as_str();
    let lb_chain = if uses_fw_chain { fw_chain } else { ext_chain };

    let (target, filter_comment) = if !has_endpoints {
        ("REJECT", comment(&format!("{name} has no endpoints")))
    } else {
        if !has_internal {
            out.services_no_local_endpoints_internal += 1;
        }
        if !has_external {
            out.services_no_local_endpoints_external += 1;
        }
        ("DROP", comment(&format!("{name} has no local endpoints")))
    };

    // Cluster IP.
    if has_internal {
        let c = comment(&format!("{name} cluster IP"));
        nat.add(
            KUBE_SERVICES,
            &[
                "-m comment --comment",
                &c,
                &proto_m,
                "-d",
                &cluster_ip,
                "--dport",
                &port,
                "-j",
                internal_chain,
            ],
        );
    } else {
        filter.add(
            KUBE_SERVICES,
            &[
                "-m comment --comment",
                &filter_comment,
                &proto_m,
                "-d",
                &cluster_ip,
                "--dport",
                &port,
                "-j",
                target,
            ],
        );
    }

    // External IPs.
    for eip in &svc.external_ips {
        let eip = eip.to_string();
        if has_endpoints {
            let c = comment(&format!("{name} external IP"));
            nat.add(
                KUBE_SERVICES,
                &[
                    "-m comment --comment",
                    &c,
                    &proto_m,
                    "-d",
                    &eip,
                    "--dport",
                    &port,
                    "-j",
                    ext_chain,
                ],
            );
        }
        if !has_external {
            filter.add(
                KUBE_EXTERNAL_SERVICES,
                &[
                    "-m comment --comment",
                    &filter_comment,
                    &proto_m,
                    "-d",
                    &eip,
                    "--dport",
                    &port,
                    "-j",
                    target,
                ],
            );
        }
    }

    // Load-balancer IPs.
    for lb in &svc.load_balancer_vips {
        let lb = lb.to_string();
        if has_endpoints {
            let c = comment(&format!("{name} loadbalancer IP"));
            nat.add(
                KUBE_SERVICES,
                &[
                    "-m comment --comment",
                    &c,
                    &proto_m,
                    "-d",
                    &lb,
                    "--dport",
                    &port,
                    "-j",
                    lb_chain,
                ],
            );
        }
        if uses_fw_chain {
            let c = comment(&format!("{name} traffic not accepted by {fw_chain}"));
            filter.add(
                KUBE_PROXY_FIREWALL,
                &[
                    "-m comment --comment",
                    &c,
                    &proto_m,
                    "-d",
                    &lb,
                    "--dport",
                    &port,
                    "-j DROP",
                ],
            );
        }
    }
    if !has_external {
        for lb in &svc.load_balancer_vips {
            let lb = lb.to_string();
            filter.add(
                KUBE_EXTERNAL_SERVICES,
                &[
                    "-m comment --comment",
                    &filter_comment,
                    &proto_m,
                    "-d",
                    &lb,
                    "--dport",
                    &port,
                    "-j",
                    target,
                ],
            );
        }
    }

    // Node ports.
    if let Some(np) = svc.node_port {
        let np = np.to_string();
        let c = comment(name);
        if has_endpoints {
            if cfg.nfacct && cfg.localhost_node_ports_enabled() && cfg.node_ports_on_loopback() {
                nat.add(
                    KUBE_NODEPORTS,
                    &[
                        "-m comment --comment",
                        &c,
                        &proto_m,
                        "-d 127.0.0.0/8 --dport",
                        &np,
                        "-m nfacct --nfacct-name localhost_nps_accepted_pkts -j",
                        ext_chain,
                    ],
                );
            }
            nat.add(
                KUBE_NODEPORTS,
                &[
                    "-m comment --comment",
                    &c,
                    &proto_m,
                    "--dport",
                    &np,
                    "-j",
                    ext_chain,
                ],
            );
        }
        if !has_external {
            filter.add(
                KUBE_EXTERNAL_SERVICES,
                &[
                    "-m comment --comment",
                    &filter_comment,
                    "-m addrtype --dst-type LOCAL",
                    &proto_m,
                    "--dport",
                    &np,
                    "-j",
                    target,
                ],
            );
        }
    }

    // Health check node port: accepted whether or not there are local endpoints.
    if let Some(hc) = svc.health_check_node_port {
        let c = comment(&format!("{name} health check node port"));
        filter.add(
            KUBE_NODEPORTS,
            &[
                "-m comment --comment",
                &c,
                "-m tcp -p tcp --dport",
                &hc.to_string(),
                "-j ACCEPT",
            ],
        );
    }

    // Per-service chains from here on (skipped when a partial sync reuses them).
    let Some(nat) = chains else { return };
    if has_internal {
        let c = comment(&format!("{name} cluster IP"));
        let base = [
            "-m comment --comment",
            &c,
            &proto_m,
            "-d",
            &cluster_ip,
            "--dport",
            &port,
        ];
        if cfg.masquerade_all {
            let mut v = base.to_vec();
            v.extend(["-j", KUBE_MARK_MASQ]);
            nat.add(internal_chain, &v);
        } else if cfg.local_detector.is_implemented() {
            let not_local = cfg.local_detector.if_not_local().join(" ");
            let mut v = base.to_vec();
            v.extend([not_local.as_str(), "-j", KUBE_MARK_MASQ]);
            nat.add(internal_chain, &v);
        }
    }

    if uses_ext_chain {
        nat.declare(ext_chain);
        if !svc.external_policy_local {
            let c = comment(&format!(
                "masquerade traffic for {name} external destinations"
            ));
            nat.add(
                ext_chain,
                &["-m comment --comment", &c, "-j", KUBE_MARK_MASQ],
            );
        } else {
            if cfg.local_detector.is_implemented() {
                let local = cfg.local_detector.if_local().join(" ");
                let c = comment(&format!("pod traffic for {name} external destinations"));
                nat.add(
                    ext_chain,
                    &["-m comment --comment", &c, &local, "-j", cluster_chain],
                );
            }
            let c = comment(&format!(
                "masquerade LOCAL traffic for {name} external destinations"
            ));
            nat.add(
                ext_chain,
                &[
                    "-m comment --comment",
                    &c,
                    "-m addrtype --src-type LOCAL -j",
                    KUBE_MARK_MASQ,
                ],
            );
            let c = comment(&format!(
                "route LOCAL traffic for {name} external destinations"
            ));
            nat.add(
                ext_chain,
                &[
                    "-m comment --comment",
                    &c,
                    "-m addrtype --src-type LOCAL -j",
                    cluster_chain,
                ],
            );
        }
        if has_external {
            nat.add(ext_chain, &["-j", external_policy_chain]);
        }
    }

    if uses_fw_chain {
        nat.declare(fw_chain);
        let c = comment(&format!("{name} loadbalancer IP"));
        let mut allow_from_node = false;
        for cidr in &svc.load_balancer_source_ranges {
            nat.add(
                fw_chain,
                &[
                    "-m comment --comment",
                    &c,
                    "-s",
                    &cidr.to_string(),
                    "-j",
                    ext_chain,
                ],
            );
            if cfg.node_ips.first().is_some_and(|ip| cidr.contains(ip)) {
                allow_from_node = true;
            }
        }
        // A VIP-style LB address is often local too; traffic from this node to it comes
        // back with the VIP as its source.
        if allow_from_node {
            for lb in &svc.load_balancer_vips {
                nat.add(
                    fw_chain,
                    &[
                        "-m comment --comment",
                        &c,
                        "-s",
                        &lb.to_string(),
                        "-j",
                        ext_chain,
                    ],
                );
            }
        }
        let c = comment(&format!(
            "other traffic to {name} will be dropped by KUBE-PROXY-FIREWALL"
        ));
        nat.add(fw_chain, &["-m comment --comment", &c]);
    }

    // Per endpoint, formatted and hashed once: its `ip:port`, IP and chain name.
    let seps: Vec<Sep> = cat
        .all_reachable
        .iter()
        .map(|e| {
            let addr = e.to_string();
            Sep {
                ep: e,
                chain: chain::endpoint_chain(name, proto, &addr),
                jump_comment: format!("\"{name} -> {addr}\""),
                ip: e.ip.to_string(),
                addr,
            }
        })
        .collect();
    if uses_cluster_chain {
        nat.declare(cluster_chain);
        write_endpoint_jumps(nat, svc, cluster_chain, &cat.cluster, &seps);
    }
    if uses_local_chain {
        nat.declare(local_chain);
        write_endpoint_jumps(nat, svc, local_chain, &cat.local, &seps);
    }

    let c = comment(name);
    for sep in &seps {
        let ch = sep.chain.as_str();
        nat.declare(ch);
        nat.add(
            ch,
            &[
                "-m comment --comment",
                &c,
                "-s",
                &sep.ip,
                "-j",
                KUBE_MARK_MASQ,
            ],
        );
        let recent = if svc.affinity_timeout.is_some() {
            format!("-m recent --name {ch} --set")
        } else {
            String::new()
        };
        nat.add(
            ch,
            &[
                "-m comment --comment",
                &c,
                &recent,
                &proto_m,
                "-j DNAT --to-destination",
                &sep.addr,
            ],
        );
    }
}

/// One reachable endpoint of the service port being rendered.
struct Sep<'a> {
    ep: &'a EndpointInfo,
    /// `ip:port` (`[ip6]:port`).
    addr: String,
    ip: String,
    /// `KUBE-SEP-…`.
    chain: String,
    /// `"ns/svc:port -> ip:port"`, quoted (it has spaces).
    jump_comment: String,
}

/// The precomputed entry of `e` (every endpoint used by a policy chain is reachable).
fn sep_of<'s, 'a>(seps: &'s [Sep<'a>], e: &EndpointInfo) -> Option<&'s Sep<'a>> {
    seps.iter().find(|s| std::ptr::eq(s.ep, e))
}

fn write_endpoint_jumps(
    nat: &mut Chains,
    svc: &ServicePortInfo,
    chain: &str,
    eps: &[&EndpointInfo],
    seps: &[Sep<'_>],
) {
    if let Some(timeout) = svc.affinity_timeout {
        let t = timeout.to_string();
        for sep in eps.iter().filter_map(|ep| sep_of(seps, ep)) {
            let ch = sep.chain.as_str();
            nat.add(
                chain,
                &[
                    "-m comment --comment",
                    &sep.jump_comment,
                    "-m recent --name",
                    ch,
                    "--rcheck --seconds",
                    &t,
                    "--reap -j",
                    ch,
                ],
            );
        }
    }
    let n = eps.len();
    for (i, sep) in eps.iter().filter_map(|ep| sep_of(seps, ep)).enumerate() {
        let prob = if i + 1 < n {
            format!(
                "-m statistic --mode random --probability {}",
                probability(n - i)
            )
        } else {
            String::new()
        };
        nat.add(
            chain,
            &[
                "-m comment --comment",
                &sep.jump_comment,
                &prob,
                "-j",
                &sep.chain,
            ],
        );
    }
}

/// A jump from a base chain into kube-proxy's chains, which the applier keeps in
/// place (upstream's `iptablesJumpChains`, inserted at the top of the base chain).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseJump {
    pub table: &'static str,
    pub from: &'static str,
    pub to: &'static str,
    /// Match arguments before `-j`.
    pub args: Vec<&'static str>,
}

/// The base-chain jumps the ruleset needs (`with_firewall`: KUBE-FIREWALL is rendered).
pub fn base_chain_jumps(with_firewall: bool) -> Vec<BaseJump> {
    let j = |table, from, to, args: &[&'static str]| BaseJump {
        table,
        from,
        to,
        args: args.to_vec(),
    };
    let new = ["-m", "conntrack", "--ctstate", "NEW"];
    let c = |s: &'static str| ["-m", "comment", "--comment", s];
    let cat = |a: &[&'static str], b: &[&'static str]| [a, b].concat();
    let mut v = vec![
        j(
            "filter",
            "INPUT",
            KUBE_PROXY_FIREWALL,
            &cat(&new, &c("kubernetes load balancer firewall")),
        ),
        j(
            "filter",
            "INPUT",
            KUBE_NODEPORTS,
            &c("kubernetes health check service ports"),
        ),
        j(
            "filter",
            "INPUT",
            KUBE_EXTERNAL_SERVICES,
            &cat(&new, &c("kubernetes externally-visible service portals")),
        ),
        j(
            "filter",
            "FORWARD",
            KUBE_PROXY_FIREWALL,
            &cat(&new, &c("kubernetes load balancer firewall")),
        ),
        j(
            "filter",
            "FORWARD",
            KUBE_FORWARD,
            &c("kubernetes forwarding rules"),
        ),
        j(
            "filter",
            "FORWARD",
            KUBE_SERVICES,
            &cat(&new, &c("kubernetes service portals")),
        ),
        j(
            "filter",
            "FORWARD",
            KUBE_EXTERNAL_SERVICES,
            &cat(&new, &c("kubernetes externally-visible service portals")),
        ),
        j(
            "filter",
            "OUTPUT",
            KUBE_PROXY_FIREWALL,
            &cat(&new, &c("kubernetes load balancer firewall")),
        ),
        j(
            "filter",
            "OUTPUT",
            KUBE_SERVICES,
            &cat(&new, &c("kubernetes service portals")),
        ),
        j(
            "nat",
            "OUTPUT",
            KUBE_SERVICES,
            &c("kubernetes service portals"),
        ),
        j(
            "nat",
            "PREROUTING",
            KUBE_SERVICES,
            &c("kubernetes service portals"),
        ),
        j(
            "nat",
            "POSTROUTING",
            KUBE_POSTROUTING,
            &c("kubernetes postrouting rules"),
        ),
    ];
    if with_firewall {
        v.push(j("filter", "INPUT", KUBE_FIREWALL, &[]));
        v.push(j("filter", "OUTPUT", KUBE_FIREWALL, &[]));
    }
    v
}
