//! What the agent says about itself: each part's last success, failures and pending
//! changes, the sources' rejected input, the health-check node ports' answers, and one
//! metrics registry. The runtime writes it after every sync; the HTTP server reads it.
//!
//! Health follows kube-proxy (`pkg/proxy/healthcheck/proxy_health.go`): a part is healthy
//! while it is starting and while no change has waited longer than the health timeout
//! (2 × the sync period) without a successful sync. A failed sync counts as waiting: the
//! data plane is not known to match. `/healthz` also needs the node to be eligible (not
//! being deleted); `/livez` does not. Readiness (`/readyz`) is stricter: the source has
//! listed everything and every part has synced successfully at least once.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// One part's record.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PartHealth {
    pub last_success: Option<Instant>,
    pub last_attempt: Option<Instant>,
    /// Failed syncs since start.
    pub failures_total: u64,
    /// Failed syncs in a row.
    pub consecutive_failures: u32,
    pub last_error: Option<String>,
    /// The oldest change (or failure) not yet followed by a successful sync.
    pub pending_since: Option<Instant>,
}

impl PartHealth {
    /// kube-proxy's rule: nothing has waited `timeout` for a successful sync.
    pub fn is_healthy(&self, now: Instant, timeout: Duration) -> bool {
        self.pending_since
            .is_none_or(|t| now.saturating_duration_since(t) < timeout)
    }
}

/// The answer of one `externalTrafficPolicy: Local` service's health-check node port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceHealth {
    pub namespace: String,
    pub name: String,
    pub local_endpoints: usize,
}

#[derive(Debug, Default)]
pub struct Inner {
    pub sync_period: Duration,
    pub parts: BTreeMap<&'static str, PartHealth>,
    /// The source has listed everything (the first `Synced`).
    pub source_synced: bool,
    /// Current problems of each input origin (a file, the API), each naming file,
    /// object and field; an origin that is clean again is removed.
    pub rejected_input: BTreeMap<String, Vec<String>>,
    pub node_eligible: bool,
    /// Health-check node port → its service's answer.
    pub service_health: BTreeMap<u16, ServiceHealth>,
    /// Stopping (CoreDNS's lameduck): still serving, but no longer ready, so load
    /// balancers and Services take this replica out before it goes.
    pub stopping: bool,
}

/// Shared between the runtime (writer) and the HTTP server (reader).
pub struct Status {
    inner: Mutex<Inner>,
    registry: Mutex<Registry>,
    /// The NetworkPolicy part's flow log, when it keeps one (`GET /flows`).
    flows: Mutex<Option<twill_netpol_agent::flows::FlowLog>>,
    /// `twill_agent_*`: the runtime's own metrics.
    pub metrics: AgentMetrics,
}

#[derive(Debug, Clone, Default)]
pub struct AgentMetrics {
    pub synced: Gauge,
    pub syncs: Counter,
    pub sync_failures: Counter,
    pub rejected_inputs: Counter,
    pub source_errors: Counter,
}

impl Status {
    pub fn new(sync_period: Duration) -> Arc<Status> {
        let mut registry = Registry::default();
        let metrics = AgentMetrics::default();
        registry.register(
            "twill_agent_synced",
            "Whether the source has completed its initial lists",
            metrics.synced.clone(),
        );
        registry.register(
            "twill_agent_syncs",
            "Sync passes over every part",
            metrics.syncs.clone(),
        );
        registry.register(
            "twill_agent_sync_failures",
            "Sync passes in which some part failed",
            metrics.sync_failures.clone(),
        );
        registry.register(
            "twill_agent_rejected_inputs",
            "Unreadable or invalid inputs kept out of the cluster state",
            metrics.rejected_inputs.clone(),
        );
        registry.register(
            "twill_agent_source_errors",
            "Source errors the source retried after",
            metrics.source_errors.clone(),
        );
        Arc::new(Status {
            inner: Mutex::new(Inner {
                sync_period,
                node_eligible: true,
                ..Default::default()
            }),
            registry: Mutex::new(registry),
            flows: Mutex::new(None),
            metrics,
        })
    }

