//! Unprivileged checks of the agent crate against the shared truth tables.

use std::net::IpAddr;

use serde_json::json;
use twill_conformance::netpol::corpus::{
    CorpusFile, Target, World, expand_probes, file_label, load_dir,
};
use twill_model::{ObjectKey, Protocol};
use twill_netpol::trace::Tracer;
use twill_netpol::{RenderOptions, render_node};
use twill_netpol_agent::source::policy_from_json;

fn corpus() -> Vec<(std::path::PathBuf, CorpusFile)> {
    load_dir(&twill_testkit::testdata::area_dir("netpol")).expect("loading shared/testdata/netpol")
}

/// The rendered rules of the nodes a connection crosses, traced: the source pod's node
/// (FORWARD or INPUT) and the destination pod's node. Traffic a node sends itself leaves
/// through OUTPUT, which policy does not filter (the local-node exception).
fn traced(
    world: &World,
    tracers: &[(String, Tracer)],
    src: &Target,
    dst: &Target,
    port: u16,
    proto: Protocol,
) -> bool {
    let pod = |t: &Target| match t {
        Target::Pod(k) => world.cluster.pods.get(k),
        Target::Ip(_) => None,
    };
    let ip_of = |t: &Target| match t {
        Target::Pod(k) => world.cluster.pods[k].ip,
        Target::Ip(ip) => *ip,
    };
    let (sip, dip) = (ip_of(src), ip_of(dst));
    let src_node = pod(src).map(|p| p.node.clone());
    let sending_node = match src {
        Target::Ip(ip) => world
            .cluster
            .nodes
            .values()
            .find(|n| n.addresses.contains(ip))
            .map(|n| n.name.clone()),
        Target::Pod(_) => None,
    };
    let dst_node = pod(dst).map(|p| p.node.clone());
    tracers
        .iter()
        .filter(|(n, _)| {
            Some(n) == src_node.as_ref()
                || (Some(n) == dst_node.as_ref() && Some(n) != sending_node.as_ref())
        })
        .all(|(_, t)| t.admits(sip, dip, proto, port))
}

#[test]
fn rendered_rules_traced_per_node_match_every_truth_table_probe() {
    let mut checked = 0;
    for (path, file) in corpus() {
        let label = file_label(&path);
        for sc in &file.scenarios {
            let spec = sc.cluster.as_ref().unwrap_or(&file.cluster);
            let mut world = World::new(&label, &sc.name, spec, &sc.policies).unwrap();
            for (si, step) in sc.steps.iter().enumerate() {
                for (ai, a) in step.actions.iter().enumerate() {
                    world
                        .apply(&label, &sc.name, &format!("steps[{si}].actions[{ai}]"), a)
                        .unwrap();
                }
                let nodes: Vec<String> = world
                    .cluster
                    .pods
                    .values()
                    .map(|p| p.node.clone())
                    .collect();
                let tracers: Vec<(String, Tracer)> = nodes
                    .into_iter()
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .map(|n| {
                        let t = Tracer::new(&render_node(
                            &world.cluster,
                            &n,
                            &RenderOptions::default(),
                        ))
                        .unwrap_or_else(|e| panic!("{label} {}: {e}", sc.name));
                        (n, t)
                    })
                    .collect();
                for p in expand_probes(&label, &sc.name, &step.probes).unwrap() {
                    let c = world.resolve(&p).unwrap();
                    let got = traced(&world, &tracers, &c.src, &c.dst, c.dst_port, c.protocol);
                    assert_eq!(
                        got, p.expected,
                        "{label}: {} step {si}: {} -> {} {}/{}",
                        sc.name, p.from, p.to, p.port, p.protocol
                    );
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 1000, "only {checked} probes found");
}

#[test]
fn pure_replay_agrees_with_every_truth_table_probe() {
    for (path, file) in corpus() {
        let (passed, failures) = twill_conformance::netpol::corpus::check_pure(&path, &file);
        assert!(failures.is_empty(), "{}", failures.join("\n"));
        assert!(passed > 0, "{}", path.display());
    }
}

fn bad_policy(spec: serde_json::Value) -> serde_json::Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
           "metadata": {"name": "bad", "namespace": "x"}, "spec": spec})
}

