//! Make the kernel hold the overlay's desired state (`twill_overlay::state::KernelState`):
//! observe links, addresses, routes, neighbours and FDB entries through rtnetlink, diff
//! against the desired state ([`diff_state`], pure), and apply only the difference.
//!
//! Applying twice changes nothing the second time, and only what the overlay owns is ever
//! touched: its own links (`flannel.<VNI>`, `flannel0`), the permanent neighbour/FDB
//! entries on them, and routes inside the cluster network through those links or the
//! external interface — never the node's own pod subnet (the bridge's) or kernel routes.
//! This is the opposite of flannel's per-event list/compare/add in `route_network.go`:
//! decisions sit in the diff, I/O in [`apply_plan`].
//!
//! Everything runs in the network namespace of the calling thread.

mod apply;
mod diff;
mod observe;
mod underlay;

use std::collections::BTreeSet;

use ipnet::Ipv4Net;

pub use apply::{apply_plan, apply_sysctls, reconcile};
pub use diff::{LinkChange, Plan, diff_state};
pub use observe::{ObservedLink, ObservedState, VxlanParams, observe};
pub use underlay::{IfaceChoice, Interfaces, Underlay, choose as choose_iface, describe_underlay};

/// What the overlay owns in the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    /// Routes are owned only inside this network...
    pub network: Ipv4Net,
    /// ...and never inside these (the node's own pod subnet, carried by the bridge).
    pub keep: Vec<Ipv4Net>,
    /// ...and only through these devices (overlay links and the external interface).
    pub devices: BTreeSet<String>,
}

impl Scope {
    /// Whether a route to `dst` through `dev` belongs to the overlay.
    pub fn owns_route(&self, dst: Ipv4Net, dev: &str) -> bool {
        self.network.contains(&dst)
            && !self.keep.iter().any(|k| k.contains(&dst))
            && self.devices.contains(dev)
    }
}

/// Errors of the netlink applier; each names the object it was acting on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("opening a netlink socket: {0}")]
    Connect(#[source] std::io::Error),
    #[error("{action}: {source}")]
    Netlink {
        action: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("link {name}: not found (needed by {needed_by})")]
    MissingLink { name: String, needed_by: String },
    #[error("sysctl {key}: {source}")]
    Sysctl {
        key: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{} of {total} changes failed: {}", failures.len(), failures.join("; "))]
    Partial { total: usize, failures: Vec<String> },
}

impl Error {
    /// True when some changes were applied and others failed (e.g. an unreachable gateway).
    pub fn is_partial(&self) -> bool {
        matches!(self, Error::Partial { .. })
    }
}
