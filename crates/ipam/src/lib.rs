//! host-local IPAM decisions, without I/O.
//!
//! Reproduces the behaviour of the reference `host-local` plugin
//! (containernetworking/plugins `plugins/ipam/host-local/backend/allocator`):
//!
//! - a configuration is a list of *range sets*; each range set yields one address per
//!   ADD, and has its own round-robin cursor (`last_reserved_ip.<index>` on disk);
//! - a range defaults to network+1 .. broadcast-1 (IPv4) or .. the last address (IPv6),
//!   with the gateway (default network+1) skipped, never handed out;
//! - allocation starts after the last reserved address of the set, moves on to the next
//!   range of the set when one is full, wraps, and tries the last reserved address last;
//! - an attachment is `(containerID, ifname)`; store files hold `<id>\r\n<ifname>`, and
//!   legacy files just `<id>`.
//!
//! The on-disk store itself (files, flock) lives in `twill-cni`; this crate only decides
//! which address to take, which files a release or a GC removes, and validates config.
//! Error messages keep the reference wording, since runtimes and tests match on them.

mod alloc;
mod config;
mod range;

pub use alloc::{Allocation, Attachment, Reservation, plan_allocation, plan_gc, plan_release};
pub use config::{Dns, IpamConfig, Route, parse_cni_args, parse_ipam_config, parse_resolv_conf};
pub use range::{Range, RangeSet, next_ip};

/// Everything host-local can reject, with the reference plugin's wording.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IpamError {
    #[error("IPAM config missing 'ipam' key")]
    MissingIpamKey,
    #[error("failed to load netconf: {0}")]
    Decode(String),
    #[error("no IP ranges specified")]
    NoRanges,
    #[error("invalid CIDR {value:?} in ipam.{field}")]
    BadCidr { field: String, value: String },
    #[error("invalid IP {value:?} in ipam.{field}")]
    BadIp { field: String, value: String },
    #[error(
        "Network has host bits set. For a subnet mask of length {prefix} the network address is {network}"
    )]
    HostBitsSet { prefix: u8, network: String },
    #[error("Network {0} too small to allocate from")]
    NetworkTooSmall(String),
    #[error("RangeStart {start} not in network {network}")]
    RangeStartNotInNetwork { start: String, network: String },
    #[error("RangeEnd {end} not in network {network}")]
    RangeEndNotInNetwork { end: String, network: String },
    #[error("RangeStart {start} is after RangeEnd {end}")]
    RangeStartAfterEnd { start: String, end: String },
    /// Twill addition: the reference accepts a gateway outside the subnet and then
    /// installs routes via an unreachable next hop.
    #[error("ipam gateway {gateway} not in network {network}")]
    GatewayNotInNetwork { gateway: String, network: String },
    #[error("empty range set")]
    EmptyRangeSet,
    #[error("mixed address families")]
    MixedFamilies,
    #[error("subnets {0} and {1} overlap")]
    RangesOverlap(String, String),
    #[error("range set {0} overlaps with {1}")]
    RangeSetsOverlap(usize, usize),
    #[error("ARGS: invalid pair {0:?}")]
    ArgsInvalidPair(String),
    #[error("ARGS: unknown args [{}]", .0.iter().map(|a| format!("{a:?}")).collect::<Vec<_>>().join(" "))]
    ArgsUnknown(Vec<String>),
    #[error("ARGS: invalid IP {0:?}")]
    ArgsBadIp(String),
    #[error("{ip} not in range set {set}")]
    RequestedNotInSet { ip: String, set: String },
    #[error("requested ip {0} is subnet's gateway")]
    RequestedIsGateway(String),
    #[error("requested IP address {ip} is not available in range set {set}")]
    RequestedTaken { ip: String, set: String },
    #[error("{ip} has been allocated to {id}, duplicate allocation is not allowed")]
    Duplicate { ip: String, id: String },
    #[error("no IP addresses available in range set: {0}")]
    Exhausted(String),
}

#[cfg(test)]
mod tests;
