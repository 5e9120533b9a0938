//! What every proxy mode's applier shares.
//!
//! - [`metrics`]: kube-proxy's metric names, one set per proxier (served by the agent
//!   runtime's one HTTP server, `twill_agent::http`), and [`metrics::node_model`], the
//!   model build that counts skipped services.
//! - [`conntrack`]: deleting stale UDP conntrack entries after an endpoint goes away
//!   (netlink, no `conntrack` binary needed), conntrack's sysctls, and its events.
//! - [`connections`]: new connections per Service port and endpoint, from those events.
//!
//! The appliers themselves live with their modes: `twill_proxy_iptables::proxier`,
//! `twill_proxy_nftables::proxier`, `twill_proxy_ipvs` and `twill_proxy_userspace`.

pub mod connections;
pub mod conntrack;
pub mod metrics;
