//! Which address to take, which reservations to drop (reference `allocator.go`,
//! `disk/backend.go` semantics), decided over a snapshot of the store.

use std::collections::BTreeSet;
use std::net::IpAddr;

use crate::IpamError;
use crate::range::{RangeSet, next_ip};

/// A `(containerID, ifname)` pair: the unit CNI attaches, releases and GCs.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Attachment {
    pub container_id: String,
    pub ifname: String,
}

/// One store file: the reserved address and who holds it. Legacy files (written
/// before interface names were recorded) have no `ifname`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub ip: IpAddr,
    pub container_id: String,
    pub ifname: Option<String>,
}

impl Reservation {
    /// Interpret a store file; `None` for files that are not reservations
    /// (`lock`, `last_reserved_ip.N`, anything not named by an address).
    pub fn parse(file_name: &str, content: &str) -> Option<Reservation> {
        let ip: IpAddr = file_name.parse().ok()?;
        let content = content.trim();
        let (id, ifname) = match content.split_once("\r\n") {
            Some((id, ifname)) => (id.trim(), Some(ifname.trim().to_string())),
            None => (content, None),
        };
        Some(Reservation {
            ip,
            container_id: id.to_string(),
            ifname,
        })
    }

    /// The store file content for an attachment (CRLF, no trailing newline).
    pub fn render(container_id: &str, ifname: &str) -> String {
        format!("{}\r\n{}", container_id.trim(), ifname)
    }

    pub fn is_held_by(&self, a: &Attachment) -> bool {
        self.container_id == a.container_id.trim()
            && self.ifname.as_deref() == Some(a.ifname.as_str())
    }
}

/// The address chosen for one range set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allocation {
    pub address: IpAddr,
    pub prefix: u8,
    pub gateway: IpAddr,
}

/// Walks a range set like the reference `RangeIter`: start after `last_reserved` (when
/// the set still contains it) or at the first range's start; skip gateways; move to the
/// next range at each range end, wrapping; stop once back at the first candidate.
struct Cursor<'a> {
    set: &'a RangeSet,
    idx: usize,
    cur: Option<IpAddr>,
    first: Option<IpAddr>,
}

impl Cursor<'_> {
    fn next(&mut self) -> Option<(IpAddr, usize)> {
        loop {
            let r = &self.set.0[self.idx];
            let cand = match self.cur {
                None => r.range_start,
                Some(c) if c == r.range_end => {
                    self.idx = (self.idx + 1) % self.set.0.len();
                    self.set.0[self.idx].range_start
                }
                Some(c) => next_ip(c),
            };
            let had_current = self.cur.is_some();
            self.cur = Some(cand);
            match self.first {
                None => self.first = Some(cand),
                Some(f) if f == cand && had_current => return None,
                Some(_) => {}
            }
            if cand == self.set.0[self.idx].gateway {
                continue;
            }
            return Some((cand, self.idx));
        }
    }
}

/// Decide the address for one range set.
///
/// * `reserved`: every address that has a store file (any owner);
/// * `held`: addresses already reserved by this attachment (a second ADD of the same
///   attachment in the same set is refused: duplicate allocation);
/// * `last_reserved`: content of `last_reserved_ip.<set index>`;
/// * `requested`: an address asked for (`CNI_ARGS IP=`, `args`, `runtimeConfig`).
pub fn plan_allocation(
    set: &RangeSet,
    reserved: &BTreeSet<IpAddr>,
    held: &[IpAddr],
    container_id: &str,
    last_reserved: Option<IpAddr>,
    requested: Option<IpAddr>,
) -> Result<Allocation, IpamError> {
    if let Some(ip) = requested {
        let Some(r) = set.range_for(ip) else {
            return Err(IpamError::RequestedNotInSet {
                ip: ip.to_string(),
                set: set.to_string(),
            });
        };
        if ip == r.gateway {
            return Err(IpamError::RequestedIsGateway(ip.to_string()));
        }
        if reserved.contains(&ip) {
            return Err(IpamError::RequestedTaken {
                ip: ip.to_string(),
                set: set.to_string(),
            });
        }
        return Ok(Allocation {
            address: ip,
            prefix: r.subnet.prefix_len(),
            gateway: r.gateway,
        });
    }
    if let Some(ip) = held.iter().find(|ip| set.contains(**ip)) {
        return Err(IpamError::Duplicate {
            ip: ip.to_string(),
            id: container_id.to_string(),
        });
    }
    let mut cursor = match last_reserved
        .and_then(|l| set.0.iter().position(|r| r.contains(l)).map(|i| (l, i)))
    {
        Some((last, idx)) => Cursor {
            set,
            idx,
            cur: Some(last),
            first: None,
        },
        None => Cursor {
            set,
            idx: 0,
            cur: None,
            first: None,
        },
    };
    while let Some((ip, idx)) = cursor.next() {
        if !reserved.contains(&ip) {
            let r = &set.0[idx];
            return Ok(Allocation {
                address: ip,
                prefix: r.subnet.prefix_len(),
                gateway: r.gateway,
            });
        }
    }
    Err(IpamError::Exhausted(set.to_string()))
}

/// Store files to remove when `attachment` is released: its own reservations, or, when
/// it has none, legacy id-only files of the same container (the reference's fallback).
pub fn plan_release(reservations: &[Reservation], attachment: &Attachment) -> Vec<IpAddr> {
    let exact: Vec<IpAddr> = reservations
        .iter()
        .filter(|r| r.is_held_by(attachment))
        .map(|r| r.ip)
        .collect();
    if !exact.is_empty() {
        return exact;
    }
    reservations
        .iter()
        .filter(|r| r.ifname.is_none() && r.container_id == attachment.container_id.trim())
        .map(|r| r.ip)
        .collect()
}

/// Store files a GC removes: reservations whose attachment is not valid. A legacy
/// id-only file is kept while any valid attachment has that container id.
pub fn plan_gc(reservations: &[Reservation], valid: &[Attachment]) -> Vec<IpAddr> {
    let mut stale: Vec<IpAddr> = reservations
        .iter()
        .filter(|r| match &r.ifname {
            Some(_) => !valid.iter().any(|a| r.is_held_by(a)),
            None => !valid
                .iter()
                .any(|a| a.container_id.trim() == r.container_id),
        })
        .map(|r| r.ip)
        .collect();
    stale.sort();
    stale
}
