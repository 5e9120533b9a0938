//! kube-proxy's nftables mode (`pkg/proxy/nftables/proxier.go`, 1.31 layout).
//!
//! One table, `kube-proxy`, in family `ip` or `ip6` (a proxier handles one family).
//! Traffic is dispatched by verdict maps instead of rule lists, so the first packet of a
//! connection costs the same at 10 services or 10 000:
//!
//! - `services` looks up `daddr . l4proto . dport` in `service-ips` (ClusterIPs,
//!   external IPs, LB IPs) and `l4proto . dport` in `service-nodeports` for addresses in
//!   `nodeport-ips`;
//! - per service port `service-<hash>-ns/name/proto/port` (Cluster policy),
//!   `local-…` (Local policy), `external-…` (external destinations), `firewall-…`
//!   (`loadBalancerSourceRanges`), and per endpoint `endpoint-<hash>-…__ip/port`, with
//!   `numgen random mod N vmap` for the choice and dynamic `affinity-…` sets with a
//!   timeout for ClientIP affinity;
//! - filter chains consult `no-endpoint-services` / `no-endpoint-nodeports` (REJECT via
//!   `reject-chain`, or drop), `firewall-ips`, and `cluster-ips` (reject traffic to a
//!   ClusterIP port that is not served);
//! - `mark-for-masquerade` sets the mark (0x4000 by default) that `masquerading` turns
//!   into `masquerade fully-random`.
//!
//! [`render`] computes the desired state from a [`ProxyModel`](twill_proxy_core::ProxyModel),
//! one [`ServiceObjects`] per service port; [`render_changed`] reuses the previous state
//! of unchanged services. [`full_script`] writes an `nft -f -` transaction that builds
//! the table (from scratch, or in place deleting stale chains and sets), and
//! [`diff_script`] one that touches only the map elements, chains and sets that differ
//! between two states: upstream rewrote every map on each sync, which is what made its
//! syncs slow at 5k services / 250k endpoints.
//!
//! Upstream's nftables mode has no localhost NodePorts (`localhostNodePorts` is an
//! iptables/IPv4 feature): `nodeport-ips` never holds a loopback address.
//!
//! Everything above is pure: no I/O, no clock. [`proxier`] is the mode's applier, one
//! `nft -f -` transaction per sync (incremental when it can be).

mod config;
mod names;
pub mod proxier;
mod render;
mod script;

pub use config::{Config, DetectorMatch, LocalDetector, node_port_ips};
pub use names::{
    endpoint_chain_base, hash_and_truncate, is_affinity_set, is_service_chain, service_chain_base,
};
pub use proxier::{NftKernel, NftProxier};
pub use render::{Desired, Element, ServiceObjects, render, render_changed};
pub use script::{Existing, TABLE, diff_script, full_script, parse_existing};

#[cfg(test)]
mod tests;
