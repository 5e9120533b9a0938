//! `deploy/` grants each Twill workload exactly the API calls its source makes.
//!
//! The calls come from the source itself (`api_calls`, built from the same table the
//! watchers are built from, and checked against live traffic in `replay.rs`); the rules
//! come from the YAML the operator applies.

use std::collections::BTreeSet;

use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule};
use serde_json::Value;
use twill_kube_source::{Role, api_calls};

use crate::support::deploy_dir;

/// Every document of every YAML file in `deploy/`, with its file name.
fn deploy_documents() -> Vec<(String, Value)> {
    let mut files: Vec<_> = std::fs::read_dir(deploy_dir())
        .expect("deploy/ exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let mut docs = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        for (i, chunk) in text.split("\n---").enumerate() {
            if chunk
                .lines()
                .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
            {
                continue;
            }
            let v: Value = serde_saphyr::from_str(chunk)
                .unwrap_or_else(|e| panic!("{name} doc {}: {e}", i + 1));
            docs.push((name.clone(), v));
        }
    }
    docs
}

fn named<'a>(docs: &'a [(String, Value)], kind: &str, name: &str) -> Option<&'a Value> {
    docs.iter()
        .map(|(_, v)| v)
        .find(|v| v["kind"] == kind && v["metadata"]["name"] == name)
}

/// (group, resource, verb) triples a rule grants; wildcards and resourceNames are
/// reported as problems (they grant more than the source uses, or cannot serve a list).
fn granted(rules: &[PolicyRule], problems: &mut Vec<String>) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for (i, r) in rules.iter().enumerate() {
        if r.resource_names.as_ref().is_some_and(|n| !n.is_empty()) {
            problems.push(format!("rules[{i}]: resourceNames cannot serve list/watch"));
        }
        if r.non_resource_urls.as_ref().is_some_and(|n| !n.is_empty()) {
            problems.push(format!("rules[{i}]: nonResourceURLs are never used"));
        }
        for g in r.api_groups.iter().flatten() {
            for res in r.resources.iter().flatten() {
                for v in &r.verbs {
                    if [g, res, v].iter().any(|s| s.contains('*')) {
                        problems.push(format!("rules[{i}]: wildcard {g:?}/{res:?}/{v:?}"));
                    }
                    out.insert((g.clone(), res.clone(), v.clone()));
                }
            }
        }
    }
    out
}

/// Problems with `role`'s rules for a source in `role`: missing or extra grants.
fn check_role(role: Role, cluster_role: &ClusterRole) -> Vec<String> {
    let mut problems = Vec::new();
    let grants = granted(
        cluster_role.rules.as_deref().unwrap_or_default(),
        &mut problems,
    );
    let mut used = BTreeSet::new();
    for call in api_calls(&role.source_config()) {
        for verb in call.verbs {
            used.insert((
                call.group.to_string(),
                call.resource.to_string(),
                verb.to_string(),
            ));
        }
    }
    for (g, r, v) in used.difference(&grants) {
        problems.push(format!("missing: {v} {g}/{r}"));
    }
    for (g, r, v) in grants.difference(&used) {
        problems.push(format!("granted but never used: {v} {g}/{r}"));
    }
    problems
}

fn cluster_role(docs: &[(String, Value)], role: Role) -> ClusterRole {
    let v = named(docs, "ClusterRole", role.cluster_role_name())
        .unwrap_or_else(|| panic!("deploy/ has no ClusterRole {}", role.cluster_role_name()));
    serde_json::from_value(v.clone()).expect("a well-formed ClusterRole")
}

#[test]
fn each_cluster_role_grants_exactly_the_calls_its_source_makes() {
    let docs = deploy_documents();
    for role in Role::ALL {
        let problems = check_role(role, &cluster_role(&docs, role));
        assert!(
            problems.is_empty(),
            "ClusterRole {}: {problems:#?}",
            role.cluster_role_name()
        );
    }
}

#[test]
fn the_rbac_check_catches_a_missing_verb_and_an_extra_grant() {
    let docs = deploy_documents();
    let mut role = cluster_role(&docs, Role::Node);
    let rules = role.rules.as_mut().unwrap();
    rules[0].verbs.retain(|v| v != "watch");
    rules.push(PolicyRule {
        api_groups: Some(vec![String::new()]),
        resources: Some(vec!["secrets".into()]),
        verbs: vec!["get".into()],
        ..Default::default()
    });
    let problems = check_role(Role::Node, &role);
    assert!(
        problems.iter().any(|p| p.starts_with("missing: watch /")),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p == "granted but never used: get /secrets"),
        "{problems:?}"
    );
}

/// The role a container reads the API as, if it does: `twill agent [--role R]`, or
/// `twill dns` with `--source kube` (or `--in-cluster`, `--kubeconfig`).
fn agent_role(container: &Value) -> Option<Role> {
    let args: Vec<&str> = container["args"]
        .as_array()?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    if args.first() == Some(&"dns") {
        // A Corefile's `kubernetes` plugin reads the API too, unless manifests are given.
        let corefile = args.contains(&"--corefile") && !args.contains(&"-f");
        let from_api = args.windows(2).any(|w| w == ["--source", "kube"])
            || corefile
            || args
                .iter()
                .any(|a| *a == "--in-cluster" || a.starts_with("--kubeconfig"));
        return from_api.then_some(Role::Dns);
    }
    if args.first() != Some(&"agent") {
        return None;
    }
    let role = args
        .windows(2)
        .find(|w| w[0] == "--role")
        .map_or(Some(Role::Node), |w| Role::parse(w[1]));
    Some(role.expect("a known --role"))
}

#[test]
fn every_agent_workload_runs_as_an_account_bound_to_its_role() {
    let docs = deploy_documents();
    let mut seen = BTreeSet::new();
    for (file, w) in &docs {
        if !matches!(w["kind"].as_str(), Some("DaemonSet" | "Deployment")) {
            continue;
        }
        let spec = &w["spec"]["template"]["spec"];
        let ns = w["metadata"]["namespace"].as_str().unwrap_or("default");
        let account = spec["serviceAccountName"].as_str().unwrap_or("default");
        for c in spec["containers"].as_array().unwrap() {
            let Some(role) = agent_role(c) else { continue };
            seen.insert(role);
            assert!(
                named(&docs, "ServiceAccount", account).is_some(),
                "{file}: ServiceAccount {account} is not in deploy/"
            );
            let bound = docs
                .iter()
                .filter(|(_, v)| v["kind"] == "ClusterRoleBinding")
                .any(|(_, v)| {
                    let b: ClusterRoleBinding = serde_json::from_value(v.clone()).unwrap();
                    b.role_ref.kind == "ClusterRole"
                        && b.role_ref.name == role.cluster_role_name()
                        && b.subjects.iter().flatten().any(|s| {
                            s.kind == "ServiceAccount"
                                && s.name == account
                                && s.namespace.as_deref() == Some(ns)
                        })
                });
            assert!(
                bound,
                "{file}: {ns}/{account} is not bound to ClusterRole {}",
                role.cluster_role_name()
            );
        }
    }
    assert_eq!(
        seen,
        Role::ALL.into_iter().collect(),
        "every role is deployed"
    );
}
