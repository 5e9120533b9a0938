//! Kernel-side figures (needs root; runs in namespaces it creates):
//! `iptables-restore` time of the full ruleset, and the end-to-end time of a
//! one-endpoint change (model, diff, partial render, restore) against a forced full
//! sync of the same change, at 1k and 10k services × 10 endpoints (50k with
//! `TWILL_BENCH_50K=1`), plus the process's RSS. The partial sync is split into its
//! phases, next to the floor: a `--noflush` restore of one tiny chain into the same
//! table (what the restore tool costs before Twill writes anything).
//!
//! `cargo bench -p twill-proxy-iptables --bench sync`
//! (`TWILL_BENCH_SIZES=10000 TWILL_BENCH_VARIANTS=nft` to pick runs; nft at 10k is
//! opt-in with `TWILL_BENCH_NFT_10K=1`, its full restore takes minutes;
//! `TWILL_BENCH_QUICK=1` leaves out the standalone full restore and the final full sync.)

#![allow(clippy::disallowed_methods)] // a test in namespaces: I/O and the clock are its job

use std::time::{Duration, Instant};

use twill_conformance::proxy::flows as lab;
use twill_model::{ClusterState, IpFamily, ObjectKey};
use twill_netfilter::Family;
use twill_proxy_core::synthetic::{self, v4};
use twill_proxy_core::{FeatureGates, ModelConfig, build_model};
use twill_proxy_iptables::{Backend, Kernel, Proxier, Variant};
use twill_proxy_iptables::{Config, LocalDetector, SyncMode, render};

fn state(services: u32) -> ClusterState {
    synthetic::services(services, 10, None)
}

fn status(key: &str) -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .map(|l| l.split_whitespace().nth(1).unwrap_or("?").to_string())
        })
        .unwrap_or_else(|| "?".into())
}

/// A backend that accepts everything: the proxier's own memory and time, no kernel.
struct Accept;

impl Backend for Accept {
    fn restore(&mut self, _: Family, _: &str) -> Result<(), twill_netfilter::Error> {
        Ok(())
    }
    fn nat_chains(
        &mut self,
        _: Family,
    ) -> Result<std::collections::BTreeSet<String>, twill_netfilter::Error> {
        Ok(Default::default())
    }
    fn ensure_jumps(
        &mut self,
        _: Family,
        _: &[twill_proxy_iptables::BaseJump],
    ) -> Result<(), twill_netfilter::Error> {
        Ok(())
    }
    fn canary_present(&mut self, _: Family) -> bool {
        true
    }
    fn clear_conntrack(
        &mut self,
        _: &[twill_proxy_core::StaleConntrack],
    ) -> Result<usize, twill_proxy::conntrack::ConntrackError> {
        Ok(0)
    }
}

fn rss_kb() -> i64 {
    // SAFETY: malloc_trim only walks the allocator's free lists.
    unsafe {
        libc::malloc_trim(0);
    }
    status("VmRSS:").parse().unwrap_or(0)
}

