//! `nft -f -` transactions: a full one that builds the table, and a diff between two
//! desired states that touches only what changed.
//!
//! Order inside a transaction matters to nft: chains must exist before a rule or map
//! element names them, an element must be deleted before the same key is added with a
//! new verdict, and a chain or set can only be deleted once nothing refers to it. So a
//! diff is written in steps: create/flush chains, delete elements, delete sets, add
//! sets, add rules, add elements, delete chains. (Upstream deletes stale chains a second
//! later because kernels before 6.2 noticed a dropped map reference only after a
//! delay; on such kernels a failed diff falls back to a full sync.)

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::Arc;

use crate::config::{Config, addr_type, ip_x, node_port_ips};
use crate::render::{
    Desired, Element, FIREWALL_IPS, MARK_MASQ, NO_ENDPOINT_NODEPORTS, NO_ENDPOINT_SERVICES,
    REJECT_CHAIN, SERVICE_IPS, SERVICE_NODEPORTS, ServiceObjects,
};

/// The type of a named `numgen` map: the key is the 32-bit number `numgen` yields,
/// whatever the modulus.
const NUMGEN_MAP_TYPE: &str = "{ typeof numgen random mod 1 : verdict ; }";

/// The table's name (in family `ip` or `ip6`).
pub const TABLE: &str = "kube-proxy";

const CLUSTER_IPS: &str = "cluster-ips";
const NODEPORT_IPS: &str = "nodeport-ips";
/// The fixed sets and maps.
const FIXED_SETS: [&str; 7] = [
    CLUSTER_IPS,
    NODEPORT_IPS,
    FIREWALL_IPS,
    NO_ENDPOINT_NODEPORTS,
    NO_ENDPOINT_SERVICES,
    SERVICE_IPS,
    SERVICE_NODEPORTS,
];

/// Chains and sets that exist in the kernel's table (from `nft list table`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Existing {
    pub chains: BTreeSet<String>,
    pub sets: BTreeSet<String>,
}

/// Read chain and set names from `nft list table …` output.
pub fn parse_existing(listing: &str) -> Existing {
    let mut out = Existing::default();
    for line in listing.lines() {
        let mut words = line.split_whitespace();
        let (Some(kind), Some(name), Some("{")) = (words.next(), words.next(), words.next()) else {
            continue;
        };
        let name = name.trim_matches('"').to_string();
        match kind {
            "chain" => {
                out.chains.insert(name);
            }
            "set" | "map" => {
                out.sets.insert(name);
            }
            _ => {}
        }
    }
    out
}

/// Base chains: name, type, hook, priority. The firewall check runs before DNAT
/// (-110) so it sees the LB address; the endpoint and ClusterIP checks run at filter
/// priority, after DNAT, so traffic that was DNATed (including node-originated traffic
/// short-circuited to the cluster endpoints) no longer matches them.
const BASE_CHAINS: [(&str, &str, &str, i32); 8] = [
    ("filter-prerouting-pre-dnat", "filter", "prerouting", -110),
    ("filter-output-pre-dnat", "filter", "output", -110),
    ("filter-forward", "filter", "forward", 0),
    ("filter-input", "filter", "input", 0),
    ("filter-output", "filter", "output", 0),
    ("nat-output", "nat", "output", -100),
    ("nat-postrouting", "nat", "postrouting", 100),
    ("nat-prerouting", "nat", "prerouting", -100),
];

/// Regular top-level chains (sorted).
const TOP_CHAINS: [&str; 8] = [
    "cluster-ips-check",
    "firewall-check",
    MARK_MASQ,
    "masquerading",
    "nodeport-endpoints-check",
    REJECT_CHAIN,
    "service-endpoints-check",
    "services",
];

struct Writer<'a> {
    out: String,
    /// `ip kube-proxy`
    t: &'a str,
}

