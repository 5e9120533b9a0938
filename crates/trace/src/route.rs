//! Routes and interface addresses, read from `ip -j route show table all` and
//! `ip -j -d addr show`, and the kernel's lookup over them.
//!
//! The lookup follows the default policy rules (`0: lookup local`, `32766: lookup
//! main`, `32767: lookup default`): the first table with a matching prefix wins, and
//! inside a table the longest prefix wins, then the lowest metric. Custom `ip rule`
//! policy routing is not modelled; the trace says which table answered so a reader can
//! tell.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::Serialize;
use serde_json::Value;

use crate::Error;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Route {
    /// `local`, `main`, `default` or a number.
    pub table: String,
    /// `unicast`, `local`, `broadcast`, `blackhole`, `unreachable`, `prohibit`, `throw`…
    #[serde(rename = "type")]
    pub kind: String,
    pub dst: IpNet,
    pub gateway: Option<IpAddr>,
    pub dev: Option<String>,
    pub prefsrc: Option<IpAddr>,
    pub metric: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Interface {
    pub name: String,
    /// `bridge`, `vxlan`, `veth`, `tun`… (`None` for plain devices and loopback).
    pub kind: Option<String>,
    /// The bridge this device is a port of.
    pub master: Option<String>,
    pub addrs: Vec<IpNet>,
}

/// An entry of `ip -j neigh show`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Neighbour {
    pub ip: IpAddr,
    pub dev: String,
    pub lladdr: Option<String>,
    pub state: Vec<String>,
}

/// An entry of `bridge -j fdb show`: a MAC on a bridge port, or behind a vxlan device
/// at a remote VTEP (`dst`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FdbEntry {
    pub mac: String,
    pub dev: String,
    pub master: Option<String>,
    pub dst: Option<IpAddr>,
}

/// The link-layer side of a next hop: its neighbour entry and where the frame goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LinkHop {
    pub next_hop: IpAddr,
    pub dev: String,
    /// `None`: no neighbour entry (the kernel would resolve it with ARP/ND first).
    pub lladdr: Option<String>,
    pub state: Vec<String>,
    /// The bridge port the MAC was learned on (a bridge device).
    pub bridge_port: Option<String>,
    /// The remote VTEP the frame is encapsulated to (a vxlan device).
    pub vtep: Option<IpAddr>,
}

impl std::fmt::Display for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.kind != "unicast" {
            write!(f, "{} ", self.kind)?;
        }
        if self.dst.prefix_len() == 0 {
            write!(f, "default")?;
        } else {
            write!(f, "{}", self.dst)?;
        }
        if let Some(g) = self.gateway {
            write!(f, " via {g}")?;
        }
        if let Some(d) = &self.dev {
            write!(f, " dev {d}")?;
        }
        if let Some(s) = self.prefsrc {
            write!(f, " src {s}")?;
        }
        if self.metric != 0 {
            write!(f, " metric {}", self.metric)?;
        }
        write!(f, " (table {})", self.table)
    }
}

fn table_name(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => match n.as_u64() {
            Some(255) => "local".into(),
            Some(254) => "main".into(),
            Some(253) => "default".into(),
            _ => n.to_string(),
        },
        _ => "main".into(),
    }
}

