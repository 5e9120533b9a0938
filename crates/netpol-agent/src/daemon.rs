//! The node enforcer: manifests in, one node's rules out, on every change.
//!
//! Sources are manifest files polled by [`twill_manifest::files::Watcher`]-style reloads
//! (the lab's control plane writes its state to files each node agent reads). Each pass
//! rebuilds the policy [`Cluster`], skips the sync when nothing policy-relevant changed,
//! and otherwise renders and applies the whole state in one restore (kube-proxy's
//! full-sync shape; policy state is small enough that partial syncs are not worth their
//! bookkeeping yet).
//!
//! Invalid policies: the manifest loader reports them with file, document, object and
//! field, but does not hand back the object, so the daemon cannot see which pods the
//! policy meant. It fails closed at namespace scope: every pod of the policy's namespace
//! is isolated in both directions until the policy is fixed; other policies (and other
//! namespaces) are enforced as usual.

use std::time::{Duration, Instant};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use twill_manifest::{LoadResult, Severity};
use twill_model::{Object, ObjectKey};
use twill_netpol::render::DENY_CHAIN;
use twill_netpol::{
    BrokenPolicy, Cluster, NodeInfo, NodeRules, PolicyPod, RenderOptions, render_node,
};

use crate::apply::{Applied, ApplyError, apply_node_after, existing_chains};

/// Every metric the enforcer exports (all Twill-only, hence `twill_netpol_`).
#[derive(Debug)]
pub struct Metrics {
    pub registry: Registry,
    pub policies: Gauge,
    pub invalid_policies: Gauge,
    pub rules: Gauge,
    pub ipsets: Gauge,
    pub ipset_entries: Gauge,
    pub isolated_pods: Gauge,
    pub sync_duration: Histogram,
    pub sync_failures: Counter,
    /// Packets the deny chain has rejected or dropped (read from its counters).
    pub denied_packets: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let m = Metrics {
            registry: Registry::default(),
            policies: Gauge::default(),
            invalid_policies: Gauge::default(),
            rules: Gauge::default(),
            ipsets: Gauge::default(),
            ipset_entries: Gauge::default(),
            isolated_pods: Gauge::default(),
            sync_duration: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            sync_failures: Counter::default(),
            denied_packets: Gauge::default(),
        };
        m.register(&mut registry);
        Metrics { registry, ..m }
    }

    /// Register every metric (shared handles) in `registry`: the agent's one registry
    /// holds every part's metrics.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "twill_netpol_policies",
            "NetworkPolicies enforced",
            self.policies.clone(),
        );
        registry.register(
            "twill_netpol_invalid_policies",
            "NetworkPolicies rejected as invalid (enforced fail-closed)",
            self.invalid_policies.clone(),
        );
        registry.register(
            "twill_netpol_iptables_rules",
            "Filter-table rules rendered for this node",
            self.rules.clone(),
        );
        registry.register(
            "twill_netpol_ipsets",
            "ipsets rendered for this node",
            self.ipsets.clone(),
        );
        registry.register(
            "twill_netpol_ipset_entries",
            "Entries across this node's ipsets",
            self.ipset_entries.clone(),
        );
        registry.register(
            "twill_netpol_isolated_pod_directions",
            "Local pod directions (ingress or egress) isolated by some policy",
            self.isolated_pods.clone(),
        );
        registry.register(
            "twill_netpol_sync_duration_seconds",
            "Render and apply latency",
            self.sync_duration.clone(),
        );
        registry.register(
            "twill_netpol_sync_failures",
            "Syncs that failed to apply",
            self.sync_failures.clone(),
        );
        registry.register(
            "twill_netpol_denied_packets",
            "Packets rejected or dropped by policy on this node",
            self.denied_packets.clone(),
        );
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        out
    }

    fn record(&self, rules: &NodeRules, cluster: &Cluster) {
        self.policies.set(cluster.policies.len() as i64);
        self.invalid_policies.set(cluster.broken.len() as i64);
        self.rules.set(rules.rule_count as i64);
        self.ipsets.set(rules.sets.len() as i64);
        self.ipset_entries.set(rules.set_entries as i64);
        self.isolated_pods
            .set((rules.isolated_ingress + rules.isolated_egress) as i64);
    }
}

