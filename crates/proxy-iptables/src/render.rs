//! The renderer: model in, `iptables-restore` text out.
//!
//! The per-service logic follows `syncProxyRules` in upstream's `iptables/proxier.go`:
//! which chains a service port gets (SVC for Cluster policy, SVL for Local, EXT when it
//! is reachable from outside, FW with `loadBalancerSourceRanges`, one SEP per reachable
//! endpoint), and which REJECT/DROP rules the filter table gets when endpoints are
//! missing.
//!
//! Speed (10k services × 10 endpoints renders in tens of milliseconds): every
//! per-service chain is written into one shared text buffer and recorded as a segment
//! (inline chain name, byte range), so a rule costs no allocation; segments are sorted by
//! chain name once at the end. Chain-name hashes are computed without building their
//! input string; probabilities are formatted once per endpoint count. A partial sync
//! reuses the previous sync's record of an unchanged service's chains instead of
//! rebuilding them (upstream recomputes and discards them).
//!
//! Large clusters: like upstream (`largeClusterMode`, more than 1000 endpoints in all),
//! the comments on the service→endpoint jumps and in the `KUBE-SEP-*` chains are left
//! out, which makes the restore input about a third smaller.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt::Write as _;
use std::sync::Arc;

use twill_model::{ObjectKey, Protocol};
use twill_proxy_core::chain::ChainName;
use twill_proxy_core::{
    EndpointInfo, ProxyModel, ServicePortInfo, ServicePortName, categorize_endpoints, chain,
};

use crate::config::{Config, DetectorArgs, NodePorts};

pub const KUBE_SERVICES: &str = "KUBE-SERVICES";
pub const KUBE_EXTERNAL_SERVICES: &str = "KUBE-EXTERNAL-SERVICES";
pub const KUBE_NODEPORTS: &str = "KUBE-NODEPORTS";
pub const KUBE_FORWARD: &str = "KUBE-FORWARD";
pub const KUBE_PROXY_FIREWALL: &str = "KUBE-PROXY-FIREWALL";
pub const KUBE_FIREWALL: &str = "KUBE-FIREWALL";
pub const KUBE_MARK_MASQ: &str = "KUBE-MARK-MASQ";
pub const KUBE_POSTROUTING: &str = "KUBE-POSTROUTING";

/// Above this many endpoints (over every service port), upstream's `largeClusterMode`
/// drops the per-endpoint comments.
pub const LARGE_CLUSTER_ENDPOINTS_THRESHOLD: usize = 1000;

const NODEPORTS_LAST_COMMENT: &str =
    "\"kubernetes service nodeports; NOTE: this must be the last rule in this chain\"";

/// The per-service nat chains of one service port, as the last sync wrote them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceChains {
    /// Inline names (no allocation each): at 10k services this record holds 110k names.
    pub chains: Vec<ChainName>,
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
    /// Per-service chains only for `changed` services (and for any service `previous`
    /// has no record of). Stale chains of changed services are deleted. Top-level chains
    /// are all written, except those whose digest equals the one in `applied_top` (the
    /// digests of what the kernel holds): declaring a chain flushes it, so an unchanged
    /// one is left out whole.
    Partial {
        changed: &'a BTreeSet<ObjectKey>,
        previous: &'a BTreeMap<ServicePortName, Arc<ServiceChains>>,
        applied_top: Option<&'a ChainDigests>,
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
    /// The digest of every top-level chain's rules as rendered (written or left out),
    /// for the applier to record once the input is applied.
    pub top_level: ChainDigests,
    /// More than [`LARGE_CLUSTER_ENDPOINTS_THRESHOLD`] endpoints: endpoint comments are
    /// left out. A proxier forces a full sync when this flips, so unchanged chains never
    /// mix both forms.
    pub large_cluster_mode: bool,
}

impl Rendered {
    /// Every per-service nat chain the ruleset uses.
    pub fn active_nat_chains(&self) -> BTreeSet<String> {
        self.services
            .values()
            .flat_map(|s| s.chains.iter().map(|c| c.to_string()))
            .collect()
    }
}