/// Routes from `ip -j route show table all` (either family; concatenated arrays are
/// accepted too, as `ip -4` and `ip -6` output one after the other).
pub fn parse_routes(source: &str, json: &str) -> Result<Vec<Route>, Error> {
    let mut out = Vec::new();
    for v in json_arrays(source, json)? {
        for r in v {
            let fam_v6 = r["dst"].as_str().is_some_and(|d| d.contains(':'))
                || r["gateway"].as_str().is_some_and(|g| g.contains(':'))
                || r["prefsrc"].as_str().is_some_and(|g| g.contains(':'));
            let dst = match r["dst"].as_str() {
                None | Some("default") => {
                    if fam_v6 {
                        "::/0".parse().expect("valid")
                    } else {
                        "0.0.0.0/0".parse().expect("valid")
                    }
                }
                Some(d) => {
                    let parsed = if d.contains('/') {
                        d.parse::<IpNet>().ok()
                    } else {
                        d.parse::<IpAddr>().ok().map(IpNet::from)
                    };
                    parsed.ok_or_else(|| Error::Field {
                        source_name: source.into(),
                        field: "dst".into(),
                        value: d.into(),
                    })?
                }
            };
            // Multipath: the first next hop stands for all (the trace says which).
            let hop = r["nexthops"]
                .as_array()
                .and_then(|h| h.first())
                .unwrap_or(&r);
            out.push(Route {
                table: table_name(&r["table"]),
                kind: r["type"].as_str().unwrap_or("unicast").to_string(),
                dst,
                gateway: hop["gateway"].as_str().and_then(|g| g.parse().ok()),
                dev: hop["dev"].as_str().map(str::to_string),
                prefsrc: r["prefsrc"].as_str().and_then(|g| g.parse().ok()),
                metric: r["metric"].as_u64().unwrap_or(0) as u32,
            });
        }
    }
    Ok(out)
}

/// Interfaces from `ip -j -d addr show` (or `ip -j addr`).
pub fn parse_addrs(source: &str, json: &str) -> Result<Vec<Interface>, Error> {
    let mut out = Vec::new();
    for v in json_arrays(source, json)? {
        for l in v {
            let addrs = l["addr_info"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|x| {
                            let ip: IpAddr = x["local"].as_str()?.parse().ok()?;
                            IpNet::new(ip, x["prefixlen"].as_u64()? as u8).ok()
                        })
                        .collect()
                })
                .unwrap_or_default();
            out.push(Interface {
                name: l["ifname"].as_str().unwrap_or_default().to_string(),
                kind: l
                    .pointer("/linkinfo/info_kind")
                    .and_then(Value::as_str)
                    .map(str::to_string),
                master: l["master"].as_str().map(str::to_string),
                addrs,
            });
        }
    }
    Ok(out)
}

