//! Privileged: truth-table scenarios replayed in a netns cluster with real connections.

use twill_conformance::netpol::corpus::load_dir;
use twill_conformance::netpol::harness::HarnessOptions;
use twill_conformance::netpol::replay::{PolicyOrder, run_scenario};
use twill_netpol::DenyAction;

fn run(names: &[&str], order: PolicyOrder, deny: DenyAction) {
    let files = load_dir(&twill_testkit::testdata::area_dir("netpol")).unwrap();
    let opts = HarnessOptions {
        deny,
        ..HarnessOptions::default()
    };
    let mut ran = 0;
    for (path, file) in &files {
        for sc in file
            .scenarios
            .iter()
            .filter(|s| names.contains(&s.name.as_str()))
        {
            let r = run_scenario(path, file, sc, order, &opts)
                .unwrap_or_else(|e| panic!("{}: {e}", sc.name));
            assert!(
                r.failures.is_empty(),
                "{}:\n{}",
                sc.name,
                r.failures.join("\n")
            );
            assert!(r.passed > 50, "{}: only {} probes ran", sc.name, r.passed);
            ran += 1;
        }
    }
    assert_eq!(ran, names.len(), "scenarios missing from the corpus");
}

#[test]
fn default_deny_and_named_ports_hold_with_real_connections_when_policies_come_after_pods() {
    if !twill_testkit::require_root("default_deny_and_named_ports_hold_with_real_connections") {
        return;
    }
    run(
        &["default-deny-ingress", "egress-named-port"],
        PolicyOrder::AfterPods,
        DenyAction::Reject,
    );
}

#[test]
fn label_changes_and_ipblock_except_hold_when_policies_come_before_pods_with_drop() {
    if !twill_testkit::require_root(
        "label_changes_and_ipblock_except_hold_when_policies_come_before_pods",
    ) {
        return;
    }
    run(
        &["pod-label-added", "ingress-ipblock-external-and-pods"],
        PolicyOrder::BeforePods,
        DenyAction::Drop,
    );
}

mod enforcer {
    use serde_json::json;
    use twill_conformance::netpol::corpus::{World, load_dir};
    use twill_model::ObjectKey;
    use twill_netpol::RenderOptions;
    use twill_netpol_agent::apply::{existing_chains, existing_sets};
    use twill_netpol_agent::daemon::{Enforcer, SyncOutcome};
    use twill_testkit::netns::Netns;

    #[test]
    fn enforcer_applies_once_skips_unchanged_state_and_removes_stale_chains_and_sets() {
        if !twill_testkit::require_root(
            "enforcer_applies_once_skips_unchanged_state_and_removes_stale_chains_and_sets",
        ) {
            return;
        }
        let files = load_dir(&twill_testkit::testdata::area_dir("netpol")).unwrap();
        let spec = &files[0].1.cluster;
        let policy = json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "from-y", "namespace": "x"},
            "spec": {"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]}});
        let world = World::new("test", "enforcer", spec, &[policy]).unwrap();
        let node = world.cluster.pods.values().next().unwrap().node.clone();
        let ns = Netns::new("npe");
        ns.run(|| {
            let mut e = Enforcer::new(&node, RenderOptions::default());
            let first = e.sync(world.cluster.clone()).unwrap();
            assert!(
                matches!(first, SyncOutcome::Applied { rules, sets, .. } if rules > 5 && sets == 1),
                "{first:?}"
            );
            let chains = existing_chains();
            assert!(
                chains.iter().any(|c| c.starts_with("TWILL-NPI-")),
                "{chains:?}"
            );
            assert_eq!(
                existing_sets()
                    .iter()
                    .filter(|s| s.starts_with("TWILL-NPS-"))
                    .count(),
                1
            );
            assert_eq!(
                e.sync(world.cluster.clone()).unwrap(),
                SyncOutcome::Unchanged
            );
            let text = e.metrics.encode();
            assert!(text.contains("twill_netpol_policies 1"), "{text}");

            // A label change that only moves pods out of a peer set touches sets only.
            let mut relabelled = world.cluster.clone();
            relabelled.namespaces.insert("y".into(), Default::default());
            let out = e.sync(relabelled).unwrap();
            assert!(
                matches!(
                    out,
                    SyncOutcome::Applied {
                        sets_only: true,
                        ..
                    }
                ),
                "{out:?}"
            );
            let set = existing_sets()
                .into_iter()
                .find(|s| s.starts_with("TWILL-NPS-"))
                .unwrap();
            let listed = twill_netfilter::run_with_input("ipset", &["list", &set], b"").unwrap();
            assert!(
                !listed.contains("10.244."),
                "y's pods left the set: {listed}"
            );

            let mut without = world.cluster.clone();
            without.delete_policy(&ObjectKey::new("x", "from-y"));
            assert!(matches!(
                e.sync(without).unwrap(),
                SyncOutcome::Applied { .. }
            ));
            let chains = existing_chains();
            assert!(
                !chains
                    .iter()
                    .any(|c| c.starts_with("TWILL-NPI-") || c.starts_with("TWILL-NPP")),
                "{chains:?}"
            );
            assert!(!existing_sets().iter().any(|s| s.starts_with("TWILL-NP")));
            let forward =
                twill_netfilter::iptables_save(twill_netfilter::Family::V4, Some("filter"))
                    .unwrap();
            assert_eq!(
                forward.matches("-A FORWARD -j TWILL-NETPOL").count(),
                1,
                "jump inserted once: {forward}"
            );
        });
    }
}