/// Steady-state memory without a kernel: the cluster snapshot, then what the proxier
/// keeps after a full and a partial sync (last model, chain records, metrics).
fn memory_line(n: u32, mc: &ModelConfig, cfg: &Config) -> String {
    let base = rss_kb();
    let st = state(n);
    let with_state = rss_kb();
    let mut p = Proxier::new(mc.clone(), cfg.clone(), Duration::from_secs(3600), Accept);
    p.sync(&st, Instant::now()).expect("full sync");
    let after_full = rss_kb();
    let mut st2 = st.clone();
    let key = ObjectKey::new("bench", "svc7-a");
    st2.endpoint_slices.get_mut(&key).unwrap().endpoints[3].addresses = vec![v4(0x0B00_0001)];
    drop(st);
    let after_clone = rss_kb();
    let t = Instant::now();
    let rep = p
        .sync(&st2, Instant::now())
        .expect("partial")
        .expect("change");
    let t_partial = t.elapsed();
    let after_partial = rss_kb();
    format!(
        "| {n} | {} kB | {} kB | {} kB | {} ({} / {} / {}) |",
        with_state - base,
        after_full - with_state,
        after_partial - after_clone + (after_full - with_state),
        ms(t_partial),
        ms(rep.timings.model),
        ms(rep.timings.render),
        ms(rep.timings.other),
    )
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("sync bench skipped: needs root");
        return;
    }
    let mut sizes: Vec<u32> = match std::env::var("TWILL_BENCH_SIZES") {
        Ok(v) => v.split(',').filter_map(|s| s.trim().parse().ok()).collect(),
        Err(_) => vec![1_000, 10_000],
    };
    if std::env::var("TWILL_BENCH_50K").as_deref() == Ok("1") {
        sizes.push(50_000);
    }
    let quick = std::env::var("TWILL_BENCH_QUICK").as_deref() == Ok("1");
    let variants = std::env::var("TWILL_BENCH_VARIANTS").unwrap_or_else(|_| "legacy,nft".into());
    // iptables-nft-restore of a 10k-service ruleset takes minutes; opt in.
    let nft_max = if std::env::var("TWILL_BENCH_NFT_10K").as_deref() == Ok("1") {
        10_000
    } else {
        1_000
    };
    let mc = ModelConfig {
        family: IpFamily::V4,
        node_name: "n0".into(),
        node_zone: None,
        gates: FeatureGates::default(),
    };
    let cfg = Config::new(
        IpFamily::V4,
        vec![v4(0xC0A8_0002)],
        LocalDetector::ClusterCidr("10.0.0.0/8".parse().unwrap()),
    );
    if std::env::var("TWILL_BENCH_MEMORY").as_deref() != Ok("0") {
        println!(
            "| services | cluster snapshot (ClusterState) | proxier after full sync | proxier after partial sync | partial sync without kernel (model+diff / render / other) |"
        );
        println!("|---|---|---|---|---|");
        for &n in &sizes {
            println!("{}", memory_line(n, &mc, &cfg));
        }
    }
    println!(
        "| services | backend | nat rules | model | render full | restore full | 1-endpoint change, partial sync e2e (model+diff / render / restore / other) | empty --noflush restore (floor) | same change, full sync e2e | VmRSS |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for n in sizes {
        for (variant, vname) in [(Variant::Legacy, "legacy"), (Variant::Nft, "nft")] {
            if !variants.split(',').any(|v| v.trim() == vname) {
                continue;
            }
            if variant == Variant::Nft && n > nft_max {
                continue;
            }
            let st = state(n);
            let (mc, cfg) = (mc.clone(), cfg.clone());
            let ns = lab::Ns::new("bench").expect("namespace");
            let line = ns
                .spawn(move || {
                    let mut k = Kernel::new(variant);
                    let t = Instant::now();
                    let (model, _) = build_model(&st, &mc);
                    let t_model = t.elapsed();
                    let t = Instant::now();
                    let r = render(&cfg, &model, SyncMode::Full { existing: None });
                    let t_render = t.elapsed();
                    // With TWILL_BENCH_QUICK=1 the proxier's first (full) sync builds the
                    // table and the last full sync is left out: at 10k services each
                    // iptables-nft full restore takes ~7 minutes.
                    let t_restore = (!quick).then(|| {
                        let t = Instant::now();
                        k.restore(Family::V4, &r.text).expect("restore");
                        t.elapsed()
                    });
                    let nat_total = r.nat_rules_total;
                    drop((model, r));

                    // The proxier takes over the rules in place (first sync is full).
                    let mut p = Proxier::new(mc, cfg, Duration::from_secs(3600), k);
                    p.sync(&st, Instant::now()).expect("first sync");
                    // One endpoint of one service changes.
                    let mut st2 = st.clone();
                    let key = ObjectKey::new("bench", "svc7-a");
                    st2.endpoint_slices.get_mut(&key).unwrap().endpoints[3].addresses =
                        vec![v4(0x0B00_0001)];
                    let t = Instant::now();
                    let rep = p
                        .sync(&st2, Instant::now())
                        .expect("partial sync")
                        .expect("a change");
                    let t_partial = t.elapsed();
                    assert!(!rep.full);
                    let ph = rep.timings;
                    // The floor: the restore tool with one tiny chain, same table.
                    let t = Instant::now();
                    p.backend_mut()
                        .restore(
                            Family::V4,
                            "*nat\n:KUBE-MARK-MASQ - [0:0]\n-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000\nCOMMIT\n",
                        )
                        .expect("empty restore");
                    let t_floor = t.elapsed();
                    let t_full = (!quick).then(|| {
                        p.request_full_sync();
                        let t = Instant::now();
                        let rep = p
                            .sync(&st, Instant::now())
                            .expect("full sync")
                            .expect("a change");
                        assert!(rep.full);
                        t.elapsed()
                    });
                    format!(
                        "| {n} | {vname} | {} | {} | {} | {} | {} ({} / {} / {} / {}) | {} | {} | {} kB |",
                        nat_total,
                        ms(t_model),
                        ms(t_render),
                        t_restore.map_or("-".into(), ms),
                        ms(t_partial),
                        ms(ph.model),
                        ms(ph.render),
                        ms(ph.restore),
                        ms(ph.other),
                        ms(t_floor),
                        t_full.map_or("-".into(), ms),
                        status("VmRSS:")
                    )
                })
                .join()
                .expect("bench thread")
                .expect("enter namespace");
            println!("{line}");
        }
    }
    println!(
        "peak RSS of the bench process (VmHWM): {} kB",
        status("VmHWM:")
    );
}
