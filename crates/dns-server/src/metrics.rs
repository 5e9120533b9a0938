//! Metrics under CoreDNS's names (`plugin/metrics/vars/vars.go`, `plugin/cache`,
//! `plugin/forward`), so existing dashboards and alerts keep working.
//!
//! The hot path never takes a lock: every label combination a request can produce is
//! created up front and kept as a cloned handle (an `Arc` of atomics).

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

/// Upper bounds of the request-duration buckets: 0.25 ms doubling to about 8 s.
const BUCKETS: usize = 16;
fn bucket_bound(i: usize) -> f64 {
    0.00025 * f64::from(1u32 << i)
}

/// A histogram of atomics. prometheus-client's `Histogram` takes a mutex per observation,
/// which every UDP worker would contend on; this one only does relaxed adds.
#[derive(Clone, Debug, Default)]
pub struct AtomicHistogram {
    inner: Arc<HistogramCells>,
}

#[derive(Debug, Default)]
struct HistogramCells {
    /// Per-bucket counts; the last cell is +Inf.
    counts: [AtomicU64; BUCKETS + 1],
    sum_nanos: AtomicU64,
}

impl AtomicHistogram {
    pub fn observe(&self, seconds: f64) {
        self.observe_n(seconds, 1);
    }

    pub fn observe_n(&self, seconds: f64, n: u64) {
        let i = (0..BUCKETS)
            .find(|i| seconds <= bucket_bound(*i))
            .unwrap_or(BUCKETS);
        self.inner.counts[i].fetch_add(n, Ordering::Relaxed);
        self.inner
            .sum_nanos
            .fetch_add((seconds * 1e9) as u64 * n, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.inner
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }
}

impl TypedMetric for AtomicHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for AtomicHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let buckets: Vec<(f64, u64)> = (0..=BUCKETS)
            .map(|i| {
                let bound = if i == BUCKETS {
                    f64::INFINITY
                } else {
                    bucket_bound(i)
                };
                (bound, self.inner.counts[i].load(Ordering::Relaxed))
            })
            .collect();
        let sum = self.inner.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, self.count(), &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// Query types CoreDNS reports by name; everything else is `other`.
pub const TYPES: [&str; 11] = [
    "A", "AAAA", "SRV", "PTR", "TXT", "CNAME", "NS", "SOA", "MX", "ANY", "other",
];
pub const RCODES: [&str; 7] = [
    "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "other",
];

pub fn type_index(t: RecordType) -> usize {
    match t {
        RecordType::A => 0,
        RecordType::AAAA => 1,
        RecordType::SRV => 2,
        RecordType::PTR => 3,
        RecordType::TXT => 4,
        RecordType::CNAME => 5,
        RecordType::NS => 6,
        RecordType::SOA => 7,
        RecordType::MX => 8,
        RecordType::ANY => 9,
        _ => 10,
    }
}

pub fn rcode_index(r: ResponseCode) -> usize {
    match r {
        ResponseCode::NoError => 0,
        ResponseCode::FormErr => 1,
        ResponseCode::ServFail => 2,
        ResponseCode::NXDomain => 3,
        ResponseCode::NotImp => 4,
        ResponseCode::Refused => 5,
        _ => 6,
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    server: String,
    zone: String,
    view: String,
    proto: String,
    family: String,
    #[prometheus(flatten)]
    qtype: TypeLabel,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TypeLabel {
    r#type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResponseLabels {
    server: String,
    zone: String,
    view: String,
    rcode: String,
    plugin: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DurationLabels {
    server: String,
    zone: String,
    view: String,
    #[prometheus(flatten)]
    qtype: TypeLabel,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabels {
    server: String,
    zones: String,
    view: String,
    #[prometheus(flatten)]
    kind: TypeLabel,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheMissLabels {
    server: String,
    zones: String,
    view: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ToLabels {
    to: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ToRcodeLabels {
    to: String,
    rcode: String,
}

/// The server's metrics, with pre-made handles for the hot path.
pub struct Metrics {
    /// Its own registry, unless registered in the agent's one ([`Metrics::registered_in`]).
    registry: Option<Registry>,
    /// `[proto udp=0 tcp=1][family 1=0 2=1][type]`.
    requests: Vec<Counter>,
    /// `[plugin kubernetes=0 forward=1 other=2][rcode]`.
    responses: Vec<Counter>,
    durations: Vec<AtomicHistogram>,
    pub cache_hits_success: Counter,
    pub cache_hits_denial: Counter,
    pub cache_misses: Counter,
    pub cache_entries_success: Gauge,
    pub cache_entries_denial: Gauge,
    forward_requests: Family<ToLabels, Counter>,
    forward_responses: Family<ToRcodeLabels, Counter>,
    forward_healthcheck_failures: Family<ToLabels, Counter>,
    pub forward_max_concurrent_rejects: Counter,
    pub panics: Counter,
    pub loop_detected: Gauge<i64, AtomicI64Compat>,
}

/// `Gauge`'s default atomic, named so the field type reads plainly.
pub type AtomicI64Compat = std::sync::atomic::AtomicI64;

/// Which part of the server produced a response (CoreDNS's `plugin` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Kubernetes,
    Forward,
    Server,
}

impl Metrics {
    /// `server` is CoreDNS's server label (`dns://:53`); a registry of its own.
    pub fn new(server: &str) -> Self {
        let mut registry = Registry::default();
        let mut m = Self::registered_in(server, &mut registry);
        m.registry = Some(registry);
        m
    }

    /// The metrics, registered in `registry` (the agent's one registry).
    pub fn registered_in(server: &str, registry: &mut Registry) -> Self {
        let requests_family = Family::<RequestLabels, Counter>::default();
        let responses_family = Family::<ResponseLabels, Counter>::default();
        let durations_family = Family::<DurationLabels, AtomicHistogram>::default();
        let s = |x: &str| x.to_string();
        let mut requests = Vec::new();
        for proto in ["udp", "tcp"] {
            for family in ["1", "2"] {
                for t in TYPES {
                    requests.push(
                        requests_family
                            .get_or_create(&RequestLabels {
                                server: s(server),
                                zone: s("."),
                                view: String::new(),
                                proto: s(proto),
                                family: s(family),
                                qtype: TypeLabel { r#type: s(t) },
                            })
                            .clone(),
                    );
                }
            }
        }
        let mut responses = Vec::new();
        for plugin in ["kubernetes", "forward", ""] {
            for rcode in RCODES {
                responses.push(
                    responses_family
                        .get_or_create(&ResponseLabels {
                            server: s(server),
                            zone: s("."),
                            view: String::new(),
                            rcode: s(rcode),
                            plugin: s(plugin),
                        })
                        .clone(),
                );
            }
        }
        let durations = TYPES
            .iter()
            .map(|t| {
                durations_family
                    .get_or_create(&DurationLabels {
                        server: s(server),
                        zone: s("."),
                        view: String::new(),
                        qtype: TypeLabel { r#type: s(t) },
                    })
                    .clone()
            })
            .collect();
        registry.register(
            "coredns_dns_requests",
            "Counter of DNS requests made per zone, protocol and family.",
            requests_family,
        );
        registry.register(
            "coredns_dns_responses",
            "Counter of response status codes.",
            responses_family,
        );
        registry.register(
            "coredns_dns_request_duration_seconds",
            "Histogram of the time (in seconds) each request took per zone.",
            durations_family,
        );

        let hits = Family::<CacheLabels, Counter>::default();
        let entries = Family::<CacheLabels, Gauge>::default();
        let misses = Family::<CacheMissLabels, Counter>::default();
        let cache_labels = |kind: &str| CacheLabels {
            server: s(server),
            zones: s("."),
            view: String::new(),
            kind: TypeLabel { r#type: s(kind) },
        };
        let cache_hits_success = hits.get_or_create(&cache_labels("success")).clone();
        let cache_hits_denial = hits.get_or_create(&cache_labels("denial")).clone();
        let cache_entries_success = entries.get_or_create(&cache_labels("success")).clone();
        let cache_entries_denial = entries.get_or_create(&cache_labels("denial")).clone();
        let cache_misses = misses
            .get_or_create(&CacheMissLabels {
                server: s(server),
                zones: s("."),
                view: String::new(),
            })
            .clone();
        registry.register("coredns_cache_hits", "The count of cache hits.", hits);
        registry.register("coredns_cache_misses", "The count of cache misses.", misses);
        registry.register(
            "coredns_cache_entries",
            "The number of elements in the cache.",
            entries,
        );

        let forward_requests = Family::<ToLabels, Counter>::default();
        let forward_responses = Family::<ToRcodeLabels, Counter>::default();
        let forward_healthcheck_failures = Family::<ToLabels, Counter>::default();
        registry.register(
            "coredns_forward_requests",
            "Counter of requests made per upstream.",
            forward_requests.clone(),
        );
        registry.register(
            "coredns_forward_responses",
            "Counter of responses received per upstream.",
            forward_responses.clone(),
        );
        registry.register(
            "coredns_forward_healthcheck_failures",
            "Counter of the number of failed healthchecks.",
            forward_healthcheck_failures.clone(),
        );
        let forward_max_concurrent_rejects = Counter::default();
        registry.register(
            "coredns_forward_max_concurrent_rejects",
            "Counter of the number of queries rejected because the concurrent queries were at maximum.",
            forward_max_concurrent_rejects.clone(),
        );
        let panics = Counter::default();
        registry.register(
            "coredns_panics",
            "A metrics that counts the number of panics.",
            panics.clone(),
        );
        let loop_detected = Gauge::<i64, AtomicI64Compat>::default();
        registry.register(
            "twill_dns_forward_loop_detected",
            "1 when a forwarding loop back to this server was detected.",
            loop_detected.clone(),
        );
        Metrics {
            registry: None,
            requests,
            responses,
            durations,
            cache_hits_success,
            cache_hits_denial,
            cache_misses,
            cache_entries_success,
            cache_entries_denial,
            forward_requests,
            forward_responses,
            forward_healthcheck_failures,
            forward_max_concurrent_rejects,
            panics,
            loop_detected,
        }
    }

    /// Count one answered request.
    pub fn observe(
        &self,
        tcp: bool,
        v6: bool,
        qtype: usize,
        rcode: usize,
        source: Source,
        seconds: f64,
    ) {
        self.observe_n(tcp, v6, qtype, rcode, source, seconds, 1);
    }

    /// Count `n` requests with the same labels and duration at once (the UDP workers'
    /// per-batch flush, which keeps shared cache lines out of the per-query path).
    #[allow(clippy::too_many_arguments)]
    pub fn observe_n(
        &self,
        tcp: bool,
        v6: bool,
        qtype: usize,
        rcode: usize,
        source: Source,
        seconds: f64,
        n: u64,
    ) {
        let idx =
            (usize::from(tcp) * 2 + usize::from(v6)) * TYPES.len() + qtype.min(TYPES.len() - 1);
        self.requests[idx].inc_by(n);
        let plugin = match source {
            Source::Kubernetes => 0,
            Source::Forward => 1,
            Source::Server => 2,
        };
        self.responses[plugin * RCODES.len() + rcode.min(RCODES.len() - 1)].inc_by(n);
        self.durations[qtype.min(TYPES.len() - 1)].observe_n(seconds, n);
    }

    pub fn forward_request(&self, to: &str) {
        self.forward_requests
            .get_or_create(&ToLabels { to: to.to_string() })
            .inc();
    }

    pub fn forward_response(&self, to: &str, rcode: ResponseCode) {
        let rcode = twill_dns_rcode(rcode);
        self.forward_responses
            .get_or_create(&ToRcodeLabels {
                to: to.to_string(),
                rcode,
            })
            .inc();
    }

    pub fn healthcheck_failure(&self, to: &str) {
        self.forward_healthcheck_failures
            .get_or_create(&ToLabels { to: to.to_string() })
            .inc();
    }

    /// The OpenMetrics text exposition of its own registry (empty when registered in
    /// another: that one's owner encodes it).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Some(r) = &self.registry {
            // Writing into a String cannot fail.
            let _ = prometheus_client::encoding::text::encode(&mut out, r);
        }
        out
    }
}

fn twill_dns_rcode(r: ResponseCode) -> String {
    RCODES[rcode_index(r)].to_string()
}
