//! `twill trace`: walk one packet through a node's netfilter rules and routes the way
//! the kernel does, and explain every step.
//!
//! The kernel path reproduced (net/ipv4/ip_input.c, ip_forward.c, ip_output.c and the
//! netfilter hook order in include/uapi/linux/netfilter_ipv4.h):
//!
//! * a packet arriving on an interface: `PREROUTING` (raw, mangle, nat) → routing
//!   decision → `INPUT` (mangle, filter, nat) and local delivery, or `FORWARD` (mangle,
//!   filter) → `POSTROUTING` (mangle, nat) and out the route's device;
//! * a packet from a local address: routing → `OUTPUT` (raw, mangle, nat, filter) →
//!   re-routing when nat changed the destination → `POSTROUTING` → out, or back in
//!   through `INPUT` when the destination is local.
//!
//! Only the first packet of a connection is traced (conntrack state NEW), which is the
//! packet the nat table sees. Matches that depend on history (`-m recent --rcheck`,
//! `-m statistic --mode nth`) or on data the snapshot lacks (`-m set` without set
//! contents) fork the walk: every branch is followed and carries the condition it
//! assumed. `-m statistic --mode random` forks with the rule's probability, so each
//! branch's probability is the chance a new connection takes it — kube-proxy's
//! endpoint split.
//!
//! A packet that leaves the node is followed to its link-layer next hop: the neighbour
//! entry, the bridge port its MAC was learned on (cni0), or the remote VTEP a vxlan
//! device (flannel.1) encapsulates it to.
//!
//! nftables base chains (`nft -j list ruleset`, minus iptables-nft's own tables) run at
//! their hooks in priority order between the iptables tables, with the expressions
//! service proxies write (verdict maps, `numgen`, marks, nat statements).
//!
//! A probe whose 5-tuple is an existing conntrack entry's original direction belongs to
//! that connection: the nat rules are skipped and the entry's translations apply (how
//! a stale UDP entry keeps a client on a gone endpoint).
//!
//! Not modelled: policy routing (`ip rule`),
//! reverse-path filtering, bridged frames under
//! br_netfilter (`-m physdev` never matches; a note says when a packet would be
//! switched by a bridge), `-m addrtype --limit-iface-*`. Unknown match options are
//! assumed to match and the branch carries a warning. The collector ([`collect`]) is
//! this crate's only I/O.

pub mod collect;
pub mod conntrack;
pub mod iptables;
pub mod kubernetes;
pub mod nft;
pub mod path;
pub mod report;
pub mod route;
pub mod walk;

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::Serialize;

pub use iptables::Ruleset;
pub use path::{Hop, Path, RoundTrip, trace_across, trace_round_trip};
pub use route::{FdbEntry, Interface, LinkHop, Neighbour, Route, RoutingState};
pub use walk::{Branch, Fate, Probe, Trace, trace};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("{source_name} line {line}: {msg}")]
    Parse {
        source_name: String,
        line: usize,
        msg: String,
    },
    #[error("{source_name}: {source}")]
    Json {
        source_name: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{source_name}: field {field}: bad value `{value}`")]
    Field {
        source_name: String,
        field: String,
        value: String,
    },
    #[error(
        "the walk forked into more than {limit} branches (statistic/recent/set matches); narrow the packet"
    )]
    TooManyBranches { limit: usize },
    #[error("jump depth over {limit} at {table} {chain}: a chain loop?")]
    TooDeep {
        table: String,
        chain: String,
        limit: usize,
    },
    #[error("collecting {what}: {msg}")]
    Collect { what: String, msg: String },
}

/// The file names a snapshot is made of (what [`collect`] gathers and `--snapshot DIR`
/// reads). Each is optional; a missing one means that part of the node is empty.
pub const SNAPSHOT_FILES: &[&str] = &[
    "iptables-save.txt",
    "ip6tables-save.txt",
    "routes.json",
    "addrs.json",
    "ipset-save.txt",
    "neigh.json",
    "fdb.json",
    "ip_forward",
    "ipv6_forwarding",
    "nft.json",
    "nft.txt",
    "conntrack.txt",
];

/// One node's state, parsed.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Snapshot {
    pub ipv4: Ruleset,
    pub ipv6: Ruleset,
    pub routing: RoutingState,
    /// `net.ipv4.ip_forward`; `None` when unknown (treated as enabled, with a note).
    pub ip_forward: Option<bool>,
    pub ipv6_forwarding: Option<bool>,
    /// ipset contents by set name (members as `ipset save` prints them); a set missing
    /// here makes `-m set` fork.
    pub ipsets: BTreeMap<String, Vec<String>>,
    /// nftables tables other than iptables-nft's (kube-proxy's nftables mode, …).
    pub nft: nft::NftRuleset,
    /// Connections conntrack knows: a probe matching one's original tuple is part of
    /// it (no nat rules, the connection's translations).
    pub conntrack: Vec<conntrack::CtEntry>,
}

impl Snapshot {
    /// Parse the raw files of a snapshot (keys from [`SNAPSHOT_FILES`]).
    pub fn from_files(files: &BTreeMap<String, String>) -> Result<Self, Error> {
        let get = |k: &str| {
            files
                .get(k)
                .map(String::as_str)
                .filter(|s| !s.trim().is_empty())
        };
        let mut s = Snapshot::default();
        if let Some(t) = get("iptables-save.txt") {
            s.ipv4 = Ruleset::parse("iptables-save.txt", t)?;
        }
        if let Some(t) = get("ip6tables-save.txt") {
            s.ipv6 = Ruleset::parse("ip6tables-save.txt", t)?;
        }
        if let Some(t) = get("routes.json") {
            s.routing.routes = route::parse_routes("routes.json", t)?;
        }
        if let Some(t) = get("addrs.json") {
            s.routing.interfaces = route::parse_addrs("addrs.json", t)?;
        }
        if let Some(t) = get("neigh.json") {
            s.routing.neighbours = route::parse_neigh("neigh.json", t)?;
        }
        if let Some(t) = get("fdb.json") {
            s.routing.fdb = route::parse_fdb("fdb.json", t)?;
        }
        if let Some(t) = get("ipset-save.txt") {
            s.ipsets = parse_ipset_save(t);
        }
        if let Some(j) = get("nft.json") {
            s.nft = nft::NftRuleset::parse("nft.json", j, get("nft.txt"))?;
        }
        if let Some(t) = get("conntrack.txt") {
            s.conntrack = conntrack::parse(t);
        }
        s.ip_forward = get("ip_forward").map(|v| v.trim() != "0");
        s.ipv6_forwarding = get("ipv6_forwarding").map(|v| v.trim() != "0");
        Ok(s)
    }

    /// The ruleset of `ip`'s family.
    pub fn rules_for(&self, ip: IpAddr) -> &Ruleset {
        if ip.is_ipv4() { &self.ipv4 } else { &self.ipv6 }
    }
}

/// `ipset save` output: `create NAME TYPE ...` and `add NAME MEMBER ...` lines.
pub fn parse_ipset_save(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut sets: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines() {
        let mut f = line.split_whitespace();
        match (f.next(), f.next(), f.next()) {
            (Some("create"), Some(name), _) => {
                sets.entry(name.to_string()).or_default();
            }
            (Some("add"), Some(name), Some(member)) => {
                sets.entry(name.to_string())
                    .or_default()
                    .push(member.to_string());
            }
            _ => {}
        }
    }
    sets
}
