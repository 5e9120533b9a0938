//! CNI specification types: versions, the error object and its well-known codes, and
//! results in every supported format (SPEC.md 1.1.0; `containernetworking/cni`
//! `pkg/types/{020,040,100}` for the older result shapes).

use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::{Map, Value, json};
use twill_ipam::Dns;

/// Versions this implementation speaks, oldest first (what VERSION reports).
pub const SUPPORTED_VERSIONS: &[&str] = &[
    "0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0",
];
/// The newest version: VERSION answers in it.
pub const CURRENT_VERSION: &str = "1.1.0";

/// `"1.0.0"` → `(1, 0, 0)`; `None` when not a semantic version.
pub fn parse_version(v: &str) -> Option<(u32, u32, u32)> {
    let mut parts = v.split('.').map(|p| p.parse::<u32>().ok());
    let t = (parts.next()??, parts.next()??, parts.next()??);
    if parts.next().is_some() {
        None
    } else {
        Some(t)
    }
}

/// `a >= b` for two versions (false when either is malformed).
pub fn version_at_least(a: &str, b: &str) -> bool {
    matches!((parse_version(a), parse_version(b)), (Some(x), Some(y)) if x >= y)
}

/// The well-known error codes of SPEC.md ("Error" section); 999 is what the reference
/// plugins use for plugin-specific failures (skel wraps plain errors as ErrInternal).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorCode {
    IncompatibleVersion,
    UnsupportedField,
    UnknownContainer,
    InvalidEnvironment,
    Io,
    Decoding,
    InvalidNetworkConfig,
    TryAgainLater,
    PluginNotAvailable,
    LimitedConnectivity,
    Internal,
    Other(u32),
}

impl ErrorCode {
    pub fn code(self) -> u32 {
        match self {
            ErrorCode::IncompatibleVersion => 1,
            ErrorCode::UnsupportedField => 2,
            ErrorCode::UnknownContainer => 3,
            ErrorCode::InvalidEnvironment => 4,
            ErrorCode::Io => 5,
            ErrorCode::Decoding => 6,
            ErrorCode::InvalidNetworkConfig => 7,
            ErrorCode::TryAgainLater => 11,
            ErrorCode::PluginNotAvailable => 50,
            ErrorCode::LimitedConnectivity => 51,
            ErrorCode::Internal => 999,
            ErrorCode::Other(c) => c,
        }
    }

    pub fn from_code(c: u32) -> ErrorCode {
        match c {
            1 => ErrorCode::IncompatibleVersion,
            2 => ErrorCode::UnsupportedField,
            3 => ErrorCode::UnknownContainer,
            4 => ErrorCode::InvalidEnvironment,
            5 => ErrorCode::Io,
            6 => ErrorCode::Decoding,
            7 => ErrorCode::InvalidNetworkConfig,
            11 => ErrorCode::TryAgainLater,
            50 => ErrorCode::PluginNotAvailable,
            51 => ErrorCode::LimitedConnectivity,
            999 => ErrorCode::Internal,
            c => ErrorCode::Other(c),
        }
    }
}

/// The error a plugin reports: printed as the spec's error JSON on stdout, exit 1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{msg}")]
pub struct CniError {
    pub code: ErrorCode,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: ErrorCode, msg: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    /// A plugin-specific failure (code 999, like the reference).
    pub fn internal(msg: impl Into<String>) -> Self {
        CniError::new(ErrorCode::Internal, msg)
    }

    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    /// Prefix the message (`failed to allocate for range 0: ...`), keeping the code.
    pub fn context(mut self, prefix: impl std::fmt::Display) -> Self {
        self.msg = format!("{prefix}: {}", self.msg);
        self
    }

    pub fn to_json(&self, cni_version: &str) -> Value {
        let mut m = Map::new();
        m.insert("cniVersion".into(), json!(cni_version));
        m.insert("code".into(), json!(self.code.code()));
        m.insert("msg".into(), json!(self.msg));
        if !self.details.is_empty() {
            m.insert("details".into(), json!(self.details));
        }
        Value::Object(m)
    }

