//! Every shared-corpus runner and namespace harness, in one crate of test code.
//!
//! The production crates hold the behaviour; this crate holds what checks it against
//! the shared corpora (`shared/testdata/<area>`, each folder's README is its schema):
//! `twill conformance AREA DIR` and the crates' own tests call these runners. Nothing
//! here runs in a node agent.
//!
//! - [`proxy`]: the proxy corpus (rendered rules, packet flows through the iptables
//!   tracer), real-kernel flows in namespaces, and the ipvs and userspace modes' checks.
//! - [`dns`]: query and `resolv.conf` cases.
//! - [`netpol`]: the NetworkPolicy truth tables, replayed in a two-node netns cluster.
//! - [`overlay`]: flannel's subnet, lease and backend cases.
//! - [`trace`]: trace cases (rulesets, routes, probes and expected paths).
//! - [`cni`]: the CNI plugin corpus, run against the real plugin binaries.

#[cfg(feature = "cni")]
pub mod cni;
#[cfg(feature = "dns")]
pub mod dns;
#[cfg(feature = "netpol")]
pub mod netpol;
#[cfg(feature = "overlay")]
pub mod overlay;
#[cfg(feature = "proxy")]
pub mod proxy;
#[cfg(feature = "trace")]
pub mod trace;
