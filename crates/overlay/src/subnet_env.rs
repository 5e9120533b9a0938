//! `/run/flannel/subnet.env` in flannel's format (`pkg/subnet/subnet.go` `WriteSubnetFile`)
//! and the `twill-bridge` CNI config derived from it, so the pod network and the overlay
//! agree on subnet and MTU.

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::config::NetworkConfig;
use crate::lease::SubnetKey;

pub const SUBNET_ENV_PATH: &str = "/run/flannel/subnet.env";
pub const SUBNET_ENV_MODE: u32 = 0o644;

/// The values subnet.env carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetEnv {
    pub network: Ipv4Net,
    pub subnet: Ipv4Net,
    pub ipv6_network: Option<Ipv6Net>,
    pub ipv6_subnet: Option<Ipv6Net>,
    pub mtu: u32,
    pub ip_masq: bool,
}

impl SubnetEnv {
    pub fn new(config: &NetworkConfig, lease: SubnetKey, mtu: u32, ip_masq: bool) -> Self {
        SubnetEnv {
            network: config.network,
            subnet: lease.ipv4,
            ipv6_network: config.ipv6.as_ref().map(|v| v.network),
            ipv6_subnet: lease.ipv6,
            mtu,
            ip_masq,
        }
    }
}

/// `subnet/len` with the subnet's first host address, as flannel writes FLANNEL_SUBNET.
fn first_host(net: IpNet) -> String {
    let addr = match net.network() {
        IpAddr::V4(a) => IpAddr::V4((u32::from(a).wrapping_add(1)).into()),
        IpAddr::V6(a) => IpAddr::V6((u128::from(a).wrapping_add(1)).into()),
    };
    format!("{addr}/{}", net.prefix_len())
}

/// The exact file text: one `KEY=value` per line, trailing newline.
pub fn render_subnet_env(env: &SubnetEnv) -> String {
    let mut out = format!("FLANNEL_NETWORK={}\n", env.network);
    out += &format!("FLANNEL_SUBNET={}\n", first_host(env.subnet.into()));
    if let Some(n) = env.ipv6_network {
        out += &format!("FLANNEL_IPV6_NETWORK={n}\n");
    }
    if let Some(s) = env.ipv6_subnet {
        out += &format!("FLANNEL_IPV6_SUBNET={}\n", first_host(s.into()));
    }
    out += &format!("FLANNEL_MTU={}\n", env.mtu);
    out += &format!("FLANNEL_IPMASQ={}\n", env.ip_masq);
    out
}

/// The subnet of a previous subnet.env (`FLANNEL_SUBNET`'s network), if it has one.
pub fn previous_subnet(text: &str) -> Option<Ipv4Net> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("FLANNEL_SUBNET="))
        .find_map(|v| v.trim().parse::<Ipv4Net>().ok())
        .map(|n| n.trunc())
}

/// A CNI network config for `twill-bridge` that matches subnet.env: the node's subnet for
/// host-local IPAM, the overlay MTU, a route to the whole cluster network, and the bridge's
/// own masquerade only when the agent does not masquerade (as flannel's CNI plugin does).
pub fn render_cni_config(env: &SubnetEnv, name: &str, bridge: &str) -> serde_json::Value {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": name,
        "type": "twill-bridge",
        "bridge": bridge,
        "mtu": env.mtu,
        "isDefaultGateway": true,
        "ipMasq": !env.ip_masq,
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": env.subnet.to_string()}]],
            "routes": [{"dst": env.network.to_string()}],
        },
    })
}
