//! The desired state: model in, per-service chains, map elements and sets out.
//!
//! The per-service logic follows `syncProxyRules` in upstream's `nftables/proxier.go`:
//! which chains a service port gets (`service-` for Cluster policy, `local-` for Local,
//! `external-` when reachable from outside, `firewall-` with `loadBalancerSourceRanges`,
//! one `endpoint-` per reachable endpoint), which verdict-map elements point at them, and
//! which drop/reject elements `no-endpoint-services` / `no-endpoint-nodeports` get when
//! endpoints are missing.
//!
//! Each service port's objects are kept behind an `Arc`, so a sync that changed one
//! service reuses every other service's objects and the diff can skip them by pointer.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use twill_model::ObjectKey;
use twill_proxy_core::{
    EndpointInfo, ProxyModel, ServicePortInfo, ServicePortName, categorize_endpoints,
};

use crate::config::{Config, DetectorMatch, ip_x};
use crate::names::{
    AFFINITY_PREFIX, ENDPOINT_PREFIX, EXTERNAL_PREFIX, FIREWALL_PREFIX, LOCAL_PREFIX,
    SERVICE_PREFIX, endpoint_chain_base, service_chain_base,
};

pub(crate) const SERVICE_IPS: &str = "service-ips";
pub(crate) const SERVICE_NODEPORTS: &str = "service-nodeports";
pub(crate) const NO_ENDPOINT_SERVICES: &str = "no-endpoint-services";
pub(crate) const NO_ENDPOINT_NODEPORTS: &str = "no-endpoint-nodeports";
pub(crate) const FIREWALL_IPS: &str = "firewall-ips";
pub(crate) const MARK_MASQ: &str = "mark-for-masquerade";
pub(crate) const REJECT_CHAIN: &str = "reject-chain";

/// One element of a verdict map.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Element {
    /// `service-ips`, `service-nodeports`, `no-endpoint-services`, ...
    pub map: &'static str,
    /// `172.30.0.41 . tcp . 80` or `tcp . 3001`.
    pub key: String,
    /// The service port name, where upstream comments the element.
    pub comment: Option<String>,
    /// `goto service-…`, `goto reject-chain`, `drop`.
    pub value: String,
}

/// Everything one service port owns in the table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceObjects {
    /// Chains and their rules (the text after `add rule ip kube-proxy CHAIN`), in the
    /// order they are created.
    pub chains: Vec<(String, Vec<String>)>,
    pub elements: Vec<Element>,
    /// Member of `cluster-ips`.
    pub cluster_ip: String,
    /// `affinity-…` sets and their timeout in seconds.
    pub affinity_sets: Vec<(String, u32)>,
    /// Named `numgen` verdict maps (large clusters only): name (that of the policy
    /// chain using it) and elements (`0 : goto endpoint-… , 1 : goto …`).
    pub maps: Vec<(String, String)>,
    /// iTP Local with endpoints elsewhere but none here.
    pub no_local_internal: bool,
    /// eTP Local with endpoints elsewhere but none here.
    pub no_local_external: bool,
}

impl ServiceObjects {
    pub fn rule_count(&self) -> usize {
        self.chains.iter().map(|(_, r)| r.len()).sum()
    }

    fn chain(&mut self, name: &str) -> &mut Vec<String> {
        let i = match self.chains.iter().position(|(n, _)| n == name) {
            Some(i) => i,
            None => {
                self.chains.push((name.to_string(), Vec::new()));
                self.chains.len() - 1
            }
        };
        &mut self.chains[i].1
    }

    fn element(&mut self, map: &'static str, key: String, comment: Option<&str>, value: String) {
        self.elements.push(Element {
            map,
            key,
            comment: comment.map(str::to_string),
            value,
        });
    }
}

/// The whole desired table for one family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    pub config: Config,
    pub node_zone: Option<String>,
    /// Large-cluster layout: named `numgen` maps (see [`Config::large_cluster_endpoints`]).
    pub named_vmaps: bool,
    pub services: BTreeMap<ServicePortName, Arc<ServiceObjects>>,
}