impl Writer<'_> {
    fn line(&mut self, verb: &str, what: &str, rest: &str) {
        let _ = writeln!(self.out, "{verb} {what} {} {rest}", self.t);
    }
    fn rule(&mut self, chain: &str, rule: &str) {
        let _ = writeln!(self.out, "add rule {} {chain} {rule}", self.t);
    }
    fn element(&mut self, verb: &str, set: &str, body: &str) {
        let _ = writeln!(self.out, "{verb} element {} {set} {{ {body} }}", self.t);
    }
    fn map_element(&mut self, e: &Element) {
        let body = match &e.comment {
            Some(c) => format!("{} comment \"{c}\" : {}", e.key, e.value),
            None => format!("{} : {}", e.key, e.value),
        };
        self.element("add", e.map, &body);
    }
    fn affinity_set(&mut self, name: &str, timeout: u32, family: &str) {
        self.line(
            "add",
            "set",
            &format!("{name} {{ type {family} ; flags dynamic,timeout ; timeout {timeout}s ; }}"),
        );
    }
}

fn table_spec(cfg: &Config) -> String {
    format!("{} {TABLE}", ip_x(cfg.family))
}

/// Declarations of the fixed chains, sets and maps; `flush` adds a flush after each
/// (for a rewrite in place).
fn write_fixed_declarations(w: &mut Writer<'_>, cfg: &Config, flush: bool) {
    for (name, ty, hook, prio) in BASE_CHAINS {
        w.line(
            "add",
            "chain",
            &format!("{name} {{ type {ty} hook {hook} priority {prio} ; }}"),
        );
        if flush {
            w.line("flush", "chain", name);
        }
    }
    for name in TOP_CHAINS {
        if name == REJECT_CHAIN {
            w.line(
                "add",
                "chain",
                &format!(
                    "{name} {{ comment \"helper for @no-endpoint-services / @no-endpoint-nodeports\" ; }}"
                ),
            );
        } else {
            w.line("add", "chain", name);
        }
        if flush {
            w.line("flush", "chain", name);
        }
    }
    let a = addr_type(cfg.family);
    let sets = [
        (CLUSTER_IPS, a.to_string(), "Active ClusterIPs"),
        (
            NODEPORT_IPS,
            a.to_string(),
            "IPs that accept NodePort traffic",
        ),
    ];
    for (name, ty, comment) in sets {
        w.line(
            "add",
            "set",
            &format!("{name} {{ type {ty} ; comment \"{comment}\" ; }}"),
        );
        if flush {
            w.line("flush", "set", name);
        }
    }
    let maps = [
        (
            FIREWALL_IPS,
            format!("{a} . inet_proto . inet_service"),
            "destinations that are subject to LoadBalancerSourceRanges",
        ),
        (
            NO_ENDPOINT_NODEPORTS,
            "inet_proto . inet_service".to_string(),
            "vmap to drop or reject packets to service nodeports with no endpoints",
        ),
        (
            NO_ENDPOINT_SERVICES,
            format!("{a} . inet_proto . inet_service"),
            "vmap to drop or reject packets to services with no endpoints",
        ),
        (
            SERVICE_IPS,
            format!("{a} . inet_proto . inet_service"),
            "ClusterIP, ExternalIP and LoadBalancer IP traffic",
        ),
        (
            SERVICE_NODEPORTS,
            "inet_proto . inet_service".to_string(),
            "NodePort traffic",
        ),
    ];
    for (name, ty, comment) in maps {
        w.line(
            "add",
            "map",
            &format!("{name} {{ type {ty} : verdict ; comment \"{comment}\" ; }}"),
        );
        if flush {
            w.line("flush", "map", name);
        }
    }
}