/// Build the policy view from loaded manifests. Returns the cluster and one message per
/// problem (invalid policies included, each naming file, object and field).
pub fn cluster_from_manifests(
    load: &LoadResult,
    extra_node_addresses: &[(String, std::net::IpAddr)],
) -> (Cluster, Vec<String>) {
    let mut c = Cluster::default();
    let mut problems = Vec::new();
    for l in &load.objects {
        match &l.object {
            Object::Namespace(n) => {
                c.namespaces.insert(n.name.clone(), n.labels.clone());
            }
            Object::Node(n) => {
                c.nodes.insert(
                    n.name.clone(),
                    NodeInfo {
                        name: n.name.clone(),
                        addresses: n.internal_ips.clone(),
                        labels: n.labels.clone(),
                    },
                );
            }
            Object::Pod(p) => {
                if let Some(pp) = PolicyPod::from_model(p) {
                    c.pods.insert(pp.key.clone(), pp);
                }
            }
            Object::NetworkPolicy(p) => c.upsert_policy(p.clone()),
            Object::ClusterNetworkPolicy(p) => {
                c.cluster_policies.insert(p.name.clone(), p.clone());
            }
            _ => {}
        }
    }
    c.add_node_addresses(extra_node_addresses);
    for p in &load.problems {
        if p.severity == Severity::Error {
            problems.push(p.to_string());
        }
        // `NetworkPolicy ns/name`: fail closed for the whole namespace (see module docs).
        if let Some(rest) = p
            .object
            .as_deref()
            .and_then(|o| o.strip_prefix("NetworkPolicy "))
            && let Some((ns, name)) = rest.split_once('/')
            && p.severity == Severity::Error
        {
            c.upsert_broken(BrokenPolicy {
                key: ObjectKey::new(ns, name),
                pod_selector: None,
                ingress: true,
                egress: true,
                reason: p.to_string(),
            });
        }
    }
    (c, problems)
}

/// Sum of the packet counters of the deny chain (`iptables-save -c`).
pub fn denied_packets() -> u64 {
    let Ok(text) = twill_netfilter::run_with_input("iptables-save", &["-c", "-t", "filter"], b"")
    else {
        return 0;
    };
    text.lines()
        .filter(|l| l.contains(&format!("-A {DENY_CHAIN} ")))
        .filter_map(|l| {
            l.strip_prefix('[')
                .and_then(|r| r.split(':').next())
                .and_then(|n| n.parse::<u64>().ok())
        })
        .sum()
}

/// One node's enforcer state across syncs.
#[derive(Debug)]
pub struct Enforcer {
    pub node: String,
    pub options: RenderOptions,
    pub metrics: Metrics,
    last: Option<Cluster>,
    /// What this process applied last; `None` until the first success and after a
    /// failure (then the kernel's chains are re-read and everything is rewritten).
    applied: Option<NodeRules>,
}

/// What one pass did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncOutcome {
    Unchanged,
    Applied {
        rules: usize,
        sets: usize,
        elapsed: Duration,
        /// Only set contents changed; the chains were left alone.
        sets_only: bool,
    },
}

impl Enforcer {
    pub fn new(node: impl Into<String>, options: RenderOptions) -> Self {
        Self {
            node: node.into(),
            options,
            metrics: Metrics::new(),
            last: None,
            applied: None,
        }
    }

    /// Apply `cluster` if it differs from the last applied state (or a sync failed).
    pub fn sync(&mut self, cluster: Cluster) -> Result<SyncOutcome, ApplyError> {
        if self.last.as_ref() == Some(&cluster) {
            self.metrics.denied_packets.set(denied_packets() as i64);
            return Ok(SyncOutcome::Unchanged);
        }
        let start = Instant::now();
        let mut opts = self.options.clone();
        opts.existing_chains = match &self.applied {
            Some(prev) => prev.chains.clone(),
            None => existing_chains(),
        };
        let rules = render_node(&cluster, &self.node, &opts);
        match apply_node_after(&self.node, &rules, self.applied.as_ref()) {
            Ok(how) => {
                let elapsed = start.elapsed();
                self.metrics.sync_duration.observe(elapsed.as_secs_f64());
                self.metrics.record(&rules, &cluster);
                self.metrics.denied_packets.set(denied_packets() as i64);
                self.last = Some(cluster);
                let outcome = SyncOutcome::Applied {
                    rules: rules.rule_count,
                    sets: rules.sets.len(),
                    elapsed,
                    sets_only: how == Applied::SetsOnly,
                };
                self.applied = Some(rules);
                Ok(outcome)
            }
            Err(e) => {
                self.metrics.sync_failures.inc();
                self.last = None;
                self.applied = None;
                Err(e)
            }
        }
    }
}
