//! Following a packet across nodes: when a branch leaves one node, the node (or pod
//! namespace) that owns its next hop — the VTEP a vxlan device encapsulates to, a
//! host-gw gateway, a pod's address — picks it up on the interface it arrives on, and
//! the walk continues there until it is delivered, dropped, or leaves the snapshots.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::walk::{Branch, Fate, Probe, Translation, sockaddr, trace};
use crate::{Error, Snapshot};

/// How many namespaces one path may cross before the walk stops (a routing loop).
pub const MAX_HOPS: usize = 8;

/// One node's part of a path.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Hop {
    pub node: String,
    pub origin: String,
    pub branch: Branch,
}

/// One way across the nodes, with the chance a new connection takes it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Path {
    pub probability: f64,
    pub conditions: Vec<String>,
    pub hops: Vec<Hop>,
    /// Set when the walk stopped for a reason other than the last hop's fate (the next
    /// hop is in no snapshot, or the hop limit).
    pub stopped: Option<String>,
}

/// Trace `probe` from node `start` across `nodes` (name → snapshot).
pub fn trace_across(
    nodes: &[(String, Snapshot)],
    start: &str,
    probe: &Probe,
) -> Result<Vec<Path>, Error> {
    let mut out = Vec::new();
    let seed = Path {
        probability: 1.0,
        conditions: vec![],
        hops: vec![],
        stopped: None,
    };
    let ctx = Ctx {
        established: false,
        conntrack: BTreeMap::new(),
    };
    walk(nodes, start, probe, seed, &mut out, &ctx)?;
    Ok(out)
}

/// A request path and the paths its reply takes back.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RoundTrip {
    pub forward: Path,
    pub replies: Vec<Path>,
    /// Whether every reply reaches the client as the connection it opened (`None`: the
    /// request was not delivered inside the snapshots, so no reply was traced).
    pub ok: Option<bool>,
    pub verdict: String,
}

/// Trace the request across `nodes`, then each delivered request's reply back: a
/// packet of the established connection from the endpoint, un-NATed by conntrack on
/// every node that translated the request. A reply that comes back with another
/// source than the client connected to (it bypassed the node that DNATed it, say) is
/// the asymmetric-routing failure behind many "connection times out" reports.
pub fn trace_round_trip(
    nodes: &[(String, Snapshot)],
    start: &str,
    probe: &Probe,
) -> Result<Vec<RoundTrip>, Error> {
    let want = (
        sockaddr(probe.dst, probe.dport),
        sockaddr(probe.src, probe.sport),
    );
    let mut out = Vec::new();
    for forward in trace_across(nodes, start, probe)? {
        let last = forward.hops.last();
        let delivered = last.filter(|h| matches!(h.branch.fate, Some(Fate::Delivered { .. })));
        let Some(last) = delivered else {
            let why = forward
                .stopped
                .clone()
                .unwrap_or_else(|| "the request is not delivered".into());
            out.push(RoundTrip {
                forward,
                replies: vec![],
                ok: None,
                verdict: format!("reply not traced: {why}"),
            });
            continue;
        };
        let mut conntrack: BTreeMap<String, Vec<Translation>> = BTreeMap::new();
        for h in &forward.hops {
            conntrack
                .entry(h.node.clone())
                .or_default()
                .extend(h.branch.translations().cloned());
        }
        let pk = &last.branch.packet;
        let reply = Probe {
            src: pk.dst,
            dst: pk.src,
            proto: pk.proto.clone(),
            sport: pk.dport,
            dport: pk.sport,
            iif: None,
            established: true,
            conntrack: conntrack.get(&last.node).cloned().unwrap_or_default(),
        };
        let ctx = Ctx {
            established: true,
            conntrack,
        };
        let mut replies = Vec::new();
        let seed = Path {
            probability: 1.0,
            conditions: vec![],
            hops: vec![],
            stopped: None,
        };
        walk(nodes, &last.node.clone(), &reply, seed, &mut replies, &ctx)?;
        let mut problems = Vec::new();
        for r in &replies {
            let Some(h) = r.hops.last() else { continue };
            let got = (
                sockaddr(h.branch.packet.src, h.branch.packet.sport),
                sockaddr(h.branch.packet.dst, h.branch.packet.dport),
            );
            match &h.branch.fate {
                Some(Fate::Delivered { .. } | Fate::Sent { .. }) if got == want => {}
                Some(Fate::Delivered { .. } | Fate::Sent { .. }) => problems.push(format!(
                    "the reply reaches {} from {}, but the client connected to {}: it will not match the connection",
                    got.1, got.0, want.0
                )),
                Some(Fate::Dropped { reason, .. }) => {
                    problems.push(format!("the reply is dropped on {}: {reason}", h.node))
                }
                Some(Fate::Rejected { at, .. }) => {
                    problems.push(format!("the reply is rejected on {} by {at}", h.node))
                }
                None => {}
            }
        }
        let ok = problems.is_empty();
        let verdict = if ok {
            format!("the reply reaches {} from {}", want.1, want.0)
        } else {
            problems.join("; ")
        };
        out.push(RoundTrip {
            forward,
            replies,
            ok: Some(ok),
            verdict,
        });
    }
    Ok(out)
}

