//! NetworkPolicy enforcement, pure.
//!
//! Reproduces the semantics of `networking.k8s.io/v1` NetworkPolicy as the upstream e2e
//! suite checks them (`test/e2e/network/netpol/`): a pod is isolated in a direction when
//! a policy of its namespace selects it with that policy type; an isolated direction
//! admits a connection when any rule of any selecting policy matches it; a connection
//! between pods needs the source's egress and the destination's ingress; replies of
//! admitted connections always pass (conntrack).
//!
//! Two views of the same semantics live here:
//! - [`eval`]: the verdict for one probe, straight from the model (a quick check and the
//!   oracle the rendered rules are compared against);
//! - [`render`]: the iptables `filter` table chains and the ipsets one node needs for
//!   the pods it hosts, as `iptables-restore` and `ipset restore` input.
//!
//! Nothing here does I/O; the applier is `twill-netpol-agent`.

pub mod cluster;
pub mod eval;
pub mod explain;
pub mod render;
pub mod trace;

pub use cluster::{BrokenPolicy, Cluster, NamedPort, NodeInfo, PolicyPod};
pub use eval::{Peer, allows, egress_allows, ingress_allows};
pub use render::{DenyAction, NodeRules, RenderOptions, render_node};

#[cfg(test)]
mod tests;
