//! host-local configuration (reference `backend/allocator/config.go`): the `ipam`
//! object of a network config, `CNI_ARGS` (`IP=`), `args.cni.ips`, `runtimeConfig.ips`,
//! and the `resolvConf` file format.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::Deserialize;

use crate::IpamError;
use crate::range::{Range, RangeSet};

/// A route handed to the container; `gw` absent = via the address's gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: IpNet,
    pub gw: Option<IpAddr>,
}

/// The `dns` section of a result.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dns {
    pub nameservers: Vec<String>,
    pub domain: String,
    pub search: Vec<String>,
    pub options: Vec<String>,
}

impl Dns {
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.is_empty()
            && self.search.is_empty()
            && self.options.is_empty()
    }
}

/// A validated host-local configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpamConfig {
    /// The network name: the store directory under `data_dir`.
    pub name: String,
    pub range_sets: Vec<RangeSet>,
    pub routes: Vec<Route>,
    /// `None` = the reference default `/var/lib/cni/networks`.
    pub data_dir: Option<String>,
    pub resolv_conf: Option<String>,
    /// Addresses asked for in the config (`args.cni.ips`, `runtimeConfig.ips`).
    pub requested_ips: Vec<IpAddr>,
}

#[derive(Deserialize)]
struct RawRange {
    subnet: Option<String>,
    #[serde(rename = "rangeStart")]
    range_start: Option<String>,
    #[serde(rename = "rangeEnd")]
    range_end: Option<String>,
    gateway: Option<String>,
}

#[derive(Deserialize)]
struct RawRoute {
    dst: String,
    gw: Option<String>,
}

#[derive(Deserialize)]
struct RawIpam {
    subnet: Option<String>,
    #[serde(rename = "rangeStart")]
    range_start: Option<String>,
    #[serde(rename = "rangeEnd")]
    range_end: Option<String>,
    gateway: Option<String>,
    #[serde(default)]
    ranges: Vec<Vec<RawRange>>,
    #[serde(default)]
    routes: Vec<RawRoute>,
    #[serde(rename = "dataDir")]
    data_dir: Option<String>,
    #[serde(rename = "resolvConf")]
    resolv_conf: Option<String>,
}

fn parse_ip(field: &str, value: &str) -> Result<IpAddr, IpamError> {
    value.parse().map_err(|_| IpamError::BadIp {
        field: field.into(),
        value: value.into(),
    })
}

fn parse_cidr(field: &str, value: &str) -> Result<IpNet, IpamError> {
    value.parse().map_err(|_| IpamError::BadCidr {
        field: field.into(),
        value: value.into(),
    })
}

/// An address with or without a prefix (`10.0.0.5` or `10.0.0.5/24`).
fn parse_ip_maybe_cidr(field: &str, value: &str) -> Result<IpAddr, IpamError> {
    match value.split_once('/') {
        Some((ip, _)) => parse_ip(field, ip),
        None => parse_ip(field, value),
    }
}

fn canonical_range(field: &str, r: &RawRange) -> Result<Range, IpamError> {
    let subnet = match &r.subnet {
        Some(s) => parse_cidr(&format!("{field}.subnet"), s)?,
        None => {
            return Err(IpamError::BadCidr {
                field: format!("{field}.subnet"),
                value: String::new(),
            });
        }
    };
    let opt = |name: &str, v: &Option<String>| -> Result<Option<IpAddr>, IpamError> {
        v.as_deref()
            .map(|s| parse_ip(&format!("{field}.{name}"), s))
            .transpose()
    };
    Range::canonicalize(
        subnet,
        opt("rangeStart", &r.range_start)?,
        opt("rangeEnd", &r.range_end)?,
        opt("gateway", &r.gateway)?,
    )
}

