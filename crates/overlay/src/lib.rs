//! Pure core of Twill's overlay, the job flannel does: the network config, subnet leases
//! and which subnet a node takes, `subnet.env`, per-backend kernel state (vxlan, host-gw,
//! udp) and the masquerade rules. No I/O, no clock: time and seeds come in as arguments,
//! and output is ordered so the same input gives the same bytes.
//!
//! Appliers live elsewhere: `twill-netlink` (kernel state), `twill-lease` (stores),
//! `twill-netfilter` (rules).

pub mod alloc;
pub mod backend;
pub mod config;
pub mod lease;
pub mod masq;
pub mod renewal;
pub mod state;
pub mod subnet_env;

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

pub use backend::{
    BackendPlan, LeaseEvent, NodeSpec, OwnLease, PeerTable, UnderlayRoute, plan_backend,
};
pub use config::{BackendKind, NetworkConfig};
pub use lease::{LEASE_TTL_SECS, Lease, LeaseAttrs, Mac, SubnetKey};

/// Errors of the overlay core. Messages name the source, field or key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("{source_name}: network config is not valid JSON: {source}")]
    ConfigJson {
        source_name: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{source_name}: {field}: {message}")]
    Config {
        source_name: String,
        field: String,
        message: String,
    },
    #[error("Backend.Type: unknown backend type {backend_type:?} (supported: vxlan, host-gw, udp)")]
    UnsupportedBackend { backend_type: String },
    #[error("lease {key}: value is not valid lease JSON: {source}")]
    LeaseValue {
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("lease key {key:?}: expected <prefix>/subnets/<a.b.c.d>-<len>[&<v6>-<len>]")]
    LeaseKey { key: String },
    #[error("invalid MAC address {text:?}")]
    Mac { text: String },
    #[error(
        "out of subnets: every subnet of {network} between SubnetMin {min} and SubnetMax {max} is leased"
    )]
    OutOfSubnets {
        network: Ipv4Net,
        min: Ipv4Addr,
        max: Ipv4Addr,
    },
    #[error(
        "subnet-lease-renew-margin: Invalid subnet-lease-renew-margin option, out of acceptable range: {minutes} minutes (must be 1..1439)"
    )]
    RenewMargin { minutes: u32 },
    #[error(
        "host-gw: your PublicIP differs from interface IP, meaning that probably you're on a NAT, which is not supported by host-gw backend (PublicIP {public_ip}, interface IP {iface_ip})"
    )]
    HostGwNat {
        public_ip: Ipv4Addr,
        iface_ip: Ipv4Addr,
    },
}

impl Error {
    /// True for problems in the network config (the operator must fix it).
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            Error::Config { .. } | Error::ConfigJson { .. } | Error::UnsupportedBackend { .. }
        )
    }
}
