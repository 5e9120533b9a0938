//! nftables render figures at 5k services × 50 endpoints (250k endpoints): the full
//! desired state and transaction, and a one-endpoint change (incremental render plus
//! diff transaction).
//!
//! `cargo bench -p twill-proxy-nftables --bench render`

use std::collections::BTreeSet;
use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use twill_model::{IpFamily, ObjectKey};
use twill_proxy_core::{FeatureGates, ModelConfig, ProxyModel, build_model, synthetic};
use twill_proxy_nftables::{
    Config, LocalDetector, diff_script, full_script, render, render_changed,
};

const SERVICES: u32 = 5_000;
const ENDPOINTS: u32 = 50;

fn model(bump: Option<u32>) -> ProxyModel {
    let mc = ModelConfig {
        family: IpFamily::V4,
        node_name: "n0".into(),
        node_zone: None,
        gates: FeatureGates::default(),
    };
    build_model(&synthetic::services(SERVICES, ENDPOINTS, bump), &mc).0
}

fn cfg() -> Config {
    Config::new(
        IpFamily::V4,
        vec![synthetic::v4(0xC0A8_0002)],
        LocalDetector::ClusterCidr("10.0.0.0/8".parse().expect("cidr")),
    )
}

fn bench(c: &mut Criterion) {
    let cfg = cfg();
    let m1 = model(None);
    let m2 = model(Some(SERVICES / 2));
    let changed: BTreeSet<ObjectKey> =
        BTreeSet::from([ObjectKey::new("bench", format!("svc{}", SERVICES / 2))]);
    let d1 = render(&cfg, &m1);
    let mut g = c.benchmark_group("nftables_5k_services_x_50_endpoints");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(20));
    g.bench_function("full_render_and_transaction", |b| {
        b.iter(|| {
            let d = render(&cfg, black_box(&m1));
            black_box(full_script(&d, None).len())
        })
    });
    g.bench_function("one_endpoint_change_render_and_diff", |b| {
        b.iter(|| {
            let d2 = render_changed(&cfg, black_box(&m2), &d1, &changed);
            black_box(diff_script(&d1, &d2).map(|s| s.len()))
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
