use k8s_openapi::api::core::v1 as core;
use kube::runtime::watcher::Event;
use serde_json::json;
use twill_model::{ClusterState, Kind, ObjectEvent};

use super::SyncGate;
use crate::kinds::ToModel;
use crate::{Entry, Error, WatchedKind};

const SVC: WatchedKind = WatchedKind::Service;
const NS: WatchedKind = WatchedKind::Namespace;

fn svc(name: &str, port: i64) -> Entry {
    let s: core::Service = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default", "resourceVersion": "7"},
        "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": port}]}
    }))
    .unwrap();
    s.to_entry()
}

fn ns(name: &str) -> Entry {
    let n: core::Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    n.to_entry()
}

fn ok(out: Vec<Result<ObjectEvent, Error>>) -> Vec<ObjectEvent> {
    out.into_iter()
        .map(|r| r.unwrap_or_else(|e| panic!("unexpected error {e}")))
        .collect()
}

fn names(events: &[ObjectEvent]) -> Vec<String> {
    events
        .iter()
        .map(|e| match e {
            ObjectEvent::Applied(o) => format!("+{} {}", o.kind(), o.key()),
            ObjectEvent::Deleted(r) => format!("-{r}"),
            ObjectEvent::Synced => "synced".into(),
        })
        .collect()
}

/// Lists both kinds; returns everything emitted.
fn listed(gate: &mut SyncGate, services: &[Entry], namespaces: &[Entry]) -> Vec<ObjectEvent> {
    let mut out = Vec::new();
    for (kind, entries) in [(SVC, services), (NS, namespaces)] {
        out.extend(ok(gate.step(kind, Event::Init)));
        for e in entries {
            out.extend(ok(gate.step(kind, Event::InitApply(e.clone()))));
        }
        out.extend(ok(gate.step(kind, Event::InitDone)));
    }
    out
}

#[test]
fn nothing_is_emitted_until_every_kind_has_listed() {
    let mut gate = SyncGate::new([SVC, NS]);
    assert!(ok(gate.step(SVC, Event::Init)).is_empty());
    assert!(ok(gate.step(SVC, Event::InitApply(svc("web", 80)))).is_empty());
    assert!(ok(gate.step(SVC, Event::InitDone)).is_empty());
    // A live change of a listed kind is folded in, still silently.
    assert!(ok(gate.step(SVC, Event::Apply(svc("db", 5432)))).is_empty());
    assert!(ok(gate.step(NS, Event::Init)).is_empty());
    assert!(ok(gate.step(NS, Event::InitApply(ns("default")))).is_empty());
    assert!(!gate.is_synced());
    let out = ok(gate.step(NS, Event::InitDone));
    assert_eq!(
        names(&out),
        [
            "+Namespace default",
            "+Service default/db",
            "+Service default/web",
            "synced"
        ]
    );
    assert!(gate.is_synced());
}

#[test]
fn first_sync_is_what_the_manifest_source_emits_for_the_same_objects() {
    let mut gate = SyncGate::new([SVC, NS]);
    let out = listed(
        &mut gate,
        &[svc("web", 80), svc("db", 5432)],
        &[ns("default")],
    );
    let objects = [svc("web", 80), svc("db", 5432), ns("default")]
        .into_iter()
        .map(|e| e.object.unwrap());
    let manifest_like = ClusterState::default().diff_events(&ClusterState::from_objects(objects));
    assert_eq!(out, manifest_like);
}

#[test]
fn a_failed_list_starts_its_buffer_over() {
    let mut gate = SyncGate::new([SVC]);
    ok(gate.step(SVC, Event::Init));
    ok(gate.step(SVC, Event::InitApply(svc("stale", 80))));
    // The next page failed; the watcher restarts the list.
    ok(gate.step(SVC, Event::Init));
    ok(gate.step(SVC, Event::InitApply(svc("web", 80))));
    let out = ok(gate.step(SVC, Event::InitDone));
    assert_eq!(names(&out), ["+Service default/web", "synced"]);
}

