//! Lease records as flannel stores them: key `<prefix>/subnets/<a.b.c.d>-<len>` (dual stack:
//! `<v4>-<len>&<v6>-<len>`, `pkg/subnet/subnet.go` `MakeSubnetKey`) and a JSON value with
//! `pkg/lease/lease.go` `LeaseAttrs` field order. `PublicIPv6` has no `omitempty` in flannel,
//! so it is written as `null`; udp leases carry no `BackendType`.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::config::BackendKind;

/// flannel's default etcd prefix.
pub const DEFAULT_PREFIX: &str = "/coreos.com/network";
/// Every lease is granted for 24 h.
pub const LEASE_TTL_SECS: u64 = 24 * 60 * 60;

/// The attributes stored as the lease value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseAttrs {
    #[serde(rename = "PublicIP")]
    pub public_ip: Ipv4Addr,
    #[serde(rename = "PublicIPv6", default)]
    pub public_ipv6: Option<Ipv6Addr>,
    #[serde(
        rename = "BackendType",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub backend_type: Option<String>,
    /// Kept as raw JSON: other backends (wireguard, ...) put other shapes here, and a
    /// reader must not reject a peer's lease because of them.
    #[serde(
        rename = "BackendData",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub backend_data: Option<serde_json::Value>,
    #[serde(
        rename = "BackendV6Data",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub backend_v6_data: Option<serde_json::Value>,
}

/// vxlan's `BackendData`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VxlanData {
    #[serde(rename = "VNI")]
    pub vni: u32,
    #[serde(rename = "VtepMAC")]
    pub vtep_mac: String,
}

impl LeaseAttrs {
    /// The attrs this node writes for `kind`.
    pub fn for_backend(
        kind: BackendKind,
        public_ip: Ipv4Addr,
        public_ipv6: Option<Ipv6Addr>,
        vni: u32,
        vtep_mac: Option<Mac>,
        vtep_mac_v6: Option<Mac>,
    ) -> Self {
        let data = |mac: Option<Mac>| {
            mac.map(|m| serde_json::json!({"VNI": vni, "VtepMAC": m.to_string()}))
        };
        match kind {
            BackendKind::Vxlan => LeaseAttrs {
                public_ip,
                public_ipv6,
                backend_type: Some("vxlan".into()),
                backend_data: data(vtep_mac),
                backend_v6_data: data(vtep_mac_v6),
            },
            BackendKind::HostGw => LeaseAttrs {
                public_ip,
                public_ipv6,
                backend_type: Some("host-gw".into()),
                backend_data: None,
                backend_v6_data: None,
            },
            BackendKind::Udp => LeaseAttrs {
                public_ip,
                public_ipv6,
                backend_type: None,
                backend_data: None,
                backend_v6_data: None,
            },
        }
    }

    /// The backend the lease was written by (`udp` when `BackendType` is empty, as flannel).
    pub fn backend_name(&self) -> &str {
        match self.backend_type.as_deref() {
            None | Some("") => "udp",
            Some(t) => t,
        }
    }

    /// vxlan data, when present and well formed.
    pub fn vxlan_data(&self) -> Option<VxlanData> {
        let v = self.backend_data.as_ref()?;
        let d: VxlanData = serde_json::from_value(v.clone()).ok()?;
        d.vtep_mac.parse::<Mac>().ok()?;
        Some(d)
    }

    /// The JSON bytes flannel writes (Go `encoding/json` field order, no spaces).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("lease attrs always serialize")
    }

    /// Decode a stored value; `key` names it in errors.
    pub fn from_json(key: &str, text: &str) -> Result<Self, Error> {
        serde_json::from_str(text).map_err(|e| Error::LeaseValue {
            key: key.to_string(),
            source: e,
        })
    }
}

/// The subnet(s) a lease key names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SubnetKey {
    pub ipv4: Ipv4Net,
    pub ipv6: Option<Ipv6Net>,
}

impl SubnetKey {
    pub fn v4(ipv4: Ipv4Net) -> Self {
        SubnetKey { ipv4, ipv6: None }
    }

    /// The last key segment: `10.244.1.0-24` or `10.244.1.0-24&2001:db8:1::-64`.
    pub fn segment(&self) -> String {
        let v4 = format!("{}-{}", self.ipv4.network(), self.ipv4.prefix_len());
        match self.ipv6 {
            Some(v6) => format!("{v4}&{}-{}", v6.network(), v6.prefix_len()),
            None => v4,
        }
    }

    /// `<prefix>/subnets/<segment>`.
    pub fn key(&self, prefix: &str) -> String {
        format!(
            "{}/subnets/{}",
            prefix.trim_end_matches('/'),
            self.segment()
        )
    }

    /// Parse a whole key or just its last segment.
    pub fn parse(key: &str) -> Result<Self, Error> {
        let seg = key.rsplit('/').next().unwrap_or(key);
        let bad = || Error::LeaseKey {
            key: key.to_string(),
        };
        let (v4, v6) = match seg.split_once('&') {
            Some((a, b)) => (a, Some(b)),
            None => (seg, None),
        };
        let net4 = |s: &str| -> Option<Ipv4Net> {
            let (a, l) = s.rsplit_once('-')?;
            let n = Ipv4Net::new(a.parse().ok()?, l.parse().ok()?).ok()?;
            (n.network() == n.addr()).then_some(n)
        };
        let net6 = |s: &str| -> Option<Ipv6Net> {
            let (a, l) = s.rsplit_once('-')?;
            Ipv6Net::new(a.parse().ok()?, l.parse().ok()?).ok()
        };
        let ipv4 = net4(v4).ok_or_else(bad)?;
        let ipv6 = match v6 {
            Some(s) => Some(net6(s).ok_or_else(bad)?),
            None => None,
        };
        Ok(SubnetKey { ipv4, ipv6 })
    }
}

/// A lease as read from a store: subnet, attrs and remaining lifetime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub subnet: SubnetKey,
    pub attrs: LeaseAttrs,
    /// Unix seconds at which the lease expires.
    pub expires_at: u64,
}

impl Lease {
    /// Whether the lease is still alive at `now` (unix seconds).
    pub fn alive_at(&self, now: u64) -> bool {
        self.expires_at > now
    }
}

/// A MAC address (VTEP MACs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// A locally administered unicast MAC from a seed, as the kernel would pick at random.
    pub fn from_seed(seed: u64) -> Self {
        let b = splitmix64(seed).to_be_bytes();
        Mac([(b[0] & 0xfe) | 0x02, b[1], b[2], b[3], b[4], b[5]])
    }
}

impl std::fmt::Display for Mac {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl std::str::FromStr for Mac {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = || Error::Mac {
            text: s.to_string(),
        };
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for b in &mut out {
            let p = parts.next().ok_or_else(bad)?;
            if p.len() != 2 {
                return Err(bad());
            }
            *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(Mac(out))
    }
}

/// A small, well-mixed step for seed-derived choices (no `rand` in a pure core).
pub(crate) fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
