//! Chain and set names of upstream's nftables mode.
//!
//! A base name is `HASH-namespace/name/protocol/port` (`ULMVA6XW-ns1/svc1/tcp/p80`) for a
//! service port and `HASH-namespace/name/protocol/port__ip/port`
//! (`5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80`) for an endpoint, where HASH is the first
//! 8 characters of `base32(sha256(rest))`. IPv6 colons become dots (colons are not
//! allowed in nft names). The prefixes `service-`, `local-`, `external-`, `firewall-`,
//! `endpoint-` and `affinity-` are at most 16 characters, and a base longer than
//! 256 − 16 is cut with `...` (the hash keeps it unique). Only these names contain a
//! `/`, which is how stale service chains are told from the fixed ones.

use data_encoding::BASE32;
use sha2::{Digest, Sha256};
use twill_proxy_core::{EndpointInfo, ServicePortName};

/// nft's name length limit.
const NAME_LENGTH_MAX: usize = 256;
const PREFIX_LENGTH_MAX: usize = 16;
const BASE_LENGTH_MAX: usize = NAME_LENGTH_MAX - PREFIX_LENGTH_MAX;

pub const SERVICE_PREFIX: &str = "service-";
pub const LOCAL_PREFIX: &str = "local-";
pub const EXTERNAL_PREFIX: &str = "external-";
pub const FIREWALL_PREFIX: &str = "firewall-";
pub const ENDPOINT_PREFIX: &str = "endpoint-";
pub const AFFINITY_PREFIX: &str = "affinity-";

/// `HASH8-name`, cut to the base length limit.
pub fn hash_and_truncate(name: &str) -> String {
    let digest = Sha256::digest(name.as_bytes());
    let encoded = BASE32.encode(digest.as_slice());
    let mut out = format!("{}-{name}", &encoded[..8]);
    if out.len() > BASE_LENGTH_MAX {
        // Names are ASCII (DNS labels, digits, dots), so byte positions are chars.
        out.truncate(BASE_LENGTH_MAX - 3);
        out.push_str("...");
    }
    out
}

/// `HASH-namespace/name/protocol/port` for a service port.
pub fn service_chain_base(spn: &ServicePortName) -> String {
    hash_and_truncate(&format!(
        "{}/{}/{}/{}",
        spn.service.namespace,
        spn.service.name,
        spn.protocol.lower(),
        spn.port
    ))
}

/// `HASH-namespace/name/protocol/port__ip/port` for an endpoint of a service port.
pub fn endpoint_chain_base(spn: &ServicePortName, ep: &EndpointInfo) -> String {
    let ip = ep.ip.to_string().replace(':', ".");
    hash_and_truncate(&format!(
        "{}/{}/{}/{}__{ip}/{}",
        spn.service.namespace,
        spn.service.name,
        spn.protocol.lower(),
        spn.port,
        ep.port
    ))
}

/// A per-service chain (every one of them has a `/`; the fixed chains have none).
pub fn is_service_chain(name: &str) -> bool {
    name.contains('/')
}

pub fn is_affinity_set(name: &str) -> bool {
    name.starts_with(AFFINITY_PREFIX)
}
