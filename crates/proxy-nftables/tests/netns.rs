//! nftables mode in namespaces this test creates: the applier's incremental and full
//! syncs, and the shared corpus flows.

#![allow(clippy::disallowed_methods)] // a test in namespaces: I/O and the clock are its job

use std::net::IpAddr;
use std::time::{Duration, Instant};

use twill_conformance::proxy::corpus::FlowOutcome;
use twill_conformance::proxy::flows::{self as lab, Mode};
use twill_model::{
    ClusterState, Endpoint, EndpointPort, EndpointSlice, IpFamily, Object, ObjectKey, Protocol,
    Service, ServicePort, ServiceType, SessionAffinity, TargetPort,
};
use twill_proxy_core::{FeatureGates, ModelConfig};
use twill_proxy_nftables::{Config, LocalDetector};
use twill_proxy_nftables::{NftKernel, NftProxier};
use twill_testkit::netns::Netns;

use twill_conformance::proxy::corpus::shared_fixtures as fixtures;

fn ready(test: &str) -> bool {
    twill_testkit::require_root(test) && twill_testkit::require_tool(test, "nft")
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Services `names`, each with a ClusterIP, ClientIP affinity and the given endpoints.
fn state(services: &[(&str, &[&str])]) -> ClusterState {
    let mut objs = Vec::new();
    for (i, (name, eps)) in services.iter().enumerate() {
        objs.push(Object::Service(Service {
            key: ObjectKey::new("ns", *name),
            service_type: ServiceType::ClusterIP,
            cluster_ips: vec![ip(&format!("172.30.0.{}", i + 1))],
            session_affinity: SessionAffinity::ClientIp {
                timeout_seconds: 300,
            },
            ports: vec![ServicePort {
                name: "p80".into(),
                protocol: Protocol::Tcp,
                port: 80,
                target_port: TargetPort::Number(80),
                node_port: None,
                app_protocol: None,
            }],
            ..Default::default()
        }));
        objs.push(Object::EndpointSlice(EndpointSlice {
            key: ObjectKey::new("ns", format!("{name}-1")),
            service_name: Some(name.to_string()),
            endpoints: eps
                .iter()
                .map(|a| Endpoint {
                    addresses: vec![ip(a)],
                    ..Default::default()
                })
                .collect(),
            ports: vec![EndpointPort {
                name: "p80".into(),
                protocol: Protocol::Tcp,
                port: Some(80),
                app_protocol: None,
            }],
            ..Default::default()
        }));
    }
    ClusterState::from_objects(objs)
}

fn proxier() -> NftProxier<NftKernel> {
    proxier_with_threshold(1000)
}

/// `large_cluster_endpoints`: 0 forces the named-map layout.
fn proxier_with_threshold(large_cluster_endpoints: usize) -> NftProxier<NftKernel> {
    let mc = ModelConfig {
        family: IpFamily::V4,
        node_name: "node1".into(),
        node_zone: None,
        gates: FeatureGates::default(),
    };
    let mut cfg = Config::new(
        IpFamily::V4,
        vec![ip("192.168.0.2")],
        LocalDetector::ClusterCidr("10.0.0.0/8".parse().unwrap()),
    );
    cfg.large_cluster_endpoints = large_cluster_endpoints;
    NftProxier::new(mc, cfg, Duration::from_secs(3600), NftKernel)
}

fn listing() -> String {
    let out = std::process::Command::new("nft")
        .args(["list", "table", "ip", "kube-proxy"])
        .output()
        .expect("nft runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn one_endpoint_change_is_applied_as_a_small_incremental_transaction() {
    if !ready("one_endpoint_change_is_applied_as_a_small_incremental_transaction") {
        return;
    }
    for threshold in [1000, 0] {
        let ns = Netns::new("nftinc");
        ns.run(|| incremental_sync_in_this_namespace(threshold));
    }
}

fn incremental_sync_in_this_namespace(threshold: usize) {
    let mut p = proxier_with_threshold(threshold);
    let t0 = Instant::now();
    let first = p
        .sync(
            &state(&[("a", &["10.1.0.1"]), ("b", &["10.2.0.1", "10.2.0.2"])]),
            t0,
        )
        .unwrap()
        .expect("first sync writes");
    assert!(first.full);
    let l = listing();
    assert!(l.contains("dnat to 10.2.0.2:80"), "{l}");
    let next = state(&[("a", &["10.1.0.1"]), ("b", &["10.2.0.1", "10.2.0.3"])]);
    let second = p.sync(&next, t0).unwrap().expect("a change writes");
    assert!(!second.full, "one endpoint change is incremental");
    assert_eq!(second.services_changed, 1);
    assert!(
        second.commands < first.commands / 2,
        "{} commands of {}",
        second.commands,
        first.commands
    );
    let l = listing();
    assert!(l.contains("dnat to 10.2.0.3:80"), "{l}");
    assert!(
        !l.contains("10.2.0.2"),
        "the old endpoint's chain and set are gone: {l}"
    );
    assert!(
        l.contains("dnat to 10.1.0.1:80"),
        "the other service is untouched"
    );
    assert_eq!(
        p.sync(&next, t0).unwrap(),
        None,
        "nothing changed, nothing written"
    );
}

#[test]
fn restart_converges_in_place_keeping_affinity_and_dropping_stale_chains() {
    if !ready("restart_converges_in_place_keeping_affinity_and_dropping_stale_chains") {
        return;
    }
    let ns = Netns::new("nftrst");
    ns.run(|| {
        let t0 = Instant::now();
        proxier()
            .sync(&state(&[("a", &["10.1.0.1"]), ("gone", &["10.9.0.1"])]), t0)
            .unwrap();
        let set = listing()
            .lines()
            .find_map(|l| {
                let l = l.trim();
                l.strip_prefix("set affinity-")
                    .filter(|r| r.contains("ns/a/"))
                    .map(|r| format!("affinity-{}", r.trim_end_matches(" {")))
            })
            .expect("affinity set of a");
        let add = std::process::Command::new("nft")
            .args(["add", "element", "ip", "kube-proxy", &set, "{ 10.7.7.7 }"])
            .status()
            .unwrap();
        assert!(add.success());
        // A new proxier (a restart) does a full sync against the table in place.
        let r = proxier()
            .sync(&state(&[("a", &["10.1.0.1"])]), t0)
            .unwrap()
            .unwrap();
        assert!(r.full);
        let l = listing();
        assert!(
            !l.contains("ns/gone/"),
            "stale chains and sets removed: {l}"
        );
        assert!(l.contains("10.7.7.7"), "affinity entries survive: {l}");
        assert!(l.contains("dnat to 10.1.0.1:80"));
    });
}

#[test]
fn shared_corpus_flows_pass_in_nftables_mode() {
    if !ready("shared_corpus_flows_pass_in_nftables_mode") {
        return;
    }
    let mut failures = Vec::new();
    let mut passed = 0;
    for (file, fx) in fixtures() {
        let run = lab::run_fixture_mode(&fx, Mode::Nftables);
        for (flow, o) in fx.flows.iter().zip(run.flows) {
            match o {
                FlowOutcome::Passed => passed += 1,
                FlowOutcome::Failed(e) => {
                    failures.push(format!("{file} [{}] {:?}: {e}", fx.name, flow.name))
                }
                FlowOutcome::Skipped(_) => {}
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(passed > 100, "only {passed} flows ran");
}

/// Kernel figures, run by hand (minutes, lots of memory in `nft`):
/// `cargo test -p twill-proxy --test netns nft_sync_timing -- --ignored --nocapture`.
/// Sizes from `TWILL_NFT_BENCH=services,endpoints` (default 5000,50).
#[test]
#[ignore = "benchmark; run by hand"]
fn nft_sync_timing_full_and_one_endpoint_change() {
    if !ready("nft_sync_timing_full_and_one_endpoint_change") {
        return;
    }
    let (services, endpoints) = std::env::var("TWILL_NFT_BENCH")
        .ok()
        .and_then(|v| {
            let (a, b) = v.split_once(',')?;
            Some((a.parse().ok()?, b.parse().ok()?))
        })
        .unwrap_or((5000u32, 50u32));
    let s1 = twill_proxy_core::synthetic::services(services, endpoints, None);
    let s2 = twill_proxy_core::synthetic::services(services, endpoints, Some(services / 2));
    let s3 = twill_proxy_core::synthetic::services(services, endpoints, Some(services / 3));
    let ns = Netns::new("nftbench");
    ns.run(|| {
        let mut p = proxier();
        let t0 = Instant::now();
        let full = p.sync(&s1, t0).unwrap().unwrap();
        println!(
            "{services} services x {endpoints} endpoints: full sync {:?} ({} commands, {} MB script, {} chains, {} rules, {} elements)",
            full.duration,
            full.commands,
            full.script_bytes / 1_000_000,
            full.chains,
            full.rules,
            full.elements
        );
        for (label, s) in [("one endpoint change", &s2), ("another endpoint change", &s3)] {
            let r = p.sync(s, t0).unwrap().unwrap();
            assert!(!r.full);
            println!(
                "{label}: incremental sync {:?} ({} commands)",
                r.duration, r.commands
            );
        }
        p.request_full_sync();
        let r = p.sync(&s1, t0).unwrap().unwrap();
        println!("in-place full resync: {:?} ({} commands)", r.duration, r.commands);
    });
}

/// Lines upstream's `TestOverallNFTablesRules` expects for the same six services the
/// corpus's `overall-iptables.json` fixture holds (pure; needs no root).
#[test]
fn overall_fixture_renders_upstream_nftables_lines() {
    let (_, fx) = fixtures()
        .into_iter()
        .find(|(f, fx)| f.ends_with("overall-iptables.json") && fx.name == "overall-six-services")
        .expect("overall fixture");
    let p = fx.prepare(false).expect("fixture prepares");
    let script =
        twill_proxy_nftables::full_script(&twill_proxy_nftables::render(&p.config, &p.model), None);
    let have: std::collections::BTreeSet<&str> = script.lines().collect();
    let want = [
        "add rule ip kube-proxy service-42NFTM6N-ns2/svc2/tcp/p80 ip daddr 172.30.0.42 ip saddr != 10.0.0.0/8 jump mark-for-masquerade",
        "add rule ip kube-proxy external-42NFTM6N-ns2/svc2/tcp/p80 ip saddr 10.0.0.0/8 goto service-42NFTM6N-ns2/svc2/tcp/p80 comment \"short-circuit pod traffic\"",
        "add rule ip kube-proxy external-42NFTM6N-ns2/svc2/tcp/p80 fib saddr type local goto service-42NFTM6N-ns2/svc2/tcp/p80 comment \"short-circuit local traffic\"",
        "add element ip kube-proxy service-ips { 192.168.99.22 . tcp . 80 : goto external-42NFTM6N-ns2/svc2/tcp/p80 }",
        "add element ip kube-proxy no-endpoint-nodeports { tcp . 3001 comment \"ns2/svc2:p80\" : drop }",
        "add element ip kube-proxy no-endpoint-services { 1.2.3.4 . tcp . 80 comment \"ns2/svc2:p80\" : drop }",
        "add rule ip kube-proxy service-LAUZTJTB-ns4/svc4/tcp/p80 numgen random mod 2 vmap { 0 : goto endpoint-UNZV3OEC-ns4/svc4/tcp/p80__10.180.0.4/80 , 1 : goto endpoint-5RFCDDV7-ns4/svc4/tcp/p80__10.180.0.5/80 }",
        "add set ip kube-proxy affinity-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80 { type ipv4_addr ; flags dynamic,timeout ; timeout 10800s ; }",
        "add rule ip kube-proxy service-HVFWP5L3-ns5/svc5/tcp/p80 ip saddr @affinity-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80 goto endpoint-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80",
        "add rule ip kube-proxy endpoint-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80 update @affinity-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80 { ip saddr }",
        "add rule ip kube-proxy firewall-HVFWP5L3-ns5/svc5/tcp/p80 ip saddr != { 203.0.113.0/25 } drop",
        "add element ip kube-proxy firewall-ips { 5.6.7.8 . tcp . 80 : goto firewall-HVFWP5L3-ns5/svc5/tcp/p80 }",
        "add element ip kube-proxy service-nodeports { tcp . 3002 : goto external-HVFWP5L3-ns5/svc5/tcp/p80 }",
        "add element ip kube-proxy no-endpoint-services { 172.30.0.46 . tcp . 80 comment \"ns6/svc6:p80\" : goto reject-chain }",
        "add element ip kube-proxy cluster-ips { 172.30.0.46 }",
    ];
    let missing: Vec<&str> = want.iter().copied().filter(|l| !have.contains(l)).collect();
    assert!(
        missing.is_empty(),
        "missing:\n{}\n\nscript:\n{script}",
        missing.join("\n")
    );
}

#[test]
fn nftables_expectation_lines_are_checked_against_the_kernel_listing() {
    if !ready("nftables_expectation_lines_are_checked_against_the_kernel_listing") {
        return;
    }
    let (_, mut fx) = fixtures()
        .into_iter()
        .find(|(f, _)| f.ends_with("clusterip.json"))
        .expect("a clusterip fixture");
    fx.nftables = Some(vec![
        "  jump services".into(),
        "masquerade fully-random".into(),
        "chain no-such-chain {".into(),
    ]);
    let run = lab::run_fixture_mode(&fx, Mode::Nftables);
    let problems = run.nftables.expect("the fixture states nftables lines");
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("no-such-chain"));
}