    /// Read a delegated plugin's error JSON back.
    pub fn from_json(v: &Value) -> Option<CniError> {
        let code = v.get("code")?.as_u64()? as u32;
        Some(CniError {
            code: ErrorCode::from_code(code),
            msg: v
                .get("msg")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            details: v
                .get("details")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
        })
    }
}

/// Go-style lowercase text for an errno (`file exists`), as the reference prints them.
pub fn errno_text(errno: i32) -> String {
    let s = std::io::Error::from_raw_os_error(errno).to_string();
    let s = s.split(" (os error").next().unwrap_or(&s).to_string();
    s.to_lowercase()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub mac: String,
    /// The netns path, for interfaces inside the container.
    pub sandbox: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpConfig {
    /// Index into `interfaces`; absent in IPAM results.
    pub interface: Option<usize>,
    /// Address with the subnet's prefix length.
    pub address: IpNet,
    pub gateway: Option<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: IpNet,
    pub gw: Option<IpAddr>,
}

/// A result in version-independent form; rendered per `cniVersion` by [`CniResult::to_json`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniResult {
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
    pub dns: Dns,
}

fn dns_json(d: &Dns) -> Value {
    let mut m = Map::new();
    if !d.nameservers.is_empty() {
        m.insert("nameservers".into(), json!(d.nameservers));
    }
    if !d.domain.is_empty() {
        m.insert("domain".into(), json!(d.domain));
    }
    if !d.search.is_empty() {
        m.insert("search".into(), json!(d.search));
    }
    if !d.options.is_empty() {
        m.insert("options".into(), json!(d.options));
    }
    Value::Object(m)
}

fn route_json(r: &Route) -> Value {
    let mut m = Map::new();
    m.insert("dst".into(), json!(r.dst.to_string()));
    if let Some(gw) = r.gw {
        m.insert("gw".into(), json!(gw.to_string()));
    }
    Value::Object(m)
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn parse_dns(v: Option<&Value>) -> Dns {
    let Some(v) = v else { return Dns::default() };
    Dns {
        nameservers: strings(v.get("nameservers")),
        domain: v
            .get("domain")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        search: strings(v.get("search")),
        options: strings(v.get("options")),
    }
}

fn parse_routes(v: Option<&Value>) -> Result<Vec<Route>, String> {
    let mut out = Vec::new();
    for (i, r) in v
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let dst = r
            .get("dst")
            .and_then(Value::as_str)
            .ok_or(format!("routes[{i}].dst missing"))?;
        let dst = dst
            .parse()
            .map_err(|_| format!("routes[{i}].dst: invalid CIDR {dst:?}"))?;
        let gw = match r.get("gw").and_then(Value::as_str) {
            Some(g) => Some(
                g.parse()
                    .map_err(|_| format!("routes[{i}].gw: invalid IP {g:?}"))?,
            ),
            None => None,
        };
        out.push(Route { dst, gw });
    }
    Ok(out)
}