#[test]
fn relist_after_gone_emits_only_the_difference() {
    let mut gate = SyncGate::new([SVC, NS]);
    listed(
        &mut gate,
        &[svc("keep", 80), svc("gone", 80), svc("change", 80)],
        &[ns("default")],
    );
    ok(gate.step(SVC, Event::Init));
    for e in [svc("keep", 80), svc("change", 81), svc("new", 80)] {
        assert!(
            ok(gate.step(SVC, Event::InitApply(e))).is_empty(),
            "buffered until InitDone"
        );
    }
    let out = ok(gate.step(SVC, Event::InitDone));
    assert_eq!(
        names(&out),
        [
            "-Service default/gone",
            "+Service default/change",
            "+Service default/new"
        ]
    );
    assert!(!out.contains(&ObjectEvent::Synced), "synced is said once");
}

#[test]
fn updates_that_change_nothing_modelled_are_dropped() {
    let mut gate = SyncGate::new([SVC]);
    listed_one(&mut gate, svc("web", 80));
    // A new resourceVersion with the same spec: nothing for the data plane.
    let same = svc("web", 80);
    assert!(ok(gate.step(SVC, Event::Apply(same))).is_empty());
    let out = ok(gate.step(SVC, Event::Apply(svc("web", 81))));
    assert_eq!(names(&out), ["+Service default/web"]);
    let out = ok(gate.step(SVC, Event::Delete(svc("web", 81))));
    assert_eq!(names(&out), ["-Service default/web"]);
    assert!(ok(gate.step(SVC, Event::Delete(svc("web", 81)))).is_empty());
}

fn listed_one(gate: &mut SyncGate, e: Entry) {
    ok(gate.step(SVC, Event::Init));
    ok(gate.step(SVC, Event::InitApply(e)));
    ok(gate.step(SVC, Event::InitDone));
}

#[test]
fn an_object_turning_invalid_is_removed_then_reported() {
    let mut gate = SyncGate::new([SVC]);
    listed_one(&mut gate, svc("web", 80));
    let mut out = gate.step(SVC, Event::Apply(svc("web", 70000)));
    assert_eq!(out.len(), 2, "{out:?}");
    // Deleted first, then why: a consumer that fails closed on invalid objects ends
    // with the object marked invalid, not merely gone.
    match out.pop().unwrap() {
        Err(e @ Error::Invalid { .. }) => {
            let Error::Invalid { object, .. } = &e else {
                unreachable!()
            };
            assert_eq!(object.kind, Kind::Service);
            assert!(e.to_string().contains("spec.ports[0].port"), "{e}");
            assert!(e.is_transient());
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
    assert_eq!(names(&ok(out)), ["-Service default/web"]);
    assert!(gate.state().services.is_empty());
}

#[test]
fn deleting_an_invalid_object_is_announced_though_it_was_never_applied() {
    let mut gate = SyncGate::new([SVC]);
    ok(gate.step(SVC, Event::Init));
    assert!(gate.step(SVC, Event::InitApply(svc("bad", 0)))[0].is_err());
    ok(gate.step(SVC, Event::InitDone));
    let out = ok(gate.step(SVC, Event::Delete(svc("bad", 0))));
    assert_eq!(names(&out), ["-Service default/bad"]);
    // Once: it is forgotten.
    assert!(ok(gate.step(SVC, Event::Delete(svc("bad", 0)))).is_empty());
}

#[test]
fn a_relist_without_an_invalid_object_announces_its_deletion_and_a_fixed_one_applies() {
    let mut gate = SyncGate::new([SVC]);
    ok(gate.step(SVC, Event::Init));
    assert!(gate.step(SVC, Event::InitApply(svc("gone", 0)))[0].is_err());
    assert!(gate.step(SVC, Event::InitApply(svc("fixed", 0)))[0].is_err());
    ok(gate.step(SVC, Event::InitDone));
    // 410 Gone, relist: `gone` was deleted meanwhile, `fixed` was corrected.
    ok(gate.step(SVC, Event::Init));
    ok(gate.step(SVC, Event::InitApply(svc("fixed", 80))));
    let out = ok(gate.step(SVC, Event::InitDone));
    assert_eq!(
        names(&out),
        ["+Service default/fixed", "-Service default/gone"]
    );
}

#[test]
fn invalid_objects_in_a_list_are_left_out() {
    let mut gate = SyncGate::new([SVC]);
    ok(gate.step(SVC, Event::Init));
    assert!(gate.step(SVC, Event::InitApply(svc("bad", 0)))[0].is_err());
    ok(gate.step(SVC, Event::InitApply(svc("web", 80))));
    let out = ok(gate.step(SVC, Event::InitDone));
    assert_eq!(names(&out), ["+Service default/web", "synced"]);
}