/// Whether `model` is rendered in upstream's large-cluster form (see
/// [`Rendered::large_cluster_mode`]).
pub fn large_cluster_mode(model: &ProxyModel) -> bool {
    let mut total = 0;
    for name in model.services.keys() {
        total += model.endpoints_of(name).len();
        if total > LARGE_CLUSTER_ENDPOINTS_THRESHOLD {
            return true;
        }
    }
    false
}

/// `(table, chain)` of a top-level chain → the length and a hash of its rules' text.
/// Top-level chain names are fixed (`KUBE-SERVICES`, …), hence `&'static str`.
pub type ChainDigests = BTreeMap<(&'static str, &'static str), (usize, u64)>;

fn digest(body: &str) -> (usize, u64) {
    use std::hash::{DefaultHasher, Hasher};
    let mut h = DefaultHasher::new();
    h.write(body.as_bytes());
    (body.len(), h.finish())
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

/// Every per-service nat chain written by this sync: one text buffer, and segments of
/// it by chain. A chain's rules are usually one segment; when rules of several chains
/// interleave, a chain has several segments, which the stable sort keeps in order.
#[derive(Default)]
struct Chains {
    body: String,
    segs: Vec<Seg>,
    rules: usize,
    /// Index of the current service's first segment.
    first: usize,
}

struct Seg {
    name: ChainName,
    /// Address of the `&str` the segment was started from: rules of one chain come
    /// from the same string, so comparing addresses skips most name comparisons.
    src: usize,
    start: usize,
    end: usize,
}

fn chain_name(chain: &str) -> ChainName {
    // Names come from `chain::*_PREFIX` + 16 hash characters, well under the limit.
    ChainName::new(chain).expect("service chain names are at most 28 bytes")
}

impl Chains {
    /// Start the segments of the next service.
    fn begin_service(&mut self) {
        self.first = self.segs.len();
    }
    fn is(s: &Seg, chain: &str) -> bool {
        (s.src == chain.as_ptr() as usize && s.name.as_bytes().len() == chain.len())
            || s.name.as_bytes() == chain.as_bytes()
    }
    fn push_seg(&mut self, chain: &str) {
        let at = self.body.len();
        self.segs.push(Seg {
            name: chain_name(chain),
            src: chain.as_ptr() as usize,
            start: at,
            end: at,
        });
    }
    fn declare(&mut self, chain: &str) {
        if !self.segs[self.first..].iter().any(|s| Self::is(s, chain)) {
            self.push_seg(chain);
        }
    }
    /// Declare a chain known not to be declared yet (an endpoint's own chain).
    fn declare_new(&mut self, chain: &str) {
        self.push_seg(chain);
    }
    fn add(&mut self, chain: &str, parts: &[&str]) {
        let at = self.body.len();
        let extend = self.segs.len() > self.first
            && self
                .segs
                .last()
                .is_some_and(|s| s.end == at && Self::is(s, chain));
        if !extend {
            self.push_seg(chain);
        }
        push_line(&mut self.body, chain, parts);
        let end = self.body.len();
        if let Some(s) = self.segs.last_mut() {
            s.end = end;
        }
        self.rules += 1;
    }
    /// The current service's chains, in order of first appearance.
    fn service_chains(&self) -> Vec<ChainName> {
        let mut v: Vec<ChainName> = Vec::with_capacity(self.segs.len() - self.first);
        for s in &self.segs[self.first..] {
            if !v.contains(&s.name) {
                v.push(s.name);
            }
        }
        v
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

/// `1/n` for each endpoint count, formatted once per render (float formatting per
/// endpoint was a measurable share of render time).
#[derive(Default)]
struct Probabilities(Vec<String>);

impl Probabilities {
    fn get(&mut self, n: usize) -> &str {
        if self.0.len() <= n {
            let from = self.0.len();
            self.0.extend((from..=n).map(|i| {
                if i == 0 {
                    String::new()
                } else {
                    probability(i)
                }
            }));
        }
        &self.0[n]
    }
}

/// The first 32 bytes of `name` as big-endian integers (zero padded), which order like
/// the bytes themselves.
fn name_key(name: &str) -> [u64; 4] {
    let mut buf = [0u8; 32];
    let n = name.len().min(32);
    buf[..n].copy_from_slice(&name.as_bytes()[..n]);
    let mut k = [0u64; 4];
    for (i, w) in k.iter_mut().enumerate() {
        let mut b = [0u8; 8];
        b.copy_from_slice(&buf[i * 8..i * 8 + 8]);
        *w = u64::from_be_bytes(b);
    }
    k
}

/// Write one table: declarations then rules, in canonical chain order. Top-level chains
/// for which `omit` is true are left out (declaration and rules); a table left with
/// nothing to write is left out whole, since even an empty section makes legacy
/// iptables replace the table.
fn write_table(
    out: &mut String,
    name: &str,
    top: &Table,
    svc: Option<&Chains>,
    deletes: &[String],
    omit: &dyn Fn(&'static str) -> bool,
) {
    let kept: Vec<(&'static str, &str)> = top
        .rules
        .iter()
        .filter(|(c, _)| !omit(c))
        .map(|(c, (body, _))| (*c, body.as_str()))
        .collect();
    if kept.is_empty() && svc.is_none_or(|c| c.segs.is_empty()) && deletes.is_empty() {
        return;
    }
    let _ = writeln!(out, "*{name}");
    let n_svc = svc.map_or(0, |c| c.segs.len());
    // (name, body, rank).
    let mut all: Vec<(&str, &str, u8)> =
        Vec::with_capacity(top.rules.len() + n_svc + deletes.len());
    for (c, body) in kept {
        all.push((c, body, chain_order(c).0));
    }
    if let Some(svc) = svc {
        for s in &svc.segs {
            all.push((s.name.as_str(), &svc.body[s.start..s.end], 2));
        }
    }
    for d in deletes {
        all.push((d, "", chain_order(d).0));
    }
    // Sort by (rank, first 32 bytes as integers), then the full name, then write order
    // (a chain's segments stay in the order they were written). Integer keys keep the
    // comparisons inline: with 110k chains the sort was a fifth of render time.
    let mut order: Vec<(u8, [u64; 4], u32)> = all
        .iter()
        .enumerate()
        .map(|(i, (c, _, rank))| (*rank, name_key(c), i as u32))
        .collect();
    order.sort_unstable_by(|a, b| {
        (a.0, a.1)
            .cmp(&(b.0, b.1))
            .then_with(|| all[a.2 as usize].0.cmp(all[b.2 as usize].0))
            .then(a.2.cmp(&b.2))
    });
    let mut prev: Option<&(u8, [u64; 4], u32)> = None;
    for o in &order {
        let c = all[o.2 as usize].0;
        if let Some(p) = prev
            && (p.0, p.1) == (o.0, o.1)
            && all[p.2 as usize].0 == c
        {
            continue;
        }
        prev = Some(o);
        out.push(':');
        out.push_str(c);
        out.push_str(" - [0:0]\n");
    }
    for &(_, _, i) in &order {
        out.push_str(all[i as usize].1);
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

    let mut out = Rendered {
        large_cluster_mode: large_cluster_mode(model),
        ..Default::default()
    };
    let mut ctx = Ctx {
        large_cluster_mode: out.large_cluster_mode,
        ..Default::default()
    };
    let mut deleted: BTreeSet<String> = BTreeSet::new();
    let mut services: Vec<&ServicePortInfo> = model.services.values().collect();
    services.sort_by(|a, b| a.name_string.cmp(&b.name_string));
    let mut chains = Chains::default();
    if matches!(mode, SyncMode::Full { .. }) {
        // About 100 bytes per rule, three rules per endpoint plus a few per service.
        let eps: usize = model.endpoints.values().map(Vec::len).sum();
        chains.body.reserve(eps * 300 + services.len() * 200);
    }
    let mut records: Vec<(&ServicePortName, Arc<ServiceChains>)> =
        Vec::with_capacity(services.len());
    for svc in services {
        let reuse = match mode {
            SyncMode::Full { .. } => None,
            SyncMode::Partial {
                changed, previous, ..
            } => {
                if changed.contains(&svc.name.service) {
                    None
                } else {
                    previous.get(&svc.name).cloned()
                }
            }
        };
        chains.begin_service();
        let rules_before = chains.rules;
        render_service(
            cfg,
            model,
            svc,
            &mut filter,
            &mut nat,
            reuse.is_none().then_some(&mut chains),
            &mut ctx,
        );
        let record = match reuse {
            Some(r) => r,
            None => {
                let rec = ServiceChains {
                    chains: chains.service_chains(),
                    nat_rules: chains.rules - rules_before,
                };
                if let SyncMode::Partial { previous, .. } = mode
                    && !ctx.large_cluster_mode
                    && let Some(old) = previous.get(&svc.name)
                {
                    deleted.extend(
                        old.chains
                            .iter()
                            .filter(|c| !rec.chains.contains(c))
                            .map(|c| c.to_string()),
                    );
                }
                Arc::new(rec)
            }
        };
        out.nat_rules_total += record.nat_rules;
        records.push((&svc.name, record));
    }
    out.services_no_local_endpoints_internal = ctx.no_local_internal;
    out.services_no_local_endpoints_external = ctx.no_local_external;
    records.sort_by(|a, b| a.0.cmp(b.0));
    out.services = records.into_iter().map(|(n, r)| (n.clone(), r)).collect();

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
                .flat_map(|s| s.chains.iter().map(ChainName::as_str))
                .collect();
            deleted.extend(
                existing
                    .iter()
                    .filter(|c| chain::is_service_chain(c) && !active.contains(c.as_str()))
                    .cloned(),
            );
        }
        SyncMode::Full { existing: None } => {}
        // As upstream in large clusters: stale chains are only deleted by full syncs
        // (they are unreferenced, so harmless meanwhile). With iptables-nft 1.8.9 at
        // 10k services, a bench run whose partial restore carried the old chain's
        // `-X` ran for over six minutes, one without it took 0.33 s (the trigger was
        // not isolated: a `-X` alone, by hand, was fast).
        SyncMode::Partial { .. } if ctx.large_cluster_mode => {}
        SyncMode::Partial { previous, .. } => {
            // Service ports that disappeared.
            for (name, old) in previous {
                if !out.services.contains_key(name) {
                    deleted.extend(old.chains.iter().map(|c| c.to_string()));
                }
            }
            // A chain that moved to another service port is still in use.
            if !deleted.is_empty() {
                let active: HashSet<&str> = out
                    .services
                    .values()
                    .flat_map(|s| s.chains.iter().map(ChainName::as_str))
                    .collect();
                deleted.retain(|c| !active.contains(c.as_str()));
            }
        }
    }
    out.deleted_chains = deleted.into_iter().collect();

    out.filter_rules_total = filter.count();
    out.nat_rules_total += nat.count();
    out.nat_rules_written = nat.count() + chains.rules;
    let top: usize = filter
        .rules
        .values()
        .chain(nat.rules.values())
        .map(|(b, _)| b.len())
        .sum();
    let mut text = String::with_capacity(
        top + chains.body.len() + chains.segs.len() * 32 + out.deleted_chains.len() * 64 + 4096,
    );
    let applied_top = match mode {
        SyncMode::Partial { applied_top, .. } => applied_top,
        SyncMode::Full { .. } => None,
    };
    let mut top_level = ChainDigests::new();
    for (name, table) in [("filter", &filter), ("nat", &nat)] {
        for (chain, (body, _)) in &table.rules {
            top_level.insert((name, *chain), digest(body));
        }
    }
    let unchanged = |key: &(&'static str, &'static str)| {
        applied_top.is_some_and(|a| a.get(key) == top_level.get(key))
    };
    out.nat_rules_written -= nat
        .rules
        .iter()
        .filter(|(c, _)| unchanged(&("nat", **c)))
        .map(|(_, (_, n))| n)
        .sum::<usize>();
    write_table(&mut text, "filter", &filter, None, &[], &|c| {
        unchanged(&("filter", c))
    });
    write_table(
        &mut text,
        "nat",
        &nat,
        Some(&chains),
        &out.deleted_chains,
        &|c| unchanged(&("nat", c)),
    );
    out.text = text;
    out.top_level = top_level;
    out
}

/// Per-render caches and scratch space.
#[derive(Default)]
struct Ctx {
    large_cluster_mode: bool,
    /// `Rendered::services_no_local_endpoints_*`.
    no_local_internal: usize,
    no_local_external: usize,
    probs: Probabilities,
    /// Reachable endpoints of the service being rendered.
    seps: Vec<Sep>,
    /// Their `ip:port` texts, concatenated (`Sep` holds ranges into it).
    addrs: String,
}

fn render_service(
    cfg: &Config,
    model: &ProxyModel,
    svc: &ServicePortInfo,
    filter: &mut Table,
    nat: &mut Table,
    chains: Option<&mut Chains>,
    ctx: &mut Ctx,
) {
    let proto = svc.protocol.lower();
    let proto_m = match svc.protocol {
        Protocol::Tcp => "-m tcp -p tcp",
        Protocol::Udp => "-m udp -p udp",
        Protocol::Sctp => "-m sctp -p sctp",
    };
    let name = svc.name_string.as_str();
    let port = svc.port.to_string();
    let cluster_ip = svc.cluster_ip.to_string();
    let cat = categorize_endpoints(
        model.endpoints_of(&svc.name),
        svc,
        model.node_zone.as_deref(),
    );

    let (cluster_chain, local_chain) = (svc.cluster_chain(), svc.local_chain());
    let (cluster_chain, local_chain) = (cluster_chain.as_str(), local_chain.as_str());
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
    let ext_chain = svc.external_chain();
    let ext_chain = ext_chain.as_str();
    let uses_ext_chain = has_endpoints && svc.externally_accessible();
    let uses_fw_chain = has_endpoints
        && !svc.load_balancer_vips.is_empty()
        && !svc.load_balancer_source_ranges.is_empty();
    let fw_chain = svc.firewall_chain();
    let fw_chain = fw_chain.as_str();
    let lb_chain = if uses_fw_chain { fw_chain } else { ext_chain };

    let (target, filter_comment) = if !has_endpoints {
        ("REJECT", comment(&format!("{name} has no endpoints")))
    } else {
        if !has_internal {
            ctx.no_local_internal += 1;
        }
        if !has_external {
            ctx.no_local_external += 1;
        }
        // Only the filter rules of a service missing local endpoints use it.
        let text = if !has_internal || !has_external {
            comment(&format!("{name} has no local endpoints"))
        } else {
            String::new()
        };
        ("DROP", text)
    };
    let cluster_ip_comment = if has_internal {
        comment(&format!("{name} cluster IP"))
    } else {
        String::new()
    };

    // Cluster IP.
    if has_internal {
        nat.add(
            KUBE_SERVICES,
            &[
                "-m comment --comment",
                &cluster_ip_comment,
                proto_m,
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
                proto_m,
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
                    proto_m,
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
                    proto_m,
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
                    proto_m,
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
                    proto_m,
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
                    proto_m,
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
                        proto_m,
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
                    proto_m,
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
                    proto_m,
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
        let base = [
            "-m comment --comment",
            cluster_ip_comment.as_str(),
            proto_m,
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
    ctx.seps.clear();
    ctx.addrs.clear();
    for e in &cat.all_reachable {
        let start = ctx.addrs.len();
        push_socket_addr(&mut ctx.addrs, e.ip, e.port);
        let addr = &ctx.addrs[start..];
        let (ip_start, ip_end) = if e.ip.is_ipv6() {
            (start + 1, start + addr.rfind(']').unwrap_or(addr.len()))
        } else {
            (start, start + addr.rfind(':').unwrap_or(addr.len()))
        };
        ctx.seps.push(Sep {
            ep: *e as *const EndpointInfo,
            chain: ChainName::endpoint(name, proto, addr),
            addr: (start, ctx.addrs.len()),
            ip: (ip_start, ip_end),
        });
    }
    if uses_cluster_chain {
        nat.declare(cluster_chain);
        write_endpoint_jumps(nat, svc, cluster_chain, &cat.cluster, ctx, name);
    }
    if uses_local_chain {
        nat.declare(local_chain);
        write_endpoint_jumps(nat, svc, local_chain, &cat.local, ctx, name);
    }

    // Upstream's large-cluster mode drops these comments.
    let c = if ctx.large_cluster_mode {
        String::new()
    } else {
        comment(name)
    };
    let c_flag = if ctx.large_cluster_mode {
        ""
    } else {
        "-m comment --comment"
    };
    let mut recent = String::new();
    for sep in &ctx.seps {
        let ch = sep.chain.as_str();
        let addr = &ctx.addrs[sep.addr.0..sep.addr.1];
        let ip = &ctx.addrs[sep.ip.0..sep.ip.1];
        nat.declare_new(ch);
        nat.add(ch, &[c_flag, &c, "-s", ip, "-j", KUBE_MARK_MASQ]);
        recent.clear();
        if svc.affinity_timeout.is_some() {
            let _ = write!(recent, "-m recent --name {ch} --set");
        }
        nat.add(
            ch,
            &[
                c_flag,
                &c,
                &recent,
                proto_m,
                "-j DNAT --to-destination",
                addr,
            ],
        );
    }
}

/// `n` in decimal.
fn push_u16(buf: &mut String, n: u16) {
    let mut digits = [0u8; 5];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    // ASCII digits.
    buf.push_str(std::str::from_utf8(&digits[i..]).unwrap_or_default());
}

/// `ip:port` (`[ip6]:port`) as `SocketAddr` prints it; IPv4 by hand, since the
/// formatter machinery was a visible share of render time at 100k endpoints.
fn push_socket_addr(buf: &mut String, ip: std::net::IpAddr, port: u16) {
    match ip {
        std::net::IpAddr::V4(v4) => {
            for (i, o) in v4.octets().iter().enumerate() {
                if i > 0 {
                    buf.push('.');
                }
                push_u16(buf, u16::from(*o));
            }
        }
        std::net::IpAddr::V6(v6) => {
            let _ = write!(buf, "[{v6}]");
        }
    }
    buf.push(':');
    push_u16(buf, port);
}

/// One reachable endpoint of the service port being rendered.
struct Sep {
    /// Identity of the endpoint in the model (for matching policy lists to it).
    ep: *const EndpointInfo,
    /// `KUBE-SEP-…`.
    chain: ChainName,
    /// Range of `ip:port` (`[ip6]:port`) in `Ctx::addrs`.
    addr: (usize, usize),
    /// Range of the bare IP in `Ctx::addrs`.
    ip: (usize, usize),
}

/// The precomputed entry of `e` (every endpoint used by a policy chain is reachable).
fn sep_of<'s>(seps: &'s [Sep], e: &EndpointInfo) -> Option<&'s Sep> {
    seps.iter().find(|s| std::ptr::eq(s.ep, e))
}

fn write_endpoint_jumps(
    nat: &mut Chains,
    svc: &ServicePortInfo,
    chain: &str,
    eps: &[&EndpointInfo],
    ctx: &mut Ctx,
    name: &str,
) {
    let large = ctx.large_cluster_mode;
    let c_flag = if large { "" } else { "-m comment --comment" };
    let mut jump_comment = String::new();
    let comment_of = |buf: &mut String, addr: &str| {
        buf.clear();
        if !large {
            let _ = write!(buf, "\"{name} -> {addr}\"");
        }
    };
    if let Some(timeout) = svc.affinity_timeout {
        let t = timeout.to_string();
        for sep in eps.iter().filter_map(|ep| sep_of(&ctx.seps, ep)) {
            let ch = sep.chain.as_str();
            comment_of(&mut jump_comment, &ctx.addrs[sep.addr.0..sep.addr.1]);
            nat.add(
                chain,
                &[
                    c_flag,
                    &jump_comment,
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
    ctx.probs.get(n);
    for (i, sep) in eps
        .iter()
        .filter_map(|ep| sep_of(&ctx.seps, ep))
        .enumerate()
    {
        comment_of(&mut jump_comment, &ctx.addrs[sep.addr.0..sep.addr.1]);
        let (stat, prob) = if i + 1 < n {
            (
                "-m statistic --mode random --probability",
                ctx.probs.0[n - i].as_str(),
            )
        } else {
            ("", "")
        };
        nat.add(
            chain,
            &[c_flag, &jump_comment, stat, prob, "-j", &sep.chain],
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