impl Desired {
    /// Chains, rules and map elements of every service port.
    pub fn counts(&self) -> (usize, usize, usize) {
        self.services.values().fold((0, 0, 0), |(c, r, e), s| {
            (c + s.chains.len(), r + s.rule_count(), e + s.elements.len())
        })
    }
    pub fn no_local_endpoints(&self) -> (usize, usize) {
        self.services.values().fold((0, 0), |(i, e), s| {
            (
                i + usize::from(s.no_local_internal),
                e + usize::from(s.no_local_external),
            )
        })
    }
}

fn large_cluster(cfg: &Config, model: &ProxyModel) -> bool {
    model.endpoints.values().map(Vec::len).sum::<usize>() > cfg.large_cluster_endpoints
}

/// The desired state of every service port in `model`.
pub fn render(cfg: &Config, model: &ProxyModel) -> Desired {
    let named = large_cluster(cfg, model);
    Desired {
        config: cfg.clone(),
        node_zone: model.node_zone.clone(),
        named_vmaps: named,
        services: model
            .services
            .iter()
            .map(|(n, s)| (n.clone(), Arc::new(render_service(cfg, model, s, named))))
            .collect(),
    }
}

/// Like [`render`], but service ports of services not in `changed` keep `previous`'s
/// objects (same `Arc`). Falls back to [`render`] when the settings, the node's zone or
/// the large-cluster layout changed, since those touch every service.
pub fn render_changed(
    cfg: &Config,
    model: &ProxyModel,
    previous: &Desired,
    changed: &BTreeSet<ObjectKey>,
) -> Desired {
    let named = large_cluster(cfg, model);
    if previous.config != *cfg
        || previous.node_zone != model.node_zone
        || previous.named_vmaps != named
    {
        return render(cfg, model);
    }
    let services = model
        .services
        .iter()
        .map(|(n, s)| {
            let objs = match previous.services.get(n) {
                Some(prev) if !changed.contains(&n.service) => prev.clone(),
                _ => Arc::new(render_service(cfg, model, s, named)),
            };
            (n.clone(), objs)
        })
        .collect();
    Desired {
        config: cfg.clone(),
        node_zone: model.node_zone.clone(),
        named_vmaps: named,
        services,
    }
}

/// One reachable endpoint: its chain and affinity-set names.
struct Ep<'a> {
    ep: &'a EndpointInfo,
    chain: String,
    affinity: String,
}

