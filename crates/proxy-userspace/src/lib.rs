//! kube-proxy's userspace mode, rebuilt: a listener per service port inside the node,
//! iptables "portal" rules that redirect cluster IPs, external IPs, load-balancer IPs and
//! node ports to it, round-robin with ClientIP affinity and connect retry, TCP forwarded
//! with `splice(2)`, UDP with per-client flows.
//!
//! - [`plan`]: pure. Listeners, their endpoints and the rules, from a
//!   [`ProxyModel`](twill_proxy_core::ProxyModel).
//! - [`balancer`]: pure. Round-robin and affinity with time as an argument.
//! - [`forward`], [`proxier`]: the runtime.

pub mod balancer;
pub mod forward;
pub mod plan;
pub mod proxier;

pub use plan::{Config, ListenerKey, Plan, Scope, plan as plan_listeners, preview, render_rules};
pub use proxier::{Error, Options, Proxier, SyncReport};
