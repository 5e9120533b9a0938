//! The I/O half of the kube subnet manager (`subnet.rs`): a watch of every Node's lease
//! view and the PATCH that publishes this node's.
//!
//! It is a watch of its own rather than a tap on the model event stream: the model's
//! Node keeps no annotations (nothing else needs them), and this one keeps nothing else.

use std::collections::BTreeMap;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Patch, PatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use twill_overlay::LeaseAttrs;

use crate::subnet::{NodeLease, plan_annotation_patch};
use crate::{ApiCall, Error, WatchedKind};

/// The verb publishing a lease needs on Nodes, on top of the watch.
pub const NODE_LEASE_PATCH: ApiCall = ApiCall {
    group: "",
    resource: "nodes",
    verbs: &["patch"],
};

/// Every Node's lease view, whole, after each change that touches one: nothing until the
/// first list is complete (so a half-listed cluster never looks like lost peers), then
/// one list per change. Errors come out as `Err` while the watcher retries with
/// kube-runtime's default backoff.
pub fn watch_node_leases(
    client: Client,
) -> impl Stream<Item = Result<Vec<NodeLease>, Error>> + Send + 'static {
    let api: Api<Node> = Api::all(client);
    let mut known: BTreeMap<String, NodeLease> = BTreeMap::new();
    let mut listing: Option<BTreeMap<String, NodeLease>> = None;
    let mut listed = false;
    watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .filter_map(move |item| {
            let out = match item {
                Err(source) => Some(Err(Error::Watch {
                    kind: WatchedKind::Node,
                    source,
                })),
                Ok(event) => {
                    let before = known.clone();
                    match event {
                        Event::Init => listing = Some(BTreeMap::new()),
                        Event::InitApply(n) => {
                            let l = NodeLease::from_k8s(&n);
                            listing
                                .get_or_insert_with(BTreeMap::new)
                                .insert(l.node.clone(), l);
                        }
                        Event::InitDone => {
                            known = listing.take().unwrap_or_default();
                            if !listed {
                                listed = true;
                                // Announce the first list even when it is empty.
                                return std::future::ready(Some(Ok(known
                                    .values()
                                    .cloned()
                                    .collect())));
                            }
                        }
                        Event::Apply(n) => {
                            let l = NodeLease::from_k8s(&n);
                            known.insert(l.node.clone(), l);
                        }
                        Event::Delete(n) => {
                            known.remove(&NodeLease::from_k8s(&n).node);
                        }
                    }
                    (listed && known != before).then(|| Ok(known.values().cloned().collect()))
                }
            };
            std::future::ready(out)
        })
}

/// Publish `attrs` on `node`'s annotations unless `current` already shows them. Returns
/// whether a PATCH was sent.
pub async fn publish_node_lease(
    client: Client,
    current: &NodeLease,
    attrs: &LeaseAttrs,
) -> Result<bool, Error> {
    let Some(patch) = plan_annotation_patch(current, attrs) else {
        return Ok(false);
    };
    let api: Api<Node> = Api::all(client);
    api.patch(
        &current.node,
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .map_err(|source| Error::Patch {
        node: current.node.clone(),
        source,
    })?;
    Ok(true)
}
