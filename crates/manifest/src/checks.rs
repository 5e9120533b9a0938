//! Checks across objects, which no single document can see: the same object given twice,
//! and objects in a namespace that no Namespace object creates.

use std::collections::{BTreeMap, BTreeSet};

use twill_model::{Object, ObjectRef};

use crate::{Loaded, Problem, Severity};

/// The namespaces an API server creates itself (kube-apiserver's system namespaces
/// controller); a manifest may use them without declaring them.
pub const SYSTEM_NAMESPACES: [&str; 4] =
    ["default", "kube-system", "kube-public", "kube-node-lease"];

/// An object given more than once: a warning at every later copy, naming the first.
/// The last copy wins, as a `kubectl apply` of the same files in this order would leave it.
pub fn duplicates(objects: &[Loaded]) -> Vec<Problem> {
    let mut first: BTreeMap<ObjectRef, &Loaded> = BTreeMap::new();
    let mut out = Vec::new();
    for l in objects {
        let r = l.object.object_ref();
        match first.get(&r) {
            None => {
                first.insert(r, l);
            }
            Some(prev) => out.push(Problem {
                severity: Severity::Warning,
                location: Some(l.location.clone()),
                object: Some(r.to_string()),
                path: "metadata.name".into(),
                message: format!(
                    "given again (first at {}); this later copy replaces it",
                    prev.location
                ),
            }),
        }
    }
    out
}

/// Objects in namespaces that neither a Namespace object nor `assumed` provides: one
/// warning per namespace, at its first object. An API server would refuse them, and
/// cluster DNS answers NXDOMAIN for their Services (CoreDNS checks that the namespace
/// exists).
pub fn missing_namespaces(objects: &[Loaded], assumed: &[&str]) -> Vec<Problem> {
    let declared: BTreeSet<&str> = objects
        .iter()
        .filter_map(|l| match &l.object {
            Object::Namespace(n) => Some(n.name.as_str()),
            _ => None,
        })
        .chain(assumed.iter().copied())
        .collect();
    let mut warned = BTreeSet::new();
    let mut out = Vec::new();
    for l in objects {
        let r = l.object.object_ref();
        if !r.kind.is_namespaced() {
            continue;
        }
        let ns = r.key.namespace.as_str();
        if declared.contains(ns) || !warned.insert(ns.to_string()) {
            continue;
        }
        out.push(Problem {
            severity: Severity::Warning,
            location: Some(l.location.clone()),
            object: Some(r.to_string()),
            path: "metadata.namespace".into(),
            message: format!(
                "namespace {ns:?} has no Namespace object: an API server would refuse this, and cluster DNS answers NXDOMAIN for Services in it (add a `kind: Namespace` named {ns})"
            ),
        });
    }
    out
}