fn render_service(
    cfg: &Config,
    model: &ProxyModel,
    svc: &ServicePortInfo,
    named_vmaps: bool,
) -> ServiceObjects {
    let ipx = ip_x(cfg.family);
    let proto = svc.protocol.lower();
    let name = svc.name_string.as_str();
    let port = svc.port;
    let base = service_chain_base(&svc.name);
    let cluster_chain = format!("{SERVICE_PREFIX}{base}");
    let local_chain = format!("{LOCAL_PREFIX}{base}");
    let ext_chain = format!("{EXTERNAL_PREFIX}{base}");
    let fw_chain = format!("{FIREWALL_PREFIX}{base}");
    let cat = categorize_endpoints(
        model.endpoints_of(&svc.name),
        svc,
        model.node_zone.as_deref(),
    );
    let mut out = ServiceObjects {
        cluster_ip: svc.cluster_ip.to_string(),
        ..Default::default()
    };

    let eps: Vec<Ep> = cat
        .all_reachable
        .iter()
        .map(|e| {
            let b = endpoint_chain_base(&svc.name, e);
            Ep {
                ep: e,
                chain: format!("{ENDPOINT_PREFIX}{b}"),
                affinity: format!("{AFFINITY_PREFIX}{b}"),
            }
        })
        .collect();

    let uses_cluster_chain = !cat.cluster.is_empty() && svc.uses_cluster_endpoints();
    let uses_local_chain = !cat.local.is_empty() && svc.uses_local_endpoints();
    let has_endpoints = cat.has_any;
    let (internal_chain, has_internal) = if svc.internal_policy_local {
        (&local_chain, has_endpoints && !cat.local.is_empty())
    } else {
        (&cluster_chain, has_endpoints)
    };
    let (external_policy_chain, has_external) = if svc.external_policy_local {
        (&local_chain, has_endpoints && !cat.local.is_empty())
    } else {
        (&cluster_chain, has_endpoints)
    };
    let uses_ext_chain = has_endpoints && svc.externally_accessible();

    let reject = format!("goto {REJECT_CHAIN}");
    let (internal_verdict, external_verdict) = if !has_endpoints {
        (reject.clone(), reject)
    } else {
        out.no_local_internal = !has_internal;
        out.no_local_external = !has_external;
        ("drop".to_string(), "drop".to_string())
    };
    let key = |ip: &dyn std::fmt::Display| format!("{ip} . {proto} . {port}");

    // Chains first, in upstream's order of creation.
    for e in &eps {
        out.chain(&e.chain);
    }
    if uses_cluster_chain {
        out.chain(&cluster_chain);
    }
    if uses_local_chain {
        out.chain(&local_chain);
    }
    if uses_ext_chain {
        out.chain(&ext_chain);
    }

    // Cluster IP. (The policy chain exists whenever it has endpoints; declaring it here
    // keeps the map element valid even in corner cases where it would stay empty.)
    if has_internal {
        out.chain(internal_chain);
        out.element(
            SERVICE_IPS,
            key(&svc.cluster_ip),
            None,
            format!("goto {internal_chain}"),
        );
    } else {
        out.element(
            NO_ENDPOINT_SERVICES,
            key(&svc.cluster_ip),
            Some(name),
            internal_verdict,
        );
    }

    // External IPs.
    for eip in &svc.external_ips {
        if has_endpoints {
            out.element(SERVICE_IPS, key(eip), None, format!("goto {ext_chain}"));
        }
        if !has_external {
            out.element(
                NO_ENDPOINT_SERVICES,
                key(eip),
                Some(name),
                external_verdict.clone(),
            );
        }
    }

    // Load-balancer source ranges.
    let uses_fw_chain =
        !svc.load_balancer_vips.is_empty() && !svc.load_balancer_source_ranges.is_empty();
    if uses_fw_chain {
        let mut sources: Vec<String> = Vec::new();
        let mut allow_from_node = false;
        for cidr in &svc.load_balancer_source_ranges {
            sources.push(cidr.to_string());
            if cfg.node_ips.first().is_some_and(|ip| cidr.contains(ip)) {
                allow_from_node = true;
            }
        }
        // A VIP-style LB address is often local too; traffic from this node to it comes
        // back with the VIP as its source.
        if allow_from_node {
            sources.extend(svc.load_balancer_vips.iter().map(|ip| ip.to_string()));
        }
        out.chain(&fw_chain)
            .push(format!("{ipx} saddr != {{ {} }} drop", sources.join(" , ")));
    }

    // Load-balancer IPs.
    for lb in &svc.load_balancer_vips {
        if has_endpoints {
            out.element(SERVICE_IPS, key(lb), None, format!("goto {ext_chain}"));
        }
        if uses_fw_chain {
            out.element(FIREWALL_IPS, key(lb), None, format!("goto {fw_chain}"));
        }
    }
    if !has_external {
        for lb in &svc.load_balancer_vips {
            out.element(
                NO_ENDPOINT_SERVICES,
                key(lb),
                Some(name),
                external_verdict.clone(),
            );
        }
    }

    // Node port.
    if let Some(np) = svc.node_port {
        let k = format!("{proto} . {np}");
        if has_endpoints {
            out.element(
                SERVICE_NODEPORTS,
                k.clone(),
                None,
                format!("goto {ext_chain}"),
            );
        }
        if !has_external {
            out.element(NO_ENDPOINT_NODEPORTS, k, Some(name), external_verdict);
        }
    }

    // Internal traffic: masquerade off-cluster sources (or everything).
    if has_internal {
        let m = format!("{ipx} daddr {}", svc.cluster_ip);
        if cfg.masquerade_all {
            out.chain(internal_chain)
                .push(format!("{m} jump {MARK_MASQ}"));
        } else if let Some(not_local) = cfg.local_detector.if_not_local(cfg.family) {
            out.chain(internal_chain)
                .push(format!("{m} {not_local} jump {MARK_MASQ}"));
        }
    }

    // External destinations.
    if uses_ext_chain {
        let ext = out.chain(&ext_chain);
        if !svc.external_policy_local {
            ext.push(format!("jump {MARK_MASQ}"));
        } else if uses_cluster_chain {
            if let Some(local) = cfg.local_detector.if_local(cfg.family) {
                ext.push(format!(
                    "{local} goto {cluster_chain} comment \"short-circuit pod traffic\""
                ));
            }
            ext.push(format!(
                "fib saddr type local jump {MARK_MASQ} comment \"masquerade local traffic\""
            ));
            ext.push(format!(
                "fib saddr type local goto {cluster_chain} comment \"short-circuit local traffic\""
            ));
        }
        let target_exists = if external_policy_chain == &local_chain {
            uses_local_chain
        } else {
            uses_cluster_chain
        };
        if has_external && target_exists {
            ext.push(format!("goto {external_policy_chain}"));
        }
    }

    if let Some(timeout) = svc.affinity_timeout {
        out.affinity_sets = eps.iter().map(|e| (e.affinity.clone(), timeout)).collect();
    }
    if uses_cluster_chain {
        let d = Dispatch {
            chain: &cluster_chain,
            named: named_vmaps,
        };
        write_endpoint_dispatch(&mut out, cfg, svc, d, &cat.cluster, &eps);
    }
    if uses_local_chain {
        let d = Dispatch {
            chain: &local_chain,
            named: named_vmaps,
        };
        write_endpoint_dispatch(&mut out, cfg, svc, d, &cat.local, &eps);
    }

    for e in &eps {
        let rules = out.chain(&e.chain);
        rules.push(format!("{ipx} saddr {} jump {MARK_MASQ}", e.ep.ip));
        if svc.affinity_timeout.is_some() {
            rules.push(format!("update @{} {{ {ipx} saddr }}", e.affinity));
        }
        rules.push(format!("meta l4proto {proto} dnat to {}", e.ep));
    }
    out
}

