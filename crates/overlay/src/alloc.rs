//! Which subnet a node takes, following flannel's `pkg/subnet/etcd/local_manager.go`
//! (`tryAcquireLease`, `allocateSubnet`):
//!
//! 1. a live lease whose `PublicIP` is ours and that fits the config is taken back (the
//!    store then rewrites its attrs and re-grants 24 h); our leases that do not fit any more
//!    are deleted;
//! 2. else the subnet of the previous `subnet.env`, if nobody holds it and it fits;
//! 3. else a pick among the first 100 free subnets from `SubnetMin` upward, chosen by a seed
//!    the caller supplies (flannel picks at random, so that nodes racing for subnets rarely
//!    collide; the store's create-if-absent settles the rest).

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::Error;
use crate::config::{NetworkConfig, subnet_size};
use crate::lease::{Lease, SubnetKey, splitmix64};

/// How many free subnets the random pick chooses among.
pub const FREE_CANDIDATES: usize = 100;

/// What to do to obtain a lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllocationPlan {
    /// The subnet to hold.
    pub subnet: SubnetKey,
    /// True when an existing lease of ours is taken back (update, not create).
    pub reuses_existing: bool,
    /// Keys of our own leases that no longer fit the config and are to be deleted.
    pub delete: Vec<SubnetKey>,
}

/// Decide the subnet for a node with `public_ip`, given the leases alive `now` in the
/// store, the subnet from the previous `subnet.env` and a seed for the random pick.
pub fn plan_allocation(
    config: &NetworkConfig,
    public_ip: Ipv4Addr,
    leases: &[Lease],
    previous: Option<Ipv4Net>,
    now: u64,
    seed: u64,
) -> Result<AllocationPlan, Error> {
    // Store order (etcd and the embedded store list keys in byte order): with two live
    // leases of ours, flannel keeps the first it sees.
    let live: Vec<&Lease> = leases.iter().filter(|l| l.alive_at(now)).collect();

    let (mine, others): (Vec<&Lease>, Vec<&Lease>) =
        live.iter().partition(|l| l.attrs.public_ip == public_ip);
    let mut delete = Vec::new();
    let mut keep = None;
    for l in mine {
        if keep.is_none() && config.fits(l.subnet.ipv4) {
            keep = Some(l.subnet);
        } else if !config.fits(l.subnet.ipv4) {
            delete.push(l.subnet);
        }
    }
    if let Some(subnet) = keep {
        return Ok(AllocationPlan {
            subnet,
            reuses_existing: true,
            delete,
        });
    }

    let taken: Vec<Ipv4Net> = others.iter().map(|l| l.subnet.ipv4).collect();
    let is_free = |sn: &Ipv4Net| !taken.iter().any(|t| overlaps(*t, *sn));

    if let Some(prev) = previous.map(|p| p.trunc())
        && config.fits(prev)
        && is_free(&prev)
    {
        return Ok(AllocationPlan {
            subnet: with_v6(config, prev),
            reuses_existing: false,
            delete,
        });
    }

    let free = free_subnets(config, &taken, FREE_CANDIDATES);
    if free.is_empty() {
        return Err(Error::OutOfSubnets {
            network: config.network,
            min: config.subnet_min,
            max: config.subnet_max,
        });
    }
    let pick = free[(splitmix64(seed) % free.len() as u64) as usize];
    Ok(AllocationPlan {
        subnet: with_v6(config, pick),
        reuses_existing: false,
        delete,
    })
}

fn with_v6(config: &NetworkConfig, v4: Ipv4Net) -> SubnetKey {
    SubnetKey {
        ipv4: v4,
        ipv6: config.ipv6_subnet_for(v4),
    }
}

/// Up to `limit` subnets from SubnetMin to SubnetMax (inclusive) overlapping none of `taken`.
pub fn free_subnets(config: &NetworkConfig, taken: &[Ipv4Net], limit: usize) -> Vec<Ipv4Net> {
    let size = u64::from(subnet_size(config.subnet_len));
    let max = u64::from(u32::from(config.subnet_max));
    let mut out = Vec::new();
    let mut a = u64::from(u32::from(config.subnet_min));
    while a <= max && out.len() < limit {
        let sn =
            Ipv4Net::new(Ipv4Addr::from(a as u32), config.subnet_len).expect("valid prefix length");
        if !taken.iter().any(|t| overlaps(*t, sn)) {
            out.push(sn);
        }
        a += size;
    }
    out
}

fn overlaps(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

#[cfg(test)]
mod tests;