/// The fixed chains' rules and the `nodeport-ips` elements.
fn write_fixed_rules(w: &mut Writer<'_>, cfg: &Config) {
    let ipx = ip_x(cfg.family);
    let new = "ct state new jump";
    for (chain, rule) in [
        (
            "filter-prerouting-pre-dnat",
            format!("{new} firewall-check"),
        ),
        ("filter-output-pre-dnat", format!("{new} firewall-check")),
        ("filter-forward", format!("{new} service-endpoints-check")),
        ("filter-forward", format!("{new} cluster-ips-check")),
        ("filter-input", format!("{new} nodeport-endpoints-check")),
        ("filter-input", format!("{new} service-endpoints-check")),
        ("filter-output", format!("{new} service-endpoints-check")),
        ("filter-output", format!("{new} cluster-ips-check")),
        ("nat-prerouting", "jump services".to_string()),
        ("nat-output", "jump services".to_string()),
        ("nat-postrouting", "jump masquerading".to_string()),
    ] {
        w.rule(chain, &rule);
    }
    w.rule(
        "cluster-ips-check",
        &format!(
            "{ipx} daddr @{CLUSTER_IPS} reject comment \"Reject traffic to invalid ports of ClusterIPs\""
        ),
    );
    let cidrs: Vec<String> = cfg
        .service_cidrs
        .iter()
        .filter(|n| n.addr().is_ipv6() == (ipx == "ip6"))
        .map(|n| n.to_string())
        .collect();
    if !cidrs.is_empty() {
        w.rule(
            "cluster-ips-check",
            &format!(
                "{ipx} daddr {{ {} }} drop comment \"Drop traffic to unallocated ClusterIPs\"",
                cidrs.join(" , ")
            ),
        );
    }
    let dispatch = format!("{ipx} daddr . meta l4proto . th dport vmap");
    w.rule("firewall-check", &format!("{dispatch} @{FIREWALL_IPS}"));
    let mark = cfg.mark();
    w.rule(MARK_MASQ, &format!("mark set mark or {mark}"));
    w.rule("masquerading", &format!("mark and {mark} == 0 return"));
    w.rule("masquerading", &format!("mark set mark xor {mark}"));
    w.rule("masquerading", "masquerade fully-random");
    w.rule(
        "nodeport-endpoints-check",
        &format!(
            "{ipx} daddr @{NODEPORT_IPS} meta l4proto . th dport vmap @{NO_ENDPOINT_NODEPORTS}"
        ),
    );
    w.rule(REJECT_CHAIN, "reject");
    w.rule(
        "service-endpoints-check",
        &format!("{dispatch} @{NO_ENDPOINT_SERVICES}"),
    );
    w.rule("services", &format!("{dispatch} @{SERVICE_IPS}"));
    w.rule(
        "services",
        &format!("{ipx} daddr @{NODEPORT_IPS} meta l4proto . th dport vmap @{SERVICE_NODEPORTS}"),
    );
    for ip in node_port_ips(cfg) {
        w.element("add", NODEPORT_IPS, &ip.to_string());
    }
}

fn cluster_ips(d: &Desired) -> BTreeSet<&str> {
    d.services.values().map(|s| s.cluster_ip.as_str()).collect()
}

