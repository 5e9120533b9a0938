//! The synced gate: per-kind watcher events in, model [`ObjectEvent`]s out.
//!
//! This is kube-runtime's `reflector::store::Writer::apply_watcher_event` idea applied
//! across kinds: a (re)list (`Init` … `InitApply` … `InitDone`) is buffered and swapped in
//! as one step, so nothing acts on a half-listed resource. On top of that:
//!
//! - Until every watched kind has finished its first list, nothing is emitted at all;
//!   then the whole state goes out at once followed by one `Synced`. Consumers therefore
//!   never program a half-listed cluster (DNS answers SERVFAIL, the proxy waits).
//! - A relist after `410 Gone` is turned into a diff against what was known, so objects
//!   deleted while the watch was down become `Deleted` events, and unchanged objects
//!   produce nothing.
//! - Updates that change nothing the model keeps (a Pod's condition timestamps, a
//!   Node's heartbeat) are dropped, as `ClusterState::apply` reports no change.
//! - Objects that fail validation are absent from the state and come out as
//!   [`Error::Invalid`]. The gate remembers them, so that their deletion (or their
//!   absence from a relist) still comes out as `Deleted`: a consumer that acts on
//!   invalid objects (the policy enforcer isolates a namespace with an unreadable
//!   NetworkPolicy) learns when to stop. An object turning invalid comes out as
//!   `Deleted` first, then the `Invalid` saying why.
//!
//! The events are exactly those the manifest source (`twill_manifest::files::Watcher`)
//! emits for the same objects: both are `ClusterState::diff_events` between the state
//! before and after.
//!
//! Pure: no I/O, no clock; tested with hand-made watcher events in `gate/tests.rs`.

use std::collections::{BTreeMap, BTreeSet};

use kube::runtime::watcher::Event;
use twill_model::{ClusterState, Object, ObjectEvent, ObjectRef};

use crate::{Entry, Error, WatchedKind};

/// Turns watcher events of several kinds into one gated model event stream.
#[derive(Debug, Clone)]
pub struct SyncGate {
    /// What the consumer has been told (or, before sync, what it will be told).
    state: ClusterState,
    /// Kinds whose first list has not completed yet.
    unlisted: BTreeSet<WatchedKind>,
    /// Lists in progress: the objects received since `Init`.
    listing: BTreeMap<WatchedKind, Vec<Object>>,
    /// Objects known only as invalid (reported, absent from `state`).
    invalid: BTreeSet<ObjectRef>,
    /// Lists in progress: the invalid objects received since `Init`.
    listing_invalid: BTreeMap<WatchedKind, BTreeSet<ObjectRef>>,
}

/// The objects of one kind, as an unsynced state.
fn only_kind(state: &ClusterState, kind: WatchedKind) -> ClusterState {
    let mut out = ClusterState::default();
    match kind {
        WatchedKind::Namespace => out.namespaces = state.namespaces.clone(),
        WatchedKind::Node => out.nodes = state.nodes.clone(),
        WatchedKind::Pod => out.pods = state.pods.clone(),
        WatchedKind::Service => out.services = state.services.clone(),
        WatchedKind::EndpointSlice => out.endpoint_slices = state.endpoint_slices.clone(),
        WatchedKind::NetworkPolicy => out.network_policies = state.network_policies.clone(),
        WatchedKind::ServiceCidr => out.service_cidrs = state.service_cidrs.clone(),
        WatchedKind::ClusterNetworkPolicy => {
            out.cluster_network_policies = state.cluster_network_policies.clone()
        }
    }
    out
}

impl SyncGate {
    /// A gate waiting for the first list of each of `kinds`.
    pub fn new(kinds: impl IntoIterator<Item = WatchedKind>) -> Self {
        Self {
            state: ClusterState::default(),
            unlisted: kinds.into_iter().collect(),
            listing: BTreeMap::new(),
            invalid: BTreeSet::new(),
            listing_invalid: BTreeMap::new(),
        }
    }

    /// Whether `Synced` has been emitted.
    pub fn is_synced(&self) -> bool {
        self.state.synced
    }

    /// The state the emitted events add up to (before sync: what the first sync will
    /// emit, minus the lists still in progress).
    pub fn state(&self) -> &ClusterState {
        &self.state
    }