impl CniResult {
    /// Render in the given version's format: 1.x without `ips[].version`, 0.3.x/0.4.0
    /// with it, 0.1.0/0.2.0 as `ip4`/`ip6`.
    pub fn to_json(&self, cni_version: &str) -> Value {
        let legacy = !version_at_least(cni_version, "0.3.0");
        let with_ip_version = !version_at_least(cni_version, "1.0.0");
        let mut m = Map::new();
        m.insert("cniVersion".into(), json!(cni_version));
        if legacy {
            for (key, v4) in [("ip4", true), ("ip6", false)] {
                let Some(ip) = self.ips.iter().find(|i| i.address.addr().is_ipv4() == v4) else {
                    continue;
                };
                let mut o = Map::new();
                o.insert("ip".into(), json!(ip.address.to_string()));
                if let Some(gw) = ip.gateway {
                    o.insert("gateway".into(), json!(gw.to_string()));
                }
                let routes: Vec<Value> = self
                    .routes
                    .iter()
                    .filter(|r| r.dst.addr().is_ipv4() == v4)
                    .map(route_json)
                    .collect();
                if !routes.is_empty() {
                    o.insert("routes".into(), Value::Array(routes));
                }
                m.insert(key.into(), Value::Object(o));
            }
            m.insert("dns".into(), dns_json(&self.dns));
            return Value::Object(m);
        }
        if !self.interfaces.is_empty() {
            let ifs = self
                .interfaces
                .iter()
                .map(|i| {
                    let mut o = Map::new();
                    o.insert("name".into(), json!(i.name));
                    o.insert("mac".into(), json!(i.mac));
                    if let Some(s) = &i.sandbox {
                        o.insert("sandbox".into(), json!(s));
                    }
                    Value::Object(o)
                })
                .collect();
            m.insert("interfaces".into(), Value::Array(ifs));
        }
        if !self.ips.is_empty() {
            let ips = self
                .ips
                .iter()
                .map(|ip| {
                    let mut o = Map::new();
                    if with_ip_version {
                        o.insert(
                            "version".into(),
                            json!(if ip.address.addr().is_ipv4() {
                                "4"
                            } else {
                                "6"
                            }),
                        );
                    }
                    if let Some(i) = ip.interface {
                        o.insert("interface".into(), json!(i));
                    }
                    o.insert("address".into(), json!(ip.address.to_string()));
                    if let Some(gw) = ip.gateway {
                        o.insert("gateway".into(), json!(gw.to_string()));
                    }
                    Value::Object(o)
                })
                .collect();
            m.insert("ips".into(), Value::Array(ips));
        }
        if !self.routes.is_empty() {
            m.insert(
                "routes".into(),
                Value::Array(self.routes.iter().map(route_json).collect()),
            );
        }
        m.insert("dns".into(), dns_json(&self.dns));
        Value::Object(m)
    }

    /// Parse a result of any supported version (a `prevResult`, or an IPAM plugin's output).
    pub fn from_json(v: &Value) -> Result<CniResult, String> {
        let mut r = CniResult {
            dns: parse_dns(v.get("dns")),
            ..CniResult::default()
        };
        if v.get("ip4").is_some() || v.get("ip6").is_some() {
            for key in ["ip4", "ip6"] {
                let Some(o) = v.get(key) else { continue };
                let ip = o
                    .get("ip")
                    .and_then(Value::as_str)
                    .ok_or(format!("{key}.ip missing"))?;
                let address = ip
                    .parse()
                    .map_err(|_| format!("{key}.ip: invalid CIDR {ip:?}"))?;
                let gateway = o
                    .get("gateway")
                    .and_then(Value::as_str)
                    .and_then(|g| g.parse().ok());
                r.ips.push(IpConfig {
                    interface: None,
                    address,
                    gateway,
                });
                r.routes.extend(parse_routes(o.get("routes"))?);
            }
            return Ok(r);
        }
        for (i, itf) in v
            .get("interfaces")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            r.interfaces.push(Interface {
                name: itf
                    .get("name")
                    .and_then(Value::as_str)
                    .ok_or(format!("interfaces[{i}].name missing"))?
                    .into(),
                mac: itf
                    .get("mac")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .into(),
                sandbox: itf
                    .get("sandbox")
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
                    .map(String::from),
            });
        }
        for (i, ip) in v
            .get("ips")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let a = ip
                .get("address")
                .and_then(Value::as_str)
                .ok_or(format!("ips[{i}].address missing"))?;
            r.ips.push(IpConfig {
                interface: ip
                    .get("interface")
                    .and_then(Value::as_u64)
                    .map(|n| n as usize),
                address: a
                    .parse()
                    .map_err(|_| format!("ips[{i}].address: invalid CIDR {a:?}"))?,
                gateway: ip
                    .get("gateway")
                    .and_then(Value::as_str)
                    .and_then(|g| g.parse().ok()),
            });
        }
        r.routes = parse_routes(v.get("routes"))?;
        Ok(r)
    }
}

#[cfg(test)]
mod tests;