/// A transaction that makes the table equal `desired`.
///
/// With `existing: None` it deletes and recreates the table (first sync, or recovery;
/// affinity state is lost). With the kernel's current chains and sets it rewrites
/// everything in place, keeps the contents of affinity sets, and deletes every chain
/// and set the table should not have (stale service chains and affinity sets, or
/// leftovers of an older layout).
pub fn full_script(desired: &Desired, existing: Option<&Existing>) -> String {
    let cfg = &desired.config;
    let t = table_spec(cfg);
    let (chains, rules, elements) = desired.counts();
    let mut w = Writer {
        out: String::with_capacity(chains * 120 + rules * 110 + elements * 120 + 16 * 1024),
        t: &t,
    };
    let table = "add table {t} { comment \"rules for kube-proxy\" ; }\n".replace("{t}", &t);
    w.out.push_str(&table);
    if existing.is_none() {
        let _ = writeln!(w.out, "delete table {t}");
        w.out.push_str(&table);
    }
    let flush = existing.is_some();
    write_fixed_declarations(&mut w, cfg, flush);
    let mut wanted_chains: BTreeSet<&str> = BTreeSet::new();
    let mut wanted_sets: BTreeSet<&str> = BTreeSet::new();
    let a = addr_type(cfg.family);
    for s in desired.services.values() {
        for (c, _) in &s.chains {
            w.line("add", "chain", c);
            if flush {
                w.line("flush", "chain", c);
            }
            wanted_chains.insert(c);
        }
        for (set, timeout) in &s.affinity_sets {
            w.affinity_set(set, *timeout, a);
            wanted_sets.insert(set);
        }
        for (map, _) in &s.maps {
            w.line("add", "map", &format!("{map} {NUMGEN_MAP_TYPE}"));
            if flush {
                w.line("flush", "map", map);
            }
            wanted_sets.insert(map);
        }
    }
    // The table is ours alone: anything in it we do not want (stale service chains and
    // affinity sets, or chains and sets of an older layout) goes.
    wanted_chains.extend(BASE_CHAINS.iter().map(|(n, ..)| *n));
    wanted_chains.extend(TOP_CHAINS);
    wanted_sets.extend(FIXED_SETS);
    let mut stale_chains = Vec::new();
    let mut stale_sets = Vec::new();
    if let Some(ex) = existing {
        for c in ex
            .chains
            .iter()
            .filter(|c| !wanted_chains.contains(c.as_str()))
        {
            w.line("flush", "chain", c);
            stale_chains.push(c.as_str());
        }
        stale_sets.extend(
            ex.sets
                .iter()
                .filter(|s| !wanted_sets.contains(s.as_str()))
                .map(String::as_str),
        );
    }
    write_fixed_rules(&mut w, cfg);
    for s in desired.services.values() {
        for (c, rules) in &s.chains {
            for r in rules {
                w.rule(c, r);
            }
        }
    }
    for s in desired.services.values() {
        for (map, body) in &s.maps {
            w.element("add", map, body);
        }
    }
    for ip in cluster_ips(desired) {
        w.element("add", CLUSTER_IPS, ip);
    }
    let mut elems: Vec<&Element> = desired
        .services
        .values()
        .flat_map(|s| s.elements.iter())
        .collect();
    elems.sort();
    for e in elems {
        w.map_element(e);
    }
    for c in stale_chains {
        w.line("delete", "chain", c);
    }
    for s in stale_sets {
        w.line("delete", "set", s);
    }
    w.out
}

/// The steps of a diff transaction, written in this order.
#[derive(Default)]
struct Steps {
    chains: String,
    del_elements: String,
    del_sets: String,
    add_sets: String,
    rules: String,
    add_elements: String,
    del_chains: String,
}

/// A transaction that turns the table written for `prev` into the one for `next`,
/// touching only the chains, sets and elements that differ. `None` when nothing
/// differs. Different settings (or node zone) need a full sync: then this returns
/// [`full_script`] of `next` in place.
pub fn diff_script(prev: &Desired, next: &Desired) -> Option<String> {
    if prev.config != next.config {
        return Some(full_script(next, None));
    }
    let t = table_spec(&next.config);
    let a = addr_type(next.config.family);
    let mut steps = Steps::default();
    let empty = Arc::new(ServiceObjects::default());
    let mut any = false;
    let names: BTreeSet<_> = prev.services.keys().chain(next.services.keys()).collect();
    for name in names {
        let (o, n) = (prev.services.get(name), next.services.get(name));
        if let (Some(o), Some(n)) = (o, n)
            && (Arc::ptr_eq(o, n) || o == n)
        {
            continue;
        }
        any = true;
        diff_service(&mut steps, &t, a, o.unwrap_or(&empty), n.unwrap_or(&empty));
    }
    let (pc, nc) = (cluster_ips(prev), cluster_ips(next));
    if any || pc != nc {
        for ip in pc.difference(&nc) {
            let _ = writeln!(
                steps.del_elements,
                "delete element {t} {CLUSTER_IPS} {{ {ip} }}"
            );
        }
        for ip in nc.difference(&pc) {
            let _ = writeln!(
                steps.add_elements,
                "add element {t} {CLUSTER_IPS} {{ {ip} }}"
            );
        }
    }
    let s = steps;
    let out = [
        s.chains,
        s.del_elements,
        s.del_sets,
        s.add_sets,
        s.rules,
        s.add_elements,
        s.del_chains,
    ]
    .concat();
    (!out.is_empty()).then_some(out)
}