    /// The state, for writing or reading (a poisoned lock is still usable: the data is
    /// plain records).
    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Add metrics to the one registry (a part registers when it is built).
    pub fn register(&self, f: impl FnOnce(&mut Registry)) {
        f(&mut self.registry.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// Serve this flow log on `/flows`.
    pub fn set_flows(&self, log: twill_netpol_agent::flows::FlowLog) {
        *self.flows.lock().unwrap_or_else(|p| p.into_inner()) = Some(log);
    }

    pub fn flows(&self) -> Option<twill_netpol_agent::flows::FlowLog> {
        self.flows.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Every metric, in the OpenMetrics text format (one `# EOF`).
    pub fn encode_metrics(&self) -> String {
        let mut out = String::new();
        let reg = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        let _ = encode(&mut out, &reg);
        out
    }
}

/// The health timeout: 2 × the sync period, as kube-proxy's.
pub fn health_timeout(sync_period: Duration) -> Duration {
    sync_period * 2
}

/// Whether every part is healthy now, and the newest last success.
pub fn healthy(st: &Inner, now: Instant) -> (bool, Option<Instant>) {
    let timeout = health_timeout(st.sync_period);
    let ok = st.parts.values().all(|p| p.is_healthy(now, timeout));
    let last = st.parts.values().filter_map(|p| p.last_success).max();
    (ok, last)
}

/// Whether the agent is ready: listed, and every part synced at least once with its last
/// attempt a success.
pub fn ready(st: &Inner) -> bool {
    !st.stopping
        && st.source_synced
        && !st.parts.is_empty()
        && st
            .parts
            .values()
            .all(|p| p.last_success.is_some() && p.consecutive_failures == 0)
}

/// Go's `time.Time` text, as kube-proxy's `%q` of one prints it.
pub fn go_time(t: SystemTime) -> String {
    match jiff::Timestamp::try_from(t) {
        Ok(ts) => ts.strftime("%Y-%m-%d %H:%M:%S%.f +0000 UTC").to_string(),
        Err(_) => "0001-01-01 00:00:00 +0000 UTC".into(),
    }
}

/// `instant` as wall-clock time, given a matching (`now_i`, `now_s`) pair.
pub fn wall(instant: Instant, now_i: Instant, now_s: SystemTime) -> SystemTime {
    now_s - now_i.saturating_duration_since(instant)
}

/// kube-proxy's `/healthz` (`with_node`) and `/livez` answers: (healthy, JSON body).
pub fn healthz_body(
    st: &Inner,
    now: Instant,
    wall_now: SystemTime,
    with_node: bool,
) -> (bool, String) {
    let (mut ok, last) = healthy(st, now);
    if with_node {
        ok &= st.node_eligible;
    }
    let current = go_time(wall_now);
    // As upstream: a healthy answer reports lastUpdated = currentTime.
    let last_updated = if ok {
        current.clone()
    } else {
        go_time(last.map_or(SystemTime::UNIX_EPOCH, |t| wall(t, now, wall_now)))
    };
    let body = if with_node {
        format!(
            "{{\"lastUpdated\": {last_updated:?},\"currentTime\": {current:?}, \"nodeEligible\": {}}}",
            st.node_eligible
        )
    } else {
        format!("{{\"lastUpdated\": {last_updated:?},\"currentTime\": {current:?}}}")
    };
    (ok, body)
}

/// `/readyz`: (ready, JSON with every part's record and the rejected input).
pub fn readyz_body(st: &Inner, now: Instant) -> (bool, String) {
    let timeout = health_timeout(st.sync_period);
    let mut parts = Vec::new();
    for (name, p) in &st.parts {
        let age = |t: Option<Instant>| {
            t.map_or("null".to_string(), |t| {
                format!("{:.3}", now.saturating_duration_since(t).as_secs_f64())
            })
        };
        parts.push(format!(
            "{name:?}: {{\"healthy\": {}, \"secondsSinceLastSuccess\": {}, \"failures\": {}, \"consecutiveFailures\": {}, \"lastError\": {}}}",
            p.is_healthy(now, timeout),
            age(p.last_success),
            p.failures_total,
            p.consecutive_failures,
            p.last_error
                .as_ref()
                .map_or("null".to_string(), |e| format!("{e:?}")),
        ));
    }
    let rejected: Vec<String> = st
        .rejected_input
        .iter()
        .map(|(origin, problems)| format!("{origin:?}: {problems:?}"))
        .collect();
    let ok = ready(st);
    (
        ok,
        format!(
            "{{\"ready\": {ok}, \"stopping\": {}, \"synced\": {}, \"parts\": {{{}}}, \"rejectedInput\": {{{}}}}}",
            st.stopping,
            st.source_synced,
            parts.join(", "),
            rejected.join(", ")
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inner(sync_period: Duration) -> Inner {
        Inner {
            sync_period,
            node_eligible: true,
            ..Default::default()
        }
    }

    #[test]
    fn a_part_is_healthy_until_a_change_waits_two_sync_periods() {
        let t0 = Instant::now();
        let mut st = inner(Duration::from_secs(30));
        st.parts.insert("proxy", PartHealth::default());
        assert!(healthy(&st, t0).0, "healthy while starting");
        st.parts.get_mut("proxy").unwrap().pending_since = Some(t0);
        assert!(healthy(&st, t0 + Duration::from_secs(59)).0);
        assert!(!healthy(&st, t0 + Duration::from_secs(60)).0);
    }

    #[test]
    fn healthz_says_node_eligible_and_livez_ignores_it() {
        let t0 = Instant::now();
        let w = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut st = inner(Duration::from_secs(30));
        st.node_eligible = false;
        let (ok, body) = healthz_body(&st, t0, w, true);
        assert!(!ok);
        assert!(body.ends_with("\"nodeEligible\": false}"), "{body}");
        let (ok, body) = healthz_body(&st, t0, w, false);
        assert!(ok);
        assert_eq!(
            body,
            "{\"lastUpdated\": \"2023-11-14 22:13:20 +0000 UTC\",\"currentTime\": \"2023-11-14 22:13:20 +0000 UTC\"}"
        );
    }

    #[test]
    fn ready_needs_the_listing_and_a_success_of_every_part() {
        let t0 = Instant::now();
        let mut st = inner(Duration::from_secs(30));
        st.parts.insert("proxy", PartHealth::default());
        assert!(!ready(&st));
        st.source_synced = true;
        assert!(!ready(&st));
        st.parts.get_mut("proxy").unwrap().last_success = Some(t0);
        assert!(ready(&st));
        st.parts.get_mut("proxy").unwrap().consecutive_failures = 1;
        let (ok, body) = readyz_body(&st, t0);
        assert!(!ok);
        assert!(body.contains("\"consecutiveFailures\": 1"), "{body}");
    }
}