struct Ctx {
    established: bool,
    /// Per node, the translations the request got there.
    conntrack: BTreeMap<String, Vec<Translation>>,
}

fn walk(
    nodes: &[(String, Snapshot)],
    node: &str,
    probe: &Probe,
    path: Path,
    out: &mut Vec<Path>,
    ctx: &Ctx,
) -> Result<(), Error> {
    let Some((_, snap)) = nodes.iter().find(|(n, _)| n == node) else {
        let mut p = path;
        p.stopped = Some(format!("no snapshot of {node}"));
        out.push(p);
        return Ok(());
    };
    let t = trace(snap, probe)?;
    for b in t.branches {
        let mut p = path.clone();
        p.probability *= b.probability;
        p.conditions.extend(b.conditions.iter().cloned());
        let next = next_node(nodes, node, &b);
        let pk = b.packet.clone();
        p.hops.push(Hop {
            node: node.to_string(),
            origin: t.origin.clone(),
            branch: b,
        });
        match next {
            Next::Final => out.push(p),
            Next::Unknown(why) => {
                p.stopped = Some(why);
                out.push(p);
            }
            Next::Node { name, iif } => {
                if p.hops.len() >= MAX_HOPS {
                    p.stopped = Some(format!("more than {MAX_HOPS} hops: a routing loop?"));
                    out.push(p);
                    continue;
                }
                let probe = Probe {
                    src: pk.src,
                    dst: pk.dst,
                    proto: pk.proto.clone(),
                    sport: pk.sport,
                    dport: pk.dport,
                    iif: Some(iif),
                    established: ctx.established,
                    conntrack: ctx.conntrack.get(&name).cloned().unwrap_or_default(),
                };
                walk(nodes, &name, &probe, p, out, ctx)?;
            }
        }
    }
    Ok(())
}

enum Next {
    Final,
    Unknown(String),
    Node { name: String, iif: String },
}

fn next_node(nodes: &[(String, Snapshot)], here: &str, b: &Branch) -> Next {
    let Some(Fate::Sent { dev, next_hop, .. }) = &b.fate else {
        return Next::Final;
    };
    let owner = |ip: std::net::IpAddr| {
        nodes
            .iter()
            .find(|(n, s)| n != here && s.routing.is_local(ip))
    };
    // A vxlan device: the frame goes to the VTEP and comes out of that node's vxlan
    // device (same name, else its only vxlan device).
    if let Some(vtep) = b.link.as_ref().and_then(|l| l.vtep) {
        let Some((name, snap)) = owner(vtep) else {
            return Next::Unknown(format!("VTEP {vtep} is in no snapshot"));
        };
        let vx = snap
            .routing
            .interfaces
            .iter()
            .filter(|i| i.kind.as_deref() == Some("vxlan"));
        let iif = vx
            .clone()
            .find(|i| Some(&i.name) == dev.as_ref())
            .or_else(|| vx.clone().next())
            .map(|i| i.name.clone());
        return match iif {
            Some(iif) => Next::Node {
                name: name.clone(),
                iif,
            },
            None => Next::Unknown(format!("{name} owns VTEP {vtep} but has no vxlan device")),
        };
    }
    let Some((name, snap)) = owner(*next_hop) else {
        return Next::Unknown(format!("next hop {next_hop} is in no snapshot"));
    };
    match snap
        .routing
        .interfaces
        .iter()
        .find(|i| i.addrs.iter().any(|a| a.addr() == *next_hop))
    {
        Some(i) => Next::Node {
            name: name.clone(),
            iif: i.name.clone(),
        },
        None => Next::Unknown(format!("{name} owns {next_hop} but no interface holds it")),
    }
}

#[cfg(test)]
mod tests;
