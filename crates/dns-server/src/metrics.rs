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
const DURATION_BOUNDS: [f64; 16] = [
    0.00025, 0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024,
    2.048, 4.096, 8.192,
];
/// CoreDNS's size buckets (`plugin/metrics/vars`), in bytes.
pub const SIZE_BOUNDS: [f64; 14] = [
    0.0, 100.0, 200.0, 300.0, 400.0, 511.0, 1023.0, 2047.0, 4095.0, 8291.0, 16e3, 32e3, 48e3, 64e3,
];

/// A histogram of atomics. prometheus-client's `Histogram` takes a mutex per observation,
/// which every UDP worker would contend on; this one only does relaxed adds.
#[derive(Clone, Debug)]
pub struct AtomicHistogram {
    inner: Arc<HistogramCells>,
}

#[derive(Debug)]
struct HistogramCells {
    bounds: &'static [f64],
    /// Per-bucket counts; the last cell is +Inf.
    counts: Box<[AtomicU64]>,
    /// The sum, in units of 1/`scale`.
    sum: AtomicU64,
    scale: f64,
}

impl Default for AtomicHistogram {
    /// Request durations in seconds.
    fn default() -> Self {
        Self::new(&DURATION_BOUNDS, 1e9)
    }
}

impl AtomicHistogram {
    /// Buckets up to `bounds` (then +Inf); the sum kept in units of 1/`scale`.
    pub fn new(bounds: &'static [f64], scale: f64) -> Self {
        AtomicHistogram {
            inner: Arc::new(HistogramCells {
                bounds,
                counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
                sum: AtomicU64::new(0),
                scale,
            }),
        }
    }

    /// Sizes in bytes, in CoreDNS's buckets.
    pub fn sizes() -> Self {
        Self::new(&SIZE_BOUNDS, 1.0)
    }

    /// The bucket `v` falls in.
    pub fn bucket(&self, v: f64) -> usize {
        let b = self.inner.bounds;
        b.iter().position(|bound| v <= *bound).unwrap_or(b.len())
    }

    pub fn observe(&self, v: f64) {
        self.observe_n(v, 1);
    }

    pub fn observe_n(&self, v: f64, n: u64) {
        self.add_to_bucket(self.bucket(v), n, v * n as f64);
    }

    /// Add `n` observations summing to `sum` to bucket `i` (for callers that count
    /// locally and flush once).
    pub fn add_to_bucket(&self, i: usize, n: u64, sum: f64) {
        let cells = &self.inner;
        cells.counts[i.min(cells.bounds.len())].fetch_add(n, Ordering::Relaxed);
        cells
            .sum
            .fetch_add((sum * cells.scale) as u64, Ordering::Relaxed);
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
        let cells = &self.inner;
        let buckets: Vec<(f64, u64)> = (0..=cells.bounds.len())
            .map(|i| {
                let bound = cells.bounds.get(i).copied().unwrap_or(f64::INFINITY);
                (bound, cells.counts[i].load(Ordering::Relaxed))
            })
            .collect();
        let sum = cells.sum.load(Ordering::Relaxed) as f64 / cells.scale;
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
struct SizeLabels {
    server: String,
    zone: String,
    view: String,
    proto: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
    revision: String,
    goversion: String,
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
    /// `[udp, tcp]`: request and response sizes in bytes.
    request_sizes: [AtomicHistogram; 2],
    response_sizes: [AtomicHistogram; 2],
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
        let sizes = |name: &str, help: &str, registry: &mut Registry| {
            let family = Family::<SizeLabels, AtomicHistogram>::new_with_constructor(
                AtomicHistogram::sizes as fn() -> AtomicHistogram,
            );
            let by_proto = ["udp", "tcp"].map(|proto| {
                family
                    .get_or_create(&SizeLabels {
                        server: s(server),
                        zone: s("."),
                        view: String::new(),
                        proto: s(proto),
                    })
                    .clone()
            });
            registry.register(name, help, family);
            by_proto
        };
        let request_sizes = sizes(
            "coredns_dns_request_size_bytes",
            "Size of the request in bytes per zone and protocol.",
            registry,
        );
        let response_sizes = sizes(
            "coredns_dns_response_size_bytes",
            "Size of the returned response in bytes.",
            registry,
        );
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: s(env!("CARGO_PKG_VERSION")),
                revision: String::new(),
                goversion: s("rust"),
            })
            .set(1);
        registry.register(
            "coredns_build_info",
            "A metric with a constant '1' value labeled by version, revision, and goversion from which CoreDNS was built.",
            build,
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
            request_sizes,
            response_sizes,
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

    /// One request's and its response's sizes.
    pub fn observe_sizes(&self, tcp: bool, request: usize, response: usize) {
        self.request_sizes[usize::from(tcp)].observe(request as f64);
        self.response_sizes[usize::from(tcp)].observe(response as f64);
    }

    /// The size histograms of one protocol (`[request, response]`), for callers that
    /// count buckets locally and flush once.
    pub fn size_histograms(&self, tcp: bool) -> [&AtomicHistogram; 2] {
        [
            &self.request_sizes[usize::from(tcp)],
            &self.response_sizes[usize::from(tcp)],
        ]
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