mod fail_closed {
    use serde_json::json;
    use twill_conformance::netpol::corpus::{Connection, Target, World, load_dir};
    use twill_conformance::netpol::harness::{Harness, HarnessOptions, ProbePlan};
    use twill_model::Protocol;

    #[test]
    fn an_invalid_policy_blocks_the_pods_it_selects_in_the_kernel_while_valid_policies_apply() {
        if !twill_testkit::require_root(
            "an_invalid_policy_blocks_the_pods_it_selects_in_the_kernel",
        ) {
            return;
        }
        let files = load_dir(&twill_testkit::testdata::area_dir("netpol")).unwrap();
        let spec = &files[0].1.cluster;
        let bad = json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "bad", "namespace": "x"},
            "spec": {"podSelector": {"matchLabels": {"pod": "a"}},
                     "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/40"}}]}]}});
        let good = json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "only-from-x", "namespace": "y"},
            "spec": {"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "x"}}}]}]}});
        let world = World::new("test", "fail-closed", spec, &[bad, good]).unwrap();
        assert_eq!(world.rejected.len(), 1, "{:?}", world.rejected);
        let mut plan = ProbePlan::default();
        plan.add_pods(&world);
        let mut h = Harness::new(&world, &plan, HarnessOptions::default()).unwrap();
        h.sync_pods(&world).unwrap();
        h.apply(&world).unwrap();
        let pods: Vec<_> = world.cluster.pods.values().collect();
        let conns: Vec<Connection> = pods
            .iter()
            .flat_map(|s| {
                pods.iter()
                    .filter(move |d| d.key != s.key)
                    .map(move |d| (s, d))
            })
            .map(|(s, d)| Connection {
                src: Target::Pod(s.key.clone()),
                dial_ip: d.ip,
                dial_port: 80,
                dst: Target::Pod(d.key.clone()),
                dst_port: 80,
                protocol: Protocol::Tcp,
            })
            .collect();
        let got = h.probe_all(&world, &conns);
        let mut blocked_into_xa = 0;
        for (c, g) in conns.iter().zip(&got) {
            let want = world.verdict(c);
            assert_eq!(*g, Some(want), "{c:?}");
            if matches!(&c.dst, Target::Pod(k) if k.to_string() == "x/a") {
                assert!(!want);
                blocked_into_xa += 1;
            }
        }
        assert_eq!(blocked_into_xa, 8);
        assert!(got.contains(&Some(true)) && got.iter().filter(|g| **g == Some(false)).count() > 8);
    }
}
