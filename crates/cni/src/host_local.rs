//! The `host-local` IPAM plugin: decisions from `twill-ipam`, state in [`crate::store`].

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::Path;

use serde_json::Value;
use twill_ipam::{Attachment, IpamConfig, plan_allocation, plan_gc, plan_release};

use crate::skel::{CmdArgs, Plugin};
use crate::spec::{CniError, CniResult, IpConfig, Route};
use crate::store::{DEFAULT_DATA_DIR, Store, StoreError};

pub struct HostLocal;

fn internal<E: std::fmt::Display>(e: E) -> CniError {
    CniError::internal(e.to_string())
}

fn config(conf: &Value) -> Result<IpamConfig, CniError> {
    twill_ipam::parse_ipam_config(conf).map_err(internal)
}

fn open(c: &IpamConfig) -> Result<Store, CniError> {
    let dir = c.data_dir.as_deref().unwrap_or(DEFAULT_DATA_DIR);
    Store::open(Path::new(dir), &c.name).map_err(|e: StoreError| CniError::internal(e.to_string()))
}

fn attachment(a: &CmdArgs) -> Attachment {
    Attachment {
        container_id: a.container_id.clone(),
        ifname: a.ifname.clone(),
    }
}

/// ADD: one address per range set, all or nothing.
pub fn add(a: &CmdArgs) -> Result<CniResult, CniError> {
    let c = config(&a.conf)?;
    let mut requested: Vec<IpAddr> = twill_ipam::parse_cni_args(&a.args).map_err(internal)?;
    requested.extend(c.requested_ips.iter().copied());
    let store = open(&c)?;
    let existing = store.reservations().map_err(internal)?;
    let mut reserved: BTreeSet<IpAddr> = existing.iter().map(|r| r.ip).collect();
    let me = attachment(a);
    let held: Vec<IpAddr> = existing
        .iter()
        .filter(|r| r.is_held_by(&me))
        .map(|r| r.ip)
        .collect();
    let mut taken: Vec<IpAddr> = Vec::new();
    let mut ips = Vec::new();
    let rollback = |store: &Store, taken: &[IpAddr]| {
        let _ = store.release(taken);
    };
    for (idx, set) in c.range_sets.iter().enumerate() {
        let want = requested
            .iter()
            .position(|ip| set.contains(*ip))
            .map(|i| requested.remove(i));
        let last = store.last_reserved(idx);
        let alloc = loop {
            match plan_allocation(set, &reserved, &held, &a.container_id, last, want) {
                Ok(al) => match store.reserve(al.address, &a.container_id, &a.ifname, idx) {
                    Ok(true) => break al,
                    // Taken by a writer that ignores the lock: note it and pick again.
                    Ok(false) if want.is_none() => {
                        reserved.insert(al.address);
                    }
                    Ok(false) => {
                        rollback(&store, &taken);
                        return Err(CniError::internal(format!(
                            "failed to allocate for range {idx}: requested IP address {} is not available in range set {set}",
                            al.address
                        )));
                    }
                    Err(e) => {
                        rollback(&store, &taken);
                        return Err(internal(e));
                    }
                },
                Err(e) => {
                    rollback(&store, &taken);
                    return Err(internal(e).context(format!("failed to allocate for range {idx}")));
                }
            }
        };
        reserved.insert(alloc.address);
        taken.push(alloc.address);
        let address = ipnet::IpNet::new(alloc.address, alloc.prefix).map_err(internal)?;
        ips.push(IpConfig {
            interface: None,
            address,
            gateway: Some(alloc.gateway),
        });
    }
    if !requested.is_empty() {
        rollback(&store, &taken);
        let list: Vec<String> = requested.iter().map(IpAddr::to_string).collect();
        return Err(CniError::internal(format!(
            "failed to allocate all requested IPs: {}",
            list.join(", ")
        )));
    }
    let dns = match &c.resolv_conf {
        Some(p) => twill_ipam::parse_resolv_conf(
            &std::fs::read_to_string(p)
                .map_err(|e| CniError::internal(format!("ipam.resolvConf {p}: {e}")))?,
        ),
        None => Default::default(),
    };
    let routes = c
        .routes
        .iter()
        .map(|r| Route {
            dst: r.dst,
            gw: r.gw,
        })
        .collect();
    Ok(CniResult {
        interfaces: Vec::new(),
        ips,
        routes,
        dns,
    })
}

/// DEL: release the attachment's reservations (nothing held is fine).
pub fn del(a: &CmdArgs) -> Result<(), CniError> {
    let c = config(&a.conf)?;
    let store = open(&c)?;
    let all = store.reservations().map_err(internal)?;
    store
        .release(&plan_release(&all, &attachment(a)))
        .map_err(internal)
}

pub fn check(a: &CmdArgs) -> Result<(), CniError> {
    let c = config(&a.conf)?;
    let store = open(&c)?;
    let me = attachment(a);
    if store
        .reservations()
        .map_err(internal)?
        .iter()
        .any(|r| r.is_held_by(&me))
    {
        Ok(())
    } else {
        Err(CniError::internal(format!(
            "host-local: Failed to find address added by container {}",
            a.container_id
        )))
    }
}

/// The `cni.dev/valid-attachments` list of a GC request.
pub fn valid_attachments(conf: &Value) -> Vec<Attachment> {
    conf.get("cni.dev/valid-attachments")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| {
            Some(Attachment {
                container_id: v.get("containerID")?.as_str()?.to_string(),
                ifname: v.get("ifname")?.as_str()?.to_string(),
            })
        })
        .collect()
}

pub fn gc(a: &CmdArgs) -> Result<(), CniError> {
    let c = config(&a.conf)?;
    let store = open(&c)?;
    let all = store.reservations().map_err(internal)?;
    store
        .release(&plan_gc(&all, &valid_attachments(&a.conf)))
        .map_err(internal)
}

/// STATUS: code 50 (not available to service ADD) when some range set has no free
/// address left, so a runtime stops sending pods here (CNI 1.1).
pub fn status(a: &CmdArgs) -> Result<(), CniError> {
    let c = config(&a.conf)?;
    let store = open(&c)?;
    let reserved: BTreeSet<IpAddr> = store
        .reservations()
        .map_err(internal)?
        .iter()
        .map(|r| r.ip)
        .collect();
    for (idx, set) in c.range_sets.iter().enumerate() {
        let probe = plan_allocation(set, &reserved, &[], "", store.last_reserved(idx), None);
        if let Err(e @ twill_ipam::IpamError::Exhausted(_)) = probe {
            return Err(CniError::new(
                crate::spec::ErrorCode::PluginNotAvailable,
                "the plugin is not available to service ADD",
            )
            .with_details(e.to_string()));
        }
    }
    Ok(())
}

impl Plugin for HostLocal {
    fn add(&self, a: &CmdArgs) -> Result<Value, CniError> {
        add(a).map(|r| r.to_json(&a.version))
    }
    fn del(&self, a: &CmdArgs) -> Result<(), CniError> {
        del(a)
    }
    fn check(&self, a: &CmdArgs) -> Result<(), CniError> {
        check(a)
    }
    fn gc(&self, a: &CmdArgs) -> Result<(), CniError> {
        gc(a)
    }
    fn status(&self, a: &CmdArgs) -> Result<(), CniError> {
        status(a)
    }
}
