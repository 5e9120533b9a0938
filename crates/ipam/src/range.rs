//! Ranges and range sets (reference `range.go`, `range_set.go`), with address arithmetic
//! on `u128` so IPv4 and IPv6 share one code path.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use crate::IpamError;

/// One canonical range: `subnet` (network address, host bits clear), an inclusive
/// `[range_start, range_end]` inside it, and the gateway that is never handed out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pub subnet: IpNet,
    pub range_start: IpAddr,
    pub range_end: IpAddr,
    pub gateway: IpAddr,
}

/// Addresses of one range set form a single pool; each ADD takes one address per set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeSet(pub Vec<Range>);

pub(crate) fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// The next address of the same family (wrapping at the top of the space).
pub fn next_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a).wrapping_add(1))),
        IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a).wrapping_add(1))),
    }
}

impl Range {
    /// Fill defaults and validate, like the reference `Range.Canonicalize`. `subnet`
    /// keeps the configured address so host bits can be reported.
    pub fn canonicalize(
        subnet: IpNet,
        range_start: Option<IpAddr>,
        range_end: Option<IpAddr>,
        gateway: Option<IpAddr>,
    ) -> Result<Range, IpamError> {
        let network = subnet.network();
        if network != subnet.addr() {
            return Err(IpamError::HostBitsSet {
                prefix: subnet.prefix_len(),
                network: network.to_string(),
            });
        }
        if subnet.prefix_len() + 2 > subnet.max_prefix_len() {
            return Err(IpamError::NetworkTooSmall(subnet.to_string()));
        }
        let first = next_ip(network);
        let last = match subnet {
            IpNet::V4(n) => IpAddr::V4(Ipv4Addr::from(u32::from(n.broadcast()) - 1)),
            IpNet::V6(n) => IpAddr::V6(n.broadcast()),
        };
        let contains = |ip: IpAddr| subnet.contains(&ip) && ip.is_ipv4() == network.is_ipv4();
        let range_start = match range_start {
            Some(s) if !contains(s) => {
                return Err(IpamError::RangeStartNotInNetwork {
                    start: s.to_string(),
                    network: subnet.to_string(),
                });
            }
            Some(s) => s,
            None => first,
        };
        let range_end = match range_end {
            Some(e) if !contains(e) => {
                return Err(IpamError::RangeEndNotInNetwork {
                    end: e.to_string(),
                    network: subnet.to_string(),
                });
            }
            Some(e) => e,
            None => last,
        };
        if to_u128(range_start) > to_u128(range_end) {
            return Err(IpamError::RangeStartAfterEnd {
                start: range_start.to_string(),
                end: range_end.to_string(),
            });
        }
        let gateway = match gateway {
            Some(g) if !contains(g) => {
                return Err(IpamError::GatewayNotInNetwork {
                    gateway: g.to_string(),
                    network: subnet.to_string(),
                });
            }
            Some(g) => g,
            None => first,
        };
        Ok(Range {
            subnet,
            range_start,
            range_end,
            gateway,
        })
    }

    /// True when `ip` lies in `[range_start, range_end]`.
    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.range_start.is_ipv4()
            && to_u128(ip) >= to_u128(self.range_start)
            && to_u128(ip) <= to_u128(self.range_end)
    }

    fn overlaps(&self, other: &Range) -> bool {
        self.range_start.is_ipv4() == other.range_start.is_ipv4()
            && (self.contains(other.range_start)
                || self.contains(other.range_end)
                || other.contains(self.range_start)
                || other.contains(self.range_end))
    }
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.range_start, self.range_end)
    }
}

impl RangeSet {
    /// Validate a set of canonical ranges: non-empty, one family, no overlap.
    pub fn new(ranges: Vec<Range>) -> Result<RangeSet, IpamError> {
        let Some(first) = ranges.first() else {
            return Err(IpamError::EmptyRangeSet);
        };
        let v4 = first.range_start.is_ipv4();
        if ranges.iter().any(|r| r.range_start.is_ipv4() != v4) {
            return Err(IpamError::MixedFamilies);
        }
        for (i, a) in ranges.iter().enumerate() {
            for b in &ranges[i + 1..] {
                if a.overlaps(b) {
                    return Err(IpamError::RangesOverlap(
                        a.subnet.to_string(),
                        b.subnet.to_string(),
                    ));
                }
            }
        }
        Ok(RangeSet(ranges))
    }

    /// The range holding `ip`, if any.
    pub fn range_for(&self, ip: IpAddr) -> Option<&Range> {
        self.0.iter().find(|r| r.contains(ip))
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.range_for(ip).is_some()
    }

    pub fn overlaps(&self, other: &RangeSet) -> bool {
        self.0.iter().any(|a| other.0.iter().any(|b| a.overlaps(b)))
    }
}

impl fmt::Display for RangeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(Range::to_string).collect();
        f.write_str(&parts.join(","))
    }
}