fn diff_service(steps: &mut Steps, t: &str, addr: &str, o: &ServiceObjects, n: &ServiceObjects) {
    let old_sets: BTreeMap<&str, u32> = o
        .affinity_sets
        .iter()
        .map(|(s, t)| (s.as_str(), *t))
        .collect();
    let new_sets: BTreeMap<&str, u32> = n
        .affinity_sets
        .iter()
        .map(|(s, t)| (s.as_str(), *t))
        .collect();
    // A set can only be replaced once no rule uses it, so then every chain is rewritten.
    let mut sets_replaced = false;
    for (s, to) in &old_sets {
        if new_sets.get(s) != Some(to) {
            let _ = writeln!(steps.del_sets, "delete set {t} {s}");
            sets_replaced |= new_sets.contains_key(s);
        }
    }
    for (s, to) in &new_sets {
        if old_sets.get(s) != Some(to) {
            let _ = writeln!(
                steps.add_sets,
                "add set {t} {s} {{ type {addr} ; flags dynamic,timeout ; timeout {to}s ; }}"
            );
        }
    }
    let old_chains: BTreeMap<&str, &Vec<String>> =
        o.chains.iter().map(|(c, r)| (c.as_str(), r)).collect();
    for (c, rules) in &n.chains {
        match old_chains.get(c.as_str()) {
            None => {
                let _ = writeln!(steps.chains, "add chain {t} {c}");
            }
            Some(old) if *old != rules || sets_replaced => {
                let _ = writeln!(steps.chains, "flush chain {t} {c}");
            }
            Some(_) => continue,
        }
        for r in rules {
            let _ = writeln!(steps.rules, "add rule {t} {c} {r}");
        }
    }
    let new_chains: BTreeSet<&str> = n.chains.iter().map(|(c, _)| c.as_str()).collect();
    for (c, _) in &o.chains {
        if !new_chains.contains(c.as_str()) {
            let _ = writeln!(steps.chains, "flush chain {t} {c}");
            let _ = writeln!(steps.del_chains, "delete chain {t} {c}");
        }
    }
    let old_maps: BTreeMap<&str, &str> = o
        .maps
        .iter()
        .map(|(m, b)| (m.as_str(), b.as_str()))
        .collect();
    let new_maps: BTreeMap<&str, &str> = n
        .maps
        .iter()
        .map(|(m, b)| (m.as_str(), b.as_str()))
        .collect();
    // Flushed before chains it points at are deleted; deleted once no rule uses it.
    for (m, body) in &old_maps {
        if new_maps.get(m) != Some(body) {
            let _ = writeln!(steps.del_elements, "flush map {t} {m}");
        }
        if !new_maps.contains_key(m) {
            let _ = writeln!(steps.del_sets, "delete map {t} {m}");
        }
    }
    for (m, body) in &new_maps {
        if !old_maps.contains_key(m) {
            let _ = writeln!(steps.add_sets, "add map {t} {m} {NUMGEN_MAP_TYPE}");
        }
        if old_maps.get(m) != Some(body) {
            let _ = writeln!(steps.add_elements, "add element {t} {m} {{ {body} }}");
        }
    }
    let key = |e: &Element| (e.map, e.key.clone());
    let old_el: BTreeMap<_, &Element> = o.elements.iter().map(|e| (key(e), e)).collect();
    let new_el: BTreeMap<_, &Element> = n.elements.iter().map(|e| (key(e), e)).collect();
    for (k, e) in &old_el {
        if new_el.get(k) != Some(e) {
            let _ = writeln!(
                steps.del_elements,
                "delete element {t} {} {{ {} }}",
                e.map, e.key
            );
        }
    }
    for (k, e) in &new_el {
        if old_el.get(k) != Some(e) {
            let mut w = Writer {
                out: std::mem::take(&mut steps.add_elements),
                t,
            };
            w.map_element(e);
            steps.add_elements = w.out;
        }
    }
}
