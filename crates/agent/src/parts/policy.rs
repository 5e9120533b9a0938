//! The NetworkPolicy part: the enforcer of one node (`twill_netpol_agent::daemon`) fed
//! from the one cluster state.
//!
//! Its view of the cluster: `twill_netpol_agent::daemon::cluster_from_manifests` builds
//! the same [`Cluster`] from a manifest load result; [`cluster_from_state`] does it from
//! a [`ClusterState`] plus the policies the sources rejected (which the state does not
//! hold: an invalid object is absent from it). Those fail closed for their whole
//! namespace, as the manifest path does.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use twill_model::{ClusterState, ObjectKey};
use twill_netpol::{Cluster, RenderOptions};
use twill_netpol_agent::daemon::{Enforcer, SyncOutcome};
use twill_netpol_agent::flows::{FlowLog, FlowLogOptions};

use super::{PartError, SyncContext};
use crate::status::Status;

pub struct PolicyPart {
    enforcer: Enforcer,
    /// Further addresses of nodes (a bridge gateway), for the rule that lets a node
    /// always reach its own pods.
    extra_node_addresses: Vec<(String, IpAddr)>,
    registered: bool,
    /// The flow log and its NFLOG group, when the rules log decisions.
    flow_log: Option<(FlowLog, u16)>,
    /// The state generation the flow log describes records against.
    flow_generation: Option<u64>,
}

impl PolicyPart {
    pub fn new(
        node: &str,
        options: RenderOptions,
        extra_node_addresses: Vec<(String, IpAddr)>,
    ) -> Self {
        let flow_log = options
            .flow_log
            .map(|rules| (FlowLog::new(node, FlowLogOptions::default()), rules.group));
        PolicyPart {
            enforcer: Enforcer::new(node, options),
            extra_node_addresses,
            registered: false,
            flow_log,
            flow_generation: None,
        }
    }

    /// Keep this many flow log records, taking at most `per_second` a second.
    pub fn with_flow_log_options(mut self, options: FlowLogOptions) -> Self {
        if let Some((_, group)) = self.flow_log {
            self.flow_log = Some((FlowLog::new(&self.enforcer.node, options), group));
        }
        self
    }

    pub(crate) fn sync(&mut self, ctx: &SyncContext, status: &Status) -> Result<bool, PartError> {
        if !self.registered {
            status.register(|r| self.enforcer.metrics.register(r));
            if let Some((log, group)) = &self.flow_log {
                status.register(|r| log.register(r));
                // In the node's namespace by now: the runtime syncs there.
                match log.start(*group) {
                    Ok(()) => status.set_flows(log.clone()),
                    Err(e) => {
                        tracing::warn!(group, error = %e, "no flow log: nfnetlink_log group unavailable")
                    }
                }
            }
            self.registered = true;
        }
        if let Some((log, _)) = &self.flow_log
            && self.flow_generation != Some(ctx.generation)
        {
            log.set_state(Arc::new(ctx.state.clone()));
            self.flow_generation = Some(ctx.generation);
        }
        // An unchanged view costs a comparison (and reads the deny counters).
        let cluster =
            cluster_from_state(ctx.state, ctx.rejected_policies, &self.extra_node_addresses);
        match self.enforcer.sync(cluster) {
            Ok(SyncOutcome::Applied {
                rules,
                sets,
                elapsed,
                sets_only,
            }) => {
                tracing::info!(
                    node = %self.enforcer.node,
                    rules,
                    sets,
                    sets_only,
                    elapsed_ms = elapsed.as_millis() as u64,
                    "network policy sync"
                );
                Ok(true)
            }
            Ok(SyncOutcome::Unchanged) => Ok(false),
            Err(e) => Err(PartError::retry(e.to_string())),
        }
    }

    pub(crate) fn summary(&self) -> String {
        format!("network policy {} rules", self.enforcer.metrics.rules.get())
    }
}

/// `rejected`: NetworkPolicies the source reported invalid, with why.
pub fn cluster_from_state(
    state: &ClusterState,
    rejected: &BTreeMap<ObjectKey, String>,
    extra_node_addresses: &[(String, IpAddr)],
) -> Cluster {
    Cluster::from_state(state, rejected, extra_node_addresses)
}

#[cfg(test)]
mod tests {
    use super::*;
    use twill_model::ObjectEvent;

    fn state(yaml: &str) -> ClusterState {
        let loaded = twill_manifest::parse_str("test.yaml", yaml);
        assert!(!loaded.has_errors(), "{:?}", loaded.problems);
        let mut s = ClusterState::default();
        for o in loaded.into_objects() {
            s.apply(ObjectEvent::Applied(o));
        }
        s
    }

    const CLUSTER: &str = "
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {team: a}}
---
apiVersion: v1
kind: Node
metadata: {name: node-a}
status: {addresses: [{type: InternalIP, address: 192.168.56.10}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop, labels: {app: web}}
spec: {nodeName: node-a, containers: [{name: c, image: i}]}
status: {phase: Running, podIP: 10.244.0.5, podIPs: [{ip: 10.244.0.5}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-web, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{from: [{podSelector: {}}]}]
";

    #[test]
    fn the_state_gives_the_same_policy_view_as_the_same_manifests() {
        let s = state(CLUSTER);
        let extra = [("node-a".to_string(), "10.244.0.1".parse().unwrap())];
        let from_state = cluster_from_state(&s, &BTreeMap::new(), &extra);
        let load = twill_manifest::parse_str("test.yaml", CLUSTER);
        let (from_files, problems) =
            twill_netpol_agent::daemon::cluster_from_manifests(&load, &extra);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(from_state, from_files);
        assert_eq!(from_state.pods.len(), 1);
        assert_eq!(from_state.nodes["node-a"].addresses.len(), 2);
    }

    #[test]
    fn a_rejected_policy_isolates_its_namespace_both_ways() {
        let s = state(CLUSTER);
        let key = ObjectKey::new("shop", "broken");
        let rejected = BTreeMap::from([(key.clone(), "spec.podSelector: bad".to_string())]);
        let c = cluster_from_state(&s, &rejected, &[]);
        let web = c.pods.values().next().unwrap();
        assert!(c.isolated_for_ingress(web) && c.isolated_for_egress(web));
        assert_eq!(c.broken[&key].reason, "spec.podSelector: bad");
    }
}