/// The policy chain being written, and whether its `numgen` map is a named one.
#[derive(Clone, Copy)]
struct Dispatch<'a> {
    chain: &'a str,
    named: bool,
}

fn write_endpoint_dispatch(
    out: &mut ServiceObjects,
    cfg: &Config,
    svc: &ServicePortInfo,
    d: Dispatch<'_>,
    endpoints: &[&EndpointInfo],
    eps: &[Ep<'_>],
) {
    let chain = d.chain;
    let ipx = ip_x(cfg.family);
    // Every endpoint a policy chain uses is reachable, so it has an entry.
    let chosen: Vec<&Ep> = endpoints
        .iter()
        .filter_map(|ep| eps.iter().find(|e| std::ptr::eq(e.ep, *ep)))
        .collect();
    let rules = out.chain(chain);
    if svc.affinity_timeout.is_some() {
        for e in &chosen {
            rules.push(format!("{ipx} saddr @{} goto {}", e.affinity, e.chain));
        }
    }
    let mut vmap = String::with_capacity(chosen.len() * 80);
    for (i, e) in chosen.iter().enumerate() {
        if i > 0 {
            vmap.push_str(" , ");
        }
        vmap.push_str(&format!("{i} : goto {}", e.chain));
    }
    if d.named {
        rules.push(format!("numgen random mod {} vmap @{chain}", chosen.len()));
        out.maps.push((chain.to_string(), vmap));
    } else {
        rules.push(format!(
            "numgen random mod {} vmap {{ {vmap} }}",
            chosen.len()
        ));
    }
}
