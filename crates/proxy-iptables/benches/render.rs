//! Render time of the full ruleset and of a one-service partial sync, at 1k, 10k and
//! 50k services with 10 endpoints each (`cargo bench -p twill-proxy-iptables --bench
//! render`). Every size is above upstream's large-cluster threshold (1000 endpoints),
//! so endpoint comments are left out, as kube-proxy does. Criterion reports warm
//! figures (the allocator reuses the previous iteration's pages); the first render in a
//! fresh process also pays page faults (see the `render full` column of
//! `cargo bench -p twill-proxy-iptables --bench sync`).

use std::collections::BTreeSet;
use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use twill_model::{IpFamily, ObjectKey};
use twill_proxy_core::{FeatureGates, ModelConfig, ProxyModel, build_model, synthetic};
use twill_proxy_iptables::{Config, LocalDetector, SyncMode, render};

/// `services` ClusterIP services, each with one TCP port and 10 ready endpoints.
fn model(services: u32) -> ProxyModel {
    let mc = ModelConfig {
        family: IpFamily::V4,
        node_name: "n0".into(),
        node_zone: None,
        gates: FeatureGates::default(),
    };
    build_model(&synthetic::services(services, 10, None), &mc).0
}

fn bench(c: &mut Criterion) {
    let cfg = Config::new(
        IpFamily::V4,
        vec![synthetic::v4(0xC0A8_0002)],
        LocalDetector::ClusterCidr("10.0.0.0/8".parse().unwrap()),
    );
    let mut g = c.benchmark_group("render");
    g.sample_size(10);
    for n in [1_000u32, 10_000, 50_000] {
        let m = model(n);
        let changed: BTreeSet<ObjectKey> = [ObjectKey::new("bench", "svc7")].into();
        g.bench_with_input(BenchmarkId::new("full", n), &m, |b, m| {
            b.iter(|| black_box(render(&cfg, m, SyncMode::Full { existing: None })))
        });
        let previous = render(&cfg, &m, SyncMode::Full { existing: None }).services;
        g.bench_with_input(BenchmarkId::new("partial_one_service", n), &m, |b, m| {
            b.iter(|| {
                black_box(render(
                    &cfg,
                    m,
                    SyncMode::Partial {
                        changed: &changed,
                        previous: &previous,
                        applied_top: None,
                    },
                ))
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
