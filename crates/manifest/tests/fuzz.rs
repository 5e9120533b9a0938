//! Fuzzing manifest loading (issue: a standing fault suite): arbitrary bytes, valid
//! manifests with random edits, and random JSON trees of the kinds we decode. Loading
//! must never panic, every problem must say something, and what loads must be usable.
//! Bounded in CI; `TWILL_FUZZ_CASES=100000 cargo test --release -p twill-manifest --test
//! fuzz` for a long run.
#![allow(clippy::disallowed_methods)] // Reads the example manifests it mutates.

use proptest::prelude::*;
use serde_json::{Map, Value};
use twill_manifest::{LoadResult, decode_value, parse_str};
use twill_testkit::fuzz::{cases, mutate};

/// Valid inputs to start from: the shared examples and the CLI's bad-input corpus.
fn seeds() -> Vec<String> {
    let mut dirs = vec![twill_testkit::testdata::examples_dir()];
    dirs.push(twill_testkit::testdata::workspace_root().join("crates/twill/tests/bad-input"));
    let mut out = Vec::new();
    for d in dirs {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        let mut files: Vec<_> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
        files.sort();
        for f in files {
            if let Ok(t) = std::fs::read_to_string(&f) {
                out.push(t);
            }
        }
    }
    assert!(!out.is_empty(), "no seed manifests found");
    out
}

fn check(r: &LoadResult) {
    for p in &r.problems {
        assert!(!p.message.is_empty(), "a problem without a message: {p:?}");
        assert!(!p.to_string().is_empty());
    }
    for l in &r.objects {
        let key = l.object.object_ref();
        assert!(!key.key.name.is_empty(), "an object without a name: {key}");
    }
    // What loaded can be rendered and loads again.
    let state = twill_model::ClusterState::from_objects(r.objects.iter().map(|l| l.object.clone()));
    let again = parse_str("rendered", &twill_manifest::render_yaml(&state));
    assert!(
        !again.has_errors(),
        "rendered objects do not load again: {:?}",
        again.problems
    );
}

/// JSON trees shaped like Kubernetes objects: a known kind, random fields.
fn object_tree() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        "[a-z0-9./:-]{0,20}".prop_map(Value::String),
    ];
    let tree = leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("name".to_string()),
                    Just("namespace".to_string()),
                    Just("ports".to_string()),
                    Just("port".to_string()),
                    Just("selector".to_string()),
                    Just("clusterIP".to_string()),
                    Just("endpoints".to_string()),
                    Just("addresses".to_string()),
                    Just("podSelector".to_string()),
                    Just("ingress".to_string()),
                    Just("containers".to_string()),
                    "[a-zA-Z]{1,10}",
                ],
                inner,
                0..5
            )
            .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    });
    let kinds = prop_oneof![
        Just(("v1", "Service")),
        Just(("v1", "Pod")),
        Just(("v1", "Namespace")),
        Just(("v1", "Node")),
        Just(("discovery.k8s.io/v1", "EndpointSlice")),
        Just(("apps/v1", "Deployment")),
        Just(("networking.k8s.io/v1", "NetworkPolicy")),
        Just(("v1", "List")),
    ];
    (kinds, tree.clone(), tree.clone(), tree).prop_map(|((api, kind), metadata, spec, status)| {
        serde_json::json!({
            "apiVersion": api, "kind": kind, "metadata": metadata,
            "spec": spec, "status": status, "items": [],
        })
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn arbitrary_bytes_load_without_panic(data in prop::collection::vec(any::<u8>(), 0..2048)) {
        check(&parse_str("fuzz", &String::from_utf8_lossy(&data)));
    }

    #[test]
    fn edited_valid_manifests_load_without_panic(
        seed in any::<prop::sample::Index>(),
        edits in prop::collection::vec((any::<usize>(), any::<u8>(), any::<usize>()), 1..10),
    ) {
        let seeds = seeds();
        let text = &seeds[seed.index(seeds.len())];
        let mutated = mutate(text.as_bytes(), &edits);
        check(&parse_str("fuzz", &String::from_utf8_lossy(&mutated)));
    }

    #[test]
    fn random_object_trees_decode_without_panic(v in object_tree()) {
        let _ = decode_value(&v);
        let text = serde_json::to_string(&v).unwrap();
        check(&parse_str("fuzz.json", &text));
    }
}
