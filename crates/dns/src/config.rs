//! Server options, named after the CoreDNS kubernetes-plugin directives they mirror.

use std::net::IpAddr;
use std::str::FromStr;

use hickory_proto::rr::Name;

/// `pods disabled|insecure|verified`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PodMode {
    /// Every `<a-b-c-d>.<ns>.pod.<zone>` is NXDOMAIN (CoreDNS's default).
    #[default]
    Disabled,
    /// Any well-formed dashed address under an existing namespace answers.
    Insecure,
    /// Only addresses some pod in that namespace has as `status.podIP`.
    Verified,
}

impl FromStr for PodMode {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        match s {
            "disabled" => Ok(PodMode::Disabled),
            "insecure" => Ok(PodMode::Insecure),
            "verified" => Ok(PodMode::Verified),
            other => Err(ConfigError::PodMode {
                value: other.to_string(),
            }),
        }
    }
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("pods: {value:?} must be disabled, insecure or verified")]
    PodMode { value: String },
    #[error("{field}: {value:?} is not a domain name: {reason}")]
    BadName {
        field: &'static str,
        value: String,
        reason: String,
    },
}

/// Everything that shapes answers besides the cluster objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The cluster domain (`cluster.local.`), fully qualified, lower case.
    pub zone: Name,
    /// Extra reverse zones served authoritatively (`in-addr.arpa.`, `0.10.in-addr.arpa.`).
    pub reverse_zones: Vec<Name>,
    pub pods: PodMode,
    /// TTL of every synthesised record (the `dns-version` TXT excepted).
    pub ttl: u32,
    /// `endpoint_pod_names`: name hostname-less endpoints after their target pod.
    pub endpoint_pod_names: bool,
    /// `namespaces`: only these are visible; `None` means all.
    pub namespaces: Option<Vec<String>>,
    /// `ignore empty_service`.
    pub ignore_empty_service: bool,
    /// `fallthrough [ZONES]`: NXDOMAIN inside these zones goes to the upstream instead.
    /// `Some(vec![])` means every served zone.
    pub fallthrough: Option<Vec<Name>>,
    /// The server's own addresses; the apex NS record names the services they back.
    pub server_ips: Vec<IpAddr>,
}

/// Parse a zone written with or without the trailing dot into a lower-case FQDN.
pub fn parse_zone(field: &'static str, s: &str) -> Result<Name, ConfigError> {
    let bad = |reason: String| ConfigError::BadName {
        field,
        value: s.to_string(),
        reason,
    };
    let mut n = Name::from_ascii(s.trim()).map_err(|e| bad(e.to_string()))?;
    n.set_fqdn(true);
    Ok(n.to_lowercase())
}

impl Config {
    /// Defaults as CoreDNS's `kubernetes cluster.local in-addr.arpa ip6.arpa` block would
    /// have them, minus the reverse zones (added explicitly).
    pub fn new(zone: &str) -> Result<Self, ConfigError> {
        Ok(Config {
            zone: parse_zone("zone", zone)?,
            reverse_zones: Vec::new(),
            pods: PodMode::Disabled,
            ttl: 5,
            endpoint_pod_names: false,
            namespaces: None,
            ignore_empty_service: false,
            fallthrough: None,
            server_ips: Vec::new(),
        })
    }

    /// Set `reverse_zones` from written names.
    pub fn with_reverse_zones<S: AsRef<str>>(mut self, zones: &[S]) -> Result<Self, ConfigError> {
        self.reverse_zones = zones
            .iter()
            .map(|z| parse_zone("reverseZones", z.as_ref()))
            .collect::<Result<_, _>>()?;
        Ok(self)
    }
}