    /// Feed one watcher event of `kind`; returns what to pass on, in order. Objects that
    /// fail validation come out as [`Error::Invalid`] and are treated as absent (as the
    /// manifest source drops an object with errors).
    pub fn step(
        &mut self,
        kind: WatchedKind,
        event: Event<Entry>,
    ) -> Vec<Result<ObjectEvent, Error>> {
        let mut out = Vec::new();
        match event {
            Event::Init => {
                // A failed list restarts with another `Init`: drop the partial buffer.
                self.listing.insert(kind, Vec::new());
                self.listing_invalid.insert(kind, BTreeSet::new());
            }
            Event::InitApply(entry) => {
                let object_ref = entry.object_ref.clone();
                match self.validate(entry, &mut out) {
                    // The watcher always sends `Init` first; tolerate a missing one anyway.
                    Some(object) => self.listing.entry(kind).or_default().push(object),
                    None => {
                        self.listing_invalid
                            .entry(kind)
                            .or_default()
                            .insert(object_ref);
                    }
                }
            }
            Event::InitDone => {
                let mut listed = ClusterState::default();
                for o in self.listing.remove(&kind).unwrap_or_default() {
                    listed.apply(ObjectEvent::Applied(o));
                }
                // Only this kind is compared, so a relist costs the size of its kind.
                let mut changes = only_kind(&self.state, kind).diff_events(&listed);
                for e in &changes {
                    self.state.apply(e.clone());
                }
                // Invalid objects of this kind that the relist no longer shows.
                let now_invalid = self.listing_invalid.remove(&kind).unwrap_or_default();
                let model_kind = kind.model_kind();
                let gone: Vec<ObjectRef> = self
                    .invalid
                    .iter()
                    .filter(|r| r.kind == model_kind && !now_invalid.contains(r))
                    .cloned()
                    .collect();
                self.invalid.retain(|r| r.kind != model_kind);
                for r in gone {
                    let still_listed = changes
                        .iter()
                        .any(|e| matches!(e, ObjectEvent::Applied(o) if o.object_ref() == r));
                    if !still_listed {
                        changes.push(ObjectEvent::Deleted(r));
                    }
                }
                self.invalid.extend(now_invalid);
                self.unlisted.remove(&kind);
                if self.state.synced {
                    out.extend(changes.into_iter().map(Ok));
                } else if self.unlisted.is_empty() {
                    self.state.synced = true;
                    out.extend(
                        ClusterState::default()
                            .diff_events(&self.state)
                            .into_iter()
                            .map(Ok),
                    );
                }
            }
            Event::Apply(entry) => {
                let object_ref = entry.object_ref.clone();
                let mut why = Vec::new();
                match self.validate(entry, &mut why) {
                    Some(object) => {
                        self.invalid.remove(&object_ref);
                        self.forward(ObjectEvent::Applied(object), &mut out);
                    }
                    // Now invalid: like a manifest edited into an error, it goes away.
                    None => {
                        self.invalid.insert(object_ref.clone());
                        self.forward(ObjectEvent::Deleted(object_ref), &mut out);
                    }
                }
                out.extend(why);
            }
            Event::Delete(entry) => {
                let object_ref = entry.object_ref;
                if self.invalid.remove(&object_ref) {
                    // Absent from the state, so nothing changes there; say it anyway.
                    if self.state.synced {
                        out.push(Ok(ObjectEvent::Deleted(object_ref)));
                    }
                } else {
                    self.forward(ObjectEvent::Deleted(object_ref), &mut out);
                }
            }
        }
        out
    }

    fn validate(&self, entry: Entry, out: &mut Vec<Result<ObjectEvent, Error>>) -> Option<Object> {
        match entry.object {
            Ok(o) => Some(o),
            Err(errors) => {
                out.push(Err(Error::Invalid {
                    object: entry.object_ref,
                    errors,
                }));
                None
            }
        }
    }

    /// Apply a live change; pass it on only after sync and only if it changed something.
    fn forward(&mut self, event: ObjectEvent, out: &mut Vec<Result<ObjectEvent, Error>>) {
        let changed = self.state.apply(event.clone());
        if changed && self.state.synced {
            out.push(Ok(event));
        }
    }
}

#[cfg(test)]
mod tests;