/// Neighbours from `ip -j neigh show`.
pub fn parse_neigh(source: &str, json: &str) -> Result<Vec<Neighbour>, Error> {
    let mut out = Vec::new();
    for v in json_arrays(source, json)? {
        for n in v {
            let Some(ip) = n["dst"].as_str().and_then(|d| d.parse().ok()) else {
                continue;
            };
            out.push(Neighbour {
                ip,
                dev: n["dev"].as_str().unwrap_or_default().to_string(),
                lladdr: n["lladdr"].as_str().map(str::to_string),
                state: n["state"]
                    .as_array()
                    .map(|s| {
                        s.iter()
                            .filter_map(Value::as_str)
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default(),
            });
        }
    }
    Ok(out)
}

/// Forwarding database entries from `bridge -j fdb show`.
pub fn parse_fdb(source: &str, json: &str) -> Result<Vec<FdbEntry>, Error> {
    let mut out = Vec::new();
    for v in json_arrays(source, json)? {
        for e in v {
            let Some(mac) = e["mac"].as_str() else {
                continue;
            };
            out.push(FdbEntry {
                mac: mac.to_lowercase(),
                dev: e["ifname"]
                    .as_str()
                    .or(e["dev"].as_str())
                    .unwrap_or_default()
                    .to_string(),
                master: e["master"].as_str().map(str::to_string),
                dst: e["dst"].as_str().and_then(|d| d.parse().ok()),
            });
        }
    }
    Ok(out)
}

/// One or more JSON arrays, back to back.
fn json_arrays(source: &str, json: &str) -> Result<Vec<Vec<Value>>, Error> {
    let mut out = Vec::new();
    for v in serde_json::Deserializer::from_str(json).into_iter::<Value>() {
        let v = v.map_err(|e| Error::Json {
            source_name: source.into(),
            source: e,
        })?;
        match v {
            Value::Array(a) => out.push(a),
            _ => {
                return Err(Error::Field {
                    source_name: source.into(),
                    field: "(top level)".into(),
                    value: "not an array".into(),
                });
            }
        }
    }
    Ok(out)
}

/// Routes and addresses of one node, with the lookups the tracer needs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RoutingState {
    pub routes: Vec<Route>,
    pub interfaces: Vec<Interface>,
    pub neighbours: Vec<Neighbour>,
    pub fdb: Vec<FdbEntry>,
}

const TABLE_ORDER: [&str; 3] = ["local", "main", "default"];

impl RoutingState {
    /// The route the kernel picks for `dst` (default policy rules).
    pub fn lookup(&self, dst: IpAddr) -> Option<&Route> {
        for table in TABLE_ORDER {
            let best = self
                .routes
                .iter()
                .filter(|r| r.table == table && r.dst.contains(&dst))
                .filter(|r| r.kind != "throw")
                .min_by_key(|r| (std::cmp::Reverse(r.dst.prefix_len()), r.metric));
            if best.is_some() {
                return best;
            }
        }
        None
    }

    /// The kernel's address type (`-m addrtype`): LOCAL when the local table says so
    /// (or an interface holds the address), BROADCAST/MULTICAST/UNICAST otherwise.
    pub fn addr_type(&self, ip: IpAddr) -> &'static str {
        if ip.is_multicast() {
            return "MULTICAST";
        }
        if let IpAddr::V4(v4) = ip
            && v4.is_broadcast()
        {
            return "BROADCAST";
        }
        let from_table = self
            .routes
            .iter()
            .filter(|r| r.table == "local" && r.dst.contains(&ip))
            .max_by_key(|r| r.dst.prefix_len());
        match from_table.map(|r| r.kind.as_str()) {
            Some("local") => return "LOCAL",
            Some("broadcast") => return "BROADCAST",
            _ => {}
        }
        if self
            .interfaces
            .iter()
            .any(|i| i.addrs.iter().any(|a| a.addr() == ip))
        {
            return "LOCAL";
        }
        if ip.is_unspecified() {
            return "UNSPEC";
        }
        "UNICAST"
    }

    pub fn is_local(&self, ip: IpAddr) -> bool {
        self.addr_type(ip) == "LOCAL"
    }

    /// Where a packet sent to `next_hop` out of `dev` goes at the link layer.
    pub fn link_hop(&self, dev: &str, next_hop: IpAddr) -> LinkHop {
        let n = self
            .neighbours
            .iter()
            .find(|n| n.ip == next_hop && n.dev == dev);
        let lladdr = n.and_then(|n| n.lladdr.clone()).map(|m| m.to_lowercase());
        let entries: Vec<&FdbEntry> = lladdr
            .as_deref()
            .map(|mac| self.fdb.iter().filter(|e| e.mac == mac).collect())
            .unwrap_or_default();
        LinkHop {
            next_hop,
            dev: dev.to_string(),
            state: n.map(|n| n.state.clone()).unwrap_or_default(),
            bridge_port: entries
                .iter()
                .find(|e| e.master.as_deref() == Some(dev) && e.dev != dev)
                .map(|e| e.dev.clone()),
            vtep: entries.iter().find(|e| e.dev == dev).and_then(|e| e.dst),
            lladdr,
        }
    }

    pub fn interface(&self, name: &str) -> Option<&Interface> {
        self.interfaces.iter().find(|i| i.name == name)
    }

    /// The source address the kernel would pick leaving through `route` (what
    /// MASQUERADE uses): the route's `src`, else the first address on the device of the
    /// same family in the gateway's subnet, else any of that family.
    pub fn source_for(&self, route: &Route, dst: IpAddr) -> Option<IpAddr> {
        if let Some(s) = route.prefsrc {
            return Some(s);
        }
        let dev = self.interface(route.dev.as_deref()?)?;
        let near = route.gateway.unwrap_or(dst);
        let same_family = |a: &&IpNet| a.addr().is_ipv4() == dst.is_ipv4();
        dev.addrs
            .iter()
            .filter(same_family)
            .find(|a| a.contains(&near))
            .or_else(|| dev.addrs.iter().find(same_family))
            .map(IpNet::addr)
    }
}

#[cfg(test)]
mod tests;