#[test]
fn invalid_policies_are_rejected_naming_file_object_and_field() {
    let cases = [
        (
            json!({"podSelector": {"matchExpressions": [{"key": "pod", "operator": "Near", "values": ["a"]}]}}),
            "spec.podSelector",
        ),
        (
            json!({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/33"}}]}]}),
            "spec.ingress[0].from[0].ipBlock.cidr",
        ),
        (
            json!({"podSelector": {}, "ingress": [{"ports": [{"port": "a-port-name-that-is-too-long"}]}]}),
            "spec.ingress[0].ports[0].port",
        ),
    ];
    for (spec, field) in cases {
        let err = policy_from_json("policy.yaml", &bad_policy(spec)).expect_err("must be rejected");
        assert!(err.message.starts_with("policy.yaml: "), "{}", err.message);
        assert!(
            err.message.contains("NetworkPolicy x/bad"),
            "{}",
            err.message
        );
        assert!(err.message.contains(field), "{} lacks {field}", err.message);
    }
}

#[test]
fn invalid_policy_isolates_what_it_selects_and_others_stay_enforced() {
    let file = &corpus()[0];
    let spec = &file.1.cluster;
    let good = json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "deny-y", "namespace": "y"}, "spec": {"podSelector": {}}});
    // Valid selector, bad CIDR: pod=a of x is isolated for ingress with nothing allowed.
    let bad = bad_policy(json!({"podSelector": {"matchLabels": {"pod": "a"}},
        "ingress": [{"from": [{"ipBlock": {"cidr": "not-a-cidr"}}]}]}));
    let world = World::new("test", "fail-closed", spec, &[good, bad]).unwrap();
    assert_eq!(world.rejected.len(), 1);
    assert!(
        world
            .cluster
            .broken
            .contains_key(&ObjectKey::new("x", "bad"))
    );
    let pod = |ns: &str, n: &str| &world.cluster.pods[&ObjectKey::new(ns, n)];
    let allows = |a: &twill_netpol::PolicyPod, b: &twill_netpol::PolicyPod| {
        twill_netpol::allows(
            &world.cluster,
            twill_netpol::Peer::Pod(a),
            twill_netpol::Peer::Pod(b),
            80,
            Protocol::Tcp,
        )
    };
    assert!(
        !allows(pod("z", "a"), pod("x", "a")),
        "the invalid policy's pods are closed"
    );
    assert!(
        allows(pod("z", "a"), pod("x", "b")),
        "pods it does not select stay open"
    );
    assert!(
        !allows(pod("z", "a"), pod("y", "b")),
        "the valid policy stays enforced"
    );
    // A selector that cannot be read closes the whole namespace.
    let unreadable = bad_policy(
        json!({"podSelector": {"matchExpressions": [{"key": "pod", "operator": "Near"}]}}),
    );
    let world = World::new("test", "fail-closed", spec, &[unreadable]).unwrap();
    let all_x: Vec<bool> = world
        .cluster
        .pods
        .values()
        .filter(|p| p.key.namespace == "x")
        .map(|p| world.cluster.isolated_for_ingress(p))
        .collect();
    assert!(!all_x.is_empty() && all_x.iter().all(|b| *b));
    let _: IpAddr = "10.0.0.1".parse().unwrap();
}

#[test]
fn diff_matrix_marks_only_cells_where_kernel_and_expectation_differ() {
    use twill_conformance::netpol::corpus::{PortRef, Probe};
    let cell = |from: &str, to: &str, expected: bool| Probe {
        from: from.into(),
        to: to.into(),
        port: PortRef::Number(80),
        protocol: Protocol::Tcp,
        expected,
        matrix: Some(0),
    };
    let probes = [
        cell("x/a", "x/a", true),
        cell("x/a", "x/b", true),
        cell("x/b", "x/a", false),
        cell("x/b", "x/b", false),
    ];
    let cells = vec![
        (&probes[0], None),
        (&probes[1], Some(false)),
        (&probes[2], Some(false)),
        (&probes[3], Some(true)),
    ];
    let text = twill_conformance::netpol::replay::diff_matrix("t", &cells);
    let rows: Vec<Vec<&str>> = text
        .lines()
        .skip(2)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows[0], ["x/a", "-", ".X"], "{text}");
    assert_eq!(rows[1], ["x/b", "X", "X."], "{text}");
}