/// Parse and validate host-local's view of a whole network config (stdin).
pub fn parse_ipam_config(net: &serde_json::Value) -> Result<IpamConfig, IpamError> {
    let ipam = match net.get("ipam") {
        Some(v) if !v.is_null() => v,
        _ => return Err(IpamError::MissingIpamKey),
    };
    let raw: RawIpam =
        serde_json::from_value(ipam.clone()).map_err(|e| IpamError::Decode(e.to_string()))?;
    let name = net
        .get("name")
        .and_then(|n| n.as_str())
        .unwrap_or_default()
        .to_string();

    let mut range_sets = Vec::new();
    if raw.subnet.is_some() {
        let old = RawRange {
            subnet: raw.subnet.clone(),
            range_start: raw.range_start.clone(),
            range_end: raw.range_end.clone(),
            gateway: raw.gateway.clone(),
        };
        range_sets.push(RangeSet::new(vec![canonical_range("ipam", &old)?])?);
    }
    for (i, set) in raw.ranges.iter().enumerate() {
        let ranges = set
            .iter()
            .enumerate()
            .map(|(j, r)| canonical_range(&format!("ranges[{i}][{j}]"), r))
            .collect::<Result<Vec<_>, _>>()?;
        range_sets.push(RangeSet::new(ranges)?);
    }
    if range_sets.is_empty() {
        return Err(IpamError::NoRanges);
    }
    for i in 0..range_sets.len() {
        for j in i + 1..range_sets.len() {
            if range_sets[i].overlaps(&range_sets[j]) {
                return Err(IpamError::RangeSetsOverlap(i, j));
            }
        }
    }
    let routes = raw
        .routes
        .iter()
        .enumerate()
        .map(|(i, r)| {
            Ok(Route {
                dst: parse_cidr(&format!("routes[{i}].dst"), &r.dst)?,
                gw: r
                    .gw
                    .as_deref()
                    .map(|g| parse_ip(&format!("routes[{i}].gw"), g))
                    .transpose()?,
            })
        })
        .collect::<Result<Vec<_>, IpamError>>()?;

    let mut requested_ips = Vec::new();
    let ip_lists = [
        net.pointer("/args/cni/ips").map(|v| ("args.cni.ips", v)),
        net.pointer("/runtimeConfig/ips")
            .map(|v| ("runtimeConfig.ips", v)),
    ];
    for (field, list) in ip_lists.into_iter().flatten() {
        for v in list.as_array().into_iter().flatten() {
            let s = v.as_str().unwrap_or_default();
            requested_ips.push(parse_ip_maybe_cidr(field, s)?);
        }
    }

    Ok(IpamConfig {
        name,
        range_sets,
        routes,
        data_dir: raw.data_dir.filter(|d| !d.is_empty()),
        resolv_conf: raw.resolv_conf.filter(|d| !d.is_empty()),
        requested_ips,
    })
}

/// host-local's `CNI_ARGS`: `K=V;K=V`. `IP` is a comma-separated list of requested
/// addresses; other keys are an error unless `IgnoreUnknown` is `1`/`true`. Keys the
/// reference's common args know (`K8S_POD_*`) also need `IgnoreUnknown`, as there.
pub fn parse_cni_args(args: &str) -> Result<Vec<IpAddr>, IpamError> {
    let mut ips = Vec::new();
    let mut unknown = Vec::new();
    let mut ignore_unknown = false;
    for pair in args.split(';').filter(|p| !p.is_empty()) {
        let Some((k, v)) = pair.split_once('=') else {
            return Err(IpamError::ArgsInvalidPair(pair.to_string()));
        };
        match k {
            "IgnoreUnknown" => {
                ignore_unknown = matches!(v.to_ascii_lowercase().as_str(), "1" | "true");
            }
            "IP" => {
                for ip in v.split(',').filter(|s| !s.is_empty()) {
                    ips.push(
                        ip.trim()
                            .parse()
                            .map_err(|_| IpamError::ArgsBadIp(ip.to_string()))?,
                    );
                }
            }
            _ => unknown.push(pair.to_string()),
        }
    }
    if !unknown.is_empty() && !ignore_unknown {
        return Err(IpamError::ArgsUnknown(unknown));
    }
    Ok(ips)
}

/// The parts of resolv.conf a CNI result carries.
pub fn parse_resolv_conf(text: &str) -> Dns {
    let mut dns = Dns::default();
    for line in text.lines() {
        let line = line.split(['#', ';']).next().unwrap_or_default();
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => dns.nameservers.extend(words.next().map(String::from)),
            Some("domain") => dns.domain = words.next().unwrap_or_default().to_string(),
            Some("search") => dns.search = words.map(String::from).collect(),
            Some("options") => dns.options.extend(words.map(String::from)),
            _ => {}
        }
    }
    dns
}
