use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::{BaseJump, Config, LocalDetector};
use twill_model::{
    ClusterState, Endpoint, EndpointPort, EndpointSlice, IpFamily, Object, ObjectKey, Protocol,
    Service, ServicePort, ServiceType, TargetPort,
};
use twill_netfilter::Family;
use twill_proxy_core::{FeatureGates, ModelConfig, StaleConntrack};

use super::{Backend, Proxier};

#[derive(Default)]
struct Fake {
    restores: Vec<String>,
    chains: BTreeSet<String>,
    fail_next: bool,
    canary: bool,
    jumps_ensured: usize,
    conntrack_cleared: Vec<StaleConntrack>,
}

impl Backend for Fake {
    fn restore(&mut self, _f: Family, text: &str) -> Result<(), twill_netfilter::Error> {
        if std::mem::take(&mut self.fail_next) {
            return Err(twill_netfilter::Error::Failed {
                program: "iptables-restore".into(),
                status: "1".into(),
                stderr: "line 3 failed".into(),
            });
        }
        self.restores.push(text.to_string());
        // Track nat chains as the kernel would.
        let mut in_nat = false;
        for l in text.lines() {
            if l.starts_with('*') {
                in_nat = l == "*nat";
            } else if in_nat && let Some(c) = l.strip_prefix(':') {
                self.chains
                    .insert(c.split_whitespace().next().unwrap().to_string());
            } else if in_nat && let Some(c) = l.strip_prefix("-X ") {
                self.chains.remove(c);
            }
        }
        Ok(())
    }
    fn nat_chains(&mut self, _f: Family) -> Result<BTreeSet<String>, twill_netfilter::Error> {
        Ok(self.chains.clone())
    }
    fn ensure_jumps(&mut self, _f: Family, _j: &[BaseJump]) -> Result<(), twill_netfilter::Error> {
        self.jumps_ensured += 1;
        self.canary = true;
        Ok(())
    }
    fn canary_present(&mut self, _f: Family) -> bool {
        self.canary
    }
    fn clear_conntrack(
        &mut self,
        stale: &[StaleConntrack],
    ) -> Result<usize, twill_proxy::conntrack::ConntrackError> {
        self.conntrack_cleared.extend(stale.iter().cloned());
        Ok(stale.len())
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn state(services: &[(&str, &[&str])]) -> ClusterState {
    let mut objs = Vec::new();
    for (i, (name, eps)) in services.iter().enumerate() {
        objs.push(Object::Service(Service {
            key: ObjectKey::new("ns", *name),
            service_type: ServiceType::ClusterIP,
            cluster_ips: vec![ip(&format!("172.30.0.{}", i + 1))],
            ports: vec![ServicePort {
                name: String::new(),
                protocol: Protocol::Udp,
                port: 53,
                target_port: TargetPort::Number(53),
                node_port: None,
                app_protocol: None,
            }],
            ..Default::default()
        }));
        objs.push(Object::EndpointSlice(EndpointSlice {
            key: ObjectKey::new("ns", format!("{name}-a")),
            service_name: Some(name.to_string()),
            endpoints: eps
                .iter()
                .map(|a| Endpoint {
                    addresses: vec![ip(a)],
                    ..Default::default()
                })
                .collect(),
            ports: vec![EndpointPort {
                name: String::new(),
                protocol: Protocol::Udp,
                port: Some(53),
                app_protocol: None,
            }],
            ..Default::default()
        }));
    }
    ClusterState::from_objects(objs)
}

fn proxier() -> Proxier<Fake> {
    let mc = ModelConfig {
        family: IpFamily::V4,
        node_name: "n".into(),
        node_zone: None,
        gates: FeatureGates::default(),
    };
    let cfg = Config::new(
        IpFamily::V4,
        vec![ip("192.168.0.2")],
        LocalDetector::ClusterCidr("10.0.0.0/8".parse().unwrap()),
    );
    Proxier::new(mc, cfg, Duration::from_secs(30), Fake::default())
}

#[test]
fn first_sync_is_full_and_an_unchanged_state_writes_nothing() {
    let mut p = proxier();
    let t0 = Instant::now();
    let s = state(&[("a", &["10.1.0.1"]), ("b", &["10.1.0.2"])]);
    let r = p.sync(&s, t0).unwrap().unwrap();
    assert!(r.full);
    assert_eq!(p.backend_mut().jumps_ensured, 1);
    assert!(p.sync(&s, t0 + Duration::from_secs(1)).unwrap().is_none());
    assert_eq!(p.backend_mut().restores.len(), 1);
}

#[test]
fn one_endpoint_change_is_a_partial_sync_of_that_service_and_drops_its_stale_chain() {
    let mut p = proxier();
    let t0 = Instant::now();
    p.sync(
        &state(&[("a", &["10.1.0.1"]), ("b", &["10.1.0.2", "10.1.0.3"])]),
        t0,
    )
    .unwrap();
    let before = p.backend_mut().chains.clone();
    let r = p
        .sync(
            &state(&[("a", &["10.1.0.1"]), ("b", &["10.1.0.2"])]),
            t0 + Duration::from_secs(1),
        )
        .unwrap()
        .unwrap();
    assert!(!r.full);
    assert_eq!(r.services_changed, 1);
    assert_eq!(r.deleted_chains, 1, "the removed endpoint's SEP chain goes");
    assert_eq!(
        r.stale_udp.len(),
        1,
        "UDP conntrack for the removed endpoint is stale"
    );
    let text = p.backend_mut().restores.last().unwrap().clone();
    assert!(
        !text.contains("ns/a -> 10.1.0.1:53"),
        "unchanged service a is not rewritten:\n{text}"
    );
    assert!(text.contains("ns/b -> 10.1.0.2:53"));
    assert!(
        !text.contains(":KUBE-SERVICES "),
        "KUBE-SERVICES did not change, so it is left as it is:\n{text}"
    );
    assert!(
        !text.contains("*filter"),
        "no filter chain changed, so no filter section"
    );
    assert_eq!(before.len(), p.backend_mut().chains.len() + 1);
}

#[test]
fn a_changed_top_level_chain_is_rewritten_complete_in_a_partial_sync() {
    let mut p = proxier();
    let t0 = Instant::now();
    p.sync(&state(&[("a", &["10.1.0.1"])]), t0).unwrap();
    let r = p
        .sync(
            &state(&[("a", &["10.1.0.1"]), ("b", &[])]),
            t0 + Duration::from_secs(1),
        )
        .unwrap()
        .unwrap();
    assert!(!r.full);
    let text = p.backend_mut().restores.last().unwrap().clone();
    // b has no endpoints: a REJECT in filter KUBE-SERVICES, which is rewritten whole.
    assert!(text.contains("*filter\n"), "{text}");
    assert!(text.contains("\"ns/b has no endpoints\""), "{text}");
    assert!(
        !text.contains("\"ns/a cluster IP\""),
        "nat KUBE-SERVICES is unchanged and left out:\n{text}"
    );
    // b gets an endpoint: nat KUBE-SERVICES changes and is written with every service.
    p.sync(
        &state(&[("a", &["10.1.0.1"]), ("b", &["10.1.0.2"])]),
        t0 + Duration::from_secs(2),
    )
    .unwrap()
    .unwrap();
    let text = p.backend_mut().restores.last().unwrap().clone();
    assert!(text.contains(":KUBE-SERVICES - [0:0]"));
    assert!(text.contains("\"ns/a cluster IP\""), "{text}");
    assert!(text.contains("\"ns/b cluster IP\""), "{text}");
    // After a failed restore, the next (full) sync writes every chain again.
    p.backend_mut().fail_next = true;
    let s3 = state(&[("a", &["10.1.0.1"]), ("b", &["10.1.0.3"])]);
    assert!(p.sync(&s3, t0 + Duration::from_secs(3)).is_err());
    let r = p.sync(&s3, t0 + Duration::from_secs(4)).unwrap().unwrap();
    assert!(r.full);
    let text = p.backend_mut().restores.last().unwrap().clone();
    assert!(text.contains("*filter\n") && text.contains("\"ns/a cluster IP\""));
}

#[test]
fn restore_failure_counts_and_forces_a_full_sync_that_still_applies_the_change() {
    let mut p = proxier();
    let t0 = Instant::now();
    p.sync(&state(&[("a", &["10.1.0.1"])]), t0).unwrap();
    p.backend_mut().fail_next = true;
    let changed = state(&[("a", &["10.1.0.9"])]);
    assert!(p.sync(&changed, t0 + Duration::from_secs(1)).is_err());
    assert!(
        p.metrics
            .encode()
            .contains("kubeproxy_sync_proxy_rules_iptables_restore_failures_total 1")
    );
    let r = p
        .sync(&changed, t0 + Duration::from_secs(2))
        .unwrap()
        .unwrap();
    assert!(r.full);
    assert!(
        p.backend_mut()
            .restores
            .last()
            .unwrap()
            .contains("10.1.0.9:53")
    );
}

#[test]
fn periodic_resync_is_full_and_a_missing_canary_forces_one() {
    let mut p = proxier();
    let t0 = Instant::now();
    let s = state(&[("a", &["10.1.0.1"])]);
    p.sync(&s, t0).unwrap();
    assert!(
        p.sync(&s, t0 + Duration::from_secs(31))
            .unwrap()
            .unwrap()
            .full
    );
    p.backend_mut().canary = false;
    let r = p.sync(&s, t0 + Duration::from_secs(62)).unwrap().unwrap();
    assert!(r.full);
}

#[test]
fn metrics_use_upstream_names() {
    let mut p = proxier();
    p.sync(&state(&[("a", &["10.1.0.1"])]), Instant::now())
        .unwrap();
    let text = p.metrics.encode();
    for name in [
        "kubeproxy_sync_proxy_rules_duration_seconds_bucket",
        "kubeproxy_sync_full_proxy_rules_duration_seconds_count 1",
        "kubeproxy_sync_partial_proxy_rules_duration_seconds_count 0",
        "kubeproxy_network_programming_duration_seconds",
        "kubeproxy_sync_proxy_rules_iptables_total{table=\"nat\"}",
        "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
    ] {
        assert!(text.contains(name), "{name} missing from:\n{text}");
    }
}

#[test]
fn crossing_the_large_cluster_threshold_rewrites_every_chain_in_one_full_sync() {
    let mut p = proxier();
    let t0 = Instant::now();
    let few: Vec<String> = (1..=3).map(|i| format!("10.1.0.{i}")).collect();
    let many: Vec<String> = (0..1001)
        .map(|i| format!("10.2.{}.{}", i / 250, i % 250 + 1))
        .collect();
    let few: Vec<&str> = few.iter().map(String::as_str).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    p.sync(&state(&[("a", &few), ("b", &few)]), t0).unwrap();
    let r = p
        .sync(
            &state(&[("a", &few), ("b", &many)]),
            t0 + Duration::from_secs(1),
        )
        .unwrap()
        .unwrap();
    assert!(r.full, "a's chains must lose their comments too");
    let text = p.backend_mut().restores.last().unwrap().clone();
    assert!(
        !text.contains("\"ns/a -> 10.1.0.1:53\""),
        "large-cluster form has no endpoint comments"
    );
    let r = p
        .sync(
            &state(&[("a", &few[..2]), ("b", &many)]),
            t0 + Duration::from_secs(2),
        )
        .unwrap()
        .unwrap();
    assert!(!r.full, "no flip, so a partial sync");
}

#[test]
fn a_one_endpoint_change_in_a_large_cluster_writes_only_that_services_chains() {
    use twill_proxy_core::synthetic;
    let mut p = proxier();
    let t0 = Instant::now();
    p.sync(&synthetic::services(200, 10, None), t0).unwrap();
    let full = p.backend_mut().restores.pop().unwrap();
    let rep = p
        .sync(
            &synthetic::services(200, 10, Some(7)),
            t0 + Duration::from_secs(1),
        )
        .unwrap()
        .expect("a change");
    assert!(!rep.full);
    let text = p.backend_mut().restores.pop().unwrap();
    let svc7 = full
        .lines()
        .find(|l| l.contains("\"bench/svc7:http cluster IP\"") && l.starts_with("-A KUBE-SERVICES"))
        .and_then(|l| l.split_whitespace().last())
        .unwrap()
        .to_string();
    let svc7_chain = format!(":{svc7} ");
    // As upstream's partial sync: every chain of the changed service is rewritten (its
    // service chain and its ten endpoint chains, one of them new), nothing of the other
    // services and no top-level chain; in a large cluster the old endpoint's chain is
    // not deleted (the next full sync does it).
    let declared: Vec<&str> = text.lines().filter(|l| l.starts_with(':')).collect();
    assert_eq!(declared.len(), 11, "{text}");
    assert!(
        declared.iter().any(|l| l.starts_with(&svc7_chain)),
        "{text}"
    );
    assert!(
        declared
            .iter()
            .all(|l| l.starts_with(&svc7_chain) || l.starts_with(":KUBE-SEP-")),
        "{text}"
    );
    assert!(!text.contains("\n-X "), "{text}");
    assert!(!text.contains("-A KUBE-SERVICES"), "{text}");
    let rules = text.lines().filter(|l| l.starts_with("-A ")).count();
    assert_eq!(rules, 1 + 10 + 10 * 2, "{text}");
    assert!(text.contains("--to-destination 11.0.0.7:8080"), "{text}");
}
