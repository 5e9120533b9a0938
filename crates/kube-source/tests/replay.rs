//! Replays of recorded list/watch exchanges through the real client and watchers.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;
use twill_kube_source::{Backoff, Error, SourceConfig, WatchedKind, api_calls, watch};
use twill_model::{ClusterState, Kind, ObjectEvent};

use crate::support::recorded;
use crate::support::replay::Replay;

pub struct Run {
    pub items: Vec<Result<ObjectEvent, Error>>,
    /// Recorded initial lists still unserved when the first event came out.
    pub lists_left_at_first_event: Option<usize>,
    pub replay: Replay,
}

pub fn load(name: &str) -> Value {
    let path = recorded(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn fast(config: SourceConfig) -> SourceConfig {
    SourceConfig {
        backoff: Some(Backoff {
            initial: Duration::from_millis(5),
            max: Duration::from_millis(50),
        }),
        ..config
    }
}

async fn run(recording: &Value, config: &SourceConfig) -> Run {
    let replay = Replay::load(recording);
    let client = kube::Client::new(replay.service(), "default");
    run_client(replay, client, config).await
}

/// Drive the source on `client` (which must reach `replay`) until the replay is done.
pub async fn run_client(replay: Replay, client: kube::Client, config: &SourceConfig) -> Run {
    let mut events = std::pin::pin!(watch(client, config));
    let mut items = Vec::new();
    let mut lists_left_at_first_event = None;
    let waiter = replay.clone();
    let finished = async move { waiter.finished().await };
    let mut finished = std::pin::pin!(finished);
    let deadline = tokio::time::sleep(Duration::from_secs(30));
    let mut deadline = std::pin::pin!(deadline);
    loop {
        tokio::select! {
            biased;
            item = events.next() => {
                let item = item.expect("the source never ends");
                if item.is_ok() && lists_left_at_first_event.is_none() {
                    lists_left_at_first_event = Some(replay.initial_lists_left());
                }
                if matches!(item, Ok(ObjectEvent::Synced)) {
                    replay.release_watches();
                }
                items.push(item);
            }
            () = &mut finished => break,
            () = &mut deadline => panic!(
                "replay did not finish in 30 s; mismatches: {:?}; calls: {:?}",
                replay.mismatches(),
                replay.calls()
            ),
        }
    }
    assert_eq!(
        replay.mismatches(),
        Vec::<String>::new(),
        "requests off the recording"
    );
    Run {
        items,
        lists_left_at_first_event,
        replay,
    }
}

pub fn events(run: &Run) -> Vec<ObjectEvent> {
    run.items
        .iter()
        .filter_map(|r| r.as_ref().ok().cloned())
        .collect()
}

fn describe(e: &ObjectEvent) -> String {
    match e {
        ObjectEvent::Applied(o) => format!("+{} {}", o.kind(), o.key()),
        ObjectEvent::Deleted(r) => format!("-{r}"),
        ObjectEvent::Synced => "synced".into(),
    }
}

fn kind_of(e: &ObjectEvent) -> Option<Kind> {
    match e {
        ObjectEvent::Applied(o) => Some(o.kind()),
        ObjectEvent::Deleted(r) => Some(r.kind),
        ObjectEvent::Synced => None,
    }
}

/// The state the recorded initial lists describe (every successful page before each
/// path's first watch), decoded as manifests are.
pub fn initial_lists_state(recording: &Value) -> ClusterState {
    let mut watched = std::collections::BTreeSet::new();
    let mut objects = Vec::new();
    for ex in recording["exchanges"].as_array().unwrap() {
        let request = ex["request"].as_str().unwrap();
        let path = request.split('?').next().unwrap();
        let body = &ex["body"];
        if request.contains("watch=true") {
            watched.insert(path);
            continue;
        }
        if ex["status"] != 200 || watched.contains(path) {
            continue;
        }
        // List items come without kind/apiVersion, as the API server sends them.
        let kind = body["kind"].as_str().unwrap().trim_end_matches("List");
        for item in body["items"].as_array().unwrap() {
            let mut item = item.clone();
            item["kind"] = kind.into();
            item["apiVersion"] = body["apiVersion"].clone();
            match twill_manifest::decode_value(&item) {
                Ok(twill_manifest::Decoded::Object(o)) => objects.push(o),
                other => panic!("{request}: {other:?}"),
            }
        }
    }
    ClusterState::from_objects(objects)
}

#[tokio::test]
async fn nothing_comes_out_before_every_initial_list_completes() {
    let recording = load("node-agent.json");
    let run = run(
        &recording,
        &fast(SourceConfig::node_agent().local_pods_only("node-a")),
    )
    .await;
    assert_eq!(
        run.lists_left_at_first_event,
        Some(0),
        "an object event came out while recorded lists were still unserved"
    );
    let events = events(&run);
    let synced_at = events
        .iter()
        .position(|e| *e == ObjectEvent::Synced)
        .expect("synced");
    assert_eq!(
        events.iter().filter(|e| **e == ObjectEvent::Synced).count(),
        1,
        "synced is said once, whatever relists follow"
    );
    // Up to `Synced`: the listed cluster, exactly as the manifest source would emit it.
    let expected = ClusterState::default().diff_events(&initial_lists_state(&recording));
    assert_eq!(
        events[..=synced_at]
            .iter()
            .map(describe)
            .collect::<Vec<_>>(),
        expected.iter().map(describe).collect::<Vec<_>>()
    );
    assert_eq!(events[..=synced_at], expected[..]);
}

#[tokio::test]
async fn live_changes_gone_relists_bookmarks_and_errors_come_out_as_model_events() {
    let recording = load("node-agent.json");
    let run = run(
        &recording,
        &fast(SourceConfig::node_agent().local_pods_only("node-a")),
    )
    .await;
    let events = events(&run);
    let synced_at = events
        .iter()
        .position(|e| *e == ObjectEvent::Synced)
        .unwrap();
    // Kinds interleave in any order; within a kind the order is the API server's.
    let mut per_kind: BTreeMap<Kind, Vec<String>> = BTreeMap::new();
    for e in &events[synced_at + 1..] {
        per_kind
            .entry(kind_of(e).unwrap())
            .or_default()
            .push(describe(e));
    }
    let expect = |kind, list: &[&str]| {
        assert_eq!(
            per_kind.get(&kind).cloned().unwrap_or_default(),
            list.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            "{kind} events after sync"
        );
    };
    // The namespace added on the watch resumed from the bookmark's resourceVersion.
    expect(Kind::Namespace, &["+Namespace staging"]);
    // A heartbeat-only update changes nothing modelled; the cordon does.
    expect(Kind::Node, &["+Node node-b"]);
    expect(
        Kind::Pod,
        &["+Pod shop/web-2", "+Pod shop/web-2", "-Pod shop/web-1"],
    );
    // Modified, then 410 Gone: the relist shows `legacy` was deleted meanwhile and `api`
    // added; `web` is as already announced, so it is not repeated.
    expect(
        Kind::Service,
        &[
            "+Service shop/web",
            "-Service shop/legacy",
            "+Service shop/api",
        ],
    );
    expect(Kind::EndpointSlice, &["+EndpointSlice shop/web-x1y2z"]);
    expect(Kind::NetworkPolicy, &["+NetworkPolicy shop/default-deny"]);

    let errors: Vec<String> = run
        .items
        .iter()
        .filter_map(|r| r.as_ref().err())
        .map(|e| {
            assert!(e.is_transient(), "{e}");
            match e {
                Error::Watch { kind, .. } => format!("{kind} gone={}", e.is_gone()),
                other => format!("unexpected: {other}"),
            }
        })
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(
        errors,
        [
            "EndpointSlice gone=false",
            "Pod gone=false",
            "Service gone=true"
        ]
    );
}

#[tokio::test]
async fn state_after_the_replay_equals_the_state_from_equivalent_manifests() {
    let recording = load("node-agent.json");
    let run = run(
        &recording,
        &fast(SourceConfig::node_agent().local_pods_only("node-a")),
    )
    .await;
    assert_final_state_matches_manifests(&run);
}

/// The state the run's events add up to equals the state of `node-agent.final.yaml`.
pub fn assert_final_state_matches_manifests(run: &Run) {
    let mut from_api = ClusterState::default();
    for e in events(run) {
        from_api.apply(e);
    }
    let manifests = recorded("node-agent.final.yaml");
    let mut files = twill_manifest::files::Watcher::new(&[manifests.to_str().unwrap()]);
    let (file_events, problems) = files.poll();
    assert!(problems.is_empty(), "{problems:?}");
    let from_files = files.state();
    for (a, b) in from_api.objects().iter().zip(from_files.objects().iter()) {
        assert_eq!(a, b);
    }
    assert_eq!(&from_api, from_files);
    // Replaying the manifest source's own events onto the API's first sync converges too.
    let mut replayed = ClusterState::default();
    for e in file_events {
        replayed.apply(e);
    }
    assert_eq!(replayed, from_api);
}

#[tokio::test]
async fn every_request_is_a_call_the_rbac_table_lists() {
    let recording = load("node-agent.json");
    let config = fast(SourceConfig::node_agent().local_pods_only("node-a"));
    let run = run(&recording, &config).await;
    let allowed = api_calls(&config);
    let calls = run.replay.calls();
    assert!(calls.len() >= 14, "{calls:?}");
    for call in calls {
        let segments: Vec<&str> = call.path.trim_start_matches('/').split('/').collect();
        let (group, resource) = match segments.as_slice() {
            ["api", "v1", resource] => ("", *resource),
            ["apis", group, _version, resource] => (*group, *resource),
            other => panic!("not a cluster-wide collection: {other:?}"),
        };
        let verb = if call.watch { "watch" } else { "list" };
        assert!(
            allowed
                .iter()
                .any(|a| a.group == group && a.resource == resource && a.verbs.contains(&verb)),
            "{verb} {group}/{resource} is not in api_calls: {allowed:?}"
        );
    }
    // And the table has no kind the source did not watch (the one write, publishing the
    // node's lease, is checked in node_leases.rs).
    let kinds: Vec<WatchedKind> = config.kinds.iter().copied().collect();
    let watches = allowed
        .iter()
        .filter(|a| a.verbs == twill_kube_source::WATCH_VERBS)
        .count();
    assert_eq!(watches, kinds.len());
    assert_eq!(
        allowed.len(),
        kinds.len() + usize::from(config.publishes_node_lease)
    );
}

#[tokio::test]
async fn the_dns_role_pages_through_every_pod_and_never_asks_for_nodes_or_policies() {
    let recording = load("dns.json");
    let config = fast(SourceConfig::dns());
    let run = run(&recording, &config).await;
    let paths: std::collections::BTreeSet<String> =
        run.replay.calls().into_iter().map(|c| c.path).collect();
    assert_eq!(
        paths.into_iter().collect::<Vec<_>>(),
        [
            "/api/v1/namespaces",
            "/api/v1/pods",
            "/api/v1/services",
            "/apis/discovery.k8s.io/v1/endpointslices"
        ]
    );
    let mut state = ClusterState::default();
    for e in events(&run) {
        state.apply(e);
    }
    let expected = initial_lists_state(&recording);
    assert_eq!(state.pods.len(), 2, "both pages, both nodes");
    assert_eq!(state, expected);
    assert!(run.items.iter().all(Result::is_ok), "{:?}", run.items);
}

/// An API server before 1.33 has no ServiceCIDR resource, and most clusters have no
/// ClusterNetworkPolicy CRD: each 404 counts as an empty list, so the source still
/// syncs (and never asks again).
#[tokio::test]
async fn an_api_server_without_servicecidrs_still_syncs_with_none() {
    without_resource("servicecidrs", |s| s.service_cidrs.is_empty()).await;
}

#[tokio::test]
async fn a_cluster_without_the_cluster_network_policy_crd_still_syncs_with_none() {
    without_resource("clusternetworkpolicies", |s| {
        s.cluster_network_policies.is_empty()
    })
    .await;
}

async fn without_resource(resource: &str, none: impl Fn(&ClusterState) -> bool) {
    let mut recording = load("node-agent.json");
    let exchanges = recording["exchanges"].as_array_mut().unwrap();
    for e in exchanges.iter_mut() {
        if e["request"]
            .as_str()
            .unwrap()
            .contains(&format!("/{resource}?"))
        {
            e["status"] = 404.into();
            e["body"] = serde_json::json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                "status": "Failure", "message": "the server could not find the requested resource",
                "reason": "NotFound", "details": {}, "code": 404});
        }
    }
    let replay = Replay::load(&recording);
    replay.release_watches();
    let client = kube::Client::new(replay.service(), "default");
    let config = fast(SourceConfig::node_agent().local_pods_only("node-a"));
    let mut events = std::pin::pin!(watch(client, &config));
    let mut state = ClusterState::default();
    let synced = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(item) = events.next().await {
            if let Ok(e) = item {
                let done = e == ObjectEvent::Synced;
                state.apply(e);
                if done {
                    return;
                }
            }
        }
    })
    .await;
    assert!(synced.is_ok(), "never synced: {:?}", replay.mismatches());
    assert!(none(&state), "{resource}: none expected");
    assert!(!state.services.is_empty() && !state.nodes.is_empty());
    let asked = replay
        .calls()
        .iter()
        .filter(|c| c.path.ends_with(&format!("/{resource}")))
        .count();
    assert_eq!(asked, 1, "a missing resource is asked for once");
}
