//! The network config flannel keeps at `<prefix>/config` (`net-conf.json` in kube-flannel),
//! with the defaults and checks of flannel's `pkg/subnet/config.go` (`ParseConfig`,
//! `CheckNetworkConfig`).
//!
//! Two surprises are kept on purpose, because operators compare against flannel: a config
//! with no `Backend` key means `udp` (the documentation says vxlan), and the first subnet of
//! the network is never handed out (SubnetMin defaults to network + one subnet).

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};
use serde::Deserialize;

use crate::Error;

/// Default VXLAN network identifier.
pub const DEFAULT_VNI: u32 = 1;
/// Linux's VXLAN port, which flannel gets by passing 0.
pub const DEFAULT_VXLAN_PORT: u16 = 8472;
/// flannel's udp backend port.
pub const DEFAULT_UDP_PORT: u16 = 8285;

/// The config as written (flannel's JSON field names).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RawConfig {
    #[serde(default)]
    pub network: Option<String>,
    #[serde(default)]
    pub subnet_len: Option<u8>,
    #[serde(default)]
    pub subnet_min: Option<String>,
    #[serde(default)]
    pub subnet_max: Option<String>,
    #[serde(default, rename = "EnableIPv4")]
    pub enable_ipv4: Option<bool>,
    #[serde(default, rename = "EnableIPv6")]
    pub enable_ipv6: Option<bool>,
    #[serde(default, rename = "IPv6Network")]
    pub ipv6_network: Option<String>,
    #[serde(default, rename = "IPv6SubnetLen")]
    pub ipv6_subnet_len: Option<u8>,
    #[serde(default)]
    pub backend: Option<RawBackend>,
}

/// The `Backend` object. Unknown keys (e.g. wireguard's) are accepted and ignored.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RawBackend {
    #[serde(default, rename = "Type")]
    pub kind: Option<String>,
    #[serde(default, rename = "VNI")]
    pub vni: Option<u32>,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default, rename = "MTU")]
    pub mtu: Option<u32>,
    #[serde(default)]
    pub direct_routing: Option<bool>,
}

/// The backends Twill implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum BackendKind {
    Vxlan,
    HostGw,
    Udp,
}

impl BackendKind {
    /// flannel's name (`BackendType` in leases; udp leases leave it empty).
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Vxlan => "vxlan",
            BackendKind::HostGw => "host-gw",
            BackendKind::Udp => "udp",
        }
    }

    /// Bytes of encapsulation each packet carries, taken off the underlay MTU.
    pub fn overhead(self) -> u32 {
        match self {
            BackendKind::Vxlan => 50,
            BackendKind::Udp => 28,
            BackendKind::HostGw => 0,
        }
    }
}

