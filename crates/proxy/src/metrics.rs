//! kube-proxy's metric names (`pkg/proxy/metrics/metrics.go`), so dashboards built for
//! kube-proxy keep working; Twill-only metrics carry the `twill_` prefix.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

/// Every metric the proxy exports.
#[derive(Debug)]
pub struct Metrics {
    pub registry: Registry,
    pub sync_duration: Histogram,
    pub sync_full_duration: Histogram,
    pub sync_partial_duration: Histogram,
    pub network_programming_duration: Histogram,
    /// Rules per table (`table="filter"|"nat"`).
    pub iptables_total: Family<Labels, Gauge>,
    pub restore_failures: Counter,
    pub partial_restore_failures: Counter,
    pub last_sync_timestamp: Gauge,
    pub no_local_endpoints: Family<Labels, Gauge>,
    pub services_skipped: Counter,
    pub stale_conntrack: Counter,
}

fn buckets() -> impl Iterator<Item = f64> {
    // 1 ms .. ~16 s, as upstream's DefBuckets-like exponential range.
    exponential_buckets(0.001, 2.0, 15)
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let h = || Histogram::new(buckets());
        let m = Metrics {
            sync_duration: h(),
            sync_full_duration: h(),
            sync_partial_duration: h(),
            network_programming_duration: Histogram::new(exponential_buckets(0.001, 2.0, 20)),
            iptables_total: Family::default(),
            restore_failures: Counter::default(),
            partial_restore_failures: Counter::default(),
            last_sync_timestamp: Gauge::default(),
            no_local_endpoints: Family::default(),
            services_skipped: Counter::default(),
            stale_conntrack: Counter::default(),
            registry: Registry::default(),
        };
        m.register(&mut registry);
        Metrics { registry, ..m }
    }

    /// Register every metric (shared handles) in `registry`: the agent's one registry
    /// holds every part's metrics.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "kubeproxy_sync_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds",
            self.sync_duration.clone(),
        );
        registry.register(
            "kubeproxy_sync_full_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for full resyncs",
            self.sync_full_duration.clone(),
        );
        registry.register(
            "kubeproxy_sync_partial_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for partial resyncs",
            self.sync_partial_duration.clone(),
        );
        registry.register(
            "kubeproxy_network_programming_duration_seconds",
            "In Cluster Network Programming Latency in seconds",
            self.network_programming_duration.clone(),
        );
        registry.register(
            "kubeproxy_sync_proxy_rules_iptables_total",
            "Total number of iptables rules owned by kube-proxy",
            self.iptables_total.clone(),
        );
        // prometheus-client appends `_total` to counters.
        registry.register(
            "kubeproxy_sync_proxy_rules_iptables_restore_failures",
            "Cumulative proxy iptables restore failures",
            self.restore_failures.clone(),
        );
        registry.register(
            "kubeproxy_sync_proxy_rules_iptables_partial_restore_failures",
            "Cumulative proxy iptables partial restore failures",
            self.partial_restore_failures.clone(),
        );
        registry.register(
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
            "The last time proxy rules were successfully synced",
            self.last_sync_timestamp.clone(),
        );
        registry.register(
            "kubeproxy_sync_proxy_rules_no_local_endpoints_total",
            "Number of services with a Local traffic policy and no endpoints",
            self.no_local_endpoints.clone(),
        );
        registry.register(
            "twill_proxy_services_skipped",
            "Services skipped because of invalid fields",
            self.services_skipped.clone(),
        );
        registry.register(
            "twill_proxy_stale_udp_conntrack",
            "Stale UDP conntrack selectors found by syncs",
            self.stale_conntrack.clone(),
        );
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut s = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut s, &self.registry);
        s
    }
}

/// This node's model of `state` for a proxier with `metrics`: every skipped service is
/// logged and counted. Returns the model and how many services were skipped.
pub fn node_model(
    state: &twill_model::ClusterState,
    mc: &twill_proxy_core::ModelConfig,
    metrics: &Metrics,
) -> (std::sync::Arc<twill_proxy_core::ProxyModel>, usize) {
    let (model, skipped) = twill_proxy_core::build_model(state, mc);
    for s in &skipped {
        tracing::warn!(service = %s.service, reason = %s.reason, "service skipped");
    }
    metrics.services_skipped.inc_by(skipped.len() as u64);
    (std::sync::Arc::new(model), skipped.len())
}
