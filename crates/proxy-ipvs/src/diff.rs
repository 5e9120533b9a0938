//! From the virtual and real servers the kernel has to the ones a [`Plan`] wants.
//!
//! As upstream's `syncService`/`syncEndpoint` and its graceful termination manager
//! (`pkg/proxy/ipvs/graceful_termination.go`):
//! - a missing virtual server is added, a differing one updated in place (its address
//!   never goes down), an unwanted one deleted, unless it lies in `--ipvs-exclude-cidrs`;
//! - a real server that should go is first set to weight 0 (no new connections) and
//!   deleted on a later sync once it has no active or inactive connections; UDP and
//!   SCTP real servers are deleted at once (upstream: `IsRsGracefulTerminationNeeded`),
//!   since `expire_nodest_conn` takes care of their flows;
//! - a real server that is wanted again while draining gets its weight back.
//!
//! Operations come out in apply order: services added/updated, then real servers
//! added/updated, then real servers deleted, then services deleted.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use twill_model::Protocol;

use crate::config::Config;
use crate::plan::{F_HASHED, Plan, ServiceSpec, VsKey, excluded};

/// A real server as read back (`IPVS_CMD_GET_DEST` dump).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelDest {
    pub weight: u32,
    pub active_conns: u32,
    pub inactive_conns: u32,
}

/// A virtual server as read back (`IPVS_CMD_GET_SERVICE` dump).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelService {
    pub spec: ServiceSpec,
    pub dests: BTreeMap<SocketAddr, KernelDest>,
}

/// The kernel's IPVS table, as far as this proxier reads it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelState {
    pub services: BTreeMap<VsKey, KernelService>,
}

/// One change, mapping one-to-one to an IPVS generic-netlink command.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Op {
    AddService(VsKey, ServiceSpec),
    UpdateService(VsKey, ServiceSpec),
    AddDest(VsKey, SocketAddr, u32),
    UpdateDest(VsKey, SocketAddr, u32),
    DelDest(VsKey, SocketAddr),
    DelService(VsKey),
}

fn rank(op: &Op) -> u8 {
    match op {
        Op::AddService(..) | Op::UpdateService(..) => 0,
        Op::AddDest(..) | Op::UpdateDest(..) => 1,
        Op::DelDest(..) => 2,
        Op::DelService(..) => 3,
    }
}

fn same_spec(kernel: &ServiceSpec, want: &ServiceSpec) -> bool {
    kernel.scheduler == want.scheduler
        && kernel.flags & !F_HASHED == want.flags
        && kernel.timeout == want.timeout
        && kernel.netmask == want.netmask
}

fn graceful(p: Protocol) -> bool {
    p == Protocol::Tcp
}

/// The operations that take `current` to `plan`.
pub fn diff(cfg: &Config, plan: &Plan, current: &KernelState) -> Vec<Op> {
    let mut ops = Vec::new();
    for (key, vs) in &plan.virtual_servers {
        let have = current.services.get(key);
        match have {
            None => ops.push(Op::AddService(*key, vs.spec.clone())),
            Some(k) if !same_spec(&k.spec, &vs.spec) => {
                ops.push(Op::UpdateService(*key, vs.spec.clone()))
            }
            Some(_) => {}
        }
        let empty = BTreeMap::new();
        let dests = have.map(|k| &k.dests).unwrap_or(&empty);
        for rs in &vs.real_servers {
            match dests.get(&rs.addr) {
                None => ops.push(Op::AddDest(*key, rs.addr, rs.weight)),
                Some(d) if d.weight != rs.weight => {
                    ops.push(Op::UpdateDest(*key, rs.addr, rs.weight))
                }
                Some(_) => {}
            }
        }
        for (addr, d) in dests {
            if vs.real_servers.iter().any(|r| r.addr == *addr) {
                continue;
            }
            if !graceful(key.protocol) {
                ops.push(Op::DelDest(*key, *addr));
            } else if d.weight != 0 {
                ops.push(Op::UpdateDest(*key, *addr, 0));
            } else if d.active_conns == 0 && d.inactive_conns == 0 {
                ops.push(Op::DelDest(*key, *addr));
            }
        }
    }
    for key in current.services.keys() {
        if !plan.virtual_servers.contains_key(key) && !excluded(cfg, &key.addr) {
            ops.push(Op::DelService(*key));
        }
    }
    ops.sort_by(|a, b| rank(a).cmp(&rank(b)).then_with(|| a.cmp(b)));
    ops
}

/// What the kernel would hold after `ops` (new real servers start without
/// connections). For tests and dry runs.
pub fn apply(current: &KernelState, ops: &[Op]) -> KernelState {
    let mut s = current.clone();
    for op in ops {
        match op {
            Op::AddService(k, spec) | Op::UpdateService(k, spec) => {
                let e = s.services.entry(*k).or_insert_with(|| KernelService {
                    spec: spec.clone(),
                    dests: BTreeMap::new(),
                });
                e.spec = ServiceSpec {
                    flags: spec.flags | F_HASHED,
                    ..spec.clone()
                };
            }
            Op::AddDest(k, a, w) | Op::UpdateDest(k, a, w) => {
                if let Some(svc) = s.services.get_mut(k) {
                    let d = svc.dests.entry(*a).or_insert(KernelDest {
                        weight: *w,
                        active_conns: 0,
                        inactive_conns: 0,
                    });
                    d.weight = *w;
                }
            }
            Op::DelDest(k, a) => {
                if let Some(svc) = s.services.get_mut(k) {
                    svc.dests.remove(a);
                }
            }
            Op::DelService(k) => {
                s.services.remove(k);
            }
        }
    }
    s
}

#[cfg(test)]
mod tests;