/// The validated, defaulted config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkConfig {
    pub network: Ipv4Net,
    pub subnet_len: u8,
    pub subnet_min: Ipv4Addr,
    pub subnet_max: Ipv4Addr,
    pub ipv6: Option<Ipv6Config>,
    /// The backend type as written (`udp` when `Backend` is absent, `""` when `Type` is).
    pub backend_type: String,
    pub backend: BackendParams,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ipv6Config {
    pub network: Ipv6Net,
    pub subnet_len: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BackendParams {
    /// 0 = unset.
    pub vni: u32,
    /// 0 = the backend's default.
    pub port: u16,
    /// 0 = take the underlay MTU.
    pub mtu: u32,
    pub direct_routing: bool,
}

impl NetworkConfig {
    /// Parse and validate `<prefix>/config` text. `source` names the file or key in errors.
    pub fn parse(source: &str, text: &str) -> Result<Self, Error> {
        let raw: RawConfig = serde_json::from_str(text).map_err(|e| Error::ConfigJson {
            source_name: source.to_string(),
            source: e,
        })?;
        Self::from_raw(source, &raw)
    }

    /// Validate an already-decoded config.
    pub fn from_raw(source: &str, raw: &RawConfig) -> Result<Self, Error> {
        let bad = |field: &str, message: String| Error::Config {
            source_name: source.to_string(),
            field: field.to_string(),
            message,
        };
        let net_text = raw
            .network
            .as_deref()
            .ok_or_else(|| bad("Network", "please define a Network in the config".into()))?;
        let network: Ipv4Net = net_text
            .parse()
            .map_err(|e| bad("Network", format!("invalid IPv4 network {net_text:?}: {e}")))?;
        let network = network.trunc();
        let prefix = network.prefix_len();

        let subnet_len = match raw.subnet_len.filter(|&l| l != 0) {
            Some(l) => {
                if l > 30 {
                    return Err(bad("SubnetLen", "SubnetLen must be less than /31".into()));
                }
                if l < prefix.saturating_add(2) {
                    return Err(bad(
                        "SubnetLen",
                        format!(
                            "network must be able to accommodate at least four subnets (Network /{prefix}, SubnetLen /{l})"
                        ),
                    ));
                }
                l
            }
            None => {
                if prefix > 28 {
                    return Err(bad(
                        "Network",
                        format!(
                            "network is too small. Minimum useful network prefix is /28 (got /{prefix})"
                        ),
                    ));
                }
                if prefix <= 22 { 24 } else { prefix + 2 }
            }
        };
        let size = subnet_size(subnet_len);
        let first = u32::from(network.network());
        let last = u32::from(network.broadcast());

        let parse_addr = |field: &str, text: &Option<String>| -> Result<Option<Ipv4Addr>, Error> {
            match text.as_deref().filter(|t| !t.is_empty()) {
                None => Ok(None),
                Some(t) => t
                    .parse::<Ipv4Addr>()
                    .map(Some)
                    .map_err(|e| bad(field, format!("invalid IPv4 address {t:?}: {e}"))),
            }
        };
        let subnet_min = parse_addr("SubnetMin", &raw.subnet_min)?
            .unwrap_or_else(|| Ipv4Addr::from(first.wrapping_add(size)));
        let subnet_max = parse_addr("SubnetMax", &raw.subnet_max)?
            .unwrap_or_else(|| Ipv4Addr::from(last.wrapping_add(1).wrapping_sub(size)));
        if !network.contains(&subnet_min) {
            return Err(bad(
                "SubnetMin",
                format!("SubnetMin is not in the range of the Network: {subnet_min}"),
            ));
        }
        if !network.contains(&subnet_max) {
            return Err(bad(
                "SubnetMax",
                format!("SubnetMax is not in the range of the Network: {subnet_max}"),
            ));
        }
        if u32::from(subnet_min) % size != 0 {
            return Err(bad(
                "SubnetMin",
                format!("SubnetMin is not on a SubnetLen boundary: {subnet_min}"),
            ));
        }
        if u32::from(subnet_max) % size != 0 {
            return Err(bad(
                "SubnetMax",
                format!("SubnetMax is not on a SubnetLen boundary: {subnet_max}"),
            ));
        }
        if u32::from(subnet_min) > u32::from(subnet_max) {
            return Err(bad(
                "SubnetMin",
                format!(
                    "SubnetMin {subnet_min} is greater than SubnetMax {subnet_max}: no subnet can be allocated"
                ),
            ));
        }

        let ipv6 = if raw.enable_ipv6.unwrap_or(false) {
            let text = raw.ipv6_network.as_deref().ok_or_else(|| {
                bad(
                    "IPv6Network",
                    "EnableIPv6 is set but IPv6Network is missing".into(),
                )
            })?;
            let net6: Ipv6Net = text
                .parse()
                .map_err(|e| bad("IPv6Network", format!("invalid IPv6 network {text:?}: {e}")))?;
            let p6 = net6.prefix_len();
            let len6 = match raw.ipv6_subnet_len.filter(|&l| l != 0) {
                Some(l) if l > 126 => {
                    return Err(bad(
                        "IPv6SubnetLen",
                        "IPv6SubnetLen must be less than /127".into(),
                    ));
                }
                Some(l) if l < p6.saturating_add(2) => {
                    return Err(bad(
                        "IPv6SubnetLen",
                        "IPv6 network must be able to accommodate at least four subnets".into(),
                    ));
                }
                Some(l) => l,
                None if p6 > 124 => {
                    return Err(bad(
                        "IPv6Network",
                        "IPv6 network is too small. Minimum useful prefix is /124".into(),
                    ));
                }
                None => {
                    if p6 <= 62 {
                        64
                    } else {
                        p6 + 2
                    }
                }
            };
            Some(Ipv6Config {
                network: net6.trunc(),
                subnet_len: len6,
            })
        } else {
            None
        };

        let (backend_type, backend) = match &raw.backend {
            None => ("udp".to_string(), BackendParams::default()),
            Some(b) => (
                b.kind.clone().unwrap_or_default(),
                BackendParams {
                    vni: b.vni.unwrap_or(0),
                    port: b.port.unwrap_or(0),
                    mtu: b.mtu.unwrap_or(0),
                    direct_routing: b.direct_routing.unwrap_or(false),
                },
            ),
        };
        Ok(NetworkConfig {
            network,
            subnet_len,
            subnet_min,
            subnet_max,
            ipv6,
            backend_type,
            backend,
        })
    }

    /// The backend, or an error for types Twill does not run.
    pub fn backend_kind(&self) -> Result<BackendKind, Error> {
        match self.backend_type.as_str() {
            "vxlan" => Ok(BackendKind::Vxlan),
            "host-gw" => Ok(BackendKind::HostGw),
            "udp" => Ok(BackendKind::Udp),
            other => Err(Error::UnsupportedBackend {
                backend_type: other.to_string(),
            }),
        }
    }

    /// VNI with the default applied.
    pub fn vni(&self) -> u32 {
        if self.backend.vni == 0 {
            DEFAULT_VNI
        } else {
            self.backend.vni
        }
    }

    /// The UDP port for vxlan or udp, default applied.
    pub fn port(&self, kind: BackendKind) -> u16 {
        match (self.backend.port, kind) {
            (0, BackendKind::Udp) => DEFAULT_UDP_PORT,
            (0, _) => DEFAULT_VXLAN_PORT,
            (p, _) => p,
        }
    }

    /// The pod MTU (`FLANNEL_MTU`) for this backend over an underlay of `underlay_mtu`.
    /// vxlan honours `Backend.MTU` as the underlay figure; the others ignore it, as flannel.
    pub fn pod_mtu(&self, kind: BackendKind, underlay_mtu: u32) -> u32 {
        let base = match kind {
            BackendKind::Vxlan if self.backend.mtu != 0 => self.backend.mtu,
            _ => underlay_mtu,
        };
        base.saturating_sub(kind.overhead())
    }

    /// Whether `subnet` may be held under this config (right length, inside Min..Max).
    pub fn fits(&self, subnet: Ipv4Net) -> bool {
        subnet.prefix_len() == self.subnet_len
            && subnet.network() == subnet.addr()
            && u32::from(subnet.network()) >= u32::from(self.subnet_min)
            && u32::from(subnet.network()) <= u32::from(self.subnet_max)
    }

    /// The IPv6 subnet that pairs with an IPv4 one: same index inside the network.
    pub fn ipv6_subnet_for(&self, subnet: Ipv4Net) -> Option<Ipv6Net> {
        let v6 = self.ipv6.as_ref()?;
        let index = (u32::from(subnet.network()) - u32::from(self.network.network()))
            >> (32 - self.subnet_len);
        let shift = 128 - u32::from(v6.subnet_len);
        let base = u128::from(v6.network.network());
        let addr = base.checked_add(u128::from(index).checked_shl(shift)?)?;
        Ipv6Net::new(Ipv6Addr::from(addr), v6.subnet_len).ok()
    }
}

/// Addresses in one subnet of length `len`.
pub(crate) fn subnet_size(len: u8) -> u32 {
    1u32 << (32 - u32::from(len))
}

#[cfg(test)]
mod tests;
